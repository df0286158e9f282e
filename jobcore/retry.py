"""Retry policy: which exceptions are transient, and how long to wait before retry n.

Pure functions of their inputs (randomness comes in as a `random.Random`); nothing here
reads a clock or touches storage.

An exception group (what `asyncio.TaskGroup` raises, Python 3.11+) is classified by the
exceptions it holds, its leaves (nested groups flattened), never by the group itself:
the group's type says only that several tasks ran, and its message that some failed.
"""

from __future__ import annotations

import builtins
import random
import sys
from typing import Callable, Optional

from .errors import JobCancelled, JobTimeout, PermanentError, RetryableError

Classifier = Callable[[BaseException], bool]

TRANSIENT_TYPES: tuple[type[BaseException], ...] = (TimeoutError, ConnectionError, OSError, JobTimeout)
TRANSIENT_WORDS = ("timeout", "connection", "temporary", "unavailable")

# Before Python 3.11, asyncio.TimeoutError (what asyncio.wait_for raises) and
# concurrent.futures.TimeoutError are classes of their own, not the built-in TimeoutError
# (3.11 made them aliases of it), and their message is empty: they are transient too.
# Named by the modules that define them and looked up only once those are loaded (no
# instance exists before), since importing asyncio costs ~25 ms at start-up.
_OTHER_TIMEOUT_MODULES = ("asyncio.exceptions", "concurrent.futures._base") if sys.version_info < (3, 11) else ()


# Python 3.11+: the built-in `BaseExceptionGroup` (`ExceptionGroup` subclasses it). On
# Python 3.10, none is built in; the `exceptiongroup` backport's (which anyio's task
# groups raise there) is looked up once that module is loaded, as above.
_BUILTIN_GROUP: Optional[type] = getattr(builtins, "BaseExceptionGroup", None)


def is_group(exc: BaseException) -> bool:
    """True if `exc` is an exception group (built in, or the `exceptiongroup` backport's)."""
    if _BUILTIN_GROUP is not None:
        return isinstance(exc, _BUILTIN_GROUP)
    backport = sys.modules.get("exceptiongroup")
    group = getattr(backport, "BaseExceptionGroup", None)
    return isinstance(group, type) and isinstance(exc, group)


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions `exc` stands for, in order: those an exception group holds, nested
    groups flattened (without recursion: a job may fail near the recursion limit), or
    `exc` alone for any other exception (and for a group that holds none)."""
    if not is_group(exc):
        return [exc]
    found: list[BaseException] = []
    seen: set[int] = set()  # a group class of a user's whose `exceptions` holds itself
    pending = [exc]
    while pending:
        current = pending.pop()
        if not is_group(current):
            found.append(current)
        elif id(current) not in seen:
            seen.add(id(current))
            pending.extend(reversed(tuple(getattr(current, "exceptions", ()))))
    return found or [exc]


def is_cancellation(exc: BaseException) -> bool:
    """True if `exc` is `JobCancelled`, or a group holding one (a task of the job's
    `TaskGroup` saw the cancellation first): the job ends CANCELLED either way."""
    return any(isinstance(leaf, JobCancelled) for leaf in leaves(exc))


def is_transient(exc: BaseException) -> bool:
    """The default classifier: True if `exc` is worth retrying.

    `RetryableError` always is and `PermanentError` never is. Otherwise `TimeoutError`
    (`asyncio.TimeoutError` and `concurrent.futures.TimeoutError` included, also on
    Python 3.10), `ConnectionError`, `OSError` (and `JobTimeout`) are, and so is any
    exception whose message mentions timeout, connection, temporary or unavailable.
    Everything else is permanent. An exception group is judged by its leaves, as
    `should_retry` judges it."""
    return should_retry(exc, _is_transient_leaf)


def _is_transient_leaf(exc: BaseException) -> bool:
    if isinstance(exc, TRANSIENT_TYPES) or _is_other_timeout(exc):
        return True
    message = str(exc).lower()
    return any(word in message for word in TRANSIENT_WORDS)


def _is_other_timeout(exc: BaseException) -> bool:
    for name in _OTHER_TIMEOUT_MODULES:
        # (getattr: a module another thread is importing may not define it yet)
        timeout = getattr(sys.modules.get(name), "TimeoutError", None)
        if isinstance(timeout, type) and isinstance(exc, timeout):
            return True
    return False


def should_retry(exc: BaseException, classifier: Classifier) -> bool:
    """Apply `classifier`, except that `RetryableError` and `PermanentError` always win.

    An exception group is judged by its `leaves`: a `PermanentError` among them fails the
    job; else a `RetryableError` among them retries it; else it is retried only if
    `classifier` finds every leaf transient. The classifier is called with leaves only,
    never with a group, so one written for plain exceptions works inside a `TaskGroup`."""
    parts = leaves(exc)  # [exc] for a plain exception: the same steps judge it
    verdicts = [_forced(part) for part in parts]
    if False in verdicts:
        return False
    if True in verdicts:
        return True
    return all(classifier(part) for part in parts)


def _forced(exc: BaseException) -> Optional[bool]:
    """What `RetryableError` (True) or `PermanentError` (False) decides whatever the
    classifier says; None for any other exception."""
    if isinstance(exc, RetryableError):
        return True
    if isinstance(exc, PermanentError):
        return False
    return None


def retry_delay(retry: int, *, delay: float, backoff: float, jitter: bool, max_delay: float,
                rng: random.Random) -> float:
    """Seconds to wait before retry number `retry` (1-based).

    `delay * backoff ** (retry - 1)`, capped at `max_delay`; with `jitter` a uniform
    fraction in [0.5, 1.0] of that (so retries of many jobs spread out)."""
    if retry < 1:
        raise ValueError(f"retry numbers start at 1, got {retry}")
    try:
        base = delay * backoff ** (retry - 1)
    except OverflowError:  # a huge power of the back-off: past any cap, unless there is no delay
        base = 0.0 if delay == 0 else max_delay
    base = min(base, max_delay)
    if jitter:
        base *= rng.uniform(0.5, 1.0)
    return base
