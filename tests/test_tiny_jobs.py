"""While jobs are tiny (`Pacing.tiny`), buffered jobs are left to the busy worker, and
the dispatcher wakes an idle one when they stall behind a long job after all. A stream
of enqueues ends when its producer waits for a job (`Pacing.producer_waits`)."""

from __future__ import annotations

import threading
from typing import Callable

from jobcore import Job, JobManager
from jobcore.clock import real_monotonic
from jobcore.pacing import Pacing
from jobcore.repository.base import JobRepository
from waiting import wait_until

WAIT = 10.0


def test_a_job_buffered_behind_a_long_one_starts_on_an_idle_worker_while_jobs_are_tiny(
        repository: JobRepository, make_manager: Callable[..., JobManager]) -> None:
    # given a pool whose jobs proved tiny, and a long job queued ahead of a short one
    manager = make_manager(repository, max_workers=2)
    started, release, second = threading.Event(), threading.Event(), threading.Event()

    def long_job() -> None:
        started.set()
        assert release.wait(WAIT)

    manager.register_function("long", long_job)
    manager.register_function("short", second.set)
    manager.enqueue_many([Job(function_name="long", priority=9), Job(function_name="short")])
    state = manager._pool._state
    state.pacing.assume_short_jobs()
    # when the workers start: one claim takes both, and one worker is woken for them
    manager.start()
    assert started.wait(WAIT)
    # then the short job does not wait for the long one: the other worker runs it
    assert second.wait(WAIT), "the buffered job waited behind the long one"
    assert not release.is_set()
    assert state.taken == 2
    release.set()


def test_tiny_jobs_queued_behind_a_long_one_all_run_while_it_runs(
        repository: JobRepository, make_manager: Callable[..., JobManager]) -> None:
    # given a pool whose jobs proved tiny, and a long job queued ahead of many more tiny
    # ones than the pool holds at once (twice the 4 workers)
    manager = make_manager(repository, max_workers=4)
    started, release = threading.Event(), threading.Event()
    ran: list[int] = []

    def long_job() -> None:
        started.set()
        assert release.wait(WAIT)

    manager.register_function("long", long_job)
    manager.register_function("tiny", ran.append)
    manager.enqueue_many([Job(function_name="long", priority=9)]
                         + [Job(function_name="tiny", args=(n,)) for n in range(40)])
    manager._pool._state.pacing.assume_short_jobs()
    # when the workers start and the long job holds its worker
    manager.start()
    assert started.wait(WAIT)
    # then every tiny job runs meanwhile: an idle worker is woken for the buffered ones,
    # and claims the rest as the buffer runs out (the dispatcher does not top it up
    # while a worker runs tiny jobs)
    wait_until(lambda: len(ran) == 40, WAIT, "the tiny jobs waited behind the long one")
    assert sorted(ran) == list(range(40))
    release.set()


def test_a_drain_of_tiny_jobs_runs_every_job_once(
        repository: JobRepository, make_manager: Callable[..., JobManager]) -> None:
    # given 600 tiny jobs queued, and a pool that treats them as tiny from the start
    manager = make_manager(repository, max_workers=4)
    ran: list[int] = []
    manager.register_function("tiny", ran.append)
    ids = manager.enqueue_many([Job(function_name="tiny", args=(n,)) for n in range(600)])
    manager._pool._state.pacing.assume_short_jobs()
    # when they are drained
    manager.start()
    results = [manager.wait(job_id, timeout=WAIT) for job_id in ids]
    # then each ran once and completed
    assert sorted(ran) == list(range(600))
    assert {r.status.value for r in results} == {"completed"}


def _streaming(repository: JobRepository, make_manager: Callable[..., JobManager], workers: int,
               name: str, function: Callable[..., object]) -> tuple[JobManager, Pacing]:
    """A started manager whose jobs proved tiny, running `function` as `name`, and
    enqueues from this thread that look like a stream that never ends."""
    manager = make_manager(repository, max_workers=workers)
    manager.register_function(name, function)
    pacing = manager._pool._state.pacing
    pacing.assume_short_jobs()
    manager.start()
    pacing.stream_for(3600.0, real_monotonic())
    return manager, pacing


def test_tiny_jobs_a_producer_that_waits_for_its_job_ends_its_stream(
        repository: JobRepository, make_manager: Callable[..., JobManager]) -> None:
    # given a stream of enqueues from this thread (a loop of enqueue then wait, a turn
    # every half millisecond, looked like one: its rules left each outcome for a next
    # enqueue, and each turn took 2 ms), and a job that ends only once the stream has
    gate = threading.Event()
    manager, pacing = _streaming(repository, make_manager, 4, "gated", lambda n: (gate.wait(WAIT), n)[1])
    job_id = manager.enqueue(Job(function_name="gated", args=(7,)))

    def open_once_the_stream_ended() -> None:
        try:
            wait_until(lambda: not pacing.streaming(real_monotonic()), WAIT, "the stream to end", pause=0.001)
        finally:
            gate.set()

    opener = threading.Thread(target=open_once_the_stream_ended)
    opener.start()
    # when this thread waits for the job
    result = manager.wait(job_id, timeout=WAIT)
    opener.join(WAIT)
    # then the stream ended, and the job completed
    assert result.result == 7
    assert not pacing.streaming(real_monotonic())


def test_tiny_jobs_another_thread_waiting_ends_no_stream(
        repository: JobRepository, make_manager: Callable[..., JobManager]) -> None:
    # given a stream of enqueues from this thread
    manager, pacing = _streaming(repository, make_manager, 2, "tiny", lambda n: n)
    job_id = manager.enqueue(Job(function_name="tiny", args=(3,)))
    # when another thread waits for its job
    results: list[object] = []
    other = threading.Thread(target=lambda: results.append(manager.wait(job_id, timeout=WAIT).result))
    other.start()
    other.join(WAIT)
    # then the job completes (the dispatcher sees to it), and the stream goes on
    assert results == [3]
    assert pacing.streaming(real_monotonic())


def test_tiny_jobs_a_producer_that_polls_for_its_job_ends_its_stream(
        repository: JobRepository, make_manager: Callable[..., JobManager]) -> None:
    # given a stream of enqueues from this thread, and a job that ends only once released
    gate = threading.Event()
    manager, pacing = _streaming(repository, make_manager, 2, "gated", lambda n: (gate.wait(WAIT), n)[1])
    job_id = manager.enqueue(Job(function_name="gated", args=(5,)))
    try:
        # when this thread polls the unfinished job (as a loop of `poll` until done does)
        polled = manager.poll(job_id)
        # then it streams no more (the job has not ended: the stream's end is the poll's)
        assert polled is not None and not polled.status.is_terminal
        assert not pacing.streaming(real_monotonic())
    finally:
        gate.set()
    assert manager.wait(job_id, timeout=WAIT).result == 5


def test_tiny_jobs_a_producer_that_reads_the_stats_or_the_queue_size_ends_its_stream(
        repository: JobRepository, make_manager: Callable[..., JobManager]) -> None:
    # given a started pool and a stream of enqueues from this thread
    manager, pacing = _streaming(repository, make_manager, 2, "tiny", lambda n: n)
    for read in (manager.get_stats, manager.get_queue_size):
        pacing.stream_for(3600.0, real_monotonic())
        manager.enqueue(Job(function_name="tiny", args=(1,)))
        # when this thread reads what a loop waiting for the jobs reads
        read()
        # then it streams no more
        assert not pacing.streaming(real_monotonic()), read.__name__
