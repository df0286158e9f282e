"""A real SQLite file whose write lock another program holds (`BEGIN EXCLUSIVE`) while a
manager on the system clock beats and stops: each store call then waits its whole busy
timeout and fails. The stop leaves the worker registry once, and a beat made late by the
housekeeper's own blocked call is not taken for a stall of the process. A lock shorter
than the busy timeout and longer than the lease takes no running job back, and locks
that keep coming do not keep a dead worker's job from coming back."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from typing import Any, Callable, Collection, Iterator, Optional

import pytest

from jobcore import Job, JobManager, JobStatus, RepositoryError, SQLiteRepository
from recovery_checks import runs_once_through_a_lock
from waiting import wait_until

WAIT = 10.0


class Counting(SQLiteRepository):
    """SQLite that counts `unregister_worker` calls and `beat_worker` calls that failed."""

    def __init__(self, path: str, busy_timeout: float) -> None:
        self.seen = threading.Condition()  # guards the counts; notified at each
        self.unregistered = 0
        self.beats_failed = 0
        super().__init__(path, busy_timeout=busy_timeout)

    def unregister_worker(self, worker_id: str) -> None:
        with self.seen:
            self.unregistered += 1
            self.seen.notify_all()
        super().unregister_worker(worker_id)

    def beat_worker(self, worker_id: str, running: Collection[str], now: float) -> Optional[bool]:
        try:
            return super().beat_worker(worker_id, running, now)
        except RepositoryError:
            with self.seen:
                self.beats_failed += 1
                self.seen.notify_all()
            raise

    def wait_for_failed_beats(self, count: int) -> None:
        with self.seen:
            assert self.seen.wait_for(lambda: self.beats_failed >= count, WAIT), f"{count} failed beats"


@pytest.fixture
def lock(db_path: str) -> Iterator[sqlite3.Connection]:
    """Another program's connection to `db_path`, that takes the write lock when told."""
    connection = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    yield connection
    if connection.in_transaction:
        connection.execute("ROLLBACK")
    connection.close()


def test_a_stop_leaves_the_worker_registry_once(make_manager: Any, db_path: str) -> None:
    # given a started manager on a healthy store
    repository = Counting(db_path, busy_timeout=5.0)
    manager = make_manager(repository, max_workers=1, poll_interval=0.05)
    manager.start()
    # when it stops, then it left the registry with one call (the housekeeper thread and
    # then stop() each made one)
    manager.stop()
    assert repository.unregistered == 1
    assert manager.list_workers() == []


def test_a_stop_while_another_program_holds_the_lock_tries_to_leave_the_registry_once(
        make_manager: Any, db_path: str, lock: sqlite3.Connection, caplog: Any) -> None:
    # given a started manager, idle, whose database another program has locked
    repository = Counting(db_path, busy_timeout=0.2)
    manager = make_manager(repository, max_workers=1, lease_timeout=1.0, poll_interval=0.05)
    manager.start()
    lock.execute("BEGIN EXCLUSIVE")
    repository.wait_for_failed_beats(1)
    # when it stops, then it tried to leave the registry once (each try waits a busy
    # timeout in vain: two made the stop wait for both)
    with caplog.at_level(logging.WARNING, logger="jobcore.housekeeper"):
        manager.stop()
    assert repository.unregistered == 1
    assert len([r for r in caplog.records if "could not leave the worker registry" in r.message]) == 1


def test_a_beat_late_from_its_own_blocked_store_call_is_no_stall(
        make_manager: Any, db_path: str, lock: sqlite3.Connection, caplog: Any) -> None:
    # given a started manager whose busy timeout is more than half its lease
    repository = Counting(db_path, busy_timeout=0.7)
    manager = make_manager(repository, max_workers=1, lease_timeout=1.0, poll_interval=0.05)
    manager.start()
    with caplog.at_level(logging.WARNING, logger="jobcore.housekeeper"):
        # when another program holds the write lock for a few of its beats, each waiting
        # the busy timeout in vain, and then lets it go
        lock.execute("BEGIN EXCLUSIVE")
        repository.wait_for_failed_beats(2)
        lock.execute("ROLLBACK")
        wait_until(lambda: any("works again" in r.message for r in caplog.records), WAIT,
                   "a beat that works after the lock")
    # then the outage was logged as one, not as a stall of this process (every beat came
    # late by the busy timeout its blocked call before had waited)
    messages = [r.message for r in caplog.records]
    assert not [m for m in messages if "stalled" in m], messages


