"""What the PostgreSQL test modules share: the server, a fresh schema per test, and the
rule for when PostgreSQL is missing (skip loudly; under CI, fail, since CI must run them).

A test module does `from pg_fixtures import *` for the fixtures and sets
`pytestmark = pg_fixtures.MARKS`.
"""

from __future__ import annotations

import os
import sys
import uuid
import warnings
from typing import Any, Iterator, Optional

import pytest

import pg_server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository
WAIT = 30.0  # seconds a PostgreSQL test waits for anything before failing

try:
    import psycopg
    from jobcore.postgres import PostgresRepository
except ImportError as exc:  # the extra is not installed
    psycopg = None  # type: ignore[assignment]
    MISSING: Optional[str] = (f"NO PSYCOPG: the PostgreSQL repository is NOT tested here ({exc});"
                              " pip install -e '.[postgres]'")
else:
    MISSING = pg_server.SKIP_REASON

MARKS: list[Any] = []
if MISSING:
    if os.environ.get("CI"):  # CI must run these: a missing server is a failure there
        MARKS = [pytest.mark.usefixtures("_fail_in_ci")]
    else:
        warnings.warn(MISSING)
        MARKS = [pytest.mark.skip(reason=MISSING)]


@pytest.fixture
def _fail_in_ci() -> None:
    pytest.fail(f"CI must test PostgreSQL, but: {MISSING}")


@pytest.fixture(scope="session")
def server() -> str:
    dsn = pg_server.server_dsn()
    where = "started for this run" if pg_server.started_here() else f"from ${pg_server.ENV}"
    print(f"\nPostgreSQL for jobcore tests: {dsn} ({where})", file=sys.stderr)
    return dsn


class Schema:
    """A fresh PostgreSQL schema for one test, and DSNs that select it."""

    def __init__(self, server: str) -> None:
        self.server = server
        self.name = f"t_{uuid.uuid4().hex[:16]}"
        separator = "&" if "?" in server else "?"
        # A bare DSN string selects the schema through search_path (see schema_from_dsn).
        self.dsn = f"{server}{separator}options=-csearch_path%3D{self.name}"

    def repository(self, **options: Any) -> "PostgresRepository":
        return PostgresRepository(self.server, schema=self.name, **options)

    def back_to_version_4(self, dsn: Optional[str] = None) -> None:
        """Make the schema as version 4 left it (no index of failed jobs by finish time),
        connected as `dsn` (the server's by default)."""
        with psycopg.connect(dsn or self.server, autocommit=True) as conn:
            conn.execute(f'DROP INDEX "{self.name}".jobs_failed')
            conn.execute(f"UPDATE \"{self.name}\".jobcore_meta SET value = '4'")

    def drop(self) -> None:
        with psycopg.connect(self.server, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE')


@pytest.fixture
def schema(server: str) -> Iterator[Schema]:
    fresh = Schema(server)
    yield fresh
    fresh.drop()


@pytest.fixture
def repo(schema: Schema) -> Iterator["PostgresRepository"]:
    repository = schema.repository()
    yield repository
    repository.close()


__all__ = ["MARKS", "MISSING", "ROOT", "Schema", "WAIT", "_fail_in_ci", "psycopg", "repo", "schema", "server"]
