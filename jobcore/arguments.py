"""Checks of the arguments `JobManager` takes (periods, counts, job ids): each accepts
a value or raises; none reads a store, keeps state or knows of the manager.

`JobManager` (`manager`) and its reads (`inspection`) share them; this imports neither.
"""

from __future__ import annotations

import math
from typing import Any

from .clock import as_seconds
from .errors import LONGEST_RETRY_DELAY
from .models import INT64_MAX
from .serialization import could_be_id

__all__ = ["LONGEST_PERIOD", "count", "may_exist", "positive"]

# The longest `lease_timeout`, `poll_interval` and `discovery_interval` (100 years, the
# longest retry delay too). A lease ends at now + lease_timeout, which must stay a time the
# stores take (models.TIME_LIMIT, 6e10 s): a lease of 1e11 s was stored past it, read back
# as corrupt by every other manager's recovery, ended at once and logged into the running
# job's log on each heartbeat. Now + 100 years stays far inside (year 2126 against 3871).
LONGEST_PERIOD = LONGEST_RETRY_DELAY


def positive(name: str, value: Any, *, allow_zero: bool = False, unit: str = "seconds",
             most: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of {unit}, got {value!r}")
    seconds = as_seconds(value)  # an int too large for a float is inf: "for ever" where that is allowed
    if math.isnan(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>=' if allow_zero else '>'} 0, got {value!r}")
    if seconds > most:
        raise ValueError(f"{name} must be at most {most:.0f} {unit}"
                         f"{' (100 years)' if most == LONGEST_PERIOD else ''}, got {value!r}")
    return seconds


def count(name: str, value: Any) -> None:
    """A `limit` or `offset`: an int from 0 to 2**63 - 1 (what a store takes; bool is not one)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= INT64_MAX:
        raise ValueError(f"{name} must be an int from 0 to 2**63 - 1{' or None' if name == 'limit' else ''},"
                         f" got {value!r}")


def may_exist(job_id: Any) -> bool:
    """Whether `job_id` could name a stored job: a str (else `TypeError`) that an id can
    be (one from a non-UTF-8 command line, with a lone surrogate, or one holding a NUL,
    cannot: unknown, on every store)."""
    if not isinstance(job_id, str):
        raise TypeError(f"job_id must be a str, got {type(job_id).__name__} {job_id!r}")
    return could_be_id(job_id)
