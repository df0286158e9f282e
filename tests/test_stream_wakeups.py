"""While enqueues stream in, jobs queued for later wake no sleeping dispatcher: it looks
by itself within RECORD_WITHIN, and the stream's next enqueue makes the exchange."""

from __future__ import annotations

from typing import Any, Callable

from jobcore import Job, JobManager
from jobcore.clock import real_monotonic
from jobcore.repository.base import JobRepository

WAIT = 10.0
JOBS = 1000


def test_jobs_enqueued_in_a_stream_all_run_without_a_dispatcher_wake_up_each(
        repository: JobRepository, make_manager: Callable[..., JobManager]) -> None:
    # given a started pool whose dispatcher's wake-ups by notification are counted
    manager = make_manager(repository, max_workers=2)
    ran: list[int] = []
    manager.register_function("tiny", ran.append)
    manager.start()
    state = manager._pool._state
    condition, notified = state.dispatch_needed, [0]
    wait = condition.wait

    def counted_wait(timeout: Any = None) -> bool:
        woken = wait(timeout)
        notified[0] += woken
        return woken

    condition.wait = counted_wait  # type: ignore[method-assign]
    # when enqueues stream in (held as a stream throughout), then the stream ends
    with state.lock:
        state.pacing.stream_for(60.0, real_monotonic())
    ids = [manager.enqueue(Job(function_name="tiny", args=(n,))) for n in range(JOBS)]
    with state.lock:
        state.pacing.stream_for(0.0, real_monotonic())
    # then every job runs once, those left queued at the end of the stream included
    results = [manager.wait(job_id, timeout=WAIT) for job_id in ids]
    assert sorted(ran) == list(range(JOBS))
    assert {r.status.value for r in results} == {"completed"}
    # and the dispatcher was woken by notification for a few of them only
    assert notified[0] < JOBS // 20, notified[0]
