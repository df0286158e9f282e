"""Managers of one process on one store wake each other when one stores work (`Doorbell`):
a worker manager beside a producer starts a job at once, not at its next look (which
these tests put a minute away)."""

from __future__ import annotations

import os
import threading
from datetime import datetime, timedelta
from typing import Any, Callable

import pytest

from jobcore import Job, JobManager, JobPriority, JobStatus, MemoryRepository
from jobcore import dispatcher, pool_state
from jobcore.doorbell import Doorbell
from waiting import wait_until

WAIT = 10.0
SLOW = 60.0  # discovery_interval and poll_interval: no look of their own within the test


def _managers(make_manager: Callable[..., JobManager], db_path: str, store: str) -> Callable[..., JobManager]:
    """A maker of managers of one process on one store ("sqlite": each its own
    SQLiteRepository on the file; "memory": one MemoryRepository): worker managers look for
    new work once a minute (SLOW); `producer=True` makes a producer."""
    shared = MemoryRepository() if store == "memory" else None

    def make(producer: bool = False, **settings: Any) -> JobManager:
        if producer:
            return make_manager(shared or db_path, producer=True)
        return make_manager(shared or db_path, discovery_interval=SLOW, poll_interval=SLOW, **settings)

    return make


def _one_blocked(make: Callable[..., JobManager]) -> tuple[JobManager, JobManager, str, threading.Event]:
    """Two managers of the process on one store (`make`: see `_managers`) that run "block"
    (until the event returned is set) and "job": the first, of one worker, short jobs
    assumed (a reserve), started and running a "block" job (its id returned); the other
    not started."""
    busy, idle = make(max_workers=1), make()
    started, release = threading.Event(), threading.Event()
    for manager in (busy, idle):
        manager.register_function("block", lambda: started.set() or release.wait(WAIT))
        manager.register_function("job", lambda: "done")
    busy._pool._state.pacing.assume_short_jobs()
    busy.start()
    blocking = busy.enqueue(Job(function_name="block"))
    assert started.wait(WAIT)
    return busy, idle, blocking, release


def _fails_first(error: BaseException) -> tuple[Callable[[], str], list[str]]:
    """A job function that raises `error` at its first run and returns "done" after, and
    the names of the threads it ran on."""
    runs: list[str] = []

    def fails_first() -> str:
        runs.append(threading.current_thread().name)
        if len(runs) == 1:
            raise error
        return "done"

    return fails_first, runs


@pytest.mark.parametrize("store", ["sqlite", "memory"])
def test_a_worker_manager_starts_a_job_a_producer_beside_it_stored(make_manager: Any, db_path: str,
                                                                   store: str) -> None:
    # given a started worker manager that looks for new work once a minute, and a producer
    # manager in the same process on the same store (another SQLiteRepository on the file,
    # or the same MemoryRepository)
    make = _managers(make_manager, db_path, store)
    worker = make()
    started = threading.Event()
    worker.register_function("job", started.set)
    worker.start()
    producer = make(producer=True)
    # when the producer stores jobs, one alone and a batch
    first = producer.enqueue(Job(function_name="job"))
    # then the worker runs them now, not at its next look
    assert started.wait(WAIT)
    assert producer.wait(first, timeout=WAIT).status is JobStatus.COMPLETED
    batch = producer.enqueue_many([Job(function_name="job") for _ in range(3)])
    assert all(producer.wait(job_id, timeout=WAIT).status is JobStatus.COMPLETED for job_id in batch)


