"""JobManager core: priorities, results, progress, cancel, persistence, inspection, stop."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
from datetime import datetime
from typing import Any

import pytest

from jobcore import (FakeClock, Job, JobCancelled, JobManager, JobPriority, JobRepository, JobStatus, MemoryRepository,
                     SQLiteRepository, UnknownFunction, current_job)
import jobcore.loading
from jobcore import doorbell
from stuck import stuck_past_stop
from jobcore.loading import READY_LOAD_LIMIT
from waiting import wait_until
from watched_leases import WatchedLeases

WAIT = 10.0  # generous bound for waits that normally end in milliseconds
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def add(a: int, b: int) -> int:
    return a + b


def test_enqueue_runs_and_returns_result_with_timestamps(make_manager: Any, db_path: str) -> None:
    manager = make_manager(db_path, max_workers=2).start()
    before = datetime.now()

    job_id = manager.enqueue(Job(function=add, args=(2, 3), name="sum"))
    result = manager.wait(job_id, timeout=WAIT)

    assert result.status is JobStatus.COMPLETED
    assert result.status == "completed"
    assert result.result == 5
    assert result.name == "sum"
    assert result.attempts == 1
    assert result.progress == 1.0
    assert result.error is None
    assert before <= result.created_at <= result.started_at <= result.completed_at <= datetime.now()


@pytest.mark.parametrize("backend", ["sqlite", "memory"])
def test_priorities_run_highest_first_and_fifo_among_equals(make_manager: Any, db_path: str,
                                                           backend: str) -> None:
    repo = SQLiteRepository(db_path) if backend == "sqlite" else MemoryRepository()
    order: list[str] = []
    manager = make_manager(repo, max_workers=1)
    manager.register_function("record", order.append)
    plan = [("low-1", JobPriority.LOW), ("normal-1", JobPriority.NORMAL), ("crit", JobPriority.CRITICAL),
            ("normal-2", JobPriority.NORMAL), ("high", JobPriority.HIGH), ("low-2", JobPriority.LOW),
            ("int-7", 7), ("normal-3", JobPriority.NORMAL)]
    ids = [manager.enqueue(Job(function_name="record", args=(label,), priority=priority))
           for label, priority in plan]

    manager.start()
    for job_id in ids:
        manager.wait(job_id, timeout=WAIT)

    assert order == ["crit", "high", "int-7", "normal-1", "normal-2", "normal-3", "low-1", "low-2"]


def test_progress_is_visible_while_running(make_manager: Any, db_path: str) -> None:
    reported = threading.Event()
    release = threading.Event()

    def report(progress_callback: Any = None) -> str:
        progress_callback(0.4, "step 2 of 5", rows=40)
        reported.set()
        assert release.wait(WAIT)
        return "done"

    manager = make_manager(db_path).start()
    job_id = manager.enqueue(Job(function=report))
    assert reported.wait(WAIT)

    running = manager.poll(job_id)
    assert running.status is JobStatus.RUNNING
    assert running.progress == pytest.approx(0.4)
    assert running.progress_message == "step 2 of 5"
    assert running.progress_details == {"rows": 40}

    release.set()
    assert manager.wait(job_id, timeout=WAIT).result == "done"


def test_current_job_reports_progress_and_logs(make_manager: Any, db_path: str) -> None:
    seen: dict[str, Any] = {}

    def work() -> None:
        job = current_job()
        seen["id"] = job.id
        seen["cancelled"] = job.cancelled
        job.progress(0.5, "half")
        job.log("hello from the job")
        job.log("careful", level="warning")

    manager = make_manager(db_path).start()
    job_id = manager.enqueue(Job(function=work))
    manager.wait(job_id, timeout=WAIT)

    assert seen == {"id": job_id, "cancelled": False}
    logs = manager.get_logs(job_id)
    assert [(entry.level, entry.message) for entry in logs] == [
        ("info", "hello from the job"), ("warning", "careful")]
    assert all(isinstance(entry.timestamp, datetime) for entry in logs)
    assert current_job() is None
    # a page of them, for a job that logs a lot
    assert manager.count_logs(job_id) == 2 and manager.count_logs("no-such-job") == 0
    assert [entry.message for entry in manager.get_logs(job_id, offset=1)] == ["careful"]
    assert [entry.message for entry in manager.get_logs(job_id, limit=1)] == ["hello from the job"]
    assert manager.get_logs(job_id, offset=2, limit=5) == []
    for bad in ({"offset": -1}, {"limit": -1}, {"offset": 1.5}, {"limit": True}):
        with pytest.raises(ValueError, match="offset|limit"):
            manager.get_logs(job_id, **bad)


def test_coroutine_functions_run_on_an_event_loop(make_manager: Any, db_path: str) -> None:
    async def fetch(x: int, progress_callback: Any = None) -> int:
        await asyncio.sleep(0)
        progress_callback(0.5, "awaited")
        assert current_job() is not None
        return x * 2

    manager = make_manager(db_path).start()
    result = manager.wait(manager.enqueue(Job(function=fetch, args=(21,))), timeout=WAIT)
    assert (result.status, result.result) == (JobStatus.COMPLETED, 42)


@pytest.mark.parametrize("ending", ["returns", "raises"])
def test_tasks_a_coroutine_job_leaves_running_are_cancelled_when_it_ends(make_manager: Any, db_path: str,
                                                                          ending: str) -> None:
    # Given one worker thread, and a coroutine job that starts a task which never ends
    # (it yields to the loop over and over, noting which job it thinks it runs in)
    ticks: list[str] = []
    cancelled_as: list[str] = []

    async def leave_a_task_behind() -> None:
        async def forever() -> None:
            try:
                while True:
                    ticks.append(current_job().id)
                    await asyncio.sleep(0)
            except asyncio.CancelledError:
                cancelled_as.append(current_job().id)
                raise

        asyncio.get_running_loop().create_task(forever())
        await asyncio.sleep(0)
        if ending == "raises":
            raise ValueError("the job ends, its task does not")

    async def yield_a_few_times() -> None:
        for _ in range(20):
            await asyncio.sleep(0)  # a task left on this thread's loop would run here

    manager = make_manager(db_path, max_workers=1).start()
    first = manager.enqueue(Job(function=leave_a_task_behind, max_retries=0))

    # When the job ends, then its task was cancelled before its outcome was recorded
    assert manager.wait(first, timeout=WAIT).status in (JobStatus.COMPLETED, JobStatus.FAILED)
    assert cancelled_as == [first]

    # and the next coroutine job on the same thread runs without it
    ticks_after_first = len(ticks)
    second = manager.enqueue(Job(function=yield_a_few_times))
    assert manager.wait(second, timeout=WAIT).status is JobStatus.COMPLETED
    assert len(ticks) == ticks_after_first and set(ticks) == {first}


def test_async_generators_a_coroutine_job_leaves_open_are_closed_when_it_ends(make_manager: Any,
                                                                               db_path: str) -> None:
    kept: list[Any] = []  # keeps the generator alive: only the end of its loop closes it
    closed = threading.Event()

    async def numbers() -> Any:
        try:
            while True:
                yield 1
        finally:
            closed.set()

    async def read_one() -> int:
        generator = numbers()
        kept.append(generator)
        return await generator.__anext__()

    manager = make_manager(db_path, max_workers=1).start()
    assert manager.wait(manager.enqueue(Job(function=read_one)), timeout=WAIT).result == 1
    assert closed.is_set()  # finalised before the outcome was recorded


@pytest.mark.parametrize("backend", ["sqlite", "memory"])
def test_the_context_of_an_ended_attempt_no_longer_changes_the_job(make_manager: Any, db_path: str,
                                                                  backend: str) -> None:
    # Given a job whose first run fails, keeping its context, and a retried run that waits
    contexts: list[Any] = []
    second_run_reported = threading.Event()
    finish = threading.Event()

    def job() -> str:
        context = current_job()
        contexts.append(context)
        if len(contexts) == 1:
            raise ValueError("the first run fails")
        context.progress(0.1, "second run")
        second_run_reported.set()
        assert finish.wait(WAIT)
        return "done"

    manager = make_manager(db_path if backend == "sqlite" else MemoryRepository(), max_workers=1).start()
    job_id = manager.enqueue(Job(function=job, max_retries=0))
    assert manager.wait(job_id, timeout=WAIT).status is JobStatus.FAILED
    stale = contexts[0]
    logs_before = [(entry.level, entry.message) for entry in manager.get_logs(job_id)]

    # When the job is retried (its attempts reset: the new run is attempt 1 again) and the
    # first run's context reports while the new run is running
    assert manager.retry(job_id)
    try:
        assert second_run_reported.wait(WAIT)
        assert stale.attempt == contexts[1].attempt == 1
        assert stale.cancelled
        with pytest.raises(JobCancelled):
            stale.progress(0.99, "stale: from the first run")
        with pytest.raises(JobCancelled):
            stale.check_cancelled()
        stale.log("stale: from the first run")

        # Then the new run's progress and the job's log are untouched
        running = manager.poll(job_id)
        assert (running.progress, running.progress_message) == (0.1, "second run")
        assert not contexts[1].cancelled
    finally:
        finish.set()
    assert manager.wait(job_id, timeout=WAIT).result == "done"
    messages = [entry.message for entry in manager.get_logs(job_id)]
    assert messages[:len(logs_before)] == [message for _, message in logs_before]
    assert not any("stale" in message for message in messages)


def test_run_pending_ends_the_context_of_each_attempt(db_path: str) -> None:
    contexts: list[Any] = []
    manager = JobManager(db_path)
    try:
        job_id = manager.enqueue(Job(function=lambda: contexts.append(current_job())))
        assert manager.run_pending() == 1
        with pytest.raises(JobCancelled):
            contexts[0].progress(0.5)
        contexts[0].log("late")
        assert manager.get_logs(job_id) == []
    finally:
        manager.close()


def test_cancel_pending_job_is_immediate(make_manager: Any, db_path: str) -> None:
    manager = make_manager(db_path)  # not started: nothing runs
    job_id = manager.enqueue(Job(function=add, args=(1, 1)))

    assert manager.cancel(job_id) is True
    assert manager.poll(job_id).status is JobStatus.CANCELLED
    assert manager.cancel(job_id) is False
    assert manager.cancel("no-such-job") is False

    manager.start()
    assert manager.wait(job_id, timeout=WAIT).status is JobStatus.CANCELLED


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_cancel_by_another_manager_of_this_process_reaches_the_running_job_at_once(
        make_manager: Any, db_path: str, kind: str) -> None:
    # docs/concepts.md: the manager running the job hears of a cancel at once in the same
    # process. Made by another manager on the same store (a producer beside the workers),
    # it was heard only at the running manager's next heartbeat.
    store = MemoryRepository() if kind == "memory" else db_path
    started = threading.Event()

    def loop() -> None:
        started.set()
        for _ in range(int(WAIT * 2 / 0.005)):  # (bounded: a test that fails leaves no endless job)
            current_job().check_cancelled()  # type: ignore[union-attr]
            threading.Event().wait(0.005)

    worker = make_manager(store, max_workers=1, lease_timeout=3600.0, poll_interval=3600.0).start()
    producer = make_manager(worker.repository if kind == "memory" else store, producer=True)
    job_id = worker.enqueue(Job(function=loop))
    assert started.wait(WAIT)
    assert producer.cancel(job_id) is True
    result = worker.wait(job_id, timeout=WAIT)
    assert (result.status, result.attempts) == (JobStatus.CANCELLED, 1)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_cancel_by_another_manager_of_this_process_reaches_a_job_run_pending_runs(
        make_manager: Any, db_path: str, kind: str) -> None:
    # given a job run on the caller's thread by run_pending(), and a second manager of this
    # process on the same store (only a started manager heard the doorbell: the job ran on)
    store = MemoryRepository() if kind == "memory" else db_path
    runner = make_manager(store, clock=FakeClock())
    other = make_manager(runner.repository if kind == "memory" else store, producer=True)
    seen: list[str] = []

    def job() -> None:
        assert other.cancel(current_job().id) is True  # type: ignore[union-attr]
        seen.append("cancelled")
        current_job().check_cancelled()  # type: ignore[union-attr]
        seen.append("went on")

    job_id = runner.enqueue(Job(function=job, max_retries=0))
    assert runner.run_pending() == 1

    # then the job's next check raises JobCancelled, and it ends CANCELLED
    assert seen == ["cancelled"]
    assert runner.poll(job_id).status is JobStatus.CANCELLED  # type: ignore[union-attr]
    # and run_pending left the doorbell: a manager never started keeps no place there
    assert runner.repository.store_key not in doorbell._rings


@pytest.mark.parametrize("style", ["progress_callback", "check_cancelled"])
def test_cancel_running_job_is_cooperative(make_manager: Any, db_path: str, style: str) -> None:
    started = threading.Event()
    cancelled = threading.Event()

    def loop(progress_callback: Any = None) -> None:
        started.set()
        assert cancelled.wait(WAIT)
        if style == "progress_callback":
            progress_callback(0.5)
        else:
            current_job().check_cancelled()
        raise AssertionError("JobCancelled was not raised")

    manager = make_manager(db_path).start()
    job_id = manager.enqueue(Job(function=loop))
    assert started.wait(WAIT)

    assert manager.cancel(job_id) is True
    cancelled.set()

    result = manager.wait(job_id, timeout=WAIT)
    assert result.status is JobStatus.CANCELLED
    assert result.attempts == 1


def test_a_coroutine_job_that_catches_its_cancel_is_not_cancelled_again_while_it_cleans_up(
        make_manager: Any, db_path: str) -> None:
    # given a running coroutine job that catches the cancel, then cleans up until told
    started, caught, clean = threading.Event(), threading.Event(), threading.Event()
    cancels: list[int] = []

    async def careful() -> str:
        try:
            started.set()
            while True:
                await asyncio.sleep(0.005)
        except asyncio.CancelledError:
            cancels.append(1)
            caught.set()
        while not clean.is_set():  # the cleanup, awaiting: each await may be cancelled again
            try:
                await asyncio.sleep(0.005)
            except asyncio.CancelledError:
                cancels.append(1)
                raise
        return "cleaned up"

    manager = make_manager(db_path, max_workers=1).start()
    manager.register_function("careful", careful)
    job_id = manager.enqueue(Job(function_name="careful"))
    # (inside its try: RUNNING in the store is also a job claimed and not yet begun, whose
    # task a cancel ends before its first line)
    assert started.wait(WAIT)
    # when it is cancelled, and a heartbeat hears of that cancel again while it cleans up
    assert manager.cancel(job_id) is True
    assert caught.wait(WAIT)
    manager._pool.heartbeat()
    clean.set()
    # then its task was cancelled once, and it ends as it returned (the heartbeat cancelled
    # the task again, cutting the cleanup short: CANCELLED)
    result = manager.wait(job_id, timeout=WAIT)
    assert cancels == [1]
    assert (result.status, result.result) == (JobStatus.COMPLETED, "cleaned up")


def test_job_that_raises_job_cancelled_itself_ends_cancelled(make_manager: Any, db_path: str) -> None:
    def give_up() -> None:
        raise JobCancelled()

    manager = make_manager(db_path).start()
    assert manager.wait(manager.enqueue(Job(function=give_up)), timeout=WAIT).status is JobStatus.CANCELLED


def test_jobs_survive_a_restart_and_results_stay_pollable(make_manager: Any, db_path: str) -> None:
    first = make_manager(db_path)
    first.register_function("add", add)
    done = first.enqueue(Job(function_name="add", args=(1, 2)))
    first.start()
    first.wait(done, timeout=WAIT)
    first.stop()
    waiting = first.enqueue(Job(function_name="add", args=(3, 4)))  # accepted while stopped
    first.close()

    second = make_manager(db_path)
    assert second.poll(done).result == 3
    assert second.poll(waiting).status is JobStatus.PENDING
    second.register_function("add", add)
    second.start()
    assert second.wait(waiting, timeout=WAIT).result == 7


def test_running_job_of_a_live_worker_is_not_taken_on_start(make_manager: Any, db_path: str) -> None:
    repo = SQLiteRepository(db_path)
    other = make_manager(repo, producer=True)
    job_id = other.enqueue(Job(function_name="add", args=(1, 1)))
    now = datetime.now().timestamp()
    assert repo.claim(job_id, "other-process", now, now + 3600) is not None

    manager = make_manager(db_path)
    manager.register_function("add", add)
    manager.start()
    manager.stop()

    assert manager.poll(job_id).status is JobStatus.RUNNING  # its lease is still valid


def test_an_expired_lease_is_recovered_a_lease_after_start(make_manager: Any, db_path: str) -> None:
    repo = SQLiteRepository(db_path)
    producer = make_manager(repo, producer=True)
    job_id = producer.enqueue(Job(function_name="add", args=(2, 2)))
    now = datetime.now().timestamp()
    assert repo.claim(job_id, "dead-process", now - 120, now - 60) is not None

    manager = make_manager(db_path, lease_timeout=1.0, poll_interval=0.1)
    manager.register_function("add", add)
    manager.start()
    result = manager.wait(job_id, timeout=WAIT)

    assert (result.status, result.result, result.attempts) == (JobStatus.COMPLETED, 4, 2)
    assert result.started_at is not None and result.started_at.timestamp() >= now + 1.0


def test_a_manager_starting_after_a_wall_clock_step_takes_no_live_workers_job(
        make_manager: Any, db_path: str) -> None:
    # given a job running in one manager (its lease good for 60 s), and a second manager
    # that sees the machine's clock step forward 2 minutes before the first one does
    # (two fake clocks: one machine's clock as two processes read it)
    start = 1_900_000_000.0
    clock_a, clock_b = FakeClock(start), FakeClock(start)
    release, runs = threading.Event(), []

    def work(who: str) -> str:
        runs.append(who)
        assert release.wait(WAIT)
        return who

    first = make_manager(db_path, max_workers=1, lease_timeout=60, clock=clock_a)
    first.register_function("work", lambda: work("first"))
    job_id = first.start().enqueue(Job(function_name="work"))
    wait_until(lambda: runs == ["first"], WAIT)
    second = make_manager(db_path, max_workers=1, lease_timeout=60, clock=clock_b)
    second.register_function("work", lambda: work("second"))
    clock_b.jump(120)
    # when the second starts (it took back every lease lapsed by its clock, at once)
    second.start()
    # then the job stays with the first, which renews its lease once it sees the step
    record = second.repository.get(job_id)
    assert record is not None and (record.status, record.worker_id) == (JobStatus.RUNNING, first.worker_id)
    clock_a.jump(120)
    release.set()
    result = first.wait(job_id, timeout=WAIT)
    assert (result.status, result.attempts, result.result) == (JobStatus.COMPLETED, 1, "first")
    assert runs == ["first"]


def test_stats_list_queue_size_and_cleanup(make_manager: Any, db_path: str) -> None:
    manager = make_manager(db_path)
    manager.register_function("add", add)
    a = manager.enqueue(Job(function_name="add", args=(1, 1), tags={"report", "user:1"}, owner="ann"))
    b = manager.enqueue(Job(function_name="add", args=(2, 2), tags={"report"}, owner="bob"))
    c = manager.enqueue(Job(function_name="add", args=(3, 3), owner="ann"))
    manager.cancel(c)

    assert manager.get_queue_size() == 2
    assert manager.get_stats() == {"total": 3, "pending": 2, "scheduled": 0, "running": 0,
                                   "completed": 0, "failed": 0, "cancelled": 1}
    assert [r.job_id for r in manager.list_jobs()] == [c, b, a]
    assert [r.job_id for r in manager.list_jobs(status="pending")] == [b, a]
    assert [r.job_id for r in manager.list_jobs(status=JobStatus.CANCELLED)] == [c]
    assert [r.job_id for r in manager.list_jobs(owner="ann")] == [c, a]
    assert [r.job_id for r in manager.list_jobs(tags={"report"})] == [b, a]
    assert [r.job_id for r in manager.list_jobs(tags={"report", "user:1"})] == [a]
    assert [r.job_id for r in manager.list_jobs(limit=1, offset=1)] == [b]
    assert manager.list_jobs(owner="ann")[1].tags == frozenset({"report", "user:1"})
    with pytest.raises(ValueError, match="status"):
        manager.list_jobs(status="bogus")

    manager.start()
    manager.wait(a, timeout=WAIT)
    manager.wait(b, timeout=WAIT)
    assert manager.cleanup_old_results(retention_days=7) == 0  # all finished just now
    assert manager.cleanup_old_results(retention_days=0) == 3
    assert manager.poll(a) is None
    assert manager.get_stats()["total"] == 0


class _NoStatusCounts(SQLiteRepository):
    """A SQLite store whose counts of every status must not be read."""

    def count_by_status(self) -> dict[JobStatus, int]:
        raise AssertionError("count_by_status read (on SQLite it reads every finished job kept)")


class _DefaultQueueCount(MemoryRepository):
    """A store without a count_queued of its own, as a backend written before it."""

    def count_queued(self) -> int:
        return JobRepository.count_queued(self)


def test_queue_size_counts_the_queue_alone(make_manager: Any, db_path: str) -> None:
    # given a pending, a scheduled and a cancelled job
    for repo in (_NoStatusCounts(db_path), _DefaultQueueCount()):
        manager = make_manager(repo, producer=True)
        manager.enqueue(Job(function_name="add", args=(1, 1)))
        manager.enqueue(Job(function_name="add", args=(1, 1), scheduled_at=datetime(2999, 1, 1)))
        manager.cancel(manager.enqueue(Job(function_name="add", args=(1, 1))))
        # then the queue size is the two waiting, read without counting every status
        # (or, from a backend that has no count_queued, from those counts)
        assert manager.get_queue_size() == 2


def test_wait_raises_for_unknown_id_and_on_timeout(make_manager: Any, db_path: str) -> None:
    manager = make_manager(db_path)  # not started
    job_id = manager.enqueue(Job(function=add, args=(1, 2)))
    with pytest.raises(LookupError):
        manager.wait("missing")
    with pytest.raises(TimeoutError):
        manager.wait(job_id, timeout=0.05)
    assert manager.poll("missing") is None


def test_unknown_function_name_is_rejected_unless_producer(make_manager: Any, db_path: str) -> None:
    manager = make_manager(db_path)
    with pytest.raises(UnknownFunction, match="not_registered"):
        manager.enqueue(Job(function_name="not_registered"))
    assert manager.get_stats()["total"] == 0

    producer = make_manager(db_path, producer=True)
    job_id = producer.enqueue(Job(function_name="not_registered"))
    assert producer.poll(job_id).status is JobStatus.PENDING


def _process(n: int) -> int:
    return n


@pytest.mark.parametrize("producer", [True, False])
def test_a_manager_not_started_keeps_no_entry_for_the_jobs_it_stores(make_manager: Any, db_path: str,
                                                                     producer: bool) -> None:
    # given a manager on a SQLite file, not started, that enqueues jobs of functions it
    # registers (Job(function=...)), as a web process would (a producer, or not)
    manager = make_manager(db_path, producer=producer)
    ids = [manager.enqueue(Job(function=_process, args=(n,))) for n in range(2_000)]
    ids += manager.enqueue_many([Job(function=_process, args=(n,)) for n in range(500)])
    # then nothing is held here for them: they wait in the store, for workers elsewhere
    # (or for this manager's start, which reads them from there)
    assert len(manager._queue) == 0
    assert manager.get_stats()["pending"] == 2_500
    # nor, on a producer, a job's own classifier (it would run elsewhere: kept, it leaked
    # 120 bytes a job for ever)
    manager.enqueue(Job(function=_process, args=(0,), retry_on=bool))
    assert len(manager._local._classifiers) == (0 if producer else 1)
    # and a worker that registers the function runs them
    worker = make_manager(db_path)
    worker.register_function(f"{__name__}._process", _process)
    worker.start()
    assert [worker.wait(job_id, timeout=WAIT).result for job_id in ids[:3]] == [0, 1, 2]


@pytest.mark.parametrize("backend", ["sqlite", "memory"])
def test_a_producer_started_later_runs_every_job_past_the_load_window(make_manager: Any, db_path: str,
                                                                      backend: str) -> None:
    # given more jobs enqueued on a producer not started than a manager loads at once
    repo = SQLiteRepository(db_path) if backend == "sqlite" else MemoryRepository()
    manager = make_manager(repo, max_workers=4, producer=True)
    ran: list[int] = []
    manager.register_function("task", ran.append)
    count = READY_LOAD_LIMIT + 2_000
    ids = manager.enqueue_many([Job(function_name="task", args=(n,)) for n in range(count)])
    assert len(manager._queue) == 0
    # when it starts
    manager.start()
    # then every one of them runs, once
    assert all(manager.wait(job_id, timeout=WAIT).status is JobStatus.COMPLETED for job_id in ids)
    assert sorted(ran) == list(range(count))


@pytest.mark.parametrize("backend", ["sqlite", "memory"])
def test_a_store_deeper_than_the_window_is_read_again_before_the_queue_runs_dry(
        make_manager: Any, db_path: str, backend: str, monkeypatch: Any) -> None:
    # given a manager that reads 100 ready jobs at a time, whose periodic reads of the
    # store (and looks for changes made there) are a minute apart, and 1,000 jobs stored
    # before it starts (with priorities)
    monkeypatch.setattr(jobcore.loading, "READY_LOAD_LIMIT", 100)
    repo = SQLiteRepository(db_path) if backend == "sqlite" else MemoryRepository()
    manager = make_manager(repo, max_workers=4, producer=True, poll_interval=60.0, discovery_interval=60.0)
    ran: list[int] = []
    manager.register_function("task", ran.append)
    ids = manager.enqueue_many([Job(function_name="task", args=(n,), priority=n % 3) for n in range(1_000)])
    # when it starts
    manager.start()
    # then the store is read again as the queue runs low: every job runs, once, long
    # before a periodic read would have come
    assert all(manager.wait(job_id, timeout=WAIT).status is JobStatus.COMPLETED for job_id in ids)
    assert sorted(ran) == list(range(1_000))
    # and the windows came best first: the first 100 jobs to run were of the top priority
    assert {n % 3 for n in ran[:100]} == {2}


def test_jobs_enqueued_into_a_started_manager_do_not_run_ahead_of_better_ones_past_the_window(
        make_manager: Any, db_path: str, monkeypatch: Any) -> None:
    # given a manager reading 50 ready jobs at a time, 150 NORMAL jobs stored before it
    # starts (100 of them past its window), and its one worker busy
    monkeypatch.setattr(jobcore.loading, "READY_LOAD_LIMIT", 50)
    manager = make_manager(db_path, max_workers=1, poll_interval=60.0, discovery_interval=60.0)
    ran: list[int] = []
    busy, release = threading.Event(), threading.Event()
    manager.register_function("block", lambda: busy.set() or release.wait(WAIT))
    manager.register_function("task", ran.append)
    manager.enqueue(Job(function_name="block", priority=JobPriority.CRITICAL))
    normal = manager.enqueue_many([Job(function_name="task", args=(5,), priority=5) for _ in range(150)])
    manager.start()
    assert busy.wait(WAIT)
    # when LOW jobs are enqueued meanwhile, more than twice the window of them
    low = manager.enqueue_many([Job(function_name="task", args=(0,), priority=0) for _ in range(120)])
    # then the queue keeps a window of them, not one entry each (about 0.4 KB a job:
    # 200,000 enqueued into a started manager took 85 MB)
    assert len(manager._queue) <= 2 * 50
    release.set()
    # and every NORMAL job runs before any LOW one (the LOW jobs, queued, ran before the
    # 100 NORMAL ones past the window)
    assert all(manager.wait(job_id, timeout=WAIT).status is JobStatus.COMPLETED for job_id in normal + low)
    assert ran == [5] * 150 + [0] * 120


@pytest.mark.parametrize("workers", [1, 10])
def test_scheduled_jobs_that_come_due_do_not_run_ahead_of_better_ones_past_the_window(
        make_manager: Any, db_path: str, monkeypatch: Any, workers: int) -> None:
    # given a manager reading 8 ready jobs at a time, its workers busy, 32 NORMAL jobs
    # stored (24 past its window) and 6 LOW ones scheduled a minute ahead
    monkeypatch.setattr(jobcore.loading, "READY_LOAD_LIMIT", 8)
    clock = FakeClock()
    manager = make_manager(db_path, max_workers=workers, clock=clock)
    ran: list[int] = []
    normal: list[str] = []
    waiting: list[int] = []  # as each LOW job starts, how many NORMAL ones are still PENDING
    busy, release = threading.Semaphore(0), threading.Event()
    manager.register_function("block", lambda: busy.release() or release.wait(WAIT))

    def task(value: int) -> None:
        if value == 0:
            waiting.append(sum(manager.poll(job_id).status is JobStatus.PENDING for job_id in normal))
        ran.append(value)

    manager.register_function("task", task)
    manager.enqueue_many([Job(function_name="block", priority=JobPriority.CRITICAL) for _ in range(workers)])
    due = datetime.fromtimestamp(clock.time() + 60)
    low = manager.enqueue_many([Job(function_name="task", args=(0,), priority=0, scheduled_at=due)
                                for _ in range(6)])
    normal += manager.enqueue_many([Job(function_name="task", args=(5,), priority=5) for _ in range(32)])
    manager.start()
    assert all(busy.acquire(timeout=WAIT) for _ in range(workers))
    # when the LOW jobs come due while the workers are busy
    clock.advance(61)
    assert manager._queue.has_ready()  # (their timers are ready now)
    release.set()
    # then every NORMAL job is claimed first (the LOW ones, come due beside the window,
    # kept the queue from running low: they ran ahead of the NORMAL jobs past it); with
    # one worker they run in that order too (with ten, which thread reaches its job's
    # body first is the scheduler's choice: a NORMAL job claimed first may start last)
    assert all(manager.wait(job_id, timeout=WAIT).status is JobStatus.COMPLETED for job_id in normal + low)
    assert waiting == [0] * 6
    if workers == 1:
        assert ran == [5] * 32 + [0] * 6


def test_an_immediate_manager_runs_every_job_of_a_batch_past_twice_the_window(
        make_manager: Any, db_path: str, monkeypatch: Any) -> None:
    # given an immediate manager on SQLite reading 20 ready jobs at a time, 25 stored
    monkeypatch.setattr(jobcore.loading, "READY_LOAD_LIMIT", 20)
    ran: list[int] = []
    make_manager(db_path, producer=True).enqueue_many([Job(function_name="task", args=(n,)) for n in range(25)])
    manager = make_manager(db_path, immediate=True)
    manager.register_function("task", ran.append)
    # when it enqueues a batch of more than twice that, then one more job
    ids = manager.enqueue_many([Job(function_name="task", args=(n,)) for n in range(100, 150)])
    last = manager.enqueue(Job(function_name="task", args=(999,)))
    # then every job it enqueued ran before enqueue returned (its queue, bounded as a
    # started manager's is, left 30 of the batch and the last job PENDING for ever)
    assert all(manager.poll(job_id).status is JobStatus.COMPLETED for job_id in [*ids, last])  # type: ignore[union-attr]


@pytest.mark.parametrize("emptied_by", ["cancels", "timers"])
def test_a_started_managers_window_emptied_without_pops_is_read_again(
        make_manager: Any, db_path: str, monkeypatch: Any, emptied_by: str) -> None:
    # given a started manager reading 20 ready jobs at a time, a fake clock (no look at
    # the store comes by itself), its worker busy, and 25 NORMAL jobs stored
    monkeypatch.setattr(jobcore.loading, "READY_LOAD_LIMIT", 20)
    manager = make_manager(db_path, max_workers=1, clock=FakeClock())
    busy, release = threading.Event(), threading.Event()
    ran: list[Any] = []
    manager.register_function("block", lambda: busy.set() or release.wait(WAIT))
    manager.register_function("task", ran.append)
    if emptied_by == "timers":  # a quarter of a window of jobs an hour ahead, queued as timers
        manager.enqueue_many([Job(function_name="task", args=("later",), scheduled_at=datetime(2030, 1, 1, 1))
                              for _ in range(10)])
    manager.enqueue(Job(function_name="block", priority=JobPriority.CRITICAL))
    batch = manager.enqueue_many([Job(function_name="task", args=(n,)) for n in range(25)])
    manager.start()
    assert busy.wait(WAIT)
    # when the window is emptied without the workers popping it (the application
    # cancels the batch), or its low mark counts the timers, and a job is enqueued
    if emptied_by == "cancels":
        assert all(manager.cancel(job_id) for job_id in batch)
        batch = []
    new = manager.enqueue(Job(function_name="task", args=("new",), priority=JobPriority.LOW))
    release.set()
    # then the store is read again: every job runs (they stayed PENDING, the worker idle)
    assert all(manager.wait(job_id, timeout=WAIT).status is JobStatus.COMPLETED for job_id in [*batch, new])
    assert ran[-1] == "new"


def test_a_window_the_workers_empty_before_its_low_mark_is_set_is_read_again(
        make_manager: Any, monkeypatch: Any) -> None:
    # given a manager reading 100 ready jobs at a time (periodic reads a minute apart), 300
    # jobs stored, and a reader that sets the low mark of each later window only once the
    # workers have emptied it (they pop a window as soon as it is queued; once this
    # happened by chance, the queue stayed empty until the periodic read)
    monkeypatch.setattr(jobcore.loading, "READY_LOAD_LIMIT", 100)
    manager = make_manager(MemoryRepository(), max_workers=4, producer=True, poll_interval=60.0,
                           discovery_interval=60.0)
    ran: list[int] = []
    manager.register_function("task", ran.append)
    ids = manager.enqueue_many([Job(function_name="task", args=(n,)) for n in range(300)])
    queue, real_watch_low = manager._queue, manager._queue.watch_low
    late: list[int] = []

    def watch_low_late(below: int) -> None:
        if below and manager.running:
            wait_until(lambda: len(queue) == 0, WAIT, "the workers to empty the window")
            late.append(below)
        real_watch_low(below)

    monkeypatch.setattr(queue, "watch_low", watch_low_late)
    # when it starts
    manager.start()
    # then each window is read again all the same: every job runs, once
    assert all(manager.wait(job_id, timeout=WAIT).status is JobStatus.COMPLETED for job_id in ids)
    assert sorted(ran) == list(range(300)) and late


def test_two_managers_reading_windows_of_one_file_run_every_job_once(make_manager: Any, db_path: str,
                                                                     monkeypatch: Any) -> None:
    # given 600 jobs stored in one file, and two managers on it that read 50 ready jobs
    # at a time, their periodic reads and looks for changes a minute apart
    monkeypatch.setattr(jobcore.loading, "READY_LOAD_LIMIT", 50)
    ran: list[int] = []
    lock = threading.Lock()

    def task(n: int) -> None:
        with lock:
            ran.append(n)
    managers = []
    for _ in range(2):
        manager = make_manager(db_path, max_workers=2, poll_interval=60.0, discovery_interval=60.0)
        manager.register_function("task", task)
        managers.append(manager)
    ids = managers[0].enqueue_many([Job(function_name="task", args=(n,)) for n in range(600)])
    # when both start, each reading the windows the other takes jobs from
    for manager in managers:
        manager.start()
    # then every job runs, once, without waiting for a periodic read
    assert all(managers[0].wait(job_id, timeout=WAIT).status is JobStatus.COMPLETED for job_id in ids)
    assert sorted(ran) == list(range(600))


def test_run_pending_runs_every_stored_job_past_the_load_window(make_manager: Any, db_path: str,
                                                                monkeypatch: Any) -> None:
    # given a manager not started that reads 50 ready jobs at a time, and 120 jobs stored
    monkeypatch.setattr(jobcore.loading, "READY_LOAD_LIMIT", 50)
    manager = make_manager(db_path)
    ran: list[int] = []
    manager.register_function("task", ran.append)
    manager.enqueue_many([Job(function_name="task", args=(n,)) for n in range(120)])
    # when the test runs what is pending in its own thread
    # then every job runs, in order, a window at a time
    assert manager.run_pending() == 120
    assert ran == list(range(120))
    # and a limit is kept across windows
    manager.enqueue_many([Job(function_name="task", args=(n,)) for n in range(120, 240)])
    assert manager.run_pending(limit=70) == 70
    assert manager.run_pending() == 50
    assert ran == list(range(240))


def test_a_function_registered_alone_or_by_a_bare_decorator_runs_under_its_qualified_name(
        make_manager: Any, db_path: str) -> None:
    # given functions registered without a name (the bare decorator replaced the function
    # with jobcore's inner decorator, and registered nothing)
    manager = make_manager(db_path)

    @manager.register_function
    def double(x: int) -> int:
        return 2 * x

    assert manager.register_function(add) is add
    # then each stays the function it was, and jobs naming it by its qualified name, or
    # giving it, run it
    assert double(2) == 4
    ids = [manager.enqueue(Job(function_name=f"{__name__}.{double.__qualname__}", args=(3,))),
           manager.enqueue(Job(function=double, args=(4,))), manager.enqueue(Job(function_name=f"{__name__}.add",
                                                                                 args=(1, 2)))]
    assert manager.run_pending() == 3
    assert [manager.poll(job_id).result for job_id in ids] == [6, 8, 3]
    # and a callable given as the name beside a function is refused
    with pytest.raises(TypeError, match="Job.function_name: must be a str"):
        manager.register_function(add, add)


@pytest.mark.parametrize("store", ["sqlite", "memory"])
def test_run_pending_runs_a_job_enqueued_by_a_job_in_its_priority_order(make_manager: Any, db_path: str,
                                                                        store: str) -> None:
    # given a job that enqueues a CRITICAL one, and a LOW job waiting behind it (on SQLite
    # the LOW one ran first: the enqueued job was only in the store, not the window read)
    manager = make_manager(db_path if store == "sqlite" else ":memory:")
    ran: list[str] = []
    manager.register_function("child", lambda: ran.append("child"))
    manager.register_function("low", lambda: ran.append("low"))

    @manager.register_function("parent")
    def parent() -> None:
        ran.append("parent")
        manager.enqueue(Job(function_name="child", priority=JobPriority.CRITICAL))

    manager.enqueue(Job(function_name="parent", priority=JobPriority.HIGH))
    low = manager.enqueue(Job(function_name="low", priority=JobPriority.LOW))
    # when the test runs two of what is pending, then the rest
    assert manager.run_pending(limit=2) == 2
    # then the parent ran, then its child, before the LOW job, which still waits
    assert ran == ["parent", "child"] and manager.poll(low).status is JobStatus.PENDING
    assert manager.run_pending() == 1 and ran == ["parent", "child", "low"]


def test_two_lambdas_with_the_same_qualname_each_run_their_own_code(make_manager: Any, db_path: str) -> None:
    manager = make_manager(db_path).start()
    first = manager.enqueue(Job(function=lambda: "first"))
    second = manager.enqueue(Job(function=lambda: "second"))
    assert manager.wait(first, timeout=WAIT).result == "first"
    assert manager.wait(second, timeout=WAIT).result == "second"


class _Account:
    def charge(self, amount: int) -> int:
        return amount

    @classmethod
    def opened(cls, amount: int) -> str:
        return f"{cls.__name__} {amount}"


class _Savings(_Account):
    pass


def test_a_stored_job_whose_name_other_callables_share_is_warned_of_once(
        make_manager: Any, db_path: str, caplog: pytest.LogCaptureFixture) -> None:
    # A restarted app that enqueued one of Bob's charges ran Alice's stored one on Bob's
    # account: the stored name ("module.Class.method") does not say which instance.
    import functools

    manager = make_manager(db_path)
    with caplog.at_level("WARNING", logger="jobcore"):
        for _ in range(2):
            manager.enqueue(Job(function=_Account().charge, args=(5,)))
            manager.enqueue(Job(function=functools.partial(add, 1), args=(1,)))
            manager.enqueue(Job(function=lambda: 1))
        manager.enqueue(Job(function=add, args=(1, 1)))
        for _ in range(2):  # none of these shares its name: each look-up makes a new bound method
            manager.enqueue(Job(function=_Account.opened, args=(1,)))
            manager.enqueue(Job(function=len, args=([],)))
            manager.enqueue(Job(function=dict.fromkeys, args=(["k"],)))  # (a built-in classmethod)
        manager.enqueue(Job(function=lambda: 2, function_name="named_by_the_app"))  # (its own to keep apart)
        manager.enqueue(Job(function=[].append, args=(1,)))
    warned = [record.getMessage() for record in caplog.records if "stored by that name only" in record.getMessage()]
    assert len(warned) == 4
    assert "bound to one _Account instance" in warned[0] and "functools.partial" in warned[1]
    assert "lambda" in warned[2] and "built-in method bound to one list" in warned[3]


def test_an_inherited_classmethod_is_warned_of_as_its_name_is_the_base_classs(
        make_manager: Any, db_path: str, caplog: pytest.LogCaptureFixture) -> None:
    manager = make_manager(db_path)
    with caplog.at_level("WARNING", logger="jobcore"):
        manager.enqueue(Job(function=_Savings.opened, args=(1,)))
    warned = [record.getMessage() for record in caplog.records if "stored by that name only" in record.getMessage()]
    assert len(warned) == 1 and "classmethod _Savings inherits" in warned[0]


def test_a_job_whose_name_other_callables_share_is_not_warned_of_on_the_memory_store(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="jobcore"), JobManager(MemoryRepository()) as manager:
        manager.enqueue(Job(function=lambda: 1))
    assert not [record for record in caplog.records if "stored by that name only" in record.getMessage()]


def test_graceful_stop_lets_running_jobs_finish(make_manager: Any, db_path: str) -> None:
    started = threading.Event()
    release = threading.Event()

    def slow() -> str:
        started.set()
        assert release.wait(WAIT)
        return "finished"

    manager = make_manager(db_path, max_workers=1).start()
    running = manager.enqueue(Job(function=slow))
    assert started.wait(WAIT)
    queued = manager.enqueue(Job(function=add, args=(1, 1)))

    stopper = threading.Thread(target=manager.stop)
    stopper.start()
    release.set()
    stopper.join(WAIT)

    assert not stopper.is_alive()
    assert manager.running is False
    assert manager.poll(running).status is JobStatus.COMPLETED
    assert manager.poll(queued).status is JobStatus.PENDING  # not taken after stop began
    manager.stop()  # stopping twice is a no-op


def test_stopped_manager_still_enqueues_polls_and_cancels(make_manager: Any, db_path: str) -> None:
    manager = make_manager(db_path)
    manager.stop()  # never started: a no-op
    job_id = manager.enqueue(Job(function=add, args=(1, 1)))
    assert manager.poll(job_id).status is JobStatus.PENDING
    assert manager.cancel(job_id)
    assert manager.running is False


def test_context_manager_starts_and_stops(db_path: str) -> None:
    with JobManager(db_path) as manager:
        assert manager.running
        assert len(manager.workers) == 4
        result = manager.wait(manager.enqueue(Job(function=add, args=(5, 5))), timeout=WAIT)
    assert manager.running is False
    assert result.result == 10
    manager.close()


def test_a_thousand_jobs_from_four_threads(make_manager: Any, db_path: str) -> None:
    manager = make_manager(db_path, max_workers=4).start()
    ids: list[list[str]] = [[] for _ in range(4)]

    def produce(slot: int) -> None:
        for i in range(250):
            ids[slot].append(manager.enqueue(Job(function=add, args=(slot, i))))

    threads = [threading.Thread(target=produce, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 3)

    every = [job_id for chunk in ids for job_id in chunk]
    assert len(set(every)) == 1000
    for slot, chunk in enumerate(ids):
        for i, job_id in enumerate(chunk):
            assert manager.wait(job_id, timeout=WAIT).result == slot + i
    assert manager.get_stats()["completed"] == 1000


def test_enqueue_many_is_one_transaction(make_manager: Any, db_path: str) -> None:
    manager = make_manager(db_path)
    good = Job(function=add, args=(1, 2))
    bad = Job(function=add, args=(object(),))
    with pytest.raises(TypeError, match=r"args\[0\]"):
        manager.enqueue_many([good, bad])
    with pytest.raises(TypeError, match=r"kwargs\['when'\]"):
        manager.enqueue(Job(function=add, args=(1, [2, 3]), kwargs={"ok": {"a": 1}, "when": {object()}}))
    with pytest.raises(TypeError, match=r"args\[1\]"):
        manager.enqueue(Job(function=add, args=({"a": [1]}, [object()])))
    assert manager.get_stats()["total"] == 0

    ids = manager.enqueue_many([Job(function=add, args=(i, i)) for i in range(5)])
    assert len(ids) == 5 and manager.get_stats()["pending"] == 5


def test_unique_key_returns_the_unfinished_job(make_manager: Any, db_path: str) -> None:
    manager = make_manager(db_path)
    first = manager.enqueue(Job(function=add, args=(1, 1), unique_key="nightly"))
    again = manager.enqueue(Job(function=add, args=(1, 1), unique_key="nightly"))
    assert again == first
    assert manager.get_stats()["total"] == 1
    manager.start()
    manager.wait(first, timeout=WAIT)
    third = manager.enqueue(Job(function=add, args=(1, 1), unique_key="nightly"))
    assert third != first


def test_memory_repository_accepts_python_objects(make_manager: Any) -> None:
    manager = make_manager(MemoryRepository()).start()
    marker = object()
    result = manager.wait(manager.enqueue(Job(function=lambda x: x, args=(marker,))), timeout=WAIT)
    assert result.result is marker


def _run_script(script: str, cwd: Any, db: Any) -> "subprocess.CompletedProcess[str]":
    """Run `script` with Python in `cwd`, the default manager's database at `db`."""
    env = {**os.environ, "JOBCORE_DB": str(db),
           "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", script], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=60)


