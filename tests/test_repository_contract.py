"""The repository contract over every shipped backend, plus what only SQLite promises.

The contract itself lives in `jobcore.testing.contract`; this module only runs it and
adds SQLite's file-level promises (WAL, durability, schema version, bad files, query
plans, several connections). It does not test the manager on top.
"""

from __future__ import annotations

import os
import re
import sqlite3
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ContextManager, Iterator

import pytest

from jobcore.errors import RepositoryError
from jobcore.models import JobStatus
from jobcore.repository import MemoryRepository, SQLiteRepository
from jobcore.repository.base import JobRepository
from jobcore.repository import sqlite_queue
from jobcore.repository import sqlite_schema as schema
from jobcore.repository import sqlite_sql, sqlite_transition_sql
from jobcore.testing.contract import NOW, RepositoryContract, claim_race, make_record
from jobcore.testing.contract.reading import _ReadingContract
from dead_letter_order import fail_late_then_early
from raw_db import raw_db
from recovery_checks import check_entries_with_and_without_a_lease

# The SQLite statements whose plans these tests check, by name, from the two modules that hold
# them (reads and upkeep; a job's own path).
sql = SimpleNamespace(**{name: value for module in (sqlite_sql, sqlite_transition_sql)
                         for name, value in vars(module).items() if name.isupper()})


class TestSQLiteRepository(RepositoryContract):
    @pytest.fixture
    def repository(self, tmp_path: Path) -> Iterator[SQLiteRepository]:
        repo = SQLiteRepository(tmp_path / "jobs.db")
        yield repo
        repo.close()


class TestMemoryRepository(RepositoryContract):
    @pytest.fixture
    def repository(self) -> Iterator[MemoryRepository]:
        repo = MemoryRepository()
        yield repo
        repo.close()

    def test_arguments_are_kept_as_the_python_objects_given(self, repository: MemoryRepository) -> None:
        handle = object()
        record = make_record(args=(handle,))
        repository.insert([record], NOW)
        assert repository.persistent is False
        stored = repository.get(record.id)
        assert stored is not None and stored.args[0] is handle


class _DeadLettersByDefault(MemoryRepository):
    """A backend written before `list_dead_letters`: the interface's defaults serve it."""

    list_dead_letters = JobRepository.list_dead_letters
    list_dead_letters_without_args = JobRepository.list_dead_letters_without_args


def test_a_backend_without_dead_letter_reads_of_its_own_gets_the_same_order() -> None:
    repository = _DeadLettersByDefault()
    try:
        _ReadingContract().test_dead_letters_are_the_failed_jobs_most_recently_failed_first(repository)
    finally:
        repository.close()


# -- SQLite only -------------------------------------------------------------------------
@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "jobs.db")


@pytest.fixture
def repo(path: str) -> Iterator[SQLiteRepository]:
    repository = SQLiteRepository(path)
    yield repository
    repository.close()


def _raw(path: str) -> ContextManager[sqlite3.Connection]:
    """A plain connection, as another program (or a corrupting disk) would have, closed
    after the `with` block (autocommit: each statement commits by itself)."""
    return raw_db(path, isolation_level=None)


