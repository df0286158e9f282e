"""A cancel of a job claimed but not started yet (held in the pool's reserve), then a
stop: `cancel()` returned True, so the job handed back at stop ends CANCELLED, never
PENDING to run later or elsewhere, on every backend.

The job stays in reserve because the only worker is busy with a job that blocks until
the stop has begun (after that a worker starts nothing); a store that holds up the
hand-back lets the cancel come in the narrowest window too, after the dispatcher took
the job out of the reserve and before the store hands it back. No sleeps, no timing
assumptions.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import pytest

from pausing import WAIT, Pause, paused_store  # noqa: F401 (a fixture)
from pg_fixtures import schema, server  # noqa: F401 (fixtures the PostgreSQL store asks for)
from waiting import wait_until
from jobcore import CallbackNotificationChannel, Job, JobManager, JobStatus
from jobcore.repository.base import CANCELLED_BY_REQUEST, CANCELLED_ERROR_TYPE, JobRepository


@pytest.mark.parametrize("cancelled", ["before the stop", "while it is handed back"])
def test_a_cancelled_job_held_unstarted_at_stop_ends_cancelled_not_pending(
        paused_store: tuple[JobRepository, Pause], make_manager: Callable[..., JobManager], cancelled: str) -> None:
    store, pause = paused_store
    release = threading.Event()
    ran: list[str] = []
    # given one worker busy with a blocking job, a job claimed in reserve behind it, a job
    # depending on that one, and a channel hearing of them
    manager = make_manager(store, max_workers=1)
    manager.register_function("block", lambda: release.wait(WAIT))
    manager.register_function("tiny", lambda: ran.append("tiny"))
    blocker, tiny = Job(function_name="block", priority=9), Job(function_name="tiny", priority=1)
    dependent = Job(function_name="tiny", depends_on=[tiny.id])
    manager.enqueue_many([blocker, tiny, dependent])
    pause.job_id = tiny.id
    if cancelled == "before the stop":
        pause.proceed.set()  # its hand-back is not held up
    events: list[dict[str, Any]] = []
    heard = threading.Event()

    def hear(event: dict[str, Any]) -> None:
        events.append(event)
        if event["job_id"] == tiny.id:
            heard.set()

    manager.add_notification_channel(CallbackNotificationChannel(hear))
    state = manager._pool._state
    state.pacing.assume_short_jobs()  # one job claimed in reserve
    manager.start()
    wait_until(lambda: blocker.id in state.running and [r.id for r in state.buffer] == [tiny.id], WAIT,
               "the blocking job to run and the tiny one to wait in reserve")
    waiter: list[Any] = []
    waiting = threading.Thread(target=lambda: waiter.append(manager.wait(tiny.id, timeout=WAIT)), name="waiter")
    waiting.start()
    # when it is cancelled (as a running job: it is claimed), and the manager stops
    if cancelled == "before the stop":
        assert manager.cancel(tiny.id) is True
    stopper = threading.Thread(target=manager.stop, name="stopper")
    stopper.start()
    wait_until(lambda: state.stopping, WAIT, "the stop to begin")
    release.set()  # the blocking job ends; with the stop begun, its worker starts nothing
    if cancelled == "while it is handed back":
        assert pause.reached.wait(WAIT)  # out of the reserve, its hand-back not yet stored
        assert manager.cancel(tiny.id) is True
        pause.proceed.set()
    stopper.join(WAIT)
    waiting.join(WAIT)
    assert not stopper.is_alive() and not waiting.is_alive()
    # then it ended CANCELLED, as a cancel of a pending job ends one, its attempt not
    # counted, and it never ran
    expected = (JobStatus.CANCELLED, CANCELLED_BY_REQUEST, CANCELLED_ERROR_TYPE, 0)
    result = manager.poll(tiny.id)
    assert result is not None and (result.status, result.error, result.error_type, result.attempts) == expected
    assert ran == []
    assert store.claim(tiny.id, "another", 0.0, 1e12) is None  # nothing can run it later
    # and whoever waited for it was told
    assert [(r.status, r.error) for r in waiter] == [(JobStatus.CANCELLED, CANCELLED_BY_REQUEST)]
    # and its dependent is cancelled naming it
    after = manager.poll(dependent.id)
    assert after is not None and after.status is JobStatus.CANCELLED and tiny.id in (after.error or "")
    # and channels hear it was cancelled, and nothing else of it
    assert heard.wait(WAIT)
    assert [(e["event"], e["error"], e["attempts"]) for e in events if e["job_id"] == tiny.id] == [
        ("job.cancelled", CANCELLED_BY_REQUEST, 0)]
    # and the blocking job completed; nothing is held for the cancel any more
    assert manager.poll(blocker.id).status is JobStatus.COMPLETED  # type: ignore[union-attr]
    assert not state.cancel_ids and not state.settling