def test_module_level_api_in_a_subprocess(tmp_path: Any) -> None:
    script = textwrap.dedent("""
        import jobcore
        from jobcore import Job, JobStatus

        def double(x, progress_callback=None):
            progress_callback(1.0, "done")
            return x * 2

        jobcore.register_job_function("double", double)
        job_id = jobcore.enqueue(Job(function_name="double", args=(21,)))
        result = jobcore.get_job_manager().wait(job_id, timeout=10)
        assert jobcore.poll(job_id).result == 42, result
        assert jobcore.cancel(job_id) is False
        print("OK", job_id)
    """)
    db = tmp_path / "default.db"
    done = _run_script(script, tmp_path, db)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("OK ")
    assert db.exists()
    assert not (tmp_path / "jobcore.db").exists()
    job_id = done.stdout.split()[1]
    with JobManager(str(db)) as check:
        assert check.poll(job_id).result == 42


def test_the_default_manager_once_stopped_stays_stopped_until_started_again(tmp_path: Any) -> None:
    # given an app whose shutdown hook stopped the default manager (api.md says so)
    script = textwrap.dedent("""
        import jobcore
        from jobcore import Job

        jobcore.register_job_function("double", lambda x: x * 2)
        manager = jobcore.get_job_manager()
        manager.stop()

        # when it is asked for again and given a job
        assert jobcore.get_job_manager() is manager and not manager.running
        job_id = jobcore.enqueue(Job(function_name="double", args=(21,)))

        # then the job is stored, no worker runs it, until start() is called again
        assert jobcore.poll(job_id).status == "pending" and manager.workers == []
        manager.start()
        assert manager.wait(job_id, timeout=10).result == 42
        print("OK")
    """)
    done = _run_script(script, tmp_path, tmp_path / "default.db")
    assert (done.returncode, done.stdout) == (0, "OK\n"), done.stderr


