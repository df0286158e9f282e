"""`SQLiteRepository`: jobs in one SQLite file, shared by threads and by processes.

WAL mode, one connection per thread, `BEGIN IMMEDIATE` for every write, a busy timeout,
and SQL from `sqlite_sql` and `sqlite_transition_sql` (on `sqlite_schema`'s tables) with
parameters only. It does not decide what runs when: that is the manager's job; this
module only keeps rows consistent. Storing new jobs is `sqlite_adding`'s; checking and
migrating the file as it opens, `sqlite_migration`'s; recovery and deleting finished
jobs, `sqlite_upkeep`'s.
"""

from __future__ import annotations

import builtins
import json
import os
import sqlite3
import time
from typing import Any, Callable, Collection, ContextManager, Hashable, Optional, Sequence, TypeVar

from .. import serialization
from ..arguments import LONGEST_PERIOD
from ..clock import as_seconds
from ..errors import RepositoryError
from ..forks import on_fork_in_child
from ..models import JobStatus
from . import sqlite_listing, sqlite_queue
from . import sqlite_sql as sql
from . import sqlite_transition_sql as transition_sql
from .sqlite_conn import SYNCHRONOUS, Connections
from .sqlite_settle import cancel_dependents, claim_known, claim_rows, encode_result, settle_all
from .sqlite_rows import claimed_records, entry_from_row, queue_entries, record_from_row, row_params
from .columns import REAL_TYPES, STATUSES, encode_progress, text_of_id, usable_time
from .group_commit import GroupCommitter
from .sqlite_adding import SQLiteAdding
from .sqlite_migration import SQLiteMigration
from .sqlite_upkeep import SQLiteUpkeep
from .base import (Cascade, CancelOutcome, JobRecord, JobRepository, LogLine, QueueEntry, Settlement,
                   SettlesThroughApply, WorkerInfo, claim_limit, id_taken, released_to_claim)

DURABILITY = SYNCHRONOUS


def _log_line(row: Sequence[Any]) -> tuple[float, str, str]:
    """A log row as (time, level, message). One jobcore never wrote (a hand edit: a time
    that is text or past the times jobcore keeps, a BLOB) must not break the job's log, its
    page on the dashboard or `jobcore logs`: an unusable time reads as 0 (1970)."""
    at, level, message = row
    return (usable_time(at) or 0.0, level if type(level) is str else text_of_id(level),
            message if type(message) is str else text_of_id(message))


def _worker_of(row: Sequence[Any]) -> WorkerInfo:
    """A registry row as a `WorkerInfo`. One jobcore never wrote (a hand edit, another
    tool) must not break the listing, the dashboard's stats and every housekeeper's
    search for dead neighbours: what is unusable in it reads as unknown (pid 0: never
    judged gone; times 0: silent since 1970, reaped; no running jobs: their leases lapse)."""
    worker_id, host, pid, started_at, heartbeat_at, running, lease_timeout = row
    try:
        jobs = json.loads(running)
    except (TypeError, ValueError, RecursionError):
        jobs = None
    if not (type(jobs) is list and all(type(job_id) is str for job_id in jobs)):
        jobs = []
    return WorkerInfo(str(worker_id), str(host), pid if type(pid) is int else 0, usable_time(started_at) or 0.0,
                      usable_time(heartbeat_at) or 0.0, tuple(jobs),
                      lease_timeout if type(lease_timeout) in REAL_TYPES and lease_timeout > 0 else None)

T = TypeVar("T")

# The statuses sql.COUNT_BY_STATUS counts one by one, in its order; the rest of the total
# are rows whose status jobcore never writes, which read (and are counted) as failed.
COUNTED = tuple(JobStatus(value) for value in sql.COUNTED_STATUSES)
if set(COUNTED) != set(JobStatus):
    raise ImportError("COUNT_BY_STATUS must count every status")


