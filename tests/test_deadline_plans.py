"""Timeouts and the housekeeper's sleep: an attempt with a timeout wakes the housekeeper
only if its deadline comes before the housekeeper's next planned look (it woke it at
every start of a timed attempt: a quarter of the drain's rate in a stream of such
jobs), and one that does is timed out then, not at that later look."""

from __future__ import annotations

import threading
from typing import Any

from jobcore import FakeClock, Job, JobStatus, MemoryRepository

WAIT = 10.0
# Intervals that keep the housekeeper asleep far longer than any wait here: only a wake-up
# for a deadline makes it look for overdue attempts during a test.
_QUIET = dict(poll_interval=60.0, discovery_interval=60.0, lease_timeout=600.0)


def test_a_stream_of_timed_jobs_does_not_wake_the_housekeeper_at_each(make_manager: Any) -> None:
    clock = FakeClock()  # stands still: the housekeeper's next look stays ahead of every deadline
    manager = make_manager(MemoryRepository(), max_workers=2, clock=clock).start()
    manager.register_function("noop", lambda x: x)
    pool = manager._pool
    woken, wake = [], pool.on_deadline

    def counting_wake() -> None:
        woken.append(1)
        wake()

    pool.on_deadline = counting_wake
    ids = [manager.enqueue(Job(function_name="noop", args=(i,), timeout=3600)) for i in range(50)]
    assert [manager.wait(job_id, timeout=WAIT).status for job_id in ids] == [JobStatus.COMPLETED] * 50
    assert len(woken) <= 1  # the first may find the housekeeper's plan not made yet


def test_a_timed_job_due_before_the_housekeepers_next_look_is_timed_out_at_its_deadline(
        make_manager: Any) -> None:
    release = threading.Event()

    def hang() -> None:
        release.wait(WAIT * 3)

    manager = make_manager(MemoryRepository(), max_workers=1, **_QUIET).start()
    try:
        job_id = manager.enqueue(Job(function=hang, timeout=0.2, max_retries=0))
        result = manager.wait(job_id, timeout=WAIT)  # not a minute later, at the next look
        assert (result.status, result.error_type) == (JobStatus.FAILED, "JobTimeout")
    finally:
        release.set()


def test_a_timed_job_due_before_one_already_running_wakes_the_housekeeper(make_manager: Any) -> None:
    # Given a job timed out only in an hour, running: the housekeeper's plan is that deadline
    release = threading.Event()
    started = threading.Event()

    def hang() -> None:
        started.set()
        release.wait(WAIT * 3)

    manager = make_manager(MemoryRepository(), max_workers=2, **_QUIET).start()
    try:
        long_one = manager.enqueue(Job(function=hang, timeout=3600, max_retries=0))
        assert started.wait(WAIT)

        # When a job due much sooner starts beside it
        short_one = manager.enqueue(Job(function=hang, timeout=0.2, max_retries=0))

        # Then it is timed out at its own deadline, and the first runs on
        result = manager.wait(short_one, timeout=WAIT)
        assert (result.status, result.error_type) == (JobStatus.FAILED, "JobTimeout")
        assert manager.poll(long_one).status is JobStatus.RUNNING
    finally:
        release.set()