def test_a_script_that_ends_while_a_default_manager_job_runs_stops_it_cleanly(tmp_path: Any) -> None:
    # given a script whose job runs on the default manager when the script ends: the
    # manager stops at exit, the job's worker writes its outcome (opening its connection
    # then) while the main thread, which Python reports as ended during exit, still
    # holds its own (it was closed under it as a dead thread's)
    script = textwrap.dedent("""
        import threading
        import jobcore

        started = threading.Event()

        def nap():
            started.set()
            threading.Event().wait(0.3)
            return "rested"

        jobcore.register_job_function("nap", nap)
        job_id = jobcore.enqueue(jobcore.Job(function_name="nap"))
        started.wait()  # its body runs: shown RUNNING, it may be claimed but unstarted, and handed back
        print("OK", job_id)
    """)
    db = tmp_path / "default.db"
    done = _run_script(script, tmp_path, db)
    # then the script exits quietly, the job's outcome is stored, and the manager left
    # the worker registry
    assert done.returncode == 0 and done.stderr == "", done.stderr
    job_id = done.stdout.split()[1]
    repo = SQLiteRepository(str(db))
    try:
        record = repo.get(job_id)
        assert record is not None and record.status is JobStatus.COMPLETED and record.result == "rested"
        assert repo.list_workers() == []
    finally:
        repo.close()


