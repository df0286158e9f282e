"""`fail_out_of_order`: a dead-letter queue whose order (by failure time) is not the
enqueue order; shared by the manager, command-line and dashboard tests (and
`fail_late_then_early`, the same through a repository, by the migration tests)."""

from __future__ import annotations

from dataclasses import dataclass

from jobcore import FakeClock, Job, JobManager, JobStatus
from jobcore.repository.base import JobRecord, JobRepository
from jobcore.testing.contract import NOW, make_record

HOUR, DAY = 3600.0, 86400.0


def fails() -> None:
    raise ValueError("bad row")


@dataclass
class DeadLetters:
    """The failed jobs' ids: the most recently failed first, and the newest enqueued first."""

    by_failure: list[str]
    by_enqueue: list[str]


def fail_out_of_order(manager: JobManager, clock: FakeClock) -> DeadLetters:
    """Given `manager` (not started, on `clock`), fail four jobs so that the newest failure
    is the oldest job: `old`, enqueued three days ago, failed then, was retried by hand
    and failed again a minute ago; `recent`, enqueued an hour ago, failed 50 minutes ago;
    `tie_a` and `tie_b`, enqueued in that order two days ago, failed at the same moment."""
    manager.register_function("fails", fails)

    def enqueue(name: str) -> str:
        return manager.enqueue(Job(function_name="fails", name=name, max_retries=0))

    old = enqueue("old")
    manager.run_pending()
    clock.advance(DAY)
    tie_a, tie_b = enqueue("tie a"), enqueue("tie b")
    manager.run_pending()  # both fail at this one moment
    clock.advance(2 * DAY - HOUR)
    recent = enqueue("recent")
    clock.advance(10 * 60)
    manager.run_pending()
    clock.advance(49 * 60)
    assert manager.retry(old)
    manager.run_pending()
    clock.advance(60)
    assert all(manager.poll(job_id).status is JobStatus.FAILED  # type: ignore[union-attr]
               for job_id in (old, tie_a, tie_b, recent))
    return DeadLetters(by_failure=[old, recent, tie_b, tie_a], by_enqueue=[recent, tie_b, tie_a, old])


def fail_late_then_early(repo: JobRepository) -> tuple[JobRecord, JobRecord]:
    """Store two jobs in `repo` and fail them through it, the first enqueued failing last:
    (late, early)."""
    late, early = make_record(), make_record()
    repo.insert([late, early], NOW)
    for record, at in ((early, NOW + 1), (late, NOW + 2)):
        claimed = repo.claim(record.id, "w1", at, at + 30)
        assert claimed is not None and repo.fail(record.id, "w1", claimed.attempts, error="boom", error_type="E",
                                                 traceback=None, now=at, retry_at=None) is not None
    return late, early