def test_the_database_is_in_wal_mode(repo: SQLiteRepository, path: str) -> None:
    with _raw(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize(("durability", "synchronous"), [("normal", 1), ("full", 2)])
def test_synchronous_follows_durability(path: str, durability: str, synchronous: int) -> None:
    repository = SQLiteRepository(path, durability=durability)
    try:
        # synchronous is per connection: ask the repository's own (private) one.
        assert repository._connection().execute("PRAGMA synchronous").fetchone()[0] == synchronous
    finally:
        repository.close()


def test_an_unknown_durability_or_memory_path_is_refused(path: str) -> None:
    with pytest.raises(ValueError, match="durability"):
        SQLiteRepository(path, durability="paranoid")
    with pytest.raises(ValueError, match="MemoryRepository"):
        SQLiteRepository(":memory:")
    assert not os.path.exists(path)


def test_the_schema_version_is_stored(repo: SQLiteRepository, path: str) -> None:
    with _raw(path) as conn:
        row = conn.execute("SELECT value FROM jobcore_meta WHERE key = 'schema_version'").fetchone()
    assert row == (str(schema.SCHEMA_VERSION),)


def test_a_version_3_database_gets_jobs_status_without_the_ready_pending_jobs(path: str) -> None:
    # given a database as version 3 left it (jobs_status over every row), holding a pending
    # job, one waiting on it, and a completed one
    repo = SQLiteRepository(path)
    first = make_record()
    waiting = make_record(depends_on=(first.id,))
    done = make_record()
    repo.insert([first, waiting, done], NOW)
    claimed = repo.claim(done.id, "w1", NOW, NOW + 30)
    assert claimed is not None and repo.complete(done.id, "w1", claimed.attempts, None, NOW) is not None
    repo.close()
    with _raw(path) as conn:
        conn.executescript("""
            DROP INDEX jobs_status;
            CREATE INDEX jobs_status ON jobs (status, seq);
            UPDATE jobcore_meta SET value = '3' WHERE key = 'schema_version';
        """)
    # when this version opens it
    repo = SQLiteRepository(path)
    # then jobs_status leaves the ready pending jobs out, the version is the current one,
    # and the jobs are counted and listed as before
    with _raw(path) as conn:
        definition = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'jobs_status'").fetchone()[0]
        version = conn.execute("SELECT value FROM jobcore_meta WHERE key = 'schema_version'").fetchone()
    assert "blocked <> 0" in definition and version == (str(schema.SCHEMA_VERSION),)
    counts = repo.count_by_status()
    assert (counts[JobStatus.PENDING], counts[JobStatus.COMPLETED]) == (2, 1)
    assert [r.id for r in repo.list(status=JobStatus.PENDING)] == [waiting.id, first.id]
    assert [r.id for r in repo.list(status=JobStatus.COMPLETED)] == [done.id]
    assert repo.delete_finished(None) == 1
    repo.close()


def test_a_version_4_database_gets_worker_leases_keeping_its_entries(path: str) -> None:
    # given a database as version 4 left it (no lease in worker entries), with an entry
    SQLiteRepository(path).close()
    with _raw(path) as conn:
        conn.executescript("""
            ALTER TABLE jobcore_workers DROP COLUMN lease_timeout;
            INSERT INTO jobcore_workers (worker_id, host, pid, started_at, heartbeat_at, running)
                VALUES ('old', 'host-a', 101, 1000000.0, 1000000.0, '[]');
            UPDATE jobcore_meta SET value = '4' WHERE key = 'schema_version';
        """)
    # when this version opens it
    repo = SQLiteRepository(path)
    try:
        # then the old entry has no lease of its own, a new one records its lease, and
        # each is reaped by its own (the old one by the reaper's)
        check_entries_with_and_without_a_lease(repo)
    finally:
        repo.close()
    with _raw(path) as conn:
        version = conn.execute("SELECT value FROM jobcore_meta WHERE key = 'schema_version'").fetchone()
    assert version == (str(schema.SCHEMA_VERSION),)


def test_a_version_5_database_gets_the_dead_letter_index_keeping_its_order(path: str) -> None:
    # given a database as version 5 left it (no index of failed jobs by finish time),
    # holding a job that failed last but was enqueued first, and one that failed first
    repo = SQLiteRepository(path)
    late, early = fail_late_then_early(repo)
    repo.close()
    with _raw(path) as conn:
        conn.executescript("""
            DROP INDEX jobs_failed;
            UPDATE jobcore_meta SET value = '5' WHERE key = 'schema_version';
        """)
    # when this version opens it
    repo = SQLiteRepository(path)
    try:
        # then the index is there, the version is the current one, and the dead-letter
        # queue is read from it, the most recently failed first
        with _raw(path) as conn:
            definition = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'jobs_failed'").fetchone()
            version = conn.execute("SELECT value FROM jobcore_meta WHERE key = 'schema_version'").fetchone()
        assert definition is not None and "status = 'failed'" in definition[0]
        assert version == (str(schema.SCHEMA_VERSION),)
        assert [r.id for r in repo.list_dead_letters()] == [late.id, early.id]
    finally:
        repo.close()


def test_a_newer_schema_version_is_refused_and_left_alone(path: str) -> None:
    # given a database written by a newer jobcore
    SQLiteRepository(path).close()
    newer = str(schema.SCHEMA_VERSION + 1)
    with _raw(path) as conn:
        conn.execute("UPDATE jobcore_meta SET value = ? WHERE key = 'schema_version'", (newer,))
    # when this jobcore opens it, then a clear error, and the version is not downgraded
    with pytest.raises(RepositoryError, match="newer"):
        SQLiteRepository(path)
    with _raw(path) as conn:
        assert conn.execute("SELECT value FROM jobcore_meta").fetchone() == (newer,)


def test_a_newer_schema_with_reshaped_tables_is_refused_as_newer(path: str) -> None:
    # given a newer jobcore's database whose jobs table this version cannot index
    with _raw(path) as conn:
        conn.execute("CREATE TABLE jobcore_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute("INSERT INTO jobcore_meta VALUES ('schema_version', ?)", (str(schema.SCHEMA_VERSION + 1),))
        conn.execute("CREATE TABLE jobs (seq INTEGER PRIMARY KEY, id TEXT, state TEXT)")
    # then the error says why (a newer schema), not which column is missing
    with pytest.raises(RepositoryError, match="newer"):
        SQLiteRepository(path)


def test_a_file_that_is_not_a_database_is_refused(path: str) -> None:
    garbage = b"this is not a database, it is a shopping list\n" * 200
    Path(path).write_bytes(garbage)
    with pytest.raises(RepositoryError, match="not a jobcore database"):
        SQLiteRepository(path)
    assert Path(path).read_bytes() == garbage


def test_jobs_survive_closing_and_reopening(path: str) -> None:
    # given jobs written, run and logged, then the repository closed
    first = SQLiteRepository(path)
    done, waiting = make_record(args=(1, "a"), tags=frozenset({"t"})), make_record(priority=9)
    first.insert([done, waiting], NOW)
    first.claim(done.id, "w1", NOW, NOW + 30)
    first.complete(done.id, "w1", 1, {"answer": 42}, NOW + 1, note="attempt 1 completed")
    first.close()
    with pytest.raises(RepositoryError, match="closed"):
        first.get(done.id)
    # when it is opened again
    second = SQLiteRepository(path)
    try:
        # then everything is there, and new jobs still queue behind the old ones
        stored = second.get(done.id)
        assert stored is not None
        assert (stored.status, stored.result, stored.args, stored.tags) == (
            JobStatus.COMPLETED, {"answer": 42}, (1, "a"), frozenset({"t"}))
        assert second.logs(done.id) == [(NOW + 1, "info", "attempt 1 completed")]
        newcomer = make_record(priority=9)
        second.insert([newcomer], NOW + 2)
        assert [e.job_id for e in second.ready(None, 10)] == [waiting.id, newcomer.id]
    finally:
        second.close()


def test_two_repositories_on_one_file_see_each_others_writes(path: str) -> None:
    one, two = SQLiteRepository(path), SQLiteRepository(path)
    try:
        job = make_record()
        one.insert([job], NOW)
        assert [e.job_id for e in two.ready(None, 10)] == [job.id]
        assert two.claim(job.id, "w2", NOW, NOW + 30) is not None
        assert one.claim(job.id, "w1", NOW, NOW + 30) is None
        assert two.complete(job.id, "w2", 1, "done", NOW + 1) is not None
        stored = one.get(job.id)
        assert stored is not None and (stored.status, stored.result) == (JobStatus.COMPLETED, "done")
    finally:
        one.close()
        two.close()


def test_two_repositories_racing_claim_every_job_exactly_once(path: str) -> None:
    one, two = SQLiteRepository(path), SQLiteRepository(path)
    try:
        inserted, claimed = claim_race(one, [one, two], inserters=4, per_inserter=50)
        assert len(claimed) == len(set(claimed)) == len(inserted) == 200
    finally:
        one.close()
        two.close()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root writes read-only files anyway")
def test_a_read_only_database_refuses_writes_with_a_repository_error(path: str) -> None:
    # given a database holding one job, made read-only
    job = make_record()
    writable = SQLiteRepository(path)
    writable.insert([job], NOW)
    writable.close()
    os.chmod(path, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    try:
        repository = SQLiteRepository(path)
        try:
            # then it can still be read, and a write raises a clear error and changes nothing
            assert repository.get(job.id) is not None
            with pytest.raises(RepositoryError, match="read-only"):
                repository.insert([make_record()], NOW)
            assert sum(repository.count_by_status().values()) == 1
        finally:
            repository.close()
    finally:
        os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)


@pytest.mark.parametrize("garbage", ["{not json", "[1, 2, 3]", b"\xff\xfe\x00binary"],
                         ids=["broken-json", "wrong-shape", "binary"])
def test_an_undecodable_payload_gives_a_record_with_decode_error(repo: SQLiteRepository, path: str,
                                                                 garbage: Any) -> None:
    # given a stored job whose payload was corrupted behind the repository's back
    good, bad = make_record(args=(1,)), make_record(args=(2,))
    repo.insert([good, bad], NOW)
    with _raw(path) as conn:
        conn.execute("UPDATE jobs SET payload = ? WHERE id = ?", (garbage, bad.id))
    # when it is read, then the record says so instead of raising, and others are fine
    stored = repo.get(bad.id)
    assert stored is not None and bad.id in (stored.decode_error or "")
    assert repo.get(good.id).decode_error is None  # type: ignore[union-attr]
    assert {r.id for r in repo.list()} == {good.id, bad.id}
    claimed = repo.claim(bad.id, "w1", NOW, NOW + 30)
    assert claimed is not None and claimed.decode_error is not None


# -- query plans -------------------------------------------------------------------------
_FULL_SCAN = re.compile(r"^SCAN (TABLE )?jobs\b(?! USING)")


def _plan(path: str, query: str) -> list[str]:
    with _raw(path) as conn:
        rows = conn.execute("EXPLAIN QUERY PLAN " + query, (None,) * query.count("?")).fetchall()
    return [row[3] for row in rows]


def _assert_no_full_scan(plan: list[str]) -> None:
    assert not [step for step in plan if _FULL_SCAN.match(step)], plan


def test_the_statuses_wait_reads_are_found_by_id(repo: SQLiteRepository, path: str) -> None:
    # read every few ms while callers wait for jobs another process may settle: each job
    # by the index of ids, never a scan of the table
    plan = _plan(path, sql.SELECT_STATUSES)
    _assert_no_full_scan(plan)
    assert any(re.match(r"^SEARCH (TABLE )?jobs USING (COVERING )?INDEX sqlite_autoindex_jobs_1 \(id=\?\)", step)
               for step in plan), plan


@pytest.mark.parametrize("query,index", [("READY_OF", "jobs_ready"), ("DUE_OF", "jobs_due"),
                                         ("SCHEDULES", "jobs_schedules")])
def test_a_managers_queue_is_read_from_one_range_of_an_index_in_order(repo: SQLiteRepository, path: str,
                                                                       query: str, index: str) -> None:
    plan = _plan(path, getattr(sql, query))
    _assert_no_full_scan(plan)
    assert len(plan) == 1 and index in plan[0], plan
    assert index == "jobs_schedules" or "(function_name=?)" in plan[0], plan


@pytest.mark.parametrize("functions", [1, 3])
def test_claims_by_number_read_one_range_of_the_ready_index_per_function(repo: SQLiteRepository, path: str,
                                                                         functions: int) -> None:
    query, params = sqlite_queue.claim_best([f"f{n}" for n in range(functions)], 4)
    with _raw(path) as conn:
        plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + query, (None,) * (3 + len(params)))]
    steps = [step for step in plan if re.match(r"^(SEARCH|SCAN) (TABLE )?jobs\b", step)]
    ranges = [step for step in steps if "jobs_ready (function_name=?)" in step]
    assert len(ranges) == functions and len(steps) == functions + 1, plan
    # the ranges give seqs, and each claimed row is found by it: the table's own key
    assert all(step in ranges or "INTEGER PRIMARY KEY (rowid=?)" in step for step in steps), plan


