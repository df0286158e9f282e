"""`MemoryWorkers`: `MemoryRepository`'s registry of the managers running on it (register, beat, list, reap).

Entries are `WorkerInfo`s, replaced whole, under the store's one lock. Not the jobs a
worker holds (their leases are `memory`'s: `heartbeat`, `recover`).
"""

from __future__ import annotations

import builtins
import dataclasses
from typing import Collection, Optional

from .base import WorkerInfo
from .memory_state import MemoryState


class MemoryWorkers(MemoryState):
    """The worker registry of `MemoryRepository` (`_workers`, guarded by `_lock`, as all
    of its state: `MemoryState`)."""

    def register_worker(self, worker_id: str, host: str, pid: int, now: float,
                        lease_timeout: Optional[float] = None) -> None:
        with self._lock:
            self._workers[worker_id] = WorkerInfo(worker_id, host, pid, now, now, (), lease_timeout)

    def beat_worker(self, worker_id: str, running: Collection[str], now: float) -> bool:
        with self._lock:
            info = self._workers.get(worker_id)
            if info is not None:
                self._workers[worker_id] = dataclasses.replace(info, heartbeat_at=now, running=tuple(running))
            return info is not None

    def unregister_worker(self, worker_id: str) -> None:
        with self._lock:
            self._workers.pop(worker_id, None)

    def list_workers(self) -> builtins.list[WorkerInfo]:
        with self._lock:
            return sorted(self._workers.values(), key=lambda w: (w.started_at, w.worker_id))

    def reap_workers(self, before: float, now: Optional[float] = None) -> builtins.list[str]:
        with self._lock:
            stale = [w.worker_id for w in self._workers.values()
                     if w.heartbeat_at < (before if now is None or w.lease_timeout is None
                                          else now - w.lease_timeout)]
            for worker_id in stale:
                del self._workers[worker_id]
            return stale
