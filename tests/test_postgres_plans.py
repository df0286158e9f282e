"""PostgreSQL: the statements of an exchange (completions, the release of dependents, the
claim) run on generic plans, without JIT compilation nor sequential scans, in that
transaction only.

Under the server's default plan cache mode PostgreSQL planned them afresh at every run,
which cost more than running them (a drain twice as slow at 20,000 jobs); a generic plan
estimated for any values made the claim's cost pass `jit_above_cost` with 1,000,000 jobs
queued, and every claim was compiled first (25 ms); one made on a near empty table read
every row of a deep one. See `postgres.database._GENERIC_PLANS`.
A real server and a schema per test (see `pg_fixtures`).
"""

from __future__ import annotations

import contextlib
import re
from typing import Any, Iterator

import pytest

import pg_fixtures
from pg_fixtures import *  # noqa: F401,F403 (the fixtures: server, schema, repo)
from pg_fixtures import Schema, psycopg
from jobcore.repository.base import JobRecord, Settlement
from jobcore.testing.contract import NOW, make_record

try:
    from jobcore.postgres import PostgresRepository
    from jobcore.postgres.database import Tx
    from jobcore.postgres.schema import quote_identifier
except ImportError:  # the extra is not installed: pg_fixtures.MARKS skips (or fails in CI)
    pass

pytestmark = pg_fixtures.MARKS

SETTINGS = "SELECT current_setting('plan_cache_mode'), current_setting('jit'), current_setting('enable_seqscan')"


def _settings(tx: "Tx") -> tuple[str, str, str]:
    row = tx.execute(SETTINGS).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def test_a_transaction_asking_for_generic_plans_has_them_without_jit_or_seqscans_and_no_other(repo: "PostgresRepository") -> None:
    database = repo._db
    # given the server's own settings, read in a transaction that asks for nothing
    default = database.transaction(_settings)
    assert default[0] == "auto" and default[2] == "on"  # (the server's defaults: the test's premise)
    # when a transaction asks for generic plans
    asked = database.transaction(_settings, generic_plans=True)
    # then it runs with generic plans, without JIT nor sequential scans, and the next
    # transaction on the same connections has the server's settings again (SET LOCAL)
    assert asked == ("force_generic_plan", "off", "off")
    assert database.transaction(_settings) == default
    assert database.read(SETTINGS)[0] == default


def _exchange(repository: "PostgresRepository", held: list[JobRecord], claim: list[JobRecord],
              at: float) -> list[JobRecord]:
    """One worker's exchange: complete every job it holds, claim `claim`; what it now holds."""
    settlements = [Settlement("complete", r.id, r.attempts, result=None, seq=r.seq) for r in held]
    cascades, claimed = repository.apply(settlements, [r.id for r in claim], "w1", at, at + 60)
    assert all(cascade is not None for cascade in cascades)  # each completion applied
    return claimed


@pytest.fixture
def one_connection(schema: Schema) -> Iterator[tuple["PostgresRepository", list[JobRecord]]]:
    """A repository with a single pooled connection (every call uses it, and its prepared
    statements' plans are counted there), and 64 queued jobs."""
    repository = schema.repository(pool_size=1)
    try:
        with repository._db.pool.connection() as conn:
            if conn.info.server_version < 140000:
                pytest.skip("pg_prepared_statements counts plans from PostgreSQL 14 on")
        jobs = [make_record() for _ in range(64)]
        repository.insert(jobs, NOW)
        yield repository, jobs
    finally:
        repository.close()


def _plans(repository: "PostgresRepository", mark: str) -> list[tuple[int, int]]:
    """(generic plans, custom plans) of each statement prepared on the repository's one
    connection whose text holds `mark`."""
    with repository._db.pool.connection() as conn:
        rows = conn.execute("SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement LIKE %s",
                            (f"%{mark}%",)).fetchall()
    return [(generic, custom) for generic, custom in rows]


def _eight_exchanges(repository: "PostgresRepository", jobs: list[JobRecord]) -> list[JobRecord]:
    """A worker's 8 exchanges over the 64 `jobs`, each completing the 8 jobs it holds and
    claiming the next 8 (each claim checked); the 8 it holds at the end."""
    held: list[JobRecord] = []
    for turn in range(8):
        wanted = jobs[turn * 8:(turn + 1) * 8]
        held = _exchange(repository, held, wanted, NOW + turn)
        assert sorted(r.id for r in held) == sorted(r.id for r in wanted)
    return held


