"""A new job given straight to an idle worker: claimed in `enqueue`, never queued behind others."""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any, Callable

import pytest

from jobcore import FakeClock, Job, JobManager, JobStatus
from jobcore.repository.base import JobRepository
from interrupts import CtrlCOnce

WAIT = 10.0


def _blocking(manager: JobManager) -> tuple[threading.Event, threading.Event]:
    """Register `block`: it signals `started` and runs until `release` is set."""
    started, release = threading.Event(), threading.Event()

    def block(tag: str = "") -> str:
        started.set()
        release.wait(WAIT)
        return tag

    manager.register_function("block", block)
    return started, release


def test_a_job_enqueued_while_a_worker_is_idle_is_claimed_before_enqueue_returns(
        repository: JobRepository, make_manager: Callable[..., JobManager]) -> None:
    # given a started manager whose workers are all idle
    manager = make_manager(repository, max_workers=2).start()
    started, release = _blocking(manager)
    # when a job is enqueued
    job_id = manager.enqueue(Job(function_name="block", args=("a",)))
    # then it is already running for this manager when enqueue returns (no dispatcher round trip)
    result = manager.poll(job_id)
    assert result is not None and result.status is JobStatus.RUNNING and result.attempts == 1
    assert result.worker_id == manager.worker_id
    assert started.wait(WAIT)
    release.set()
    assert manager.wait(job_id, timeout=WAIT).result == "a"


def test_a_job_enqueued_while_every_worker_is_busy_waits_its_turn(
        repository: JobRepository, make_manager: Callable[..., JobManager]) -> None:
    # given one worker busy with a job
    manager = make_manager(repository, max_workers=1).start()
    started, release = _blocking(manager)
    first = manager.enqueue(Job(function_name="block", args=("first",)))
    assert started.wait(WAIT)
    # when more jobs are enqueued, the last with a higher priority
    low = manager.enqueue(Job(function_name="block", args=("low",)))
    high = manager.enqueue(Job(function_name="block", args=("high",), priority=9))
    # then they stay pending, and run in priority order once the worker is free
    assert [manager.poll(i).status for i in (low, high)] == [JobStatus.PENDING, JobStatus.PENDING]  # type: ignore[union-attr]
    release.set()
    finished = [manager.wait(i, timeout=WAIT) for i in (first, low, high)]
    assert [r.status for r in finished] == [JobStatus.COMPLETED] * 3
    assert finished[2].started_at <= finished[1].started_at  # type: ignore[operator]


def test_a_handed_off_job_keeps_its_unique_key(repository: JobRepository,
                                               make_manager: Callable[..., JobManager]) -> None:
    # given a job with a unique key handed to an idle worker and still running
    manager = make_manager(repository, max_workers=2).start()
    started, release = _blocking(manager)
    first = manager.enqueue(Job(function_name="block", unique_key="nightly"))
    assert started.wait(WAIT)
    # when another job with the same key is enqueued while a worker is idle
    second = manager.enqueue(Job(function_name="block", unique_key="nightly"))
    # then it resolves to the running job and nothing new is stored
    assert second == first and manager.get_stats()["total"] == 1
    release.set()
    assert manager.wait(first, timeout=WAIT).status is JobStatus.COMPLETED


def test_a_handed_off_job_runs_the_callable_it_was_given(repository: JobRepository,
                                                         make_manager: Callable[..., JobManager]) -> None:
    # given a name registered to one function and a job carrying another under that name
    manager = make_manager(repository, max_workers=1).start()
    manager.register_function("shared.name", lambda: "registered")
    # when the job is enqueued while the worker is idle
    job_id = manager.enqueue(Job(function=lambda: "given", function_name="shared.name"))
    # then the worker runs the callable the job carried
    assert manager.wait(job_id, timeout=WAIT).result == "given"


