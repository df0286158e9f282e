"""Builds the repository `JobManager` is given: an instance, a path, a DSN, or None.

Only the choosing; each backend lives in its own module (PostgreSQL is imported only
when a `postgresql://` DSN asks for it).
"""

from __future__ import annotations

import os
from typing import Union

from .base import JobRepository
from .memory import MemoryRepository
from .sqlite import SQLiteRepository

RepositoryLike = Union[JobRepository, str, "os.PathLike[str]", None]
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def default_database_path() -> str:
    """`$JOBCORE_DB` (a SQLite path or a `postgresql://` DSN), or `./jobcore.db`."""
    return os.environ.get("JOBCORE_DB") or os.path.join(os.getcwd(), "jobcore.db")


def absolute_location(location: str) -> str:
    """`location` for another process or folder: a SQLite path made absolute, a
    `postgresql://` DSN as given (`os.path.abspath` would mangle its `//`)."""
    return location if location.startswith(POSTGRES_SCHEMES) else os.path.abspath(location)


def build_repository(repository: RepositoryLike) -> JobRepository:
    """A `JobRepository` from an instance, a SQLite path (":memory:" means
    `MemoryRepository`), a `postgresql://` DSN, or None (SQLite at the default path)."""
    if isinstance(repository, JobRepository):
        return repository
    if repository is None:
        repository = default_database_path()  # $JOBCORE_DB may hold a DSN
    if isinstance(repository, (str, os.PathLike)):
        text = os.fspath(repository)
        if text == ":memory:":
            return MemoryRepository()
        if text.startswith(POSTGRES_SCHEMES):
            from ..postgres import PostgresRepository  # the optional extra: imported on demand
            return PostgresRepository(text)
        return SQLiteRepository(text)
    raise TypeError(f"repository must be a JobRepository, a path, a DSN or None, got {repository!r}")
