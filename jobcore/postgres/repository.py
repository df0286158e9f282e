"""`PostgresRepository`: the `JobRepository` contract on a PostgreSQL server, for many machines.

Same semantics as `SQLiteRepository` (the reference): every method is one transaction on
a pooled connection, every transition a compare-and-set, SQL from `postgres.schema` with
parameters only. Row locks replace SQLite's single writer (see `schema`); a transaction
that loses a race (deadlock, serialisation failure, a concurrent unique key) is re-run.
Writes that make work ready NOTIFY `jobcore_jobs`, which `change_token` listens to.
It does not decide what runs when, and it never reads the clock: callers pass `now`.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, Callable, Collection, Optional, Sequence, TypeVar

import psycopg
from psycopg import conninfo

from .. import serialization
from ..errors import RepositoryError
from ..models import JobStatus
from ..repository._cascade import dependency_error_message, plan_batch
from ..repository.base import (Cascade, CancelOutcome, JobRecord, JobRepository, QueueEntry, Settlement,
                               WorkerInfo)
from .listener import ChangeListener
from .pool import ConnectionPool, translate
from .rows import clean_text, entry_from_row, record_from_row, row_params, status_of
from .schema import LOCK_SCHEMA, NOTIFY, SCHEMA_VERSION, Statements

logger = logging.getLogger("jobcore.postgres")

T = TypeVar("T")
MAX_TRIES = 8  # runs of one transaction that keeps losing races before giving up
# Unique indexes whose violation means "a concurrent transaction got there first": the
# transaction is re-run and then sees the winner (its job, or its unique key's holder).
_RACE_CONSTRAINTS = {"jobs_unique", "jobs_fire", "job_deps_pkey", "jobcore_meta_pkey",
                     "jobcore_workers_pkey"}
_SETTLEMENT_KINDS = {"complete", "retry", "fail", "cancel", "release"}
_DEAD = (JobStatus.FAILED.value, JobStatus.CANCELLED.value)


class _Unchanged(Exception):
    """Raised inside a transaction to roll it back and report that nothing applied."""


class _Tx:
    """One transaction's cursor, and whether it asked to wake idle managers."""

    def __init__(self, cur: psycopg.Cursor[Any], payload: str) -> None:
        self.cur = cur
        self.notified = False
        self._payload = payload

    def notify(self) -> None:
        """NOTIFY `jobcore_jobs` (once per transaction; delivered when it commits)."""
        if not self.notified:
            self.cur.execute(NOTIFY, (self._payload,))
            self.notified = True


def schema_from_dsn(dsn: str) -> Optional[str]:
    """The first schema of a `search_path` set in the DSN's `options`, if any
    (`options=-csearch_path=myqueue`), so a bare DSN string can choose the schema."""
    options = conninfo.conninfo_to_dict(dsn).get("options") or ""
    words = str(options).replace("-c ", "-c").split()
    for word in words:
        setting = word[2:] if word.startswith("-c") else word[2:] if word.startswith("--") else ""
        name, _, value = setting.partition("=")
        if name.strip().replace("-", "_") == "search_path" and value.strip():
            return value.split(",")[0].strip().strip('"') or None
    return None


