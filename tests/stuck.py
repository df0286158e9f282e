"""`stuck_past_stop`: a started manager on a fake clock whose one worker runs a job that
never returns until the test lets it, stopped without waiting for it: the starting point
of the tests of what happens to such a job (its timeout, its lease, a new start)."""

from __future__ import annotations

import threading
from typing import Callable

from jobcore import FakeClock, Job, JobManager

WAIT = 10.0


def stuck_past_stop(make_manager: Callable[..., JobManager], db_path: str,
                    release: threading.Event) -> tuple[JobManager, str, FakeClock]:
    """The manager, the id of its job (timeout 5 s, no retries; running until `release`
    is set) and the clock, once the manager was stopped with `wait=False`."""
    clock = FakeClock()
    started = threading.Event()

    def stuck() -> str:
        started.set()
        release.wait()  # until the test ends: only its timeout ends the attempt
        return "too late"

    manager = make_manager(db_path, max_workers=1, clock=clock)
    manager.register_function("stuck", stuck)
    manager.start()
    job_id = manager.enqueue(Job(function_name="stuck", timeout=5.0, max_retries=0))
    assert started.wait(WAIT)
    manager.stop(wait=False)
    return manager, job_id, clock
