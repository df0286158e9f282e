"""`PostgresAdding`: how `PostgresRepository` stores new jobs by themselves (`insert`, and
`insert_claimed` for a job handed straight to an idle worker); it claims no stored job and
settles nothing (a new job stored in an exchange, `insert_and_apply`, is `repository`'s,
beside `apply`), and never reads the clock.

A lone job with nothing to check against other rows is one autocommit INSERT that also
NOTIFYs (`INSERT_ALONE`), or, stored claimed, one that does not (`INSERT_CLAIMED`); a batch
is one transaction, its unique keys and dependencies locked and checked first. The SQL is
`queries`'.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from .. import serialization
from ..serialization import could_be_id
from ..models import JobStatus
from ..repository._cascade import ENDED, dependency_error_message, plan_batch
from ..repository.base import JobRecord, JobRepository, id_taken
from ..repository.columns import claimed_as_stored
from .database import Database, LostRace, TooLongForAnIndex, Tx
from .queries import Statements
from .rows import refuse_nul, row_params


def _alone(records: Sequence[JobRecord]) -> bool:
    """Whether `records` is one job that needs no check against other rows (no
    dependencies, no unique key): stored by INSERT_ALONE, whose failure on the index of
    ids says the id is taken, with no lookup first."""
    return len(records) == 1 and not records[0].depends_on and records[0].unique_key is None


class PostgresAdding(JobRepository):
    """The adding half of `PostgresRepository`, which sets the attributes below."""

    schema: str
    max_payload_bytes: Optional[int]
    _db: Database
    sql: Statements

    def insert(self, records: Sequence[JobRecord], now: float) -> list[str]:
        records = list(records)
        with TooLongForAnIndex.named_for(records):
            return self._insert(records, now)

    def _insert(self, records: list[JobRecord], now: float) -> list[str]:
        if not records:
            return []
        for record in records:
            refuse_nul(record)  # before a unique key is looked up by it
        if _alone(records):  # nothing to check against other rows: one statement
            record = records[0]
            record.seq = self._db.insert_alone(self.sql.INSERT_ALONE, self._alone_params(record, now),
                                               stored=lambda: self._stored_seq(record, now))
            return [record.id]
        if len(records) == 1 and not records[0].depends_on:  # a key to check, and nothing else
            ids = self._insert_keyed_alone(records[0], now)
            if ids is not None:
                return ids
        # On generic plans without sequential scans, as exchanges run (see
        # database._GENERIC_PLANS): the lookup of the batch's ids and dependencies, planned
        # on a small table, read every row of the table for each batch once it was deep.
        return self._db.transaction(lambda tx: self._insert_in(tx, records, now), generic_plans=True)

    def _insert_keyed_alone(self, record: JobRecord, now: float) -> Optional[list[str]]:
        """Store one job with a unique_key and no dependencies by one statement
        (`INSERT_ALONE_KEYED`): its id if stored; the id of the unfinished job holding its
        key if that stopped it (read then, as a batch reads holders); None, with nothing
        stored, when neither tells (the holder ended in between, or the row holding the
        key has this job's id), for `insert`'s transaction to decide."""
        seq = self._db.insert_alone(self.sql.INSERT_ALONE_KEYED, self._alone_params(record, now),
                                    stored=lambda: self._stored_seq(record, now), refusable=True)
        if seq is not None:
            record.seq = seq
            return [record.id]
        # On generic plans without sequential scans, as batches read holders (see `insert`).
        holders = self._db.planned_rows(self.sql.SELECT_UNFINISHED_BY_KEYS, ([record.unique_key],))
        holder = holders[0][1] if holders else None
        if holder is not None and holder != record.id:
            return [holder]
        if holder is not None:  # this job's row: stored by a first run whose connection then broke
            seq = self._stored_seq(record, now)
            if seq is not None:
                record.seq = seq
                return [record.id]
        return None

    def insert_claimed(self, record: JobRecord, worker_id: str, now: float,
                       lease_expires_at: float) -> tuple[str, Optional[JobRecord]]:
        """One autocommit INSERT of the row as claimed (`INSERT_CLAIMED`), for a pending
        job that needs no check against other rows; others go the default way (`insert`,
        then a claim)."""
        if not _alone([record]) or record.is_schedule or record.status is not JobStatus.PENDING:
            return super().insert_claimed(record, worker_id, now, lease_expires_at)
        params = (*row_params(record, now, JobStatus.RUNNING, 0, None, self.max_payload_bytes),
                  now, worker_id, lease_expires_at)
        with TooLongForAnIndex.named_for([record]):
            record.seq = self._db.insert_alone(self.sql.INSERT_CLAIMED, params,
                                               stored=lambda: self._stored_seq(record, now), notifies=False)
        return record.id, claimed_as_stored(record, params[3], worker_id, now, lease_expires_at)

    def _stored_seq(self, record: JobRecord, now: float) -> Optional[int]:
        """The seq of `record` as a run of INSERT_ALONE at `now` stored it, if that row
        is there (its id, name, arguments and time of creation), else None."""
        rows = self._db.read(self.sql.SELECT_INSERTED, (record.id,))
        if not rows:
            return None
        seq, function_name, payload, created_at = rows[0]
        mine = (function_name == record.function_name and created_at == now
                and payload == serialization.encode_payload(record.args, record.kwargs, self.max_payload_bytes))
        return int(seq) if mine else None

    def _alone_params(self, record: JobRecord, now: float) -> tuple[Any, ...]:
        """The parameters of INSERT_ALONE storing `record` (see `_alone`)."""
        return (*row_params(record, now, record.status, 0, None, self.max_payload_bytes), self.schema)

    def _insert_in(self, tx: Tx, records: list[JobRecord], now: float) -> list[str]:
        """`insert`'s work, in the transaction `tx`."""
        if _alone(records):  # a taken id fails the statement, and so the transaction
            records[0].seq = tx.execute(self.sql.INSERT_ALONE, self._alone_params(records[0], now)).fetchall()[0][0]
            tx.notified = True
            return [records[0].id]
        given = {record.id: record for record in records}
        sql = self.sql
        keys = sorted({r.unique_key for r in records if r.unique_key is not None})
        holders = dict(tx.execute(sql.SELECT_UNFINISHED_BY_KEYS, (keys,)).fetchall()) if keys else {}
        # Locks the stored dependencies (and stand-ins) against ending meanwhile.
        wanted = ({dep for r in records for dep in r.depends_on if could_be_id(dep)}  # (others: unknown)
                  | set(given) | set(holders.values()))
        found = {row[0]: (row[1], row[2], row[3]) for row in tx.execute(sql.LOCK_DEPENDENCIES, (sorted(wanted),))}
        ids, planned, cancelled_by = plan_batch(records, exists=found, unfinished_with_key=holders.get,
                                                ended=lambda job_id: found[job_id][0] in ENDED,
                                                schedule=lambda job_id: found[job_id][2])
        rows = []
        stored_as: list[tuple[int, JobStatus]] = []
        for record in planned:
            if record.id in found:
                raise id_taken(record.id)
            blocked = sum(1 for dep in record.depends_on  # not found: a job of this batch
                          if dep not in found or found[dep][0] != JobStatus.COMPLETED.value)
            dead = None
            culprit = cancelled_by.get(record.id)
            if culprit is not None:  # a dependency that will never complete
                name, status = (given[culprit].name, JobStatus.CANCELLED.value) if culprit in given else (
                    found[culprit][1], found[culprit][0])
                dead = dependency_error_message(culprit, name, status)
            status = JobStatus.CANCELLED if dead else record.status
            rows.append(row_params(record, now, status, blocked, dead, self.max_payload_bytes))
            stored_as.append((blocked, status))
        if not rows:
            return ids
        tx.cur.executemany(sql.INSERT_JOB_KEYED if keys else sql.INSERT_JOB, rows, returning=True)
        for record in planned:
            row = tx.cur.fetchone()
            if row is None:  # its unique_key was taken since we looked: run again to find the holder
                raise LostRace
            given[record.id].seq = row[0]
            tx.cur.nextset()
        for record, (blocked, status) in zip(planned, stored_as):  # as `insert` promises: the engine reads them
            given[record.id].blocked, given[record.id].status = blocked, status
        deps = [(record.id, dep) for record in planned for dep in record.depends_on]
        if deps:
            tx.cur.executemany(sql.INSERT_DEP, deps)
        if len(cancelled_by) < len(rows):
            tx.notify()
        return ids
