"""`WatchedLeases`: an SQLite repository that tells when its manager renewed a job's lease."""

from __future__ import annotations

import threading
from typing import Any

from jobcore import SQLiteRepository

WAIT = 10.0  # generous bound for a renewal that normally comes within a heartbeat


class WatchedLeases(SQLiteRepository):
    """An SQLite repository that tells when its manager has renewed a job's lease."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        # _renewals guards _renewed: for each job id, the latest time its lease was renewed at.
        self._renewals = threading.Condition()
        self._renewed: dict[str, float] = {}

    def heartbeat(self, worker_id: str, job_ids: Any, lease_expires_at: float, now: float) -> list[str]:
        cancelled = super().heartbeat(worker_id, job_ids, lease_expires_at, now)
        with self._renewals:
            for job_id in job_ids:
                self._renewed[job_id] = max(self._renewed.get(job_id, now), now)
            self._renewals.notify_all()
        return cancelled

    def renewed(self, job_id: str, at: float) -> bool:
        """Wait (bounded) for a renewal of the job's lease at time `at` or later."""
        with self._renewals:
            return self._renewals.wait_for(lambda: self._renewed.get(job_id, float("-inf")) >= at, WAIT)
