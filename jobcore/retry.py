"""Retry policy: which exceptions are transient, and how long to wait before retry n.

Pure functions of their inputs (randomness comes in as a `random.Random`); nothing here
reads a clock or touches storage.
"""

from __future__ import annotations

import random
from typing import Callable

from .errors import JobTimeout, PermanentError, RetryableError

Classifier = Callable[[BaseException], bool]

TRANSIENT_TYPES: tuple[type[BaseException], ...] = (TimeoutError, ConnectionError, OSError, JobTimeout)
TRANSIENT_WORDS = ("timeout", "connection", "temporary", "unavailable")


def is_transient(exc: BaseException) -> bool:
    """The default classifier: True if `exc` is worth retrying.

    `RetryableError` always is and `PermanentError` never is. Otherwise `TimeoutError`,
    `ConnectionError`, `OSError` (and `JobTimeout`) are, and so is any exception whose
    message mentions timeout, connection, temporary or unavailable. Everything else is
    permanent."""
    if isinstance(exc, RetryableError):
        return True
    if isinstance(exc, PermanentError):
        return False
    if isinstance(exc, TRANSIENT_TYPES):
        return True
    message = str(exc).lower()
    return any(word in message for word in TRANSIENT_WORDS)


def should_retry(exc: BaseException, classifier: Classifier) -> bool:
    """Apply `classifier`, except that `RetryableError` and `PermanentError` always win."""
    if isinstance(exc, RetryableError):
        return True
    if isinstance(exc, PermanentError):
        return False
    return bool(classifier(exc))


def retry_delay(retry: int, *, delay: float, backoff: float, jitter: bool, max_delay: float,
                rng: random.Random) -> float:
    """Seconds to wait before retry number `retry` (1-based).

    `delay * backoff ** (retry - 1)`, capped at `max_delay`; with `jitter` a uniform
    fraction in [0.5, 1.0] of that (so retries of many jobs spread out)."""
    if retry < 1:
        raise ValueError(f"retry numbers start at 1, got {retry}")
    try:
        base = delay * backoff ** (retry - 1)
    except OverflowError:
        base = max_delay
    base = min(base, max_delay)
    if jitter:
        base *= rng.uniform(0.5, 1.0)
    return base
