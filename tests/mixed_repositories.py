"""`repository_with`: a repository of each backend whose class mixes in a test's own
hooks (counting what it records, stalling a call), for tests run on all three."""

from __future__ import annotations

from typing import Any

import pytest

import pg_fixtures
from jobcore import MemoryRepository, SQLiteRepository
from jobcore.repository.base import JobRepository

# Parameters for a fixture over the backends (PostgreSQL skipped, or failed under CI,
# where it is missing).
BACKENDS = ["memory", "sqlite", pytest.param("postgres", marks=pg_fixtures.MARKS)]


def repository_with(mixin: type, request: Any, tmp_path: Any) -> JobRepository:
    """A new repository of the backend `request.param` names, of a class that puts `mixin`
    before that backend's. A PostgreSQL one gets the test's own schema (the fixture that
    calls this must run before the managers it serves, so the schema outlives them)."""
    if request.param == "memory":
        return type(f"Memory{mixin.__name__}", (mixin, MemoryRepository), {})()  # type: ignore[no-any-return]
    if request.param == "sqlite":
        cls = type(f"SQLite{mixin.__name__}", (mixin, SQLiteRepository), {})
        return cls(str(tmp_path / "jobs.db"))  # type: ignore[no-any-return]
    schema = request.getfixturevalue("schema")
    cls = type(f"Postgres{mixin.__name__}", (mixin, pg_fixtures.PostgresRepository), {})
    return cls(schema.server, schema=schema.name)  # type: ignore[no-any-return]


class AsIs:
    """No hooks: the backend as it is (for `repository_with`)."""
