"""What an attempt's outcome means for its job: complete, retry, dead-letter or cancel.

`decide` is a pure function of the record, the outcome and the retry policy (time and
randomness come in as arguments); it returns a `Settlement` for the repository to apply.
Nothing here writes anything.
"""

from __future__ import annotations

import logging
import random
from datetime import datetime
from typing import Any, Optional

from .deferred_interrupts import survived
from .errors import LONGEST_RETRY_DELAY, RetryableError
from .execution import Outcome
from .repository.base import CANCELLED_ERROR_TYPE, CANCELLED_WHILE_RUNNING, JobRecord, Settlement
from .retry import Classifier, is_group, leaves, retry_delay, should_retry
from .serialization import TRACEBACK_LIMIT, storable_text

logger = logging.getLogger("jobcore.settle")


def _as_shown(at: float) -> float:
    """`at` (epoch seconds) as `poll` shows it (a local datetime, to the microsecond) and
    back: a retry is then due at the very time `poll` gives for it, where it came up to
    half a microsecond later (a clock moved to that time found the job not due)."""
    try:
        return datetime.fromtimestamp(at).timestamp()
    except (OverflowError, OSError, ValueError):
        return at  # (no date to show: the store fails it as corrupt, as before)


def decide(record: JobRecord, outcome: Outcome, *, cancel_requested: bool, classifier: Classifier,
           rng: random.Random, max_retry_delay: float, now: float, ran_for: float,
           encoded_result: Optional[str] = None) -> Settlement:
    """The settlement of one finished attempt of `record` (held on `record.attempts`).
    `encoded_result`: the outcome's value as JSON, if the caller encoded it already."""
    attempt = record.attempts
    if outcome.succeeded:
        return completed(record, outcome.value, ran_for, encoded_result)
    if outcome.cancelled or cancel_requested:
        return cancelled(record)
    exc = outcome.error
    assert exc is not None
    error = storable_text(describe(exc))
    error_type = storable_text(type_name(exc))
    traceback = None if outcome.traceback is None else storable_text(outcome.traceback, TRACEBACK_LIMIT)
    try:
        transient = should_retry(exc, classifier)
    except BaseException as broken:  # a broken classifier must not break the engine (pytest.fail's Failed too)
        logger.exception("retry classifier failed on job %s; treating the error as permanent", record.id)
        transient = False
        survived(broken)  # (a Ctrl-C on the caller's thread reaches the caller once this is recorded)
    failed = f"attempt {attempt} failed after {ran_for:.3f}s: {error_type}: {error}"
    if transient and attempt <= record.max_retries:
        delay = asked_delay(exc, record.id)
        if delay is None:
            delay = retry_delay(attempt, delay=record.retry_delay, backoff=record.retry_backoff,
                                jitter=record.retry_jitter, max_delay=max_retry_delay, rng=rng)
        return Settlement("retry", record.id, attempt, error=error, error_type=error_type,
                          traceback=traceback, retry_at=_as_shown(now + delay),
                          note=f"{failed}; retry {attempt} of {record.max_retries} in {delay:.3f}s",
                          seq=record.seq)
    why = "no retries left" if transient else "permanent error"
    return Settlement("fail", record.id, attempt, error=error, error_type=error_type,
                      traceback=traceback, note=f"{failed}; {why}", seq=record.seq)


def asked_delay(exc: BaseException, job_id: str) -> Optional[float]:
    """The delay a `RetryableError` asked for, or None for the back-off: also when a
    subclass never set one (its `__init__` did not call `RetryableError.__init__`) or set
    one that is not a number of seconds from 0 to `LONGEST_RETRY_DELAY` (logged). For an
    exception group, the longest that one of its `RetryableError` leaves asked for: each
    asked to wait at least that long."""
    asked = [delay for leaf in leaves(exc) if (delay := _asked_by(leaf, job_id)) is not None]
    return max(asked, default=None)


