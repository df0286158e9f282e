"""`LogBuffer`: how the lines a running job logs (`current_job().log`) reach the store.

A persistent store got each line as a write of its own, made by the job's thread: on
SQLite a drain of jobs that log one line each ran at 0.27× the rate of jobs that log
none, three lines each at 0.14× (measured), and with durability "full" each line waited
for an fsync. The lines of an attempt now wait here, in the order logged. The
housekeeper writes an attempt's waiting lines, all in one write, once LOG_INTERVAL has
passed since the first of them came (it is told when that is, as for progress reports:
see `plan`); when the attempt ends, the lines left go with its outcome, in the
transaction that records it (`Settlement.logs`), so a short job's lines cost no write of
their own. Other processes see a line within about LOG_INTERVAL; in this process,
`get_logs` first writes the job's waiting lines and waits for those going with an
outcome (`land`), so it shows every line logged before it was called. The price: a
process killed (SIGKILL, the OOM killer) loses the lines its attempts logged in the last
LOG_INTERVAL, with those attempts' outcomes. A manager built with `log_interval=0` has
each line written before `log` returns, as before.

The job's thread writes its attempt's lines itself when MOST_WAITING of them wait (a job
logging in a loop faster than the store takes them), and when no housekeeper runs (a
manager not started runs jobs in the caller's thread with `run_pending`). A store that is
not persistent gets every line at once.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Iterable, Optional

from . import lock_waits
from .clock import real_monotonic
from .context import JobContext
from .lock_waits import waitable_lock
from .repository.base import LogLine

logger = logging.getLogger("jobcore.logs")

LOG_INTERVAL = 0.1  # seconds an attempt's first waiting line waits, at most, by default (`log_interval`)
MOST_WAITING = 1000  # lines of one attempt waiting; the job's thread writes them past that
LAND_WAIT = 5.0  # seconds `land` waits, at most, for lines going with an outcome

Write = Callable[[str, list[LogLine]], None]  # (job id, its lines in order) -> stored


class _Waiting:
    """The lines of one attempt not yet handed on, and when the first of them came."""

    __slots__ = ("context", "lines", "since")

    def __init__(self, context: JobContext, since: float) -> None:
        self.context = context
        self.lines: list[LogLine] = []
        self.since = since


class LogBuffer:
    """The log lines of one pool's running attempts (see module docstring).

    `write(job_id, lines)` stores lines; `interval` is how long an attempt's first waiting
    line may wait (LOG_INTERVAL by default; 0, or `throttle` False: each line is written at
    once); `wake` asks the thread that calls `flush_due` (the housekeeper) to call it now,
    and returns False if no such thread runs."""

    def __init__(self, write: Write, *, throttle: bool, interval: float, wake: Callable[[], bool]) -> None:
        self._write = write
        self._throttle = throttle and interval > 0
        self._interval = interval
        self._wake = wake
        # _lock guards _waiting, _ending and _flush_at; _landed, a condition on it, is
        # notified as lines handed to outcomes are settled. Never held while lines are
        # written: a job's thread takes it at each line.
        self._lock = waitable_lock()  # (a caller of `land` waits on _landed)
        self._landed = threading.Condition(self._lock)
        # attempt -> its lines waiting here (by attempt, not job: code an attempt given up
        # after its timeout left running may still log, beside the next attempt, until
        # `log` sees it over; the lines it logged before go with its JobTimeout's outcome)
        self._waiting: dict[JobContext, _Waiting] = {}
        # job id -> how many of its attempts handed lines to an outcome not settled yet
        self._ending: dict[str, int] = {}
        # When the flusher looks next, as it was told (None: not told of anything waiting);
        # lines due sooner wake it.
        self._flush_at: Optional[float] = None
        # _flushing is held by a thread writing lines it took from _waiting, across the
        # write: the lines of one job reach the store in the order they were logged (a
        # later write, or the outcome's transaction, waits for it), and `land` finds no
        # line between here and the store. Taken before _lock, never inside it. Reentrant:
        # a signal handler's `stop()` (which writes what waits) may interrupt this thread
        # while it writes lines for `get_logs`, and waited for itself for ever.
        self._flushing = threading.RLock()

    def report(self, context: JobContext, line: LogLine) -> None:
        """Keep `line`, logged by the attempt of `context`, for later; or write it now
        (see module docstring)."""
        if not self._throttle:
            self._write(context.id, [line])
            return
        now = real_monotonic()
        with self._lock:
            waiting = self._waiting.get(context)
            if waiting is None:
                waiting = self._waiting[context] = _Waiting(context, now)
            waiting.lines.append(line)
            due = waiting.since + self._interval
            flush_at = self._flush_at
            # Told already, or it looks by then anyway (`plan`); unless that time is
            # past: it is late, or gone (a manager stopped since).
            tell = flush_at is None or due < flush_at or flush_at < now
            if tell:
                self._flush_at = due
            crowded = len(waiting.lines) >= MOST_WAITING
        if tell and not self._wake():
            with self._lock:
                self._flush_at = None  # nobody was told: the next line tries again
            self._write_now(context)  # no housekeeper runs: this thread writes them
        elif crowded:
            self._write_now(context)

    def plan(self, at: float) -> float:
        """The flusher is going to sleep until real monotonic `at`: returns when it must
        wake instead (the earliest waiting lines' due time, if sooner)."""
        with self._lock:
            for waiting in self._waiting.values():
                if not waiting.context.abandoned:  # (its outcome takes them: `take`)
                    at = min(at, waiting.since + self._interval)
            self._flush_at = at
        return at

    def flush_due(self) -> Optional[float]:
        """Write the waiting lines of every attempt whose first line has waited
        LOG_INTERVAL; returns when the next are due (real monotonic seconds), or None if
        none wait. Lines the store fails to take wait again (logged): the next flush, or
        the outcome, brings them."""
        if not self._waiting:  # one dict read: most calls find nothing
            self._flush_at = None
            return None
        with self._flushing:
            now = real_monotonic()
            due: list[_Waiting] = []
            due_next: Optional[float] = None
            with self._lock:
                for context, waiting in list(self._waiting.items()):
                    if context.abandoned:  # given up at its timeout: they go with its outcome
                        continue
                    at = waiting.since + self._interval
                    if at > now:
                        due_next = at if due_next is None else min(due_next, at)
                    else:
                        del self._waiting[context]
                        due.append(waiting)
                self._flush_at = due_next
            for waiting in due:
                if not self._store(waiting):
                    due_next = now + self._interval if due_next is None else min(due_next, now + self._interval)
        return due_next

    def flush_all(self) -> None:
        """Write every line waiting, due or not (the housekeeper stopped). Lines the store
        fails to take wait again (logged)."""
        if not self._waiting:
            return
        with self._flushing:
            with self._lock:
                waiting, self._waiting, self._flush_at = list(self._waiting.values()), {}, None
            for entry in waiting:
                self._store(entry)

    def _write_now(self, context: JobContext) -> None:
        """Write the lines of the attempt of `context` waiting here (the job's thread, or
        `land`), raising what the store raised (the lines wait again)."""
        with self._flushing:
            with self._lock:
                waiting = self._waiting.pop(context, None)
            if waiting is not None:
                self._store(waiting, reraise=True)

    def _store(self, waiting: _Waiting, reraise: bool = False) -> bool:
        """Write `waiting`'s lines (with _flushing held); on failure put them back in front
        of any logged since, and return False (or raise, if `reraise`)."""
        try:
            self._write(waiting.context.id, waiting.lines)
            return True
        except Exception as exc:
            with self._lock:
                later = self._waiting.get(waiting.context)
                if later is not None:
                    waiting.lines += later.lines
                self._waiting[waiting.context] = waiting
            if reraise:
                raise
            logger.warning("could not store %d log lines of job %s (tried again later): %s",
                           len(waiting.lines), waiting.context.id, exc)
            return False

    def take(self, context: JobContext, handing_on: bool) -> tuple[LogLine, ...]:
        """The attempt of `context` ended (`context.over` is set): its lines still waiting,
        in order, for the transaction recording its outcome (`handing_on`: `settled` is
        called for its job once that is recorded or given up) or for the caller to write."""
        if not self._throttle or context not in self._waiting:  # most jobs: no lock taken
            return ()
        with self._flushing:  # lines of it being written now reach the store first
            with self._lock:
                waiting = self._waiting.pop(context, None)
                if waiting is None:
                    return ()
                if handing_on:
                    self._ending[context.id] = self._ending.get(context.id, 0) + 1
        return tuple(waiting.lines)

    def settled(self, job_ids: Iterable[str]) -> None:
        """The outcomes of these jobs' attempts were recorded (or given up): lines they
        carried are in the store (or lost with them)."""
        if not self._ending:  # most jobs logged nothing
            return
        with self._lock:
            landed = False
            for job_id in job_ids:
                left = self._ending.get(job_id)
                if left is not None:
                    landed = True
                    if left > 1:
                        self._ending[job_id] = left - 1
                    else:
                        del self._ending[job_id]
            if landed:
                self._landed.notify_all()

    def land(self, job_id: str) -> None:
        """Before the job's log is read here: write its waiting lines now, and wait (up to
        LAND_WAIT) for those handed to an outcome to be recorded, so that the read shows
        every line logged before this call. Raises what writing raised."""
        if not self._throttle:
            return
        with self._lock:
            attempts = [context for context in self._waiting if context.id == job_id]
            if not attempts and job_id not in self._ending:
                return
        for context in attempts:
            self._write_now(context)
        deadline = real_monotonic() + LAND_WAIT
        with self._lock:
            while job_id in self._ending and (left := deadline - real_monotonic()) > 0:
                lock_waits.wait(self._landed, self._lock, left)
            if self._ending.pop(job_id, None) is not None:
                # Its outcome neither recorded nor given up by now (a `run_pending` whose
                # exchange failed): the lines went with it; later reads wait no more.
                logger.warning("log lines of job %s handed to its outcome were not stored within %.0fs",
                               job_id, LAND_WAIT)
