"""Helpers for users' own test suites: immediate mode and single-step run_pending()."""

from __future__ import annotations

import asyncio
import math
import os
import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from jobcore import FakeClock, Job, JobManager, JobStatus, MemoryRepository, current_job


def test_immediate_mode_runs_jobs_inside_enqueue() -> None:
    calls: list[int] = []
    manager = JobManager(MemoryRepository(), immediate=True)
    job_id = manager.enqueue(Job(function=lambda x: calls.append(x) or x * 2, args=(21,)))
    assert calls == [21]
    assert manager.poll(job_id).result == 42
    assert manager.workers == []


def test_immediate_mode_runs_dependents_in_order() -> None:
    order: list[str] = []
    manager = JobManager(MemoryRepository(), immediate=True)
    first = manager.enqueue(Job(function=lambda: order.append("first")))
    manager.enqueue(Job(function=lambda: order.append("second"), depends_on=[first]))
    assert order == ["first", "second"]


async def _send_mail(to: str) -> str:
    await asyncio.sleep(0)
    if to == "nobody":
        raise ValueError("no address")
    return f"sent to {to} as job {current_job().id}"


@pytest.mark.parametrize("mode", ["immediate", "run_pending"])
def test_coroutine_jobs_run_when_called_from_running_async_code(mode: str) -> None:
    # Given code that runs in an event loop (a pytest-asyncio test, an async web handler)
    async def handler() -> list[Any]:
        loop = asyncio.get_running_loop()
        manager = JobManager(MemoryRepository(), immediate=(mode == "immediate"))
        # When it enqueues coroutine jobs that run in its thread
        ids = [manager.enqueue(Job(function=_send_mail, args=(to,), max_retries=0)) for to in ("ann", "nobody")]
        if mode == "run_pending":
            assert manager.run_pending() == 2
        assert asyncio.get_running_loop() is loop
        await asyncio.sleep(0)  # and its own loop goes on
        return [manager.poll(job_id) for job_id in ids]

    sent, failed = asyncio.run(handler())

    # Then they ran to their end, each as its job
    assert (sent.status, sent.result) == (JobStatus.COMPLETED, f"sent to ann as job {sent.job_id}")
    assert (failed.status, failed.error_type, failed.error) == (JobStatus.FAILED, "ValueError", "no address")


def _on_a_deeper_stack(frames: int, call: Any) -> Any:
    """`call()` from `frames` frames further down the stack."""
    return call() if frames == 0 else _on_a_deeper_stack(frames - 1, call)


# Each step of the recursion below is 8 frames (the job, enqueue, the run of the next
# job): starting 0 to 23 frames deeper meets the recursion limit at each of them (3 times).
@pytest.mark.parametrize("backend", ["sqlite", "memory"])
@pytest.mark.parametrize("offset", range(0, 24, 1))
def test_immediate_jobs_enqueueing_jobs_too_deep_all_end_and_the_manager_goes_on(
        db_path: str, backend: str, offset: int) -> None:
    # given an immediate manager whose job enqueues the next one, without end: each runs
    # inside the enqueue of the one before, until the stack runs out (RecursionError was
    # then raised again while recording outcomes: 1 to 3 jobs stayed RUNNING, or PENDING)
    manager = JobManager(db_path if backend == "sqlite" else MemoryRepository(), immediate=True)
    try:
        def dive(n: int) -> int:
            manager.enqueue(Job(function_name="dive", args=(n + 1,)))
            return n

        manager.register_function("dive", dive)

        # when the first is enqueued
        first = _on_a_deeper_stack(offset, lambda: manager.enqueue(Job(function_name="dive", args=(0,))))

        # then every job ended: the deepest failed with a RecursionError, the rest completed
        jobs = manager.list_jobs(limit=None)
        assert len(jobs) > 10
        by_status: dict[JobStatus, list[Any]] = {}
        for job in jobs:
            by_status.setdefault(job.status, []).append(job)
        assert set(by_status) == {JobStatus.COMPLETED, JobStatus.FAILED}, {s: len(j) for s, j in by_status.items()}
        [failed] = by_status[JobStatus.FAILED]
        assert failed.error_type == "ImmediateRecursionError" and failed.attempts == 1
        assert "too deep" in (failed.error or "")
        assert manager.poll(first).status is JobStatus.COMPLETED
        # and the manager goes on
        assert manager.poll(manager.enqueue(Job(function=lambda: "ok"))).result == "ok"
    finally:
        manager.close()


