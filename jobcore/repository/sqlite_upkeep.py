"""`SQLiteUpkeep`: how `SQLiteRepository` takes back the jobs no worker will finish
(`recover`: re-queued, or ended FAILED or CANCELLED with their dependents when they cannot
run again) and deletes finished ones (`delete_finished`); it never claims, completes or adds
a job, nor records a worker's outcome (sqlite's and sqlite_adding's). The SQL is sqlite_sql's.

Recovery is one write transaction: leases that ran out are taken back, and waiting jobs
whose row no claim reaches fail as CorruptJob. Deleting goes DELETE_CHUNK jobs a
transaction, so that no other writer waits long for the database's write lock.
"""

from __future__ import annotations

import builtins
import json
import logging
import sqlite3
import time
from typing import TYPE_CHECKING, Any, Callable, Collection, Optional, Sequence, TypeVar

from ..clock import real_monotonic
from ..models import TERMINAL_STATUSES, JobStatus
from . import sqlite_sql as sql
from .base import JobRepository, QueueEntry, Recovery
from .columns import unreadable_lease_message
from .sqlite_rows import queue_entries, record_from_row
from .sqlite_settle import cancel_dependents

logger = logging.getLogger("jobcore.sqlite")

T = TypeVar("T")


class SQLiteUpkeep(JobRepository):
    """The upkeep half of `SQLiteRepository`, which sets the attribute below."""

    # The seqs of queued rows whose id is not text, noted by reads of the queue (see
    # SQLiteRepository.__init__), for the next `recover` to fail.
    _unaddressable: set[int]

    if TYPE_CHECKING:  # SQLiteRepository's (declared here for the type checker only)
        def _transaction(self, op: Callable[[sqlite3.Connection], T]) -> T: ...
        def _read(self, query: str, params: Sequence[Any] = ()) -> builtins.list[tuple[Any, ...]]: ...

    def recover_expired(self, now: float) -> builtins.list[QueueEntry]:
        return list(self.recover(now).requeued)

    def recover(self, now: float) -> Recovery:
        """Also fails, as CorruptJob, the waiting jobs no claim reaches because their row is
        corrupt: a pending job whose `blocked` is no integer >= 0, and a queued row whose
        id is not text (noted by `ready` and `scheduled`, or taken back here)."""
        unaddressable, self._unaddressable = self._unaddressable, set()

        def op(conn: sqlite3.Connection) -> tuple[list[Any], tuple[str, ...]]:
            seqs = set(unaddressable)  # a copy: a second run starts from the same
            _end_unreadable_leases(conn, now)
            rows = conn.execute(sql.RECOVER_EXPIRED, (now, now)).fetchall()
            for row in rows:
                conn.execute(sql.INSERT_LOG, (row[0], now, "warning", row[7]))
                if type(row[0]) is not str:
                    seqs.add(row[2])
                elif row[6] in (JobStatus.FAILED.value, JobStatus.CANCELLED.value):
                    cancel_dependents(conn, row[0], now)
            return rows, _fail_corrupt(conn, seqs, now)

        rows, corrupt = self._transaction(op)
        requeued = queue_entries([row for row in rows if row[6] == JobStatus.PENDING.value], set())
        return Recovery(requeued=tuple(requeued),
                        failed=tuple(row[0] for row in rows if row[6] == JobStatus.FAILED.value) + corrupt,
                        cancelled=tuple(row[0] for row in rows if row[6] == JobStatus.CANCELLED.value))

    def delete_finished(self, before: Optional[float]) -> int:
        """Find the jobs to delete by reading (no lock held), then delete them in chunks of
        DELETE_CHUNK jobs, a write transaction each: deleting a million jobs holds the
        database's write lock for seconds, and every other writer (in every process) would
        wait that long, past its busy timeout; and after each chunk the lock is left free as
        long as the chunk held it. A cleanup that finds nothing writes nothing."""
        deleted = 0
        for status in TERMINAL_STATUSES:
            after = -1  # (seqs start at 1)
            while True:
                seqs = [seq for (seq,) in self._read(sql.FINISHED_SEQS[status.value],
                                                     (after, before, before, DELETE_CHUNK))]
                held = 0.0
                if seqs:
                    chunk, began = (json.dumps(seqs), before, before), [0.0]

                    def delete(conn: sqlite3.Connection) -> list[tuple[str]]:
                        began[0] = real_monotonic()  # (the lock taken: not the wait for it)
                        return _delete_chunk(conn, sql.DELETE_FINISHED[status.value], chunk)

                    deleted += len(self._transaction(delete))
                    held = real_monotonic() - began[0]
                if len(seqs) < DELETE_CHUNK:
                    break
                after = seqs[-1]
                # As long again with the write lock free: taken back at once, chunk after
                # chunk, it left other writers (the dispatcher's exchanges) waiting through
                # the whole purge (a job due meanwhile started 0.58 s late; drains beside it
                # ran at 0.16x).
                _pause(held)
        # Counted first, by reading: the count reads every job's entry.
        total, *counted = self._read(sql.COUNT_BY_STATUS)[0]
        if total == sum(counted) and not self._read(sql.ORPHAN_DEP_LISTS)[0][0]:
            return deleted

        def unknown(conn: sqlite3.Connection) -> int:
            conn.execute(sql.DELETE_ORPHAN_DEP_LISTS)  # (a small table: only lists over 1 KB)
            if total == sum(counted):
                return 0
            # rows whose status jobcore never writes: they read as failed
            return len(_delete_chunk(conn, sql.DELETE_UNKNOWN_STATUS, (before,) * 3))

        return deleted + self._transaction(unknown)


