"""Many threads in `wait` for jobs this process does not hold (still queued, or run by
another process): one thread reads the statuses of all their jobs in one call at a time,
so the reads grow with time, not with the number of threads waiting; a job that another
manager or process settles is still noticed by every waiter, and timeouts and unknown
ids behave as before.

(Found by a hunt for pathologies: 200 request threads each waiting for its 1 ms job took
8.7 s where one thread took 0.86 s, each thread reading its own job's row every 10 to
100 ms while the job waited in the queue.)"""

from __future__ import annotations

import collections
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
from typing import Any, Callable, Collection, Iterator, Optional

import pytest

from jobcore import Job, JobManager, JobResult, JobStatus, MemoryRepository, RepositoryError, SQLiteRepository, waiting
from jobcore import pool_state
from jobcore.repository.base import JobRecord
from jobcore.testing.contract import make_record
from test_waiters import _joined
from waiting import wait_until

WAITERS = 40
JOIN = 30.0  # seconds: bounds every join and wait here; none is expected to take long
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _CountedReads(SQLiteRepository):
    """A real SQLite repository that logs the reads `wait` makes: of one row
    (`get_without_args`), and of many statuses at once (`get_statuses`).

    `expect(ids)` names the jobs waited for; `first_reads` is set once each was read
    once. After `arm()`, `settled_question` is set as soon as a row is read again, or once
    the batched reads since covered every job at least three times over (or stay
    unanswered: see `fail_batches`, `fail_rows`)."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self._log_lock = threading.Lock()  # guards every field below but the events
        self.rows: collections.Counter[str] = collections.Counter()
        self.batches: list[list[str]] = []
        self._expected: set[str] = set()
        self._armed_at: Optional[tuple[int, int]] = None  # (rows read, batches) when armed
        self.first_reads = threading.Event()
        self.settled_question = threading.Event()
        self.fail_batches = False  # get_statuses raises, as a store briefly unavailable
        self.fail_rows = False  # and so does get_without_args

    def expect(self, ids: Collection[str]) -> None:
        with self._log_lock:
            self._expected = set(ids)

    def arm(self) -> None:
        with self._log_lock:
            self._armed_at = (sum(self.rows.values()), len(self.batches))

    def rows_since_armed(self) -> int:
        with self._log_lock:
            assert self._armed_at is not None
            return sum(self.rows.values()) - self._armed_at[0]

    def batches_since_armed(self) -> list[list[str]]:
        with self._log_lock:
            assert self._armed_at is not None
            return self.batches[self._armed_at[1]:]

    def get_without_args(self, job_id: str) -> Optional[JobRecord]:
        with self._log_lock:
            self.rows[job_id] += 1
            if self._expected and self._expected <= set(self.rows):
                self.first_reads.set()
            if self._armed_at is not None:
                self.settled_question.set()
            failing = self.fail_rows
        if failing:
            raise RepositoryError("the store is unavailable (injected)")
        return super().get_without_args(job_id)

    def get_statuses(self, job_ids: Collection[str]) -> dict[str, JobStatus]:
        with self._log_lock:
            self.batches.append(list(job_ids))
            if self._armed_at is not None:
                seen = collections.Counter(job_id for batch in self.batches[self._armed_at[1]:] for job_id in batch)
                if all(seen[job_id] >= 3 for job_id in self._expected):
                    self.settled_question.set()
            failing = self.fail_batches
        if failing:
            raise RepositoryError("the store is unavailable (injected)")
        return super().get_statuses(job_ids)


@pytest.fixture
def counted(db_path: str) -> Iterator[_CountedReads]:
    repository = _CountedReads(db_path)
    yield repository
    repository.close()


def _waiting(manager: JobManager, ids: list[str], timeout: float = JOIN) -> tuple[
        list[threading.Thread], dict[str, Any]]:
    """One thread per id in `manager.wait(id, timeout)`; what each returned or raised
    goes into the dict."""
    outcomes: dict[str, Any] = {}

    def run(job_id: str) -> None:
        try:
            outcomes[job_id] = manager.wait(job_id, timeout)
        except Exception as exc:
            outcomes[job_id] = exc

    threads = [threading.Thread(target=run, args=(job_id,), name=f"waiter-{n}") for n, job_id in enumerate(ids)]
    for thread in threads:
        thread.start()
    return threads, outcomes


def _queued(make_manager: Callable[..., JobManager], repository: Any, count: int = WAITERS) -> tuple[
        JobManager, list[str]]:
    """A manager that is not started (it holds none of its jobs), and `count` jobs it
    stored, all pending."""
    manager = make_manager(repository, max_workers=2)
    manager.register_function("double", lambda x: 2 * x)
    return manager, manager.enqueue_many([Job(function_name="double", args=(n,)) for n in range(count)])


def test_waiters_of_queued_jobs_read_their_statuses_together_not_each_its_own_row(
        make_manager: Any, db_path: str, counted: _CountedReads) -> None:
    # given jobs stored and not claimed by anyone, and a thread waiting for each: each
    # reads its row once as it begins, finds it pending, and sleeps
    manager, ids = _queued(make_manager, counted)
    counted.expect(ids)
    threads, outcomes = _waiting(manager, ids)
    assert counted.first_reads.wait(JOIN)
    # when time passes: until every job's status was read three times over, or a row again
    counted.arm()
    assert counted.settled_question.wait(JOIN)
    # then no waiter read its own row again: their jobs were read together, a few calls
    # each covering many of them (the old code read each row again at every interval,
    # one read per waiter every 10 to 100 ms)
    assert counted.rows_since_armed() == 0
    batches = counted.batches_since_armed()
    assert len(batches) < 3 * len(ids) and max(len(batch) for batch in batches) > 1
    # and when another manager on the same file cancels the jobs (this one holds none of
    # them: no settlement here wakes its waiters), every waiter notices
    other = make_manager(db_path, producer=True)
    for job_id in ids:
        assert other.cancel(job_id)
    _joined(threads)
    assert {outcomes[job_id].status for job_id in ids} == {JobStatus.CANCELLED}
    assert outcomes[ids[0]] == other.poll(ids[0])
    # having read its own row twice: as it began, and once told the job had ended
    assert counted.rows == {job_id: 2 for job_id in ids}


WORKER_MODULE = textwrap.dedent("""
    import jobcore

    def triple(x):
        return 3 * x

    jobcore.register_job_function("triple", triple)
