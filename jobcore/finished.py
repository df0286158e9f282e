"""`Finished`: an attempt that ended (or was given up) and awaits recording; it neither
decides nor records anything (see `recorder`, `refusals`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from .context import JobContext
from .execution import Outcome
from .progress import Report
from .repository.base import JobRecord, LogLine, Settlement


@dataclass(eq=False)
class Finished:
    """An attempt that ended (or was given up) and awaits recording."""

    record: JobRecord
    context: JobContext
    outcome: Outcome
    ran_for: float
    # Decided by the worker thread that ran the attempt (see `Recorder.decide`), so that the
    # dispatcher, which every job's recording waits on, does less; None: decided there.
    settlement: Optional[Settlement] = None
    # The attempt's last progress report that may not be in its row yet: recorded with
    # the outcome, in the same transaction (see `progress`).
    last_report: Optional[Report] = None
    # Its log lines not in the store yet (see `log_buffer`): recorded with the outcome too.
    log_lines: tuple[LogLine, ...] = ()
    # An attempt given up at its timeout (its thread may still run): takes the two above,
    # which wait here until then, for the exchange that records its outcome (`Recorder`),
    # outside the pool's lock: a store that cannot record them with an outcome has them
    # written by it. Called once; None: nothing to take.
    collect: Optional[Callable[[], tuple[Optional[Report], tuple[LogLine, ...]]]] = None
    # Only on the failure path (see `Refusals.record_each`): how many exchanges carrying
    # this outcome the repository failed, and since when (real monotonic seconds) it has
    # failed alone while the store renewed the job's lease (it works, but not for this
    # outcome).
    failed_exchanges: int = 0
    refused_since: Optional[float] = None
