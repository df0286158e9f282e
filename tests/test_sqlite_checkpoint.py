"""The write-ahead log is copied back into the database file by a thread of the repository's
own, not inside whichever commit crosses SQLite's threshold."""

from __future__ import annotations

import contextlib
import gc
import os
import sqlite3
import threading
import time
import types
import warnings
import weakref
from typing import Any, Optional

import pytest

from jobcore import Job, JobManager, JobStatus, SQLiteRepository
from jobcore.repository import sqlite_checkpoint, sqlite_conn
from jobcore.repository.sqlite_checkpoint import CHECKPOINT_EVERY, FOREGROUND_WAL_LIMIT_PAGES, WAL_LIMIT_PAGES
from jobcore.testing.contract import NOW, make_record
from waiting import wait_until


def _noop() -> None:
    return None


def _checkpointer(repo: SQLiteRepository) -> Optional[threading.Thread]:
    """The repository's checkpoint thread, if one runs. (Its own: counting the threads of
    that name saw those of other tests' repositories end meanwhile, as idle ones do.)"""
    thread = repo._db._checkpoints.thread
    return thread if thread is not None and thread.is_alive() else None


def test_commits_are_checkpointed_in_the_background_and_the_thread_ends_on_close(tmp_path: Any) -> None:
    # given a repository whose connections leave checkpoints to the background thread
    path = str(tmp_path / "jobs.db")
    repo = SQLiteRepository(path)
    assert repo._connection().execute("PRAGMA wal_autocheckpoint").fetchone()[0] == WAL_LIMIT_PAGES
    assert _checkpointer(repo) is None
    empty_size = os.path.getsize(path)
    # when more commits than CHECKPOINT_EVERY are made (far fewer pages than SQLite's own limit)
    for _ in range(CHECKPOINT_EVERY * 2):
        repo.insert([make_record(args=("x" * 200,))], NOW)
    # then the rows reach the database file itself, which only a checkpoint writes
    deadline = time.monotonic() + 10
    while os.path.getsize(path) <= empty_size and time.monotonic() < deadline:
        time.sleep(0.01)
    assert os.path.getsize(path) > empty_size
    thread = _checkpointer(repo)
    assert thread is not None  # (it ends on its own only IDLE_TRUNCATE_AFTER after the last call)
    # and closing the repository stops its checkpoint thread
    repo.close()
    assert not thread.is_alive() and _checkpointer(repo) is None


def _open_files(path: str) -> list[str]:
    """The files of this process open at `path` (the database, `-wal`, `-shm`)."""
    names = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # (the listing's own descriptor, gone)
            name = os.readlink(f"/proc/self/fd/{fd}")
            if name.startswith(path):
                names.append(name)
    return names


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="lists open files through /proc")
def test_the_checkpoint_thread_ends_once_idle_and_a_dropped_manager_leaves_nothing_open(
        tmp_path: Any, monkeypatch: Any) -> None:
    # given a manager on a file, started, given enough jobs for background checkpoints, and
    # stopped by its `with` block (not closed), its WAL emptied 50 ms after the last commit
    # (quiet: fewer than CHECKPOINT_EVERY commits in that long. At 0.05 s a drain slower
    # than 64 commits in 50 ms had its WAL emptied before its last commits, left there)
    monkeypatch.setattr(sqlite_checkpoint, "IDLE_TRUNCATE_AFTER", 0.5)
    path = str(tmp_path / "jobs.db")
    started = _recording_checkpoint_threads(monkeypatch)
    with JobManager(path) as manager:
        manager.register_function("noop", _noop)
        for job_id in [manager.enqueue(Job(function_name="noop")) for _ in range(CHECKPOINT_EVERY * 2)]:
            manager.wait(job_id, timeout=10)
        repo = manager.repository
        assert isinstance(repo, SQLiteRepository)
    # when the commits have stopped, then the checkpoint thread empties the WAL and ends (it
    # waited for ever, keeping the repository, its connections and their files, until the
    # process exited)
    assert started
    wait_until(lambda: _wal_size(path) == 0 and not any(t.is_alive() for t in started), 10,
               "the WAL emptied and the checkpoint thread ended")
    assert _checkpointer(repo) is None
    # and once the manager is dropped, the repository goes, its files closed (each
    # connection closed by jobcore, not collected unclosed: no ResourceWarning)
    dropped = weakref.ref(repo)
    del manager, repo
    gc.disable()  # collections only here: the one that frees the repository closes its files
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            wait_until(lambda: gc.collect() is not None and dropped() is None, 10,
                       "the repository to be freed")  # (`wait`'s poller holds it for a second)
            assert _open_files(path) == []
    finally:
        gc.enable()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
    # and the file still has every job
    check = SQLiteRepository(path)
    try:
        counts = check.count_by_status()
        assert counts[JobStatus.COMPLETED] == sum(counts.values()) == CHECKPOINT_EVERY * 2
    finally:
        check.close()