def test_asking_which_functions_have_ready_jobs_is_one_seek_into_the_ready_index_each(
        repo: SQLiteRepository, path: str) -> None:
    plan = _plan(path, sql.WITH_READY_JOBS)
    _assert_no_full_scan(plan)
    steps = [step for step in plan if re.match(r"^(SEARCH|SCAN) (TABLE )?jobs\b", step)]
    assert len(steps) == 1 and re.match(r"^SEARCH (TABLE )?jobs USING (COVERING )?INDEX jobs_ready "
                                        r"\(function_name=\?\)", steps[0]), plan


@pytest.mark.parametrize("query", ["CLAIM", "COMPLETE", "COMPLETE_REPORTED", "FAIL_RETRY", "HEARTBEAT",
                                   "RECOVER_EXPIRED", "SELECT_UNFINISHED_BY_KEY", "REQUEUE",
                                   "UNUSABLE_BLOCKED", "FAIL_CORRUPT"])
def test_hot_writes_never_scan_the_whole_jobs_table(repo: SQLiteRepository, path: str, query: str) -> None:
    _assert_no_full_scan(_plan(path, getattr(sql, query)))


@pytest.mark.parametrize("query", ["CLAIM", "CLAIM_MANY", "RELEASE_DEPENDENTS", "CANCEL_DEPENDENTS"])
def test_jobs_are_found_by_id_not_by_walking_every_waiting_job(repo: SQLiteRepository, path: str,
                                                               query: str) -> None:
    plan = _plan(path, getattr(sql, query))
    steps = [step for step in plan if re.match(r"^(SEARCH|SCAN) (TABLE )?jobs\b", step)]
    assert steps and all("(id=?)" in step for step in steps), plan