def test_the_statements_of_exchanges_run_on_generic_plans_once_prepared(
        one_connection: tuple["PostgresRepository", list[JobRecord]]) -> None:
    repository, jobs = one_connection
    # when a worker makes 8 exchanges, each completing the 8 jobs it holds and claiming 8
    _eight_exchanges(repository, jobs)
    # then psycopg prepared the exchange's statements (at their 5th run), and the server
    # ran each prepared run on a generic plan, none on a plan made for the values given
    marks = {"claim": "WITH wanted AS", "completions": "WITH given AS", "release of dependents": "WITH dependents AS"}
    for what, mark in marks.items():
        found = _plans(repository, mark)
        assert len(found) == 1, f"the {what} statement was not prepared once: {found}"
        generic, custom = found[0]
        assert generic >= 1 and custom == 0, f"the {what}: {generic} generic and {custom} custom plans"


def test_claims_alone_run_on_generic_plans_too(one_connection: tuple["PostgresRepository", list[JobRecord]]) -> None:
    repository, jobs = one_connection
    # when a worker claims 8 jobs at a time with no outcome to record, 8 times
    for turn in range(8):
        _, claimed = repository.apply([], [r.id for r in jobs[turn * 8:(turn + 1) * 8]], "w1", NOW, NOW + 60)
        assert len(claimed) == 8
    # then the prepared claim ran on generic plans only
    found = _plans(repository, "WITH wanted AS")
    assert len(found) == 1 and found[0][0] >= 1 and found[0][1] == 0, found


def _generic_plan(conn: Any, query: str, values: dict[str, Any], types: dict[str, str]) -> str:
    """EXPLAIN ANALYZE of `query` (psycopg's `%(name)s` parameters) prepared and run on the
    plan made for any values, as an exchange runs it; the plan's text."""
    names: list[str] = []

    def number(match: "re.Match[str]") -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    numbered = re.sub(r"%\((\w+)\)s", number, query)
    conn.execute("SET plan_cache_mode = force_generic_plan")
    conn.execute(f"PREPARE planned ({', '.join(types[n] for n in names)}) AS {numbered}")
    cursor = psycopg.ClientCursor(conn)
    arguments = ", ".join(f"%s::{types[n]}" for n in names)
    with conn.transaction(force_rollback=True):
        cursor.execute(f"EXPLAIN (ANALYZE, COSTS OFF) EXECUTE planned ({arguments})", [values[n] for n in names])
        return "\n".join(row[0] for row in cursor.fetchall())


def test_the_claims_generic_plan_finds_its_rows_by_index_in_a_deep_queue(schema: Schema) -> None:
    # given 5,000 queued jobs, the table's statistics taken
    repository = schema.repository()
    try:
        jobs = [make_record(function_name="task") for _ in range(5000)]
        repository.insert(jobs, NOW)
        with psycopg.connect(schema.server, autocommit=True) as conn:
            conn.execute(f'ANALYZE "{schema.name}".jobs')
            # when a claim of 8 named jobs, topped up by number, runs on its generic plan
            plan = _generic_plan(conn, repository.sql.CLAIM_MANY, {
                "ids": [r.id for r in jobs[:8]], "names": ["task"], "top_up": True, "up_to": 8, "now": NOW,
                "worker": "w1", "lease": NOW + 60}, {
                "ids": "text[]", "names": "text[]", "top_up": "boolean", "up_to": "integer", "now": "float8",
                "worker": "text", "lease": "float8"})
        # then every row is found through an index: none of the 5,000 is read in turn
        assert "Seq Scan" not in plan and "rows=5000" not in plan, plan
    finally:
        repository.close()


def test_the_release_of_dependents_reads_the_links_of_the_jobs_completed_by_key(schema: Schema) -> None:
    # given a store that had held a fan-out: 2,000 jobs waiting on one, the statistics taken
    # (every link naming one job: the plan made for any ids estimated that all matched)
    repository = schema.repository()
    try:
        root = make_record()
        repository.insert([root, *(make_record(depends_on=(root.id,)) for _ in range(2000))], NOW)
        with psycopg.connect(schema.server, autocommit=True) as conn:
            conn.execute(f'ANALYZE "{schema.name}".job_deps')
            conn.execute("SET enable_seqscan = off")
            # when the release of the dependents of 8 completed jobs runs on its generic plan
            plan = _generic_plan(conn, repository.sql.RELEASE_DEPENDENTS_MANY,
                                 {"done": [make_record().id for _ in range(8)]}, {"done": "text[]"})
        # then it looks up the links of each by its key: it walked every link's entry in
        # the index on job_id (6-9 ms an exchange with 20,000 kept); the index on job_id
        # serves only to read each dependent's own links
        assert "job_deps_pkey" in plan and "Index Cond: (depends_on = c_1.id)" in plan, plan
        lines = plan.splitlines()
        assert all("Index Cond: (job_id = w.id)" in lines[i + 1] for i, line in enumerate(lines)
                   if "job_deps_job" in line), plan
        assert "Seq Scan" not in plan, plan
    finally:
        repository.close()