def test_commits_after_the_checkpoint_thread_ended_start_another(tmp_path: Any, monkeypatch: Any) -> None:
    # given a repository whose checkpoint thread ended, idle, after its WAL was emptied
    monkeypatch.setattr(sqlite_checkpoint, "IDLE_TRUNCATE_AFTER", 0.05)
    started = _recording_checkpoint_threads(monkeypatch)
    path = str(tmp_path / "jobs.db")
    repo = SQLiteRepository(path)
    for _ in range(CHECKPOINT_EVERY * 2):
        repo.insert([make_record()], NOW)
    # (how many threads that took depends on the pace of the commits: a pause longer than
    # IDLE_TRUNCATE_AFTER between two calls for a checkpoint ends one, and the next starts another)
    wait_until(lambda: _wal_size(path) == 0 and started and not started[-1].is_alive(), 10,
               "the WAL emptied and the checkpoint thread ended")
    ended = len(started)
    size = os.path.getsize(path)
    # when more commits come
    for _ in range(CHECKPOINT_EVERY * 2):
        repo.insert([make_record(args=("x" * 500,))], NOW)
    # then another thread checkpoints them into the file, empties the WAL again and ends
    wait_until(lambda: _wal_size(path) == 0 and os.path.getsize(path) > size
               and len(started) > ended and not started[-1].is_alive(), 10,
               "the commits checkpointed by a second thread, ended")
    assert _checkpointer(repo) is None
    repo.close()


def _recording_checkpoint_threads(monkeypatch: Any) -> list[threading.Thread]:
    """The checkpoint threads started from now on, in order (a thread may start and end
    between two looks at the repository's own, so the test keeps each one)."""
    started: list[threading.Thread] = []

    class Recorded(threading.Thread):
        def start(self) -> None:
            started.append(self)
            super().start()

    recording = types.SimpleNamespace(**{name: getattr(threading, name) for name in dir(threading)
                                         if not name.startswith("__")})
    recording.Thread = Recorded
    monkeypatch.setattr(sqlite_checkpoint, "threading", recording)
    return started


def test_a_reopened_file_sees_every_commit_whether_checkpointed_or_not(tmp_path: Any) -> None:
    # given jobs written through one repository, some of them still only in the WAL
    path = str(tmp_path / "jobs.db")
    repo = SQLiteRepository(path)
    records = [make_record() for _ in range(CHECKPOINT_EVERY + 10)]
    for record in records:
        repo.insert([record], NOW)
    # when another repository opens the file
    other = SQLiteRepository(path)
    # then it sees all of them
    assert sum(other.count_by_status().values()) == len(records)
    other.close()
    repo.close()


def test_with_full_durability_sqlite_checkpoints_in_the_foreground(tmp_path: Any) -> None:
    # given a repository syncing every commit
    repo = SQLiteRepository(str(tmp_path / "jobs.db"), durability="full")
    # when more commits than CHECKPOINT_EVERY are made
    for _ in range(CHECKPOINT_EVERY * 2):
        repo.insert([make_record()], NOW)
    # then no checkpoint thread was started and SQLite keeps its own default threshold
    assert repo._db._checkpoints.thread is None
    conn = repo._connection()
    assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == FOREGROUND_WAL_LIMIT_PAGES
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    repo.close()