@pytest.mark.parametrize("store", ["sqlite", "memory"])
def test_a_producers_jobs_are_handed_to_the_worker_manager_without_a_read_of_the_store(
        make_manager: Any, db_path: str, store: str) -> None:
    # given a started worker manager whose housekeeper's reads of the store are counted
    # (its own looks a minute apart), and a producer beside it
    make = _managers(make_manager, db_path, store)
    worker = make()
    worker.register_function("job", lambda n: n)
    housekeeper = worker._housekeeper
    reads: list[int] = []
    refill = housekeeper._refill

    def counted() -> Any:
        reads.append(1)
        return refill()

    housekeeper._refill = counted  # type: ignore[method-assign]
    worker.start()
    producer = make(producer=True)
    # when the producer stores jobs, alone, in a batch, and one due a moment later
    ids = [producer.enqueue(Job(function_name="job", args=(1,)))]
    ids += producer.enqueue_many([Job(function_name="job", args=(n,)) for n in range(2, 5)])
    ids.append(producer.enqueue(Job(function_name="job", args=(5,),
                                    scheduled_at=datetime.now() + timedelta(milliseconds=50))))
    # then the worker manager runs each, queued by the producer's ring: its housekeeper
    # read nothing (woken instead, it read the store's window, and its dispatcher then
    # claimed the job: the job started about 3 times later than one enqueued here)
    assert [producer.wait(job_id, timeout=WAIT).result for job_id in ids] == [1, 2, 3, 4, 5]
    assert reads == []


@pytest.mark.parametrize("store", ["sqlite", "memory"])
def test_an_immediate_managers_jobs_run_in_its_callers_thread_beside_a_worker_manager(
        make_manager: Any, db_path: str, store: str) -> None:
    # given an immediate manager beside a started worker manager of the process on the
    # same store, both running the function
    make = _managers(make_manager, db_path, store)
    worker = make()
    ran_on: list[str] = []
    worker.register_function("job", lambda n: ran_on.append(threading.current_thread().name) or n)
    worker.start()
    immediate = make_manager(worker.repository if store == "memory" else db_path, immediate=True)
    immediate.register_function("job", lambda n: ran_on.append(threading.current_thread().name) or n)
    # when it enqueues jobs
    results = [immediate.poll(immediate.enqueue(Job(function_name="job", args=(n,)))) for n in range(50)]
    # then each ran in the caller's thread before its enqueue returned (handed to the worker
    # manager first, its dispatcher claimed some of them: 1 in 3 ran there)
    assert [(r.status, r.result) for r in results if r is not None] == [(JobStatus.COMPLETED, n) for n in range(50)]
    assert set(ran_on) == {threading.current_thread().name}


def test_a_stopped_manager_is_rung_no_more_and_one_on_another_file_never(make_manager: Any, tmp_path: Any) -> None:
    # given managers on two files, started and then stopped
    rung: list[str] = []
    one, other = (Doorbell(("sqlite", str(tmp_path / name)), lambda name=name: rung.append(name))
                  for name in ("one", "other"))
    producer = Doorbell(("sqlite", str(tmp_path / "one")), lambda: rung.append("producer"))
    one.join()
    other.join()
    # when a producer on the first file rings, then only the manager on that file wakes
    producer.ring()
    assert rung == ["one"]
    # and a bell that left wakes no more; one ringing alone wakes nobody, itself included
    one.leave()
    one.leave()
    producer.ring()
    other.ring()
    assert rung == ["one"]
    other.leave()