DELETE_CHUNK = 1000  # jobs deleted a transaction by `delete_finished` (about 10 ms here)
_pause = time.sleep  # between two chunks (a test replaces it)


def _delete_chunk(conn: sqlite3.Connection, query: str, params: Sequence[Any]) -> list[tuple[str]]:
    """Run `query`, a DELETE returning the ids of the jobs it deleted, then delete their log
    lines and dependency links; those ids."""
    rows: list[tuple[str]] = conn.execute(query, params).fetchall()
    _delete_logs_and_deps(conn, rows)
    return rows


def _delete_logs_and_deps(conn: sqlite3.Connection, rows: Sequence[tuple[str]]) -> None:
    """Delete the log lines, dependency links and long dependency lists of the jobs whose
    ids are `rows`."""
    if rows:
        ids = json.dumps([job_id for (job_id,) in rows])
        conn.execute(sql.DELETE_LOGS, (ids,))
        conn.execute(sql.DELETE_DEPS, (ids, ids))
        conn.execute(sql.DELETE_DEP_LISTS, (ids,))


def _fail_corrupt(conn: sqlite3.Connection, seqs: Collection[int], now: float) -> tuple[str, ...]:
    """Fail as CorruptJob the waiting jobs whose rows no claim reaches: those of `seqs`
    (ids that are not text) and the pending jobs whose `blocked` is no integer >= 0.
    Their decode error (see columns.unsound_numbers) is their error; dependents of those
    with a text id are cancelled. The ids of those with a text id (the others cannot be
    named: logged only)."""
    rows = conn.execute(sql.UNUSABLE_BLOCKED).fetchall()
    for seq in seqs:
        rows += conn.execute(sql.SELECT_JOB_BY_SEQ, (seq,)).fetchall()
    failed: list[str] = []
    for row in rows:
        record = record_from_row(row)
        if record.decode_error is None:  # mended meanwhile
            continue
        if conn.execute(sql.FAIL_CORRUPT, (now, record.decode_error, record.seq)).rowcount != 1:
            continue
        logger.warning("failed corrupt job %s: %s", record.id, record.decode_error)
        if type(row[0]) is str:
            cancel_dependents(conn, row[0], now)
            failed.append(row[0])
    return tuple(failed)


def _end_unreadable_leases(conn: sqlite3.Connection, now: float) -> None:
    """Make the leases of running jobs that hold no usable time end at `now`, logging
    it to each job: recovery never took them back (`lease_expires_at < now` is never true
    of text), and whether their worker lives is unknown. A live one renews the lease at its
    next heartbeat; else the next recovery round takes the job back."""
    for job_id, lease in conn.execute(sql.UNREADABLE_LEASES).fetchall():
        conn.execute(sql.END_LEASE, (now, job_id))
        conn.execute(sql.INSERT_LOG, (job_id, now, "warning", unreadable_lease_message(lease)))

