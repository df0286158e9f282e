"""`PostgresRepository`: the `JobRepository` contract on a PostgreSQL server, for many machines.

Same semantics as `SQLiteRepository` (the reference): every method is one transaction
(or one autocommit statement) on a pooled connection, every transition a compare-and-set,
SQL from `postgres.queries` with parameters only. Row locks replace SQLite's single
writer (see `queries`). Writes that make work ready NOTIFY `jobcore_jobs`, which
`change_token` listens to. It does not decide what runs when, and never reads the
clock: callers pass `now`. Storing new jobs (`insert`) is `adding`'s.
"""

from __future__ import annotations

import builtins
from typing import Any, Callable, Collection, Hashable, Optional, Sequence

from .. import serialization
from ..clock import as_seconds
from ..models import JobStatus
from ..repository._cascade import ENDED
from ..repository.columns import JOB_COLUMNS as COLUMNS
from ..repository.columns import JOB_COLUMNS_WITHOUT_ARGS as COLUMNS_WITHOUT_ARGS
from ..repository.columns import encode_progress, unreadable_lease_message
from ..repository.base import (Cascade, CancelOutcome, JobRecord, JobRepository, LogLine, QueueEntry, Recovery,
                               Settlement, SettlesThroughApply, WorkerInfo, claim_limit, released_to_claim,
                               require_plain_pending)
from .adding import PostgresAdding
from .database import Database, TooLongForAnIndex, Tx, Unchanged, schema_from_dsn
from .queries import COLUMNS_SUMMARY
from .rows import clean_text, entry_from_row, record_from_row, row_params, status_of
from .settling import cancel_dependents, settle_all

# The longest `timeout`: libpq takes its connect_timeout as an int.
_LONGEST_TIMEOUT = 2**31 - 1
_SETTLEMENT_KINDS = {"complete", "retry", "fail", "cancel", "release"}


def _best_first(rows: Sequence[Sequence[Any]]) -> list[JobRecord]:
    return sorted((record_from_row(row) for row in rows), key=lambda r: (-r.priority, r.seq))


