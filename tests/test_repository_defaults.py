"""`JobRepository`'s defaults, on a backend that implements only what docs/backends.md
asks for: the 24 abstract methods and `release`. It passes the whole contract suite, and
the defaults that take several calls (`apply`, `insert_claimed`) say what they did when
one of those calls fails, rather than lose outcomes, notifications or claimed jobs."""

from __future__ import annotations

import json
import threading
from typing import Any, Callable, Iterator, Optional

import pytest

from jobcore import CallbackNotificationChannel, Job, JobManager, JobStatus, MemoryRepository, RepositoryError
from jobcore.repository.base import CancelOutcome, JobRecord, JobRepository, PartlyApplied, Settlement
from jobcore.testing.contract import LEASE, NOW, RepositoryContract, make_record

WAIT = 10.0


def _delegate(name: str) -> Callable[..., Any]:
    def method(self: "OnlyRequired", *args: Any, **kwargs: Any) -> Any:
        return getattr(self.inner, name)(*args, **kwargs)
    method.__name__ = name
    return method


# The abstract methods and `release`, each passed to a MemoryRepository standing in for
# "my store": every other method of the class is JobRepository's default.
_Required: Any = type("_Required", (JobRepository,), {
    name: _delegate(name) for name in sorted(JobRepository.__abstractmethods__ | {"release"})})


class OnlyRequired(_Required):  # type: ignore[misc]
    """A third-party backend relying on every default. Persistent: it refuses arguments
    JSON cannot hold, and keeps a result as JSON gives it back."""

    persistent = True

    def __init__(self) -> None:
        self.inner = MemoryRepository()
        self.fail_claims: Callable[[str], bool] = lambda job_id: False
        self.fail_completions: Callable[[str], bool] = lambda job_id: False

    def insert(self, records: Any, now: float) -> list[str]:
        for record in records:  # refused as a JSON store refuses it, before storing any
            json.dumps([list(record.args), record.kwargs, record.metadata])
        return self.inner.insert(records, now)

    def claim(self, job_id: str, worker_id: str, now: float, lease_expires_at: float) -> Optional[JobRecord]:
        if self.fail_claims(job_id):
            raise RepositoryError("store briefly unavailable (injected)")  # changing nothing
        return self.inner.claim(job_id, worker_id, now, lease_expires_at)

    def complete(self, job_id: str, worker_id: str, attempt: int, result: Any, now: float,
                 note: Optional[str] = None) -> Any:
        if self.fail_completions(job_id):
            raise RepositoryError("store briefly unavailable (injected)")
        return self.inner.complete(job_id, worker_id, attempt, json.loads(json.dumps(result)), now, note)

    def close(self) -> None:
        self.inner.close()


class TestOnlyRequired(RepositoryContract):
    @pytest.fixture
    def repository(self) -> Iterator[OnlyRequired]:
        repo = OnlyRequired()
        yield repo
        repo.close()


@pytest.fixture
def repo() -> Iterator[OnlyRequired]:
    repository = OnlyRequired()
    yield repository
    repository.close()


def _held(repo: JobRepository, count: int) -> list[JobRecord]:
    records = [make_record() for _ in range(count)]
    repo.insert(records, NOW)
    for record in records:
        assert repo.claim(record.id, "w1", NOW, NOW + LEASE) is not None
    return records


# -- insert_claimed ------------------------------------------------------------------------
def test_insert_claimed_whose_claim_fails_returns_the_stored_job_unclaimed(repo: OnlyRequired) -> None:
    # given a store whose claim fails once the job is stored
    repo.fail_claims = lambda job_id: True
    record = make_record()
    # when a job is stored and claimed at once, then it is stored, unclaimed, without a raise
    assert repo.insert_claimed(record, "w1", NOW, NOW + LEASE) == (record.id, None)
    stored = repo.get(record.id)
    assert stored is not None and stored.status is JobStatus.PENDING
    # and a claim later takes it
    repo.fail_claims = lambda job_id: False
    assert repo.claim(record.id, "w1", NOW, NOW + LEASE) is not None


def test_an_enqueue_whose_hand_off_claim_fails_stores_the_job_once_and_runs_it(
        repo: OnlyRequired, make_manager: Any) -> None:
    # given a manager whose workers are idle (a new job is handed straight to one), on a
    # store whose next claim fails
    manager: JobManager = make_manager(repo, max_workers=2, poll_interval=0.2)
    charged: list[str] = []
    manager.register_function("charge", charged.append)
    manager.start()
    failed = threading.Event()

    def fail_once(job_id: str) -> bool:
        if failed.is_set():
            return False
        failed.set()
        return True
    repo.fail_claims = fail_once
    # when a job is enqueued, then enqueue returns (it raised, though the job was stored:
    # a caller retrying it stored it twice), and the job runs once
    job_id = manager.enqueue(Job(function_name="charge", args=("order-42",)))
    assert failed.is_set()
    assert manager.wait(job_id, timeout=WAIT).status is JobStatus.COMPLETED
    assert charged == ["order-42"] and manager.get_stats()["total"] == 1