def test_the_release_of_a_wide_fan_out_reads_each_dependents_links_once(schema: Schema) -> None:
    # given a store whose statistics were taken on plain (parent, child) pairs, then one
    # job with 600 dependents
    repository = schema.repository()
    try:
        pairs = []
        for _ in range(2000):
            parent = make_record()
            pairs += [parent, make_record(depends_on=(parent.id,))]
        repository.insert(pairs, NOW)
        root = make_record()
        with psycopg.connect(schema.server, autocommit=True) as conn:
            conn.execute(f'ANALYZE "{schema.name}".jobs')
            conn.execute(f'ANALYZE "{schema.name}".job_deps')
            repository.insert([root, *(make_record(depends_on=(root.id,)) for _ in range(600))], NOW)
            conn.execute("SET enable_seqscan = off")
            # when the release of its dependents runs on its generic plan
            plan = _generic_plan(conn, repository.sql.RELEASE_DEPENDENTS_MANY, {"done": [root.id]},
                                 {"done": "text[]"})
        # then no set the statement made is read again for each dependent: the links it
        # had read were scanned once a dependent, 600 times 600 rows (8,000 dependents:
        # 9 s, while the manager's exchanges waited)
        rescans = [line for line in plan.splitlines() if "CTE Scan" in line and "loops=1)" not in line]
        assert not rescans, plan
        assert "rows=600 loops=1" in plan, plan  # (the 600 were released)
    finally:
        repository.close()


# What this backend's statements read of a jobs table (its regclass the parameter) and
# has not yet sent to the server's statistics: (sequential scans, rows they read, rows
# fetched through an index).
_READ_OF_JOBS = ("SELECT seq_scan, seq_tup_read, COALESCE(idx_tup_fetch, 0) FROM pg_stat_xact_user_tables"
                 " WHERE relid = %s::regclass")


def _jobs_table(repository: "PostgresRepository") -> tuple[str]:
    """The parameters of _READ_OF_JOBS for `repository`'s jobs table."""
    return (f"{quote_identifier(repository.sql.schema)}.jobs",)


@contextlib.contextmanager
def _rows_read(repository: "PostgresRepository") -> Iterator[list[tuple[int, int, int]]]:
    """While open, each transaction of `repository` counts what its statements read of
    the jobs table: (sequential scans, rows they read, rows fetched through an index),
    one tuple per transaction in the list it gives. Counted before and after the
    statements, inside the transaction: the counts not yet sent to the server's
    statistics may hold earlier transactions' too, and only the difference is this one's."""
    database = repository._db
    read: list[tuple[int, int, int]] = []
    transaction = database.transaction
    table = _jobs_table(repository)

    def counted(work: Any, **options: Any) -> Any:
        def work_then_count(tx: "Tx") -> Any:
            before = tx.execute(_READ_OF_JOBS, table).fetchone()
            result = work(tx)
            after = tx.execute(_READ_OF_JOBS, table).fetchone()
            read.append((after[0] - before[0], after[1] - before[1], after[2] - before[2]))
            return result
        return transaction(work_then_count, **options)

    database.transaction = counted  # type: ignore[method-assign]
    try:
        yield read
    finally:
        del database.transaction


