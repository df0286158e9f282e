"""`ProgressWriter`: how the progress a running job reports reaches its row.

A persistent store gets at most one report of an attempt every `PROGRESS_INTERVAL`
seconds. A job reporting in a tight loop would otherwise commit a transaction per call
(about 28 µs each on SQLite, 230 with durability "full", measured). The first report
after a quiet spell is written at once; a report made sooner waits, and the latest
waiting one is written once the interval has passed (`flush_due`, called by the
housekeeper, which is woken when a first report waits) or when the attempt ends
(`take`, before its outcome is recorded), whichever comes first. Meanwhile the process
running the job reads the latest report here (`latest`): its `poll` shows each report
the moment it is made, other processes within the interval.

A store that is not persistent gets every report at once (it costs a dict update there).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, NamedTuple, Optional

from .clock import real_monotonic
from .context import JobContext

logger = logging.getLogger("jobcore.progress")

PROGRESS_INTERVAL = 0.1  # seconds between two writes of one attempt's progress, at least


class Report(NamedTuple):
    """One progress report of a running attempt."""

    context: JobContext
    progress: float
    message: str
    details: dict[str, Any]


Write = Callable[[Report], None]


class ProgressWriter:
    """The progress reports of one pool's running attempts (see module docstring)."""

    def __init__(self, write: Write, *, throttle: bool, wake: Callable[[], None]) -> None:
        self._write = write
        self._throttle = throttle
        self._wake = wake  # tells the housekeeper that a first report waits
        # _lock guards _waiting and _written_at, and is held while a report is written, so
        # that two reports of one attempt reach the store in the order they were made.
        self._lock = threading.Lock()
        self._waiting: dict[str, Report] = {}  # job id -> its latest report not yet written
        self._written_at: dict[str, float] = {}  # job id -> when its last report was written

    def report(self, report: Report) -> None:
        """Write `report` now, or keep it to write later (see module docstring)."""
        if not self._throttle:
            self._write(report)
            return
        job_id, now = report.context.id, real_monotonic()
        with self._lock:
            if report.context.ended:
                # Made as the attempt ended, by code it left running: `take` writes the
                # last report that counts (and kept here, it would outlive the attempt).
                return
            last = self._written_at.get(job_id)
            if last is None or now - last >= PROGRESS_INTERVAL:
                self._waiting.pop(job_id, None)
                self._written_at[job_id] = now
                self._write(report)
                return
            first = not self._waiting
            self._waiting[job_id] = report
        if first:
            self._wake()

    def flush_due(self) -> Optional[float]:
        """Write the waiting reports whose interval has passed; returns when the next one
        is due (real monotonic seconds), or None if none waits."""
        if not self._waiting:  # one dict read: most calls find nothing
            return None
        now, due_next = real_monotonic(), None
        with self._lock:
            for job_id, report in list(self._waiting.items()):
                if report.context.abandoned:  # timed out: nothing of it is recorded any more
                    del self._waiting[job_id]
                    continue
                due = self._written_at.get(job_id, now) + PROGRESS_INTERVAL
                if due > now:
                    due_next = due if due_next is None else min(due_next, due)
                    continue
                del self._waiting[job_id]
                self._written_at[job_id] = now
                self._write(report)
        return due_next

    def take(self, context: JobContext) -> None:
        """The attempt of `context` ended (`context.ended` is set): write its waiting report,
        if any, and forget it. Called by the worker thread before the outcome is recorded
        (the write is refused once the job ended); a store that fails it is logged, and the
        outcome goes on."""
        if not self._throttle:
            return
        with self._lock:
            self._written_at.pop(context.id, None)
            report = self._waiting.get(context.id)
            if report is None or report.context is not context:
                return
            del self._waiting[context.id]
            if context.abandoned:
                return
            try:
                self._write(report)
            except Exception as exc:  # the worker thread must go on to record the outcome
                logger.warning("could not store the last progress report of job %s: %s", context.id, exc)

    def latest(self, job_id: str) -> Optional[Report]:
        """The latest report of the job's running attempt not yet written, if any."""
        report = self._waiting.get(job_id)  # one dict read, whole under the GIL
        return None if report is None or report.context.abandoned else report