@pytest.mark.parametrize("query", ["CLAIM_MANY_BY_SEQ", "SELECT_JOBS_BY_SEQS", *[f"HELD_BY_SEQ:{name}" for name in (
    "RELEASE", "COMPLETE", "COMPLETE_REPORTED", "FAIL_RETRY", "FAIL_FINAL", "FINISH_CANCELLED", "UPDATE_PROGRESS")]])
def test_an_exchange_given_seqs_finds_each_row_by_its_key_without_the_id_index(
        repo: SQLiteRepository, path: str, query: str) -> None:
    statement = sql.HELD_BY_SEQ[getattr(sql, query.split(":")[1])] if ":" in query else getattr(sql, query)
    plan = _plan(path, statement)
    steps = [step for step in plan if re.match(r"^(SEARCH|SCAN) (TABLE )?jobs\b", step)]
    assert steps == ["SEARCH jobs USING INTEGER PRIMARY KEY (rowid=?)"], plan


@pytest.mark.parametrize("query", ["LIST_DEAD_LETTERS", "LIST_DEAD_LETTERS_WITHOUT_ARGS"])
def test_the_dead_letter_queue_is_read_in_order_from_its_index_without_sorting(repo: SQLiteRepository,
                                                                              path: str, query: str) -> None:
    # given many failed jobs (the planner chooses by the data it is given, not a rule)
    records = [make_record() for _ in range(300)]
    repo.insert(records, NOW)
    with _raw(path) as conn:
        conn.execute("UPDATE jobs SET status = 'failed', completed_at = seq")
        conn.execute("ANALYZE")
    # when the first page of the dead-letter queue is planned, then it walks jobs_failed
    # backwards and stops after the page: no sort of every failed job
    plan = _plan(path, getattr(sql, query))
    # (beside the lookup of a long list of dependencies kept apart, by its key, per row read)
    assert plan == ["SCAN jobs USING INDEX jobs_failed", "CORRELATED SCALAR SUBQUERY 1",
                    "SEARCH l USING INDEX sqlite_autoindex_job_dep_lists_1 (job_id=?)"], plan
    assert [r.id for r in repo.list_dead_letters(2)] == [records[-1].id, records[-2].id]


