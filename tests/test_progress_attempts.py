"""A job's progress across its attempts, as `poll` shows it: a job waiting for its next
attempt (a retry after a transient failure, a job taken back from a lost worker, a job
re-queued by `retry`) shows no progress, and so does that attempt until it reports, in
the process that ran the earlier attempt too (which keeps its last report a while). A job
that ended keeps its last report. Each store, on a `FakeClock` with `run_pending`."""

from __future__ import annotations

import random
from typing import Any, Callable

import pytest

from jobcore import FakeClock, Job, JobManager, JobStatus, current_job
from jobcore import progress as progress_module
from jobcore.repository.base import JobRepository
from mixed_repositories import BACKENDS, repository_with
from pg_fixtures import *  # noqa: F401,F403 (the fixtures: server, schema)

NONE = (0.0, "", {})  # what a job shows before any attempt of it reports


class _AsShipped:
    """No hooks: the backend as it ships (`repository_with` needs a class to mix in)."""


@pytest.fixture(params=BACKENDS)
def store(request: Any, tmp_path: Any) -> JobRepository:
    return repository_with(_AsShipped, request, tmp_path)


@pytest.fixture(params=[3600.0, 0.0], ids=["last-report-with-outcome", "each-report-written"])
def interval(request: Any, monkeypatch: pytest.MonkeyPatch) -> float:
    """How often a persistent store gets an attempt's reports: never before the attempt
    ends (its last report goes with its outcome), or each at once (the row holds it)."""
    monkeypatch.setattr(progress_module, "PROGRESS_INTERVAL", request.param)
    return float(request.param)


class Attempts:
    """A job function whose attempts each note what `poll` shows as they begin, report
    progress, then do what `plan` says for that attempt: raise the exception given, or
    return "done" (past the plan's end)."""

    def __init__(self, manager: JobManager, plan: list[BaseException]) -> None:
        self.manager = manager
        self.plan = plan
        self.seen_at_start: list[tuple[float, str, dict[str, Any]]] = []

    def __call__(self, progress_callback: Any = None) -> str:
        shown = self.manager.poll(current_job().id)
        assert shown is not None and shown.status is JobStatus.RUNNING
        self.seen_at_start.append(_progress_of(shown))
        attempt = len(self.seen_at_start)
        progress_callback(0.8, f"almost, attempt {attempt}", attempt=attempt)
        if attempt <= len(self.plan):
            raise self.plan[attempt - 1]
        return "done"


def _progress_of(result: Any) -> tuple[float, str, dict[str, Any]]:
    return result.progress, result.progress_message, result.progress_details


def _manager(make_manager: Callable[..., JobManager], store: JobRepository, clock: FakeClock) -> JobManager:
    return make_manager(store, clock=clock, rng=random.Random(7))


def test_a_retry_after_a_transient_failure_starts_from_no_progress(
        store: JobRepository, make_manager: Callable[..., JobManager], interval: float) -> None:
    # given a job whose first attempt reports 0.8, then loses its connection
    clock = FakeClock()
    manager = _manager(make_manager, store, clock)
    job = Attempts(manager, [ConnectionError("connection reset")])
    manager.register_function("attempts", job)
    job_id = manager.enqueue(Job(function_name="attempts", retry_delay=5.0, retry_jitter=False))
    assert manager.run_pending() == 1
    # then, waiting for its retry, it shows no progress (in this process and in the store)
    waiting = manager.poll(job_id)
    assert waiting is not None and (waiting.status, waiting.attempts) == (JobStatus.SCHEDULED, 1)
    assert _progress_of(waiting) == NONE
    assert _progress_of(store.get(job_id)) == NONE
    # and when the retry runs, it begins from none, and completes with its own report
    clock.advance(5.0)
    assert manager.run_pending() == 1
    assert job.seen_at_start == [NONE, NONE]
    done = manager.poll(job_id)
    assert done is not None and (done.status, done.attempts) == (JobStatus.COMPLETED, 2)
    assert _progress_of(done) == (1.0, "almost, attempt 2", {"attempt": 2})


@pytest.mark.parametrize("by", ["this manager", "the store"])
def test_a_failed_job_retried_starts_from_no_progress(
        store: JobRepository, make_manager: Callable[..., JobManager], interval: float, by: str) -> None:
    # given a job whose only attempt reported 0.8, then failed for good: it keeps that report
    clock = FakeClock()
    manager = _manager(make_manager, store, clock)
    job = Attempts(manager, [ValueError("bad input")])
    manager.register_function("attempts", job)
    job_id = manager.enqueue(Job(function_name="attempts", max_retries=0))
    assert manager.run_pending() == 1
    failed = manager.poll(job_id)
    assert failed is not None and failed.status is JobStatus.FAILED
    assert _progress_of(failed) == (0.8, "almost, attempt 1", {"attempt": 1})
    # when it is retried, here or by another process (which only the store tells of)
    if by == "this manager":
        assert manager.retry(job_id) is True
    else:
        assert store.requeue(job_id, clock.time()) is not None
    # then it waits with no progress, and its new attempt 1 begins from none: not from
    # the report this process kept of the attempt 1 that failed
    waiting = manager.poll(job_id)
    assert waiting is not None and (waiting.status, waiting.attempts) == (JobStatus.PENDING, 0)
    assert _progress_of(waiting) == NONE
    assert manager.run_pending() == 1
    assert job.seen_at_start == [NONE, NONE]
    assert manager.poll(job_id).status is JobStatus.COMPLETED  # type: ignore[union-attr]


def test_a_job_taken_back_from_a_lost_worker_starts_from_no_progress(
        store: JobRepository, make_manager: Callable[..., JobManager]) -> None:
    # given a job a worker of another process claimed, reported 0.8 on, then died with
    clock = FakeClock()
    manager = _manager(make_manager, store, clock)
    job = Attempts(manager, [])
    manager.register_function("attempts", job)
    job_id = manager.enqueue(Job(function_name="attempts"))
    now = clock.time()
    assert store.claim(job_id, "dead-worker", now, now + 30.0) is not None
    assert store.update_progress(job_id, "dead-worker", 1, 0.8, "almost", {"rows": 8}, now)
    assert _progress_of(manager.poll(job_id)) == (0.8, "almost", {"rows": 8})
    # when its lease has run out and recovery takes it back (as any manager's housekeeper does)
    clock.advance(31.0)
    assert [entry.job_id for entry in store.recover_expired(clock.time())] == [job_id]
    # then it waits with no progress, and its next attempt begins from none
    waiting = manager.poll(job_id)
    assert waiting is not None and (waiting.status, waiting.error_type) == (JobStatus.PENDING, "WorkerLost")
    assert _progress_of(waiting) == NONE
    assert manager.run_pending() == 1
    assert job.seen_at_start == [NONE]
    done = manager.poll(job_id)
    assert done is not None and (done.status, done.attempts) == (JobStatus.COMPLETED, 2)