def test_statements_planned_on_a_small_table_find_rows_by_index_once_the_queue_is_deep(
        one_connection: tuple["PostgresRepository", list[JobRecord]]) -> None:
    # given a worker's exchanges prepared, and their generic plans made, while the table
    # held 64 jobs (a new schema whose first jobs stream in as workers run)
    repository, jobs = one_connection
    held = _eight_exchanges(repository, jobs)
    # and then 5,000 more jobs queued, and a job waiting on each job the worker holds
    deep = [make_record(function_name=jobs[0].function_name) for _ in range(5000)]
    repository.insert(deep, NOW)
    dependents = [make_record(depends_on=(r.id,)) for r in held]
    repository.insert(dependents, NOW)
    # when the worker completes the 8 it holds and claims 8 by id and 8 more by number
    with _rows_read(repository) as read:
        settlements = [Settlement("complete", r.id, r.attempts, result=None, seq=r.seq) for r in held]
        cascades, claimed = repository.apply(settlements, [r.id for r in deep[:8]], "w1", NOW + 9, NOW + 69,
                                             top_up=[jobs[0].function_name], up_to=16)
    assert [len(cascade.released) for cascade in cascades if cascade is not None] == [1] * 8
    assert len(claimed) == 16
    # then none of its statements walked the table, in turn or along an index: each found
    # its rows by their keys (the 8 completed, their 8 dependents and the 16 claimed,
    # each read a few times). On plans made for 64 rows, every statement of the exchange
    # read all 5,072 rows in turn, and a producer streaming jobs to running workers went
    # 5x slower.
    assert len(read) == 1, read
    sequential_scans, rows_scanned, rows_fetched_by_index = read[0]
    assert (sequential_scans, rows_scanned) == (0, 0), read
    assert rows_fetched_by_index < 200, read


def test_a_batch_stored_once_the_queue_is_deep_looks_up_its_ids_by_index(
        one_connection: tuple["PostgresRepository", list[JobRecord]]) -> None:
    # given batches of 8 jobs stored while the table held a hundred jobs or so, enough
    # for their statements to be prepared and planned for any values
    repository, _ = one_connection
    for _ in range(12):
        repository.insert([make_record() for _ in range(8)], NOW)
    # and then 5,000 more jobs
    repository.insert([make_record() for _ in range(5000)], NOW)
    # when one more batch is stored
    batch = [make_record() for _ in range(8)]
    with _rows_read(repository) as read:
        assert repository.insert(batch, NOW) == [r.id for r in batch]
    # then the check that its ids are free (and the lock on the jobs it depends on) found
    # them through the index on ids: it read no row in turn (on the plan made for a
    # hundred rows, each batch read all 5,000 and more; at a million queued jobs, a
    # million a batch)
    assert len(read) == 1, read
    sequential_scans, rows_scanned, _ = read[0]
    assert (sequential_scans, rows_scanned) == (0, 0), read


def _scans(repository: "PostgresRepository") -> tuple[int, int]:
    """(sequential scans, rows they read) of the jobs table counted on the repository's one
    connection and not yet sent to the server's statistics (PostgreSQL 15 and later)."""
    with repository._db.pool.connection() as conn:
        row = conn.execute(_READ_OF_JOBS, _jobs_table(repository)).fetchone()
        conn.commit()
    assert row is not None
    return int(row[0]), int(row[1])


def test_heartbeats_and_status_reads_planned_on_a_small_table_read_no_row_in_turn_at_depth(
        one_connection: tuple["PostgresRepository", list[JobRecord]]) -> None:
    repository, jobs = one_connection
    with repository._db.pool.connection() as conn:
        if conn.info.server_version < 150000:
            pytest.skip("pg_stat_force_next_flush: PostgreSQL 15 and later")
    # given a worker holding 8 jobs, which heartbeats and whose statuses are read 12 times
    # each while the table holds 64 jobs (their statements prepared and planned then)
    held = _exchange(repository, [], jobs[:8], NOW)
    ids = [r.id for r in held]
    for turn in range(12):
        assert repository.heartbeat("w1", ids, NOW + 60 + turn, NOW + turn) == []
        assert set(repository.get_statuses(ids)) == set(ids)
    # and then 5,000 more jobs
    repository.insert([make_record() for _ in range(5000)], NOW)
    # when it heartbeats and its statuses are read once more, the scans counted around
    # (the counts flushed first: none is sent again within the next second)
    with repository._db.pool.connection() as conn:
        conn.execute("SELECT pg_stat_force_next_flush()")
        conn.commit()
    before = _scans(repository)
    assert repository.heartbeat("w1", ids, NOW + 100, NOW + 40) == []
    assert set(repository.get_statuses(ids)) == set(ids)
    after = _scans(repository)
    # then neither read the table in turn: each found the 8 rows by their ids (on plans
    # made for 64 rows, each read all 5,064 at every heartbeat and every status round)
    assert (after[0] - before[0], after[1] - before[1]) == (0, 0), (before, after)