def test_a_write_waits_for_another_connections_lock_and_goes_through_once_it_is_released(
        tmp_path: Any, monkeypatch: Any) -> None:
    # given another connection (as another process would) holding the write lock, and a
    # way to see jobcore pause between tries
    path = str(tmp_path / "jobs.db")
    repo = SQLiteRepository(path, busy_timeout=30.0)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    paused = threading.Event()
    pauses: list[tuple[float, float]] = []  # (when, how long)
    real_sleep = sqlite_conn.real_sleep

    def sleep(seconds: float) -> None:  # the pause between tries, for the length of this test
        pauses.append((time.monotonic(), seconds))
        paused.set()
        real_sleep(seconds)

    monkeypatch.setattr(sqlite_conn, "real_sleep", sleep)
    record = make_record()
    outcome: list[Any] = []
    writer = threading.Thread(target=lambda: outcome.append(repo.insert([record], NOW)))
    writer.start()
    # when the writer was refused and paused, and then the lock is released
    assert paused.wait(10)
    assert not outcome and repo.get(record.id) is None  # reads go on meanwhile (WAL)
    holder.execute("COMMIT")
    writer.join(10)
    # then the write went through, retried by jobcore rather than failed
    assert outcome == [[record.id]] and repo.get(record.id) is not None
    # and its pauses were short, not SQLite's 1, 2, 5, 10... ms steps: 20 µs at first, then
    # doubling to CONTENDED_PAUSE (each ±50% jitter) while the lock was held under
    # LONG_LOCK. (Past it, which a loaded host's slow COMMIT above can reach, they grow to
    # OUTAGE_PAUSE; the test once asserted 1 ms at most for all and failed on a jitter of
    # 1.42 ms. The cap was 1 ms until session 42; test_locked_database checks it is reached.)
    first = pauses[0][0]
    assert pauses[0][1] <= 0.00002 * 1.5
    short = [seconds for at, seconds in pauses if at - first < sqlite_conn.LONG_LOCK]
    assert short and max(short) <= sqlite_conn.CONTENDED_PAUSE * 1.5
    holder.close()
    repo.close()


def _wal_size(path: str) -> int:
    return os.path.getsize(path + "-wal") if os.path.exists(path + "-wal") else 0


def test_the_wal_is_emptied_once_commits_stop(tmp_path: Any, monkeypatch: Any) -> None:
    # given a repository that empties its WAL after 50 ms without a call for a checkpoint,
    # and more commits than CHECKPOINT_EVERY (the WAL a few hundred KB)
    monkeypatch.setattr(sqlite_checkpoint, "IDLE_TRUNCATE_AFTER", 0.05)
    path = str(tmp_path / "jobs.db")
    repo = SQLiteRepository(path)
    records = [make_record(args=("x" * 500,)) for _ in range(CHECKPOINT_EVERY * 3)]
    sizes = []
    for record in records:
        repo.insert([record], NOW)
        sizes.append(_wal_size(path))
    # (not the size after the last alone: a pause of IDLE_TRUNCATE_AFTER before it is read
    # lets the thread empty the WAL first)
    assert max(sizes) > 0
    # when the commits stop, then the WAL file is emptied
    wait_until(lambda: _wal_size(path) == 0, 10, "the WAL emptied")
    # and nothing was lost: another connection reads every job, and writing goes on
    repo.insert([make_record()], NOW)
    other = SQLiteRepository(path)
    assert sum(other.count_by_status().values()) == len(records) + 1
    other.close()
    repo.close()


def test_a_reader_elsewhere_keeps_the_wal_until_it_ends_and_writes_go_on(tmp_path: Any,
                                                                         monkeypatch: Any) -> None:
    # given a repository that empties its WAL after 50 ms without a call for a checkpoint,
    # and another connection (as another process would) reading a snapshot that needs it
    monkeypatch.setattr(sqlite_checkpoint, "IDLE_TRUNCATE_AFTER", 0.05)
    path = str(tmp_path / "jobs.db")
    repo = SQLiteRepository(path)
    for _ in range(CHECKPOINT_EVERY * 2):
        repo.insert([make_record()], NOW)
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    seen = reader.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
    # after the snapshot, enough commits to call for a checkpoint (the reader still needs
    # the WAL): one made before it began may have emptied the WAL and ended (a pause of
    # IDLE_TRUNCATE_AFTER before it began), and nothing would empty it again
    for _ in range(CHECKPOINT_EVERY):
        repo.insert([make_record()], NOW)
    # when several quiet spells pass while it reads
    time.sleep(0.3)
    # then the WAL is still there, the reader's snapshot unchanged, and a write goes through
    assert _wal_size(path) > 0
    assert reader.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == seen
    repo.insert([make_record()], NOW)
    # and once the reader ends, the WAL is emptied
    reader.execute("COMMIT")
    reader.close()
    wait_until(lambda: _wal_size(path) == 0, 10, "the WAL emptied")
    assert sum(repo.count_by_status().values()) == seen + CHECKPOINT_EVERY + 1
    repo.close()