def _asked_by(exc: BaseException, job_id: str) -> Optional[float]:
    if not isinstance(exc, RetryableError):
        return None
    delay = getattr(exc, "delay", None)
    if delay is None:
        return None
    if (isinstance(delay, bool) or not isinstance(delay, (int, float))
            or not 0 <= delay <= LONGEST_RETRY_DELAY):  # NaN fails this too
        logger.warning("job %s raised %s with delay %r, not a number of seconds from 0 to %.0f;"
                       " its back-off is used instead", job_id, type(exc).__name__, delay, LONGEST_RETRY_DELAY)
        return None
    return float(delay)


def cancelled(record: JobRecord) -> Settlement:
    """The settlement of an attempt of `record` stopped on a cancel request: what `decide`
    returns for one, and what the store made of a retry or failure whose job's
    cancellation had been requested (`Cascade.cancelled_instead`)."""
    return Settlement("cancel", record.id, record.attempts, error=CANCELLED_WHILE_RUNNING,
                      error_type=CANCELLED_ERROR_TYPE, seq=record.seq)


# The leaves of an exception group named in its recorded error, at most (the rest are
# counted): its traceback shows them all.
GROUP_LEAVES_SHOWN = 10


def type_name(exc: BaseException) -> str:
    """The `error_type` recorded for `exc`: its class name; for an exception group, with
    the class names of its leaves, each once, in order: `ExceptionGroup[ConnectionError]`."""
    if not is_group(exc):
        return type(exc).__name__
    names = list(dict.fromkeys(type(leaf).__name__ for leaf in leaves(exc)))
    if len(names) > GROUP_LEAVES_SHOWN:
        names[GROUP_LEAVES_SHOWN:] = [f"{len(names) - GROUP_LEAVES_SHOWN} more"]
    return f"{type(exc).__name__}[{', '.join(names)}]"


def describe(exc: BaseException) -> str:
    """`str(exc)`, or its repr if empty; a job's exception whose `__str__` raises (its own
    bug) is described by its type rather than ending the thread recording it. An exception
    group's message is followed by its leaves', each after its type: `unhandled errors in a
    TaskGroup (1 sub-exception): ConnectionError: connection reset by peer`."""
    if not is_group(exc):
        return _message(exc)
    found = leaves(exc)
    shown = [f"{type(leaf).__name__}: {_message(leaf)}" for leaf in found[:GROUP_LEAVES_SHOWN]]
    if len(found) > GROUP_LEAVES_SHOWN:
        shown.append(f"and {len(found) - GROUP_LEAVES_SHOWN} more")
    return f"{_message(exc)}: {'; '.join(shown)}"


def _message(exc: BaseException) -> str:
    try:
        return str(exc) or repr(exc)
    except Exception:
        try:
            return repr(exc)
        except Exception:
            return f"<{type(exc).__name__} that cannot be shown>"


def completed(record: JobRecord, value: Any, ran_for: float, encoded_result: Optional[str] = None) -> Settlement:
    """The settlement of an attempt of `record` that returned `value`: what `decide` returns
    for any successful outcome (the retry policy and a cancel request do not matter then)."""
    attempt = record.attempts
    note = f"attempt {attempt} completed after {ran_for:.3f}s" if attempt > 1 else None
    return Settlement("complete", record.id, attempt, result=value, note=note, encoded_result=encoded_result,
                      seq=record.seq)


EVENTS = {"complete": "job.completed", "retry": "job.retrying", "fail": "job.dead_lettered",
          "cancel": "job.cancelled"}


def event_details(settlement: Settlement) -> dict[str, Any]:
    """What a notification about `settlement` carries beyond the job itself."""
    details: dict[str, Any] = {"error": settlement.error, "error_type": settlement.error_type,
                               "traceback": settlement.traceback}
    if settlement.retry_at is not None:
        details["retry_at"] = settlement.retry_at
    return details