""")


def test_many_waiters_notice_their_jobs_run_by_another_process(make_manager: Any, tmp_path: Any) -> None:
    # given a producer that stores jobs it cannot run, and a thread waiting for each
    path = str(tmp_path / "shared.db")
    producer = make_manager(path, producer=True)
    ids = producer.enqueue_many([Job(function_name="triple", args=(n,)) for n in range(WAITERS)])
    threads, outcomes = _waiting(producer, ids)
    # when a worker process on the same file runs them
    (tmp_path / "waitjobs.py").write_text(WORKER_MODULE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), ROOT, os.environ.get("PYTHONPATH", "")])}
    worker = subprocess.Popen([sys.executable, "-m", "jobcore", "--db", path, "worker", "--import", "waitjobs",
                               "--workers", "2"], env=env, cwd=str(tmp_path),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _joined(threads)
    finally:
        worker.terminate()
        _, stderr = worker.communicate(timeout=JOIN)
    # then every waiter returned its job's result, as poll shows it
    assert [outcomes[job_id].result for job_id in ids] == [3 * n for n in range(WAITERS)], stderr
    assert all(outcomes[job_id] == producer.poll(job_id) for job_id in ids)


def test_many_waiters_of_queued_jobs_time_out_and_leave_nothing_watched(
        make_manager: Any, counted: _CountedReads) -> None:
    # given jobs nobody runs, and many threads waiting for them with a short timeout
    manager, ids = _queued(make_manager, counted)
    threads, outcomes = _waiting(manager, ids + ids, timeout=0.05)
    _joined(threads)
    # then each raised TimeoutError, saying the job is still pending
    assert all(isinstance(outcomes[job_id], TimeoutError) for job_id in ids)
    assert all("still pending" in str(outcomes[job_id]) for job_id in ids)
    # and nothing is left watched, or waiting
    assert manager._settlements._poller._watched == {} and manager._settlements._waiters == {}


def test_an_unknown_id_and_a_job_deleted_while_waited_for_raise_lookup_error(
        make_manager: Any, db_path: str, counted: _CountedReads) -> None:
    # given an id no job has, and jobs nobody runs with a thread waiting for each
    manager, ids = _queued(make_manager, counted, count=10)
    with pytest.raises(LookupError):
        manager.wait("f" * 32, timeout=1)
    counted.expect(ids)
    threads, outcomes = _waiting(manager, ids)
    assert counted.first_reads.wait(JOIN)
    # when another program deletes their rows
    other = sqlite3.connect(db_path)
    with other:
        other.execute("DELETE FROM jobs")
    other.close()
    # then every waiter raises JobNotFound, a LookupError naming its id
    _joined(threads)
    assert all(isinstance(outcomes[job_id], LookupError) and job_id in str(outcomes[job_id]) for job_id in ids)


def test_waiters_read_their_own_rows_while_the_batched_read_fails(
        make_manager: Any, db_path: str, counted: _CountedReads) -> None:
    # given waiters of jobs nobody runs here, and a store whose batched read fails
    manager, ids = _queued(make_manager, counted, count=10)
    counted.fail_batches = True
    counted.expect(ids)
    threads, outcomes = _waiting(manager, ids[:5])
    # when another manager cancels their jobs, then they still notice: told to read their
    # own rows whenever the batch fails
    other = make_manager(db_path, producer=True)
    for job_id in ids[:5]:
        assert other.cancel(job_id)
    _joined(threads)
    assert {outcomes[job_id].status for job_id in ids[:5]} == {JobStatus.CANCELLED}
    # and when their own reads fail too, wait raises the store's error, as it did when
    # each waiter read its own row
    threads, outcomes = _waiting(manager, ids[5:])
    counted.expect(ids)
    assert counted.first_reads.wait(JOIN)
    counted.fail_rows = True
    _joined(threads)
    assert all(isinstance(outcomes[job_id], RepositoryError) for job_id in ids[5:])


# -- the poller alone ---------------------------------------------------------------------
class _Jobs:
    """Jobs pending (or, as `held`, held here) until `end` makes them cancelled; counts who
    read what, and sets `asked` once the poller read the status of every job at least
    twice."""

    def __init__(self, ids: list[str], held: bool) -> None:
        self._lock = threading.Lock()  # guards every field below but the event
        self._ids, self._held, self._ended = ids, held, False
        self.reads: collections.Counter[str] = collections.Counter()
        self.polled: collections.Counter[str] = collections.Counter()
        self.batches = 0
        self.asked = threading.Event()
        self.held_once_ended = False  # True: a job held here ends elsewhere, and stays held
        self.holding_once_ended = pool_state.HELD  # how it stays held then (see `WorkerPool.settles_here`)

    def held(self, job_id: str) -> int:
        with self._lock:
            if not self._held:
                return pool_state.NOT_HELD
            if not self._ended:
                return pool_state.HELD
            return self.holding_once_ended if self.held_once_ended else pool_state.NOT_HELD

    def read(self, job_id: str) -> JobRecord:
        with self._lock:
            self.reads[job_id] += 1
            ended = self._ended
        return make_record(id=job_id, status=JobStatus.CANCELLED if ended else JobStatus.PENDING)

    def statuses(self, job_ids: Collection[str]) -> dict[str, JobStatus]:
        with self._lock:
            self.batches += 1
            if threading.current_thread().name == "jobcore-waits":
                self.polled.update(job_ids)
                if all(self.polled[i] >= 2 for i in self._ids):
                    self.asked.set()
            status = JobStatus.CANCELLED if self._ended else JobStatus.RUNNING if self._held else JobStatus.PENDING
            return {job_id: status for job_id in job_ids}

    def end(self) -> None:
        with self._lock:
            self._ended = True


def _waiting_on(settlements: waiting.Settlements, jobs: _Jobs, ids: list[str]) -> tuple[
        list[threading.Thread], dict[str, JobResult]]:
    results: dict[str, JobResult] = {}

    def run(job_id: str) -> None:
        results[job_id] = settlements.wait(job_id, JOIN, held=jobs.held, read=jobs.read, statuses=jobs.statuses)

    threads = [threading.Thread(target=run, args=(job_id,)) for job_id in ids]
    for thread in threads:
        thread.start()
    return threads, results


def test_jobs_held_here_are_polled_but_their_rows_never_read() -> None:
    # given threads waiting for jobs held here (they settle here, and wake their waiters)
    settlements = waiting.Settlements()
    ids = [f"held-{n}" for n in range(WAITERS)]
    jobs = _Jobs(ids, held=True)
    threads, results = _waiting_on(settlements, jobs, ids)
    # when the poller read each one's status twice (a job held here may end elsewhere:
    # this process lost its lease, and another took the job back and settled it)
    assert jobs.asked.wait(JOIN)
    # then no waiter read its row: each job still runs
    assert not jobs.reads
    # and when they settle here, each waiter reads its row once
    jobs.end()
    settlements.mark([(job_id, None) for job_id in ids])
    _joined(threads)
    assert {result.status for result in results.values()} == {JobStatus.CANCELLED}
    assert jobs.reads == {job_id: 1 for job_id in ids}


def test_a_job_held_here_that_ended_elsewhere_is_read_and_its_waiters_return() -> None:
    # given threads waiting for jobs held here, whose rows end elsewhere (this process
    # lost their leases while it ran them: it is still running them, and still holds them)
    settlements = waiting.Settlements()
    ids = [f"held-{n}" for n in range(WAITERS)]
    jobs = _Jobs(ids, held=True)
    jobs.held_once_ended = True
    threads, results = _waiting_on(settlements, jobs, ids)
    assert jobs.asked.wait(JOIN)
    jobs.end()
    # then the poller tells each waiter, which reads its row, though the job is held here
    _joined(threads)
    assert {result.status for result in results.values()} == {JobStatus.CANCELLED}
    assert jobs.reads == {job_id: 1 for job_id in ids}  # once told (held: not as it began)


def test_a_job_whose_outcome_here_is_held_up_after_it_ended_elsewhere_is_read_after_a_grace(
        monkeypatch: Any) -> None:
    # given threads waiting for jobs held here whose rows end elsewhere while their
    # attempts' outcomes here are being recorded, for ever (a store locked by another
    # program holds the recording up; the grace shortened for the test)
    monkeypatch.setattr(waiting, "RECORDING_GRACE", 0.2)
    settlements = waiting.Settlements()
    ids = [f"recording-{n}" for n in range(WAITERS)]
    jobs = _Jobs(ids, held=True)
    jobs.held_once_ended, jobs.holding_once_ended = True, pool_state.RECORDING
    threads, results = _waiting_on(settlements, jobs, ids)
    assert jobs.asked.wait(JOIN)
    jobs.end()
    # then each waiter, told by the poller, waits out the grace for the recording, then
    # reads its row and returns what another process made of the job (it waited for the
    # recording here as long as that was held up)
    _joined(threads)
    assert {result.status for result in results.values()} == {JobStatus.CANCELLED}
    assert jobs.reads == {job_id: 1 for job_id in ids}


def test_with_no_thread_to_poll_each_waiter_reads_its_own_job(monkeypatch: Any) -> None:
    # given a process that can start no thread (out of threads, or exiting) for the poller
    start = threading.Thread.start

    def refused(self: threading.Thread) -> None:
        if self.name == "jobcore-waits":
            raise RuntimeError("can't start new thread")
        start(self)

    settlements = waiting.Settlements()
    jobs = _Jobs(["alone"], held=False)
    read = jobs.read
    read_twice = threading.Event()

    def counted(job_id: str) -> JobRecord:
        record = read(job_id)
        if jobs.reads[job_id] >= 2:
            read_twice.set()
        return record

    jobs.read = counted  # type: ignore[method-assign]
    monkeypatch.setattr(threading.Thread, "start", refused)
    # when a caller waits for a job another process settles
    results: dict[str, JobResult] = {}
    waiter = threading.Thread(target=lambda: results.update(alone=settlements.wait(
        "alone", JOIN, held=jobs.held, read=jobs.read, statuses=jobs.statuses)))
    waiter.start()
    # then it reads its row again by itself, and sees the job end
    assert read_twice.wait(JOIN)
    jobs.end()
    waiter.join(JOIN)
    assert not waiter.is_alive() and results["alone"].status is JobStatus.CANCELLED
    assert jobs.batches == 0 and settlements._poller.thread is None


def test_the_poller_thread_ends_once_nobody_waits_and_another_starts_for_the_next(monkeypatch: Any) -> None:
    # given a poller that waits for no other caller once none waits
    monkeypatch.setattr(waiting, "POLLER_LINGER", 0.0)
    settlements = waiting.Settlements()
    jobs = _Jobs(["first"], held=False)
    threads, _ = _waiting_on(settlements, jobs, ["first"])
    assert jobs.asked.wait(JOIN)
    first = settlements._poller.thread
    assert first is not None and first.name == "jobcore-waits" and first.daemon
    # when its only caller's job ends (the poller reads it cancelled and tells it)
    jobs.end()
    _joined(threads)
    # then the thread ends, and the next caller starts another
    first.join(JOIN)
    assert not first.is_alive() and settlements._poller.thread is None
    jobs = _Jobs(["second"], held=False)
    threads, results = _waiting_on(settlements, jobs, ["second"])
    assert jobs.asked.wait(JOIN)
    second = settlements._poller.thread
    assert second is not None and second is not first
    jobs.end()
    _joined(threads)
    assert results["second"].status is JobStatus.CANCELLED


def test_close_ends_the_poller_thread_and_wakes_the_callers_still_waiting(
        make_manager: Any, counted: _CountedReads) -> None:
    # given jobs nobody runs, a thread waiting for each (with no timeout), and the poller
    # reading their statuses
    manager, ids = _queued(make_manager, counted, count=5)
    counted.expect(ids)
    threads, outcomes = _waiting(manager, ids, timeout=None)  # type: ignore[arg-type]
    assert counted.first_reads.wait(JOIN)
    wait_until(lambda: manager._settlements._poller.thread is not None, JOIN, "the poller's thread")
    poller = manager._settlements._poller.thread
    assert poller is not None and poller.is_alive()
    # when the manager closes
    manager.close()
    # then the poller's thread has ended (it lingered a second after its last caller, and
    # so kept its SQLite connection past an interpreter exit: the store then left its
    # commits in the write-ahead log) and none starts again
    assert not poller.is_alive() and manager._settlements._poller.thread is None
    # and every caller was woken to look again, at the closed store, which raised
    _joined(threads)
    assert all(isinstance(outcomes[job_id], Exception) and not isinstance(outcomes[job_id], TimeoutError)
               for job_id in ids), outcomes
    assert not manager._settlements._poller.ensure_running()


def test_a_script_that_waits_then_exits_leaves_every_commit_in_the_database_file(tmp_path: Any) -> None:
    # given a script that stores a job, waits for it (another process runs it, so the
    # poller reads it) and exits at once, without closing its manager
    db = str(tmp_path / "jobs.db")
    script = textwrap.dedent(f"""
        from jobcore import Job, JobManager, SQLiteRepository
        manager = JobManager(SQLiteRepository({db!r}), producer=True)
        job_id = manager.enqueue(Job(function_name="builtins.len", args=("abc",)))
        runner = JobManager(SQLiteRepository({db!r}), max_workers=1)
        runner.register_function("builtins.len", len)
        runner.start()
        print(manager.wait(job_id, timeout=30).status.value)
        runner.close()
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["completed"]
    # then its commits are in the database file itself (its write-ahead log was folded in
    # at exit): the file alone holds the completed job
    assert not os.path.exists(db + "-wal")
    alone = sqlite3.connect(db)
    try:
        assert alone.execute("SELECT status FROM jobs").fetchall() == [("completed",)]
    finally:
        alone.close()


