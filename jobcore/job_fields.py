"""What a `Job`'s fields may hold: the limits and the checks `models.Job.validate` applies
to one field; not the `Job` dataclass, nor the order of the checks or their shortcut
(`models` keeps both, on the enqueue path).

Each check raises `InvalidJob` or `InvalidJobType` naming the field. `function_qualname`
is the name a callable is registered under when none is given. `models` re-exports all
of them, where the rest of jobcore imports them. Nothing here touches threads or storage.
"""

from __future__ import annotations

import inspect
import math
from datetime import datetime, timezone
from typing import Any, Callable, Optional

from .clock import as_seconds
from .errors import InvalidJob, InvalidJobType
from .serialization import check_text

# A priority is any int a store's integer column keeps (SQLite's INTEGER, PostgreSQL's BIGINT).
PRIORITY_MIN = -(2**63)
PRIORITY_MAX = 2**63 - 1
ISOLATIONS = ("thread", "process")
MAX_RETRIES = 1_000_000_000  # attempts (max_retries + 1) fit a 32-bit column
INT64_MAX = 2**63 - 1  # the largest integer SQLite and PostgreSQL's BIGINT store
# Epoch seconds `datetime.fromtimestamp` shows on every platform (years 69 to 3871): the
# times a job may be given, and a store read back as sound.
TIME_LIMIT = 6e10


def function_qualname(func: Callable[..., Any]) -> str:
    """The name a callable is registered under when none is given: `module.qualname`."""
    target = func
    if not (inspect.isfunction(func) or inspect.ismethod(func) or inspect.isbuiltin(func)):
        if callable(func) and not isinstance(func, type) and hasattr(type(func), "__qualname__"):
            target = type(func)
    module = getattr(target, "__module__", None)
    if module == "__mp_main__":
        # The main script, run again in a multiprocessing child ("spawn", "forkserver")
        # under this name: its functions keep the name the parent gave their jobs.
        module = "__main__"
    qualname = getattr(target, "__qualname__", None)
    if not qualname:
        raise InvalidJobType(
            "function", f"{func!r} has no __qualname__; register it and pass function_name"
        )
    return f"{module}.{qualname}" if module else qualname


def check_time(field_name: str, value: datetime) -> None:
    """Raise `InvalidJob` unless `value` is a time every store keeps and shows back."""
    try:
        seconds = value.timestamp()
    except (OverflowError, ValueError, OSError):  # e.g. a naive datetime.min east of UTC
        seconds = math.inf
    if not -TIME_LIMIT < seconds < TIME_LIMIT:
        raise InvalidJob(field_name, f"must be within 6e10 seconds of 1970 (3 September 68 to 29 April 3871, UTC),"
                                     f" got {value.isoformat()}")
    # Stores keep the time as float seconds, exact to the microsecond only up to 2^33 s
    # from 1970 (1698 to 2242): past that, only a time whose float shows it back is kept.
    shown = datetime.fromtimestamp(seconds, timezone.utc)
    if (shown.microsecond != value.microsecond if value.tzinfo is None or value.utcoffset() is None
            else shown != value.astimezone(timezone.utc)):  # (an offset may hold a fraction of a
        # second; and `==` across zones is False for a time in a fold or a gap of one)
        raise InvalidJob(field_name, "outside 1698 to 2242 a store keeps a time only to a few microseconds:"
                                     f" give fewer digits (whole seconds always work), got {value.isoformat()}")


def check_number(field_name: str, value: Any, *, minimum: float, allow_none: bool = False,
                  strictly_above: bool = False) -> Optional[float]:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidJobType(field_name, f"must be a number, got {type(value).__name__} {value!r}")
    seconds = as_seconds(value)  # (not `float()`: an int too large for one is not finite either)
    if math.isnan(seconds) or math.isinf(seconds):
        raise InvalidJob(field_name, f"must be finite, got {value!r}")
    if seconds < minimum or (strictly_above and seconds == minimum):
        relation = ">" if strictly_above else ">="
        raise InvalidJob(field_name, f"must be {relation} {minimum:g}, got {value!r}")
    return seconds


def check_id_text(field: str, text: str) -> None:
    """`check_text`, and no NUL character: ids and tags are matched inside SQLite's JSON
    functions, which end a string at a NUL (a job whose id held one was stored and never
    claimed), and PostgreSQL cannot store one at all."""
    check_text(field, text)
    if "\x00" in text:
        raise InvalidJob(field, f"must not contain a NUL character, got {text!r}")
