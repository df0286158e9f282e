"""A cancel that reaches a running job after its attempt ended, while the outcome is on its
way to the store: `cancel()` returned True, so the job ends CANCELLED (not retried, not
dead-lettered), on every backend.

The window is made wide and exact by a store that holds up the call recording the job's
outcome until the test has cancelled it: no sleeps, no timing assumptions.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pytest

import pg_fixtures
from pg_fixtures import schema, server  # noqa: F401 (fixtures the PostgreSQL store asks for)
from jobcore import CallbackNotificationChannel, Job, JobManager, JobStatus, MemoryRepository, SQLiteRepository
from jobcore.repository.base import JobRepository, Settlement

WAIT = 30.0


class Pause:
    """Holds up each store call that records an outcome of job `job_id` until `proceed`
    is set; `reached` tells that one is waiting."""

    def __init__(self) -> None:
        self.job_id = ""
        self.reached = threading.Event()
        self.proceed = threading.Event()

    def __call__(self, settlements: Sequence[Settlement]) -> None:
        if any(s.job_id == self.job_id for s in settlements):
            self.reached.set()
            self.proceed.wait(WAIT)  # bounded: a broken test fails on its own asserts


def pausing(base: type[JobRepository], pause: Pause) -> type[JobRepository]:
    """`base` with every call that records outcomes (`apply`, and `insert_and_apply` where
    the backend has one) first going through `pause`."""

    class Pausing(base):  # type: ignore[valid-type,misc]
        def apply(self, settlements: Sequence[Settlement], *args: Any, **kwargs: Any) -> Any:
            pause(settlements)
            return super().apply(settlements, *args, **kwargs)

        if base.insert_and_apply is not JobRepository.insert_and_apply:
            def insert_and_apply(self, record: Any, settlements: Sequence[Settlement], *args: Any,
                                 **kwargs: Any) -> Any:
                pause(settlements)
                return super().insert_and_apply(record, settlements, *args, **kwargs)

    return Pausing


@pytest.fixture(params=["sqlite", "memory", pytest.param("postgres", marks=pg_fixtures.MARKS)])
def paused_store(request: Any, tmp_path: Path) -> Iterator[tuple[JobRepository, Pause]]:
    """A fresh store of each backend whose recording of one job's outcome the test holds up."""
    pause = Pause()
    store: JobRepository
    if request.param == "sqlite":
        store = pausing(SQLiteRepository, pause)(tmp_path / "jobs.db")
    elif request.param == "memory":
        store = pausing(MemoryRepository, pause)()
    else:
        fresh = request.getfixturevalue("schema")
        store = pausing(pg_fixtures.PostgresRepository, pause)(fresh.server, schema=fresh.name)
    yield store, pause
    pause.proceed.set()
    store.close()


@pytest.mark.parametrize("ending", ["transient error", "permanent error", "timeout"])
def test_a_cancel_made_while_an_ended_attempt_is_recorded_ends_the_job_cancelled(
        paused_store: tuple[JobRepository, Pause], make_manager: Callable[..., JobManager], ending: str) -> None:
    store, pause = paused_store
    go, let_go = threading.Event(), threading.Event()  # start the ending; free a timed-out thread
    runs: list[int] = []

    def flaky() -> None:
        runs.append(1)
        if ending == "timeout":
            let_go.wait(WAIT)  # stuck past its timeout until the test ends
            return
        assert go.wait(WAIT)
        raise ConnectionError("connection reset") if ending == "transient error" else ValueError("bad input")

    # given a job whose first attempt ends so that it would run again (or, for a permanent
    # error, be dead-lettered), a job depending on it, and a channel hearing of them
    job = Job(function=flaky, max_retries=1, retry_delay=0.01, retry_jitter=False,
              timeout=0.05 if ending == "timeout" else None)
    pause.job_id = job.id
    manager = make_manager(store, max_workers=1)
    events: list[dict[str, Any]] = []
    heard = threading.Event()

    def hear(event: dict[str, Any]) -> None:
        events.append(event)
        if event["job_id"] == job.id and event["event"] == "job.cancelled":
            heard.set()

    manager.add_notification_channel(CallbackNotificationChannel(hear))
    manager.start()
    try:
        job_id = manager.enqueue(job)
        dependent = manager.enqueue(Job(function=flaky, depends_on=[job_id]))
        go.set()
        # when the attempt has ended and its outcome waits to be recorded, the job is cancelled
        assert pause.reached.wait(WAIT)
        assert manager.poll(job_id).status is JobStatus.RUNNING
        assert manager.cancel(job_id) is True
        pause.proceed.set()
        # then it ends CANCELLED after that one attempt, as a job stopped on a cancel request
        result = manager.wait(job_id, timeout=WAIT)
        assert (result.status, result.error, result.error_type, result.attempts) == (
            JobStatus.CANCELLED, "cancelled while running", "JobCancelled", 1)
        assert manager.poll(job_id) == result and runs == [1]
        # and its dependent is cancelled naming it
        waiting = manager.wait(dependent, timeout=WAIT)
        assert waiting.status is JobStatus.CANCELLED and job_id in (waiting.error or "")
        # and channels hear it was cancelled, and nothing else of it
        assert heard.wait(WAIT)
        assert [e["event"] for e in events if e["job_id"] == job_id] == ["job.cancelled"]
        # and no retry timer is left in the manager's queue
        assert len(manager._queue) == 0
        # and its log keeps how the attempt ended, and why that did not count
        last = manager.get_logs(job_id)[-1].message
        assert last.startswith("attempt 1 failed") and last.endswith("cancelled instead"), last
    finally:
        let_go.set()
        pause.proceed.set()
