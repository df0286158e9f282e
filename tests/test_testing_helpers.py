"""Helpers for users' own test suites: immediate mode and single-step run_pending()."""

from __future__ import annotations

import asyncio
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