def test_closing_after_a_stop_that_did_not_wait_ends_every_thread(db_path: str) -> None:
    # given a job running when the manager is stopped without waiting, then closed: its
    # outcome cannot be recorded any more (the repository is closed), and the dispatcher
    # tried again for ever, logging each time
    manager = JobManager(db_path, max_workers=1)
    started, release = threading.Event(), threading.Event()

    def blocking() -> str:
        started.set()
        release.wait(WAIT)
        return "late"

    manager.register_function("blocking", blocking)
    manager.start()
    manager.enqueue(Job(function_name="blocking"))
    assert started.wait(WAIT)
    manager.stop(wait=False)
    manager.close()
    dispatcher = manager._pool._dispatcher.thread
    release.set()
    # then the dispatcher gives up (the job is taken back when its lease expires), and
    # the housekeeper, which renewed its lease after the stop, has ended
    assert dispatcher is not None
    dispatcher.join(WAIT)
    assert not dispatcher.is_alive()
    housekeeper = manager._housekeeper._thread
    assert housekeeper is not None and not housekeeper.is_alive()


class _LongJobHeld:
    """A manager ("first": one worker, a 1 s lease, a fake clock, a `WatchedLeases` store)
    running a job that returns who ran it once `release` is set; `runs` lists who started it."""

    def __init__(self, make_manager: Any, db_path: str, *, poll_interval: float) -> None:
        self.clock = FakeClock()
        self.runs: list[str] = []
        self.started, self.release = threading.Event(), threading.Event()
        self.repository = WatchedLeases(db_path)
        self.first = make_manager(self.repository, max_workers=1, lease_timeout=1.0, poll_interval=poll_interval,
                                  clock=self.clock)
        self.first.register_function("long", lambda: self.long_job("first"))
        self.first.start()
        self.job_id = self.first.enqueue(Job(function_name="long"))
        assert self.started.wait(WAIT)

    def long_job(self, by: str) -> str:
        self.runs.append(by)
        self.started.set()
        assert self.release.wait(WAIT)
        return by

    def runs_once_beside(self, make_manager: Any, db_path: str) -> JobManager:
        """Start a second manager on the file (it takes expired leases back as it starts)
        and check it leaves the job to the first, which runs it once and records it; the
        second manager."""
        second = make_manager(db_path, max_workers=1, lease_timeout=1.0, poll_interval=0.2, clock=self.clock)
        second.register_function("long", lambda: self.long_job("second"))
        second.start()
        record = second.repository.get(self.job_id)
        assert record is not None and (record.status, record.worker_id) == (JobStatus.RUNNING,
                                                                            self.first.worker_id)
        self.release.set()
        result = self.first.wait(self.job_id, timeout=WAIT)
        assert (result.status, result.attempts, result.result) == (JobStatus.COMPLETED, 1, "first")
        assert self.runs == ["first"]
        return second  # type: ignore[no-any-return]


