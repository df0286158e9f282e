"""`Database`: one jobcore schema on a PostgreSQL server — transactions, retries, migrations.

It owns the connection pool and the LISTEN connection, runs a unit of work in one
transaction (re-running it when it lost a race to another transaction, and once more when
its connection broke before it could commit), runs single statements in autocommit,
creates and migrates the schema, and turns psycopg errors into jobcore's. It knows
nothing of jobs: that is `PostgresRepository`'s part.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import re
from typing import Any, Callable, Iterator, Literal, Optional, Sequence, TypeVar, overload

import psycopg
from psycopg import conninfo

from ..errors import InvalidJob, RepositoryError
from . import schema as ddl
from .listener import ChangeListener
from .pool import ConnectionPool, translate
from .queries import Statements
from ..repository.values import schema_version

logger = logging.getLogger("jobcore.postgres")

T = TypeVar("T")
MAX_TRIES = 8  # runs of one transaction that keeps losing races before giving up
# Unique indexes whose violation means "a concurrent transaction got there first": the
# transaction is re-run and then sees the winner (its job, or its unique key's holder).
_RACE_CONSTRAINTS = {"jobs_unique", "jobs_fire", "job_deps_pkey", "jobcore_meta_pkey",
                     "jobcore_workers_pkey"}
_LOST_RACE = (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected,
              psycopg.errors.UniqueViolation)
# A transaction asking for generic plans (`Database.transaction`): its statements, once
# psycopg has prepared them (at their 5th run on a connection), run the plan made for any
# values instead of one made for the values given. Under the server's default ("auto")
# PostgreSQL went on planning an exchange's claim, completions and release of dependents
# afresh every time, for more than they cost to run (EXPLAIN: planning 0.12-0.29 ms,
# execution 0.03-0.3), and more so as the table grew: a 20,000-job drain on 4 workers ran
# at 390-500 µs a job against about 190 with generic plans. Without JIT compilation: a
# generic plan's cost is estimated for any values (the claim's top-up, a LIMIT of a
# bound number, for half the queue), and with 1,000,000 jobs queued that estimate passed
# `jit_above_cost`, so every claim of 8 jobs was compiled first: 25 ms of a 41 ms claim.
# Without sequential scans either: a generic plan is made once per prepared statement on
# a connection, with the table as it is then, and kept. A worker's first exchanges on a
# new (or near empty) table made plans that read the whole table, and with 20,000 jobs
# streamed in while the workers ran, every exchange read every row four times (a producer
# and workers on one server: 400-700 jobs a second, against 2,700-3,200 with this).
# Every statement of an exchange finds its rows by a key or an index range.
# `set_config(..., true)` is SET LOCAL: for this transaction only, all in one statement.
# PostgreSQL 12 and later (plan_cache_mode).
_GENERIC_PLANS = ("SELECT set_config('plan_cache_mode', 'force_generic_plan', true), set_config('jit', 'off', true),"
                  " set_config('enable_seqscan', 'off', true)")
_GENERIC_PLANS_SINCE = 120000  # server_version
# A transaction on them opens with its settings in one round trip, not two: statements with
# no parameters go by the simple query protocol, which takes several at once.
_BEGIN_ON_GENERIC_PLANS = "BEGIN; " + _GENERIC_PLANS


def _roll_back(conn: psycopg.Connection[Any]) -> None:
    """End the transaction open on `conn`, if the connection can still take a statement
    (else the pool drops it: it is lent again only when no transaction is open on it)."""
    if not conn.closed:
        try:
            conn.execute("ROLLBACK")
        except psycopg.Error:
            pass


class Unchanged(Exception):
    """Raise inside a unit of work to roll its transaction back (the caller catches it)."""


class LostRace(Exception):
    """Raise inside a unit of work that found a concurrent transaction got there first
    without an error from the server (an `ON CONFLICT DO NOTHING` that inserted nothing):
    the transaction is rolled back and re-run, like one that hit a race's unique index."""