def test_callers_waiting_on_a_memory_store_raise_once_its_manager_closes(make_manager: Any) -> None:
    # given a memory store (whose close changes nothing: its rows can still be read),
    # a job nobody runs, and a thread waiting for it with no timeout
    manager, ids = _queued(make_manager, MemoryRepository(), count=1)
    threads, outcomes = _waiting(manager, ids, timeout=None)  # type: ignore[arg-type]
    wait_until(lambda: manager._settlements._waiters, JOIN, "the caller in wait")
    # when the manager closes
    manager.close()
    # then the caller raises, saying why (it read its job every 0.1 s for ever)
    _joined(threads)
    assert isinstance(outcomes[ids[0]], RepositoryError) and "closed" in str(outcomes[ids[0]])
    # and so does a wait begun after, on a job not ended
    with pytest.raises(RepositoryError):
        manager.wait(ids[0], timeout=None)


def test_a_first_wait_inside_an_exit_handler_still_leaves_every_commit_in_the_database_file(
        tmp_path: Any) -> None:
    # given a script whose only wait is made by an exit handler (its poller's thread starts
    # during the interpreter's exit)
    db = str(tmp_path / "jobs.db")
    script = textwrap.dedent(f"""
        import atexit
        from jobcore import Job, JobManager, SQLiteRepository
        manager = JobManager(SQLiteRepository({db!r}), producer=True)
        runner = JobManager(SQLiteRepository({db!r}), max_workers=1)
        runner.register_function("builtins.len", len)
        runner.start()  # (before the exit: since Python 3.12 no thread starts during it)

        def at_exit():
            job_id = manager.enqueue(Job(function_name="builtins.len", args=("abc",)))
            print(manager.wait(job_id, timeout=30).status.value)
            runner.close()

        atexit.register(at_exit)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["completed"]
    # then the poller's thread ended before the store closed at exit: the file alone
    # holds the completed job (the exit hook was registered only with the first thread,
    # during the exit, too late to run)
    assert not os.path.exists(db + "-wal")


def test_close_from_a_signal_handler_that_interrupted_a_wait_holding_its_lock_returns(tmp_path: Any) -> None:
    # given a signal handler that closes the manager, and a signal that comes while the
    # main thread holds the waiters' lock (as `wait` does for a few steps at a time)
    script = textwrap.dedent(f"""
        import faulthandler, os, signal
        from jobcore import JobManager
        manager = JobManager({str(tmp_path / "jobs.db")!r}, producer=True)
        signal.signal(signal.SIGUSR1, lambda *args: manager.close())
        faulthandler.dump_traceback_later(20, exit=True)
        with manager._settlements._lock:
            signal.raise_signal(signal.SIGUSR1)
        print("closed")
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": ROOT})
    # then the close returned (it waited for the lock its own thread held, for ever)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["closed"]


class _StaleStatuses(SQLiteRepository):
    """A real SQLite repository whose batched status reads always say pending: the poller
    never tells a caller its job ended (as when it ended just after the poller's read)."""

    def get_statuses(self, job_ids: Collection[str]) -> dict[str, JobStatus]:
        return {job_id: JobStatus.PENDING for job_id in job_ids}


def test_callers_whose_jobs_ended_elsewhere_get_their_results_when_the_manager_closes(
        make_manager: Any, db_path: str) -> None:
    # given callers waiting for jobs nobody here runs, which another manager on the file
    # then runs to completion, unseen yet by the poller
    repository = _StaleStatuses(db_path)
    manager, ids = _queued(make_manager, repository, count=10)
    threads, outcomes = _waiting(manager, ids, timeout=None)  # type: ignore[arg-type]
    wait_until(lambda: len(manager._settlements._poller._watched) == len(ids), JOIN, "every caller watching")
    runner = make_manager(SQLiteRepository(db_path), max_workers=1)
    runner.register_function("double", lambda x: 2 * x)
    assert runner.run_pending() == len(ids)
    # when the waiting manager closes
    manager.close()
    # then each caller looked once more before its store closed, and got its result
    # (each read the closed store and raised)
    _joined(threads)
    assert [getattr(outcomes[job_id], "status", outcomes[job_id]) for job_id in ids] == [JobStatus.COMPLETED] * len(ids)
    assert [outcomes[job_id].result for job_id in ids] == [2 * n for n in range(len(ids))]
