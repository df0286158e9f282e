"""A caller that polls in a loop without pausing lets the workers it waits for run.

On the memory store nothing in `poll` or `get_stats` blocks, so without a pause of its
own such a loop would keep the GIL until the interpreter takes it away. Here that
interval is made long (10 s) for the loop's duration: a `poll` loop then sees its job
done within a bounded number of reads only if each read gives the GIL up itself (it took
2-3 reads with that, and never finished without it). `get_stats` and `get_queue_size`
loops sometimes got there without it too (the workers ran whenever the loop waited for
a lock they held), so the tests after them check that those reads give way, and when."""

from __future__ import annotations

import sys
import threading
from typing import Any, Callable, Iterator

import pytest

from jobcore import Job, JobManager, JobStatus, MemoryRepository
from jobcore import inspection

MOST_READS = 200_000  # a loop keeping the GIL for 10 s reads far more than this


def noop(x: int) -> int:
    return x


@pytest.fixture
def started() -> Iterator[JobManager]:
    with JobManager(MemoryRepository(), max_workers=2) as manager:
        manager.register_function("noop", noop)
        yield manager


def _reads_until(done: Callable[[], bool]) -> int:
    """How many times `done()` was asked before it was true (at most MOST_READS), with the
    interpreter's switch interval at 10 s meanwhile."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(10.0)
    try:
        for reads in range(1, MOST_READS + 1):
            if done():
                return reads
        return MOST_READS + 1
    finally:
        sys.setswitchinterval(interval)


def test_a_poll_loop_lets_the_job_run(started: JobManager) -> None:
    job_id = started.enqueue(Job(function_name="noop", args=(1,)))
    reads = _reads_until(lambda: started.poll(job_id).status is JobStatus.COMPLETED)  # type: ignore[union-attr]
    assert reads <= MOST_READS


def test_a_get_stats_loop_lets_the_jobs_run(started: JobManager) -> None:
    for x in range(20):
        started.enqueue(Job(function_name="noop", args=(x,)))
    reads = _reads_until(lambda: started.get_stats()["completed"] == 20)
    assert reads <= MOST_READS


def test_a_queue_size_loop_lets_the_jobs_start(started: JobManager) -> None:
    gate = threading.Event()
    started.register_function("held", lambda: gate.wait(10))
    ids = [started.enqueue(Job(function_name="held")) for _ in range(2)]
    ids += [started.enqueue(Job(function_name="noop", args=(x,))) for x in range(10)]
    gate.set()
    reads = _reads_until(lambda: started.get_queue_size() == 0)
    assert reads <= MOST_READS
    for job_id in ids:
        assert started.wait(job_id, timeout=10).status is JobStatus.COMPLETED


class _Counted:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


@pytest.fixture
def give_way(monkeypatch: pytest.MonkeyPatch) -> _Counted:
    counted = _Counted()
    monkeypatch.setattr(inspection, "_give_way", counted)
    return counted


def test_reads_give_way_only_while_workers_run(give_way: _Counted) -> None:
    manager = JobManager(MemoryRepository(), max_workers=1)
    manager.register_function("noop", noop)
    job_id = manager.enqueue(Job(function_name="noop", args=(1,)))
    manager.poll(job_id)
    manager.get_stats()
    manager.get_queue_size()
    assert give_way.calls == 0  # not started: no worker to let run

    manager.start()
    try:
        assert manager.wait(job_id, timeout=10).status is JobStatus.COMPLETED
        manager.poll(job_id)
        assert give_way.calls == 0  # a finished job: the caller has what it waited for
        manager.get_stats()
        manager.get_queue_size()
        assert give_way.calls == 2
        assert manager.poll("no-such-job") is None
        assert give_way.calls == 2
    finally:
        manager.stop()


def test_a_poll_of_an_unfinished_job_gives_way(give_way: _Counted) -> None:
    gate = threading.Event()
    with JobManager(MemoryRepository(), max_workers=1) as manager:
        manager.register_function("held", lambda: gate.wait(10))
        running = manager.enqueue(Job(function_name="held"))
        queued = manager.enqueue(Job(function_name="held"))
        statuses: list[Any] = [manager.poll(running).status, manager.poll(queued).status]  # type: ignore[union-attr]
        assert statuses[1] is JobStatus.PENDING
        assert give_way.calls == 2
        gate.set()
        manager.wait(queued, timeout=10)
