"""`ProgressWriter`: how the progress a running job reports reaches its row.

A persistent store gets at most one report of an attempt every `PROGRESS_INTERVAL`
seconds, and a short attempt's last report goes in the transaction that records its
outcome, never in one of its own. A job reporting in a tight loop would otherwise commit a
transaction per call (about 28 µs each on SQLite, 230 with durability "full", measured),
and even one report per job made a short job wait for a write of its own (about 300 µs on
SQLite with four busy workers, queued behind the exchanges, measured), then write its
last report again, in another transaction, before its outcome.

A report is kept here, the latest of each attempt; the job's thread never writes it. The
housekeeper (`flush_due`) writes the latest waiting report of an attempt once an interval
has passed since the attempt's last write, or since it began: at once if that is so
already (it is woken), else when the interval ends. It tells, as it goes to sleep, when it
looks next (`plan`): a report due no sooner wakes nobody. If the attempt ends first, `take`
hands its latest report to the worker, which records it with the outcome, in the same
transaction (`Settlement.progress`): the row ends with it, and a short job's reports cost
no write at all. Meanwhile the process running the job reads the latest report here
(`latest`), until the outcome is recorded: its `poll` shows each report the moment it is
made, other processes within the interval. An attempt's last report is kept a while after
its outcome is recorded, for a `poll` that read the row before; never for one that read
it after (see `mark`): the row then holds what came of the attempt, and the job may run
again, from no progress, as a retry, a job taken back or one re-queued.

With no housekeeper running (a manager not started runs jobs in the caller's thread with
`run_pending`), the job's thread writes a report that is due when it makes it.

A store that is not persistent gets every report at once (it costs a dict update there).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any, Callable, Iterable, NamedTuple, Optional

from .clock import real_monotonic
from .context import JobContext

logger = logging.getLogger("jobcore.progress")

PROGRESS_INTERVAL = 0.1  # seconds between two writes of one attempt's progress, at least
RECENT_KEPT = 256  # last reports of settled attempts kept for `latest` (see `_recent`)


class Report(NamedTuple):
    """One progress report of a running attempt."""

    context: JobContext
    progress: float
    message: str
    details: dict[str, Any]


Write = Callable[[Report], None]


class ProgressWriter:
    """The progress reports of one pool's running attempts (see module docstring).

    `wake` asks the thread that calls `flush_due` (the housekeeper) to call it now; it
    returns False if no such thread runs."""

    def __init__(self, write: Write, *, throttle: bool, wake: Callable[[], bool]) -> None:
        self._write = write
        self._throttle = throttle
        self._wake = wake
        # _lock guards the four dicts and _flush_at. Never held while a report is written:
        # a job's thread takes it at each report, and must not wait for the store.
        self._lock = threading.Lock()
        self._waiting: dict[str, Report] = {}  # job id -> its latest report not yet written
        self._writing: dict[str, Report] = {}  # job id -> its report being written now
        self._ending: dict[str, Report] = {}  # job id -> its last report, to be recorded with its outcome
        # job id -> the last report of its running attempt written to its row, and of the
        # latest attempts settled (at most RECENT_KEPT, each with the value of _settles
        # once it was kept): `poll` reads the row before it asks `latest`, and a report
        # written (or an outcome recorded) in between must not make it show an older
        # report than it showed before.
        self._written: dict[str, Report] = {}
        self._recent: OrderedDict[str, tuple[Report, int]] = OrderedDict()
        self._settles = 0  # reports kept in _recent so far: what `mark` returns
        self._written_at: dict[str, float] = {}  # job id -> when its attempt last wrote a report
        # When the flusher looks next, as it was told (None: not told of anything waiting);
        # a report due sooner wakes it.
        self._flush_at: Optional[float] = None
        # _flushing is held by the one thread flushing, across its writes, so that two
        # reports of one attempt reach the store in the order they were made. Only
        # flushers take it.
        self._flushing = threading.Lock()

    def report(self, report: Report) -> None:
        """Keep `report` for later, or write it now to a store that is not persistent
        (see module docstring)."""
        if not self._throttle:
            self._write(report)
            return
        context = report.context
        with self._lock:
            if context.ended:
                # Made as the attempt ended, by code it left running: `take` hands on the
                # last report that counts (and kept here, it would outlive the attempt).
                return
            self._waiting[context.id] = report
            due = self._due_locked(context)
            flush_at = self._flush_at
            now = real_monotonic()
            # Told already (in a tight loop), or it looks by then anyway (`plan`); unless
            # that time is past: it is late, or gone (a manager stopped since).
            tell = flush_at is None or due < flush_at or flush_at < now
            if tell:
                self._flush_at = due if due > now else now
        if tell and not self._wake():
            with self._lock:
                self._flush_at = None  # nobody was told: the next report tries again
            if due <= now:
                self.flush_due()  # no housekeeper runs: this thread writes what is due

    def plan(self, at: float) -> float:
        """The flusher is going to sleep until real monotonic `at`: returns when it must
        wake instead (the earliest waiting report's due time, if sooner). A report due no
        sooner than that wakes it no more (one woken per short job's report cost a
        housekeeper pass per exchange, and the drain a third of its rate: measured)."""
        with self._lock:
            for report in self._waiting.values():
                if not report.context.abandoned:  # (its outcome takes it: `take`)
                    at = min(at, self._due_locked(report.context))
            self._flush_at = at
        return at

    def _due_locked(self, context: JobContext) -> float:
        """When the attempt's waiting report may be written: an interval after its last
        write, or after it began (a write of an earlier attempt came before that)."""
        written = self._written_at.get(context.id)
        began = context.began_at
        return (began if written is None or written < began else written) + PROGRESS_INTERVAL

    def flush_due(self) -> Optional[float]:
        """Write the waiting reports whose interval has passed; returns when the next one
        is due (real monotonic seconds), or None if none waits. A write the store fails is
        logged and dropped: a later report, or the outcome, brings the row up to date."""
        if not self._waiting:  # one dict read: most calls find nothing
            self._flush_at = None  # (a report added meanwhile woke the flusher: it looks again)
            return None
        with self._flushing:
            due, due_next = self._take_due(real_monotonic())
            for report in due:
                try:
                    self._write(report)
                except Exception as exc:  # the housekeeper goes on; so do the other reports
                    logger.warning("could not store a progress report of job %s: %s", report.context.id, exc)
            with self._lock:
                for report in due:
                    job_id = report.context.id
                    if self._writing.get(job_id) is report:
                        self._written[job_id] = report  # (before it leaves _writing: see `latest`)
                        del self._writing[job_id]
        return due_next

    def _take_due(self, now: float) -> tuple[list[Report], Optional[float]]:
        """Move the waiting reports due at `now` to `_writing`, leaving those of attempts
        given up at their timeout to their outcomes (`take`); returns the due reports and
        when the next one is due."""
        due: list[Report] = []
        due_next: Optional[float] = None
        with self._lock:
            for job_id, report in list(self._waiting.items()):
                if report.context.abandoned:
                    continue
                at = self._due_locked(report.context)
                if at > now:
                    due_next = at if due_next is None else min(due_next, at)
                    continue
                # Into _writing before out of _waiting: `latest`, reading without the
                # lock, finds it in one or the other.
                self._writing[job_id] = report
                del self._waiting[job_id]
                self._written_at[job_id] = now
                due.append(report)
            self._flush_at = due_next
        return due, due_next

    def take(self, context: JobContext, given_up: bool = False) -> Optional[Report]:
        """The attempt of `context` ended (`context.ended` is set): its latest report not
        yet surely in its row, for the worker to record with its outcome, or None. An
        attempt given up at its timeout hands it to the outcome recorded then (`given_up`:
        the exchange recording it asks), never to its thread, should that return (its
        outcome is discarded). `latest` shows it until `settled` says the outcome was
        recorded (that of an attempt given up: never)."""
        if not self._throttle or not context.reported_progress:
            return None  # most jobs: no lock taken
        if context.abandoned and not given_up:
            return None
        with self._lock:
            self._written_at.pop(context.id, None)
            report = self._waiting.get(context.id)
            if report is not None and report.context is context:
                self._ending[context.id] = report  # (before it leaves _waiting: see _take_due)
                del self._waiting[context.id]
            else:
                # Being written now, it may reach the store only after the outcome, and be
                # refused then: the outcome records it too.
                report = self._writing.get(context.id)
                if report is None or report.context is not context:
                    return None
                self._ending[context.id] = report
            return report

    def settled(self, job_ids: Iterable[str]) -> None:
        """The outcomes of these jobs' attempts were recorded (or discarded): forget them."""
        if not (self._ending or self._written_at or self._written or self._writing):  # most jobs reported nothing
            return
        with self._lock:
            recent = self._recent
            for job_id in job_ids:
                last = self._ending.get(job_id) or self._written.get(job_id)
                if last is not None:  # (into _recent before out of the others: see `latest`)
                    self._settles += 1
                    recent[job_id] = (last, self._settles)
                    recent.move_to_end(job_id)
                    if len(recent) > RECENT_KEPT:
                        recent.popitem(last=False)
                self._ending.pop(job_id, None)
                self._written.pop(job_id, None)
                waiting = self._waiting.get(job_id)
                if waiting is not None and waiting.context.abandoned:  # (its outcome did not take it)
                    del self._waiting[job_id]
                self._written_at.pop(job_id, None)  # (an attempt given up: `take` never came)
                writing = self._writing.get(job_id)
                if writing is not None and writing.context.over:
                    # Its write, still under way, must not move it to _written once it
                    # returns (`flush_due`): kept there, `latest` would show it to every
                    # later poll, whatever its mark, and nothing would ever remove it.
                    del self._writing[job_id]

    def mark(self) -> int:
        """A mark to take before reading a job's row, for `latest` (one int read)."""
        return self._settles

    def latest(self, job_id: str, since: Optional[int] = None) -> Optional[Report]:
        """The latest report of the job's attempt running here (or just settled), if any:
        waiting, taken for its outcome, being written, written (newest first), or the last
        one of an attempt settled lately. The caller applies it only to a row read before,
        showing that attempt still running.

        `since`, the `mark` taken before the row was read (None: not known), leaves out
        the report of an attempt settled before then: that row holds the attempt's outcome
        already, or what came after it (a retry, a recovery or a requeue, each from no
        progress, and maybe a new attempt of the same number here: a requeued job's
        attempts restart at 1)."""
        # Dict reads, each whole under the GIL; a report is put in its next place before
        # it leaves the last, so one of them has it.
        for place in (self._waiting, self._ending, self._writing, self._written):
            report = place.get(job_id)
            if report is not None:
                return None if report.context.abandoned else report
        kept = self._recent.get(job_id)
        if kept is None or (since is not None and kept[1] <= since):
            return None
        return None if kept[0].context.abandoned else kept[0]
