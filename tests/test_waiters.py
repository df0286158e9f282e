"""Many threads in `wait` at once (a threaded web server: each request enqueues a job and
waits for it): a job that settles wakes its own waiters only, so the rows read and the
wake-ups per job stay bounded however many threads wait for other jobs."""

from __future__ import annotations

import collections
import threading
from typing import Any, Callable, Optional

import pytest

from jobcore import Job, JobManager, JobResult, JobStatus, MemoryRepository, SQLiteRepository, waiting
from jobcore.repository.base import JobRecord
from jobcore.testing.contract import make_record
from interrupts import CtrlCOnce

WAITERS = 40
JOIN = 30.0  # seconds: bounds every join and wait here; none is expected to take long


@pytest.fixture
def no_polling(monkeypatch: Any) -> None:
    """Waiters read again on their own only after a minute: within a test, a waiter wakes
    only when told, so every read and wake-up counted is one a settlement caused."""
    monkeypatch.setattr(waiting, "FIRST_INTERVAL", 60.0)
    monkeypatch.setattr(waiting, "LAST_INTERVAL", 60.0)


class _Rows:
    """Jobs pending (or, as `held`, held here) until `settle` makes them cancelled.
    Counts the reads of each row, and the looks at each job (`held` asked); sets
    `all_read` / `all_looked` once every job was read / looked at at least once."""

    def __init__(self, ids: list[str]) -> None:
        self._lock = threading.Lock()  # guards reads, looks and _settled
        self._settled: set[str] = set()
        self._ids = ids
        self.reads: collections.Counter[str] = collections.Counter()
        self.looks: collections.Counter[str] = collections.Counter()
        self.all_read = threading.Event()
        self.all_looked = threading.Event()

    def held(self, job_id: str) -> bool:
        with self._lock:
            self.looks[job_id] += 1
            if len(self.looks) == len(self._ids):
                self.all_looked.set()
            return job_id not in self._settled

    def read(self, job_id: str) -> JobRecord:
        with self._lock:
            self.reads[job_id] += 1
            if len(self.reads) == len(self._ids):
                self.all_read.set()
            status = JobStatus.CANCELLED if job_id in self._settled else JobStatus.PENDING
        return make_record(id=job_id, status=status)

    def settle(self, job_id: str) -> None:
        with self._lock:
            self._settled.add(job_id)


def _in_threads(ids: list[str], wait: Callable[[str], JobResult]) -> tuple[list[threading.Thread],
                                                                          dict[str, JobResult]]:
    """Start one thread per id calling `wait(id)`; their results go into the dict."""
    results: dict[str, JobResult] = {}

    def run(job_id: str) -> None:
        results[job_id] = wait(job_id)

    threads = [threading.Thread(target=run, args=(job_id,), name=f"waiter-{job_id}") for job_id in ids]
    for thread in threads:
        thread.start()
    return threads, results


