"""The reading half of the storage contract: `JobReads`, the methods of `JobRepository`
that read jobs, counts and logs; none of them writes, and the rest of the contract (its
writes, and the rules every method keeps) is `base`'s.

`JobRepository` (`base`) subclasses `JobReads`: a backend subclasses `JobRepository`,
never this, and `jobcore.testing.contract` checks these methods with the others. Like
`base` it holds no storage code and reads no clock.
"""

from __future__ import annotations

import builtins
import abc
from typing import Callable, Collection, Iterable, Optional

from ..models import JobStatus
from .values import JobRecord, QueueEntry, newest_failures

__all__ = ["JobReads", "statuses_read_one_by_one"]


def statuses_read_one_by_one(read: Callable[[str], Optional[JobRecord]],
                             job_ids: Iterable[str]) -> dict[str, JobStatus]:
    """The status of each job among `job_ids` that `read` (one job's record, or None)
    finds, by id: `JobRepository.get_statuses` for a backend without a query for many."""
    statuses: dict[str, JobStatus] = {}
    for job_id in job_ids:
        record = read(job_id)
        if record is not None:
            statuses[job_id] = record.status
    return statuses


class JobReads(abc.ABC):
    """The reads of `JobRepository`, which subclasses this (see `base`: subclass that)."""

    @abc.abstractmethod
    def get(self, job_id: str) -> Optional[JobRecord]:
        """The stored job, or None."""

    def get_many(self, job_ids: Collection[str]) -> dict[str, JobRecord]:
        """The stored jobs among `job_ids`, by id (as `get` reads each); an id of no stored
        job is left out. What a manager reads for the cron schedules due at once, to fire
        them. By default one `get` per id; a backend should read them in one query (SQLite,
        PostgreSQL and the memory repository do): 1,000 schedules sharing a fire time read
        one by one on SQLite cost 35 µs each, a third of firing them."""
        return {job_id: record for job_id in job_ids if (record := self.get(job_id)) is not None}

    def get_without_args(self, job_id: str) -> Optional[JobRecord]:
        """`get`, but the record's `args` and `kwargs` may be left empty: what `poll` and
        `wait` read (a `JobResult` shows no arguments). A backend that stores arguments
        apart can skip reading and decoding them; by default this is `get`."""
        return self.get(job_id)

    def get_statuses(self, job_ids: Collection[str]) -> dict[str, JobStatus]:
        """The status of each stored job among `job_ids`, by id; an id of no stored job is
        left out. What `JobManager.wait` reads, in one
        call every few milliseconds, for every job its callers wait for that this process
        does not hold: a caller is woken to read its job's row only once it is terminal or
        gone. A status the backend does not know reads FAILED, as `get` reads it.

        By default one `get_without_args` per id. A backend should read them all in one
        query (SQLite, PostgreSQL and the memory repository do): the default costs as many
        reads as there are jobs waited for, though from one thread instead of each caller's."""
        return statuses_read_one_by_one(self.get_without_args, job_ids)

    @abc.abstractmethod
    def ready(self, function_names: Optional[Collection[str]], limit: int) -> list[QueueEntry]:
        """Up to `limit` PENDING jobs with no unfinished dependency, highest priority
        first, then lowest `seq`; only those naming one of `function_names` (None: any)."""

    @abc.abstractmethod
    def scheduled(self, function_names: Optional[Collection[str]], limit: int) -> list[QueueEntry]:
        """Up to `limit` SCHEDULED jobs and schedules with no unfinished dependency,
        earliest `run_at` first; filtered as in `ready` (schedules are always included)."""

    @abc.abstractmethod
    def list(self, *, status: Optional[JobStatus] = None, tags: Optional[Collection[str]] = None,
             owner: Optional[str] = None, limit: Optional[int] = 50, offset: int = 0) -> list[JobRecord]:
        """Jobs newest first, filtered by status, owner, and carrying every tag in `tags`."""

    def list_without_args(self, *, status: Optional[JobStatus] = None,
                          tags: Optional[Collection[str]] = None, owner: Optional[str] = None,
                          limit: Optional[int] = 50, offset: int = 0) -> builtins.list[JobRecord]:
        """`list`, with `args` and `kwargs` possibly left empty (see `get_without_args`):
        what `list_jobs` and the dashboard read. By default this is `list`."""
        return self.list(status=status, tags=tags, owner=owner, limit=limit, offset=offset)

    def list_summaries(self, *, status: Optional[JobStatus] = None,
                       tags: Optional[Collection[str]] = None, owner: Optional[str] = None,
                       limit: Optional[int] = 50, offset: int = 0) -> builtins.list[JobRecord]:
        """`list_without_args`, with `metadata`, `progress_details`, `result` and
        `traceback` possibly left empty too: what a table of jobs shows (the dashboard,
        `jobcore list`, the run-time metrics), which reads no job's whole result. By
        default this is `list_without_args`."""
        return self.list_without_args(status=status, tags=tags, owner=owner, limit=limit, offset=offset)

    def list_dead_letters(self, limit: Optional[int] = None) -> builtins.list[JobRecord]:
        """The dead-letter queue: FAILED jobs, the most recently failed first (by
        `completed_at`; among jobs that failed at the same moment, the later enqueued
        first; a row without `completed_at` last), at most `limit` (None: all). Not
        `list`'s order: a job enqueued long ago whose retry failed just now comes first.

        By default `list` reads every failed job and `values.newest_failures` sorts them;
        a store that keeps many reads only `limit` of them, from an index by finish time."""
        return newest_failures(self.list(status=JobStatus.FAILED, limit=None), limit)

    def list_dead_letters_without_args(self, limit: Optional[int] = None) -> builtins.list[JobRecord]:
        """`list_dead_letters`, with `args` and `kwargs` possibly left empty (see
        `get_without_args`): what the dashboard and `jobcore dlq` read. By default this is
        `list_dead_letters`."""
        return self.list_dead_letters(limit)

    @abc.abstractmethod
    def count_by_status(self) -> dict[JobStatus, int]:
        """How many jobs are in each status (every status is a key)."""

    def oldest(self, status: JobStatus) -> Optional[JobRecord]:
        """The job of `status` stored first (the lowest `seq`), as `list_without_args`
        reads it, or None if none has it: the dashboard's age of the oldest pending job,
        read at each refresh. By default the last of `list_without_args(status=...)`, at an
        offset of all of them but one: a backend should read it from an index (SQLite and
        PostgreSQL do; the walk took 67-167 ms with 300,000 pending jobs)."""
        count = self.count_by_status()[status]
        rows = self.list_without_args(status=status, limit=1, offset=max(0, count - 1)) if count else []
        if count and not rows:  # the status gained or lost jobs between the two reads
            rows = self.list_without_args(status=status, limit=None)[-1:]
        return rows[0] if rows else None

    def count_queued(self) -> int:
        """How many jobs are not started yet: PENDING (those waiting on dependencies
        included) plus SCHEDULED (cron schedules included), exactly as `count_by_status`
        counts them. What `get_queue_size` reads, often in a loop: by default derived from
        `count_by_status`; a store that keeps many finished jobs counts only the others."""
        counts = self.count_by_status()
        return counts[JobStatus.PENDING] + counts[JobStatus.SCHEDULED]

    @abc.abstractmethod
    def logs(self, job_id: str) -> builtins.list[tuple[float, str, str]]:
        """The job's log lines, oldest first: (time, level, message)."""

    def log_page(self, job_id: str, offset: int, limit: Optional[int]) -> builtins.list[tuple[float, str, str]]:
        """The job's log lines from the `offset`-th on (oldest first), at most `limit`
        (None: all). By default a slice of `logs`; a store that keeps many lines a job
        reads only the page."""
        lines = self.logs(job_id)
        return lines[offset:] if limit is None else lines[offset:offset + limit]

    def count_logs(self, job_id: str) -> int:
        """How many log lines the job has. By default `len(logs(job_id))`."""
        return len(self.logs(job_id))
