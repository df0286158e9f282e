"""`PostgresRepository` on a real server: the repository contract and what only PostgreSQL
promises. Managers and worker processes on PostgreSQL: test_postgres_managers.py.

The server is `$JOBCORE_TEST_PG_DSN` (CI starts one with `.ci/postgres.sh`) or a
throwaway cluster started here (`pg_server`). Each test gets a schema of its own, dropped
afterwards (`pg_fixtures`). Without any PostgreSQL binaries the tests skip, loudly; under
CI they fail instead, since CI must run them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import secrets
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Iterator

import pytest

import pg_fixtures
from pg_fixtures import *  # noqa: F401,F403 (the fixtures: server, schema, repo)
from pg_fixtures import ROOT, WAIT, Schema, psycopg
from jobcore import JobStatus
from jobcore.errors import RepositoryError
from jobcore.repository.base import Cascade, CancelOutcome, JobRecord, Settlement
from jobcore.testing.contract import NOW, RepositoryContract, claim_race, make_record
from dead_letter_order import fail_late_then_early
from waiting import wait_until
from recovery_checks import check_entries_with_and_without_a_lease

try:
    from jobcore.postgres import PostgresRepository
    from jobcore.postgres.queries import Statements
    from jobcore.postgres.schema import SCHEMA_VERSION
except ImportError:  # the extra is not installed: pg_fixtures.MARKS skips (or fails in CI)
    pass

pytestmark = pg_fixtures.MARKS


class TestPostgresRepository(RepositoryContract):
    """The whole repository contract, on a real server."""

    @pytest.fixture
    def repository(self, schema: Schema) -> Iterator["PostgresRepository"]:
        repository = schema.repository()
        yield repository
        repository.close()


# -- what only PostgreSQL promises -----------------------------------------------------------
def test_importing_jobcore_never_imports_psycopg() -> None:
    code = ("import sys, jobcore, jobcore.testing, jobcore.cli, jobcore.dashboard\n"
            "print(sorted(m for m in sys.modules if m.startswith(('psycopg', 'jobcore.postgres'))))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, "[]"), done.stderr


def test_tables_live_in_their_schema_with_a_version(repo: "PostgresRepository", schema: Schema) -> None:
    with psycopg.connect(schema.server) as conn:
        tables = {row[0] for row in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema.name,))}
        version = conn.execute(f'SELECT value FROM "{schema.name}".jobcore_meta'
                               " WHERE key = 'schema_version'").fetchone()
    assert tables == {"jobs", "job_deps", "job_logs", "jobcore_workers", "jobcore_meta"}
    assert version == (str(SCHEMA_VERSION),)


def test_a_version_1_schema_is_migrated_in_place_keeping_its_jobs(repo: "PostgresRepository",
                                                                  schema: Schema) -> None:
    # given a schema as jobcore's first PostgreSQL version left it, holding a job
    kept = make_record()
    repo.insert([kept], NOW)
    with psycopg.connect(schema.server, autocommit=True) as conn:
        conn.execute(f'ALTER TABLE "{schema.name}".jobs DROP COLUMN memory_limit')
        conn.execute(f"UPDATE \"{schema.name}\".jobcore_meta SET value = '1'")
    # when this version opens it
    migrated = schema.repository()
    try:
        # then it is at this version, the job is still there, and the new field is stored
        capped = make_record(memory_limit=64 * 1024 * 1024)
        migrated.insert([capped], NOW)
        assert migrated.get(kept.id) is not None
        assert migrated.get(capped.id).memory_limit == 64 * 1024 * 1024  # type: ignore[union-attr]
    finally:
        migrated.close()
    with psycopg.connect(schema.server) as conn:
        assert conn.execute(f'SELECT value FROM "{schema.name}".jobcore_meta').fetchone() == (str(SCHEMA_VERSION),)


def test_a_version_3_schema_gets_worker_leases_keeping_its_entries(repo: "PostgresRepository",
                                                                   schema: Schema) -> None:
    # given a schema as version 3 left it (no lease in worker entries), with an entry
    repo.register_worker("old", "host-a", 101, NOW)
    with psycopg.connect(schema.server, autocommit=True) as conn:
        conn.execute(f'ALTER TABLE "{schema.name}".jobcore_workers DROP COLUMN lease_timeout')
        conn.execute(f"UPDATE \"{schema.name}\".jobcore_meta SET value = '3'")
    # when this version opens it
    migrated = schema.repository()
    try:
        # then the old entry has no lease of its own, a new one records its lease, and
        # each is reaped by its own (the old one by the reaper's)
        check_entries_with_and_without_a_lease(migrated)
    finally:
        migrated.close()
    with psycopg.connect(schema.server) as conn:
        assert conn.execute(f'SELECT value FROM "{schema.name}".jobcore_meta').fetchone() == (str(SCHEMA_VERSION),)


def test_a_version_2_schema_gets_the_queue_indexes_led_by_function_name(repo: "PostgresRepository",
                                                                        schema: Schema) -> None:
    # given a schema as version 2 left it (the queue indexes in one order for every
    # function), holding a ready job
    kept = make_record()
    repo.insert([kept], NOW)
    with psycopg.connect(schema.server, autocommit=True) as conn:
        s = f'"{schema.name}"'
        conn.execute(f"DROP INDEX {s}.jobs_ready")
        conn.execute(f"DROP INDEX {s}.jobs_due")
        conn.execute(f"DROP INDEX {s}.jobs_schedules")
        conn.execute(f"CREATE INDEX jobs_ready ON {s}.jobs (priority DESC, seq) WHERE status = 'pending' AND blocked = 0")
        conn.execute(f"CREATE INDEX jobs_due ON {s}.jobs (run_at, seq) WHERE status = 'scheduled'")
        conn.execute(f"UPDATE {s}.jobcore_meta SET value = '2'")
    # when this version opens it
    migrated = schema.repository()
    try:
        # then the indexes are led by function_name and the job is read from them
        assert [entry.job_id for entry in migrated.ready({"tests.task"}, 10)] == [kept.id]
    finally:
        migrated.close()
    definitions = _migrated_index_definitions(schema)
    assert "(function_name, priority DESC, seq)" in definitions["jobs_ready"]
    assert "(function_name, run_at, seq)" in definitions["jobs_due"]
    assert "cron IS NOT NULL" in definitions["jobs_schedules"]


def _migrated_index_definitions(schema: Schema) -> dict[str, str]:
    """The schema's index definitions by name, once it is at this version's SCHEMA_VERSION."""
    with psycopg.connect(schema.server) as conn:
        definitions = dict(conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s",
                                        (schema.name,)).fetchall())
        assert conn.execute(f'SELECT value FROM "{schema.name}".jobcore_meta').fetchone() == (str(SCHEMA_VERSION),)
    return definitions


def test_a_version_4_schema_gets_the_dead_letter_index_keeping_its_order(repo: "PostgresRepository",
                                                                        schema: Schema) -> None:
    # given a schema as version 4 left it (no index of failed jobs by finish time), holding
    # a job that failed last but was enqueued first, and one that failed first
    late, early = fail_late_then_early(repo)
    schema.back_to_version_4()
    # when this version opens it
    migrated = schema.repository()
    try:
        # then the index is there and the dead-letter queue is the most recently failed first
        assert [r.id for r in migrated.list_dead_letters()] == [late.id, early.id]
    finally:
        migrated.close()
    definitions = _migrated_index_definitions(schema)
    assert "(completed_at DESC NULLS LAST, seq DESC)" in definitions["jobs_failed"]
    assert "'failed'" in definitions["jobs_failed"]


def test_every_field_of_a_record_is_stored(repo: "PostgresRepository") -> None:
    # A field added to JobRecord must be added here, and to the table, or this fails.
    values: dict[str, Any] = dict(
        function_name="tests.f", name="n", args=(1, "two", [3]), kwargs={"k": {"v": None}}, priority=-7,
        status=JobStatus.SCHEDULED, scheduled_at=NOW + 5, run_at=NOW + 6, max_retries=9,
        retry_delay=0.25, retry_backoff=3.0, retry_jitter=False, timeout=12.5, tags=frozenset({"a", "b"}),
        metadata={"m": [1]}, owner="alice", unique_key="u", isolation="process", memory_limit=1 << 30,
        cron=None, cron_timezone=None)
    derived = {"id", "seq", "created_at", "started_at", "completed_at", "attempts", "depends_on", "blocked",
               "progress", "progress_message", "progress_details", "result", "error", "error_type",
               "traceback", "worker_id", "lease_expires_at", "cancel_requested", "decode_error"}
    assert {f.name for f in dataclasses.fields(JobRecord)} == set(values) | derived
    record = make_record(**values)
    repo.insert([record], NOW)
    stored = repo.get(record.id)
    assert stored is not None
    assert {name: getattr(stored, name) for name in values} == values


def test_a_bare_dsn_selects_the_schema_through_search_path(schema: Schema) -> None:
    repository = PostgresRepository(schema.dsn)
    try:
        assert repository.schema == schema.name
        record = make_record()
        repository.insert([record], NOW)
    finally:
        repository.close()
    other = schema.repository()
    try:
        assert other.get(record.id) is not None
    finally:
        other.close()


def test_opening_is_idempotent_even_from_many_threads_at_once(schema: Schema) -> None:
    opened: list[Any] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            opened.append(schema.repository(pool_size=1))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one, name=f"open-{i}") for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    for repository in opened:
        repository.close()
    assert not errors and len(opened) == 6


def test_a_schema_from_a_newer_jobcore_is_refused(repo: "PostgresRepository", schema: Schema) -> None:
    with psycopg.connect(schema.server, autocommit=True) as conn:
        conn.execute(f'UPDATE "{schema.name}".jobcore_meta SET value = %s', ("99",))
    with pytest.raises(RepositoryError, match="version 99"):
        schema.repository()


def test_bad_arguments_are_refused_at_construction(server: str) -> None:
    with pytest.raises(ValueError, match="schema"):
        PostgresRepository(server, schema="bad; DROP TABLE x")
    with pytest.raises(ValueError, match="pool_size"):
        PostgresRepository(server, pool_size=0)
    for bad in (0, math.nan, math.inf, 2**31):  # NaN and infinity raised errors naming nothing
        with pytest.raises(ValueError, match="^timeout must be a number of seconds > 0"):
            PostgresRepository(server, timeout=bad)
    with pytest.raises(TypeError, match="dsn"):
        PostgresRepository(None)  # type: ignore[arg-type]


def test_an_unreachable_server_is_a_clear_repository_error() -> None:
    with pytest.raises(RepositoryError, match="PostgreSQL at 127.0.0.1:1/"):
        PostgresRepository("postgresql://nobody@127.0.0.1:1/none", timeout=2)


def test_text_postgresql_cannot_hold_is_escaped_in_outcomes_and_refused_in_jobs(
        repo: "PostgresRepository") -> None:
    # a job whose error carries NUL and a lone surrogate still gets its failure recorded
    job = make_record()
    repo.insert([job], NOW)
    repo.claim(job.id, "w1", NOW, NOW + 30)
    assert repo.fail(job.id, "w1", 1, error="bad\x00byte \ud800", error_type="ValueError",
                     traceback=None, now=NOW, retry_at=None, note="x\x00y") is not None
    stored = repo.get(job.id)
    assert stored is not None and stored.error == "bad\\x00byte \\ud800"
    # a job whose own fields cannot be stored is refused with a ValueError, storing nothing
    with pytest.raises(ValueError):
        repo.insert([make_record(name="nul\x00name")], NOW)
    assert sum(repo.count_by_status().values()) == 1


def test_a_lone_plain_job_is_stored_by_one_statement_as_a_batch_stores_it(repo: "PostgresRepository") -> None:
    # One autocommit INSERT that also notifies (INSERT_ALONE), instead of a transaction.
    options = dict(function_name="tests.f", args=(1, "two"), kwargs={"k": [None]}, priority=3, max_retries=2,
                   retry_jitter=False, timeout=1.5, tags=frozenset({"t"}), metadata={"m": 1})
    alone, first, second = make_record(**options), make_record(**options), make_record(**options)
    before = repo.change_token()
    assert repo.insert([alone], NOW) == [alone.id]
    assert repo.change_token() != before  # its own write moves its token at once
    assert repo.insert([first, second], NOW) == [first.id, second.id]
    assert first.seq < second.seq and alone.seq < first.seq
    ignored = {"id", "seq"}
    rows = [repo.get(record.id) for record in (alone, first)]
    assert rows[0] is not None and rows[1] is not None and rows[0].seq == alone.seq
    shown = [{f.name: getattr(row, f.name) for f in dataclasses.fields(JobRecord) if f.name not in ignored}
             for row in rows]
    assert shown[0] == shown[1]
    for taken in (alone, first):  # the id of a job stored alone, or in a batch
        with pytest.raises(ValueError, match="already exists"):
            repo.insert([make_record(id=taken.id)], NOW + 1)
    assert repo.get(alone.id).created_at == NOW  # type: ignore[union-attr]


def test_a_job_handed_to_an_idle_worker_is_stored_claimed_by_one_statement(
        repo: "PostgresRepository", monkeypatch: pytest.MonkeyPatch) -> None:
    # given a lone plain job with every field a job may carry here, and the statements counted
    real, statements = repo._db._run_once, []

    def counted(query: str, params: Any) -> Any:
        statements.append(query)
        return real(query, params)

    monkeypatch.setattr(repo._db, "_run_once", counted)
    record = make_record(function_name="tests.f", args=(1, "two", [3.5]), kwargs={"k": {"n": None}}, priority=3,
                         max_retries=2, retry_jitter=False, timeout=1.5, tags=frozenset({"t"}), metadata={"m": [1]})
    before = repo.change_token()
    # when it is stored claimed for a worker (insert_claimed: an enqueue's hand-off)
    job_id, claimed = repo.insert_claimed(record, "w1", NOW, NOW + 60)
    # then one statement stored it running, as a claim would have returned it, and told no one
    assert len(statements) == 1 and statements[0].lstrip().startswith("INSERT")
    assert job_id == record.id and claimed is not None
    stored = repo.get(job_id)
    assert stored is not None
    assert {f.name: getattr(claimed, f.name) for f in dataclasses.fields(JobRecord)} == {
        f.name: getattr(stored, f.name) for f in dataclasses.fields(JobRecord)}
    assert (stored.status, stored.attempts, stored.worker_id, stored.started_at, stored.lease_expires_at) == (
        JobStatus.RUNNING, 1, "w1", NOW, NOW + 60)
    assert repo.change_token() == before
    # and an id already taken stores and claims nothing
    with pytest.raises(ValueError, match="already exists"):
        repo.insert_claimed(make_record(id=job_id), "w2", NOW, NOW + 60)
    assert repo.get(job_id).worker_id == "w1"  # type: ignore[union-attr]


def test_a_lone_keyed_job_is_stored_by_one_statement_and_a_held_key_costs_one_read(
        repo: "PostgresRepository", monkeypatch: pytest.MonkeyPatch) -> None:
    # given the statements run on their own and the transactions counted
    real_run, real_transaction = repo._db._run_once, repo._db.transaction
    statements: list[str] = []
    transactions: list[dict[str, Any]] = []

    def counted(query: str, params: Any) -> Any:
        statements.append(query)
        return real_run(query, params)

    def counted_transaction(work: Any, **options: Any) -> Any:
        transactions.append(options)
        return real_transaction(work, **options)

    monkeypatch.setattr(repo._db, "_run_once", counted)
    monkeypatch.setattr(repo._db, "transaction", counted_transaction)
    first = make_record(unique_key="k", priority=2, tags=frozenset({"t"}))
    before = repo.change_token()
    listener, heard = repo._db._listener, repo._db._listener.token()
    # when a job whose key no job holds is stored alone
    assert repo.insert([first], NOW) == [first.id]
    # then one statement stored it and told the other managers (its token moved), no transaction
    assert len(statements) == 1 and statements[0].lstrip().startswith("WITH added AS (INSERT") and transactions == []
    assert repo.change_token() != before
    # (and its notification, which the listener hears too, in its time, was heard)
    wait_until(lambda: listener.token() > heard, WAIT, "the first job's notification to be heard")
    stored = repo.get(first.id)
    assert stored is not None and (stored.seq, stored.unique_key, stored.status) == (first.seq, "k", JobStatus.PENDING)
    # when another job with that key comes while the first is unfinished
    statements.clear()
    before = repo.change_token()
    second = make_record(unique_key="k")
    assert repo.insert([second], NOW + 1) == [first.id]
    # then it stored nothing and told no one; the holder was found by one read
    assert len(statements) == 1 and transactions == [{"generic_plans": True}]
    assert repo.get(second.id) is None and repo.change_token() == before
    # and once the holder ended, the key is free for a job stored by one statement again
    repo.claim(first.id, "w1", NOW, NOW + 30)
    assert repo.fail(first.id, "w1", 1, error="e", error_type="ValueError", traceback=None, now=NOW + 2,
                     retry_at=None) is not None
    statements.clear()
    transactions.clear()
    third = make_record(unique_key="k")
    assert repo.insert([third], NOW + 3) == [third.id] and third.seq > first.seq
    assert len(statements) == 1 and transactions == []
    # and a keyed job whose id is taken stores nothing
    with pytest.raises(ValueError, match="already exists"):
        repo.insert([make_record(id=third.id, unique_key="other")], NOW + 4)
    assert sum(repo.count_by_status().values()) == 2


def test_a_run_of_failures_and_retries_is_recorded_by_a_few_statements_not_three_a_job(
        repo: "PostgresRepository", monkeypatch: pytest.MonkeyPatch) -> None:
    # given six running jobs of one worker, a job waiting on the first, and a cancel
    # requested for the fourth while it runs
    jobs = [make_record() for _ in range(6)]
    repo.insert(jobs, NOW)
    waiting = make_record(depends_on=(jobs[0].id,))
    repo.insert([waiting], NOW)
    _, claimed = repo.apply([], [job.id for job in jobs], "w1", NOW, NOW + 30)
    assert len(claimed) == 6
    assert repo.cancel(jobs[3].id, NOW, "stop")[0] is CancelOutcome.REQUESTED
    # and the statements of the settling transaction counted
    statements: list[str] = []
    real_execute, real_executemany = psycopg.Cursor.execute, psycopg.Cursor.executemany

    def execute(cur: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        statements.append(str(query))
        return real_execute(cur, query, *args, **kwargs)

    def executemany(cur: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        statements.append(str(query))
        return real_executemany(cur, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", execute)
    monkeypatch.setattr(psycopg.Cursor, "executemany", executemany)

    def failed(job: JobRecord, **fields: Any) -> Settlement:
        return Settlement(fields.pop("kind", "fail"), job.id, fields.pop("attempt", 1), error=f"e-{job.id[:4]}",
                          error_type="ValueError", traceback=f"tb-{job.id[:4]}", note=f"note-{job.id[:4]}",
                          **fields)
    settlements = [failed(jobs[0]), failed(jobs[1]), failed(jobs[2], kind="retry", retry_at=NOW + 5),
                   failed(jobs[3], kind="retry", retry_at=NOW + 5), failed(jobs[4], kind="retry"),
                   failed(jobs[5], attempt=2)]
    # when one exchange records them (the fifth a retry with no time: it fails for good;
    # the sixth names an attempt not held)
    cascades, _ = repo.apply(settlements, [], "w1", NOW + 1, NOW + 31)
    monkeypatch.undo()
    # then each is recorded as alone it would be, the dependent of the first cancelled
    assert cascades == [Cascade(cancelled=(waiting.id,)), Cascade(), Cascade(), Cascade(cancelled_instead=True),
                        Cascade(), None]
    rows = {job.id: repo.get(job.id) for job in (*jobs, waiting)}
    shown = {job_id: (row.status, row.error, row.error_type, row.traceback, row.run_at, row.completed_at)
             for job_id, row in rows.items() if row is not None}
    tag = {job.id: job.id[:4] for job in jobs}
    assert shown == {
        jobs[0].id: (JobStatus.FAILED, f"e-{tag[jobs[0].id]}", "ValueError", f"tb-{tag[jobs[0].id]}", None, NOW + 1),
        jobs[1].id: (JobStatus.FAILED, f"e-{tag[jobs[1].id]}", "ValueError", f"tb-{tag[jobs[1].id]}", None, NOW + 1),
        jobs[2].id: (JobStatus.SCHEDULED, f"e-{tag[jobs[2].id]}", "ValueError", f"tb-{tag[jobs[2].id]}", NOW + 5, None),
        jobs[3].id: (JobStatus.CANCELLED, "cancelled while running", "JobCancelled", None, None, NOW + 1),
        jobs[4].id: (JobStatus.FAILED, f"e-{tag[jobs[4].id]}", "ValueError", f"tb-{tag[jobs[4].id]}", None, NOW + 1),
        jobs[5].id: (JobStatus.RUNNING, None, None, None, None, None),
        waiting.id: (JobStatus.CANCELLED, rows[waiting.id].error, "DependencyFailed", None, None, NOW + 1),  # type: ignore[union-attr]
    }
    assert [message for _, _, message in repo.logs(jobs[0].id)] == [f"note-{tag[jobs[0].id]}"]
    assert [message for _, _, message in repo.logs(jobs[3].id)][0].startswith(f"note-{tag[jobs[3].id]}")
    assert repo.logs(jobs[5].id) == []
    # in a few statements, not three for each settlement (the dependent's cancellation aside)
    outcomes = [query for query in statements if "UPDATE" in query and "error_type" in query
                and "DependencyFailed" not in query]
    assert len(outcomes) == 1, statements
    assert sum("job_logs" in query for query in statements) == 1


class _RoundTrips:
    """Counts the round trips of the connections `repository` lends while counting: the
    times the server told the client it was ready for more (libpq's protocol trace)."""

    def __init__(self, repository: "PostgresRepository", monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
        self.trace = open(tmp_path / "protocol.trace", "w+")
        lend = repository._db.pool.connection

        @contextlib.contextmanager
        def traced() -> Iterator[Any]:
            with lend() as conn:
                conn.pgconn.trace(self.trace.fileno())
                try:
                    yield conn
                finally:
                    conn.pgconn.untrace()
        monkeypatch.setattr(repository._db.pool, "connection", traced)

    def count(self) -> int:
        self.trace.flush()
        self.trace.seek(0)
        lines = self.trace.read().splitlines()
        self.trace.seek(0)
        self.trace.truncate()
        return sum(1 for line in lines if "ReadyForQuery" in line)


def test_an_exchange_opens_its_transaction_and_its_settings_in_one_round_trip(
        schema: Schema, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    # given a repository of one connection, three jobs stored, and its round trips counted
    repo = schema.repository(pool_size=1)
    try:
        jobs = [make_record() for _ in range(3)]
        repo.insert(jobs, NOW)
        trips = _RoundTrips(repo, monkeypatch, tmp_path)
        # when a worker claims them (an exchange: a transaction on generic plans)
        _, claimed = repo.apply([], [job.id for job in jobs], "w1", NOW, NOW + 30)
        # then BEGIN and its settings took one round trip, the claim one, COMMIT one
        assert len(claimed) == 3 and trips.count() == 3
        # and the settings ended with it: the connection plans as the server does
        assert repo._db.read("SHOW enable_seqscan") == [("on",)]
        # and a batch refused inside such a transaction stores nothing and leaves the
        # connection usable
        fresh = make_record()
        with pytest.raises(ValueError, match="already exists"):
            repo.insert([fresh, make_record(id=jobs[0].id)], NOW)
        assert repo.get(fresh.id) is None and repo._db.read("SHOW enable_seqscan") == [("on",)]

        # and a unit of work that went on past a failed statement is not committed
        def swallowing(tx: Any) -> str:
            tx.execute(f'INSERT INTO "{schema.name}".job_logs (job_id, at, level, message) VALUES (%s, 1, %s, %s)',
                       (jobs[1].id, "info", "kept?"))
            try:
                tx.execute("SELECT 1 / 0")
            except psycopg.Error:
                pass
            return "done"
        for generic_plans in (True, False):
            with pytest.raises(RepositoryError, match="aborted"):
                repo._db.transaction(swallowing, generic_plans=generic_plans)
        assert repo.logs(jobs[1].id) == [] and repo.get(jobs[2].id) is not None
    finally:
        repo.close()


def test_a_lone_insert_whose_backend_is_ended_mid_statement_runs_again(schema: Schema) -> None:
    # One autocommit statement: its connection broke under it (the server ended the
    # backend while the INSERT waited for a lock) and it was not run again.
    repo = schema.repository()
    locker = psycopg.connect(schema.server, autocommit=False)
    try:
        locker.execute(f'LOCK TABLE "{schema.name}".jobs IN EXCLUSIVE MODE')
        record, done = make_record(), threading.Event()
        outcome: list[Any] = []

        def insert() -> None:
            try:
                outcome.append(repo.insert([record], NOW))
            except Exception as exc:  # shown by the assertion below
                outcome.append(exc)
            done.set()

        thread = threading.Thread(target=insert)
        thread.start()
        _wait_until_blocked_by(locker, locker.info.backend_pid, thread)
        with psycopg.connect(schema.server, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                          (locker.info.backend_pid,))
        locker.rollback()
        assert done.wait(WAIT)
        thread.join()
        assert outcome == [[record.id]]
        stored = repo.get(record.id)
        assert stored is not None and stored.seq == record.seq
    finally:
        locker.close()
        repo.close()


def test_a_lone_insert_run_again_after_it_committed_finds_its_own_row(repo: "PostgresRepository",
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # The connection breaking after the first run committed: the second run finds the id
    # taken, by this very job, so the insert succeeds; by another job, it is refused.
    from jobcore.postgres import database
    real = repo._db._run_once
    breaks = [True, True]

    def commit_then_break(query: str, params: Any) -> Any:
        result = real(query, params)
        if "INSERT" in query and breaks and breaks.pop():
            raise database._ConnectionLost(psycopg.OperationalError("server closed the connection unexpectedly"))
        return result

    monkeypatch.setattr(repo._db, "_run_once", commit_then_break)
    record = make_record(args=(1,))
    assert repo.insert([record], NOW) == [record.id]
    assert repo.get(record.id).seq == record.seq  # type: ignore[union-attr]
    breaks.append(True)
    with pytest.raises(ValueError, match="already exists"):  # another job given that id
        repo.insert([make_record(id=record.id, args=(2,))], NOW)


@pytest.mark.parametrize("field", ["id", "unique_key", "owner", "function_name"])
def test_a_value_too_long_for_its_index_is_an_invalid_job_naming_it(repo: "PostgresRepository", field: str) -> None:
    # It was "the server cannot be reached or the connection broke" (an index row past
    # the B-tree's 2,704 bytes is an OperationalError in psycopg). Past 8,191 bytes the
    # server names no index ("index row requires ..."): that was a RepositoryError.
    for size in (3000, 20_000):  # (random: PostgreSQL compresses)
        with pytest.raises(ValueError, match=f"Job.{field}: is too long for PostgreSQL's index"):
            repo.insert([make_record(**{field: secrets.token_urlsafe(size)})], NOW)
        if field != "function_name":  # (indexed only while the job waits to run)
            with pytest.raises(ValueError, match=f"Job.{field}: is too long for PostgreSQL's index"):
                repo.insert_claimed(make_record(**{field: secrets.token_urlsafe(size)}), "w", NOW, NOW + 60)
    assert repo.count_by_status()[JobStatus.PENDING] == 0
    from jobcore.postgres.pool import translate
    timeout = translate(psycopg.errors.QueryCanceled("canceling statement due to statement timeout"), "db")
    assert "QueryCanceled" in str(timeout) and "connection broke" not in str(timeout)


def test_the_change_token_hears_commits_of_other_connections(schema: Schema) -> None:
    listener, writer = schema.repository(), schema.repository()
    try:
        before = listener.change_token()
        assert listener.change_token() == before
        writer.insert([make_record()], NOW)
        deadline = time.monotonic() + 5
        while listener.change_token() == before and time.monotonic() < deadline:
            time.sleep(0.005)
        assert listener.change_token() != before
    finally:
        listener.close()
        writer.close()


def test_a_listening_connection_that_cannot_listen_is_closed(schema: Schema, monkeypatch: Any) -> None:
    # given a repository whose LISTEN the server refuses (a channel name it cannot parse)
    import jobcore.postgres.listener
    monkeypatch.setattr(jobcore.postgres.listener, "CHANNEL", "no such channel")
    repo = schema.repository()
    opened: list[Any] = []
    connect = repo._db.pool.connect
    monkeypatch.setattr(repo._db.pool, "connect", lambda: opened.append(connect()) or opened[-1])
    try:
        # when it is asked for its change token, then it has none to give, and the
        # connection it opened for it was closed, not left open on the server
        before = repo.change_token()
        assert len(opened) == 1 and opened[0].closed
        assert repo.change_token() == before
    finally:
        repo.close()


def test_claims_race_across_connections_and_every_job_is_claimed_once(schema: Schema) -> None:
    repos = [schema.repository(pool_size=4) for _ in range(3)]
    try:
        inserted, claimed = claim_race(repos[0], repos[1:], inserters=4, per_inserter=100, claimers=4)
        assert len(claimed) == len(set(claimed)) == len(inserted) == 400
    finally:
        for repository in repos:
            repository.close()


def _race(first: Callable[[], Any], second: Callable[[], Any]) -> None:
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(step: Callable[[], Any]) -> None:
        try:
            start.wait(WAIT)
            step()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(step,), name=f"race-{i}") for i, step in enumerate((first, second))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert not errors, errors


@pytest.mark.parametrize("ending", ["complete", "fail"])
def test_a_dependency_ending_while_its_dependent_is_inserted_never_strands_it(
        schema: Schema, ending: str) -> None:
    # given two connections: one ends a running job while the other adds a job depending on it
    writer, ender = schema.repository(), schema.repository()
    try:
        for _ in range(30):
            parent = make_record()
            writer.insert([parent], NOW)
            ender.claim(parent.id, "w1", NOW, NOW + 30)
            child = make_record(depends_on=(parent.id,))
            if ending == "complete":
                end = lambda: ender.complete(parent.id, "w1", 1, None, NOW)  # noqa: E731
            else:
                end = lambda: ender.fail(parent.id, "w1", 1, error="x", error_type="E",  # noqa: E731
                                         traceback=None, now=NOW, retry_at=None)
            _race(lambda: writer.insert([child], NOW), end)
            # then the child is never left waiting on a dependency that already ended
            stored = writer.get(child.id)
            assert stored is not None
            if ending == "complete":
                assert (stored.status, stored.blocked) == (JobStatus.PENDING, 0)
            else:
                assert stored.status is JobStatus.CANCELLED
    finally:
        writer.close()
        ender.close()


def _finished_job(repo: "PostgresRepository") -> str:
    record = make_record()
    repo.insert([record], NOW)
    assert repo.claim(record.id, "w1", NOW, NOW + 30) is not None
    assert repo.complete(record.id, "w1", 1, None, NOW + 1) is not None
    return record.id


def _log_rows(conn: Any, schema: Schema, job_id: str) -> int:
    return conn.execute(f'SELECT count(*) FROM "{schema.name}".job_logs WHERE job_id = %s', (job_id,)).fetchone()[0]


def test_lines_logged_while_a_cleanup_deletes_their_job_are_not_left_behind(schema: Schema) -> None:
    # given a cleanup under way (another connection deleted the job's row, not yet its lines)
    repo = schema.repository()
    cleaner = psycopg.connect(schema.server, autocommit=False)
    try:
        job_id = _finished_job(repo)
        cleaner.execute(f'DELETE FROM "{schema.name}".jobs WHERE id = %s', (job_id,))
        # when lines for that job are added meanwhile (a timed-out attempt's thread logging)
        thread = threading.Thread(target=repo.add_logs, args=(job_id, [(NOW, "info", "a"), (NOW, "info", "b")]))
        thread.start()
        # then they wait for the cleanup, which deletes the lines it sees and commits
        _wait_until_blocked_by(cleaner, cleaner.info.backend_pid, thread)
        cleaner.execute(f'DELETE FROM "{schema.name}".job_logs WHERE job_id = %s', (job_id,))
        cleaner.commit()
        thread.join(WAIT)
        assert not thread.is_alive()
        # and, finding the job gone, store nothing
        assert _log_rows(cleaner, schema, job_id) == 0
    finally:
        cleaner.close()
        repo.close()


def test_a_cleanup_while_lines_are_being_added_deletes_them_too(schema: Schema) -> None:
    # given lines being added for a finished job (the statement run, not yet committed)
    repo = schema.repository()
    logger = psycopg.connect(schema.server, autocommit=False)
    try:
        job_id = _finished_job(repo)
        logger.execute(repo.sql.INSERT_LOG_IF_STORED, (NOW, "info", "late", job_id))
        # when a cleanup deletes every finished job meanwhile
        deleted: list[int] = []
        thread = threading.Thread(target=lambda: deleted.append(repo.delete_finished(None)))
        thread.start()
        # then it waits for the lines to commit, and deletes them with their job
        _wait_until_blocked_by(logger, logger.info.backend_pid, thread)
        logger.commit()
        thread.join(WAIT)
        assert deleted == [1]
        assert repo.get(job_id) is None and _log_rows(logger, schema, job_id) == 0
    finally:
        logger.close()
        repo.close()


def test_stale_claims_are_topped_up_with_the_best_ready_jobs_in_priority_then_fifo_order(
        repo: "PostgresRepository") -> None:
    # given ready jobs of two functions, a scheduled one, and a manager whose ids went stale
    low, first, second, urgent = (make_record(priority=p) for p in (1, 5, 5, 9))
    other = make_record(function_name="tests.other", priority=9)
    later = make_record(status=JobStatus.SCHEDULED, run_at=NOW + 60, priority=9)
    repo.insert([low, first, second, urgent, other, later], NOW)
    repo.claim(low.id, "w0", NOW, NOW + 30)
    # when it claims one id still good and three stale ones, topping up with its function
    _, taken = repo.apply([], [low.id, "gone-1", "gone-2", second.id], "w1", NOW, NOW + 30,
                          top_up=["tests.task"])
    # then the good id and the best others of its function are claimed: nothing else
    assert [r.id for r in taken] == [urgent.id, first.id, second.id]
    assert all((r.status, r.worker_id, r.attempts) == (JobStatus.RUNNING, "w1", 1) for r in taken)
    _, rest = repo.apply([], ["gone-3", "gone-4"], "w2", NOW, NOW + 30, top_up=["tests.task", "tests.other"])
    assert [r.id for r in rest] == [other.id]
    assert repo.apply([], ["gone-5"], "w3", NOW, NOW + 30)[1] == []    # no top_up: nothing


def test_topped_up_claims_from_many_connections_claim_every_job_once(schema: Schema) -> None:
    repos = [schema.repository(pool_size=2) for _ in range(4)]
    try:
        repos[0].insert([make_record() for _ in range(400)], NOW)
        claimed: list[list[str]] = [[] for _ in repos]

        def drain(index: int) -> None:
            stale = [f"gone-{n}" for n in range(5)]
            while batch := repos[index].apply([], stale, f"w{index}", NOW, NOW + 30, top_up=["tests.task"])[1]:
                claimed[index] += [r.id for r in batch]

        threads = [threading.Thread(target=drain, args=(i,), name=f"top-up-{i}") for i in range(len(repos))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        every = [job_id for ids in claimed for job_id in ids]
        assert len(every) == len(set(every)) == 400
        assert sum(1 for ids in claimed if ids) >= 2   # they shared the work
    finally:
        for repository in repos:
            repository.close()


def test_completions_applied_together_release_a_shared_dependent_once(repo: "PostgresRepository") -> None:
    # given a job depending on two running jobs of one worker
    first, second = make_record(), make_record()
    repo.insert([first, second], NOW)
    both = make_record(depends_on=(first.id, second.id))
    repo.insert([both], NOW)
    for job in (first, second):
        repo.claim(job.id, "w1", NOW, NOW + 30)
    # when both complete in one apply, then the dependent is released once, by the later
    cascades, _ = repo.apply([Settlement("complete", first.id, 1), Settlement("complete", second.id, 1)],
                             [], "w1", NOW + 1, NOW + 31)
    assert [[e.job_id for e in c.released] for c in cascades if c is not None] == [[], [both.id]]
    stored = repo.get(both.id)
    assert stored is not None and (stored.status, stored.blocked) == (JobStatus.PENDING, 0)


def test_concurrent_fires_from_many_connections_store_one_run(schema: Schema) -> None:
    repos = [schema.repository(pool_size=1) for _ in range(4)]
    try:
        fired = make_record(cron="* * * * *", status=JobStatus.SCHEDULED, run_at=NOW + 60)
        repos[0].insert([fired], NOW)
        outcomes: list[bool] = []
        start = threading.Barrier(len(repos))

        def fire(repository: "PostgresRepository") -> None:
            start.wait(WAIT)
            outcomes.append(repository.fire_schedule(fired.id, NOW + 60, NOW + 120, make_record(), NOW + 61))

        threads = [threading.Thread(target=fire, args=(r,), name=f"fire-{i}") for i, r in enumerate(repos)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        assert sorted(outcomes) == [False, False, False, True]
        assert sum(repos[0].count_by_status().values()) == 2
    finally:
        for repository in repos:
            repository.close()


def test_a_dead_workers_jobs_come_back_at_once_and_recover_says_how_each_ended(
        repo: "PostgresRepository") -> None:
    # given a dead worker holding three jobs: one with attempts left, one on its last
    # attempt, one whose cancellation was requested; and a live worker holding one
    again, last, unwanted, alive = make_record(), make_record(max_retries=0), make_record(), make_record()
    repo.insert([again, last, unwanted, alive], NOW)
    for job in (again, last, unwanted):
        repo.claim(job.id, "dead", NOW, NOW + 30)
    repo.claim(alive.id, "live", NOW, NOW + 30)
    repo.cancel(unwanted.id, NOW, "stop")
    # when the dead worker's leases are ended and recovery runs, long before they lapse
    assert repo.expire_worker("dead", NOW + 1) == 3
    recovery = repo.recover(NOW + 1)
    # then each of its jobs ended as its state says, and the live worker kept its job
    assert ([e.job_id for e in recovery.requeued], recovery.failed, recovery.cancelled) == (
        [again.id], (last.id,), (unwanted.id,))
    assert [repo.get(j.id).status for j in (again, last, unwanted, alive)] == [  # type: ignore[union-attr]
        JobStatus.PENDING, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.RUNNING]


@pytest.mark.parametrize("transition", ["retry", "release"])
def test_a_cancel_waits_for_a_transition_under_way_and_acts_on_the_status_it_leaves(
        schema: Schema, transition: str) -> None:
    # given a running job, and another connection recording, not yet committed, its retry
    # (RUNNING to SCHEDULED) or its hand-back (RUNNING to PENDING): the row is locked
    repository = schema.repository()
    job = make_record()
    repository.insert([job], NOW)
    repository.claim(job.id, "w1", NOW, NOW + 30)
    sql = Statements(schema.name)
    held = {"id": job.id, "worker": "w1", "attempt": 1, "now": NOW + 1}
    try:
        with psycopg.connect(schema.server) as other, psycopg.connect(schema.server, autocommit=True) as watch:
            if transition == "retry":
                other.execute(sql.FAIL_MANY, {"ids": [job.id], "attempts": [1], "retry_at": [NOW + 10],
                                              "errors": ["reset"], "error_types": ["ConnectionError"],
                                              "tracebacks": [None], "worker": "w1", "now": NOW + 1})
            else:
                other.execute(sql.RELEASE, held)
            # when cancel() runs meanwhile, and that transaction commits while it waits
            outcomes: list[Any] = []
            canceller = threading.Thread(target=lambda: outcomes.append(repository.cancel(job.id, NOW + 2, "stop")),
                                         name="canceller")
            canceller.start()
            _wait_until_blocked_by(watch, other.info.backend_pid, canceller)
            other.commit()
            canceller.join(WAIT)
        # then it saw the job as that transition left it, unfinished, and cancelled it at
        # once: two statements each looking for one status both missed it (cancel() was False)
        assert [outcome for outcome, _ in outcomes] == [CancelOutcome.CANCELLED]
        stored = repository.get(job.id)
        assert stored is not None and (stored.status, stored.error) == (JobStatus.CANCELLED, "stop")
    finally:
        repository.close()


def test_a_producer_that_loses_a_unique_key_race_gets_the_holder_without_a_warning(
        schema: Schema, caplog: pytest.LogCaptureFixture) -> None:
    # given a batch whose first job has unique_key "k", then one depending on a stored job
    # another connection holds locked, then many more: its insert looks for holders of "k"
    # (none yet), then waits for that lock
    repository = schema.repository()
    parent = make_record()
    repository.insert([parent], NOW)
    keyed, dependent = make_record(unique_key="k"), make_record(depends_on=(parent.id,))
    batch = [keyed, dependent, *(make_record() for _ in range(300))]
    holder = make_record(unique_key="k")
    inserted: list[list[str]] = []
    caplog.set_level(logging.DEBUG, logger="psycopg")
    try:
        with psycopg.connect(schema.server) as locker, psycopg.connect(schema.server, autocommit=True) as watch:
            locker.execute(f'SELECT 1 FROM "{schema.name}".jobs WHERE id = %s FOR UPDATE', (parent.id,))
            inserter = threading.Thread(target=lambda: inserted.append(repository.insert(batch, NOW)),
                                        name="inserter")
            inserter.start()
            _wait_until_blocked_by(watch, locker.info.backend_pid, inserter)
            # when another producer's job takes "k" meanwhile, and the lock is then released:
            # the batch's first row meets the key taken at once, its others still on their way
            repository.insert([holder], NOW)
            locker.commit()
            inserter.join(WAIT)
        # then the batch gets the holder's id for its keyed job, its others are stored, and
        # psycopg logged nothing about the race the repository handled
        assert inserted == [[holder.id, *(record.id for record in batch[1:])]]
        assert repository.get(keyed.id) is None and repository.count_by_status()[JobStatus.PENDING] == 303
        assert [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING] == []
    finally:
        repository.close()


def test_outcomes_ended_in_two_statements_wait_on_no_insert_of_their_dependents_in_a_cycle(
        repo: "PostgresRepository", schema: Schema) -> None:
    # given two running jobs of one worker, the earlier about to fail and the later to
    # complete, and another connection inserting a job that depends on both, holding its
    # lock on the earlier (dependencies are locked in seq order)
    earlier, later = make_record(), make_record()
    repo.insert([earlier], NOW)
    repo.insert([later], NOW)
    for job in (earlier, later):
        assert repo.claim(job.id, "w1", NOW, NOW + 30) is not None
    outcomes = [Settlement("complete", later.id, 1),
                Settlement("fail", earlier.id, 1, error="e", error_type="ValueError", traceback="tb")]
    # when the outcomes are applied in one transaction, completion first, and wait; then
    # the insert's lock on the later job is not held up behind them: they hold no lock
    # yet (the completion locked the later job first, then waited for the earlier: a
    # deadlock the server broke only after deadlock_timeout)
    _applied_while_an_insert_locks(repo, schema, outcomes, earlier.id, later.id)
    assert [repo.get(job.id).status for job in (earlier, later)] == [JobStatus.FAILED, JobStatus.COMPLETED]


def test_dependents_that_two_failures_cancel_wait_on_no_insert_depending_on_them_in_a_cycle(
        repo: "PostgresRepository", schema: Schema) -> None:
    # given two running jobs of one worker, each with a waiting dependent (the second's
    # stored first), and another connection inserting a job that depends on both
    # dependents, holding its lock on the earlier one (locked in seq order)
    first, second = make_record(), make_record()
    repo.insert([first], NOW)
    repo.insert([second], NOW)
    of_second = make_record(depends_on=(second.id,))
    repo.insert([of_second], NOW)
    of_first = make_record(depends_on=(first.id,))
    repo.insert([of_first], NOW)
    for job in (first, second):
        assert repo.claim(job.id, "w1", NOW, NOW + 30) is not None
    outcomes = [Settlement("fail", job.id, 1, error="e", error_type="ValueError", traceback="tb")
                for job in (first, second)]
    # when both fail for good in one transaction, their dependents cancelled; then the
    # insert's lock on the other dependent is not held up behind them (the first
    # failure's cascade locked it, then the second's waited: a deadlock)
    _applied_while_an_insert_locks(repo, schema, outcomes, of_second.id, of_first.id)
    assert [repo.get(job.id).status for job in (first, second, of_first, of_second)] == [
        JobStatus.FAILED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.CANCELLED]


def _applied_while_an_insert_locks(repo: "PostgresRepository", schema: Schema, outcomes: list[Settlement],
                                   held: str, then: str) -> None:
    """Apply `outcomes` (worker "w1") while another connection, inserting a dependent, holds
    `FOR KEY SHARE` on job `held`; once the apply waits for it, take the same lock on job
    `then` (it must not wait for the apply, with a 20 ms `deadlock_timeout` on its side to
    find a cycle first), commit, and see the apply end."""
    applied: list[Any] = []
    with psycopg.connect(schema.server) as inserter, psycopg.connect(schema.server, autocommit=True) as watch:
        inserter.execute("SET deadlock_timeout = '20ms'")
        lock = f'SELECT 1 FROM "{schema.name}".jobs WHERE id = %s FOR KEY SHARE'
        inserter.execute(lock, (held,))
        exchange = threading.Thread(target=lambda: applied.append(repo.apply(outcomes, [], "w1", NOW + 1, NOW + 31)),
                                    name="exchange")
        exchange.start()
        _wait_until_blocked_by(watch, inserter.info.backend_pid, exchange)
        inserter.execute(lock, (then,))
        inserter.commit()
        exchange.join(WAIT)
    assert applied and not exchange.is_alive()


def _wait_until_blocked_by(watch: Any, pid: int, thread: threading.Thread) -> None:
    """Return once a backend waits for a lock `pid` holds (the thread's statement); fail if
    the thread ended without waiting, or nothing waits within WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while True:
        blocked = watch.execute("SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                                (pid,)).fetchone()[0]
        if blocked:
            return
        assert thread.is_alive(), "the statement ended without waiting for the lock"
        assert time.monotonic() < deadline, f"nothing waited for the lock within {WAIT}s"
        threading.Event().wait(0.01)


def test_a_small_pool_serves_many_threads(schema: Schema) -> None:
    repository = schema.repository(pool_size=2)
    try:
        threads = [threading.Thread(target=lambda: [repository.insert([make_record()], NOW) for _ in range(20)],
                                    name=f"pool-{i}") for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        assert repository.count_by_status()[JobStatus.PENDING] == 160
    finally:
        repository.close()


def test_the_queue_is_read_from_each_functions_range_of_its_index(repo: "PostgresRepository",
                                                                   schema: Schema) -> None:
    # given many ready and scheduled jobs of a function the reader does not run
    repo.insert([make_record(function_name="other", priority=i % 7) for i in range(2000)], NOW)
    repo.insert([make_record(function_name="other", status=JobStatus.SCHEDULED, run_at=NOW + i)
                 for i in range(2000)], NOW)
    repo.insert([make_record(priority=i % 7) for i in range(20)], NOW)
    with psycopg.connect(schema.server, autocommit=True) as conn:
        conn.execute(f'ANALYZE "{schema.name}".jobs')
        plans = {}
        for name in ("SELECT_READY", "SELECT_SCHEDULED"):
            rows = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + getattr(repo.sql, name),
                                {"names": ["tests.task"], "limit": 10}).fetchone()[0]
            plans[name] = rows[0]["Plan"]

    def nodes(plan: dict) -> list[dict]:
        return [plan] + [node for child in plan.get("Plans", ()) for node in nodes(child)]

    # then each read walks its index ranges in order and reads no row of the other function
    for name, index in (("SELECT_READY", "jobs_ready"), ("SELECT_SCHEDULED", "jobs_due")):
        scans = [n for n in nodes(plans[name]) if n["Node Type"].startswith(("Index", "Seq", "Bitmap"))]
        assert any(n.get("Index Name") == index for n in scans), plans[name]
        assert all(n["Node Type"] != "Seq Scan" for n in scans), plans[name]
        assert sum(n["Actual Rows"] * n["Actual Loops"] for n in scans) <= 20, plans[name]


def test_the_queue_is_counted_without_reading_the_finished_jobs(repo: "PostgresRepository",
                                                                schema: Schema) -> None:
    # given many finished jobs kept, and a few pending, waiting and scheduled
    finished = [make_record() for _ in range(5000)]
    repo.insert(finished, NOW)
    first = make_record()
    repo.insert([first, make_record(depends_on=(first.id,)),
                 make_record(status=JobStatus.SCHEDULED, run_at=NOW + 60)], NOW)
    with psycopg.connect(schema.server, autocommit=True) as conn:
        conn.execute(f'UPDATE "{schema.name}".jobs SET status = \'completed\', completed_at = %s'
                     ' WHERE id = ANY(%s)', (NOW, [r.id for r in finished]))
        conn.execute(f'VACUUM ANALYZE "{schema.name}".jobs')
        plan = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + repo.sql.COUNT_QUEUED).fetchone()[0][0]["Plan"]

    def nodes(node: dict) -> list[dict]:
        return [node] + [child for sub in node.get("Plans", ()) for child in nodes(sub)]

    # then the count is theirs, as count_by_status gives it, read from index ranges alone
    counts = repo.count_by_status()
    assert repo.count_queued() == counts[JobStatus.PENDING] + counts[JobStatus.SCHEDULED] == 3
    scans = [n for n in nodes(plan) if n["Node Type"].startswith(("Index", "Seq", "Bitmap"))]
    assert scans and all(n["Node Type"] != "Seq Scan" for n in scans), plan
    assert sum(n["Actual Rows"] * n["Actual Loops"] for n in scans) <= 3, plan


@pytest.mark.parametrize("query", ["LIST_DEAD_LETTERS", "LIST_DEAD_LETTERS_WITHOUT_ARGS"])
def test_the_dead_letter_queue_is_read_in_order_without_sorting_every_failed_job(
        repo: "PostgresRepository", schema: Schema, query: str) -> None:
    # given many failed jobs, and more jobs in other states
    records = [make_record() for _ in range(3000)]
    repo.insert(records, NOW)
    with psycopg.connect(schema.server, autocommit=True) as conn:
        conn.execute(f'UPDATE "{schema.name}".jobs SET status = \'failed\', completed_at = seq'
                     ' WHERE seq % 3 <> 0')
        conn.execute(f'UPDATE "{schema.name}".jobs SET status = \'completed\', completed_at = seq'
                     ' WHERE seq % 3 = 0')
        conn.execute(f'VACUUM ANALYZE "{schema.name}".jobs')
        plan = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + getattr(repo.sql, query), (10,)).fetchone()[0][0]["Plan"]

    def nodes(node: dict) -> list[dict]:
        return [node] + [child for sub in node.get("Plans", ()) for child in nodes(sub)]

    # then the first page is read in order from jobs_failed, and nothing else: no sort
    scans = [n for n in nodes(plan) if n["Node Type"].startswith(("Index", "Seq", "Bitmap"))]
    assert [n.get("Index Name") for n in scans] == ["jobs_failed"], plan
    assert not [n for n in nodes(plan) if n["Node Type"] == "Sort"], plan
    assert sum(n["Actual Rows"] * n["Actual Loops"] for n in scans) <= 10, plan
    newest = [r.id for seq, r in reversed(list(enumerate(records, start=1))) if seq % 3][:2]
    assert [r.id for r in repo.list_dead_letters(2)] == newest
