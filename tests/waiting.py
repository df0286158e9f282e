"""`wait_until`: the one bounded poll the tests share, for effects no event signals
(another process's writes, the end of an exchange already under way);
`count_wake_ups`, which counts how often a condition's waiters were notified; `Sleeps`,
which tells when a thread sleeps on a condition; and
`enqueue_and_time_out`, which times a job out when the test says, on a fake clock."""

from __future__ import annotations

import time
import threading
from typing import Any, Callable


def wait_until(condition: Callable[[], object], timeout: float, what: str = "the condition",
               pause: float = 0.02) -> None:
    """Return once `condition()` is true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(pause)


def count_wake_ups(condition: threading.Condition) -> list[int]:
    """Count the wake-ups by notification of every later wait on `condition` (a waiter
    already asleep is not counted): the count is the returned list's one item."""
    notified = [0]
    wait = condition.wait

    def counted_wait(timeout: Any = None) -> bool:
        woken = wait(timeout)
        notified[0] += woken
        return woken

    condition.wait = counted_wait  # type: ignore[method-assign]
    return notified


class Sleeps:
    """Counts the waits on `condition` begun (`slept`) and ended (`woke`, by notification
    or timeout) from now on: `asleep()` is True while a waiter is inside one."""

    def __init__(self, condition: threading.Condition) -> None:
        self.slept = self.woke = 0
        wait = condition.wait

        def counted_wait(timeout: Any = None) -> bool:
            self.slept += 1
            try:
                return wait(timeout)
            finally:
                self.woke += 1

        condition.wait = counted_wait  # type: ignore[method-assign]

    def asleep(self) -> bool:
        return self.slept > self.woke


def enqueue_and_time_out(manager: Any, clock: Any, job: Any, ready: threading.Event, timeout: float) -> str:
    """Enqueue `job` on a started `manager` whose clock is the FakeClock `clock`, wait (up
    to `timeout` seconds) until the job set `ready`, then move the clock past the job's
    timeout: its attempt is given up then, and not before, however loaded the machine
    (a real timeout could lapse before the job's first statement ran). Returns its id."""
    job_id: str = manager.enqueue(job)
    assert ready.wait(timeout), "the job never got ready"
    clock.advance(job.timeout + 1.0)
    return job_id
