"""A manager reads the queue of the functions it runs, never the jobs of other functions.

Several kinds of workers may share one database (SPEC, "Running a job"). A manager that
runs only `a` beside thousands of ready or scheduled jobs of `b` used to walk all of them
at each look for work and each claim by number (each ready index held every function's
jobs in one order): half a core for an idle manager beside 100,000 jobs of `b` while other
processes wrote. Each function's jobs are now one range of an index led by its name.

The work a read does is counted in SQLite's own steps (a progress handler on the
connection), so the check is exact and does not depend on the machine's speed.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Callable

from jobcore import JobStatus, SQLiteRepository
from jobcore.repository import sqlite_schema as schema
from jobcore.testing.contract import NOW, make_record


def _steps(repo: SQLiteRepository, read: Callable[[], Any]) -> int:
    """How many times SQLite's progress handler ran (every 100 virtual-machine
    instructions) during `read`, on this thread's connection."""
    count = 0

    def tick() -> int:
        nonlocal count
        count += 1
        return 0

    conn = repo._db.get()
    conn.set_progress_handler(tick, 100)
    try:
        read()
    finally:
        conn.set_progress_handler(None, 100)
    return count


def _work_of_a_manager_running_a(repo: SQLiteRepository) -> list[int]:
    return [
        _steps(repo, lambda: repo.ready({"a"}, 100)),
        _steps(repo, lambda: repo.scheduled({"a"}, 100)),
        _steps(repo, lambda: repo.apply([], [], "w1", NOW, NOW + 30, top_up={"a"}, up_to=4)),
    ]


def test_reading_and_claiming_for_one_function_does_not_walk_another_functions_jobs(tmp_path: Any) -> None:
    # given two stores with the same jobs of `a`, one also holding 3,000 ready and 3,000
    # scheduled jobs of `b`, older than a's and of a higher priority
    alone, crowded = SQLiteRepository(str(tmp_path / "alone.db")), SQLiteRepository(str(tmp_path / "crowded.db"))
    crowded.insert([make_record(function_name="b", priority=9) for _ in range(3000)], NOW)
    crowded.insert([make_record(function_name="b", status=JobStatus.SCHEDULED, run_at=NOW + 10)
                    for _ in range(3000)], NOW)
    for repo in (alone, crowded):
        repo.insert([make_record(function_name="a") for _ in range(8)], NOW)
        repo.insert([make_record(function_name="a", status=JobStatus.SCHEDULED, run_at=NOW + 60)], NOW)

    # when a manager running `a` reads its queue and claims by number in each
    work_alone, work_crowded = _work_of_a_manager_running_a(alone), _work_of_a_manager_running_a(crowded)

    # then the other function's jobs cost it nothing (walking them costs thousands of steps)
    assert all(crowded <= alone + 3 for alone, crowded in zip(work_alone, work_crowded)), (work_alone, work_crowded)
    assert len(crowded.ready({"a"}, 100)) == 4 and len(crowded.scheduled({"a"}, 100)) == 1
    alone.close()
    crowded.close()


def test_a_claim_by_number_walks_only_the_functions_that_have_ready_jobs(tmp_path: Any) -> None:
    # given ready jobs of `a` only (one of `z` running, one of `y` scheduled), and a
    # manager running 100 functions, these three among them
    repo = SQLiteRepository(str(tmp_path / "many.db"))
    repo.insert([make_record(function_name="a") for _ in range(8)], NOW)
    repo.insert([make_record(function_name="z"), make_record(function_name="y", status=JobStatus.SCHEDULED,
                                                             run_at=NOW + 60)], NOW)
    repo.apply([], [], "w0", NOW, NOW + 30, top_up={"z"}, up_to=1)
    many = {"a", "y", "z", *(f"f{n:02}" for n in range(97))}

    # when it claims jobs by number, twice
    statements: list[str] = []
    conn = repo._db.get()
    conn.set_trace_callback(statements.append)
    try:
        first = repo.apply([], [], "w1", NOW, NOW + 30, top_up=many, up_to=2)[1]
        rest = repo.apply([], [], "w1", NOW, NOW + 30, top_up=many, up_to=8)[1]
    finally:
        conn.set_trace_callback(None)

    # then each claim walked the range of `a` alone (each range walked costs about 5.6 µs,
    # empty or not: 100 of them cost a drain of one function's jobs a third of its rate),
    # and took the jobs of `a`, all of them, and nothing else
    claims = [text for text in statements if text.lstrip().startswith("UPDATE jobs SET status = 'running'")]
    assert [claim.count("INDEXED BY jobs_ready") for claim in claims] == [1, 1], claims
    assert [record.function_name for record in first + rest] == ["a"] * 8
    assert not repo.apply([], [], "w1", NOW, NOW + 30, top_up=many, up_to=8)[1]
    repo.close()


def test_a_version_2_database_gets_the_queue_indexes_led_by_function_name(tmp_path: Any) -> None:
    # given a database as version 2 left it: the queue indexes in one order for every function
    path = str(tmp_path / "v2.db")
    SQLiteRepository(path).close()
    raw = sqlite3.connect(path)
    raw.executescript("""
        DROP INDEX jobs_ready; DROP INDEX jobs_due; DROP INDEX jobs_schedules;
        CREATE INDEX jobs_ready ON jobs (priority DESC, seq) WHERE status = 'pending' AND blocked = 0;
        CREATE INDEX jobs_due ON jobs (run_at) WHERE status = 'scheduled';
        UPDATE jobcore_meta SET value = '2' WHERE key = 'schema_version';
    """)
    raw.execute("INSERT INTO jobs (id, function_name, name, payload, priority, status, created_at, max_retries,"
                " retry_delay, retry_backoff, retry_jitter) VALUES ('old', 'a', 'a', '[[],{}]', 0, 'pending', 1, 3,"
                " 1, 2, 1)")
    raw.commit()
    raw.close()

    # when this version opens it
    repo = SQLiteRepository(path)

    # then the indexes are led by function_name, the version is the current one, and the
    # job stored before is still found and claimed
    check = sqlite3.connect(path)
    definitions = dict(check.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index'"
                                     " AND name IN ('jobs_ready', 'jobs_due', 'jobs_schedules')").fetchall())
    version = check.execute("SELECT value FROM jobcore_meta WHERE key = 'schema_version'").fetchone()
    check.close()
    assert "(function_name, priority DESC, seq)" in definitions["jobs_ready"]
    assert "(function_name, run_at)" in definitions["jobs_due"]
    assert "cron IS NOT NULL" in definitions["jobs_schedules"]
    assert version == (str(schema.SCHEMA_VERSION),)
    assert [entry.job_id for entry in repo.ready({"a"}, 10)] == ["old"]
    assert [record.id for record in repo.apply([], ["old"], "w1", NOW, NOW + 30)[1]] == ["old"]
    repo.close()