@pytest.mark.parametrize("stop_args", [{"timeout": 0}, {"wait": False}], ids=["timeout=0", "wait=False"])
def test_a_job_running_past_a_stop_keeps_its_lease_and_runs_once(make_manager: Any, db_path: str,
                                                                 stop_args: dict[str, Any]) -> None:
    # given a job still running in this live process when its manager's stop stops
    # waiting for it (as a web app reloading its manager does)
    held = _LongJobHeld(make_manager, db_path, poll_interval=0.2)
    clock, repository, first, job_id = held.clock, held.repository, held.first, held.job_id
    first.stop(**stop_args)
    assert not first.running

    # when its lease would have lapsed three times over (no step over 1 s: see the housekeeper's jump check)
    for _ in range(6):
        clock.advance(0.5)
        assert repository.renewed(job_id, clock.time()), "the lease of a job still running was not renewed"

    # then another manager starting now (and taking back expired leases) leaves it alone,
    # and once it returns, the first manager records its outcome: it ran once
    second = held.runs_once_beside(make_manager, db_path)
    # and the stopped manager's thread that renewed the lease ends and leaves the registry
    housekeeper = first._housekeeper._thread
    assert housekeeper is not None
    housekeeper.join(WAIT)
    assert not housekeeper.is_alive()
    assert [w.worker_id for w in repository.list_workers()] == [second.worker_id]