def test_an_immediate_manager_refuses_to_nest_a_job_with_no_room_left_and_stores_nothing(db_path: str) -> None:
    # given an immediate manager, called with little stack left
    import sys
    manager = JobManager(db_path, immediate=True)
    try:
        manager.register_function("echo", lambda x: x)
        room = sys.getrecursionlimit() - len(_stack())

        # when it is asked to run a job (enqueue) or what is ready (run_pending) there
        def near_the_limit(call: Any) -> Any:
            return _on_a_deeper_stack(room - 60, call)

        # then it raises a RecursionError, storing nothing, and goes on afterwards
        with pytest.raises(RecursionError, match="too deep"):
            near_the_limit(lambda: manager.enqueue(Job(function_name="echo", args=(1,))))
        with pytest.raises(RecursionError, match="too deep"):
            near_the_limit(lambda: manager.enqueue_many([Job(function_name="echo", args=(n,)) for n in range(2)]))
        with pytest.raises(RecursionError, match="too deep"):
            near_the_limit(manager.run_pending)
        assert manager.get_stats()["total"] == 0
        assert manager.poll(manager.enqueue(Job(function_name="echo", args=(2,)))).result == 2
    finally:
        manager.close()


def _stack() -> list[Any]:
    import inspect
    return inspect.stack(0)


@pytest.mark.parametrize("caller", ["sync code", "async code"])
def test_an_immediate_chain_of_coroutine_jobs_stops_as_deep_as_a_sync_one_and_cleanly(caller: str) -> None:
    # given an immediate manager whose coroutine job enqueues the next one, 150 deep: each
    # ran on a new helper thread (with a loop of its own), on a new stack, so the
    # recursion guard never tripped; without an end the chain grew until the process ran
    # out of file descriptors (EMFILE), with warnings of coroutines never awaited
    import gc
    import warnings
    manager = JobManager(MemoryRepository(), immediate=True)
    most_helpers = [0]

    async def step(n: int) -> int:
        most_helpers[0] = max(most_helpers[0], len(_helper_threads()))
        if n < 150:
            manager.enqueue(Job(function=step, args=(n + 1,), max_retries=0))
        return n

    async def from_async_code() -> str:
        return manager.enqueue(Job(function=step, args=(0,), max_retries=0))

    # when the first is enqueued (what earlier tests left for the garbage collector is
    # collected first: since Python 3.13 an SQLite connection collected unclosed warns)
    gc.collect()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if caller == "sync code":
            first = manager.enqueue(Job(function=step, args=(0,), max_retries=0))
        else:
            first = asyncio.run(from_async_code())
        gc.collect()

    # then the chain stops 100 helper threads deep, as the sync chain stops at its
    # recursion guard: the job that enqueued there failed, the ones around it completed,
    # and the refused enqueue stored nothing
    jobs = manager.list_jobs(limit=None)
    by_status = {status: [job for job in jobs if job.status is status] for status in JobStatus}
    [failed] = by_status[JobStatus.FAILED]
    assert (failed.error_type, failed.attempts) == ("ImmediateRecursionError", 1)
    assert "100 helper threads nested" in (failed.error or "")
    assert len(jobs) == len(by_status[JobStatus.COMPLETED]) + 1 < 150
    assert manager.poll(first).status is JobStatus.COMPLETED
    # cleanly: at most 100 helper threads at a time, none left, no warning
    assert most_helpers[0] == 100
    assert _helper_threads() == []
    assert [str(w.message) for w in caught] == []
    # and the manager goes on
    assert manager.poll(manager.enqueue(Job(function=step, args=(150,)))).result == 150


def _helper_threads() -> list[threading.Thread]:
    """The helper threads alive, by their name (other tests' threads may come and go)."""
    return [thread for thread in threading.enumerate() if thread.name == "jobcore-helper"]


def _sync_job_with_its_own_loop(progress_callback: Any) -> dict[str, Any]:
    """A sync job wrapping async code, as a sync task calling an async client does."""
    async def fetch() -> str:
        await asyncio.sleep(0)
        return "fetched"

    progress_callback(0.5, "halfway")
    return {"value": asyncio.run(fetch()), "job": current_job().id, "request": _REQUEST.get()}


_REQUEST: Any = __import__("contextvars").ContextVar("request", default=None)


