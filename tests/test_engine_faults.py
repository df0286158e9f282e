"""A fault of the engine's own code around a job (a bug, not the job's error nor the
store's): the worker thread that met it goes on, the job does not stay RUNNING, and
`stop` returns. Each fault is made by breaking one engine step for one call."""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any, Callable

import pytest

from jobcore import FakeClock, Job, JobManager, JobResult, JobStatus, MemoryRepository, SQLiteRepository
from jobcore.recorder import Recorder
from jobcore.workers import WorkerPool

WAIT = 10.0


def _break_once(monkeypatch: Any, owner: type, name: str) -> threading.Event:
    """Make `owner.name` raise RuntimeError on its first call (later calls run it); the
    event is set once it raised."""
    original: Callable[..., Any] = getattr(owner, name)
    raised = threading.Event()

    def broken(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not raised.is_set():
            raised.set()
            raise RuntimeError(f"a bug in {name}")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(owner, name, broken)
    return raised


@pytest.fixture(params=["memory", "sqlite"])
def repository(request: Any, db_path: str) -> Any:
    return MemoryRepository() if request.param == "memory" else SQLiteRepository(db_path)


def test_a_fault_before_a_job_runs_fails_that_attempt_and_the_worker_goes_on(
        make_manager: Any, repository: Any, monkeypatch: Any) -> None:
    # given one worker, and the engine's step that runs an attempt breaking once
    from jobcore.attempts import AttemptRunner
    raised = _break_once(monkeypatch, AttemptRunner, "run")

    # when the first job's attempt meets the fault
    manager, failed = _first_job_ran(make_manager(repository, max_workers=1))

    # then that attempt is recorded as failed with the engine's error (not left RUNNING)
    assert raised.is_set()
    assert (failed.status, failed.error_type) == (JobStatus.FAILED, "RuntimeError")
    assert "a bug in run" in failed.error
    # and the same worker runs the next job, and stop returns
    assert _runs_the_next_and_stops(manager)


def test_a_fault_after_a_job_ran_records_its_own_outcome_and_the_worker_goes_on(
        make_manager: Any, repository: Any, monkeypatch: Any) -> None:
    # given one worker, and the engine's step after an attempt (taking its log lines)
    # breaking once
    raised = _break_once(monkeypatch, WorkerPool, "_log_lines")

    # when the first job's attempt ends with the fault, then its own outcome is recorded
    manager, done = _first_job_ran(make_manager(repository, max_workers=1))
    assert raised.is_set()
    assert (done.status, done.result) == (JobStatus.COMPLETED, 1)
    # and the same worker runs the next job, and stop returns
    assert _runs_the_next_and_stops(manager)


def _first_job_ran(manager: JobManager) -> tuple[JobManager, JobResult]:
    """`manager`, given an `echo` function and started with one job (echo 1, no retries)
    queued; and that job's result once it ended."""
    manager.register_function("echo", lambda x: x)
    first = manager.enqueue(Job(function_name="echo", args=(1,), max_retries=0))
    manager.start()
    return manager, manager.wait(first, timeout=WAIT)


def _runs_the_next_and_stops(manager: JobManager) -> bool:
    """True if the started `manager` runs another job (echo 2) and then stops."""
    return manager.wait(manager.enqueue(Job(function_name="echo", args=(2,))), timeout=WAIT).result == 2 \
        and _stops(manager)


def test_a_fault_after_an_exchange_committed_leaves_its_claims_to_run(
        make_manager: Any, repository: Any, monkeypatch: Any) -> None:
    # given jobs queued before start, and the step after an exchange's commit (making way
    # for released dependents) breaking once
    raised = _break_once(monkeypatch, Recorder, "make_way")
    manager: JobManager = make_manager(repository, max_workers=2)
    manager.register_function("echo", lambda x: x)
    ids = [manager.enqueue(Job(function_name="echo", args=(x,))) for x in range(6)]

    # when the workers claim them
    manager.start()

    # then every job runs all the same (the exchange is ended with what it claimed)
    assert [manager.wait(job_id, timeout=WAIT).result for job_id in ids] == list(range(6))
    assert raised.is_set()
    assert _stops(manager)


def _stops(manager: JobManager) -> bool:
    """True if `stop()` (no timeout: it waits for every worker thread) returned."""
    stopping = threading.Thread(target=manager.stop, daemon=True)
    stopping.start()
    stopping.join(WAIT)
    return not stopping.is_alive()


def test_a_fault_after_an_enqueues_exchange_committed_stores_the_job_and_runs_it(
        make_manager: Any, repository: Any, monkeypatch: Any) -> None:
    # given a started manager (an enqueue then stores its job in an exchange of its own,
    # claimed for the idle worker), and the step after that exchange's commit breaking once
    manager: JobManager = make_manager(repository, max_workers=1)
    manager.register_function("echo", lambda x: x)
    manager.start()
    raised = _break_once(monkeypatch, Recorder, "make_way")

    # when a job is enqueued
    job_id = manager.enqueue(Job(function_name="echo", args=(7,)))

    # then the enqueue returned its id (it was stored: raising would have the caller enqueue
    # it again), and it runs
    assert raised.is_set()
    assert manager.wait(job_id, timeout=WAIT).result == 7
    assert _stops(manager)


def test_a_fault_in_the_dispatcher_leaves_it_running_to_start_scheduled_jobs(
        make_manager: Any, repository: Any, monkeypatch: Any) -> None:
    # given the dispatcher's first look for an exchange to make breaking
    from jobcore.dispatcher import Dispatcher
    raised = _break_once(monkeypatch, Dispatcher, "_exchange_due_locked")
    clock = FakeClock()
    manager: JobManager = make_manager(repository, clock=clock, max_workers=1).start()
    assert raised.wait(WAIT)

    # when a job scheduled for later comes due
    job_id = manager.enqueue(Job(function=lambda: "ran", scheduled_at=datetime.fromtimestamp(clock.time() + 60)))
    clock.advance(60)

    # then it runs (the dispatcher, whose thread the fault ended, started it)
    assert manager.wait(job_id, timeout=WAIT).result == "ran"
    assert _stops(manager)
