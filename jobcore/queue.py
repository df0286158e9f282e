"""`ReadyQueue`: the in-memory index of jobs this process may run, and when.

A binary heap (`heapq`) of ready job ids ordered by priority then enqueue order, plus a
heap of timers for jobs due later. It stores ids and keys, never payloads; the repository
stays the source of truth, so an id popped here may fail to claim, and that is fine.
Idle workers sleep on the queue's condition until an entry is pushed or a timer is due.
"""

from __future__ import annotations

import heapq
import threading
from typing import Optional

from .clock import Clock
from .repository.base import QueueEntry


class ReadyQueue:
    """A priority queue of `QueueEntry` with timers, shared by a manager's workers."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        # _cond guards every attribute below; workers wait on it when nothing is ready.
        self._cond = threading.Condition(threading.Lock())
        # heapq pops the smallest: -priority puts the highest first, seq keeps FIFO.
        self._ready: list[tuple[int, int, QueueEntry]] = []
        self._timers: list[tuple[float, int, QueueEntry]] = []
        self._members: set[str] = set()
        self._closed = False
        clock.subscribe(self.wake)  # a fake clock's jump makes timers due

    def push(self, entry: QueueEntry, due_at: Optional[float] = None) -> None:
        """Queue `entry`, ready now or (with `due_at`, epoch seconds) once that time comes.

        An id already queued is not queued twice."""
        with self._cond:
            if entry.job_id in self._members:
                return
            self._members.add(entry.job_id)
            if due_at is None:
                heapq.heappush(self._ready, (-entry.priority, entry.seq, entry))
                self._cond.notify()
            else:
                earliest = not self._timers or due_at < self._timers[0][0]
                heapq.heappush(self._timers, (due_at, entry.seq, entry))
                if earliest:  # sleepers must shorten their wait
                    self._cond.notify_all()

    def pop(self) -> Optional[QueueEntry]:
        """Block until an entry is ready and return it; None once the queue is closed."""
        with self._cond:
            while not self._closed:
                now = self._clock.time()
                while self._timers and self._timers[0][0] <= now:
                    _, _, entry = heapq.heappop(self._timers)
                    heapq.heappush(self._ready, (-entry.priority, entry.seq, entry))
                if self._ready:
                    entry = heapq.heappop(self._ready)[2]
                    self._members.discard(entry.job_id)
                    if self._ready:
                        self._cond.notify()  # another sleeper may take the next
                    return entry
                timeout = self._timers[0][0] - now if self._timers else None
                self._cond.wait(timeout)
            return None

    def wake(self) -> None:
        """Make every sleeper re-read the clock (the clock jumped, or state changed)."""
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        """Stop handing out entries; every `pop` returns None. Entries are kept."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def reopen(self) -> None:
        """Hand out entries again after `close`."""
        with self._cond:
            self._closed = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._members)

    def next_due(self) -> Optional[float]:
        """When the earliest timer is due (epoch seconds), or None."""
        with self._cond:
            return self._timers[0][0] if self._timers else None