def _joined(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(JOIN)
    assert not any(thread.is_alive() for thread in threads)


def _settle_one_by_one(settlements: waiting.Settlements, rows: _Rows, ids: list[str],
                       threads: list[threading.Thread]) -> None:
    """Settle each job here (cancelled), and let its waiter return before the next."""
    for job_id, thread in zip(ids, threads):
        rows.settle(job_id)
        settlements.mark([(job_id, None)])
        thread.join(JOIN)
    _joined(threads)


def test_each_settlement_wakes_only_its_own_waiter(no_polling: None) -> None:
    # given threads waiting for distinct jobs another process might settle (not held
    # here: each reads its row, sees it pending, and sleeps)
    settlements = waiting.Settlements()
    ids = [f"job-{n}" for n in range(WAITERS)]
    rows = _Rows(ids)
    threads, results = _in_threads(ids, lambda job_id: settlements.wait(
        job_id, JOIN, held=lambda _: False, read=rows.read))
    assert rows.all_read.wait(JOIN)
    # when the jobs settle here one after the other, each once the one before was seen
    _settle_one_by_one(settlements, rows, ids, threads)
    # then each waiter read its row twice (pending, then cancelled), whatever the others
    # did: no settlement made a waiter of another job read again
    assert {results[job_id].status for job_id in ids} == {JobStatus.CANCELLED}
    assert rows.reads == {job_id: 2 for job_id in ids}
    # and no trace of the waiters is left
    assert settlements._waiters == {}


def test_a_waiter_of_a_job_held_here_is_woken_once(no_polling: None) -> None:
    # given threads waiting for distinct jobs held here (they settle here: no row is read
    # while they are held), and a count of how often each waiter looks
    settlements = waiting.Settlements()
    ids = [f"job-{n}" for n in range(WAITERS)]
    rows = _Rows(ids)
    threads, results = _in_threads(ids, lambda job_id: settlements.wait(
        job_id, JOIN, held=rows.held, read=rows.read))
    assert rows.all_looked.wait(JOIN)
    # when they settle here one after the other, each once the one before was seen
    _settle_one_by_one(settlements, rows, ids, threads)
    # then each waiter looked twice (held, then settled: its row read once), not once
    # more for every other job that settled meanwhile
    assert {results[job_id].status for job_id in ids} == {JobStatus.CANCELLED}
    assert rows.looks == {job_id: 2 for job_id in ids}
    assert rows.reads == {job_id: 1 for job_id in ids}


def test_threads_waiting_for_one_job_are_all_woken_and_one_leaving_keeps_the_others(no_polling: None) -> None:
    # given two threads waiting for one job, and a third whose wait for it times out
    settlements = waiting.Settlements()
    rows = _Rows(["shared"])
    threads, results = _in_threads(["shared", "shared"], lambda job_id: settlements.wait(
        job_id, JOIN, held=lambda _: False, read=rows.read))
    with pytest.raises(TimeoutError, match="still pending"):
        settlements.wait("shared", 0.01, held=lambda _: False, read=rows.read)
    assert rows.all_read.wait(JOIN)
    # when the job settles here
    rows.settle("shared")
    settlements.mark([("shared", None)])
    # then both remaining waiters return its outcome, and nothing of them is left
    _joined(threads)
    assert results["shared"].status is JobStatus.CANCELLED
    assert settlements._waiters == {}


def test_a_job_that_settles_between_a_look_and_the_sleep_is_not_missed(no_polling: None) -> None:
    # given a waiter whose first read finds the job pending, and the job settling here
    # right after that read, before the waiter sleeps
    settlements = waiting.Settlements()
    rows = _Rows(["racing"])

    def read_then_settle(job_id: str) -> JobRecord:
        record = rows.read(job_id)
        if record.status is JobStatus.PENDING:
            rows.settle(job_id)
            settlements.mark([(job_id, None)])
        return record

    # when it waits, then it sees the settlement at once (not after its minute-long sleep)
    result = settlements.wait("racing", JOIN, held=lambda _: False, read=read_then_settle)
    assert result.status is JobStatus.CANCELLED and rows.reads["racing"] == 2


@pytest.mark.parametrize("backend", ["sqlite", "memory"])
def test_many_threads_waiting_for_jobs_run_here_read_each_row_a_bounded_number_of_times(
        make_manager: Any, db_path: str, backend: str, no_polling: None) -> None:
    # given jobs stored but not yet running (the manager is not started), a thread
    # waiting for each, and a count of each job's row reads
    repository = SQLiteRepository(db_path) if backend == "sqlite" else MemoryRepository()
    manager: JobManager = make_manager(repository, max_workers=2)
    manager.register_function("double", lambda x: 2 * x)
    ids = [manager.enqueue(Job(function_name="double", args=(n,))) for n in range(WAITERS)]
    rows = _Rows(ids)
    read = repository.get_without_args

    def counted(job_id: str) -> Optional[JobRecord]:
        rows.read(job_id)
        return read(job_id)

    repository.get_without_args = counted  # type: ignore[method-assign]
    threads, results = _in_threads(ids, lambda job_id: manager.wait(job_id, JOIN))
    assert rows.all_read.wait(JOIN)  # each found its job pending, and sleeps
    # when the manager runs them all
    manager.start()
    _joined(threads)
    # then every waiter has its job's result, and read its row once: each was woken by its
    # own job's completion, answered from what this process remembers of it
    assert [results[job_id].result for job_id in ids] == [2 * n for n in range(WAITERS)]
    assert rows.reads == {job_id: 1 for job_id in ids}


def _wait_interrupted(make_manager: Callable[..., JobManager],
                     landed: Callable[[JobManager, str], bool]) -> tuple[JobManager, str, threading.Event]:
    """A started manager running a job that holds on until the returned event is set, and
    a `wait` for it into which Ctrl-C landed once `landed(manager, job_id)` held."""
    release = threading.Event()
    manager = make_manager(MemoryRepository(), max_workers=1)
    manager.register_function("hold", lambda: release.wait(10.0))
    manager.start()
    job_id = manager.enqueue(Job(function_name="hold"))
    with CtrlCOnce("wait", lambda: landed(manager, job_id)) as ctrl_c:
        with pytest.raises(KeyboardInterrupt):
            manager.wait(job_id, timeout=10.0)
    assert ctrl_c.fired
    return manager, job_id, release


def test_ctrl_c_just_after_a_wait_joined_the_waiters_of_its_job_leaves_them(
        make_manager: Callable[..., JobManager]) -> None:
    # given a started manager running a job that holds on until released, when Ctrl-C
    # lands in a wait for it just after it joined that job's waiters (as the call that
    # counted it returned)
    manager, job_id, release = _wait_interrupted(
        make_manager, lambda manager, job_id: job_id in manager._settlements._waiters)
    # then it left them (counted for ever, it kept the job's waiters, and `close` waited
    # for it)
    assert job_id not in manager._settlements._waiters
    release.set()
    assert manager.wait(job_id, timeout=10.0).status is JobStatus.COMPLETED


def test_ctrl_c_just_after_a_wait_had_its_job_watched_stops_the_watch(
        make_manager: Callable[..., JobManager]) -> None:
    # given a started manager running a job that holds on until released, when Ctrl-C
    # lands in a wait for it just after the poller began watching the job (as the call
    # that counted it returned)
    manager, job_id, release = _wait_interrupted(
        make_manager, lambda manager, job_id: job_id in manager._settlements._poller._watched)
    poller = manager._settlements._poller
    # then the watch ended with the wait (left, the poller read that job for ever)
    assert job_id not in poller._watched
    release.set()
    assert manager.wait(job_id, timeout=10.0).status is JobStatus.COMPLETED
    assert job_id not in poller._watched