class _RefusedThread(threading.Thread):
    """A thread that cannot start, as Python 3.12 refuses new threads during interpreter exit."""

    def start(self) -> None:
        raise RuntimeError("can't create new thread at interpreter shutdown")


def test_a_checkpoint_thread_that_cannot_start_fails_no_write(tmp_path: Any, monkeypatch: Any) -> None:
    # given a repository whose checkpoint thread cannot start (a manager's stop recording
    # outcomes at interpreter exit under Python 3.12, its earlier thread ended idle)
    _recording_checkpoint_threads(monkeypatch)
    sqlite_checkpoint.threading.Thread = _RefusedThread  # (on the stand-in for `threading` there)
    path = str(tmp_path / "jobs.db")
    repo = SQLiteRepository(path)
    records = [make_record() for _ in range(CHECKPOINT_EVERY * 2 + 1)]
    # when more commits than CHECKPOINT_EVERY are made, then each one goes through (the
    # commit that called for a checkpoint raised, though made: a caller would enqueue twice)
    for record in records:
        assert repo.insert([record], NOW) == [record.id]
    assert _checkpointer(repo) is None
    # and every job is there, for this repository and for another
    other = SQLiteRepository(path)
    try:
        assert sum(other.count_by_status().values()) == len(records)
    finally:
        other.close()
    repo.close()



@pytest.mark.parametrize("durability", ["normal", "full"])
@pytest.mark.parametrize("readers, writers", [(1, 1), (2, 1), (1, 2)])
def test_a_wal_that_slow_readers_keep_in_use_one_after_another_is_started_over_once_overgrown(
        tmp_path: Any, monkeypatch: Any, durability: str, readers: int, writers: int) -> None:
    # given a WAL limit of 100 pages (so 200 is overgrown), tries to start it over at each
    # 50 ms of the wall clock, readers each reading it 15 ms at a time, so that one reads at
    # every moment (one beginning again at once, or two in turns), and one or two writers,
    # each on a repository of its own (as another process's: each has its own writers' lock)
    monkeypatch.setattr(sqlite_conn, "WAL_LIMIT_PAGES", 100)
    monkeypatch.setattr(sqlite_conn, "FOREGROUND_WAL_LIMIT_PAGES", 100)
    monkeypatch.setattr(sqlite_conn, "SIZE_CHECK_EVERY", 64)
    monkeypatch.setattr(sqlite_checkpoint, "OVERGROWN_SPACING", 0.05)
    path = str(tmp_path / "jobs.db")
    repos = [SQLiteRepository(path, durability=durability) for _ in range(writers)]
    repos[0].insert([make_record()], NOW)
    done, reading = threading.Event(), [threading.Event() for _ in range(readers)]

    def read(me: int) -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        if me:
            reading[0].wait(10)  # (the second begins once the first reads: in turns)
        while not done.is_set():
            conn.execute("BEGIN")
            conn.execute("SELECT COUNT(*) FROM jobs").fetchone()
            reading[me].set()
            time.sleep(0.015)
            conn.execute("COMMIT")
            if readers > 1:
                time.sleep(0.0075)
        conn.close()

    largest = [0]

    def write(repo: SQLiteRepository) -> None:
        for _ in range(4_000 // writers):
            repo.insert([make_record(args=("x" * 200,))], NOW)
            largest[0] = max(largest[0], _wal_size(path))

    threads = [threading.Thread(target=read, args=(me,)) for me in range(readers)]
    for thread in threads:
        thread.start()
    try:
        assert all(event.wait(10) for event in reading)
        # when 4,000 jobs are stored, one commit each (3-4 pages a commit)
        writing = [threading.Thread(target=write, args=(repo,)) for repo in repos]
        for thread in writing:
            thread.start()
        for thread in writing:
            thread.join()
    finally:
        done.set()
        for thread in threads:
            thread.join()
    # then the WAL stayed a fraction of what the commits wrote (250-3,500 pages measured):
    # it was started over while readers went on, and cut down (SQLite starts it over only
    # when no reader uses it: it grew by every commit, to 14,000 pages here, and by a
    # gigabyte in 40 s beside a drain; with two writers, each holding only its own writers
    # back as it tried, to 1.1 GB)
    assert largest[0] < 5_000 * 4_096, largest
    assert sum(repos[0].count_by_status().values()) == 1 + 4_000 // writers * writers
    for repo in repos:
        repo.close()