@pytest.mark.parametrize("mode", ["immediate", "run_pending"])
def test_a_sync_job_run_from_async_code_may_run_an_event_loop_of_its_own(db_path: str, mode: str) -> None:
    # given async code (a pytest-asyncio test, an async handler) with its loop running,
    # that sets a context variable and enqueues sync jobs that call asyncio.run, and one
    # that is interrupted: the sync job ran in the caller's thread, where asyncio.run
    # refused to run ("cannot be called from a running event loop"); on a started
    # manager it ran
    manager = JobManager(db_path, immediate=(mode == "immediate"))

    def interrupted() -> None:
        raise KeyboardInterrupt

    async def handler() -> tuple[str, str]:
        loop = asyncio.get_running_loop()
        _REQUEST.set("request-42")
        job_id = manager.enqueue(Job(function=_sync_job_with_its_own_loop, max_retries=0))
        if mode == "run_pending":
            assert manager.run_pending() == 1
        stopped = manager.enqueue(Job(function=interrupted, max_retries=0)) if mode == "immediate" else ""
        assert asyncio.get_running_loop() is loop
        return job_id, stopped

    # when it runs (the interrupt reaching the caller, as from sync code)
    try:
        if mode == "immediate":
            with pytest.raises(KeyboardInterrupt):
                asyncio.run(handler())
            [ran] = [job for job in manager.list_jobs() if job.name.endswith("_sync_job_with_its_own_loop")]
            job_id = ran.job_id
        else:
            job_id, _ = asyncio.run(handler())

        # then the job completed as on a started manager, as itself, in the caller's context
        result = manager.poll(job_id)
        assert (result.status, result.error) == (JobStatus.COMPLETED, None)
        assert result.result == {"value": "fetched", "job": job_id, "request": "request-42"}
        assert result.progress_message == "halfway"
        if mode == "immediate":
            assert [(job.status, job.error_type) for job in manager.list_jobs(status="failed")] == [
                (JobStatus.FAILED, "KeyboardInterrupt")]
    finally:
        manager.close()


def test_run_pending_steps_through_retries_with_a_fake_clock(db_path: str) -> None:
    clock = FakeClock()
    attempts: list[int] = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("connection reset")
        return "ok"

    manager = JobManager(db_path, clock=clock)
    job_id = manager.enqueue(Job(function=flaky, retry_delay=10, retry_jitter=False))
    assert manager.run_pending() == 1
    assert manager.poll(job_id).status is JobStatus.SCHEDULED
    assert manager.run_pending() == 0  # not due yet
    clock.advance(10)
    assert manager.run_pending() == 1
    clock.advance(20)
    assert manager.run_pending() == 1
    assert manager.poll(job_id).result == "ok"
    manager.close()


def test_run_pending_fires_schedules(db_path: str) -> None:
    clock = FakeClock(start=1_900_000_000.0)
    ticks: list[int] = []
    manager = JobManager(db_path, clock=clock)
    manager.enqueue(Job(function=lambda: ticks.append(1), cron="*/5 * * * * *"))
    clock.advance(5)
    manager.run_pending()
    clock.advance(5)
    manager.run_pending()
    assert len(ticks) == 2
    manager.close()


def test_run_pending_refuses_a_started_threaded_manager(make_manager: Any, db_path: str) -> None:
    manager = make_manager(db_path).start()
    with pytest.raises(RuntimeError, match="not started"):
        manager.run_pending()


def test_a_fake_clock_refuses_a_nan_advance() -> None:
    # accepted, it made every later time NaN (an enqueue on SQLite then failed as a taken id)
    from jobcore import FakeClock
    clock = FakeClock(start=1000.0)
    with pytest.raises(ValueError, match="NaN"):
        clock.advance(float("nan"))
    assert clock.time() == 1000.0


def test_a_fake_clock_advances_by_an_int_past_a_floats_range_as_by_inf() -> None:
    from jobcore import FakeClock
    clock = FakeClock(start=1000.0)
    clock.advance(10**400)  # was OverflowError: int too large to convert to float
    assert clock.time() == math.inf and clock.monotonic() == math.inf
    with pytest.raises(ValueError, match="backwards"):
        FakeClock().advance(-10**400)


@pytest.mark.parametrize("repository", ["sqlite", "memory"])
def test_stop_with_a_timeout_counts_real_seconds_on_a_fake_clock(repository: str, db_path: str) -> None:
    # The deadline was read on the manager's clock: a FakeClock standing still held stop()
    # until the job ended, however short the timeout.
    release, started = threading.Event(), threading.Event()

    def blocks() -> None:
        started.set()
        release.wait(30)

    manager = JobManager(db_path if repository == "sqlite" else MemoryRepository(), clock=FakeClock())
    manager.start()
    try:
        job_id = manager.enqueue(Job(function=blocks))
        assert started.wait(10)
        began = time.monotonic()
        manager.stop(timeout=0.2)
        assert not release.is_set() and time.monotonic() - began < 10
    finally:
        release.set()
    assert manager.wait(job_id, timeout=10).status is JobStatus.COMPLETED  # recorded all the same
    manager.close()


