"""The dispatcher sleeps while it has nothing it can do: no wake-up after wake-up (a busy
loop) while a timer or schedule is due that it cannot act on yet. Each test counts its
waits over half a second: a few at most, where the loop made tens of thousands."""

from __future__ import annotations

import datetime
import threading
from typing import Any, Callable, Iterator

import pytest

from jobcore import Job, JobManager, JobStatus
from jobcore.clock import FakeClock
from jobcore.repository.base import JobRepository
from waiting import wait_until

WAIT = 10.0
SPINNING = 50  # waits in WATCHED seconds that only a busy loop makes
WATCHED = 0.5


class _Blocked:
    """A started manager with one worker, busy with a job that blocks until `release()`."""

    def __init__(self, repository: JobRepository, make_manager: Callable[..., JobManager]) -> None:
        self.clock = FakeClock(1_000_000.0)
        self.manager = make_manager(repository, max_workers=1, clock=self.clock)
        self._started, self._go = threading.Event(), threading.Event()
        self.manager.register_function("block", lambda: (self._started.set(), self._go.wait(WAIT)) and None)
        self.manager.register_function("task", lambda n: n * 10)

    def start(self) -> None:
        self.manager.start()
        self.blocker = self.manager.enqueue(Job(function_name="block"))
        assert self._started.wait(WAIT), "the blocking job never started"

    def release(self) -> None:
        self._go.set()

    def spins(self) -> bool:
        """Whether the dispatcher waits SPINNING times within WATCHED seconds from now."""
        condition = self.manager._pool._state.dispatch_needed
        waits, spinning = [0], threading.Event()
        wait = condition.wait

        def counted_wait(timeout: Any = None) -> bool:
            waits[0] += 1
            if waits[0] >= SPINNING:
                spinning.set()
            return wait(timeout)

        condition.wait = counted_wait  # type: ignore[method-assign]
        try:
            return spinning.wait(WATCHED)
        finally:
            condition.wait = wait  # type: ignore[method-assign]


@pytest.fixture
def blocked(repository: JobRepository, make_manager: Callable[..., JobManager]) -> Iterator[_Blocked]:
    pool = _Blocked(repository, make_manager)
    yield pool
    pool.release()


def test_a_job_due_while_every_worker_is_busy_waits_without_a_busy_loop(blocked: _Blocked) -> None:
    # given a manager whose one worker is busy, and a job scheduled for later
    blocked.start()
    later = datetime.datetime.fromtimestamp(blocked.clock.time() + 60, datetime.timezone.utc)
    job_id = blocked.manager.enqueue(Job(function_name="task", args=(4,), scheduled_at=later))
    # when its time comes while the worker is still busy
    blocked.clock.advance(120)
    # then the dispatcher sleeps until the worker is free (it woke again and again)
    assert not blocked.spins()
    # and the job runs once the worker is free
    blocked.release()
    assert blocked.manager.wait(job_id, timeout=WAIT).result == 40


def test_a_schedule_due_during_a_stop_waits_without_a_busy_loop(blocked: _Blocked) -> None:
    # given a cron schedule, and a manager whose one worker is busy
    schedule = blocked.manager.enqueue(Job(function_name="task", args=(1,), cron="* * * * *"))
    blocked.start()
    # when the manager stops (waiting for that job) and the schedule comes due meanwhile
    stopping = threading.Thread(target=blocked.manager.stop)
    stopping.start()
    state = blocked.manager._pool._state
    wait_until(lambda: state.stopping, timeout=WAIT, what="the stop")
    blocked.clock.advance(120)
    # then the dispatcher sleeps until the job ends (a stopping pool fires no schedule)
    assert not blocked.spins()
    # and the stop ends once the job does, the schedule left for the next start
    blocked.release()
    stopping.join(WAIT)
    assert not stopping.is_alive()
    assert blocked.manager.poll(blocked.blocker).status is JobStatus.COMPLETED
    assert blocked.manager.poll(schedule).status is JobStatus.SCHEDULED


def test_jobs_claimed_in_reserve_while_every_worker_is_busy_wake_no_one(blocked: _Blocked) -> None:
    # given a manager whose jobs have proved tiny (it claims a reserve) and whose one
    # worker is busy with a job that blocks
    state = blocked.manager._pool._state
    with state.lock:
        state.pacing.assume_short_jobs()
    blocked.start()
    # when a job is claimed in reserve meanwhile (held in the buffer for that worker)
    job_id = blocked.manager.enqueue(Job(function_name="task", args=(3,)))
    wait_until(lambda: len(state.buffer) == 1, timeout=WAIT, what="the job claimed in reserve")
    # then the dispatcher sleeps: with no worker idle, there is no one to wake for it (it
    # looked every 2 ms for as long as the long job ran)
    assert not blocked.spins()
    # and the worker takes it once free
    blocked.release()
    assert blocked.manager.wait(job_id, timeout=WAIT).result == 30