def test_counting_reads_each_status_as_a_range_and_the_total_from_index_pages(repo: SQLiteRepository,
                                                                              path: str) -> None:
    # The total is SQLite's whole-table count (the Count opcode: an index's pages, not its
    # entries); the ready pending jobs are the entries of jobs_ready, and every other status
    # (and the pending jobs waiting on dependencies) a range of jobs_status. 'completed' is
    # counted too: the rest of the total are statuses jobcore never writes (read as failed).
    plan = _plan(path, sql.COUNT_BY_STATUS)
    _assert_no_full_scan(plan)
    searches = [step for step in plan if step.startswith("SEARCH jobs")]
    assert len(searches) == 6 and all("jobs_status (status=?)" in step for step in searches), plan
    assert [step for step in plan if step.startswith("SCAN jobs USING") and "jobs_ready" in step], plan
    with _raw(path) as conn:
        opcodes = [row[1] for row in conn.execute("EXPLAIN " + sql.COUNT_BY_STATUS)]
    assert opcodes.count("Count") == 1, opcodes


def test_counting_the_queue_reads_only_the_unfinished_jobs_index_entries(repo: SQLiteRepository,
                                                                         path: str) -> None:
    # The ready pending jobs are the entries of jobs_ready, those waiting on dependencies
    # and the scheduled ones a range of jobs_status each: no whole-table count (the Count
    # opcode reads every page of an index) and no range of finished jobs.
    plan = _plan(path, sql.COUNT_QUEUED)
    _assert_no_full_scan(plan)
    searches = [step for step in plan if step.startswith("SEARCH jobs")]
    assert len(searches) == 2 and all("jobs_status (status=?)" in step for step in searches), plan
    assert [step for step in plan if step.startswith("SCAN jobs USING") and "jobs_ready" in step], plan
    with _raw(path) as conn:
        opcodes = [row[1] for row in conn.execute("EXPLAIN " + sql.COUNT_QUEUED)]
    assert "Count" not in opcodes, opcodes


