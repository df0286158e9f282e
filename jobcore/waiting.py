"""`Settlements`: what one manager knows of the jobs that settled in its process, and the
callers blocked in `wait` until a job settles.

It reads no rows itself: `wait` is given how to read one and how to tell whether the
job is held here (then it settles here, and the waiter is woken at that moment). Jobs
settled by other processes are noticed by reading, at growing intervals.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Iterable, Optional

from .clock import SYSTEM_CLOCK
from .errors import JobNotFound
from .models import JobResult, JobStatus
from .recorder import Completion
from .records import result_of
from .repository.base import JobRecord

RECENT_COMPLETIONS = 4096  # jobs completed here that `wait` can answer without a read, at first
MOST_COMPLETIONS = 32_768  # and at most: remembered while callers of `wait` fall behind
BEHIND_READS = 16  # reads of jobs completed here, while that many are remembered, to double it
FIRST_INTERVAL = 0.01  # seconds between reads of a job another process may settle, doubling
LAST_INTERVAL = 0.1  # to this


class Settlements:
    """The jobs settled here, and the threads waiting for one (see module docstring)."""

    def __init__(self) -> None:
        # _changed (a Condition on its own lock) guards _count, bumped whenever a job this
        # process runs or cancels reaches a terminal state, _waiting, _completions, _keep
        # and _behind; `wait` sleeps on it and is woken when its job settles here.
        self._changed = threading.Condition(threading.Lock())
        self._count = 0
        self._waiting: dict[str, int] = {}  # job id -> threads in `wait` for it
        # The latest jobs completed here, oldest first (at most _keep): `wait` answers from
        # these without reading the row back. A caller waiting on every job in turn may fall
        # further behind the workers than that; each job it then reads back was completed
        # here before the oldest one remembered, and after BEHIND_READS of them _keep
        # doubles (up to MOST_COMPLETIONS, about 0.8 KB each), so it catches up again
        # instead of reading every job from then on.
        self._completions: OrderedDict[str, Completion] = OrderedDict()
        self._keep = RECENT_COMPLETIONS
        self._behind = 0  # reads counted towards the next doubling

    def mark(self, settled: Iterable[tuple[str, Optional[Completion]]]) -> None:
        """Note that these jobs reached a terminal state here (each with its `Completion`
        if it completed) and wake whoever waits for one of them: one notification for all,
        so a waiter woken finds every one of them already noted."""
        with self._changed:
            waited = False
            for job_id, completion in settled:
                self._count += 1
                if completion is not None:
                    self._completions[job_id] = completion
                    if len(self._completions) > self._keep:
                        self._completions.popitem(last=False)
                waited = waited or job_id in self._waiting  # most settle with nobody waiting
            if waited:
                self._changed.notify_all()

    def forget(self, job_ids: Iterable[str]) -> None:
        """Forget the completions of these ids (used again by new jobs after theirs were
        deleted, by any process)."""
        # Looked up first without the lock (one dict lookup each, whole under the GIL):
        # an id is only ever found here after its job was deleted and its id given again,
        # so most enqueues take no lock for this.
        completions = self._completions
        known = [job_id for job_id in job_ids if job_id in completions] if completions else None
        if known:
            with self._changed:
                for job_id in known:
                    completions.pop(job_id, None)

    def forget_all(self) -> None:
        """Forget every completion (their rows may have been deleted)."""
        with self._changed:
            self._completions.clear()

    def __len__(self) -> int:
        """How many completions are remembered."""
        with self._changed:
            return len(self._completions)

    def wait(self, job_id: str, timeout: Optional[float], *, held: Callable[[str], bool],
             read: Callable[[str], Optional[JobRecord]], worker_id: Optional[str] = None) -> JobResult:
        """Block until `job_id` is terminal and return what `poll` would show of it.

        `timeout`: seconds (checked by the caller; None: no limit), then `TimeoutError`.
        `held(job_id)` tells whether the job settles here (then its row is not read until
        it has); `read` reads its row without arguments. `worker_id`: the one this process
        completes jobs as (a completed row of its read back counts as falling behind).
        `JobNotFound` for an unknown id."""
        deadline = None if timeout is None else SYSTEM_CLOCK.monotonic() + timeout
        interval = FIRST_INTERVAL
        while True:
            with self._changed:
                seen = self._count
                completion = self._completions.get(job_id)
            if completion is not None:  # completed here: its row holds nothing else
                return completion.job_result()
            if held(job_id):  # and wakes us when it does: no need to read
                status = JobStatus.RUNNING
            else:
                record = read(job_id)
                if record is None:
                    raise JobNotFound(job_id)
                if record.status.is_terminal:
                    if (record.status is JobStatus.COMPLETED and worker_id is not None
                            and record.worker_id == worker_id):
                        self._read_back(record.completed_at)
                    return result_of(record)
                status = record.status
            remaining = None if deadline is None else deadline - SYSTEM_CLOCK.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"job {job_id!r} is still {status.value} after {timeout}s")
            # Settled here: woken at once. Settled by another process: noticed by reading.
            self._sleep(job_id, seen, interval if remaining is None else min(interval, remaining))
            interval = min(interval * 2, LAST_INTERVAL)

    def _read_back(self, completed_at: Optional[float]) -> None:
        """A job completed here (at `completed_at`) was read back: count it if it was
        forgotten, having completed before the oldest completion remembered (not one
        read between its commit and `mark`), and remember more after enough of them."""
        with self._changed:
            if len(self._completions) < self._keep or self._keep >= MOST_COMPLETIONS:
                return
            oldest = next(iter(self._completions.values()))
            if completed_at is None or completed_at >= oldest.at:
                return
            self._behind += 1
            if self._behind >= BEHIND_READS:
                self._keep, self._behind = min(2 * self._keep, MOST_COMPLETIONS), 0

    def _sleep(self, job_id: str, seen: int, seconds: float) -> None:
        """Sleep up to `seconds`, or until a job settles here, unless one has since `seen`."""
        with self._changed:
            if self._count != seen:
                return
            self._waiting[job_id] = self._waiting.get(job_id, 0) + 1
            try:
                self._changed.wait(seconds)
            finally:
                left = self._waiting.pop(job_id) - 1
                if left:
                    self._waiting[job_id] = left