class _ConnectionLost(Exception):
    """The connection broke under a statement, or under a transaction before its COMMIT
    was sent (`error` says how): the caller decides whether running it again is safe."""

    def __init__(self, error: psycopg.OperationalError) -> None:
        super().__init__(str(error))
        self.error = error


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


# The job field each index on `jobs` holds, for a value too long for its B-tree.
_INDEXED_FIELDS = {"jobs_id_key": "id", "jobs_unique": "unique_key", "jobs_owner": "owner",
                   "jobs_ready": "function_name", "jobs_due": "function_name"}


_TOO_LONG = "is too long for PostgreSQL's index on it (at most about 2,700 bytes)"


class TooLongForAnIndex(InvalidJob):
    """A value too long for any index row ("index row requires N bytes, maximum size is
    8191"), whose index the server does not name: `named` names the field."""

    def __init__(self) -> None:
        super().__init__("id, unique_key, owner or function_name", _TOO_LONG)

    @staticmethod
    @contextlib.contextmanager
    def named_for(records: Sequence[Any]) -> Iterator[None]:
        """Around storing `records`: this error raised as `InvalidJob` naming the longest
        indexed field of theirs."""
        try:
            yield
        except TooLongForAnIndex:
            _, field = max((len((getattr(record, field) or "").encode("utf-8", "surrogatepass")), field)
                           for record in records for field in set(_INDEXED_FIELDS.values()))
            raise InvalidJob(field, _TOO_LONG) from None


def too_long(exc: psycopg.errors.ProgramLimitExceeded) -> Optional[InvalidJob]:
    """`InvalidJob` naming the field whose value is too long for PostgreSQL's index on
    it ("index row size ... exceeds btree ... maximum 2704 for index ..."), or
    `TooLongForAnIndex` past what any index row holds; else None."""
    found = re.search(r'for index "([^"]+)"', str(exc))
    field = _INDEXED_FIELDS.get(found.group(1)) if found else None
    if field is not None:
        return InvalidJob(field, _TOO_LONG)
    return TooLongForAnIndex() if str(exc).startswith("index row requires") else None