@pytest.mark.parametrize(("column", "sql_value"), [
    ("status", "'PENDING'"), ("status", "'weird'"), ("status", "'scheduled '"), ("blocked", "'x'"),
    ("blocked", "-1"), ("blocked", "2.5"), ("run_at", "'soon'")])
def test_the_queue_count_agrees_with_the_status_counts_on_hand_edited_rows(
        repo: SQLiteRepository, path: str, column: str, sql_value: str) -> None:
    # given a ready job, a scheduled one, a finished one, and a pending and a scheduled job
    # whose rows were edited by hand
    ready, scheduled = make_record(), make_record(status=JobStatus.SCHEDULED, run_at=NOW + 60)
    done = make_record()
    edited = [make_record(), make_record(status=JobStatus.SCHEDULED, run_at=NOW + 60)]
    repo.insert([ready, scheduled, done, *edited], NOW)
    claimed = repo.claim(done.id, "w1", NOW, NOW + 30)
    assert claimed is not None and repo.complete(done.id, "w1", claimed.attempts, None, NOW) is not None
    with _raw(path) as conn:
        for record in edited:
            conn.execute(f"UPDATE jobs SET {column} = {sql_value} WHERE id = ?", (record.id,))
    # then count_queued gives what count_by_status counts as pending and scheduled
    counts = repo.count_by_status()
    assert repo.count_queued() == counts[JobStatus.PENDING] + counts[JobStatus.SCHEDULED], counts
    assert sum(counts.values()) == 5


