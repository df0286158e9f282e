"""`SQLiteRepository`: jobs in one SQLite file, shared by threads and by processes.

WAL mode, one connection per thread, `BEGIN IMMEDIATE` for every write, a busy timeout,
and SQL from `sqlite_schema` with parameters only. It does not decide what runs when:
that is the manager's job; this module only keeps rows consistent.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from typing import Any, Collection, Iterator, Optional, Sequence

from .. import serialization
from ..errors import RepositoryError
from ..models import JobStatus
from . import sqlite_schema as sql
from .sqlite_rows import STATUSES, entry_from_row, record_from_row, row_params, translate
from ._cascade import dependency_error_message, plan_batch
from .group_commit import GroupCommitter
from .base import (Cascade, CancelOutcome, JobRecord, JobRepository, QueueEntry, Recovery, Settlement,
                   SettlesThroughApply, WorkerInfo)

DURABILITY = {"normal": "NORMAL", "full": "FULL"}

# Shared by every completion that releases nothing (it is frozen): one less object per job.
_NOTHING_RELEASED = Cascade()


class SQLiteRepository(SettlesThroughApply, JobRepository):
    """A `JobRepository` in a SQLite file (WAL mode), safe for threads and processes.

    `durability="normal"` (synchronous=NORMAL) loses nothing when a process crashes; the
    last commits may roll back on power loss. `"full"` fsyncs every commit.
    `busy_timeout` is how many seconds a write waits for another writer's lock.
    """

    persistent = True

    def __init__(self, path: "str | os.PathLike[str]", durability: str = "normal", *,
                 busy_timeout: float = 30.0,
                 max_payload_bytes: Optional[int] = serialization.DEFAULT_MAX_PAYLOAD_BYTES) -> None:
        if durability not in DURABILITY:
            raise ValueError(f"durability must be one of {sorted(DURABILITY)}, got {durability!r}")
        if isinstance(busy_timeout, bool) or not isinstance(busy_timeout, (int, float)) or busy_timeout < 0:
            raise ValueError(f"busy_timeout must be a number of seconds >= 0, got {busy_timeout!r}")
        self.path = os.fspath(path)
        if not self.path or self.path == ":memory:":
            raise ValueError("SQLiteRepository needs a file path; use MemoryRepository for memory")
        self.durability = durability
        self.busy_timeout = float(busy_timeout)
        self.max_payload_bytes = max_payload_bytes
        self._local = threading.local()
        # _connections_lock guards _connections (thread -> its connection) and _closed.
        self._connections_lock = threading.Lock()
        self._connections: dict[threading.Thread, sqlite3.Connection] = {}
        self._closed = False
        # _write_lock serialises this process's write transactions (see _write).
        self._write_lock = threading.Lock()
        # Enqueues and outcomes from many threads share transactions (and fsyncs).
        self._group: GroupCommitter[sqlite3.Connection] = GroupCommitter(self._write)
        try:
            self._migrate()
        except BaseException:
            self.close()  # do not leak the connection (and an open file) of a refused database
            raise

    # -- connections ---------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        with self._connections_lock:
            if self._closed:
                raise RepositoryError(f"SQLite at {self.path!r}: the repository is closed")
            for thread in [t for t in self._connections if not t.is_alive()]:
                self._connections.pop(thread).close()
        try:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {DURABILITY[self.durability]}")
            conn.execute("PRAGMA foreign_keys = OFF")
        except sqlite3.Error as exc:
            raise translate(exc, self.path) from None
        with self._connections_lock:
            self._connections[threading.current_thread()] = conn
        self._local.conn = conn
        return conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A `BEGIN IMMEDIATE` transaction: committed on success, rolled back on error."""
        conn = self._connection()
        # One writer per process at a time: threads queue on a fair Python lock instead of
        # SQLite's busy handler, which sleeps in growing steps and wrecks throughput.
        with self._write_lock:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise translate(exc, self.path) from None
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise translate(exc, self.path) from None
                raise

    def _read(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._connection().execute(query, params).fetchall()
        except sqlite3.Error as exc:
            raise translate(exc, self.path) from None

    def _migrate(self) -> None:
        if self._current_version() == sql.SCHEMA_VERSION:
            return  # nothing to write: opening never waits for another process's writer
        with self._write() as conn:
            try:
                # The version first: a newer jobcore's tables may not take this version's indexes.
                conn.execute(sql.CREATE_META)
                row = conn.execute(sql.SELECT_SCHEMA_VERSION).fetchone()
                version = int(row[0]) if row else sql.SCHEMA_VERSION
                if version > sql.SCHEMA_VERSION:
                    raise RepositoryError(
                        f"SQLite at {self.path!r}: schema version {version} is newer than this"
                        f" jobcore understands ({sql.SCHEMA_VERSION}); upgrade jobcore")
                # Statement by statement: executescript() would COMMIT our transaction.
                for statement in sql.CREATE_SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                while version < sql.SCHEMA_VERSION:
                    for statement in sql.MIGRATIONS[version].split(";"):
                        if statement.strip():
                            try:
                                conn.execute(statement)
                            except sqlite3.OperationalError as exc:
                                if "duplicate column" not in str(exc):
                                    raise
                    version += 1
                # Written only when it changes, so a read-only database still opens for reading.
                if row is None or row[0] != str(version):
                    conn.execute(sql.SET_SCHEMA_VERSION, (str(version),))
            except sqlite3.DatabaseError as exc:
                raise translate(exc, self.path) from None

    def _current_version(self) -> Optional[int]:
        try:
            rows = self._connection().execute(sql.SELECT_SCHEMA_VERSION).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None
            raise translate(exc, self.path) from None
        except sqlite3.DatabaseError as exc:
            raise translate(exc, self.path) from None
        return int(rows[0][0]) if rows else None

    def close(self) -> None:
        with self._connections_lock:
            self._closed = True
            connections = list(self._connections.values())
            self._connections.clear()
        for conn in connections:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._local = threading.local()

    # -- rows ------------------------------------------------------------------------------
    # -- adding ----------------------------------------------------------------------------
    def insert(self, records: Sequence[JobRecord], now: float) -> list[str]:
        return self._group.run(lambda conn: self._insert(conn, records, now))

    def _insert(self, conn: sqlite3.Connection, records: Sequence[JobRecord], now: float) -> list[str]:
        given = {record.id: record for record in records}
        def exists(job_id: str) -> bool:
            return conn.execute(sql.SELECT_STATUS, (job_id,)).fetchone() is not None

        ids, stored = plan_batch(records, exists=_Lookup(exists),
                                 unfinished_with_key=lambda key: self._unfinished_with_key(conn, key))
        for record in stored:
            blocked, dead = 0, None
            for dep in record.depends_on:
                row = conn.execute(sql.SELECT_STATUS, (dep,)).fetchone()
                if row is None:  # a job later in this batch: not stored yet, so not complete
                    blocked += 1
                    continue
                status, name = row
                if status != JobStatus.COMPLETED.value:
                    blocked += 1
                if status in (JobStatus.FAILED.value, JobStatus.CANCELLED.value):
                    dead = dependency_error_message(dep, name, status)
            status = JobStatus.CANCELLED if dead else record.status
            try:
                cursor = conn.execute(sql.INSERT_JOB, row_params(record, now, status, blocked, dead, self.max_payload_bytes))
            except sqlite3.IntegrityError:
                raise ValueError(f"Job.id: a job with id {record.id!r} already exists") from None
            given[record.id].seq = cursor.lastrowid or 0
            given[record.id].blocked, given[record.id].status = blocked, status
            for dep in record.depends_on:
                conn.execute(sql.INSERT_DEP, (record.id, dep))
            if dead:
                # Batch members listed before it that depend on it can never run either.
                self._cancel_dependents(conn, record.id, now)
        return ids

    @staticmethod
    def _unfinished_with_key(conn: sqlite3.Connection, key: str) -> Optional[str]:
        row = conn.execute(sql.SELECT_UNFINISHED_BY_KEY, (key,)).fetchone()
        return row[0] if row else None

    # -- reading ---------------------------------------------------------------------------
    def get(self, job_id: str) -> Optional[JobRecord]:
        rows = self._read(sql.SELECT_JOB, (job_id,))
        return record_from_row(rows[0]) if rows else None

    def _queue_query(self, template: str, function_names: Optional[Collection[str]], limit: int,
                     include_schedules: bool) -> list[QueueEntry]:
        params: list[Any] = []
        names = ""
        if function_names is not None:
            names = "AND (function_name IN (SELECT value FROM json_each(?))"
            names += " OR cron IS NOT NULL)" if include_schedules else ")"
            params.append(json.dumps(sorted(function_names)))
        params.append(limit)
        return [entry_from_row(row) for row in self._read(template.format(names=names), params)]

    def ready(self, function_names: Optional[Collection[str]], limit: int) -> list[QueueEntry]:
        return self._queue_query(sql.SELECT_READY, function_names, limit, include_schedules=False)

    def scheduled(self, function_names: Optional[Collection[str]], limit: int) -> list[QueueEntry]:
        return self._queue_query(sql.SELECT_SCHEDULED, function_names, limit, include_schedules=True)

    def list(self, *, status: Optional[JobStatus] = None, tags: Optional[Collection[str]] = None,
             owner: Optional[str] = None, limit: Optional[int] = 50, offset: int = 0) -> list[JobRecord]:
        where, params = ["1 = 1"], []  # type: ignore[var-annotated]
        if status is not None:
            where.append("status = ?")
            params.append(JobStatus(status).value)
        if owner is not None:
            where.append("owner = ?")
            params.append(owner)
        for tag in sorted(tags or ()):
            where.append("EXISTS (SELECT 1 FROM json_each(jobs.tags) WHERE value = ?)")
            params.append(tag)
        params += [-1 if limit is None else limit, offset]
        query = f"SELECT {sql.COLUMNS} FROM jobs WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT ? OFFSET ?"
        return [record_from_row(row) for row in self._read(query, params)]

    def count_by_status(self) -> dict[JobStatus, int]:
        counts = {status: 0 for status in JobStatus}
        for status, count in self._read(sql.COUNT_BY_STATUS):
            if status in STATUSES:
                counts[STATUSES[status]] = count
        return counts

    def logs(self, job_id: str) -> list[tuple[float, str, str]]:
        return [tuple(row) for row in self._read(sql.SELECT_LOGS, (job_id,))]  # type: ignore[misc]

    # -- running ---------------------------------------------------------------------------
    def claim(self, job_id: str, worker_id: str, now: float, lease_expires_at: float) -> Optional[JobRecord]:
        with self._write() as conn:
            row = conn.execute(sql.CLAIM, (now, worker_id, lease_expires_at, job_id, now)).fetchone()
        return record_from_row(row) if row else None

    def _cancel_dependents(self, conn: sqlite3.Connection, job_id: str, now: float) -> tuple[str, ...]:
        status, name = conn.execute(sql.SELECT_STATUS, (job_id,)).fetchone()
        message = dependency_error_message(job_id, name, status)
        return tuple(row[0] for row in conn.execute(sql.CANCEL_DEPENDENTS, (job_id, now, message)))

    def _settle(self, conn: sqlite3.Connection, s: Settlement, worker_id: str, now: float) -> Optional[Cascade]:
        """Apply one settlement other than a completion inside the caller's transaction."""
        held = (s.job_id, worker_id, s.attempt)
        if s.kind == "release":
            return Cascade() if conn.execute(sql.RELEASE, held).rowcount == 1 else None
        if s.kind == "cancel":
            if conn.execute(sql.FINISH_CANCELLED, (now, *held)).rowcount != 1:
                return None
            return Cascade(cancelled=self._cancel_dependents(conn, s.job_id, now))
        if s.kind not in ("retry", "fail"):
            raise ValueError(f"unknown settlement kind {s.kind!r}")
        retrying = s.kind == "retry" and s.retry_at is not None
        query = sql.FAIL_RETRY if retrying else sql.FAIL_FINAL
        first = s.retry_at if retrying else now
        if conn.execute(query, (first, s.error, s.error_type, s.traceback, *held)).rowcount != 1:
            return None
        if s.note is not None:
            conn.execute(sql.INSERT_LOG, (s.job_id, now, "error", s.note))
        return Cascade() if retrying else Cascade(cancelled=self._cancel_dependents(conn, s.job_id, now))

    def _settle_all(self, conn: sqlite3.Connection, settlements: Sequence[Settlement],
                    encoded: Sequence[Optional[str]], worker_id: str, now: float) -> list[Optional[Cascade]]:
        """Apply settlements in order, each run of consecutive completions as one batch.

        Only runs are batched, not every completion: a completion and a later failure can
        reach the same dependent, and its `blocked` must come out as the order gives it."""
        cascades: list[Optional[Cascade]] = []
        start, count = 0, len(settlements)
        while start < count:
            end = start
            while end < count and settlements[end].kind == "complete":
                end += 1
            if end > start:
                cascades += self._complete_many(conn, settlements[start:end], encoded[start:end], worker_id, now)
                start = end
            else:
                cascades.append(self._settle(conn, settlements[start], worker_id, now))
                start += 1
        return cascades

    def _complete_many(self, conn: sqlite3.Connection, settlements: Sequence[Settlement],
                       encoded: Sequence[Optional[str]], worker_id: str, now: float) -> list[Optional[Cascade]]:
        """Complete jobs held by `worker_id` (as many `_settle` calls would) and release
        their dependents together; a dependent released here is reported with the last
        (in settlement order) of its dependencies completed here."""
        completed: list[Optional[str]] = []  # per settlement: its job id if it applied, else None
        for s, e in zip(settlements, encoded):
            if conn.execute(sql.COMPLETE, (e, now, s.job_id, worker_id, s.attempt)).rowcount != 1:
                completed.append(None)
                continue
            completed.append(s.job_id)
            if s.note is not None:
                conn.execute(sql.INSERT_LOG, (s.job_id, now, "info", s.note))
        released = self._release_dependents(conn, [job_id for job_id in completed if job_id is not None])
        cascades: list[Optional[Cascade]] = []
        for job_id in completed:
            if job_id is None:
                cascades.append(None)
            elif job_id in released:
                cascades.append(Cascade(released=tuple(released[job_id])))
            else:
                cascades.append(_NOTHING_RELEASED)
        return cascades

    @staticmethod
    def _release_dependents(conn: sqlite3.Connection, completed: list[str]) -> dict[str, list[QueueEntry]]:
        """Unblock the dependents of `completed` (in settlement order); returns those now
        free of blocks by the completion that released them."""
        released: dict[str, list[QueueEntry]] = {}
        if not completed:
            return released
        ids = json.dumps(completed)
        if conn.execute(sql.ANY_DEPENDENTS, (ids,)).fetchone()[0]:
            for row in conn.execute(sql.RELEASE_DEPENDENTS, (ids, ids, ids)):
                if row[6] == 0:
                    released.setdefault(row[7], []).append(entry_from_row(row))
        return released

    def _encode_result(self, s: Settlement) -> Optional[str]:
        if s.kind != "complete":
            return None
        return serialization.encode(s.result, field="result", max_bytes=self.max_payload_bytes)

    def apply(self, settlements: Sequence[Settlement], claim_ids: Sequence[str], worker_id: str,
              now: float, lease_expires_at: float, top_up: Optional[Collection[str]] = None,
              ) -> tuple[list[Optional[Cascade]], list[JobRecord]]:
        """One transaction for every settlement and the claims (a group commit)."""
        encoded = [self._encode_result(s) for s in settlements]  # raises before writing

        def op(conn: sqlite3.Connection) -> tuple[list[Optional[Cascade]], list[Any]]:
            cascades = self._settle_all(conn, settlements, encoded, worker_id, now)
            rows = []
            if claim_ids:
                params = (now, worker_id, lease_expires_at, json.dumps(list(claim_ids)), now)
                rows = conn.execute(sql.CLAIM_MANY, params).fetchall()
                missing = len(claim_ids) - len(rows)
                if top_up is not None and missing > 0:
                    params = (now, worker_id, lease_expires_at, json.dumps(sorted(top_up)), missing)
                    rows += conn.execute(sql.CLAIM_BEST, params).fetchall()
            return cascades, rows

        cascades, rows = self._group.run(op)
        return cascades, [record_from_row(row) for row in rows]

    def cancel(self, job_id: str, now: float, reason: str) -> tuple[CancelOutcome, Cascade]:
        with self._write() as conn:
            if conn.execute(sql.CANCEL_WAITING, (now, reason, job_id)).rowcount == 1:
                return CancelOutcome.CANCELLED, Cascade(cancelled=self._cancel_dependents(conn, job_id, now))
            if conn.execute(sql.REQUEST_CANCEL, (job_id,)).rowcount == 1:
                return CancelOutcome.REQUESTED, Cascade()
            found = conn.execute(sql.SELECT_STATUS, (job_id,)).fetchone() is not None
        return (CancelOutcome.FINISHED if found else CancelOutcome.NOT_FOUND), Cascade()

    def requeue(self, job_id: str, now: float) -> Optional[QueueEntry]:
        try:
            with self._write() as conn:
                row = conn.execute(sql.REQUEUE, (job_id,)).fetchone()
        except RepositoryError as exc:
            if "UNIQUE" in str(exc):  # another unfinished job holds its unique_key
                return None
            raise
        return entry_from_row(row) if row else None

    def update_progress(self, job_id: str, worker_id: str, attempt: int, progress: float,
                        message: str, details: dict[str, Any], now: float) -> bool:
        encoded = serialization.encode(details, field="progress details")
        with self._write() as conn:
            params = (progress, message, encoded, job_id, worker_id, attempt)
            return conn.execute(sql.UPDATE_PROGRESS, params).rowcount == 1

    def add_log(self, job_id: str, level: str, message: str, now: float) -> None:
        with self._write() as conn:
            conn.execute(sql.INSERT_LOG, (job_id, now, level, message))

    def heartbeat(self, worker_id: str, job_ids: Collection[str], lease_expires_at: float,
                  now: float) -> list[str]:
        if not job_ids:
            return []
        with self._write() as conn:
            params = (lease_expires_at, worker_id, json.dumps(list(job_ids)))
            rows = conn.execute(sql.HEARTBEAT, params).fetchall()
        return [job_id for job_id, requested in rows if requested]

    def recover_expired(self, now: float) -> list[QueueEntry]:
        return list(self.recover(now).requeued)

    def recover(self, now: float) -> Recovery:
        with self._write() as conn:
            rows = conn.execute(sql.RECOVER_EXPIRED, (now, now)).fetchall()
            for row in rows:
                conn.execute(sql.INSERT_LOG, (row[0], now, "warning", row[7]))
                if row[6] in (JobStatus.FAILED.value, JobStatus.CANCELLED.value):
                    self._cancel_dependents(conn, row[0], now)
        return Recovery(requeued=tuple(entry_from_row(row) for row in rows if row[6] == JobStatus.PENDING.value),
                        failed=tuple(row[0] for row in rows if row[6] == JobStatus.FAILED.value),
                        cancelled=tuple(row[0] for row in rows if row[6] == JobStatus.CANCELLED.value))

    def fire_schedule(self, schedule_id: str, fire_at: float, next_run_at: float, run: JobRecord,
                      now: float) -> bool:
        params = row_params(run, now, JobStatus.PENDING, 0, None, self.max_payload_bytes)
        with self._write() as conn:
            if conn.execute(sql.ADVANCE_SCHEDULE, (next_run_at, schedule_id, fire_at)).rowcount != 1:
                return False
            try:
                run.seq = conn.execute(sql.INSERT_JOB, params).lastrowid or 0
            except sqlite3.IntegrityError:
                raise ValueError(f"Job.id: a job with id {run.id!r} already exists") from None
        return True

    # -- workers and change detection ----------------------------------------------------------
    def register_worker(self, worker_id: str, host: str, pid: int, now: float) -> None:
        with self._write() as conn:
            conn.execute(sql.REGISTER_WORKER, (worker_id, host, pid, now, now))

    def beat_worker(self, worker_id: str, running: Collection[str], now: float) -> None:
        with self._write() as conn:
            conn.execute(sql.BEAT_WORKER, (now, json.dumps(sorted(running)), worker_id))

    def unregister_worker(self, worker_id: str) -> None:
        with self._write() as conn:
            conn.execute(sql.UNREGISTER_WORKER, (worker_id,))

    def list_workers(self) -> list[WorkerInfo]:
        return [WorkerInfo(row[0], row[1], row[2], row[3], row[4], tuple(json.loads(row[5])))
                for row in self._read(sql.LIST_WORKERS)]

    def reap_workers(self, before: float) -> list[str]:
        with self._write() as conn:
            return [row[0] for row in conn.execute(sql.REAP_WORKERS, (before,)).fetchall()]

    def expire_worker(self, worker_id: str, now: float) -> int:
        with self._write() as conn:
            return conn.execute(sql.EXPIRE_WORKER, (now - 1.0, worker_id)).rowcount

    def change_token(self) -> Optional[object]:
        """`PRAGMA data_version` of this thread's connection: it changes whenever another
        connection (any thread or process) commits."""
        return self._read("PRAGMA data_version")[0][0]

    # -- housekeeping ------------------------------------------------------------------------
    def delete_finished(self, before: Optional[float]) -> int:
        with self._write() as conn:
            if before is None:
                rows = conn.execute(sql.DELETE_ALL_FINISHED).fetchall()
            else:
                rows = conn.execute(sql.DELETE_FINISHED, (before,)).fetchall()
            for (job_id,) in rows:
                conn.execute(sql.DELETE_LOGS, (job_id,))
                conn.execute(sql.DELETE_DEPS, (job_id, job_id))
        return len(rows)


class _Lookup:
    """Adapts an `exists(job_id)` function to the `in` test `check_batch_dependencies` uses."""

    def __init__(self, exists: Any) -> None:
        self._exists = exists

    def __contains__(self, job_id: object) -> bool:
        return isinstance(job_id, str) and self._exists(job_id)
