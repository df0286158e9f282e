"""Retry policy: which exceptions are transient, and how long to wait before retry n.

Pure functions of their inputs (randomness comes in as a `random.Random`); nothing here
reads a clock or touches storage.
"""

from __future__ import annotations

import random
import sys
from typing import Callable

from .errors import JobTimeout, PermanentError, RetryableError

Classifier = Callable[[BaseException], bool]

TRANSIENT_TYPES: tuple[type[BaseException], ...] = (TimeoutError, ConnectionError, OSError, JobTimeout)
TRANSIENT_WORDS = ("timeout", "connection", "temporary", "unavailable")

# Before Python 3.11, asyncio.TimeoutError (what asyncio.wait_for raises) and
# concurrent.futures.TimeoutError are classes of their own, not the built-in TimeoutError
# (3.11 made them aliases of it), and their message is empty: they are transient too.
# Named by the modules that define them and looked up only once those are loaded (no
# instance exists before), since importing asyncio costs ~25 ms at start-up.
_OTHER_TIMEOUT_MODULES = ("asyncio.exceptions", "concurrent.futures._base") if sys.version_info < (3, 11) else ()


def is_transient(exc: BaseException) -> bool:
    """The default classifier: True if `exc` is worth retrying.

    `RetryableError` always is and `PermanentError` never is. Otherwise `TimeoutError`
    (`asyncio.TimeoutError` and `concurrent.futures.TimeoutError` included, also on
    Python 3.10), `ConnectionError`, `OSError` (and `JobTimeout`) are, and so is any
    exception whose message mentions timeout, connection, temporary or unavailable.
    Everything else is permanent."""
    if isinstance(exc, RetryableError):
        return True
    if isinstance(exc, PermanentError):
        return False
    if isinstance(exc, TRANSIENT_TYPES) or _is_other_timeout(exc):
        return True
    message = str(exc).lower()
    return any(word in message for word in TRANSIENT_WORDS)


def _is_other_timeout(exc: BaseException) -> bool:
    for name in _OTHER_TIMEOUT_MODULES:
        module = sys.modules.get(name)
        if module is not None and isinstance(exc, module.TimeoutError):
            return True
    return False


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
    except OverflowError:  # a huge power of the back-off: past any cap, unless there is no delay
        base = 0.0 if delay == 0 else max_delay
    base = min(base, max_delay)
    if jitter:
        base *= rng.uniform(0.5, 1.0)
    return base