class PostgresRepository(PostgresAdding, SettlesThroughApply, JobRepository):
    """A `JobRepository` on PostgreSQL (psycopg 3), shared by processes on many machines.

    `dsn`: a libpq connection string or `postgresql://` URL. `schema`: the PostgreSQL
    schema holding jobcore's tables (created, and migrated, on first use), so that one
    database can hold several independent queues; by default the first entry of a
    `search_path` given in the DSN's `options`, else `jobcore`. `pool_size`: connections
    kept (a call holds one only while it runs; `change_token` opens one more, to LISTEN).
    `timeout`: seconds to connect, or to wait for a free pooled connection.
    Failures of the server raise `RepositoryError` naming it (never its password).
    """

    persistent = True
    stores_settlement_progress = True  # in the outcome's own transaction (settling)
    stores_settlement_logs = True  # likewise
    claims_released = True  # (apply's claim_released)
    # An enqueue's exchange here is BEGIN, the outcomes' two statements, the INSERT, the
    # claim and COMMIT: six round trips, where the INSERT alone is one. A producer
    # enqueueing while the workers ran made 510 jobs a second that way, 2,000 with each job
    # stored alone and the workers' exchanges recording and claiming 8 at a time (local
    # server; see docs/performance-sessions.md, session 39).
    exchanges_on_enqueue = False

    def __init__(self, dsn: str, *, schema: Optional[str] = None, pool_size: int = 10,
                 timeout: float = 30.0,
                 max_payload_bytes: Optional[int] = serialization.DEFAULT_MAX_PAYLOAD_BYTES) -> None:
        if not isinstance(dsn, str):
            raise TypeError(f"dsn must be a PostgreSQL connection string, got {dsn!r}")
        dsn_schema = schema_from_dsn(dsn)
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise ValueError(f"pool_size must be an int >= 1, got {pool_size!r}")
        if (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                or not 0 < as_seconds(timeout) <= _LONGEST_TIMEOUT):  # (NaN fails both)
            raise ValueError(f"timeout must be a number of seconds > 0, at most 2**31 - 1, got {timeout!r}")
        self.dsn = dsn
        self.schema = schema or dsn_schema or "jobcore"
        self.max_payload_bytes = serialization.payload_cap(max_payload_bytes)
        self._db = Database(dsn, self.schema, pool_size, float(timeout))
        self.sql = self._db.sql

    def __repr__(self) -> str:
        return f"<PostgresRepository {self._db.where} schema={self.schema!r}>"

    def close(self) -> None:
        self._db.close()

    # -- adding (`insert` is `adding.PostgresAdding`'s) --------------------------------------
    def insert_and_apply(self, record: JobRecord, settlements: Sequence[Settlement], claim_ids: Sequence[str],
                         worker_id: str, now: float, lease_expires_at: float, *, claim_new: bool,
                         claim_seqs: Optional[Sequence[int]] = None) -> tuple[list[Optional[Cascade]], list[JobRecord]]:
        """The settlements, the new row and the claims (the new job's by id) in one transaction."""
        require_plain_pending(record)
        encoded = [self._encode_result(s) for s in settlements]  # raises before writing
        progress = encode_progress(settlements)
        ids = [record.id, *claim_ids] if claim_new else list(claim_ids)
        claim_params = self._claim_params(ids, worker_id, now, lease_expires_at)

        def work(tx: Tx) -> tuple[list[Optional[Cascade]], list[JobRecord]]:
            cascades = settle_all(self.sql, tx, settlements, encoded, worker_id, now, progress)
            self._insert_in(tx, [record], now)
            rows = tx.execute(self.sql.CLAIM_MANY, claim_params).fetchall() if ids else []
            return cascades, _best_first(rows)

        with TooLongForAnIndex.named_for([record]):
            cascades, claimed = self._db.transaction(work, generic_plans=True)  # as `apply`'s
        claimed.sort(key=lambda r: r.id != record.id)  # the new job first; stable otherwise
        return cascades, claimed

    # -- reading ---------------------------------------------------------------------------
    def get(self, job_id: str) -> Optional[JobRecord]:
        rows = self._db.read(self.sql.SELECT_JOB, (job_id,))
        return record_from_row(rows[0]) if rows else None

    def get_many(self, job_ids: Collection[str]) -> dict[str, JobRecord]:
        if not job_ids:
            return {}
        rows = self._db.planned_rows(self.sql.SELECT_JOBS, (builtins.list(job_ids),))
        return {record.id: record for record in map(record_from_row, rows)}

    def oldest(self, status: JobStatus) -> Optional[JobRecord]:
        rows = self._db.read(self.sql.SELECT_OLDEST, (JobStatus(status).value,))
        return record_from_row(rows[0]) if rows else None

    def get_without_args(self, job_id: str) -> Optional[JobRecord]:
        rows = self._db.read(self.sql.SELECT_JOB_WITHOUT_ARGS, (job_id,))
        return record_from_row(rows[0]) if rows else None

    def get_statuses(self, job_ids: Collection[str]) -> dict[str, JobStatus]:
        if not job_ids:
            return {}
        rows = self._db.planned_rows(self.sql.SELECT_STATUSES, (builtins.list(job_ids),))
        return {job_id: status_of(status) for job_id, status in rows}

    def _queue(self, named: str, any_function: str, function_names: Optional[Collection[str]],
               limit: int) -> list[QueueEntry]:
        query = any_function if function_names is None else named
        params = {"names": sorted(function_names or ()), "limit": limit}
        return [entry_from_row(row) for row in self._db.read(query, params)]

    def ready(self, function_names: Optional[Collection[str]], limit: int) -> list[QueueEntry]:
        return self._queue(self.sql.SELECT_READY, self.sql.SELECT_READY_ANY, function_names, limit)

    def scheduled(self, function_names: Optional[Collection[str]], limit: int) -> list[QueueEntry]:
        return self._queue(self.sql.SELECT_SCHEDULED, self.sql.SELECT_SCHEDULED_ANY, function_names, limit)

    def list(self, *, status: Optional[JobStatus] = None, tags: Optional[Collection[str]] = None,
             owner: Optional[str] = None, limit: Optional[int] = 50, offset: int = 0) -> list[JobRecord]:
        return self._list(COLUMNS, status, tags, owner, limit, offset)

    def list_without_args(self, *, status: Optional[JobStatus] = None,
                          tags: Optional[Collection[str]] = None, owner: Optional[str] = None,
                          limit: Optional[int] = 50, offset: int = 0) -> builtins.list[JobRecord]:
        return self._list(COLUMNS_WITHOUT_ARGS, status, tags, owner, limit, offset)

    def list_summaries(self, *, status: Optional[JobStatus] = None,
                       tags: Optional[Collection[str]] = None, owner: Optional[str] = None,
                       limit: Optional[int] = 50, offset: int = 0) -> builtins.list[JobRecord]:
        return self._list(COLUMNS_SUMMARY, status, tags, owner, limit, offset)

    def list_dead_letters(self, limit: Optional[int] = None) -> builtins.list[JobRecord]:
        return [record_from_row(row) for row in self._db.read(self.sql.LIST_DEAD_LETTERS, (limit,))]

    def list_dead_letters_without_args(self, limit: Optional[int] = None) -> builtins.list[JobRecord]:
        return [record_from_row(row) for row in self._db.read(self.sql.LIST_DEAD_LETTERS_WITHOUT_ARGS, (limit,))]

    def _list(self, columns: str, status: Optional[JobStatus], tags: Optional[Collection[str]],
              owner: Optional[str], limit: Optional[int], offset: int) -> builtins.list[JobRecord]:
        if owner is not None and "\x00" in owner:
            return []  # PostgreSQL stores no NUL: no job here has such an owner
        query = self.sql.LIST[columns][(None if status is None else JobStatus(status).value, owner is not None)]
        params = {"owner": owner, "tags": sorted(tags or ()), "limit": limit, "offset": offset}
        return [record_from_row(row) for row in self._db.read(query, params)]

    def count_by_status(self) -> dict[JobStatus, int]:
        counts = {status: 0 for status in JobStatus}
        for status, count in self._db.read(self.sql.COUNT_BY_STATUS):
            counts[status_of(status)] += count
        return counts

    def count_queued(self) -> int:
        return int(self._db.read(self.sql.COUNT_QUEUED)[0][0])

    def logs(self, job_id: str) -> builtins.list[tuple[float, str, str]]:
        return [tuple(row) for row in self._db.read(self.sql.SELECT_LOGS, (job_id,))]

    def log_page(self, job_id: str, offset: int, limit: Optional[int]) -> builtins.list[tuple[float, str, str]]:
        return [tuple(row) for row in self._db.read(self.sql.SELECT_LOG_PAGE, (job_id, limit, offset))]

    def count_logs(self, job_id: str) -> int:
        return int(self._db.read(self.sql.COUNT_LOGS, (job_id,))[0][0])

    # -- running ---------------------------------------------------------------------------
    @staticmethod
    def _claim_params(ids: Sequence[str], worker_id: str, now: float, lease: float,
                      top_up: Optional[Collection[str]] = None, up_to: Optional[int] = None) -> dict[str, Any]:
        return {"ids": list(ids), "now": now, "worker": worker_id, "lease": lease,
                "top_up": top_up is not None, "names": sorted(top_up or ()),
                "up_to": claim_limit(ids, up_to)}

    def claim(self, job_id: str, worker_id: str, now: float, lease_expires_at: float) -> Optional[JobRecord]:
        params = self._claim_params([job_id], worker_id, now, lease_expires_at)
        rows = self._db.planned_rows(self.sql.CLAIM_MANY, params)
        return record_from_row(rows[0]) if rows else None

    def _encode_result(self, s: Settlement) -> Optional[str]:
        if s.kind not in _SETTLEMENT_KINDS:
            raise ValueError(f"unknown settlement kind {s.kind!r}")
        if s.kind != "complete":
            return None
        if s.encoded_result is not None:
            return s.encoded_result
        return serialization.encode(s.result, field="result", max_bytes=self.max_payload_bytes)

    def apply(self, settlements: Sequence[Settlement], claim_ids: Sequence[str], worker_id: str,
              now: float, lease_expires_at: float, top_up: Optional[Collection[str]] = None,
              up_to: Optional[int] = None, *,
              claim_seqs: Optional[Sequence[int]] = None, claim_released: int = 0,
              released_functions: Optional[Collection[str]] = None,
              ) -> tuple[builtins.list[Optional[Cascade]], builtins.list[JobRecord]]:
        """One transaction for every settlement and the claims (a group commit); the
        claims, top-up and the dependents released here (`claim_released`) included, are
        one statement (`FOR UPDATE SKIP LOCKED`)."""
        encoded = [self._encode_result(s) for s in settlements]  # raises before writing
        progress = encode_progress(settlements)
        claim_params = self._claim_params(claim_ids, worker_id, now, lease_expires_at, top_up, up_to)
        claiming = bool(claim_ids) or (top_up is not None and claim_params["up_to"] > 0)
        if not settlements:
            if not claiming:
                return [], []
            # Claims alone: one statement, in a transaction all the same for its generic
            # plan: planned afresh at each run, a claim cost more than BEGIN, the setting
            # and COMMIT (median 1.1-1.5 ms against 0.6-1.0).
            return [], _best_first(self._db.planned_rows(self.sql.CLAIM_MANY, claim_params))

        def work(tx: Tx) -> tuple[list[Optional[Cascade]], list[JobRecord]]:
            cascades = settle_all(self.sql, tx, settlements, encoded, worker_id, now, progress)
            params = claim_params
            released = released_to_claim(cascades, now, claim_released, released_functions)
            if released:  # named beside the others, the top-up's number unchanged
                params = {**claim_params, "ids": claim_params["ids"] + [e.job_id for e in released],
                          "up_to": claim_params["up_to"] + len(released)}
            rows = tx.execute(self.sql.CLAIM_MANY, params).fetchall() if claiming or released else []
            return cascades, _best_first(rows)

        return self._db.transaction(work, generic_plans=True)

    def cancel(self, job_id: str, now: float, reason: str) -> tuple[CancelOutcome, Cascade]:
        sql = self.sql

        def work(tx: Tx) -> tuple[CancelOutcome, Cascade]:
            # The row locked first, and what is done decided on the status it then has
            # (see transition_queries.LOCK_FOR_CANCEL): no transition can come between.
            row = tx.execute(sql.LOCK_FOR_CANCEL, (job_id,)).fetchone()
            if row is None:
                return CancelOutcome.NOT_FOUND, Cascade()
            status = row[0]
            if status in (JobStatus.PENDING.value, JobStatus.SCHEDULED.value):
                tx.execute(sql.CANCEL_WAITING, {"id": job_id, "now": now, "reason": clean_text(reason)})
                return CancelOutcome.CANCELLED, Cascade(cancelled=cancel_dependents(sql, tx, job_id, now))
            if status == JobStatus.RUNNING.value:
                tx.execute(sql.REQUEST_CANCEL, (job_id,))
                tx.notify()  # the process running it reads its cancel requests (`cancels_requested`)
                return CancelOutcome.REQUESTED, Cascade()
            return CancelOutcome.FINISHED, Cascade()

        return self._db.transaction(work)

    def requeue(self, job_id: str, now: float) -> Optional[QueueEntry]:
        sql = self.sql

        def work(tx: Tx) -> Optional[QueueEntry]:
            if tx.execute(sql.SELECT_UNIQUE_HOLDER, (job_id,)).fetchone() is not None:
                return None  # another unfinished job holds its unique_key
            statuses = [row[0] for row in tx.execute(sql.LOCK_JOB_DEPENDENCIES, (job_id,))]
            if any(status in (JobStatus.FAILED.value, JobStatus.CANCELLED.value) for status in statuses):
                return None  # a dependency will never complete: retry it first
            blocked = sum(1 for status in statuses if status != JobStatus.COMPLETED.value)
            row = tx.execute(sql.REQUEUE, (blocked, job_id)).fetchone()
            if row is None:
                return None
            tx.notify()
            return entry_from_row(row)

        return self._db.transaction(work)

    def update_progress(self, job_id: str, worker_id: str, attempt: int, progress: float,
                        message: str, details: dict[str, Any], now: float) -> bool:
        params = {"progress": progress, "message": clean_text(message),
                  "details": serialization.encode(details, field="progress details"),
                  "id": job_id, "worker": worker_id, "attempt": attempt}
        return self._db.run(self.sql.UPDATE_PROGRESS, params, idempotent=True)[0] == 1

    def add_log(self, job_id: str, level: str, message: str, now: float) -> None:
        self._db.run(self.sql.INSERT_LOG_IF_STORED, (now, clean_text(level), clean_text(message), job_id))

    def add_logs(self, job_id: str, lines: Sequence[LogLine]) -> None:
        if len(lines) == 1:
            at, level, message = lines[0]
            self.add_log(job_id, level, message, at)
        elif lines:
            rows = [(at, clean_text(level), clean_text(message), job_id) for at, level, message in lines]
            self._db.transaction(lambda tx: tx.cur.executemany(self.sql.INSERT_LOG_IF_STORED, rows))

    def heartbeat(self, worker_id: str, job_ids: Collection[str], lease_expires_at: float,
                  now: float) -> builtins.list[str]:
        if not job_ids:
            return []
        params = {"lease": lease_expires_at, "worker": worker_id, "ids": list(job_ids)}
        return [job_id for job_id, requested in self._db.planned_rows(self.sql.HEARTBEAT, params) if requested]

    def cancels_requested(self, worker_id: str, job_ids: Collection[str]) -> builtins.list[str]:
        params = {"worker": worker_id, "ids": list(job_ids)}
        return [row[0] for row in self._db.planned_rows(self.sql.CANCELS_REQUESTED, params)]

    def recover_expired(self, now: float) -> builtins.list[QueueEntry]:
        return list(self.recover(now).requeued)

    def recover(self, now: float) -> Recovery:
        sql = self.sql

        def work(tx: Tx) -> Recovery:
            unreadable = tx.execute(sql.END_UNREADABLE_LEASES, {"now": now}).fetchall()
            if unreadable:
                tx.cur.executemany(sql.INSERT_LOG, [(job_id, now, "warning", unreadable_lease_message(lease))
                                                    for job_id, lease in unreadable])
            rows = tx.execute(sql.RECOVER_EXPIRED, {"now": now}).fetchall()
            if not rows:
                return Recovery()
            tx.cur.executemany(sql.INSERT_LOG, [(row[0], now, "warning", row[7]) for row in rows])
            for row in rows:
                if row[6] in ENDED:  # its last attempt lost, or its cancellation requested
                    cancel_dependents(sql, tx, row[0], now)
            requeued = tuple(entry_from_row(row) for row in rows if row[6] == JobStatus.PENDING.value)
            if requeued:
                tx.notify()
            return Recovery(requeued=requeued,
                            failed=tuple(row[0] for row in rows if row[6] == JobStatus.FAILED.value),
                            cancelled=tuple(row[0] for row in rows if row[6] == JobStatus.CANCELLED.value))

        return self._db.transaction(work)

    def fail_schedule(self, schedule_id: str, error: str, now: float) -> bool:
        params = (now, clean_text(error), schedule_id)
        return bool(self._db.transaction(lambda tx: tx.execute(self.sql.FAIL_SCHEDULE, params).rowcount == 1))

    def fire_schedule(self, schedule_id: str, fire_at: float, next_run_at: float, run: JobRecord,
                      now: float) -> bool:
        params = row_params(run, now, JobStatus.PENDING, 0, None, self.max_payload_bytes) + (schedule_id, fire_at)

        def work(tx: Tx) -> bool:
            if tx.execute(self.sql.ADVANCE_SCHEDULE, (next_run_at, schedule_id, fire_at)).rowcount != 1:
                return False
            row = tx.execute(self.sql.INSERT_RUN, params).fetchone()
            if row is None:  # this fire time already has its run: undo the advance
                raise Unchanged
            run.seq = row[0]
            tx.notify()
            return True

        try:
            return self._db.transaction(work)
        except Unchanged:
            return False

    # -- workers and change detection ----------------------------------------------------------
    def register_worker(self, worker_id: str, host: str, pid: int, now: float,
                        lease_timeout: Optional[float] = None) -> None:
        self._db.run(self.sql.REGISTER_WORKER, (worker_id, host, pid, now, now, lease_timeout), idempotent=True)

    def beat_worker(self, worker_id: str, running: Collection[str], now: float) -> bool:
        return self._db.run(self.sql.BEAT_WORKER, (now, sorted(running), worker_id), idempotent=True)[0] == 1

    def unregister_worker(self, worker_id: str) -> None:
        self._db.run(self.sql.UNREGISTER_WORKER, (worker_id,), idempotent=True)

    def list_workers(self) -> builtins.list[WorkerInfo]:
        return [WorkerInfo(row[0], row[1], row[2], row[3], row[4], tuple(row[5] or ()), row[6])
                for row in self._db.read(self.sql.LIST_WORKERS)]

    def reap_workers(self, before: float, now: Optional[float] = None) -> builtins.list[str]:
        return [row[0] for row in self._db.rows(self.sql.REAP_WORKERS, (now, before))]

    def expire_worker(self, worker_id: str, now: float) -> int:
        return self._db.run(self.sql.EXPIRE_WORKER, (now - 1.0, worker_id), idempotent=True)[0]

    @property
    def store_key(self) -> Hashable:
        """The DSN and schema: every `PostgresRepository` of this process made with both
        (managers on them wake each other, and forget together what a cleanup deleted)."""
        return ("postgres", self.dsn, self.schema)

    def change_token(self) -> Optional[object]:
        """Moves whenever a commit (by any process) made work new or ready: the count of
        `NOTIFY jobcore_jobs` for this schema heard on a LISTEN connection, paired with
        this object's own notifying commits (seen at once, without the round trip)."""
        return self._db.change_token()

    def watch_changes(self, wake: Callable[[], None]) -> Callable[[], None]:
        """`wake()` as soon as another process's commit made work new or ready here (its
        NOTIFY, heard on the LISTEN connection by a thread of the repository's)."""
        return self._db.watch_changes(wake)

    # -- housekeeping ------------------------------------------------------------------------
    def delete_finished(self, before: Optional[float]) -> int:
        def work(tx: Tx) -> int:
            ids = [row[0] for row in tx.execute(self.sql.DELETE_FINISHED, {"all": before is None, "before": before})]
            if ids:
                tx.execute(self.sql.DELETE_LOGS, (ids,))
                tx.execute(self.sql.DELETE_DEPS, (ids, ids))
            return len(ids)

        return self._db.transaction(work)
