"""Job storage: the `JobRepository` contract and the SQLite and in-memory backends."""

from .base import Cascade, CancelOutcome, JobRecord, JobRepository, QueueEntry, WorkerInfo
from .memory import MemoryRepository
from .sqlite import SQLiteRepository

__all__ = ["Cascade", "CancelOutcome", "JobRecord", "JobRepository", "MemoryRepository",
           "QueueEntry", "SQLiteRepository", "WorkerInfo"]
