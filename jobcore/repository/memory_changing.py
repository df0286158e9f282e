"""`MemoryChanging`: changes made to `MemoryRepository`'s jobs on request (`cancel`, `requeue`, `delete_finished`).

What `JobManager.cancel`, `retry` and `cleanup_old_results` ask of the store, each one step
under its one lock. Not the changes a worker makes to the jobs it runs (claiming,
settling, leases: `memory`'s), nor storing new jobs (`memory_adding`'s).
"""

from __future__ import annotations

import time
from typing import Optional

from ..models import TERMINAL_STATUSES, JobStatus
from .base import Cascade, CancelOutcome, JobRecord, QueueEntry
from .memory_state import MemoryState


class MemoryChanging(MemoryState):
    """The changing-on-request part of `MemoryRepository` (its state and row steps:
    `MemoryState`)."""

    def cancel(self, job_id: str, now: float, reason: str) -> tuple[CancelOutcome, Cascade]:
        with self._lock:
            row = self._jobs.get(job_id)
            if row is None:
                return CancelOutcome.NOT_FOUND, Cascade()
            if row.status in TERMINAL_STATUSES:
                return CancelOutcome.FINISHED, Cascade()
            if row.status is JobStatus.RUNNING:
                row.cancel_requested = True
                return CancelOutcome.REQUESTED, Cascade()
            self._end(row, JobStatus.CANCELLED, now)
            row.error, row.error_type = reason, "JobCancelled"
            return CancelOutcome.CANCELLED, Cascade(cancelled=self._cancel_dependents(row, now))

    def requeue(self, job_id: str, now: float) -> Optional[QueueEntry]:
        with self._lock:
            row = self._jobs.get(job_id)
            if row is None or row.status not in (JobStatus.FAILED, JobStatus.CANCELLED) or row.is_schedule:
                return None
            if row.unique_key is not None and row.unique_key in self._unique:
                return None
            # Its dependencies still linked to it: cleanup unlinks a deleted one (as SQL deletes
            # its job_deps rows), so a new job given that id later is not one of them.
            linked = [self._jobs[dep] for dep in row.depends_on if job_id in self._dependents.get(dep, ())]
            if any(dep.status in (JobStatus.FAILED, JobStatus.CANCELLED) for dep in linked):
                return None  # a dependency will never complete: retry it first
            if row.blocked and any(dep not in self._jobs for dep in row.depends_on):
                return None  # it ended blocked, and a dependency was deleted: whether that completed is unknown
            self._set_status(row, JobStatus.PENDING)
            row.attempts = 0
            row.run_at = row.started_at = row.completed_at = None
            row.error = row.error_type = row.traceback = None
            row.progress, row.progress_message, row.progress_details = 0.0, "", {}
            row.worker_id, row.cancel_requested = None, False
            row.blocked = sum(1 for dep in linked if dep.status is not JobStatus.COMPLETED)
            if row.unique_key is not None:
                self._unique[row.unique_key] = row.id
            return row.queue_entry()

    def delete_finished(self, before: Optional[float]) -> int:
        """Delete DELETE_CHUNK jobs a hold of the lock, letting other threads in between:
        deleting 250,000 in one hold stopped every other store call for 450 ms (a job due
        then started that late). The completed and cancelled jobs are found without the
        lock and checked again as they go; the failed ones are the front of
        `_failed_order`, oldest first."""
        deleted = 0

        def doomed(row: JobRecord) -> bool:
            return before is None or (row.completed_at or 0.0) < before

        for status in (JobStatus.COMPLETED, JobStatus.CANCELLED):
            with self._lock:
                rows = list(self._by_status[status].values())
            found = [row for row in rows if doomed(row)]
            for start in range(0, len(found), DELETE_CHUNK):
                with self._lock:
                    for row in found[start:start + DELETE_CHUNK]:
                        if self._jobs.get(row.id) is row and row.status is status and doomed(row):
                            self._delete_row(row)
                            deleted += 1
                _let_others_in()
        while True:
            with self._lock:
                order, taken = self._failed_order, 0
                while taken < min(DELETE_CHUNK, len(order)) and doomed(self._jobs[order[taken][3]]):
                    taken += 1
                for key in order[:taken]:
                    self._delete_row(self._jobs[key[3]])
                del order[:taken]
            deleted += taken
            if taken < DELETE_CHUNK:
                return deleted
            _let_others_in()

    def _delete_row(self, row: JobRecord) -> None:
        """Delete a finished row, its log, and its links to other jobs (not its place in
        `_failed_order`: the caller's); called with the lock held."""
        job_id = row.id
        del self._jobs[job_id], self._by_status[row.status][job_id]
        if row.owner is not None:
            owned = self._by_owner[row.owner]
            del owned[job_id]
            if not owned:
                del self._by_owner[row.owner]
        self._logs.pop(job_id, None)
        self._dependents.pop(job_id, None)
        for dep in row.depends_on:  # as SQL deletes its job_deps rows both ways: a
            waiting = self._dependents.get(dep)  # new job given this id is not theirs
            if waiting is not None:
                waiting.discard(job_id)
                if not waiting:
                    del self._dependents[dep]


DELETE_CHUNK = 1000  # jobs `delete_finished` deletes a hold of the lock


def _let_others_in() -> None:
    """Give up the GIL between two holds of the lock: the threads waiting for it take it
    (taken back at once, with the GIL held throughout, it stayed this thread's)."""
    time.sleep(0)