def test_a_poll_interval_longer_than_the_lease_still_renews_a_running_job_in_time(make_manager: Any,
                                                                                  db_path: str) -> None:
    # given a manager whose poll_interval (5 s) outlasts its lease (1 s), running a long job
    held = _LongJobHeld(make_manager, db_path, poll_interval=5.0)
    clock, repository, job_id = held.clock, held.repository, held.job_id

    # when three leases' worth of time passes, in steps longer than a third of a lease
    for _ in range(8):
        clock.advance(0.4)
        # then each step renews its lease (a beat every third of the lease, not every 5 s)
        assert repository.renewed(job_id, clock.time()), "the lease lapsed between two beats"

    # and another manager taking back expired leases leaves it alone: it runs once
    held.runs_once_beside(make_manager, db_path)


def test_a_job_running_past_a_stop_is_still_timed_out(make_manager: Any, db_path: str) -> None:
    # given a job with a timeout still running when its manager stops without waiting
    release = threading.Event()
    try:
        manager, job_id, clock = stuck_past_stop(make_manager, db_path, release)

        # when its timeout passes (its lease renewed meanwhile)
        clock.advance(10)

        # then it is timed out as in a running manager (its lease is not renewed for ever)
        result = manager.wait(job_id, timeout=WAIT)
        assert (result.status, result.error_type) == (JobStatus.FAILED, "JobTimeout")
    finally:
        release.set()


