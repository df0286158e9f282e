"""`SingleStep`: a pool's ready jobs run one by one in the calling thread; it starts no
worker thread and enforces no timeout of its own (a job with `isolation="process"` runs in
a child process, whose runner still ends it at its timeout).

For tests and immediate mode, on a pool that is not started (`WorkerPool.run_pending`):
each job is claimed, run and recorded in turn, each in its own repository call, and due
cron schedules are fired on the way. The attempt shows in `PoolState.running` while it
runs, as a worker thread's does.
"""

from __future__ import annotations

from typing import Callable, Optional

from .attempts import AttemptRunner
from .clock import Clock
from .context import ContextSink, JobContext
from .deferred_interrupts import held_interrupts
from .errors import RepositoryError
from .pool_state import Attempt, PoolState, Slot
from .progress import Report
from .queue import ReadyQueue
from .recorder import Finished, Recorder
from .repository.base import LogLine


class SingleStep:
    """Single-step mode for one pool: `sink` takes its jobs' reports, and `last_report`
    and `log_lines` give an ended attempt's last progress report and waiting log lines
    for its outcome's transaction."""

    def __init__(self, state: PoolState, queue: ReadyQueue, recorder: Recorder, attempts: AttemptRunner,
                 clock: Clock, sink: ContextSink,
                 last_report: Callable[[JobContext], Optional[Report]],
                 log_lines: Callable[[JobContext], tuple[LogLine, ...]]) -> None:
        self._state = state
        self._queue = queue
        self._recorder = recorder
        self._attempts = attempts
        self._clock = clock
        self._sink = sink
        self._last_report = last_report
        self._log_lines = log_lines

    def run_pending(self, limit: Optional[int] = None) -> int:
        """Run ready jobs one by one in the calling thread until none is ready (or `limit`
        ran); fire due schedules on the way. Returns how many jobs ran. Timeouts are not
        enforced here. For tests and immediate mode, on a pool that is not started.
        A job interrupted by Ctrl-C (or calling `sys.exit`) is recorded as failed with
        that error, which is then raised here, in the caller's thread."""
        ran = 0
        while limit is None or ran < limit:
            schedules = self._queue.pop_due_schedules()
            if schedules:
                self._recorder.fire_schedules(schedules)
            entries = self._queue.pop_ready(1)
            if not entries:
                return ran
            claimed = self._recorder.exchange([], [entries[0].job_id])
            if not claimed:
                continue
            record = claimed[0]
            context = JobContext(record.id, record.name, record.attempts, self._sink)
            started = self._clock.monotonic()
            try:
                with self._state.lock:
                    self._state.ran_in_callers = True  # (first: see `PoolState._in_callers_locked`)
                    self._state.running[record.id] = Attempt(record, context, Slot(-1), None, started)
                outcome = self._attempts.run(record, context)
                context.ended = True
                last_report = self._last_report(context)
                log_lines = self._log_lines(context)
            finally:
                # Also after Ctrl-C landed here rather than in the job: held on, the job
                # would have its lease renewed by this manager's heartbeats once started,
                # and never be taken back; let go, its lease lapses and it runs again.
                with self._state.lock:
                    self._state.running.pop(record.id, None)
            with held_interrupts():  # a Ctrl-C in a classifier or a channel's `wants`: once recorded
                if self._recorder.exchange([Finished(record, context, outcome, self._clock.monotonic() - started,
                                                     last_report=last_report, log_lines=log_lines)], []) is None:
                    raise RepositoryError(f"could not record the outcome of job {record.id}; see the log")
            ran += 1
            if isinstance(outcome.error, (KeyboardInterrupt, SystemExit)):
                raise outcome.error  # recorded as any error; now it stops the caller, as a plain call would
        return ran