class PostgresRepository(JobRepository):
    """A `JobRepository` on PostgreSQL (psycopg 3), shared by processes on many machines.

    `dsn`: a libpq connection string or `postgresql://` URL. `schema`: the PostgreSQL
    schema holding jobcore's tables (created, and migrated, on first use), so that one
    database can hold several independent queues; by default the first entry of a
    `search_path` given in the DSN's `options`, else `jobcore`. `pool_size`: connections
    kept (a call holds one only while it runs; `change_token` opens one more, to LISTEN).
    `timeout`: seconds to connect, or to wait for a free pooled connection.
    """

    persistent = True

    def __init__(self, dsn: str, *, schema: Optional[str] = None, pool_size: int = 10,
                 timeout: float = 30.0,
                 max_payload_bytes: Optional[int] = serialization.DEFAULT_MAX_PAYLOAD_BYTES) -> None:
        if not isinstance(dsn, str):
            raise TypeError(f"dsn must be a PostgreSQL connection string, got {dsn!r}")
        try:
            dsn_schema = schema_from_dsn(dsn)
        except psycopg.ProgrammingError as exc:
            raise ValueError(f"dsn is not a valid PostgreSQL connection string: {exc}") from None
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise ValueError(f"pool_size must be an int >= 1, got {pool_size!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        self.schema = schema or dsn_schema or "jobcore"
        self.sql = Statements(self.schema)  # validates the name
        self.dsn = dsn
        self.max_payload_bytes = max_payload_bytes
        self._pool = ConnectionPool(dsn, pool_size, float(timeout))
        self._listener = ChangeListener(self._pool, self.schema)
        # Bumped after each commit that notified: this object's own writes move the token
        # at once, whatever the latency of the notification's round trip.
        self._own_changes = itertools.count(1)
        self._own_change = 0
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"<PostgresRepository {self._pool.where} schema={self.schema!r}>"

    # -- transactions ----------------------------------------------------------------------
    def _transaction(self, work: Callable[[_Tx], T]) -> T:
        """Run `work` in one transaction, re-running it when it lost a race."""
        for attempt in range(1, MAX_TRIES + 1):
            try:
                with self._pool.connection() as conn:
                    with conn.transaction(), conn.cursor() as cur:
                        tx = _Tx(cur, self.schema)
                        result = work(tx)
                if tx.notified:
                    self._own_change = next(self._own_changes)
                return result
            except (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected,
                    psycopg.errors.UniqueViolation) as exc:
                constraint = exc.diag.constraint_name
                if isinstance(exc, psycopg.errors.UniqueViolation) and constraint == "jobs_id_key":
                    raise ValueError(f"Job.id: a job with that id already exists"
                                     f" ({exc.diag.message_detail})") from None
                lost_race = not isinstance(exc, psycopg.errors.UniqueViolation) or constraint in _RACE_CONSTRAINTS
                if not lost_race or attempt == MAX_TRIES:
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

    def _migrate(self) -> None:
        def work(tx: _Tx) -> None:
            cur = tx.cur
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
            if row is None or row[0] != str(version):
                cur.execute(self.sql.STORE_VERSION, (str(version),))
        self._transaction(work)

    def close(self) -> None:
        self._listener.close()
        self._pool.close()

    # -- adding ----------------------------------------------------------------------------
    def insert(self, records: Sequence[JobRecord], now: float) -> list[str]:
        records = list(records)
        if not records:
            return []
        given = {record.id: record for record in records}

        def work(tx: _Tx) -> list[str]:
            cur = tx.cur
            keys = sorted({r.unique_key for r in records if r.unique_key is not None})
            holders = dict(cur.execute(self.sql.SELECT_UNFINISHED_BY_KEYS, (keys,)).fetchall()) if keys else {}
            wanted = {dep for r in records for dep in r.depends_on} | set(given) | set(holders.values())
            found = {row[0]: (row[1], row[2])
                     for row in cur.execute(self.sql.LOCK_DEPENDENCIES, (sorted(wanted),))}
            ids, planned = plan_batch(records, exists=found, unfinished_with_key=holders.get)
            rows, dead_ids = [], []
            for record in planned:
                if record.id in found:
                    raise ValueError(f"Job.id: a job with id {record.id!r} already exists")
                blocked, dead = 0, None
                for dep in record.depends_on:
                    if dep not in found:  # a job of this batch: not complete yet
                        blocked += 1
                        continue
                    status, name = found[dep]
                    if status != JobStatus.COMPLETED.value:
                        blocked += 1
                    if status in _DEAD:
                        dead = dependency_error_message(dep, name, status)
                if dead:
                    dead_ids.append(record.id)
                status = JobStatus.CANCELLED if dead else record.status
                rows.append(row_params(record, now, status, blocked, dead, self.max_payload_bytes))
            if not rows:
                return ids
            cur.executemany(self.sql.INSERT_JOB, rows, returning=True)
            for record in planned:
                given[record.id].seq = cur.fetchone()[0]  # type: ignore[index]
                cur.nextset()
            deps = [(record.id, dep) for record in planned for dep in record.depends_on]
            if deps:
                cur.executemany(self.sql.INSERT_DEP, deps)
            for job_id in dead_ids:  # batch members depending on it can never run either
                self._cancel_dependents(cur, job_id, now)
            if len(dead_ids) < len(rows):
                tx.notify()
            return ids

        return self._transaction(work)

    # -- reading ---------------------------------------------------------------------------
    def get(self, job_id: str) -> Optional[JobRecord]:
        rows = self._rows(self.sql.SELECT_JOB, (job_id,))
        return record_from_row(rows[0]) if rows else None

    def _queue(self, query: str, function_names: Optional[Collection[str]], limit: int) -> list[QueueEntry]:
        params = {"any": function_names is None, "names": sorted(function_names or ()), "limit": limit}
        return [entry_from_row(row) for row in self._rows(query, params)]

    def ready(self, function_names: Optional[Collection[str]], limit: int) -> list[QueueEntry]:
        return self._queue(self.sql.SELECT_READY, function_names, limit)

    def scheduled(self, function_names: Optional[Collection[str]], limit: int) -> list[QueueEntry]:
        return self._queue(self.sql.SELECT_SCHEDULED, function_names, limit)

    def list(self, *, status: Optional[JobStatus] = None, tags: Optional[Collection[str]] = None,
             owner: Optional[str] = None, limit: Optional[int] = 50, offset: int = 0) -> list[JobRecord]:
        params = {"status": None if status is None else JobStatus(status).value, "owner": owner,
                  "tags": sorted(tags or ()), "limit": limit, "offset": offset}
        return [record_from_row(row) for row in self._rows(self.sql.LIST_JOBS, params)]

    def count_by_status(self) -> dict[JobStatus, int]:
        counts = {status: 0 for status in JobStatus}
        for status, count in self._rows(self.sql.COUNT_BY_STATUS):
            counts[status_of(status)] += count
        return counts

    def logs(self, job_id: str) -> list[tuple[float, str, str]]:
        return [tuple(row) for row in self._rows(self.sql.SELECT_LOGS, (job_id,))]  # type: ignore[misc]

    # -- running ---------------------------------------------------------------------------
    def claim(self, job_id: str, worker_id: str, now: float, lease_expires_at: float) -> Optional[JobRecord]:
        params = {"id": job_id, "now": now, "worker": worker_id, "lease": lease_expires_at}
        rows = self._rows(self.sql.CLAIM, params)
        return record_from_row(rows[0]) if rows else None

    def _cancel_dependents(self, cur: psycopg.Cursor[Any], job_id: str, now: float) -> tuple[str, ...]:
        """Cancel the waiting dependents of `job_id`, transitively, one level per statement."""
        status, name = cur.execute(self.sql.SELECT_STATUS, (job_id,)).fetchone()  # type: ignore[misc]
        message = dependency_error_message(job_id, name, status)
        cancelled: list[str] = []
        seen, frontier = {job_id}, [job_id]
        while frontier:
            found = [row[0] for row in cur.execute(self.sql.SELECT_DEPENDENTS, (frontier,))]
            frontier = sorted(dep for dep in found if dep not in seen)
            seen.update(frontier)
            if frontier:
                params = {"ids": frontier, "now": now, "error": message}
                cancelled.extend(row[0] for row in cur.execute(self.sql.CANCEL_DEPENDENTS, params))
        return tuple(cancelled)

    def _settle(self, tx: _Tx, s: Settlement, encoded: Optional[str], worker_id: str,
                now: float) -> Optional[Cascade]:
        """Apply one settlement inside the caller's transaction (`encoded`: its result)."""
        cur = tx.cur
        held = {"id": s.job_id, "worker": worker_id, "attempt": s.attempt, "now": now}
        if s.kind == "complete":
            if cur.execute(self.sql.COMPLETE, {**held, "result": encoded}).rowcount != 1:
                return None
            if s.note is not None:
                cur.execute(self.sql.INSERT_LOG, (s.job_id, now, "info", clean_text(s.note)))
            rows = cur.execute(self.sql.RELEASE_DEPENDENTS, (s.job_id,)).fetchall()
            released = tuple(entry_from_row(row) for row in rows if row[6] == 0)
            if released:
                tx.notify()
            return Cascade(released=released)
        if s.kind == "release":
            if cur.execute(self.sql.RELEASE, held).rowcount != 1:
                return None
            tx.notify()  # ready again, for whoever is free
            return Cascade()
        if s.kind == "cancel":
            if cur.execute(self.sql.FINISH_CANCELLED, held).rowcount != 1:
                return None
            return Cascade(cancelled=self._cancel_dependents(cur, s.job_id, now))
        retrying = s.kind == "retry" and s.retry_at is not None
        params = {**held, "retry_at": s.retry_at, "error": clean_text(s.error),
                  "error_type": clean_text(s.error_type), "traceback": clean_text(s.traceback)}
        if cur.execute(self.sql.FAIL_RETRY if retrying else self.sql.FAIL_FINAL, params).rowcount != 1:
            return None
        if s.note is not None:
            cur.execute(self.sql.INSERT_LOG, (s.job_id, now, "error", clean_text(s.note)))
        if retrying:
            tx.notify()  # its timer, for whichever manager is free then
            return Cascade()
        return Cascade(cancelled=self._cancel_dependents(cur, s.job_id, now))

    def _encode_result(self, s: Settlement) -> Optional[str]:
        if s.kind not in _SETTLEMENT_KINDS:
            raise ValueError(f"unknown settlement kind {s.kind!r}")
        if s.kind != "complete":
            return None
        return serialization.encode(s.result, field="result", max_bytes=self.max_payload_bytes)

    def apply(self, settlements: Sequence[Settlement], claim_ids: Sequence[str], worker_id: str,
              now: float, lease_expires_at: float) -> tuple[list[Optional[Cascade]], list[JobRecord]]:
        """One transaction for every settlement and the claims (a group commit)."""
        encoded = [self._encode_result(s) for s in settlements]  # raises before writing

        def work(tx: _Tx) -> tuple[list[Optional[Cascade]], list[JobRecord]]:
            cascades = [self._settle(tx, s, e, worker_id, now) for s, e in zip(settlements, encoded)]
            rows: list[tuple[Any, ...]] = []
            if claim_ids:
                params = {"ids": list(claim_ids), "now": now, "worker": worker_id, "lease": lease_expires_at}
                rows = tx.cur.execute(self.sql.CLAIM_MANY, params).fetchall()
            claimed = sorted((record_from_row(row) for row in rows), key=lambda r: (-r.priority, r.seq))
            return cascades, claimed

        return self._transaction(work)

    def _apply_single(self, settlement: Settlement, worker_id: str, now: float) -> Optional[Cascade]:
        encoded = self._encode_result(settlement)
        return self._transaction(lambda tx: self._settle(tx, settlement, encoded, worker_id, now))

    def complete(self, job_id: str, worker_id: str, attempt: int, result: Any, now: float,
                 note: Optional[str] = None) -> Optional[Cascade]:
        return self._apply_single(Settlement("complete", job_id, attempt, result=result, note=note),
                                  worker_id, now)

    def fail(self, job_id: str, worker_id: str, attempt: int, *, error: str, error_type: str,
             traceback: Optional[str], now: float, retry_at: Optional[float],
             note: Optional[str] = None) -> Optional[Cascade]:
        kind = "fail" if retry_at is None else "retry"
        settlement = Settlement(kind, job_id, attempt, error=error, error_type=error_type,
                                traceback=traceback, retry_at=retry_at, note=note)
        return self._apply_single(settlement, worker_id, now)

    def finish_cancelled(self, job_id: str, worker_id: str, attempt: int, now: float) -> Optional[Cascade]:
        return self._apply_single(Settlement("cancel", job_id, attempt), worker_id, now)

    def release(self, job_id: str, worker_id: str, attempt: int, now: float) -> bool:
        return self._apply_single(Settlement("release", job_id, attempt), worker_id, now) is not None

    def cancel(self, job_id: str, now: float, reason: str) -> tuple[CancelOutcome, Cascade]:
        def work(tx: _Tx) -> tuple[CancelOutcome, Cascade]:
            cur = tx.cur
            params = {"id": job_id, "now": now, "reason": clean_text(reason)}
            if cur.execute(self.sql.CANCEL_WAITING, params).rowcount == 1:
                return CancelOutcome.CANCELLED, Cascade(cancelled=self._cancel_dependents(cur, job_id, now))
            if cur.execute(self.sql.REQUEST_CANCEL, (job_id,)).rowcount == 1:
                return CancelOutcome.REQUESTED, Cascade()
            found = cur.execute(self.sql.SELECT_STATUS, (job_id,)).fetchone() is not None
            return (CancelOutcome.FINISHED if found else CancelOutcome.NOT_FOUND), Cascade()

        return self._transaction(work)

    def requeue(self, job_id: str, now: float) -> Optional[QueueEntry]:
        def work(tx: _Tx) -> Optional[QueueEntry]:
            cur = tx.cur
            if cur.execute(self.sql.SELECT_UNIQUE_HOLDER, (job_id,)).fetchone() is not None:
                return None  # another unfinished job holds its unique_key
            statuses = [row[0] for row in cur.execute(self.sql.LOCK_JOB_DEPENDENCIES, (job_id,))]
            blocked = sum(1 for status in statuses if status != JobStatus.COMPLETED.value)
            row = cur.execute(self.sql.REQUEUE, (blocked, job_id)).fetchone()
            if row is None:
                return None
            tx.notify()
            return entry_from_row(row)

        return self._transaction(work)

    def update_progress(self, job_id: str, worker_id: str, attempt: int, progress: float,
                        message: str, details: dict[str, Any], now: float) -> bool:
        params = {"progress": progress, "message": clean_text(message),
                  "details": serialization.encode(details, field="progress details"),
                  "id": job_id, "worker": worker_id, "attempt": attempt}
        return self._run(self.sql.UPDATE_PROGRESS, params)[0] == 1

    def add_log(self, job_id: str, level: str, message: str, now: float) -> None:
        self._run(self.sql.INSERT_LOG, (job_id, now, clean_text(level), clean_text(message)))

    def heartbeat(self, worker_id: str, job_ids: Collection[str], lease_expires_at: float,
                  now: float) -> list[str]:
        if not job_ids:
            return []
        rows = self._rows(self.sql.HEARTBEAT, (lease_expires_at, worker_id, list(job_ids)))
        return [job_id for job_id, requested in rows if requested]

    def recover_expired(self, now: float) -> list[QueueEntry]:
        def work(tx: _Tx) -> list[QueueEntry]:
            rows = tx.cur.execute(self.sql.RECOVER_EXPIRED, {"now": now}).fetchall()
            if not rows:
                return []
            tx.cur.executemany(self.sql.INSERT_LOG, [(row[0], now, "warning", row[7]) for row in rows])
            for row in rows:
                if row[6] in _DEAD:  # its last attempt lost, or its cancellation requested
                    self._cancel_dependents(tx.cur, row[0], now)
            recovered = [entry_from_row(row) for row in rows if row[6] == JobStatus.PENDING.value]
            if recovered:
                tx.notify()
            return recovered

        return self._transaction(work)

    def fire_schedule(self, schedule_id: str, fire_at: float, next_run_at: float, run: JobRecord,
                      now: float) -> bool:
        params = row_params(run, now, JobStatus.PENDING, 0, None, self.max_payload_bytes) + (schedule_id, fire_at)

        def work(tx: _Tx) -> bool:
            if tx.cur.execute(self.sql.ADVANCE_SCHEDULE, (next_run_at, schedule_id, fire_at)).rowcount != 1:
                return False
            row = tx.cur.execute(self.sql.INSERT_RUN, params).fetchone()
            if row is None:  # this fire time already has its run: undo the advance
                raise _Unchanged
            run.seq = row[0]
            tx.notify()
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
        """(NOTIFYs for this schema received by the listening connection, this object's
        own notifying commits): it moves when any process commits new or newly ready work."""
        return self._listener.token(), self._own_change

    # -- housekeeping ------------------------------------------------------------------------
    def delete_finished(self, before: Optional[float]) -> int:
        def work(tx: _Tx) -> int:
            params = {"all": before is None, "before": before}
            ids = [row[0] for row in tx.cur.execute(self.sql.DELETE_FINISHED, params)]
            if ids:
                tx.cur.execute(self.sql.DELETE_LOGS, (ids,))
                tx.cur.execute(self.sql.DELETE_DEPS, (ids, ids))
            return len(ids)

        return self._transaction(work)