def _threads_since(before: set[threading.Thread]) -> dict[str, int]:
    """The live jobcore threads started since `before` was taken, counted by kind."""
    kinds: dict[str, int] = {}
    for thread in threading.enumerate():
        if thread in before or not thread.is_alive():
            continue
        for kind in ("worker", "dispatcher", "housekeeper"):
            if thread.name.startswith(f"jobcore-{kind}"):
                kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


@pytest.mark.parametrize("stop_args", [{"wait": False}, {"timeout": 0}], ids=["wait=False", "timeout=0"])
def test_a_restart_after_a_stop_that_did_not_wait_runs_one_generation_of_threads(
        make_manager: Any, db_path: str, stop_args: dict[str, Any]) -> None:
    # given a job still running when the manager is stopped without waiting for it
    before = set(threading.enumerate())
    started, release = threading.Event(), threading.Event()
    ran_on: list[threading.Thread] = []

    def blocking() -> str:
        ran_on.append(threading.current_thread())
        started.set()
        release.wait(WAIT)
        return "late"

    manager = make_manager(db_path, max_workers=2)
    manager.register_function("blocking", blocking)
    manager.start()
    assert _threads_since(before) == {"worker": 2, "dispatcher": 1, "housekeeper": 1}
    first_workers = manager.workers
    running = manager.enqueue(Job(function_name="blocking"))
    assert started.wait(WAIT)
    manager.stop(**stop_args)

    # when it is started again
    manager.start()

    # then the earlier start's dispatcher and housekeeper are gone: one of each runs
    kinds = _threads_since(before)
    assert (kinds.get("dispatcher"), kinds.get("housekeeper")) == (1, 1)
    # new jobs run beside the old one (one of the two slots is free)...
    assert manager.wait(manager.enqueue(Job(function=add, args=(2, 3))), timeout=WAIT).result == 5
    # ...whose outcome is still recorded once it returns
    release.set()
    assert manager.wait(running, timeout=WAIT).result == "late"
    # and the earlier start's workers end (the one that ran the job once it returned)
    assert ran_on[0] in first_workers
    for thread in first_workers:
        thread.join(WAIT)
        assert not thread.is_alive()
    assert _threads_since(before) == {"worker": 2, "dispatcher": 1, "housekeeper": 1}
    assert len(manager.workers) == 2
    assert manager.wait(manager.enqueue(Job(function=add, args=(1, 1))), timeout=WAIT).result == 2


