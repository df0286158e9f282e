"""A cancel that reaches a running job after its attempt ended, while the outcome is on its
way to the store: `cancel()` returned True, so the job ends CANCELLED (not retried, not
dead-lettered), on every backend.

The window is made wide and exact by a store that holds up the call recording the job's
outcome until the test has cancelled it: no sleeps, no timing assumptions.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import pytest

from pausing import WAIT, Pause, paused_store  # noqa: F401 (a fixture)
from pg_fixtures import schema, server  # noqa: F401 (fixtures the PostgreSQL store asks for)
from jobcore import CallbackNotificationChannel, Job, JobManager, JobStatus
from jobcore.repository.base import JobRepository


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
