"""`MemoryState`: what the parts of `MemoryRepository` share (its state and its row steps), declared once; it holds no code.

`MemoryRepository.__init__` sets the attributes below, all guarded by `_lock`, and defines
the row steps; `MemoryAdding`, `MemoryChanging`, `MemoryListing` and `MemoryWorkers`
subclass this to use them, each in its own module.
"""

from __future__ import annotations

import threading

from ..models import JobStatus
from .base import JobRecord, JobRepository, WorkerInfo
from .values import FailedKey


class MemoryState(JobRepository):
    """The attributes `MemoryRepository` sets (all guarded by `_lock`) and the row steps it
    provides, for the parts it is built of."""

    _lock: threading.RLock
    _jobs: dict[str, JobRecord]
    _by_status: dict[JobStatus, dict[str, JobRecord]]
    _entered: dict[JobStatus, int]
    _failed_order: list[FailedKey]
    _by_owner: dict[str, dict[str, JobRecord]]
    _dependents: dict[str, set[str]]
    _logs: dict[str, list[tuple[float, str, str]]]
    _unique: dict[str, str]
    _next_seq: int
    _workers: dict[str, WorkerInfo]

    # Provided by MemoryRepository.
    def _add_row(self, row: JobRecord) -> None:
        raise NotImplementedError

    def _set_status(self, row: JobRecord, status: JobStatus) -> None:
        raise NotImplementedError

    def _end(self, row: JobRecord, status: JobStatus, now: float) -> None:
        raise NotImplementedError

    def _forget_unique(self, row: JobRecord) -> None:
        raise NotImplementedError

    def _cancel_dependents(self, root: JobRecord, now: float) -> tuple[str, ...]:
        raise NotImplementedError