# -- apply -----------------------------------------------------------------------------------
def test_apply_returns_what_it_did_when_a_claim_fails_after_a_write(repo: OnlyRequired) -> None:
    # given w1 holding a job, and three jobs to claim, the second of which cannot be claimed
    (done,) = _held(repo, 1)
    first, second, third = (make_record() for _ in range(3))
    repo.insert([first, second, third], NOW)
    repo.fail_claims = lambda job_id: job_id == second.id
    # when w1 records its outcome and claims them, then the outcome is recorded and the
    # claims made before the failure are returned (raised, they were lost to the caller)
    cascades, claimed = repo.apply([Settlement("complete", done.id, 1, result="ok")],
                                   [first.id, second.id, third.id], "w1", NOW + 1, NOW + 31)
    assert cascades[0] is not None and [r.id for r in claimed] == [first.id]
    assert [repo.get(j.id).status for j in (done, second, third)] == [  # type: ignore[union-attr]
        JobStatus.COMPLETED, JobStatus.PENDING, JobStatus.PENDING]
    # and with nothing written before it, a failing claim raises, changing nothing
    with pytest.raises(RepositoryError):
        repo.apply([], [second.id, third.id], "w1", NOW + 1, NOW + 31)
    assert repo.get(third.id).status is JobStatus.PENDING  # type: ignore[union-attr]


def test_apply_says_which_settlements_it_recorded_when_a_later_one_fails(repo: OnlyRequired) -> None:
    # given w1 holding three jobs, the second of which cannot be completed now
    first, second, third = _held(repo, 3)
    waiting = make_record()
    repo.insert([waiting], NOW)
    repo.fail_completions = lambda job_id: job_id == second.id
    settlements = [Settlement("complete", job.id, 1, result=n) for n, job in enumerate((first, second, third))]
    # when they are recorded, then PartlyApplied (a RepositoryError) gives the first's cascade
    with pytest.raises(PartlyApplied) as raised:
        repo.apply(settlements, [waiting.id], "w1", NOW + 1, NOW + 31)
    assert isinstance(raised.value, RepositoryError) and len(raised.value.cascades) == 1
    assert raised.value.cascades[0] is not None
    assert isinstance(raised.value.__cause__, RepositoryError)
    # and only the first was recorded; the others, and the claim, were not made
    assert [repo.get(j.id).status for j in (first, second, third, waiting)] == [  # type: ignore[union-attr]
        JobStatus.COMPLETED, JobStatus.RUNNING, JobStatus.RUNNING, JobStatus.PENDING]


def test_a_release_through_the_default_apply_reports_a_cancel_requested_meanwhile(repo: OnlyRequired) -> None:
    # given w1 holding a job with a chain of two dependents, whose cancel was requested
    (job,) = _held(repo, 1)
    child = make_record(depends_on=(job.id,))
    grandchild = make_record(depends_on=(child.id,))
    repo.insert([child, grandchild], NOW)
    assert repo.cancel(job.id, NOW + 1, "stop")[0] is CancelOutcome.REQUESTED
    # when w1 hands it back unstarted, then the cascade says it ended CANCELLED instead,
    # and names the dependents cancelled with it
    cascades, _ = repo.apply([Settlement("release", job.id, 1)], [], "w1", NOW + 2, NOW + 2)
    assert cascades[0] is not None and cascades[0].cancelled_instead
    assert sorted(cascades[0].cancelled) == sorted([child.id, grandchild.id])


def test_outcomes_recorded_before_a_claim_failed_are_notified_and_claimed_jobs_run(
        repo: OnlyRequired, make_manager: Any) -> None:
    # given a store whose claims fail now and then, and 30 jobs that fail for good
    lock = threading.Lock()
    calls = [0]

    def every_fourth(job_id: str) -> bool:
        with lock:
            calls[0] += 1
            return calls[0] % 4 == 0
    repo.fail_claims = every_fourth
    manager: JobManager = make_manager(repo, max_workers=4, poll_interval=0.2, lease_timeout=30.0)
    events: list[str] = []
    manager.add_notification_channel(CallbackNotificationChannel(
        lambda event: events.append(event["job_id"]) if event["event"] == "job.dead_lettered" else None))
    ran: list[int] = []

    def boom(n: int) -> None:
        ran.append(n)
        raise ValueError("permanent")
    manager.register_function("boom", boom)
    ids = manager.enqueue_many([Job(function_name="boom", args=(n,), max_retries=0) for n in range(30)])
    # when they run
    manager.start()
    results = [manager.wait(job_id, timeout=WAIT) for job_id in ids]
    # then each ran once and failed, and each failure was notified once
    assert all(r.status is JobStatus.FAILED and r.error_type == "ValueError" for r in results)
    assert sorted(ran) == list(range(30))
    manager.stop(timeout=WAIT)  # (notifications are sent by the time it returns)
    assert sorted(events) == sorted(ids)
