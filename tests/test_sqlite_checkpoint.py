"""The write-ahead log is copied back into the database file by a thread of the repository's
own, not inside whichever commit crosses SQLite's threshold."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from typing import Any

from jobcore import SQLiteRepository
from jobcore.repository import sqlite_checkpoint, sqlite_conn
from jobcore.repository.sqlite_checkpoint import CHECKPOINT_EVERY, FOREGROUND_WAL_LIMIT_PAGES, WAL_LIMIT_PAGES
from jobcore.testing.contract import NOW, make_record


def _checkpointers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "jobcore-sqlite-checkpoint" and t.is_alive()]


def test_commits_are_checkpointed_in_the_background_and_the_thread_ends_on_close(tmp_path: Any) -> None:
    # given a repository whose connections leave checkpoints to the background thread
    path = str(tmp_path / "jobs.db")
    repo = SQLiteRepository(path)
    assert repo._connection().execute("PRAGMA wal_autocheckpoint").fetchone()[0] == WAL_LIMIT_PAGES
    before = len(_checkpointers())
    empty_size = os.path.getsize(path)
    # when more commits than CHECKPOINT_EVERY are made (far fewer pages than SQLite's own limit)
    for _ in range(CHECKPOINT_EVERY * 2):
        repo.insert([make_record(args=("x" * 200,))], NOW)
    # then the rows reach the database file itself, which only a checkpoint writes
    deadline = time.monotonic() + 10
    while os.path.getsize(path) <= empty_size and time.monotonic() < deadline:
        time.sleep(0.01)
    assert os.path.getsize(path) > empty_size
    assert len(_checkpointers()) == before + 1
    # and closing the repository stops its checkpoint thread
    repo.close()
    assert len(_checkpointers()) == before


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
    before = len(_checkpointers())
    # when more commits than CHECKPOINT_EVERY are made
    for _ in range(CHECKPOINT_EVERY * 2):
        repo.insert([make_record()], NOW)
    # then no checkpoint thread was started and SQLite keeps its own default threshold
    assert len(_checkpointers()) == before
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
    # doubling to 1 ms (each ±50% jitter) while the lock was held under LONG_LOCK. (Past it,
    # which a loaded host's slow COMMIT above can reach, they grow to OUTAGE_PAUSE; the
    # test once asserted 1 ms at most for all and failed on a jitter of 1.42 ms.)
    first = pauses[0][0]
    assert pauses[0][1] <= 0.00002 * 1.5
    short = [seconds for at, seconds in pauses if at - first < sqlite_conn.LONG_LOCK]
    assert short and max(short) <= 0.001 * 1.5
    holder.close()
    repo.close()


def _wal_size(path: str) -> int:
    return os.path.getsize(path + "-wal") if os.path.exists(path + "-wal") else 0


def _wait_for(condition: Any, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_the_wal_is_emptied_once_commits_stop(tmp_path: Any, monkeypatch: Any) -> None:
    # given a repository that empties its WAL after 50 ms without a call for a checkpoint,
    # and more commits than CHECKPOINT_EVERY (the WAL a few hundred KB)
    monkeypatch.setattr(sqlite_checkpoint, "IDLE_TRUNCATE_AFTER", 0.05)
    path = str(tmp_path / "jobs.db")
    repo = SQLiteRepository(path)
    records = [make_record(args=("x" * 500,)) for _ in range(CHECKPOINT_EVERY * 3)]
    for record in records:
        repo.insert([record], NOW)
    assert _wal_size(path) > 0
    # when the commits stop, then the WAL file is emptied
    assert _wait_for(lambda: _wal_size(path) == 0)
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
    repo.insert([make_record()], NOW)  # after the snapshot: the reader still needs the WAL
    # when several quiet spells pass while it reads
    time.sleep(0.3)
    # then the WAL is still there, the reader's snapshot unchanged, and a write goes through
    assert _wal_size(path) > 0
    assert reader.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == seen
    repo.insert([make_record()], NOW)
    # and once the reader ends, the WAL is emptied
    reader.execute("COMMIT")
    reader.close()
    assert _wait_for(lambda: _wal_size(path) == 0)
    assert sum(repo.count_by_status().values()) == seen + 2
    repo.close()