def test_the_pytest_fixture_of_docs_testing_md_runs_as_printed(tmp_path: Any) -> None:
    # given the doc's example, verbatim, and the one function it leaves to the reader
    doc = (Path(__file__).resolve().parent.parent / "docs" / "testing.md").read_text()
    section = doc.split("## The real thing: threads and a file", 1)[1]
    example = re.search(r"```python\n(.*?)```", section, re.S)
    assert example is not None
    reader = "def build_report(user_id):\n    return {'user': user_id}\n"
    (tmp_path / "test_doc_example.py").write_text(example.group(1) + "\n\n" + reader)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent.parent),
                                                                     os.environ.get("PYTHONPATH")]))}
    # when pytest runs it
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_doc_example.py"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    # then its test passes
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "1 passed" in run.stdout


@pytest.mark.parametrize("store", ["sqlite", "memory"])
def test_run_pending_runs_jobs_that_the_jobs_it_runs_enqueue_or_retry(tmp_path: Any, store: str) -> None:
    # given a job that enqueues a child and re-queues a failed job (the memory store kept
    # notes of such jobs; a persistent store keeps none, and the SQLite run left them)
    from jobcore import SQLiteRepository
    repository: Any = SQLiteRepository(str(tmp_path / "jobs.db")) if store == "sqlite" else MemoryRepository()
    manager = JobManager(repository, clock=FakeClock())
    ran: list[str] = []

    def fails() -> None:
        ran.append("victim")
        if ran.count("victim") == 1:
            raise ValueError("first time")

    manager.register_function("victim", fails)
    manager.register_function("child", lambda: ran.append("child"))

    def parent() -> None:
        ran.append("parent")
        manager.enqueue(Job(function_name="child"))
        assert manager.retry(victim)

    manager.register_function("parent", parent)
    victim = manager.enqueue(Job(function_name="victim", max_retries=0))
    assert manager.run_pending() == 1 and manager.poll(victim).status is JobStatus.FAILED
    parent_id = manager.enqueue(Job(function_name="parent"))

    # when run_pending runs the parent
    count = manager.run_pending()

    # then it also runs what the parent made ready, before it returns
    assert count == 3
    assert sorted(ran) == ["child", "parent", "victim", "victim"]
    assert manager.poll(parent_id).status is JobStatus.COMPLETED
    assert manager.poll(victim).status is JobStatus.COMPLETED
    manager.close()


def test_ctrl_c_in_run_pending_after_the_job_ran_lets_go_of_it_so_it_is_taken_back(
        make_manager: Any, db_path: str) -> None:
    # given a manager not started whose `run_pending` is interrupted (Ctrl-C) in the
    # engine's own step between running a job and recording its outcome
    clock = FakeClock()
    manager = make_manager(db_path, clock=clock, lease_timeout=4.0, poll_interval=0.5)
    again = threading.Event()
    runs: list[int] = []

    def task() -> None:
        runs.append(1)
        if len(runs) > 1:
            again.set()

    job_id = manager.enqueue(Job(function=task))
    step = manager._pool._single_step  # noqa: SLF001 (where the signal lands is what is at stake)
    last_report = step._last_report  # noqa: SLF001

    def interrupted(context: Any) -> Any:
        step._last_report = last_report  # noqa: SLF001
        raise KeyboardInterrupt

    step._last_report = interrupted  # noqa: SLF001
    with pytest.raises(KeyboardInterrupt):
        manager.run_pending()
    assert runs == [1] and manager.poll(job_id).status is JobStatus.RUNNING
    # when the manager starts and its lease on the job lapses
    manager.start()
    for _ in range(40):
        clock.advance(1.0)
        if again.wait(0.05):
            break
    # then the job was taken back and ran again (held on, its lease was renewed for ever)
    assert again.is_set()
    assert manager.wait(job_id, timeout=10).status is JobStatus.COMPLETED
    assert manager._pool.held_ids() == []  # noqa: SLF001


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_retry_is_due_at_the_very_time_poll_shows_for_it(kind: str, tmp_path: Any) -> None:
    # (docs/testing.md) A clock moved to poll().scheduled_at of a job waiting for its retry
    # found it not due in 8 seeds of 20: the time was shown rounded to the microsecond,
    # half the time down.
    missed = []
    for seed in range(20):
        clock = FakeClock()
        store = MemoryRepository() if kind == "memory" else str(tmp_path / f"{seed}.db")
        manager = JobManager(store, clock=clock, rng=random.Random(seed))
        manager.register_function("flaky", _fails_with_connection_error)
        job_id = manager.enqueue(Job(function_name="flaky", max_retries=1))
        manager.run_pending()
        due = manager.poll(job_id).scheduled_at
        clock.advance(due.timestamp() - clock.time())
        if manager.run_pending() != 1:
            missed.append(seed)
        manager.close()
    assert missed == []


def _fails_with_connection_error() -> None:
    raise ConnectionError("connection reset")