class SQLiteRepository(SQLiteAdding, SQLiteUpkeep, SQLiteMigration, SettlesThroughApply, JobRepository):
    """A `JobRepository` in a SQLite file (WAL mode), safe for threads and processes.

    `durability="normal"` (synchronous=NORMAL) loses nothing when a process crashes; the
    last commits may roll back on power loss. `"full"` fsyncs every commit.
    `busy_timeout` is how many seconds a write waits for another writer's lock.
    """

    persistent = True
    change_token_sees_every_write = True  # data_version: every other connection's commit
    finds_rows_by_seq = True  # claims and settlements find a row by its seq, the rowid
    stores_settlement_progress = True  # in the outcome's own transaction (sqlite_settle)
    stores_settlement_logs = True  # likewise
    claims_released = True  # (apply's claim_released)

    def __init__(self, path: "str | os.PathLike[str]", durability: str = "normal", *,
                 busy_timeout: float = 30.0,
                 max_payload_bytes: Optional[int] = serialization.DEFAULT_MAX_PAYLOAD_BYTES) -> None:
        if durability not in DURABILITY:
            raise ValueError(f"durability must be one of {sorted(DURABILITY)}, got {durability!r}")
        if (isinstance(busy_timeout, bool) or not isinstance(busy_timeout, (int, float))
                or not 0 <= as_seconds(busy_timeout) <= LONGEST_PERIOD):  # (NaN fails both)
            raise ValueError(f"busy_timeout must be a number of seconds from 0 to 100 years, got {busy_timeout!r}")
        self.path = os.fspath(path)
        if not self.path or self.path == ":memory:":
            raise ValueError("SQLiteRepository needs a file path; use MemoryRepository for memory")
        # (Resolved now, as the connections' URI is: a relative path names the same file
        # after the process changes its directory.)
        self._store_key = ("sqlite", os.path.realpath(self.path))
        self.durability = durability
        self.busy_timeout = float(busy_timeout)
        self.max_payload_bytes = serialization.payload_cap(max_payload_bytes)
        self._db = Connections(self.path, busy_timeout=self.busy_timeout, durability=durability,
                               check=self._refuse_foreign_file)
        # The seqs of queued rows whose id is not text, seen by reads of the queue, for the
        # next `recover` to fail (a read has no `now`, and writes nothing).
        self._unaddressable: set[int] = set()
        self._group = self._group_committer()
        # A process that forks after this (a web server's workers, say) gives each child
        # connections of its own, and a group committer no parent thread was inside.
        on_fork_in_child(self, "_forked")
        try:
            self._migrate()
        except BaseException:
            self.close()  # do not leak the connection (and an open file) of a refused database
            raise

    # -- connections ---------------------------------------------------------------------
    def _group_committer(self) -> GroupCommitter[sqlite3.Connection]:
        """Outcomes and claims from many threads share transactions; so do single
        statements (an enqueue, a log line) with durability "full", whose fsync they share.
        With "normal" those commit by themselves, the threads taking turns (see
        `GroupCommitter`)."""
        return GroupCommitter(self._db.transaction, self._db.committed_after_interrupt,
                              share_solo=self.durability != "normal")

    def _forked(self) -> None:
        self._db.forked()
        self._group = self._group_committer()

    def _connection(self) -> sqlite3.Connection:
        return self._db.get()

    def _write(self) -> ContextManager[sqlite3.Connection]:
        """A `BEGIN IMMEDIATE` transaction: committed on success, rolled back on error.
        For writes that read no stored text; the others run in `_transaction`."""
        return self._db.write()

    def _transaction(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """`op(connection)` in a `_write` transaction, run once more if it read stored text
        that is not UTF-8 (see Connections.transaction)."""
        return self._db.transaction(op)

    def _read(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._db.read(query, params)

    def close(self) -> None:
        self._db.close()

    # -- reading ---------------------------------------------------------------------------
    def get(self, job_id: str) -> Optional[JobRecord]:
        rows = self._read(sql.SELECT_JOB, (job_id,))
        return record_from_row(rows[0]) if rows else None

    def get_many(self, job_ids: Collection[str]) -> dict[str, JobRecord]:
        if not job_ids:
            return {}
        rows = self._read(sql.SELECT_JOBS, (json.dumps(builtins.list(job_ids)),))
        return {record.id: record for record in map(record_from_row, rows)}

    def oldest(self, status: JobStatus) -> Optional[JobRecord]:
        rows = self._read(sql.SELECT_OLDEST[JobStatus(status).value])
        return record_from_row(rows[0]) if rows else None

    def get_without_args(self, job_id: str) -> Optional[JobRecord]:
        rows = self._read(sql.SELECT_JOB_WITHOUT_ARGS, (job_id,))
        return record_from_row(rows[0]) if rows else None

    def get_statuses(self, job_ids: Collection[str]) -> dict[str, JobStatus]:
        if not job_ids:
            return {}
        rows = self._read(sql.SELECT_STATUSES, (json.dumps(builtins.list(job_ids)),))
        return {job_id: STATUSES.get(status, JobStatus.FAILED) for job_id, status in rows}

    def ready(self, function_names: Optional[Collection[str]], limit: int) -> list[QueueEntry]:
        rows = self._db.reading(lambda conn: sqlite_queue.ready_rows(conn, function_names, limit))
        return queue_entries(rows, self._unaddressable)

    def scheduled(self, function_names: Optional[Collection[str]], limit: int) -> list[QueueEntry]:
        rows = self._db.reading(lambda conn: sqlite_queue.scheduled_rows(conn, function_names, limit))
        return queue_entries(rows, self._unaddressable)

    def list(self, *, status: Optional[JobStatus] = None, tags: Optional[Collection[str]] = None,
             owner: Optional[str] = None, limit: Optional[int] = 50, offset: int = 0) -> list[JobRecord]:
        return self._list(sql.COLUMNS, status, tags, owner, limit, offset)

    def list_without_args(self, *, status: Optional[JobStatus] = None,
                          tags: Optional[Collection[str]] = None, owner: Optional[str] = None,
                          limit: Optional[int] = 50, offset: int = 0) -> builtins.list[JobRecord]:
        return self._list(sql.COLUMNS_WITHOUT_ARGS, status, tags, owner, limit, offset)

    def list_summaries(self, *, status: Optional[JobStatus] = None,
                       tags: Optional[Collection[str]] = None, owner: Optional[str] = None,
                       limit: Optional[int] = 50, offset: int = 0) -> builtins.list[JobRecord]:
        return self._list(sql.COLUMNS_SUMMARY, status, tags, owner, limit, offset)

    def list_dead_letters(self, limit: Optional[int] = None) -> builtins.list[JobRecord]:
        return [record_from_row(row) for row in self._read(sql.LIST_DEAD_LETTERS, (-1 if limit is None else limit,))]

    def list_dead_letters_without_args(self, limit: Optional[int] = None) -> builtins.list[JobRecord]:
        return [record_from_row(row)
                for row in self._read(sql.LIST_DEAD_LETTERS_WITHOUT_ARGS, (-1 if limit is None else limit,))]

    def _list(self, columns: str, status: Optional[JobStatus], tags: Optional[Collection[str]],
              owner: Optional[str], limit: Optional[int], offset: int) -> builtins.list[JobRecord]:
        wanted = None if status is None else JobStatus(status).value
        rows = self._db.reading(lambda conn: sqlite_listing.list_rows(conn, columns, wanted, owner, tags, limit,
                                                                      offset))
        return [record_from_row(row) for row in rows]

    def count_by_status(self) -> dict[JobStatus, int]:
        total, *counted = self._read(sql.COUNT_BY_STATUS)[0]
        counts = dict(zip(COUNTED, counted))
        counts[JobStatus.FAILED] += total - sum(counted)  # statuses jobcore never writes read as failed
        return counts

    def count_queued(self) -> int:
        return int(self._read(sql.COUNT_QUEUED)[0][0])

    def logs(self, job_id: str) -> builtins.list[tuple[float, str, str]]:
        return [_log_line(row) for row in self._read(sql.SELECT_LOGS, (job_id,))]

    def log_page(self, job_id: str, offset: int, limit: Optional[int]) -> builtins.list[tuple[float, str, str]]:
        return [_log_line(row) for row in self._read(sql.SELECT_LOG_PAGE, (job_id, -1 if limit is None else limit, offset))]

    def count_logs(self, job_id: str) -> int:
        return int(self._read(sql.COUNT_LOGS, (job_id,))[0][0])

    # -- running ---------------------------------------------------------------------------
    def claim(self, job_id: str, worker_id: str, now: float, lease_expires_at: float) -> Optional[JobRecord]:
        params = (now, worker_id, lease_expires_at, job_id, now)
        row = self._transaction(lambda conn: conn.execute(transition_sql.CLAIM, params).fetchone())
        return record_from_row(row) if row else None

    def apply(self, settlements: Sequence[Settlement], claim_ids: Sequence[str], worker_id: str,
              now: float, lease_expires_at: float, top_up: Optional[Collection[str]] = None,
              up_to: Optional[int] = None, *,
              claim_seqs: Optional[Sequence[int]] = None, claim_released: int = 0,
              released_functions: Optional[Collection[str]] = None,
              ) -> tuple[builtins.list[Optional[Cascade]], builtins.list[JobRecord]]:
        """One transaction for every settlement and the claims (a group commit), the
        dependents it released among them with `claim_released`. Rows are found by their
        seq where it is given (the table's own key, no index read)."""
        encoded = [encode_result(s, self.max_payload_bytes) for s in settlements]  # raises before writing
        progress = encode_progress(settlements)
        wanted = claim_limit(claim_ids, up_to)
        head = (now, worker_id, lease_expires_at)

        def op(conn: sqlite3.Connection) -> tuple[list[Optional[Cascade]], list[Any], dict[str, Any]]:
            cascades = settle_all(conn, settlements, encoded, worker_id, now, progress)
            rows: list[Any] = []
            full: dict[str, Any] = {}
            if claim_ids:
                rows = claim_known(conn, claim_ids, claim_seqs, head, now, full)
            missing = wanted - len(rows)
            names = sqlite_queue.with_ready_jobs(conn, top_up) if top_up and missing > 0 else None
            if names:
                query, best = sqlite_queue.claim_best(names, missing)
                rows += claim_rows(conn, query, (*head, *best), full)
            released = released_to_claim(cascades, now, claim_released, released_functions)
            if released:  # (one the top-up took is not claimed twice: it is no longer pending)
                rows += claim_known(conn, [e.job_id for e in released], [e.seq for e in released], head, now, full)
            return cascades, rows, full

        cascades, rows, full = self._group.run(op)
        return cascades, claimed_records(rows, full, now, worker_id, lease_expires_at)

    def cancel(self, job_id: str, now: float, reason: str) -> tuple[CancelOutcome, Cascade]:
        def op(conn: sqlite3.Connection) -> tuple[CancelOutcome, Cascade]:
            if conn.execute(transition_sql.CANCEL_WAITING, (now, reason, job_id)).rowcount == 1:
                return CancelOutcome.CANCELLED, Cascade(cancelled=cancel_dependents(conn, job_id, now))
            if conn.execute(transition_sql.REQUEST_CANCEL, (job_id,)).rowcount == 1:
                return CancelOutcome.REQUESTED, Cascade()
            found = conn.execute(sql.SELECT_STATUS, (job_id,)).fetchone() is not None
            return (CancelOutcome.FINISHED if found else CancelOutcome.NOT_FOUND), Cascade()

        return self._transaction(op)

    def requeue(self, job_id: str, now: float) -> Optional[QueueEntry]:
        try:
            row = self._transaction(lambda conn: conn.execute(transition_sql.REQUEUE, (job_id,)).fetchone())
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
            return conn.execute(transition_sql.UPDATE_PROGRESS, params).rowcount == 1

    def add_log(self, job_id: str, level: str, message: str, now: float) -> None:
        # Alone, one statement committed by itself; beside other writers (jobs logging at
        # once, enqueues) it shares their transaction and, under "full", their fsync.
        params = (now, level, message, job_id)
        self._group.run(lambda conn: conn.execute(sql.INSERT_LOG_IF_STORED, params),
                        lambda: self._db.write_one(sql.INSERT_LOG_IF_STORED, params))

    def add_logs(self, job_id: str, lines: Sequence[LogLine]) -> None:
        if len(lines) == 1:
            at, level, message = lines[0]
            self.add_log(job_id, level, message, at)
        elif lines:
            rows = [(*line, job_id) for line in lines]
            self._group.run(lambda conn: conn.executemany(sql.INSERT_LOG_IF_STORED, rows))

    def heartbeat(self, worker_id: str, job_ids: Collection[str], lease_expires_at: float,
                  now: float) -> builtins.list[str]:
        if not job_ids:
            return []
        ids, asked = json.dumps(list(job_ids)), time.monotonic()

        def op(conn: sqlite3.Connection) -> list[Any]:
            # The lease counts from when the row is written: a write that waited for
            # another program's lock adds its wait, or a lease computed before it would be
            # written expired, and taken back beside the job still running.
            lease = lease_expires_at + (time.monotonic() - asked)
            return conn.execute(transition_sql.HEARTBEAT, (lease, worker_id, ids)).fetchall()

        rows = self._transaction(op)
        return [job_id for job_id, requested in rows if requested]

    def cancels_requested(self, worker_id: str, job_ids: Collection[str]) -> builtins.list[str]:
        return [row[0] for row in self._read(sql.SELECT_CANCELS_REQUESTED, (json.dumps(list(job_ids)), worker_id))]

    def fire_schedule(self, schedule_id: str, fire_at: float, next_run_at: float, run: JobRecord,
                      now: float) -> bool:
        return self.fire_schedules([(schedule_id, fire_at, next_run_at, run)], now)[0]

    def fire_schedules(self, fires: Sequence[tuple[str, float, float, JobRecord]],
                       now: float) -> builtins.list[bool]:
        """One transaction for them all (see `JobRepository.fire_schedules`)."""
        params = [row_params(run, now, JobStatus.PENDING, 0, None, self.max_payload_bytes)
                  for _, _, _, run in fires]
        fired = []
        with self._write() as conn:
            for (schedule_id, fire_at, next_run_at, run), run_params in zip(fires, params):
                if conn.execute(sql.ADVANCE_SCHEDULE, (next_run_at, schedule_id, fire_at)).rowcount != 1:
                    fired.append(False)
                    continue
                try:
                    run.seq = conn.execute(transition_sql.INSERT_JOB, run_params).lastrowid or 0
                except sqlite3.IntegrityError:
                    raise id_taken(run.id) from None
                fired.append(True)
        return fired

    def fail_schedule(self, schedule_id: str, error: str, now: float) -> bool:
        with self._write() as conn:
            row = conn.execute(sql.SELECT_SCHEDULE_SEQ, (schedule_id,)).fetchone()
            return row is not None and conn.execute(sql.FAIL_CORRUPT, (now, error, row[0])).rowcount == 1

    # -- workers and change detection ----------------------------------------------------------
    def register_worker(self, worker_id: str, host: str, pid: int, now: float,
                        lease_timeout: Optional[float] = None) -> None:
        with self._write() as conn:
            conn.execute(sql.REGISTER_WORKER, (worker_id, host, pid, now, now, lease_timeout))

    def beat_worker(self, worker_id: str, running: Collection[str], now: float) -> bool:
        with self._write() as conn:
            return conn.execute(sql.BEAT_WORKER, (now, json.dumps(sorted(running)), worker_id)).rowcount == 1

    def unregister_worker(self, worker_id: str) -> None:
        with self._write() as conn:
            conn.execute(sql.UNREGISTER_WORKER, (worker_id,))

    def list_workers(self) -> builtins.list[WorkerInfo]:
        return [_worker_of(row) for row in self._read(sql.LIST_WORKERS)]

    def reap_workers(self, before: float, now: Optional[float] = None) -> builtins.list[str]:
        rows = self._transaction(lambda conn: conn.execute(sql.REAP_WORKERS, (now, before)).fetchall())
        return [row[0] for row in rows]

    def expire_worker(self, worker_id: str, now: float) -> int:
        with self._write() as conn:
            return conn.execute(sql.EXPIRE_WORKER, (now - 1.0, worker_id)).rowcount

    @property
    def store_key(self) -> Hashable:
        """The file (its real path when this repository was made): every
        `SQLiteRepository` of this process on it."""
        return self._store_key

    def held_here(self) -> bool:
        return self._db.held_here()

    def change_token(self) -> Optional[object]:
        """`PRAGMA data_version` of this thread's connection: it changes whenever another
        connection (any thread or process) commits."""
        version: object = self._read("PRAGMA data_version")[0][0]
        return version
