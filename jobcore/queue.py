"""`ReadyQueue`: the in-memory index of jobs this process may run, and when.

A binary heap (`heapq`) of ready job ids ordered by priority then enqueue order, plus a
heap of timers for jobs due later. It stores ids and keys, never payloads; the repository
stays the source of truth, so an id taken from here may fail to claim, and that is fine.
It never blocks: whoever consumes it is told through `listener` when an entry became
ready or the earliest timer changed, and sleeps on its own condition until then.
"""

from __future__ import annotations

import heapq
import threading
from typing import Callable, Optional

from .clock import Clock
from .repository.base import QueueEntry


class ReadyQueue:
    """A priority queue of `QueueEntry` with timers, shared by a manager's dispatcher."""

    def __init__(self, clock: Clock, listener: Callable[[], None] = lambda: None) -> None:
        self._clock = clock
        self.listener = listener  # called, without any lock held, when there may be work
        # _lock guards _ready, _timers and _members.
        self._lock = threading.Lock()
        # heapq pops the smallest: -priority puts the highest first, seq keeps FIFO.
        self._ready: list[tuple[int, int, QueueEntry]] = []
        self._timers: list[tuple[float, int, QueueEntry]] = []
        # Cron schedules wait apart: firing one needs no worker, so it never queues
        # behind jobs for a free slot.
        self._schedules: list[tuple[float, int, QueueEntry]] = []
        self._members: set[str] = set()
        self._high_seq = 0  # the largest seq ever queued
        clock.subscribe(self.wake)  # a fake clock's jump makes timers due

    def push(self, entry: QueueEntry, due_at: Optional[float] = None) -> None:
        """Queue `entry`, ready now or (with `due_at`, epoch seconds) once that time comes.

        An id already queued is not queued twice."""
        with self._lock:
            if entry.job_id in self._members:
                return
            self._members.add(entry.job_id)
            self._high_seq = max(self._high_seq, entry.seq)
            if entry.is_schedule:
                due = self._clock.time() if due_at is None else due_at
                tell = not self._schedules or due < self._schedules[0][0]
                heapq.heappush(self._schedules, (due, entry.seq, entry))
            elif due_at is None:
                heapq.heappush(self._ready, (-entry.priority, entry.seq, entry))
                tell = True
            else:
                tell = not self._timers or due_at < self._timers[0][0]
                heapq.heappush(self._timers, (due_at, entry.seq, entry))
        if tell:
            self.listener()

    def push_ready(self, entries: list[QueueEntry]) -> None:
        """Queue entries that are ready now (no schedules), telling the listener once."""
        if not entries:
            return
        with self._lock:
            members, ready, high = self._members, self._ready, self._high_seq
            for entry in entries:
                if entry.job_id not in members:
                    members.add(entry.job_id)
                    heapq.heappush(ready, (-entry.priority, entry.seq, entry))
                    high = max(high, entry.seq)
            self._high_seq = high
        self.listener()

    def _release_due(self) -> None:
        now = self._clock.time()
        while self._timers and self._timers[0][0] <= now:
            _, _, entry = heapq.heappop(self._timers)
            heapq.heappush(self._ready, (-entry.priority, entry.seq, entry))

    def has_ready(self) -> bool:
        """True if an entry is ready now (timers that came due count)."""
        with self._lock:
            self._release_due()
            return bool(self._ready)

    def pop_ready(self, limit: int) -> list[QueueEntry]:
        """Take up to `limit` ready entries, best first; never blocks."""
        with self._lock:
            self._release_due()
            taken = []
            while self._ready and len(taken) < limit:
                entry = heapq.heappop(self._ready)[2]
                self._members.discard(entry.job_id)
                taken.append(entry)
            return taken

    @property
    def high_seq(self) -> int:
        """The largest `seq` ever queued here: a job stored later has a larger one."""
        with self._lock:
            return self._high_seq

    def drop_stale(self, up_to_seq: int) -> int:
        """Forget the ready entries of plain pending jobs (no `run_at`) with a `seq` up to
        `up_to_seq`: the repository just found no such job left to claim, so other
        processes took them all. Due timers stay. Returns how many were dropped; the
        periodic refill from the repository puts back any job dropped in error."""
        with self._lock:
            kept, dropped = [], 0
            for item in self._ready:
                if item[2].run_at is None and item[1] <= up_to_seq:
                    self._members.discard(item[2].job_id)
                    dropped += 1
                else:
                    kept.append(item)
            if dropped:
                heapq.heapify(kept)
                self._ready = kept
            return dropped

    def pop_due_schedules(self) -> list[QueueEntry]:
        """Take every cron schedule that is due to fire; never blocks."""
        with self._lock:
            now = self._clock.time()
            due = []
            while self._schedules and self._schedules[0][0] <= now:
                entry = heapq.heappop(self._schedules)[2]
                self._members.discard(entry.job_id)
                due.append(entry)
            return due

    def next_due(self) -> Optional[float]:
        """When the earliest timer or schedule is due (epoch seconds), or None."""
        with self._lock:
            heads = [heap[0][0] for heap in (self._timers, self._schedules) if heap]
            return min(heads) if heads else None

    def wake(self) -> None:
        """Tell the consumer to look again (the clock jumped, or state changed)."""
        self.listener()

    def __len__(self) -> int:
        with self._lock:
            return len(self._members)