def test_a_job_refused_for_a_taken_id_leaves_what_the_job_holding_it_carries(
        repository: JobRepository, make_manager: Callable[..., JobManager]) -> None:
    # given a job due in an hour carrying its own callable (its name runs another) and its
    # own retry_on, and a worker idle
    clock = FakeClock()
    manager = make_manager(repository, max_workers=1, clock=clock).start()
    manager.register_function("shared.name", lambda: "registered")
    attempts: list[int] = []

    def flaky() -> None:
        attempts.append(1)
        raise ValueError("boom")  # not retried, unless the job's own retry_on says so

    job_id = manager.enqueue(Job(function=flaky, function_name="shared.name", max_retries=2, retry_delay=0,
                                 retry_jitter=False, retry_on=lambda exc: True,
                                 scheduled_at=datetime.fromtimestamp(clock.time() + 3600)))
    # when a job given its id is refused (it was handed to the idle worker, and erased
    # what the job holding the id carries)
    with pytest.raises(ValueError, match="already exists"):
        manager.enqueue(Job(function=lambda: "other", function_name="shared.name", id=job_id))
    clock.advance(3600)
    # then the job runs its own callable, retried by its own classifier
    result = manager.wait(job_id, timeout=WAIT)
    assert (result.status, result.error, len(attempts)) == (JobStatus.FAILED, "boom", 3)


def test_a_producer_does_not_claim_jobs_for_functions_it_cannot_run(
        repository: JobRepository, make_manager: Callable[..., JobManager]) -> None:
    # given a started producer with idle workers but no function for the job
    manager = make_manager(repository, max_workers=1, producer=True).start()
    # when it enqueues a job for a worker elsewhere
    job_id = manager.enqueue(Job(function_name="elsewhere.task"))
    # then the job stays pending for that worker
    assert manager.poll(job_id).status is JobStatus.PENDING  # type: ignore[union-attr]


def test_a_failed_insert_gives_the_promised_worker_back(tmp_path: Any,
                                                        make_manager: Callable[..., JobManager]) -> None:
    # given a started SQLite manager with one idle worker
    manager = make_manager(str(tmp_path / "jobs.db"), max_workers=1).start()
    manager.register_function("echo", lambda value: value)
    # when an enqueue fails in the store (arguments JSON cannot hold)
    with pytest.raises(TypeError):
        manager.enqueue(Job(function_name="echo", args=(object(),)))
    # then nothing was stored and the worker still takes the next job
    assert manager.get_stats()["total"] == 0
    job_id = manager.enqueue(Job(function_name="echo", args=(7,)))
    assert manager.wait(job_id, timeout=WAIT).result == 7


def test_a_job_handed_off_while_the_pool_stops_is_given_back_unstarted(
        repository: JobRepository, make_manager: Callable[..., JobManager]) -> None:
    # given a slot promised to a new job by a started manager
    manager = make_manager(repository, max_workers=1).start()
    manager.register_function("echo", lambda value: value)
    pool = manager._pool
    promised: list[bool] = []
    assert pool.reserve_idle_worker(promised) and promised == [True]
    # when the manager stops before the claimed job reaches the pool
    manager.stop()
    record = manager._enqueuer.record_for(Job(function_name="echo", args=(1,)), 1000.0)
    job_id, claimed = repository.insert_claimed(record, manager.worker_id, 1000.0, 1060.0)
    assert claimed is not None
    pool.hand_off(claimed)
    # then the job is pending again, its attempt not counted, and nobody holds it
    stored = repository.get(job_id)
    assert stored is not None and (stored.status, stored.attempts, stored.worker_id) == (
        JobStatus.PENDING, 0, None)
    assert pool.held_ids() == []


def test_ctrl_c_just_after_a_slot_was_promised_gives_it_back(
        db_path: str, make_manager: Callable[..., JobManager]) -> None:
    # given a started manager with one worker, idle, whose enqueues of jobs with a unique
    # key are handed straight to that worker (a slot promised first)
    manager = make_manager(db_path, max_workers=1).start()
    manager.register_function("echo", lambda value: value)
    state = manager._pool._state
    # when Ctrl-C lands in an enqueue just after the slot was promised (as the promise's
    # call returned: it landed before the `try` that gives it back)
    with CtrlCOnce("_hand_off", lambda: state.handoffs == 1) as ctrl_c:
        with pytest.raises(KeyboardInterrupt):
            manager.enqueue(Job(function_name="echo", args=(1,), unique_key="a"))
    assert ctrl_c.fired
    # then the slot was given back: jobs handed off next run (the slot leaked, and after
    # max_workers such leaks no job was handed to a worker again)
    assert state.handoffs == 0
    job_id = manager.enqueue(Job(function_name="echo", args=(2,), unique_key="b"))
    assert manager.wait(job_id, timeout=WAIT).result == 2
