"""PostgreSQL: the statements of an exchange (completions, the release of dependents, the
claim) run on generic plans, without JIT compilation, in that transaction only.

Under the server's default plan cache mode PostgreSQL planned them afresh at every run,
which cost more than running them (a drain twice as slow at 20,000 jobs); a generic plan
estimated for any values made the claim's cost pass `jit_above_cost` with 1,000,000 jobs
queued, and every claim was compiled first (25 ms). See `postgres.database._GENERIC_PLANS`.
A real server and a schema per test (see `pg_fixtures`).
"""

from __future__ import annotations

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
except ImportError:  # the extra is not installed: pg_fixtures.MARKS skips (or fails in CI)
    pass

pytestmark = pg_fixtures.MARKS

SETTINGS = "SELECT current_setting('plan_cache_mode'), current_setting('jit')"


def _settings(tx: "Tx") -> tuple[str, str]:
    row = tx.execute(SETTINGS).fetchone()
    assert row is not None
    return row[0], row[1]


def test_a_transaction_asking_for_generic_plans_has_them_without_jit_and_no_other(repo: "PostgresRepository") -> None:
    database = repo._db
    # given the server's own settings, read in a transaction that asks for nothing
    default = database.transaction(_settings)
    assert default[0] == "auto"  # (the server's default: the test's premise)
    # when a transaction asks for generic plans
    asked = database.transaction(_settings, generic_plans=True)
    # then it runs with generic plans and without JIT, and the next transaction on the
    # same connections has the server's settings again (SET LOCAL)
    assert asked == ("force_generic_plan", "off")
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


def test_the_statements_of_exchanges_run_on_generic_plans_once_prepared(
        one_connection: tuple["PostgresRepository", list[JobRecord]]) -> None:
    repository, jobs = one_connection
    # when a worker makes 8 exchanges, each completing the 8 jobs it holds and claiming 8
    held: list[JobRecord] = []
    for turn in range(8):
        held = _exchange(repository, held, jobs[turn * 8:(turn + 1) * 8], NOW + turn)
        assert sorted(r.id for r in held) == sorted(r.id for r in jobs[turn * 8:(turn + 1) * 8])
    # then psycopg prepared the exchange's statements (at their 5th run), and the server
    # ran each prepared run on a generic plan, none on a plan made for the values given
    marks = {"claim": "WITH wanted AS", "completions": "WITH given AS", "release of dependents": "WITH counts AS"}
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