def test_a_job_runs_once_through_a_lock_longer_than_its_lease(make_manager: Any, db_path: str,
                                                             lock: sqlite3.Connection) -> None:
    # given two managers on one file whose busy timeout outlasts the lock below, and
    # whose lease it does not: every write of theirs waits, and then works
    @contextlib.contextmanager
    def locked() -> Iterator[None]:
        lock.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            lock.execute("ROLLBACK")

    runs_once_through_a_lock(lambda: SQLiteRepository(db_path, busy_timeout=WAIT), make_manager, locked)


def test_locks_that_keep_coming_delay_a_dead_workers_job_and_do_not_hold_it_for_good(
        make_manager: Any, db_path: str, lock: sqlite3.Connection) -> None:
    # given a job claimed by a worker that died (its lease a second long), and another
    # program that locks the file for 0.6 of every 0.65 s: longer than half the lease, so
    # each of the manager's housekeeping passes waits that long (the job never came back:
    # each such pass held every recovery off a lease again)
    repository = SQLiteRepository(db_path, busy_timeout=WAIT)
    manager = make_manager(repository, max_workers=1, lease_timeout=1.0, poll_interval=0.05)
    manager.register_function("echo", lambda x: x)
    job_id = manager.enqueue(Job(function_name="echo", args=(1,)))
    now = time.time()
    assert repository.claim(job_id, "dead-worker", now, now + 1.0) is not None
    stop = threading.Event()

    def lock_again_and_again() -> None:
        while not stop.is_set():
            lock.execute("BEGIN EXCLUSIVE")
            stop.wait(0.6)
            lock.execute("ROLLBACK")
            time.sleep(0.05)

    locker = threading.Thread(target=lock_again_and_again)
    locker.start()
    try:
        # when a manager runs on the file meanwhile
        manager.start()
        # then the job is taken back and runs again, within a few leases
        result = manager.wait(job_id, timeout=WAIT)
        assert (result.status, result.attempts, result.result) == (JobStatus.COMPLETED, 2, 1)
    finally:
        stop.set()
        locker.join(WAIT)


def _counted_pauses(monkeypatch: Any, seen: Callable[[int], object] = lambda count: None) -> list[float]:
    """The pauses SQLite writes take between tries for the lock (seconds, in order), from
    now on; `seen(count)` is called after each, with how many there were."""
    from jobcore.repository import sqlite_conn
    pauses: list[float] = []
    sleep = sqlite_conn.real_sleep

    def counted_sleep(seconds: float) -> None:
        pauses.append(seconds)
        seen(len(pauses))
        sleep(seconds)

    monkeypatch.setattr(sqlite_conn, "real_sleep", counted_sleep)
    return pauses


def test_a_write_waiting_on_another_process_pauses_up_to_the_contended_cap(db_path: str, lock: sqlite3.Connection,
                                                                          monkeypatch: Any) -> None:
    # given a repository whose pauses between tries for the lock are counted, and another
    # program holding the write lock until the write has paused 15 times (contention:
    # well under LONG_LOCK)
    from jobcore.repository import sqlite_conn
    producer = JobManager(SQLiteRepository(db_path), producer=True)
    paused_enough = threading.Event()
    pauses = _counted_pauses(monkeypatch, lambda count: count >= 15 and paused_enough.set())
    lock.execute("BEGIN IMMEDIATE")

    def release() -> None:
        paused_enough.wait(WAIT)
        lock.execute("ROLLBACK")

    releaser = threading.Thread(target=release)
    releaser.start()
    try:
        # when a job is enqueued meanwhile, then it is stored once the lock is let go
        job_id = producer.enqueue(Job(function_name="task"))
        assert producer.poll(job_id) is not None
    finally:
        paused_enough.set()
        releaser.join(WAIT)
        producer.close()
    # and its pauses grew past a millisecond and a half (the cap was 1 ms, jittered up to
    # 1.5: four worker processes on one file ran no faster than one), to at most the
    # contended cap jittered (3 ms x 1.5)
    assert 0.0015 < max(pauses) <= sqlite_conn.CONTENDED_PAUSE * 1.5, pauses


def test_a_write_waiting_out_a_long_lock_tries_again_less_often(db_path: str, lock: sqlite3.Connection,
                                                                  monkeypatch: Any) -> None:
    # given a repository whose pauses between tries for the lock are counted
    producer = JobManager(SQLiteRepository(db_path, busy_timeout=1.0), producer=True)
    pauses = _counted_pauses(monkeypatch)
    # when another program holds the write lock through a write's whole busy timeout
    lock.execute("BEGIN IMMEDIATE")
    began = time.monotonic()
    with pytest.raises(RepositoryError):
        producer.enqueue(Job(function_name="task"))
    waited = time.monotonic() - began
    # then it waited that long, trying often at first (contention) and then every 10 ms
    # or so (an outage), not every millisecond for the whole second
    assert waited >= 0.9
    assert len(pauses) < 400, len(pauses)
    assert max(pauses) > 0.004
    producer.close()