def test_deleting_finished_jobs_reads_a_range_of_jobs_status_and_their_logs_and_links_by_index(
        repo: SQLiteRepository, path: str) -> None:
    for query in sql.FINISHED_SEQS.values():
        plan = _plan(path, query)
        _assert_no_full_scan(plan)
        assert len([step for step in plan if "jobs_status (status=? AND seq>?)" in step]) == 1, plan
        assert not [step for step in plan if "TEMP B-TREE" in step], plan
    for query in sql.DELETE_FINISHED.values():  # each job deleted found by its seq
        plan = _plan(path, query)
        _assert_no_full_scan(plan)
        assert [step for step in plan if step.startswith("SEARCH jobs") and "rowid=?" in step], plan
    for query in (sql.DELETE_LOGS, sql.DELETE_DEPS):
        plan = _plan(path, query)
        assert not [step for step in plan if step.startswith("SCAN job")], plan


def test_cleanup_deletes_a_chunk_a_transaction_and_everything_of_each_job(repo: SQLiteRepository,
                                                                           path: str, monkeypatch: Any) -> None:
    # given finished jobs of every terminal status, with logs and dependency links, more
    # than a chunk of them: one transaction deleted them all, holding every other writer
    # (in every process) for seconds at a million jobs
    import jobcore.repository.sqlite_upkeep as upkeep_module
    monkeypatch.setattr(upkeep_module, "DELETE_CHUNK", 3)
    pauses: list[float] = []
    monkeypatch.setattr(upkeep_module, "_pause", pauses.append)
    parent = make_record()
    repo.insert([parent], NOW)
    children = [make_record(depends_on=(parent.id,)) for _ in range(4)]
    repo.insert(children, NOW)
    done = [make_record() for _ in range(7)]
    repo.insert(done, NOW)
    for record in (parent, *done):
        claimed = repo.claim(record.id, "w1", NOW, NOW + 30)
        assert claimed is not None
        if record is done[0]:
            assert repo.fail(record.id, "w1", claimed.attempts, error="boom", error_type="E", traceback=None,
                             now=NOW + 1, retry_at=None) is not None
        else:
            assert repo.complete(record.id, "w1", claimed.attempts, None, NOW + 1) is not None
        repo.add_log(record.id, "info", "a line", NOW + 1)
    for child in children[:2]:
        repo.cancel(child.id, NOW + 2, "no")
    commits: list[int] = []
    original = repo._db._committed
    monkeypatch.setattr(repo._db, "_committed", lambda: (commits.append(1), original())[1])
    # when every finished job is deleted, 3 a transaction
    assert repo.delete_finished(None) == 10
    # then it took several transactions, each full one followed by a pause as long as it
    # (the write lock taken back at once left other writers waiting through the whole purge),
    # and left no log line or link of theirs
    assert len(commits) >= 4
    assert len(pauses) == 2 and all(pause > 0 for pause in pauses), pauses
    with _raw(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM job_logs").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM job_deps").fetchone()[0] == 0
    assert sorted(r.id for r in repo.list()) == sorted(c.id for c in children[2:])


def test_a_cleanups_pause_is_as_long_as_its_chunk_held_the_lock_not_its_wait_for_it(
        repo: SQLiteRepository, monkeypatch: Any) -> None:
    # given 7 cancelled jobs, deleted 3 a transaction, and a write lock each transaction
    # waits 10 s for (another writer's), on a clock the test moves
    import jobcore.repository.sqlite_upkeep as upkeep_module
    monkeypatch.setattr(upkeep_module, "DELETE_CHUNK", 3)
    records = [make_record() for _ in range(7)]
    repo.insert(records, NOW)
    for record in records:
        repo.cancel(record.id, NOW, "no")
    now = [0.0]
    monkeypatch.setattr(upkeep_module, "real_monotonic", lambda: now[0])
    take = repo._db._take_write_lock

    def waited() -> Any:
        now[0] += 10.0
        return take()

    monkeypatch.setattr(repo._db, "_take_write_lock", waited)
    pauses: list[float] = []
    monkeypatch.setattr(upkeep_module, "_pause", pauses.append)
    # when they are deleted
    assert repo.delete_finished(None) == 7
    # then each pause after a full chunk was the time the chunk held the lock (none on
    # this clock), not that and its wait (it slept as long as it had waited, up to 30 s)
    assert pauses == [0.0, 0.0]


