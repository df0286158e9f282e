"""Recording finished attempts and claiming jobs in SQLite: the statements
`SQLiteRepository.apply` writes.

Functions of an open connection inside the caller's write transaction; every statement is
a compare-and-set on the worker and attempt that holds the job. Completions come in runs
whose dependents are released by one statement. A row whose seq the engine knows is found
by it, the table's own key, with no read of the index on ids (whose pages every other
process's commit leaves to be read again). No transactions are opened here.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Optional, Sequence

from .. import serialization
from . import sqlite_sql as sql
from . import sqlite_transition_sql as transition_sql
from ._cascade import dependency_error_message
from .base import Cascade, QueueEntry, Settlement, cancelled_instead_note
from .sqlite_rows import entry_from_row

# Shared by every completion that releases nothing (it is frozen): one less object per job.
_NOTHING_RELEASED = Cascade()


def cancel_dependents(conn: sqlite3.Connection, job_id: str, now: float) -> tuple[str, ...]:
    """Cancel every job waiting, directly or not, on `job_id` (which ended for good); their ids."""
    if not conn.execute(transition_sql.ANY_DEPENDENT, (job_id,)).fetchone()[0]:
        return ()  # most jobs: one primary-key probe instead of a read and a recursive query
    status, name = conn.execute(sql.SELECT_STATUS, (job_id,)).fetchone()
    message = dependency_error_message(job_id, name, status)
    return tuple(row[0] for row in conn.execute(transition_sql.CANCEL_DEPENDENTS, (job_id, now, message)))


def _held_update(conn: sqlite3.Connection, query: str, values: tuple[Any, ...], s: Settlement,
                 worker_id: str) -> bool:
    """Run `query`, one of the statements on a job held (`sqlite_transition_sql.HELD_BY_SEQ`'s
    keys), setting `values` on the job `s` names; True if it applied. The row is found by
    the seq `s` gives, if any (no index read; its id checked too), else by its id: also
    when the seq finds no such row, so a wrong seq costs a statement, never an outcome."""
    if s.seq:  # 0: a record not stored yet, whose seq is unknown
        by_seq = (*values, s.seq, s.job_id, worker_id, s.attempt)
        if conn.execute(transition_sql.HELD_BY_SEQ[query], by_seq).rowcount == 1:
            return True
    return conn.execute(query, (*values, s.job_id, worker_id, s.attempt)).rowcount == 1


def _held_returning(conn: sqlite3.Connection, query: str, values: tuple[Any, ...], s: Settlement,
                    worker_id: str) -> Optional[Any]:
    """`_held_update` for a statement with a RETURNING clause: the row it returned, or
    None if it did not apply (`rowcount` is not known until the rows are fetched)."""
    if s.seq:
        by_seq = (*values, s.seq, s.job_id, worker_id, s.attempt)
        for row in conn.execute(transition_sql.HELD_BY_SEQ[query], by_seq).fetchall():
            return row
    for row in conn.execute(query, (*values, s.job_id, worker_id, s.attempt)).fetchall():
        return row
    return None


def _settle_one(conn: sqlite3.Connection, s: Settlement, worker_id: str, now: float) -> Optional[Cascade]:
    """Apply one settlement other than a completion inside the caller's transaction."""
    if s.kind == "release":
        row = _held_returning(conn, transition_sql.RELEASE, (now,), s, worker_id)
        if row is None:
            return None
        if not row[0]:
            return _NOTHING_RELEASED
        # Its cancellation was requested: it ended CANCELLED instead of PENDING.
        return Cascade(cancelled=cancel_dependents(conn, s.job_id, now), cancelled_instead=True)
    if s.kind == "cancel":
        if not _held_update(conn, transition_sql.FINISH_CANCELLED, (now,), s, worker_id):
            return None
        return Cascade(cancelled=cancel_dependents(conn, s.job_id, now))
    if s.kind not in ("retry", "fail"):
        raise ValueError(f"unknown settlement kind {s.kind!r}")
    retrying = s.kind == "retry" and s.retry_at is not None
    if retrying:
        row = _held_returning(conn, transition_sql.FAIL_RETRY, (s.retry_at, now, s.error, s.error_type, s.traceback),
                              s, worker_id)
    else:
        row = _held_returning(conn, transition_sql.FAIL_FINAL, (now, s.error, s.error_type, s.traceback), s, worker_id)
    if row is None:
        return None
    cancelled = bool(row[0])  # its cancellation was requested: it ended CANCELLED instead
    if s.note is not None:
        note = cancelled_instead_note(s.note) if cancelled else s.note
        conn.execute(sql.INSERT_LOG, (s.job_id, now, "error", note))
    if retrying and not cancelled:
        return Cascade()
    return Cascade(cancelled=cancel_dependents(conn, s.job_id, now), cancelled_instead=cancelled)


def settle_all(conn: sqlite3.Connection, settlements: Sequence[Settlement],
               encoded: Sequence[Optional[str]], worker_id: str, now: float,
               progress: Optional[Sequence[Optional[str]]] = None) -> list[Optional[Cascade]]:
    """Apply settlements in order, each run of consecutive completions as one batch, with
    the last progress reports they carry (`progress`: each one's details as JSON, from
    `columns.encode_progress`; None if none carries one).

    Only runs are batched, not every completion: a completion and a later failure can
    reach the same dependent, and its `blocked` must come out as the order gives it. The
    log lines the settlements carry go in first, all in one statement."""
    lines = [(s.job_id, *line) for s in settlements if s.logs for line in s.logs]
    if lines:
        conn.executemany(sql.INSERT_LOG, lines)
    if progress is not None:
        _store_progress(conn, settlements, progress, worker_id)
    cascades: list[Optional[Cascade]] = []
    start, count = 0, len(settlements)
    while start < count:
        end = start
        while end < count and settlements[end].kind == "complete":
            end += 1
        if end > start:
            details = None if progress is None else progress[start:end]
            cascades += _complete_many(conn, settlements[start:end], encoded[start:end], worker_id, now, details)
            start = end
        else:
            cascades.append(_settle_one(conn, settlements[start], worker_id, now))
            start += 1
    return cascades


