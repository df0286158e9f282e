"""`Database`: one jobcore schema on a PostgreSQL server — transactions, retries, migrations.

It owns the connection pool and the LISTEN connection, runs a unit of work in one
transaction (re-running it when it lost a race to another transaction), runs single
statements in autocommit, creates and migrates the schema, and turns psycopg errors into
jobcore's. It knows nothing of jobs: that is `PostgresRepository`'s part.
"""

from __future__ import annotations

import itertools
import logging
import re
from typing import Any, Callable, Optional, TypeVar

import psycopg
from psycopg import conninfo

from ..errors import InvalidJob, RepositoryError
from . import schema as ddl
from .listener import ChangeListener
from .pool import ConnectionPool, translate
from .queries import Statements

logger = logging.getLogger("jobcore.postgres")

T = TypeVar("T")
MAX_TRIES = 8  # runs of one transaction that keeps losing races before giving up
# Unique indexes whose violation means "a concurrent transaction got there first": the
# transaction is re-run and then sees the winner (its job, or its unique key's holder).
_RACE_CONSTRAINTS = {"jobs_unique", "jobs_fire", "job_deps_pkey", "jobcore_meta_pkey",
                     "jobcore_workers_pkey"}
_LOST_RACE = (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected,
              psycopg.errors.UniqueViolation)


class Unchanged(Exception):
    """Raise inside a unit of work to roll its transaction back (the caller catches it)."""


class Tx:
    """One transaction: its cursor, and whether it asked to wake idle managers."""

    def __init__(self, cur: psycopg.Cursor[Any], schema: str) -> None:
        self.cur = cur
        self.notified = False
        self._schema = schema

    def execute(self, query: str, params: Any = None) -> psycopg.Cursor[Any]:
        """Run a statement of this transaction."""
        return self.cur.execute(query, params)

    def notify(self) -> None:
        """NOTIFY `jobcore_jobs` (once per transaction; delivered when it commits)."""
        if not self.notified:
            self.cur.execute(ddl.NOTIFY, (self._schema,))
            self.notified = True


def schema_from_dsn(dsn: str) -> Optional[str]:
    """The first schema of a `search_path` set in the DSN's `options`
    (`?options=-csearch_path%3Dmyqueue`), if any. Raises `ValueError` for a bad DSN."""
    try:
        options = str(conninfo.conninfo_to_dict(dsn).get("options") or "")
    except psycopg.ProgrammingError as exc:
        # psycopg quotes the string or a piece of it, password and all: never show those
        problem = re.sub(r'"[^"]*"', '"..."', str(exc).strip())
        raise ValueError(f"dsn is not a valid PostgreSQL connection string: {problem}") from None
    for word in options.replace("-c ", "-c").split():
        setting = word[2:] if word.startswith(("-c", "--")) else ""
        name, _, value = setting.partition("=")
        if name.strip().replace("-", "_") == "search_path" and value.strip():
            return value.split(",")[0].strip().strip('"') or None
    return None


class Database:
    """The tables of one jobcore schema behind a pool of `pool_size` connections.

    Creates and migrates the schema on construction."""

    def __init__(self, dsn: str, schema: str, pool_size: int, timeout: float) -> None:
        self.sql = Statements(schema)  # validates the name
        self.schema = schema
        self.pool = ConnectionPool(dsn, pool_size, timeout)
        self.where = self.pool.where
        self._listener = ChangeListener(self.pool, schema)
        # Moved after each commit that notified, so this object's own writes change the
        # token at once, whatever the notification's round trip takes.
        self._own_changes = itertools.count(1)
        self._own_change = 0
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    def transaction(self, work: Callable[[Tx], T]) -> T:
        """Run `work` in one transaction (committed if it returns, rolled back if it
        raises), re-running it when it lost a race. Translates psycopg's errors."""
        for attempt in range(1, MAX_TRIES + 1):
            try:
                with self.pool.connection() as conn:
                    with conn.transaction(), conn.cursor() as cur:
                        tx = Tx(cur, self.schema)
                        result = work(tx)
                if tx.notified:
                    self._own_change = next(self._own_changes)
                return result
            except _LOST_RACE as exc:
                constraint = exc.diag.constraint_name
                if isinstance(exc, psycopg.errors.UniqueViolation) and constraint == "jobs_id_key":
                    raise InvalidJob("id", f"a job with that id already exists"
                                           f" ({exc.diag.message_detail})") from None
                lost = not isinstance(exc, psycopg.errors.UniqueViolation) or constraint in _RACE_CONSTRAINTS
                if not lost or attempt == MAX_TRIES:
                    raise translate(exc, self.where) from None
                logger.debug("transaction lost a race (%s), run %d; re-running", type(exc).__name__, attempt)
            except psycopg.DataError as exc:
                raise ValueError(f"PostgreSQL cannot store this value: {exc}") from None
            except psycopg.Error as exc:
                raise translate(exc, self.where) from None
        raise AssertionError("unreachable")

    def run(self, query: str, params: Any = None) -> tuple[int, list[tuple[Any, ...]]]:
        """Run one statement on its own (autocommit: atomic by itself): (rowcount, rows)."""
        try:
            with self.pool.connection() as conn:
                cur = conn.execute(query, params)
                return cur.rowcount, (cur.fetchall() if cur.description is not None else [])
        except psycopg.DataError as exc:
            raise ValueError(f"PostgreSQL cannot store this value: {exc}") from None
        except psycopg.Error as exc:
            raise translate(exc, self.where) from None

    def rows(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        """The rows one statement returns."""
        return self.run(query, params)[1]

    def change_token(self) -> object:
        """(notifications for this schema heard, own notifying commits)."""
        return self._listener.token(), self._own_change

    def _migrate(self) -> None:
        def work(tx: Tx) -> None:
            tx.execute(ddl.LOCK_SCHEMA, (self.schema,))
            for statement in self.sql.CREATE_META:
                tx.execute(statement)
            row = tx.execute(self.sql.SELECT_VERSION).fetchone()
            version = int(row[0]) if row else ddl.SCHEMA_VERSION
            if version > ddl.SCHEMA_VERSION:
                raise RepositoryError(
                    f"PostgreSQL at {self.where}: schema {self.schema!r} is at version {version},"
                    f" newer than this jobcore understands ({ddl.SCHEMA_VERSION}); upgrade jobcore")
            while version < ddl.SCHEMA_VERSION:  # step by step from what is there
                for statement in self.sql.MIGRATIONS[version]:
                    tx.execute(statement)
                version += 1
            for statement in self.sql.CREATE_SCHEMA:  # IF NOT EXISTS: new installs, new indexes
                tx.execute(statement)
            if row is None or row[0] != str(version):
                tx.execute(self.sql.STORE_VERSION, (str(version),))
        self.transaction(work)

    def close(self) -> None:
        """Close the LISTEN connection and the pool."""
        self._listener.close()
        self.pool.close()