def _lost_race(exc: psycopg.Error) -> bool:
    """Whether `exc` (one of `_LOST_RACE`) means another transaction got there first.
    Raises `InvalidJob` for a job id that is taken."""
    if not isinstance(exc, psycopg.errors.UniqueViolation):
        return True  # a serialization failure or a deadlock: always worth a re-run
    constraint = exc.diag.constraint_name
    if constraint == "jobs_id_key":
        raise InvalidJob("id", f"a job with that id already exists ({exc.diag.message_detail})") from None
    return constraint in _RACE_CONSTRAINTS


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

    def transaction(self, work: Callable[[Tx], T], *, generic_plans: bool = False) -> T:
        """Run `work` in one transaction (committed if it returns, rolled back if it
        raises), re-running it when it lost a race, and once when its connection broke
        before COMMIT was sent (the server then rolled it back: nothing was applied).
        A connection that breaks during COMMIT is not re-run: it may have committed.
        Translates psycopg's errors.

        `generic_plans`: its prepared statements run generic plans, without JIT nor
        sequential scans (see `_GENERIC_PLANS`), for statements that find their rows by
        ids or seqs given (or an index range), whose best plan is the same for any of
        them and for any size of the table."""
        reconnected = False
        races = 0  # runs that lost a race
        while True:  # ends: each pass returns, raises, or counts a race or the reconnection
            try:
                return self._transaction_once(work, generic_plans)
            except _ConnectionLost as lost:
                if reconnected:
                    raise translate(lost.error, self.where) from None
                reconnected = True
                logger.info("connection to %s broke before its transaction committed (%s);"
                            " re-running it on another connection", self.where, lost)
            except LostRace:
                races += 1
                if races == MAX_TRIES:
                    raise RepositoryError(f"PostgreSQL at {self.where}: a transaction lost"
                                          f" {MAX_TRIES} races in a row") from None
                logger.debug("transaction lost a race (nothing inserted), run %d; re-running", races)
            except _LOST_RACE as exc:
                races += 1
                if not _lost_race(exc) or races == MAX_TRIES:
                    raise translate(exc, self.where) from None
                logger.debug("transaction lost a race (%s), run %d; re-running", type(exc).__name__, races)
            except psycopg.Error as exc:
                raise self._error(exc) from None

    def _error(self, exc: psycopg.Error) -> Exception:
        """What a caller gets for `exc`: `InvalidJob` for a value too long for its index,
        `ValueError` for one PostgreSQL cannot hold, else a `RepositoryError` naming it."""
        if isinstance(exc, psycopg.errors.ProgramLimitExceeded):
            return too_long(exc) or translate(exc, self.where)
        if isinstance(exc, psycopg.DataError):
            return ValueError(f"PostgreSQL cannot store this value: {exc}")
        return translate(exc, self.where)

    def _transaction_once(self, work: Callable[[Tx], T], generic_plans: bool) -> T:
        """One run of `transaction`; `_ConnectionLost` if the connection broke before COMMIT."""
        with self.pool.connection() as conn:
            committing = False
            try:
                with conn.cursor() as cur:
                    on_generic_plans = generic_plans and conn.info.server_version >= _GENERIC_PLANS_SINCE
                    cur.execute(_BEGIN_ON_GENERIC_PLANS if on_generic_plans else "BEGIN")
                    tx = Tx(cur, self.schema)
                    try:
                        result = work(tx)
                        if conn.info.transaction_status != psycopg.pq.TransactionStatus.INTRANS:
                            # (a statement failed and `work` went on: COMMIT would roll back quietly)
                            raise RepositoryError(f"PostgreSQL at {self.where}: the transaction was aborted")
                    except BaseException:
                        _roll_back(conn)
                        raise
                    committing = True
                    cur.execute("COMMIT")
            except psycopg.OperationalError as exc:
                if conn.closed and not committing:
                    raise _ConnectionLost(exc) from exc
                raise
        if tx.notified:
            self._own_change = next(self._own_changes)
        return result

    def run(self, query: str, params: Any = None, *,
            idempotent: bool = False) -> tuple[int, list[tuple[Any, ...]]]:
        """Run one statement on its own (autocommit: atomic by itself): (rowcount, rows).

        An `idempotent` statement (a read, or a write that leaves the same rows and returns
        the same whether it runs once or twice) is re-run once on another connection when
        its connection broke under it. Any other write is not: the connection may have
        broken after the statement committed, and a second run would apply it twice."""
        runs = 2 if idempotent else 1
        for run in range(1, runs + 1):
            try:
                return self._run_once(query, params)
            except _ConnectionLost as lost:
                if run == runs:
                    raise translate(lost.error, self.where) from None
                logger.info("connection to %s broke under a statement (%s); re-running it on"
                            " another connection", self.where, lost)
            except psycopg.Error as exc:
                raise self._error(exc) from None
        raise AssertionError("unreachable")

    def _run_once(self, query: str, params: Any) -> tuple[int, list[tuple[Any, ...]]]:
        """One run of `run`; `_ConnectionLost` if the connection broke under it."""
        with self.pool.connection() as conn:
            try:
                cur = conn.execute(query, params)
                return cur.rowcount, (cur.fetchall() if cur.description is not None else [])
            except psycopg.OperationalError as exc:
                if conn.closed:
                    raise _ConnectionLost(exc) from exc
                raise

    @overload
    def insert_alone(self, query: str, params: Any, stored: Callable[[], Optional[int]], *,
                     notifies: bool = True, refusable: Literal[False] = False) -> int: ...
    @overload
    def insert_alone(self, query: str, params: Any, stored: Callable[[], Optional[int]], *,
                     notifies: bool = True, refusable: bool) -> Optional[int]: ...

    def insert_alone(self, query: str, params: Any, stored: Callable[[], Optional[int]], *,
                     notifies: bool = True, refusable: bool = False) -> Optional[int]:
        """The seq of a job stored by one INSERT that also NOTIFYs (`transition_queries.INSERT_ALONE`),
        run on its own (autocommit): moves this object's change token as a transaction
        that notified does (not for a `query` that `notifies` nothing: `INSERT_CLAIMED`).
        A taken job id raises `InvalidJob`. A `refusable` query may store nothing (and
        notify no one): then None (`INSERT_ALONE_KEYED`, for a key another job holds).

        If its connection breaks under it, it runs once more on another connection: the
        first run may have committed or not, and the id, unique, makes a second store
        impossible. A second run that finds the id taken asks `stored()`: the seq of the
        row if the first run stored it (the same job, as `stored` tells it), else None
        (another job's id: `InvalidJob`)."""
        try:
            rows = self._insert_once(query, params)
        except _ConnectionLost as lost:
            logger.info("connection to %s broke under an insert (%s); running it again on another"
                        " connection", self.where, lost)
            try:
                rows = self._insert_once(query, params)
            except _ConnectionLost as again:
                raise translate(again.error, self.where) from None
            except InvalidJob:
                seq = stored()
                if seq is None:
                    raise
                rows = [(seq,)]
        if not rows and refusable:
            return None
        if notifies:
            self._own_change = next(self._own_changes)
        return int(rows[0][0])

    def _insert_once(self, query: str, params: Any) -> list[tuple[Any, ...]]:
        """One run of `insert_alone`; `_ConnectionLost` if the connection broke under it."""
        try:
            return self._run_once(query, params)[1]
        except psycopg.errors.UniqueViolation as exc:
            _lost_race(exc)  # raises InvalidJob for the id: the only unique column given
            raise translate(exc, self.where) from None
        except psycopg.Error as exc:
            raise self._error(exc) from None

    def rows(self, query: str, params: Any = None, *, idempotent: bool = False) -> list[tuple[Any, ...]]:
        """The rows one statement returns (`idempotent`: see `run`)."""
        return self.run(query, params, idempotent=idempotent)[1]

    def read(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        """The rows a statement that only reads returns (re-run if its connection broke)."""
        return self.rows(query, params, idempotent=True)

    def planned_rows(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        """The rows one statement returns, run in a transaction of its own on generic plans
        (`transaction(..., generic_plans=True)`): for a statement run again and again that
        finds its rows by the ids or seqs given. Run on the server's defaults, the plan its
        connection keeps may be one made on a small table, which reads every row of a
        deep one; and that plan is the one exchanges then run, for a statement they share."""
        return self.transaction(lambda tx: tx.execute(query, params).fetchall(), generic_plans=True)

    def change_token(self) -> object:
        """(notifications for this schema heard, own notifying commits)."""
        return self._listener.token(), self._own_change

    def watch_changes(self, wake: Callable[[], None]) -> Callable[[], None]:
        """`wake()` at each notification for this schema from another process (see
        `ChangeListener.watch`), until the function returned is called."""
        return self._listener.watch(wake)

    def _migrate(self) -> None:
        """Create, migrate or repair the schema when it is missing, behind or missing a
        table or index; else touch nothing.

        The version, and which of jobcore's tables and indexes are there, are read first
        without a lock and without DDL: a current, whole schema (every open but the first
        of each version) is then opened by a role with no more than USAGE on the schema and
        DML on its tables, and never waits for other transactions. (CREATE INDEX IF NOT
        EXISTS takes a SHARE lock on `jobs` even when the index exists: run on every open,
        it waited for each open write to `jobs` while every writer of every process queued
        behind it.) Otherwise the migrator takes the advisory lock, reads both again
        (another process may have migrated meanwhile), and creates, migrates or makes
        again what was dropped in one transaction."""
        exists, version, missing = self.transaction(self._stored_version)
        if version == ddl.SCHEMA_VERSION and not missing:
            return
        self._refuse_newer(version)

        def work(tx: Tx) -> None:
            tx.execute(ddl.LOCK_SCHEMA, (self.schema,))
            exists, stored, missing = self._stored_version(tx)
            if stored == ddl.SCHEMA_VERSION and not missing:
                return  # another process migrated it while we waited for the lock
            self._refuse_newer(stored)
            if stored == ddl.SCHEMA_VERSION:
                logger.warning("PostgreSQL at %s: schema %r is missing %s (dropped by hand?);"
                               " creating them again", self.where, self.schema, ", ".join(missing))
            try:
                if not exists:
                    tx.execute(self.sql.CREATE_NAMESPACE)
                for statement in self.sql.CREATE_META:
                    tx.execute(statement)
                version = ddl.SCHEMA_VERSION if stored is None else stored  # None: a new install
                while version < ddl.SCHEMA_VERSION:  # step by step from what is there
                    for statement in self.sql.MIGRATIONS[version]:
                        tx.execute(statement)
                    version += 1
                for statement in self.sql.CREATE_SCHEMA:  # IF NOT EXISTS: new installs, new or dropped indexes
                    tx.execute(statement)
                tx.execute(self.sql.STORE_VERSION, (str(version),))
            except psycopg.errors.InsufficientPrivilege as exc:
                raise self._may_not_migrate(exists, stored, missing, tx, exc) from None
        self.transaction(work)

    def _stored_version(self, tx: Tx) -> tuple[bool, Optional[int], list[str]]:
        """(whether the schema exists, its stored version or None if it has none yet, the
        tables and indexes of `schema.CREATE_SCHEMA` it lacks), read without DDL and
        without a lock. A version that is not a number, or below 1, raises `RepositoryError`."""
        state = tx.execute(ddl.SELECT_SCHEMA_STATE, {"schema": self.schema,
                                                     "relations": list(ddl.SCHEMA_RELATIONS)}).fetchone()
        exists, has_meta, present = state if state else (False, False, [])
        missing = [name for name in ddl.SCHEMA_RELATIONS if name not in present]
        if not has_meta:
            return bool(exists), None, missing
        row = tx.execute(self.sql.SELECT_VERSION).fetchone()
        if row is None:
            return True, None, missing
        return True, schema_version(row[0], f"PostgreSQL at {self.where}: schema {self.schema!r}", "schema"), missing

    def _refuse_newer(self, version: Optional[int]) -> None:
        if version is not None and version > ddl.SCHEMA_VERSION:
            raise RepositoryError(
                f"PostgreSQL at {self.where}: schema {self.schema!r} is at version {version},"
                f" newer than this jobcore understands ({ddl.SCHEMA_VERSION}); upgrade jobcore")

    def _may_not_migrate(self, exists: bool, version: Optional[int], missing: list[str], tx: Tx,
                         exc: psycopg.errors.InsufficientPrivilege) -> RepositoryError:
        """The error for a role that must create or migrate the schema but may not: what
        has to happen, and who may do it (the server's own message is kept at the end)."""
        role = tx.cur.connection.info.user
        owner = role  # as the SQL suggested below needs it: quoted unless plain lower case
        if not (role.replace("_", "a").isalnum() and role.isascii() and role.islower()):
            owner = '"' + role.replace('"', '""') + '"'
        quoted = ddl.quote_identifier(self.schema)
        if not exists:
            needed = (f"schema {self.schema!r} does not exist and role {role!r} may not create it;"
                      f" create it for the role (CREATE SCHEMA {quoted} AUTHORIZATION {owner}),"
                      f" or have a role that may create it open it once with this jobcore")
        elif version is None:
            needed = (f"schema {self.schema!r} has no jobcore tables (version {ddl.SCHEMA_VERSION})"
                      f" and role {role!r} may not create them there; the schema's owner must"
                      f" open it once with this jobcore (or grant CREATE on it)")
        elif version == ddl.SCHEMA_VERSION:
            needed = (f"schema {self.schema!r} is missing {', '.join(missing)} (dropped by hand?) and"
                      f" role {role!r} may not create them; the owner of the schema and its tables"
                      f" must open it once with this jobcore to make them again")
        else:
            needed = (f"schema {self.schema!r} is at version {version} and this jobcore needs version"
                      f" {ddl.SCHEMA_VERSION}, but role {role!r} may not migrate it; the owner of"
                      f" the schema and its tables must open it once with this jobcore")
        text = " ".join(str(exc).split())
        return RepositoryError(f"PostgreSQL at {self.where}: {needed} ({text})")

    def close(self) -> None:
        """Close the LISTEN connection and the pool."""
        self._listener.close()
        self.pool.close()