def test_a_cleanup_that_finds_nothing_to_delete_writes_nothing(repo: SQLiteRepository, monkeypatch: Any) -> None:
    # given jobs of every terminal status, all finished after the cutoff: reading them in a
    # write transaction held every other writer (in every process) while it read the whole
    # history (100 ms at 700,000 jobs kept), for nothing
    records = [make_record() for _ in range(3)]
    repo.insert(records, NOW)
    for record, end in zip(records, ("complete", "fail", "cancel")):
        if end == "cancel":
            repo.cancel(record.id, NOW + 10, "no")
            continue
        claimed = repo.claim(record.id, "w1", NOW, NOW + 30)
        assert claimed is not None
        if end == "fail":
            repo.fail(record.id, "w1", claimed.attempts, error="boom", error_type="E", traceback=None,
                      now=NOW + 10, retry_at=None)
        else:
            repo.complete(record.id, "w1", claimed.attempts, None, NOW + 10)
    begun: list[int] = []
    original = repo._db.write
    monkeypatch.setattr(repo._db, "write", lambda *args: (begun.append(1), original(*args))[1])
    # when the jobs finished before a time before theirs are deleted
    assert repo.delete_finished(NOW + 5) == 0
    # then no write transaction was begun; and those before a later time are deleted
    assert begun == []
    assert repo.delete_finished(NOW + 11) == 3 and begun and repo.list() == []


def _frames_written(path: str, write: Any) -> int:
    """How many pages (WAL frames) `write()` commits to a database whose WAL was emptied."""
    with _raw(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        write()
        return conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]


def test_a_new_plain_job_enters_only_the_table_its_id_index_and_jobs_ready(repo: SQLiteRepository,
                                                                            path: str) -> None:
    # given an empty store (each table and index one page), then one plain pending job
    # when it is stored
    frames = _frames_written(path, lambda: repo.insert([make_record()], NOW))
    # then its commit wrote three pages: jobs_status holds no plain pending job
    assert frames == 3
    # and a job waiting on another enters jobs_status too (counted and listed from there)
    waiting = make_record(depends_on=(repo.list()[0].id,))
    assert _frames_written(path, lambda: repo.insert([waiting], NOW)) > 3


# -- the suite catches what it promises to --------------------------------------------------
class RecoverRequeuesCancelled(MemoryRepository):
    """A backend whose recovery forgets cancel requests: a lapsed job whose cancel() returned
    True is re-queued and runs again."""

    def recover(self, now: float) -> Any:
        with self._lock:
            for row in self._by_status[JobStatus.RUNNING].values():
                row.cancel_requested = False
            return super().recover(now)


class RequeueRevivesSchedules(MemoryRepository):
    """A backend whose requeue makes a cancelled cron schedule PENDING, as any cancelled job."""

    def requeue(self, job_id: str, now: float) -> Any:
        with self._lock:
            row = self._jobs.get(job_id)
            if row is not None and row.is_schedule and row.status is JobStatus.CANCELLED:
                self._set_status(row, JobStatus.PENDING)
                return row.queue_entry()
        return super().requeue(job_id, now)


@pytest.mark.parametrize(("backend", "test"), [
    (RecoverRequeuesCancelled, "test_recovery_ends_a_lapsed_job_cancelled_once_its_cancellation_was_requested"),
    (RecoverRequeuesCancelled, "test_recover_reports_what_it_ended_and_expire_worker_ends_leases_at_once"),
    (RequeueRevivesSchedules, "test_requeue_leaves_an_ended_schedule_ended"),
])
def test_the_contract_suite_fails_a_backend_that_breaks_its_promise(backend: type, test: str) -> None:
    repository = backend()
    try:
        with pytest.raises(AssertionError):
            getattr(RepositoryContract(), test)(repository)
    finally:
        repository.close()
