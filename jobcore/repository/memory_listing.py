"""`MemoryListing`: what `MemoryRepository` reports about its jobs (`list`, dead letters, counts, log lines).

The reads the dashboard, the CLI and `JobManager`'s listings make, each under the store's
one lock, each giving out copies. Not the reads on the way to running a job (`get`,
`ready`, `scheduled`: `memory`'s), nor any write.
"""

from __future__ import annotations

import builtins
import heapq
import operator
import time
from typing import Callable, Collection, Optional, Reversible

from ..models import JobStatus
from .base import JobRecord
from .memory_state import MemoryState
# A copy with dicts of its own: whoever holds it can change it without touching the store.
from .values import detached_copy as _detached
from .values import failed_key

_seq_of = operator.attrgetter("seq")
# Dead letters copied in one hold of the store's lock (a few ms): the whole queue copied
# in one, 50,000 rows, held every claim, completion and enqueue 0.4-0.9 s.
DEAD_LETTERS_AT_ONCE = 500


class MemoryListing(MemoryState):
    """The listing half of `MemoryRepository` (its state: `MemoryState`); this only reads it."""

    def list(self, *, status: Optional[JobStatus] = None, tags: Optional[Collection[str]] = None,
             owner: Optional[str] = None, limit: Optional[int] = 50, offset: int = 0) -> builtins.list[JobRecord]:
        wanted = frozenset(tags or ())
        end = None if limit is None else offset + limit

        def matches(r: JobRecord) -> bool:
            return (status is None or r.status is status) and (owner is None or r.owner == owner) and wanted <= r.tags

        candidates: Optional[builtins.list[JobRecord]] = None
        source: dict[str, JobRecord] = {}
        with self._lock:
            few = None if status is None else self._by_status[status]
            mine = None if owner is None else self._by_owner.get(owner, {})
            if mine is not None and (few is None or len(mine) <= len(few)):
                rows = _newest(mine.values(), matches, end)  # (an owner's rows: seq order too)
            elif few is not None and (end is None or len(few) * 4 < len(self._jobs)):
                source, entered = few, self._entered[status]  # type: ignore[index]
                candidates = builtins.list(few.values())  # (picked below)
            else:
                # _jobs is in seq order (rows are added with the next seq, and never moved)
                rows = _newest(self._jobs.values(), matches, end)
            if candidates is None:
                return [_detached(r) for r in rows[offset:end]]
        # The rows of one status are picked and sorted without the lock: that pass held
        # every enqueue, claim and completion (a dashboard listing 30,000 pending jobs,
        # 14-51 ms a time, 200 at worst). The rows picked are copied under the lock again,
        # as they are then, if no row entered the status meanwhile and those picked all
        # still match and are stored: they are then the page the store shows now (a row
        # that left it before the pick is not among them, nor is one that left since);
        # otherwise the pick is made again there.
        jobs = self._jobs
        rows = _pick([r for r in candidates if matches(r)], end)
        with self._lock:
            if self._entered[status] != entered or not all(  # type: ignore[index]
                    matches(r) and jobs.get(r.id) is r for r in rows):
                rows = _pick([r for r in source.values() if matches(r)], end)
            return [_detached(r) for r in rows[offset:end]]

    def list_dead_letters(self, limit: Optional[int] = None) -> builtins.list[JobRecord]:
        with self._lock:  # the newest few failed rows, from the end of their order
            order = self._failed_order
            keys = order[max(0, len(order) - limit):] if limit is not None else builtins.list(order)
            if len(keys) <= DEAD_LETTERS_AT_ONCE:
                return [_detached(self._jobs[key[3]]) for key in reversed(keys)]
        # Many: copied DEAD_LETTERS_AT_ONCE at a time, each row as it is then, unless it
        # left the queue meanwhile (retried, or deleted), or failed again (in neither
        # place then: its new place is newer than the queue this read took).
        keys.reverse()
        found: builtins.list[JobRecord] = []
        for start in range(0, len(keys), DEAD_LETTERS_AT_ONCE):
            if start:
                # The GIL given up between holds: a thread woken for the lock takes it then,
                # where this one, keeping the GIL, took it back first (get_stats beside a
                # listing of 50,000 still waited up to 315 ms).
                time.sleep(0)
            with self._lock:
                for key in keys[start:start + DEAD_LETTERS_AT_ONCE]:
                    row = self._jobs.get(key[3])
                    if row is not None and row.status is JobStatus.FAILED and failed_key(row) == key:
                        found.append(_detached(row))
        return found

    def oldest(self, status: JobStatus) -> Optional[JobRecord]:
        with self._lock:  # (the rows copied under it, the lowest found without it)
            rows = builtins.list(self._by_status[JobStatus(status)].values())
        if not rows:
            return None
        first = min(rows, key=_seq_of)
        with self._lock:
            return _detached(first)

    def count_by_status(self) -> dict[JobStatus, int]:
        with self._lock:
            return {status: len(rows) for status, rows in self._by_status.items()}

    def count_queued(self) -> int:
        with self._lock:
            return len(self._by_status[JobStatus.PENDING]) + len(self._by_status[JobStatus.SCHEDULED])

    def logs(self, job_id: str) -> builtins.list[tuple[float, str, str]]:
        with self._lock:
            return list(self._logs.get(job_id, ()))

    def log_page(self, job_id: str, offset: int, limit: Optional[int]) -> builtins.list[tuple[float, str, str]]:
        with self._lock:
            lines = self._logs.get(job_id, [])
            return lines[offset:] if limit is None else lines[offset:offset + limit]

    def count_logs(self, job_id: str) -> int:
        with self._lock:
            return len(self._logs.get(job_id, ()))


def _pick(rows: builtins.list[JobRecord], end: Optional[int]) -> builtins.list[JobRecord]:
    """The newest `end` of `rows` (None: all of them), newest first."""
    return sorted(rows, key=_seq_of, reverse=True) if end is None else heapq.nlargest(end, rows, key=_seq_of)


def _newest(rows: Reversible[JobRecord], matches: Callable[[JobRecord], bool],
            end: Optional[int]) -> builtins.list[JobRecord]:
    """The rows of `rows` (in seq order) that match, newest first, stopping once `end`
    matched (None: all of them)."""
    found: builtins.list[JobRecord] = []
    for r in reversed(rows):
        if matches(r):
            found.append(r)
            if len(found) == end:
                break
    return found
