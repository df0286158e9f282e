"""Listing jobs from PostgreSQL: the plan PostgreSQL may cache for a listing statement (its
generic plan, made without the values; psycopg prepares a statement at its 5th run on a
connection) reads the listed status's range of jobs_status, not every job; and every
listing answers as filtering all the jobs in Python would.

Needs a server, as the other PostgreSQL tests (`pg_fixtures`).
"""

from __future__ import annotations

import re
from typing import Any, Optional

import pytest

import pg_fixtures
from pg_fixtures import *  # noqa: F401,F403 (the fixtures: server, schema, repo)
from pg_fixtures import Schema, psycopg
from jobcore import JobStatus
from jobcore.testing.contract import NOW, make_record

try:
    from jobcore.postgres import PostgresRepository
except ImportError:  # the extra is not installed: pg_fixtures.MARKS skips (or fails in CI)
    pass

pytestmark = pg_fixtures.MARKS

_FEW = 5  # jobs of each status but completed


def _few_of_each_behind_many_finished(repo: "PostgresRepository", schema: Schema) -> None:
    """The oldest jobs are a few of each status, then 3,000 completed ones, half alice's;
    the statistics are fresh."""
    few = {status: [make_record(owner="alice" if n % 2 else None, tags=frozenset({"t"}) if n % 3 else frozenset())
                    for n in range(_FEW)] for status in JobStatus if status is not JobStatus.COMPLETED}
    done = [make_record(owner="alice" if n % 2 else None) for n in range(3000)]
    repo.insert([record for records in few.values() for record in records] + done, NOW)
    with psycopg.connect(schema.server, autocommit=True) as conn:
        for status, records in [*few.items(), (JobStatus.COMPLETED, done)]:
            conn.execute(f'UPDATE "{schema.name}".jobs SET status = %s WHERE id = ANY(%s)',
                         (status.value, [r.id for r in records]))
        conn.execute(f'VACUUM ANALYZE "{schema.name}".jobs')


def _statement(repo: "PostgresRepository", monkeypatch: pytest.MonkeyPatch, **filters: Any) -> tuple[str, Any]:
    """The statement `list_without_args(**filters)` runs, and its parameters."""
    seen: list[tuple[str, Any]] = []
    read = repo._db.read

    def recording(query: str, params: Any = None) -> Any:
        seen.append((query, params))
        return read(query, params)

    monkeypatch.setattr(repo._db, "read", recording)
    repo.list_without_args(**filters)
    monkeypatch.undo()
    (statement,) = seen
    return statement


def _generic_plan(schema: Schema, query: str, params: dict[str, Any]) -> dict[str, Any]:
    """The plan PostgreSQL caches for `query` prepared (made for no values), run on `params`."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    prepared = re.sub(r"%\((\w+)\)s", number, query)
    values = psycopg.sql.SQL(", ").join(psycopg.sql.Literal(params[name]) for name in names)
    with psycopg.connect(schema.server, autocommit=True) as conn:
        conn.execute("SET plan_cache_mode = force_generic_plan")
        conn.execute(f"PREPARE listing AS {prepared}")
        explain = psycopg.sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE listing ({})").format(values)
        row = conn.execute(explain).fetchone()
    assert row is not None
    plan: dict[str, Any] = row[0][0]["Plan"]
    return plan


def _scans(node: dict[str, Any]) -> list[dict[str, Any]]:
    found = [node] if node["Node Type"].startswith(("Index", "Seq", "Bitmap")) else []
    return found + [scan for child in node.get("Plans", ()) for scan in _scans(child)]


@pytest.mark.parametrize("status", [s for s in JobStatus if s is not JobStatus.COMPLETED])
@pytest.mark.parametrize("owner", [None, "alice"])
def test_the_cached_plan_of_a_listing_reads_its_status_range_not_every_job(
        repo: "PostgresRepository", schema: Schema, monkeypatch: pytest.MonkeyPatch, status: JobStatus,
        owner: Optional[str]) -> None:
    # given a few jobs of each status behind 3,000 completed ones
    _few_of_each_behind_many_finished(repo, schema)
    # when the statement listing a status is planned without its values, as PostgreSQL
    # plans a prepared statement once the plans it made for the values cost more
    query, params = _statement(repo, monkeypatch, status=status, owner=owner, limit=50)
    plan = _generic_plan(schema, query, params)
    # then it reads that status's few rows from jobs_status, not every job
    scans = _scans(plan)
    assert [scan for scan in scans if scan.get("Index Name") == "jobs_status"], plan
    assert all(scan["Node Type"] != "Seq Scan" for scan in scans), plan
    assert sum(scan["Actual Rows"] * scan["Actual Loops"] for scan in scans) <= _FEW, plan


def test_every_listing_is_what_filtering_all_the_jobs_gives(repo: "PostgresRepository", schema: Schema) -> None:
    # given jobs of every status, two owners and tags
    _few_of_each_behind_many_finished(repo, schema)
    with psycopg.connect(schema.server, autocommit=True) as conn:
        rows = conn.execute(f'SELECT id, status, owner, tags FROM "{schema.name}".jobs ORDER BY seq DESC').fetchall()
    for status in [None, *JobStatus]:
        for owner in [None, "alice", "nobody"]:
            for tags in [None, ["t"]]:
                for limit, offset in [(50, 0), (2, 1), (None, 0), (None, 2000)]:
                    # when they are listed, then it is what filtering them all gives, in order
                    found = [job_id for job_id, stored_status, stored_owner, stored_tags in rows
                             if (status is None or stored_status == status.value)
                             and (owner is None or stored_owner == owner) and set(tags or ()) <= set(stored_tags)]
                    expected = found[offset:None if limit is None else offset + limit]
                    listed = repo.list_without_args(status=status, owner=owner, tags=tags, limit=limit, offset=offset)
                    assert [r.id for r in listed] == expected, (status, owner, tags, limit, offset)