def test_a_forked_child_rings_none_of_its_parents_managers(tmp_path: Any) -> None:
    # given a bell joined in this process, then a fork
    rung: list[str] = []
    parent = Doorbell("key", lambda: rung.append("parent"))
    parent.join()
    try:
        pid = os.fork()
        if pid == 0:  # the child: its ring must find no bell of the parent's
            child_rung: list[str] = []
            Doorbell("key", lambda: child_rung.append("x")).ring()
            os._exit(0 if not rung and not child_rung else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        parent.leave()


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("store", ["sqlite", "memory"])
def test_a_job_a_producer_stored_while_every_worker_was_busy_starts_once_one_is_free(
        make_manager: Any, db_path: str, store: str, workers: int) -> None:
    # given a started worker manager that looks for new work once a minute, each of its
    # workers running a job that blocks, and a producer manager beside it on the same store
    make = _managers(make_manager, db_path, store)
    worker = make(max_workers=workers)
    started = threading.Semaphore(0)
    releases = [threading.Event() for _ in range(workers)]
    worker.register_function("block", lambda n: started.release() or releases[n].wait(WAIT))
    worker.register_function("job", lambda: "done")
    worker.start()
    blocking = [worker.enqueue(Job(function_name="block", args=(n,))) for n in range(workers)]
    assert all(started.acquire(timeout=WAIT) for _ in range(workers))
    producer = make(producer=True)
    # when the producer stores a job while they run (the manager, rung, has no room), and
    # one of them then ends (the others run on: the outcome is recorded by the dispatcher,
    # whose exchange the look asked for as the worker was free may find under way)
    stored = producer.enqueue(Job(function_name="job"))
    releases[0].set()
    try:
        # then the stored job starts as that worker is free, not at the next look a minute on
        assert worker.wait(blocking[0], timeout=WAIT).status is JobStatus.COMPLETED
        assert producer.wait(stored, timeout=WAIT).status is JobStatus.COMPLETED
    finally:
        for release in releases:
            release.set()


@pytest.mark.parametrize("store", ["sqlite", "memory"])
def test_a_job_a_producer_stored_while_the_worker_manager_started_runs_at_once(
        make_manager: Any, db_path: str, store: str, monkeypatch: Any) -> None:
    # given a worker manager that looks for new work once a minute, whose start, once it
    # has read the store, lets a producer manager beside it store a job before going on
    make = _managers(make_manager, db_path, store)
    worker = make()
    worker.register_function("job", lambda: "done")
    producer = make(producer=True)
    start_housekeeper = worker._housekeeper.start
    stored: list[str] = []

    def start_after_a_producers_enqueue(*args: Any) -> None:
        stored.append(producer.enqueue(Job(function_name="job")))
        start_housekeeper(*args)

    monkeypatch.setattr(worker._housekeeper, "start", start_after_a_producers_enqueue)
    # when the worker manager starts
    worker.start()
    # then the job runs now (its ring came before the housekeeper listened: it waited for
    # the first look, a minute on)
    assert len(stored) == 1
    assert producer.wait(stored[0], timeout=WAIT).status is JobStatus.COMPLETED


@pytest.mark.parametrize("store", ["sqlite", "memory"])
def test_a_job_a_producer_retries_runs_on_the_worker_manager_at_once(make_manager: Any, db_path: str,
                                                                     store: str) -> None:
    # given a failed job, and a producer manager beside the worker manager that ran it
    make = _managers(make_manager, db_path, store)
    worker = make()
    fails_first, _ = _fails_first(ValueError("first run"))
    worker.register_function("job", fails_first)
    worker.start()
    producer = make(producer=True)
    job_id = producer.enqueue(Job(function_name="job", max_retries=0))
    assert producer.wait(job_id, timeout=WAIT).status is JobStatus.FAILED
    # when the producer retries it (a web app's manager, say)
    assert producer.retry(job_id)
    # then the worker manager runs it now, not at its next look a minute on
    assert producer.wait(job_id, timeout=WAIT).status is JobStatus.COMPLETED


@pytest.mark.parametrize("store", ["sqlite", "memory"])
def test_a_dependent_another_manager_runs_starts_once_its_dependency_completes(make_manager: Any, db_path: str,
                                                                               store: str) -> None:
    # given two worker managers of one process on one store, each running its own kind of
    # job, and a job of the second kind that depends on one of the first (running)
    make = _managers(make_manager, db_path, store)
    first = make()
    second = make()
    release = threading.Event()
    first.register_function("a", lambda: release.wait(WAIT))
    second.register_function("b", lambda: "done")
    first.start()
    second.start()
    producer = make(producer=True)
    a = producer.enqueue(Job(function_name="a"))
    b = producer.enqueue(Job(function_name="b", depends_on=[a]))
    # when the dependency completes on the first manager
    release.set()
    # then the second runs the dependent now (released by the first's write, it heard of
    # it at its next look, a minute on)
    assert first.wait(a, timeout=WAIT).status is JobStatus.COMPLETED
    assert second.wait(b, timeout=WAIT).status is JobStatus.COMPLETED


@pytest.mark.parametrize("store", ["sqlite", "memory"])
def test_a_dependent_its_busy_manager_could_run_starts_on_an_idle_one(make_manager: Any, db_path: str,
                                                                      store: str) -> None:
    # given a manager of one worker running a job whose dependent it could run too, with a
    # job that blocks queued behind, and another manager of the process on the same store
    # that runs only the dependent's function, idle
    make = _managers(make_manager, db_path, store)
    busy, idle = make(max_workers=1), make()
    go, started, release = threading.Event(), threading.Event(), threading.Event()
    busy.register_function("parent", lambda: go.wait(WAIT))
    busy.register_function("block", lambda: started.set() or release.wait(WAIT))
    for manager in (busy, idle):
        manager.register_function("child", lambda: "done")
    busy.start()
    idle.start()
    parent = Job(function_name="parent", priority=JobPriority.HIGH)
    child = Job(function_name="child", depends_on=[parent.id], priority=JobPriority.LOW)
    make(producer=True).enqueue_many([parent, Job(function_name="block"), child])
    # when that job completes, its worker going on to the blocking one
    go.set()
    assert started.wait(WAIT)
    # then the idle manager runs the dependent now (ready and runnable where it was
    # released, it waited there for a free worker, the blocking job's whole length, or for
    # the idle one's next look, a minute on)
    try:
        done = idle.wait(child.id, timeout=WAIT)
        assert done.status is JobStatus.COMPLETED and done.worker_id == idle.worker_id
    finally:
        release.set()


@pytest.mark.parametrize("store", ["sqlite", "memory"])
def test_jobs_a_stopping_manager_hands_back_run_on_another_at_once(make_manager: Any, db_path: str,
                                                                  store: str) -> None:
    # given a manager of one worker holding a job claimed in reserve behind one that runs,
    # and another manager of the process on the same store, idle
    stopping, idle, blocking, release = _one_blocked(_managers(make_manager, db_path, store))
    held = stopping.enqueue(Job(function_name="job"))
    wait_until(lambda: stopping.poll(held).status is JobStatus.RUNNING, WAIT, "the job to be claimed in reserve")
    idle.start()
    # when the first stops without waiting, and hands that job back as its running one ends
    stopping.stop(wait=False)
    release.set()
    # then the other runs it now (handed back PENDING, it waited for that one's next look,
    # a minute on)
    assert stopping.wait(blocking, timeout=WAIT).status is JobStatus.COMPLETED
    assert idle.wait(held, timeout=WAIT).status is JobStatus.COMPLETED


@pytest.mark.parametrize("store", ["sqlite", "memory"])
def test_a_job_held_in_reserve_while_every_worker_is_busy_is_handed_back_to_run_elsewhere(
        make_manager: Any, db_path: str, store: str) -> None:
    # given a manager of one worker, short jobs assumed (a reserve), running a job that
    # blocks, and another manager of the process on the same store, idle
    busy, idle, blocking, release = _one_blocked(_managers(make_manager, db_path, store))
    idle.start()
    # when a job is claimed in reserve behind the blocking one
    held = busy.enqueue(Job(function_name="job"))
    # then, no worker taking it, it is handed back and the idle manager runs it while the
    # blocking job still runs (claimed while the jobs were short, it waited here for that
    # job's whole length, out of reach of the idle workers)
    done = idle.wait(held, timeout=WAIT)
    assert done.status is JobStatus.COMPLETED and done.worker_id == idle.worker_id
    assert busy.poll(blocking).status is JobStatus.RUNNING
    release.set()
    assert busy.wait(blocking, timeout=WAIT).status is JobStatus.COMPLETED


@pytest.mark.parametrize("store", ["sqlite", "memory"])
def test_a_reserve_claimed_while_the_workers_were_idle_is_handed_back_once_they_are_busy(
        make_manager: Any, db_path: str, store: str) -> None:
    # given a manager of two idle workers whose jobs have run 2 ms on average (a reserve),
    # and another manager of the process on the same store, not started
    make = _managers(make_manager, db_path, store)
    busy, idle, producer = make(max_workers=2), make(), make(producer=True)
    blocked, release = threading.Semaphore(0), threading.Event()
    for manager in (busy, idle):
        manager.register_function("block", lambda: blocked.release() or release.wait(WAIT))
        manager.register_function("job", lambda: "done")
    for _ in range(100):
        busy._pool._state.pacing.ran(0.002)
    busy.start()
    # when two blocking jobs and six short ones are stored at once (the idle workers' first
    # manager claims them in one exchange, some in reserve; its workers then take the
    # blocking ones), and the other manager then starts
    blocking = producer.enqueue_many([Job(function_name="block") for _ in range(2)])
    jobs = producer.enqueue_many([Job(function_name="job") for _ in range(6)])
    assert blocked.acquire(timeout=WAIT) and blocked.acquire(timeout=WAIT)
    idle.start()
    # then every short job runs while the blocking ones still run: those held in reserve
    # are handed back (told only when an exchange ended with every worker busy, the
    # dispatcher never timed them, and they waited beside the idle workers for its next
    # look, a minute on)
    for job_id in jobs:
        assert idle.wait(job_id, timeout=WAIT).status is JobStatus.COMPLETED
    assert all(busy.poll(job_id).status is JobStatus.RUNNING for job_id in blocking)  # type: ignore[union-attr]
    release.set()
    for job_id in blocking:
        assert busy.wait(job_id, timeout=WAIT).status is JobStatus.COMPLETED


@pytest.mark.parametrize("store", ["sqlite", "memory"])
def test_a_stopping_manager_hands_its_reserve_back_while_its_running_job_goes_on(
        make_manager: Any, db_path: str, store: str, monkeypatch: Any) -> None:
    # given a manager of one worker holding a job claimed in reserve behind one that runs
    # (held in reserve for as long as it takes: no hand-back of its own after RESERVE_HOLD),
    # and another manager of the process on the same store, idle
    monkeypatch.setattr(dispatcher, "RESERVE_HOLD", SLOW)
    monkeypatch.setattr(pool_state, "RESERVE_HOLD", SLOW)
    stopping, idle, blocking, release = _one_blocked(_managers(make_manager, db_path, store))
    held = stopping.enqueue(Job(function_name="job"))
    wait_until(lambda: stopping.poll(held).status is JobStatus.RUNNING, WAIT, "the job to be claimed in reserve")
    idle.start()
    # when the first stops, waiting for its running job
    stop = threading.Thread(target=stopping.stop)
    stop.start()
    try:
        # then the job it held in reserve is handed back at once, and the other runs it
        # while the running job goes on (handed back once that job ended, it waited the
        # running job's whole length)
        done = idle.wait(held, timeout=WAIT)
        assert done.status is JobStatus.COMPLETED and done.worker_id == idle.worker_id
        assert stopping.poll(blocking).status is JobStatus.RUNNING  # type: ignore[union-attr]
    finally:
        release.set()
        stop.join(WAIT)
    assert stopping.wait(blocking, timeout=WAIT).status is JobStatus.COMPLETED


@pytest.mark.parametrize("store", ["sqlite", "memory"])
def test_a_retry_a_stopped_manager_timed_runs_on_another_when_due(make_manager: Any, db_path: str,
                                                                  store: str) -> None:
    # given two worker managers of one process on one store, the first of which ran a job
    # that failed and is to be retried half a second later
    make = _managers(make_manager, db_path, store)
    first = make()
    second = make()
    fails_first, runs = _fails_first(ConnectionError("first run"))  # (transient: retried)
    for manager in (first, second):
        manager.register_function("job", fails_first)
    first.start()
    second.start()
    job_id = first.enqueue(Job(function_name="job", max_retries=1, retry_delay=0.5, retry_jitter=False))
    wait_until(lambda: first.poll(job_id).status is JobStatus.SCHEDULED, WAIT, "the retry to be timed")
    # when the first stops before the retry is due
    first.stop()
    # then the second runs it when due (told of it at the stop: else at its next look, a
    # minute on)
    assert second.wait(job_id, timeout=WAIT).status is JobStatus.COMPLETED
    assert len(runs) == 2
