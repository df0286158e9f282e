"""`MemoryAdding`: how `MemoryRepository` stores new jobs (`insert`, `insert_and_apply`).

A lone job with nothing to check against other jobs is stored at once; a batch is
planned first (taken ids, dependencies, unique keys), then stored whole or not at all.
Reading, claiming and settling stored jobs is `memory`'s.
"""

from __future__ import annotations

from typing import Optional, Sequence

from ..lock_waits import clear_way
from ..models import JobStatus
from ._cascade import ENDED, dependency_error_message, plan_batch
from .base import Cascade, JobRecord, Settlement, id_taken, require_plain_pending
from .memory_state import MemoryState
# The copy the store keeps of a record given to it: dicts of its own, empty ones shared.
from .values import stored_copy as _stored


class MemoryAdding(MemoryState):
    """The adding half of `MemoryRepository` (its state and row steps: `MemoryState`)."""

    def insert(self, records: Sequence[JobRecord], now: float) -> list[str]:
        clear_way(self._lock)  # threads enqueueing at once: see `clear_way`
        if len(records) == 1 and not records[0].depends_on:
            record = records[0]
            if record.unique_key is None:
                return [self._insert_one(record, now)]
            with self._lock:  # alone, a keyed job is its key's holder's id, or stored holding it
                holder = self._unique.get(record.unique_key)
                if holder is not None:
                    return [holder]
                job_id = self._insert_one(record, now)
                self._unique[record.unique_key] = job_id
                return [job_id]
        return self._insert_batch(records, now)

    def _insert_batch(self, records: Sequence[JobRecord], now: float) -> list[str]:
        """`insert` of any batch: planned, checked, then stored."""
        with self._lock:
            ids, planned, cancelled_by = plan_batch(
                records, exists=self._jobs, unfinished_with_key=self._unique.get,
                ended=lambda job_id: self._jobs[job_id].status in ENDED,
                schedule=lambda job_id: self._jobs[job_id].cron is not None)
            seen: set[str] = set()
            for row in planned:
                if row.id in self._jobs or row.id in seen:
                    raise id_taken(row.id)
                seen.add(row.id)
            # Nothing above changed state; from here on nothing raises.
            given = {record.id: record for record in records}
            stored = [_stored(row) for row in planned]
            for row in stored:
                row.seq = given[row.id].seq = self._next_seq
                self._next_seq += 1
                row.created_at = now
                self._add_row(row)
                if row.unique_key is not None and row.id not in cancelled_by:
                    self._unique[row.unique_key] = row.id
            for row in stored:
                row.blocked = 0
                for dep in row.depends_on:
                    self._dependents.setdefault(dep, set()).add(row.id)
                    if self._jobs[dep].status is not JobStatus.COMPLETED:
                        row.blocked += 1
                culprit = cancelled_by.get(row.id)
                if culprit is not None:  # a dependency that will never complete
                    dead = self._jobs[culprit]
                    status = JobStatus.CANCELLED if culprit in given else dead.status
                    self._set_status(row, JobStatus.CANCELLED)
                    row.error = dependency_error_message(culprit, dead.name, status.value)
                    row.error_type = "DependencyFailed"
                    row.completed_at = now
            for row in stored:
                given[row.id].blocked, given[row.id].status = row.blocked, row.status
            return ids

    def _insert_one(self, record: JobRecord, now: float) -> str:
        """`insert` of a lone record with no dependency (what most enqueues store; one with
        a unique_key no unfinished job holds, the caller notes as its holder): nothing to
        plan or resolve, so it is stored as `_insert_batch` would store it, without that
        path's bookkeeping for many records."""
        with self._lock:
            if record.id in self._jobs:
                raise id_taken(record.id)
            row = _stored(record)
            row.seq = record.seq = self._next_seq
            self._next_seq += 1
            row.created_at = now
            row.blocked = record.blocked = 0
            self._add_row(row)
            return row.id

    def insert_and_apply(self, record: JobRecord, settlements: Sequence[Settlement], claim_ids: Sequence[str],
                         worker_id: str, now: float, lease_expires_at: float, *, claim_new: bool,
                         claim_seqs: Optional[Sequence[int]] = None) -> tuple[list[Optional[Cascade]], list[JobRecord]]:
        require_plain_pending(record)
        clear_way(self._lock)
        with self._lock:  # one atomic step; only the insert can raise (a taken id), and it goes first
            self.insert([record], now)
            cascades, claimed = self.apply(settlements, [record.id, *claim_ids] if claim_new else claim_ids,
                                           worker_id, now, lease_expires_at)
        return cascades, claimed
