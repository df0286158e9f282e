"""Re-queuing the whole dead-letter queue, naming each job left in it and why: what
`jobcore dlq --retry-all` and the dashboard's `POST /api/dlq/retry` share.

It decides nothing `JobManager.retry` does not: it asks `retry` for each failed job and,
for one refused, reads what is stored now to say which rule refused it. It neither lists
the queue (`JobManager.get_dead_letter_queue`) nor prints or serves anything.
(`JobManager.retry_dead_letters` returns only the ids it re-queued: a job it refused,
its unique key held by a job enqueued since, say, went unmentioned.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, cast

from .manager import RETRY_RULES, JobManager
from .models import Job, JobStatus


@dataclass(frozen=True)
class Skipped:
    """A failed job `retry_all` did not re-queue: why, and whether it is still FAILED
    (False when someone else retried or deleted it meanwhile)."""

    job_id: str
    name: str
    reason: str
    still_failed: bool


@dataclass(frozen=True)
class RetryAllReport:
    """What `retry_all` did: the ids re-queued and the jobs skipped, in queue order."""

    retried: tuple[str, ...]
    skipped: tuple[Skipped, ...]

    @property
    def left(self) -> int:
        """How many skipped jobs stay in the dead-letter queue."""
        return sum(entry.still_failed for entry in self.skipped)


def retry_all(manager: JobManager, limit: Optional[int] = None) -> RetryAllReport:
    """`retry` every job of the dead-letter queue (newest first, up to `limit`), saying
    of each one not re-queued why."""
    retried: list[str] = []
    skipped: list[Skipped] = []
    for job, result in manager.get_dead_letter_queue(limit):
        if manager.retry(job.id):
            retried.append(job.id)
            continue
        reason, still_failed = why_not_requeued(manager, job)
        skipped.append(Skipped(job.id, result.name, reason, still_failed))
    return RetryAllReport(tuple(retried), tuple(skipped))


def why_not_requeued(manager: JobManager, job: Job) -> tuple[str, bool]:
    """Why `retry` refused a job of the dead-letter queue, from what is stored now (the
    reasons of RETRY_RULES, checked in turn: the unique key is the last one left), and
    whether the job is still in the queue (not if it was retried or deleted meanwhile)."""
    now = manager.poll(job.id)
    if now is None:
        return "it was deleted meanwhile", False
    if now.status is not JobStatus.FAILED:
        return f"it is {now.status.value} now", False
    if job.cron is not None:
        return "it is a cron schedule", True
    for dependency in cast(list[str], job.depends_on):  # (ids: a Job is validated)
        result = manager.poll(dependency)
        if result is None and now.started_at is None:
            return f"it ended waiting on its dependency {dependency}, since deleted", True
        if result is not None and result.status in (JobStatus.FAILED, JobStatus.CANCELLED):
            return f"its dependency {dependency} is {result.status.value} (retry that first)", True
    if job.unique_key is not None:
        return f"another unfinished job holds its unique_key {job.unique_key!r}", True
    return RETRY_RULES, True
