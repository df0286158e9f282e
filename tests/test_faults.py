"""Faults: corrupt rows, clock jumps, an unwritable database."""

from __future__ import annotations

import sqlite3
import threading
import time
from typing import Any

import pytest

from jobcore import FakeClock, Job, JobStatus, RepositoryError, SQLiteRepository

WAIT = 10.0


def test_a_corrupt_row_fails_alone(make_manager: Any, db_path: str) -> None:
    manager = make_manager(db_path)
    manager.register_function("echo", lambda x: x)
    broken = manager.enqueue(Job(function_name="echo", args=(1,)))
    fine = manager.enqueue(Job(function_name="echo", args=(2,)))
    raw = sqlite3.connect(db_path)
    raw.execute("UPDATE jobs SET payload = 'not json {' WHERE id = ?", (broken,))
    raw.commit()
    raw.close()

    manager.start()
    bad = manager.wait(broken, timeout=WAIT)
    assert (bad.status, bad.error_type, bad.attempts) == (JobStatus.FAILED, "CorruptJob", 1)
    assert "cannot be decoded" in bad.error
    assert manager.wait(fine, timeout=WAIT).result == 2


def test_a_wall_clock_jump_does_not_steal_running_jobs(make_manager: Any, db_path: str) -> None:
    clock = FakeClock()
    started = threading.Event()
    release = threading.Event()

    def long_job() -> str:
        started.set()
        assert release.wait(WAIT)
        return "done once"

    manager = make_manager(db_path, clock=clock, lease_timeout=60).start()
    job_id = manager.enqueue(Job(function=long_job))
    assert started.wait(WAIT)

    clock.jump(3600)      # someone sets the system clock an hour ahead...
    clock.advance(16)     # ...and a recovery round comes due
    deadline = time.monotonic() + WAIT
    repo = manager.repository
    while repo.get(job_id).lease_expires_at < clock.time() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert repo.get(job_id).lease_expires_at > clock.time()  # renewed, not taken back
    release.set()

    result = manager.wait(job_id, timeout=WAIT)
    assert (result.status, result.attempts, result.result) == (JobStatus.COMPLETED, 1, "done once")


def test_scheduled_jobs_survive_a_backward_jump(make_manager: Any, db_path: str) -> None:
    clock = FakeClock()
    manager = make_manager(db_path, clock=clock).start()
    job_id = manager.enqueue(Job(function=lambda: "ran", scheduled_at=None))
    assert manager.wait(job_id, timeout=WAIT).result == "ran"
    clock.jump(-3600)
    again = manager.enqueue(Job(function=lambda: "still runs"))
    assert manager.wait(again, timeout=WAIT).result == "still runs"


def test_unwritable_database_raises_clearly_and_keeps_what_was_accepted(make_manager: Any,
                                                                        tmp_path: Any) -> None:
    path = str(tmp_path / "jobs.db")
    manager = make_manager(path)
    manager.register_function("echo", lambda x: x)
    accepted = manager.enqueue(Job(function_name="echo", args=(7,)))
    holder = sqlite3.connect(path, timeout=0, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        blocked = make_manager(SQLiteRepository(path, busy_timeout=0.1), producer=True)
        with pytest.raises(RepositoryError, match="locked"):
            blocked.enqueue(Job(function_name="echo", args=(8,)))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert manager.get_stats()["total"] == 1
    manager.start()
    assert manager.wait(accepted, timeout=WAIT).result == 7


def test_a_database_in_a_directory_that_does_not_exist_is_refused_naming_it(tmp_path: Any) -> None:
    missing = tmp_path / "no-such-dir"
    with pytest.raises(RepositoryError, match=f"its directory '{missing}' does not exist"):
        SQLiteRepository(str(missing / "jobs.db"))
    assert not missing.exists()  # nothing created on the way


def test_a_job_whose_last_attempt_was_lost_is_dead_lettered_with_a_notification(
        make_manager: Any, db_path: str) -> None:
    from jobcore import CallbackNotificationChannel

    events: list[dict[str, Any]] = []
    repo = SQLiteRepository(db_path)
    producer = make_manager(repo, producer=True)
    job_id = producer.enqueue(Job(function_name="echo", args=(1,), max_retries=0))
    now = time.time()
    assert repo.claim(job_id, "dead-worker", now - 120, now - 60) is not None  # lease long gone

    manager = make_manager(db_path)
    manager.register_function("echo", lambda x: x)
    manager.add_notification_channel(CallbackNotificationChannel(events.append))
    manager.start()
    result = manager.wait(job_id, timeout=WAIT)
    manager.stop()

    assert (result.status, result.error_type) == (JobStatus.FAILED, "WorkerLost")
    assert [(e["event"], e["job_id"], e["error_type"]) for e in events] == [
        ("job.dead_lettered", job_id, "WorkerLost")]


def test_a_version_1_database_is_migrated(tmp_path: Any) -> None:
    path = str(tmp_path / "old.db")
    SQLiteRepository(path).close()
    raw = sqlite3.connect(path)
    raw.execute("ALTER TABLE jobs DROP COLUMN memory_limit")  # as version 1 created it
    raw.execute("UPDATE jobcore_meta SET value = '1' WHERE key = 'schema_version'")
    raw.commit()
    raw.close()

    repo = SQLiteRepository(path)
    from jobcore import JobManager
    from jobcore.repository.sqlite_schema import SCHEMA_VERSION
    manager = JobManager(repo)
    manager.register_function("echo", lambda x: x)
    job_id = manager.enqueue(Job(function_name="echo", args=(5,)))
    assert manager.run_pending() == 1
    assert manager.poll(job_id).result == 5
    check = sqlite3.connect(path)
    assert check.execute("SELECT value FROM jobcore_meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    check.close()
    manager.close()