class _HeldBeats(SQLiteRepository):
    """An SQLite repository that, once armed, holds the housekeeper inside its next
    heartbeat until released."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.armed, self.inside, self.release = threading.Event(), threading.Event(), threading.Event()

    def beat_worker(self, worker_id: str, running: Any, now: float) -> Any:
        if self.armed.is_set():
            self.armed.clear()
            self.inside.set()
            self.release.wait(WAIT)
        return super().beat_worker(worker_id, running, now)


def _stopped_mid_heartbeat(make_manager: Any, db_path: str) -> tuple[set[threading.Thread], _HeldBeats, Any]:
    """The threads before, the repository and a manager stopped without waiting while its
    housekeeper is held inside a heartbeat (release it with `repository.release`)."""
    before = set(threading.enumerate())
    repository = _HeldBeats(db_path)
    manager = make_manager(repository, max_workers=1, poll_interval=0.05).start()
    repository.armed.set()
    assert repository.inside.wait(WAIT)
    manager.stop(wait=False)
    return before, repository, manager


def test_a_restart_while_the_housekeeper_is_busy_leaves_one_housekeeper(make_manager: Any, db_path: str) -> None:
    # given a manager stopped without waiting while its housekeeper is in a heartbeat
    before, repository, manager = _stopped_mid_heartbeat(make_manager, db_path)

    # when it is started again, and the heartbeat then returns
    restart = threading.Thread(target=manager.start)
    restart.start()
    repository.release.set()
    restart.join(WAIT)
    assert not restart.is_alive()

    # then the old housekeeper has ended: one housekeeper beats, not two
    assert _threads_since(before).get("housekeeper") == 1
    assert manager.wait(manager.enqueue(Job(function=add, args=(4, 4))), timeout=WAIT).result == 8


def test_a_stop_that_did_not_wait_for_a_heartbeat_leaves_the_registry(make_manager: Any, db_path: str) -> None:
    # The heartbeat under way found the entry gone (the stop had removed it) and put it back.
    before, repository, _ = _stopped_mid_heartbeat(make_manager, db_path)
    [housekeeper] = [t for t in set(threading.enumerate()) - before if "housekeeper" in t.name]
    repository.release.set()
    housekeeper.join(WAIT)
    assert not housekeeper.is_alive()
    assert [w.worker_id for w in repository.list_workers()] == []


def test_the_memory_store_gives_out_copies_of_metadata_and_progress_details_all_the_way_down() -> None:
    # given a job whose metadata and progress details hold lists (the memory store copied
    # only the outer dict: a caller appending to a list changed every later answer)
    def report() -> None:
        job = current_job()
        assert job is not None
        job.progress(0.5, "half", files=["a"])

    manager = JobManager(MemoryRepository())
    manager.register_function("report", report)
    batch = {"ids": [1, 2]}
    job_id = manager.enqueue(Job(function_name="report", metadata={"batch": batch}))
    batch["ids"].append("after enqueue")
    assert manager.run_pending() == 1
    # when a caller changes what it was given
    seen = manager.poll(job_id)
    assert seen is not None
    seen.metadata["batch"]["ids"].append("reader")
    seen.progress_details["files"].append("reader")
    # then the store's own are unchanged, as a persistent store's rows are
    again = manager.poll(job_id)
    assert again is not None
    assert (again.metadata, again.progress_details) == ({"batch": {"ids": [1, 2]}}, {"files": ["a"]})


def test_the_memory_store_copies_metadata_nested_as_deep_as_json_holds() -> None:
    # (a recursive copy of nested dicts and lists reached the recursion limit at about
    # 330 levels: poll, wait and listings raised RecursionError)
    deep: list[Any] = []
    for _ in range(800):
        deep = [deep]
    manager = JobManager(MemoryRepository())
    manager.register_function("noop", lambda: None)
    job_id = manager.enqueue(Job(function_name="noop", metadata={"deep": deep}))
    assert manager.run_pending() == 1
    result = manager.wait(job_id, timeout=10)
    assert result.status is JobStatus.COMPLETED and result.metadata["deep"] == deep
    assert result.metadata["deep"] is not deep
