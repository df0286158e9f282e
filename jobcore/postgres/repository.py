"""`PostgresRepository`: the `JobRepository` contract on a PostgreSQL server, for many machines.

Same semantics as `SQLiteRepository` (the reference): every method is one transaction on
a pooled connection, every transition a compare-and-set, SQL from `postgres.schema` with
parameters only. Row locks replace SQLite's single writer (see `schema`); transactions
that lose a race (deadlock, serialisation failure, a concurrent unique key) are re-run.
Writes that make work ready NOTIFY `jobcore_jobs`, which `change_token` listens to.
It does not decide what runs when, and it never reads the clock: callers pass `now`.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable, Collection, Optional, Sequence, TypeVar

import psycopg
from psycopg import conninfo

from .. import serialization
from ..errors import RepositoryError
from ..models import JobStatus
from ..repository._cascade import check_batch_dependencies, dependency_error_message
from ..repository.base import Cascade, CancelOutcome, JobRecord, JobRepository, QueueEntry, WorkerInfo
from .listener import ChangeListener
from .pool import ConnectionPool, translate
from .schema import LOCK_SCHEMA, NOTIFY, SCHEMA_VERSION, Statements

logger = logging.getLogger("jobcore.postgres")

T = TypeVar("T")
_STATUS = {status.value: status for status in JobStatus}
MAX_TRIES = 8  # runs of one transaction that keeps losing races before giving up
# Unique indexes whose violation means "a concurrent transaction got there first": the
# transaction is re-run and then sees the winner (its job, or its unique key's holder).
_RACE_CONSTRAINTS = {"jobs_unique", "jobs_fire", "job_deps_pkey", "jobcore_meta_pkey",
                     "jobcore_workers_pkey"}


class _Unchanged(Exception):
    """Raised inside a transaction to roll it back and report that nothing applied."""


def _text(value: Optional[str]) -> Optional[str]:
    """Free text from a job (errors, logs, progress) made storable: PostgreSQL text holds
    neither NUL characters nor lone surrogates, and a worker must not fail on either."""
    if value is None or value.isascii() and "\x00" not in value:
        return value
    return value.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


class PostgresRepository(JobRepository):
    """A `JobRepository` on PostgreSQL (psycopg 3), shared by processes on many machines.

    `dsn`: a libpq connection string or `postgresql://` URL. `schema`: the PostgreSQL
    schema holding jobcore's tables (created, and migrated, on first use), so one database
    can hold several independent queues. `pool_size`: connections this object keeps (a
    call holds one only while it runs; `change_token` uses one more, for LISTEN).
    `timeout`: seconds to connect, or to wait for a free pooled connection.
    """

    persistent = True

    def __init__(self, dsn: str, *, schema: str = "jobcore", pool_size: int = 10,
                 timeout: float = 30.0,
                 max_payload_bytes: Optional[int] = serialization.DEFAULT_MAX_PAYLOAD_BYTES) -> None:
        if not isinstance(dsn, str):
            raise TypeError(f"dsn must be a PostgreSQL connection string, got {dsn!r}")
        try:
            conninfo.conninfo_to_dict(dsn)
        except psycopg.ProgrammingError as exc:
            raise ValueError(f"dsn is not a valid PostgreSQL connection string: {exc}") from None
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise ValueError(f"pool_size must be an int >= 1, got {pool_size!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        self.sql = Statements(schema)  # validates the schema name
        self.dsn = dsn
        self.schema = schema
        self.max_payload_bytes = max_payload_bytes
        self._pool = ConnectionPool(dsn, pool_size, float(timeout))
        self._listener = ChangeListener(self._pool, schema)
        self._migrate()

    def __repr__(self) -> str:
        return f"<PostgresRepository {self._pool.where} schema={self.schema!r}>"

    # -- transactions ----------------------------------------------------------------------
    def _transaction(self, work: Callable[[psycopg.Cursor[Any]], T]) -> T:
        """Run `work` in one transaction, re-running it when it lost a race."""
        for attempt in range(1, MAX_TRIES + 1):
            try:
                with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                    return work(cur)
            except (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected,
                    psycopg.errors.UniqueViolation) as exc:
                constraint = getattr(exc.diag, "constraint_name", None)
                if isinstance(exc, psycopg.errors.UniqueViolation) and constraint == "jobs_id_key":
                    raise ValueError(f"Job.id: a job with that id already exists"
                                     f" ({exc.diag.message_detail})") from None
                racing = not isinstance(exc, psycopg.errors.UniqueViolation) or constraint in _RACE_CONSTRAINTS
                if not racing or attempt == MAX_TRIES:
                    raise translate(exc, self._pool.where) from None
                logger.debug("transaction lost a race (%s), run %d; re-running", type(exc).__name__, attempt)
            except psycopg.DataError as exc:
                raise ValueError(f"PostgreSQL cannot store this value: {exc}") from None
            except psycopg.Error as exc:
                raise translate(exc, self._pool.where) from None
        raise AssertionError("unreachable")

    def _run(self, query: str, params: Any = None) -> tuple[int, list[tuple[Any, ...]]]:
        """Run one statement on its own (autocommit: atomic by itself): (rowcount, rows)."""
        try:
            with self._pool.connection() as conn:
                cur = conn.execute(query, params)
                return cur.rowcount, (cur.fetchall() if cur.description is not None else [])
        except psycopg.DataError as exc:
            raise ValueError(f"PostgreSQL cannot store this value: {exc}") from None
        except psycopg.Error as exc:
            raise translate(exc, self._pool.where) from None

    def _rows(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        return self._run(query, params)[1]

    def _notify(self, cur: psycopg.Cursor[Any]) -> None:
        """Wake idle managers everywhere once this transaction commits."""
        cur.execute(NOTIFY, (self.schema,))

    def _migrate(self) -> None:
        def work(cur: psycopg.Cursor[Any]) -> None:
            cur.execute(LOCK_SCHEMA, (self.schema,))
            for statement in self.sql.CREATE_SCHEMA:
                cur.execute(statement)
            row = cur.execute(self.sql.SELECT_VERSION).fetchone()
            version = int(row[0]) if row else SCHEMA_VERSION
            if version > SCHEMA_VERSION:
                raise RepositoryError(
                    f"PostgreSQL at {self._pool.where}: schema {self.schema!r} is at version {version},"
                    f" newer than this jobcore understands ({SCHEMA_VERSION}); upgrade jobcore")
            while version < SCHEMA_VERSION:
                for statement in self.sql.MIGRATIONS[version]:
                    cur.execute(statement)
                version += 1
            cur.execute(self.sql.STORE_VERSION, (str(version),))
        self._transaction(work)

    def close(self) -> None:
        self._listener.close()
        self._pool.close()

    # -- rows ------------------------------------------------------------------------------
    def _row_params(self, record: JobRecord, now: float, status: JobStatus, blocked: int,
                    error: Optional[str]) -> tuple[Any, ...]:
        payload = serialization.encode_payload(record.args, record.kwargs, self.max_payload_bytes)
        return (
            record.id, record.function_name, record.name, payload, record.priority, status.value,
            blocked, now, record.scheduled_at, record.run_at, record.max_retries, record.retry_delay,
            record.retry_backoff, bool(record.retry_jitter), record.timeout, sorted(record.tags),
            serialization.encode(record.metadata, field="metadata"), record.owner, record.unique_key,
            record.isolation, list(record.depends_on), record.cron, record.cron_timezone, error,
            "DependencyFailed" if error else None, now if error else None,
        )

    @staticmethod
    def _record(row: Sequence[Any]) -> JobRecord:
        record = JobRecord(id=row[0], function_name=row[1], name=row[2])
        (_, _, _, payload, record.priority, status, record.seq, record.created_at, record.scheduled_at,
         record.run_at, record.started_at, record.completed_at, record.attempts, record.max_retries,
         record.retry_delay, record.retry_backoff, record.retry_jitter, record.timeout, tags, metadata,
         record.owner, record.unique_key, record.isolation, depends_on, record.blocked,
         record.progress, record.progress_message, details, result, record.error,
         record.error_type, record.traceback, record.worker_id, record.lease_expires_at,
         record.cancel_requested, record.cron, record.cron_timezone) = row
        record.status = _STATUS.get(status, JobStatus.FAILED)
        record.tags = frozenset(tags or ())
        record.depends_on = tuple(depends_on or ())
        try:
            record.args, record.kwargs = serialization.decode_payload(payload)
            record.metadata = json.loads(metadata)
            record.progress_details = json.loads(details)
            record.result = serialization.decode(result)
        except (ValueError, TypeError) as exc:
            record.decode_error = f"stored job {record.id} cannot be decoded: {exc}"
        return record

    @staticmethod
    def _entry(row: Sequence[Any]) -> QueueEntry:
        return QueueEntry(row[0], row[1], row[2], row[3], row[4], bool(row[5]))

    # -- adding ----------------------------------------------------------------------------
    def insert(self, records: Sequence[JobRecord], now: float) -> list[str]:
        records = list(records)
        if not records:
            return []

        def work(cur: psycopg.Cursor[Any]) -> list[str]:
            batch_ids = {record.id for record in records}
            wanted = {dep for record in records for dep in record.depends_on} | batch_ids
            stored = {row[0]: (row[1], row[2])
                      for row in cur.execute(self.sql.LOCK_DEPENDENCIES, (sorted(wanted),))}
            check_batch_dependencies(records, exists=stored)
            keys = sorted({record.unique_key for record in records if record.unique_key is not None})
            holders = dict(cur.execute(self.sql.SELECT_UNFINISHED_BY_KEYS, (keys,)).fetchall()) if keys else {}
            ids: list[str] = []
            batch_unique: dict[str, str] = {}
            rows: list[tuple[Any, ...]] = []
            kept: list[JobRecord] = []
            for record in records:
                key = record.unique_key
                if key is not None:
                    existing = batch_unique.get(key) or holders.get(key)
                    if existing is not None:
                        ids.append(existing)
                        continue
                    batch_unique[key] = record.id
                if record.id in stored:
                    raise ValueError(f"Job.id: a job with id {record.id!r} already exists")
                blocked, dead = 0, None
                for dep in record.depends_on:
                    if dep in batch_ids:  # a new job of this batch: not complete yet
                        blocked += 1
                        continue
                    status, name = stored[dep]
                    if status != JobStatus.COMPLETED.value:
                        blocked += 1
                    if status in (JobStatus.FAILED.value, JobStatus.CANCELLED.value):
                        dead = dependency_error_message(dep, name, status)
                status = JobStatus.CANCELLED if dead else record.status
                rows.append(self._row_params(record, now, status, blocked, dead))
                kept.append(record)
                ids.append(record.id)
            if rows:
                cur.executemany(self.sql.INSERT_JOB, rows, returning=True)
                for record in kept:
                    record.seq = cur.fetchone()[0]  # type: ignore[index]
                    cur.nextset()
                deps = [(record.id, dep) for record in kept for dep in record.depends_on]
                if deps:
                    cur.executemany(self.sql.INSERT_DEP, deps)
                if any(row[5] != JobStatus.CANCELLED.value for row in rows):
                    self._notify(cur)
            return ids

        return self._transaction(work)

    # -- reading ---------------------------------------------------------------------------
    def get(self, job_id: str) -> Optional[JobRecord]:
        rows = self._rows(self.sql.SELECT_JOB, (job_id,))
        return self._record(rows[0]) if rows else None

    def _queue(self, query: str, function_names: Optional[Collection[str]], limit: int) -> list[QueueEntry]:
        params = {"any": function_names is None, "names": sorted(function_names or ()), "limit": limit}
        return [self._entry(row) for row in self._rows(query, params)]

    def ready(self, function_names: Optional[Collection[str]], limit: int) -> list[QueueEntry]:
        return self._queue(self.sql.SELECT_READY, function_names, limit)

    def scheduled(self, function_names: Optional[Collection[str]], limit: int) -> list[QueueEntry]:
        return self._queue(self.sql.SELECT_SCHEDULED, function_names, limit)

    def list(self, *, status: Optional[JobStatus] = None, tags: Optional[Collection[str]] = None,
             owner: Optional[str] = None, limit: Optional[int] = 50, offset: int = 0) -> list[JobRecord]:
        params = {"status": None if status is None else JobStatus(status).value, "owner": owner,
                  "tags": sorted(tags or ()), "limit": limit, "offset": offset}
        return [self._record(row) for row in self._rows(self.sql.LIST_JOBS, params)]

    def count_by_status(self) -> dict[JobStatus, int]:
        counts = {status: 0 for status in JobStatus}
        for status, count in self._rows(self.sql.COUNT_BY_STATUS):
            if status in _STATUS:
                counts[_STATUS[status]] = count
        return counts

    def logs(self, job_id: str) -> list[tuple[float, str, str]]:
        return [tuple(row) for row in self._rows(self.sql.SELECT_LOGS, (job_id,))]  # type: ignore[misc]

    # -- running ---------------------------------------------------------------------------
    def claim(self, job_id: str, worker_id: str, now: float, lease_expires_at: float) -> Optional[JobRecord]:
        params = {"id": job_id, "now": now, "worker": worker_id, "lease": lease_expires_at}
        rows = self._rows(self.sql.CLAIM, params)
        return self._record(rows[0]) if rows else None

    def _cancel_dependents(self, cur: psycopg.Cursor[Any], job_id: str, now: float) -> tuple[str, ...]:
        """Cancel the waiting dependents of `job_id`, transitively, one level at a time."""
        status, name = cur.execute(self.sql.SELECT_STATUS, (job_id,)).fetchone()  # type: ignore[misc]
        message = dependency_error_message(job_id, name, status)
        cancelled: list[str] = []
        seen, frontier = {job_id}, [job_id]
        while frontier:
            found = [row[0] for row in cur.execute(self.sql.SELECT_DEPENDENTS, (frontier,))]
            frontier = [dep for dep in found if dep not in seen]
            if not frontier:
                break
            seen.update(frontier)
            params = {"ids": frontier, "now": now, "error": message}
            cancelled.extend(row[0] for row in cur.execute(self.sql.CANCEL_DEPENDENTS, params))
        return tuple(cancelled)

    def complete(self, job_id: str, worker_id: str, attempt: int, result: Any, now: float,
                 note: Optional[str] = None) -> Optional[Cascade]:
        encoded = serialization.encode(result, field="result", max_bytes=self.max_payload_bytes)
        params = {"id": job_id, "worker": worker_id, "attempt": attempt, "result": encoded, "now": now}

        def work(cur: psycopg.Cursor[Any]) -> Optional[Cascade]:
            if cur.execute(self.sql.COMPLETE, params).rowcount != 1:
                return None
            if note is not None:
                cur.execute(self.sql.INSERT_LOG, (job_id, now, "info", _text(note)))
            rows = cur.execute(self.sql.RELEASE_DEPENDENTS, (job_id,)).fetchall()
            released = tuple(self._entry(row) for row in rows if row[6] == 0)
            if released:
                self._notify(cur)
            return Cascade(released=released)

        return self._transaction(work)

    def fail(self, job_id: str, worker_id: str, attempt: int, *, error: str, error_type: str,
             traceback: Optional[str], now: float, retry_at: Optional[float],
             note: Optional[str] = None) -> Optional[Cascade]:
        params = {"id": job_id, "worker": worker_id, "attempt": attempt, "now": now,
                  "retry_at": retry_at, "error": _text(error), "error_type": _text(error_type),
                  "traceback": _text(traceback)}

        def work(cur: psycopg.Cursor[Any]) -> Optional[Cascade]:
            query = self.sql.FAIL_FINAL if retry_at is None else self.sql.FAIL_RETRY
            if cur.execute(query, params).rowcount != 1:
                return None
            if note is not None:
                cur.execute(self.sql.INSERT_LOG, (job_id, now, "error", _text(note)))
            if retry_at is not None:
                self._notify(cur)  # its timer, for whichever manager is free then
                return Cascade()
            return Cascade(cancelled=self._cancel_dependents(cur, job_id, now))

        return self._transaction(work)

    def finish_cancelled(self, job_id: str, worker_id: str, attempt: int, now: float) -> Optional[Cascade]:
        params = {"id": job_id, "worker": worker_id, "attempt": attempt, "now": now}

        def work(cur: psycopg.Cursor[Any]) -> Optional[Cascade]:
            if cur.execute(self.sql.FINISH_CANCELLED, params).rowcount != 1:
                return None
            return Cascade(cancelled=self._cancel_dependents(cur, job_id, now))

        return self._transaction(work)

    def cancel(self, job_id: str, now: float, reason: str) -> tuple[CancelOutcome, Cascade]:
        def work(cur: psycopg.Cursor[Any]) -> tuple[CancelOutcome, Cascade]:
            params = {"id": job_id, "now": now, "reason": _text(reason)}
            if cur.execute(self.sql.CANCEL_WAITING, params).rowcount == 1:
                return CancelOutcome.CANCELLED, Cascade(cancelled=self._cancel_dependents(cur, job_id, now))
            if cur.execute(self.sql.REQUEST_CANCEL, (job_id,)).rowcount == 1:
                return CancelOutcome.REQUESTED, Cascade()
            found = cur.execute(self.sql.SELECT_STATUS, (job_id,)).fetchone() is not None
            return (CancelOutcome.FINISHED if found else CancelOutcome.NOT_FOUND), Cascade()

        return self._transaction(work)

    def requeue(self, job_id: str, now: float) -> Optional[QueueEntry]:
        def work(cur: psycopg.Cursor[Any]) -> Optional[QueueEntry]:
            if cur.execute(self.sql.SELECT_UNIQUE_HOLDER, (job_id,)).fetchone() is not None:
                return None  # another unfinished job holds its unique_key
            statuses = [row[0] for row in cur.execute(self.sql.LOCK_JOB_DEPENDENCIES, (job_id,))]
            blocked = sum(1 for status in statuses if status != JobStatus.COMPLETED.value)
            row = cur.execute(self.sql.REQUEUE, (blocked, job_id)).fetchone()
            if row is None:
                return None
            self._notify(cur)
            return self._entry(row)

        return self._transaction(work)

    def update_progress(self, job_id: str, worker_id: str, attempt: int, progress: float,
                        message: str, details: dict[str, Any], now: float) -> bool:
        encoded = serialization.encode(details, field="progress details")
        params = (progress, _text(message), encoded, job_id, worker_id, attempt)
        return self._run(self.sql.UPDATE_PROGRESS, params)[0] == 1

    def add_log(self, job_id: str, level: str, message: str, now: float) -> None:
        self._run(self.sql.INSERT_LOG, (job_id, now, _text(level), _text(message)))

    def heartbeat(self, worker_id: str, job_ids: Collection[str], lease_expires_at: float,
                  now: float) -> list[str]:
        if not job_ids:
            return []
        rows = self._rows(self.sql.HEARTBEAT, (lease_expires_at, worker_id, list(job_ids)))
        return [job_id for job_id, requested in rows if requested]

    def recover_expired(self, now: float) -> list[QueueEntry]:
        def work(cur: psycopg.Cursor[Any]) -> list[QueueEntry]:
            rows = cur.execute(self.sql.RECOVER_EXPIRED, {"now": now}).fetchall()
            if not rows:
                return []
            cur.executemany(self.sql.INSERT_LOG, [(row[0], now, "warning", row[7]) for row in rows])
            for row in rows:
                if row[6] == JobStatus.FAILED.value:
                    self._cancel_dependents(cur, row[0], now)
            recovered = [self._entry(row) for row in rows if row[6] == JobStatus.PENDING.value]
            if recovered:
                self._notify(cur)
            return recovered

        return self._transaction(work)

    def fire_schedule(self, schedule_id: str, fire_at: float, next_run_at: float, run: JobRecord,
                      now: float) -> bool:
        params = self._row_params(run, now, JobStatus.PENDING, 0, None) + (schedule_id, fire_at)

        def work(cur: psycopg.Cursor[Any]) -> bool:
            if cur.execute(self.sql.ADVANCE_SCHEDULE, (next_run_at, schedule_id, fire_at)).rowcount != 1:
                return False
            row = cur.execute(self.sql.INSERT_RUN, params).fetchone()
            if row is None:  # this fire time already has its run: undo the advance
                raise _Unchanged
            run.seq = row[0]
            self._notify(cur)
            return True

        try:
            return self._transaction(work)
        except _Unchanged:
            return False

    # -- workers and change detection ----------------------------------------------------------
    def register_worker(self, worker_id: str, host: str, pid: int, now: float) -> None:
        self._run(self.sql.REGISTER_WORKER, (worker_id, host, pid, now, now))

    def beat_worker(self, worker_id: str, running: Collection[str], now: float) -> None:
        self._run(self.sql.BEAT_WORKER, (now, sorted(running), worker_id))

    def unregister_worker(self, worker_id: str) -> None:
        self._run(self.sql.UNREGISTER_WORKER, (worker_id,))

    def list_workers(self) -> list[WorkerInfo]:
        return [WorkerInfo(row[0], row[1], row[2], row[3], row[4], tuple(row[5] or ()))
                for row in self._rows(self.sql.LIST_WORKERS)]

    def reap_workers(self, before: float) -> list[str]:
        return [row[0] for row in self._rows(self.sql.REAP_WORKERS, (before,))]

    def change_token(self) -> Optional[object]:
        """How many `NOTIFY jobcore_jobs` for this schema the listening connection has
        received: it changes when any process commits new or newly ready work."""
        return self._listener.token()

    # -- housekeeping ------------------------------------------------------------------------
    def delete_finished(self, before: Optional[float]) -> int:
        def work(cur: psycopg.Cursor[Any]) -> int:
            params = {"all": before is None, "before": before}
            ids = [row[0] for row in cur.execute(self.sql.DELETE_FINISHED, params)]
            if ids:
                cur.execute(self.sql.DELETE_LOGS, (ids,))
                cur.execute(self.sql.DELETE_DEPS, (ids, ids))
            return len(ids)

        return self._transaction(work)