def _store_progress(conn: sqlite3.Connection, settlements: Sequence[Settlement],
                    details: Sequence[Optional[str]], worker_id: str) -> None:
    """Write the last progress report each settlement but a completion carries (a
    completion stores its own: COMPLETE_REPORTED), as UPDATE_PROGRESS on the attempt the
    settlement names: before its outcome, which would leave the row no longer held (a
    report of an attempt not held any more is dropped, as `update_progress` drops it)."""
    for s, encoded in zip(settlements, details):
        if s.progress is not None and s.kind != "complete":
            _held_update(conn, transition_sql.UPDATE_PROGRESS, (s.progress.progress, s.progress.message, encoded),
                         s, worker_id)


def _complete_many(conn: sqlite3.Connection, settlements: Sequence[Settlement],
                   encoded: Sequence[Optional[str]], worker_id: str, now: float,
                   details: Optional[Sequence[Optional[str]]] = None) -> list[Optional[Cascade]]:
    """Complete jobs held by `worker_id` (as many `_settle` calls would), each with the
    last progress report it carries (`details`: as in `settle_all`), and release their
    dependents together; a dependent released here is reported with the last (in
    settlement order) of its dependencies completed here."""
    completed: list[Optional[str]] = []  # per settlement: its job id if it applied, else None
    for index, (s, e) in enumerate(zip(settlements, encoded)):
        if s.progress is None or details is None:
            applied = _held_update(conn, transition_sql.COMPLETE, (e, now), s, worker_id)
        else:
            values = (e, now, s.progress.message, details[index])
            applied = _held_update(conn, transition_sql.COMPLETE_REPORTED, values, s, worker_id)
        if not applied:
            completed.append(None)
            continue
        completed.append(s.job_id)
        if s.note is not None:
            conn.execute(sql.INSERT_LOG, (s.job_id, now, "info", s.note))
    released = _release_dependents(conn, [job_id for job_id in completed if job_id is not None])
    cascades: list[Optional[Cascade]] = []
    for job_id in completed:
        if job_id is None:
            cascades.append(None)
        elif job_id in released:
            cascades.append(Cascade(released=tuple(released[job_id])))
        else:
            cascades.append(_NOTHING_RELEASED)
    return cascades


def _release_dependents(conn: sqlite3.Connection, completed: list[str]) -> dict[str, list[QueueEntry]]:
    """Unblock the dependents of `completed` (in settlement order); returns those now
    free of blocks by the completion that released them."""
    released: dict[str, list[QueueEntry]] = {}
    if not completed:
        return released
    if len(completed) == 1:
        if not conn.execute(transition_sql.ANY_DEPENDENT, (completed[0],)).fetchone()[0]:
            return released
    elif not conn.execute(transition_sql.ANY_DEPENDENTS, (json.dumps(completed),)).fetchone()[0]:
        return released
    ids = json.dumps(completed)
    for row in conn.execute(transition_sql.RELEASE_DEPENDENTS, (ids, ids, ids)):
        if row[6] == 0:
            released.setdefault(row[7], []).append(entry_from_row(row))
    return released


def encode_result(s: Settlement, max_bytes: Optional[int]) -> Optional[str]:
    if s.kind != "complete":
        return None
    if s.encoded_result is not None:
        return s.encoded_result
    return serialization.encode(s.result, field="result", max_bytes=max_bytes)


def claim_known(conn: sqlite3.Connection, claim_ids: Sequence[str], claim_seqs: Optional[Sequence[int]],
                head: tuple[Any, ...], now: float, full: dict[str, Sequence[Any]]) -> list[Any]:
    """Claim the jobs `claim_ids` inside the caller's transaction (`head`: the claim's
    started_at, worker_id and lease_expires_at); their rows, as `claim_rows`. By their
    seqs when `claim_seqs` gives every one (in the same order), else by their ids."""
    if claim_seqs is not None and len(claim_seqs) == len(claim_ids) and all(claim_seqs):
        params = (*head, json.dumps(list(claim_seqs)), json.dumps(list(claim_ids)), now)
        return claim_rows(conn, transition_sql.CLAIM_MANY_BY_SEQ, params, full)
    return claim_rows(conn, transition_sql.CLAIM_MANY, (*head, json.dumps(list(claim_ids)), now), full)


def claim_rows(conn: sqlite3.Connection, query: str, params: Sequence[Any],
               full: dict[str, Sequence[Any]]) -> list[Any]:
    """Run a batch claim (CLAIM_MANY, CLAIM_MANY_BY_SEQ or CLAIM_BEST) inside the caller's
    transaction; its rows of `CLAIMED_COLUMNS`. The whole row of each claimed job that is
    not plain goes into `full`, by id, for `claimed_records`."""
    rows = conn.execute(query, params).fetchall()
    unusual = [row[transition_sql.CLAIMED_SEQ] for row in rows if not row[transition_sql.CLAIMED_PLAIN]]
    if unusual:
        for row in conn.execute(transition_sql.SELECT_JOBS_BY_SEQS, (json.dumps(unusual),)):
            full[row[0]] = row
    return rows
