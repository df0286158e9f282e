"""`SQLiteAdding`: how `SQLiteRepository` stores new jobs (`insert`, `insert_claimed`,
`insert_and_apply`).

A lone job with nothing to check against other rows is one INSERT (shared with other
writers' transactions by the group committer); a batch is one transaction, checked for
taken ids, dependencies and unique keys. Reading, claiming and settling stored jobs is
`sqlite`'s; the SQL is `sqlite_transition_sql`'s.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Callable, Optional, Sequence

from ..models import JobStatus
from ..serialization import could_be_id
from . import sqlite_transition_sql as transition_sql
from ._cascade import ENDED, dependency_error_message, plan_batch
from .columns import claimed_as_stored, encode_progress
from .base import Cascade, JobRecord, JobRepository, Settlement, id_taken, require_plain_pending
from .group_commit import GroupCommitter
from .sqlite_conn import Connections
from .sqlite_rows import (claimed_records, default_params, depends_on_text, has_default_settings, is_plain,
                          plain_params, row_params)
from .sqlite_settle import claim_known, encode_result, settle_all


class SQLiteAdding(JobRepository):
    """The adding half of `SQLiteRepository`, which sets the attributes below."""

    max_payload_bytes: Optional[int]
    _db: Connections
    _group: GroupCommitter[sqlite3.Connection]

    def insert(self, records: Sequence[JobRecord], now: float) -> list[str]:
        if len(records) == 1 and not records[0].depends_on:
            record = records[0]  # nothing to check against other rows but its key: one INSERT
            query, params = self._new_row(record, now, record.status)
            if record.unique_key is not None:
                # Most keys are free: the INSERT stores nothing if an unfinished job holds
                # the key (then a read finds it, unfinished when read: its id is the
                # answer), or the id is taken (the transaction below raises), or the holder
                # finished in between (the transaction stores it). A transaction for every
                # keyed job cost it half its rate.
                query = transition_sql.INSERT_JOB_UNLESS_REFUSED  # (INSERT_JOB's parameters)
            seq = self._insert_row(query, params, record.id)
            if seq:
                record.seq, record.blocked = seq, 0
                return [record.id]
            holder = self._db.reading(lambda conn: self._unfinished_with_key(conn, record.unique_key or ""))
            if holder is not None and holder != record.id:
                return [holder]
        return self._group.run(lambda conn: self._insert(conn, records, now))

    def _new_row(self, record: JobRecord, now: float, status: JobStatus,
                 claimed: bool = False) -> tuple[str, tuple[Any, ...]]:
        """The INSERT (the short one when it can be) and its parameters storing `record`
        unblocked, with no error; `claimed`: the statement for a claimed row, whose
        parameters go on with started_at, worker_id and lease_expires_at."""
        if is_plain(record):
            if has_default_settings(record):
                query = transition_sql.INSERT_CLAIMED_DEFAULT_JOB if claimed else transition_sql.INSERT_DEFAULT_JOB
                return query, default_params(record, now, status, self.max_payload_bytes)
            query = transition_sql.INSERT_CLAIMED_PLAIN_JOB if claimed else transition_sql.INSERT_PLAIN_JOB
            return query, plain_params(record, now, status, self.max_payload_bytes)
        query = transition_sql.INSERT_CLAIMED_JOB if claimed else transition_sql.INSERT_JOB
        return query, row_params(record, now, status, 0, None, self.max_payload_bytes)

    def _insert_row(self, query: str, params: Sequence[Any], job_id: str) -> int:
        """Run one INSERT of a job's row; its rowid, or 0 if it stored nothing (an INSERT OR
        IGNORE). Alone it commits by itself; with durability "full", beside other writers
        it shares their transaction and its fsync (see `SQLiteRepository._group_committer`)."""
        def insert(execute: Callable[[str, Sequence[Any]], sqlite3.Cursor]) -> int:
            try:
                cursor = execute(query, params)
            except sqlite3.IntegrityError:
                raise id_taken(job_id) from None
            return (cursor.lastrowid or 0) if cursor.rowcount == 1 else 0

        return self._group.run(lambda conn: insert(conn.execute), lambda: insert(self._db.write_one))

    def _insert(self, conn: sqlite3.Connection, records: Sequence[JobRecord], now: float) -> list[str]:
        if all(not r.depends_on and r.unique_key is None for r in records):
            return self._insert_plain(conn, records, now)
        given = {record.id: record for record in records}
        stored_rows: dict[str, Any] = {}

        def row_of(job_id: str) -> Any:
            """(status, name, is a schedule) of a job stored before this batch, or None: read once each."""
            if job_id not in stored_rows:
                stored_rows[job_id] = conn.execute(transition_sql.SELECT_DEPENDENCY, (job_id,)).fetchone()
            return stored_rows[job_id]

        ids, stored, cancelled_by = plan_batch(
            records, exists=_Lookup(lambda job_id: row_of(job_id) is not None),
            unfinished_with_key=lambda key: self._unfinished_with_key(conn, key),
            ended=lambda job_id: row_of(job_id)[0] in ENDED, schedule=lambda job_id: bool(row_of(job_id)[2]))
        for record in stored:
            # A member of the batch is not complete; a stored job, unless its status says so.
            blocked = sum(1 for dep in record.depends_on
                          if dep in given or row_of(dep)[0] != JobStatus.COMPLETED.value)
            culprit, dead = cancelled_by.get(record.id), None  # a dependency that never completes
            if culprit is not None:
                if culprit in given:  # stored cancelled in this batch
                    ended_as, name = JobStatus.CANCELLED.value, given[culprit].name
                else:
                    ended_as, name = row_of(culprit)[:2]
                dead = dependency_error_message(culprit, name, ended_as)
            status = JobStatus.CANCELLED if dead else record.status
            depends_on = depends_on_text(record)
            apart = (len(depends_on) > transition_sql.LONG_DEPENDS_ON
                     or depends_on == transition_sql.DEPENDS_ON_APART)
            params = row_params(record, now, status, blocked, dead, self.max_payload_bytes,
                                transition_sql.DEPENDS_ON_APART if apart else depends_on)
            try:
                cursor = conn.execute(transition_sql.INSERT_JOB, params)
            except sqlite3.IntegrityError:
                raise id_taken(record.id) from None
            if apart:
                conn.execute(transition_sql.INSERT_DEP_LIST, (record.id, depends_on))
            given[record.id].seq = cursor.lastrowid or 0
            given[record.id].blocked, given[record.id].status = blocked, status
            for dep in record.depends_on:
                conn.execute(transition_sql.INSERT_DEP, (record.id, dep))
        return ids

    def _insert_plain(self, conn: sqlite3.Connection, records: Sequence[JobRecord], now: float) -> list[str]:
        """A batch with no dependency and no unique key: nothing to check against other
        rows, so one `executemany`. Rowids are handed out one after another while this
        transaction holds the write lock, so the last one tells every record's `seq`."""
        plain = all(is_plain(r) for r in records)
        if plain and all(has_default_settings(r) for r in records):
            query, rows = transition_sql.INSERT_DEFAULT_JOB, [default_params(r, now, r.status, self.max_payload_bytes)
                                                              for r in records]
        elif plain:
            query, rows = transition_sql.INSERT_PLAIN_JOB, [plain_params(r, now, r.status, self.max_payload_bytes)
                                                            for r in records]
        else:
            query, rows = transition_sql.INSERT_JOB, [row_params(r, now, r.status, 0, None, self.max_payload_bytes)
                                                      for r in records]
        ids = [record.id for record in records]
        seen: set[str] = set()
        for job_id in ids:  # named in the error, as the row-by-row path would
            if job_id in seen:
                raise id_taken(job_id)
            seen.add(job_id)
        before = conn.total_changes
        try:
            conn.executemany(query, rows)
        except sqlite3.IntegrityError:
            # The rows go in in order and the first that fails stops them: its id is taken
            # (the transaction is rolled back by the caller).
            raise id_taken(ids[conn.total_changes - before]) from None
        first = conn.execute("SELECT last_insert_rowid()").fetchone()[0] - len(records) + 1
        for offset, record in enumerate(records):
            record.seq, record.blocked = first + offset, 0
        return ids

    def insert_claimed(self, record: JobRecord, worker_id: str, now: float,
                       lease_expires_at: float) -> tuple[str, Optional[JobRecord]]:
        """One INSERT of the row as claimed, for a job that needs no checks against other
        rows (no dependencies, no unique key); others go the default way."""
        if (record.depends_on or record.unique_key is not None or record.is_schedule
                or record.status is not JobStatus.PENDING):
            return super().insert_claimed(record, worker_id, now, lease_expires_at)
        query, params = self._new_row(record, now, JobStatus.RUNNING, claimed=True)
        record.seq = self._insert_row(query, (*params, now, worker_id, lease_expires_at), record.id)
        return record.id, claimed_as_stored(record, params[3], worker_id, now, lease_expires_at)

    def insert_and_apply(self, record: JobRecord, settlements: Sequence[Settlement], claim_ids: Sequence[str],
                         worker_id: str, now: float, lease_expires_at: float, *, claim_new: bool,
                         claim_seqs: Optional[Sequence[int]] = None) -> tuple[list[Optional[Cascade]], list[JobRecord]]:
        """The settlements' statements, the new row's INSERT and the claim: one transaction
        (the INSERT alone, committed by itself, when there is nothing else to do)."""
        require_plain_pending(record)
        encoded = [encode_result(s, self.max_payload_bytes) for s in settlements]  # raises before writing
        progress = encode_progress(settlements)
        status = JobStatus.RUNNING if claim_new else JobStatus.PENDING
        query, params = self._new_row(record, now, status, claimed=claim_new)
        row = (*params, now, worker_id, lease_expires_at) if claim_new else params

        def op(conn: sqlite3.Connection) -> tuple[list[Optional[Cascade]], int, list[Any], dict[str, Any]]:
            cascades = settle_all(conn, settlements, encoded, worker_id, now, progress)
            try:
                seq = conn.execute(query, row).lastrowid or 0
            except sqlite3.IntegrityError:
                raise id_taken(record.id) from None
            full: dict[str, Any] = {}
            if not claim_ids:
                return cascades, seq, [], full
            head = (now, worker_id, lease_expires_at)
            return cascades, seq, claim_known(conn, claim_ids, claim_seqs, head, now, full), full

        if settlements or claim_ids:
            cascades, record.seq, rows, full = self._group.run(op)
        else:  # a new job alone (a quiet pool's hand-off): one statement, committed by itself
            cascades, record.seq, rows, full = [], self._insert_row(query, row, record.id), [], {}
        record.blocked = 0
        claimed = claimed_records(rows, full, now, worker_id, lease_expires_at)
        if claim_new:
            claimed.insert(0, claimed_as_stored(record, params[3], worker_id, now, lease_expires_at))
        return cascades, claimed

    @staticmethod
    def _unfinished_with_key(conn: sqlite3.Connection, key: str) -> Optional[str]:
        row = conn.execute(transition_sql.SELECT_UNFINISHED_BY_KEY, (key,)).fetchone()
        return row[0] if row else None



class _Lookup:
    """Adapts an `exists(job_id)` function to the `in` test `check_batch_dependencies` uses."""

    def __init__(self, exists: Any) -> None:
        self._exists = exists

    def __contains__(self, job_id: object) -> bool:
        return isinstance(job_id, str) and could_be_id(job_id) and self._exists(job_id)

