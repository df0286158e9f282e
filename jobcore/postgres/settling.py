"""Recording the ends of attempts on PostgreSQL, inside a transaction the caller opened.

Functions of a `Tx` and the schema's `Statements`: settlements (complete, retry, fail,
cancel, release) as compare-and-sets on the holding worker and attempt, a run of
completions in two statements, a run of failed attempts in three, and the transitive
cancellation of dependents. They
open no transaction and read no clock.
"""

from __future__ import annotations

from typing import Optional, Sequence

from ..repository._cascade import dependency_error_message
from ..repository.base import Cascade, QueueEntry, Settlement, cancelled_instead_note
from .database import Tx
from .queries import Statements
from .rows import clean_text, entry_from_row


def cancel_dependents(sql: Statements, tx: Tx, job_id: str, now: float) -> tuple[str, ...]:
    """Cancel the waiting dependents of `job_id`, transitively, one level per statement
    (each level reads `job_deps` afresh, after the previous one waited for its locks, so a
    dependent committed meanwhile is not missed). Their error names `job_id`."""
    message: Optional[str] = None  # read only for a job with dependents (most have none)
    cancelled: list[str] = []
    seen, frontier = {job_id}, [job_id]
    while frontier:
        found = [row[0] for row in tx.execute(sql.SELECT_DEPENDENTS, (frontier,))]
        frontier = sorted(dep for dep in found if dep not in seen)
        seen.update(frontier)
        if frontier:
            if message is None:
                status, name = tx.execute(sql.SELECT_STATUS, (job_id,)).fetchone()  # type: ignore[misc]
                message = dependency_error_message(job_id, name, status)
            params = {"ids": frontier, "now": now, "error": message}
            cancelled.extend(row[0] for row in tx.execute(sql.CANCEL_DEPENDENTS, params))
    return tuple(cancelled)


def settle_all(sql: Statements, tx: Tx, settlements: Sequence[Settlement], encoded: Sequence[Optional[str]],
               worker_id: str, now: float,
               progress: Optional[Sequence[Optional[str]]] = None) -> list[Optional[Cascade]]:
    """Apply settlements in order (`encoded`: each one's JSON result, for completions);
    each run of consecutive completions goes in two statements, and each run of failed
    attempts (retries and failures for good) in three. First the last progress
    reports they carry (`progress`: each one's details as JSON, from `encode_progress`;
    None if none carries one), and the log lines they carry, in one statement."""
    lines = [(s.job_id, at, clean_text(level), clean_text(message))
             for s in settlements if s.logs for at, level, message in s.logs]
    if lines:
        tx.cur.executemany(sql.INSERT_LOG, lines)
    if progress is not None:
        store_progress(sql, tx, settlements, progress, worker_id)
    # Ended in more than one statement (below: a run of completions, a run of failed
    # attempts, or any other settlement, each one): locked in `seq` order first (LOCK_HELD).
    if len({"failed" if s.kind in _FAILED else s.kind if s.kind == "complete" else s.job_id
            for s in settlements}) > 1:
        tx.execute(sql.LOCK_HELD, (sorted({s.job_id for s in settlements}), worker_id))
    cascades: list[Optional[Cascade]] = []
    start = 0
    while start < len(settlements):
        end = start
        while end < len(settlements) and settlements[end].kind == "complete":
            end += 1
        if end > start:
            cascades += complete_many(sql, tx, settlements[start:end], encoded[start:end], worker_id, now)
            start = end
            continue
        while end < len(settlements) and settlements[end].kind in _FAILED:
            end += 1
        if end > start:
            cascades += fail_many(sql, tx, settlements[start:end], worker_id, now)
            start = end
        else:
            cascades.append(settle_one(sql, tx, settlements[start], worker_id, now))
            start += 1
    return cascades


_FAILED = ("retry", "fail")  # the kinds of settlement `fail_many` records


def fail_many(sql: Statements, tx: Tx, settlements: Sequence[Settlement], worker_id: str,
              now: float) -> list[Optional[Cascade]]:
    """Record failed attempts of jobs held by `worker_id` (each a retry, or a failure for
    good when it is one with no time to retry at; None for one not held so): the outcomes
    in one statement (FAIL_MANY), their notes in another, and one look for dependents; the
    jobs that ended for good with dependents then cancel them. A run naming a job twice
    goes one by one (each settlement its own compare-and-set)."""
    if len({s.job_id for s in settlements}) < len(settlements):
        return [cascade for s in settlements for cascade in fail_many(sql, tx, [s], worker_id, now)]
    retry_ats = [s.retry_at if s.kind == "retry" else None for s in settlements]  # None: ends for good
    params = {"ids": [s.job_id for s in settlements], "attempts": [s.attempt for s in settlements],
              "retry_at": retry_ats,
              "errors": [clean_text(s.error) for s in settlements],
              "error_types": [clean_text(s.error_type) for s in settlements],
              "tracebacks": [clean_text(s.traceback) for s in settlements], "worker": worker_id, "now": now}
    # job id -> whether its cancellation was requested: it ended CANCELLED instead
    recorded: dict[str, bool] = {row[0]: bool(row[1]) for row in tx.execute(sql.FAIL_MANY, params)}
    notes = [(s.job_id, now, "error", clean_text(cancelled_instead_note(s.note) if recorded[s.job_id] else s.note))
             for s in settlements if s.note is not None and s.job_id in recorded]
    if notes:
        tx.cur.executemany(sql.INSERT_LOG, notes)
    # Those that ended (FAILED, or CANCELLED instead): not SCHEDULED for a retry.
    ended = [s.job_id for s, retry_at in zip(settlements, retry_ats)
             if s.job_id in recorded and (recorded[s.job_id] or retry_at is None)]
    depended_on = {row[0] for row in tx.execute(sql.SELECT_DEPENDED_ON, (ended,))} if ended else set()
    if len(depended_on) > 1:  # (their dependents locked in `seq` order first: see LOCK_DEPENDENTS)
        tx.execute(sql.LOCK_DEPENDENTS, (sorted(depended_on),))
    ended_ids = set(ended)
    cascades: list[Optional[Cascade]] = []
    for s in settlements:
        if s.job_id not in recorded:
            cascades.append(None)
        elif s.job_id not in ended_ids:  # SCHEDULED for its retry
            tx.notify()  # its timer, for whichever manager is free then
            cascades.append(Cascade())
        else:
            cancelled = cancel_dependents(sql, tx, s.job_id, now) if s.job_id in depended_on else ()
            cascades.append(Cascade(cancelled=cancelled, cancelled_instead=recorded[s.job_id]))
    return cascades


def store_progress(sql: Statements, tx: Tx, settlements: Sequence[Settlement], details: Sequence[Optional[str]],
                   worker_id: str) -> None:
    """Write the last progress report each settlement carries (UPDATE_PROGRESS, on the
    attempt it names) before the outcomes, which leave the rows no longer held. In the
    order of their seqs, the order COMPLETE_MANY locks rows in: the rows this locks first
    are not locked in another order later in the transaction."""
    carrying = sorted((s for s in settlements if s.progress is not None), key=lambda s: (s.seq or 0, s.job_id))
    by_id = {s.job_id: d for s, d in zip(settlements, details)}
    tx.cur.executemany(sql.UPDATE_PROGRESS, [
        {"progress": s.progress.progress, "message": clean_text(s.progress.message), "details": by_id[s.job_id],
         "id": s.job_id, "worker": worker_id, "attempt": s.attempt}
        for s in carrying if s.progress is not None])


def complete_many(sql: Statements, tx: Tx, settlements: Sequence[Settlement], encoded: Sequence[Optional[str]],
                  worker_id: str, now: float) -> list[Optional[Cascade]]:
    """Complete jobs held by `worker_id` and release their dependents; a dependent
    released here is reported with the last (in settlement order) of its dependencies
    that completed here."""
    params = {"ids": [s.job_id for s in settlements], "attempts": [s.attempt for s in settlements],
              "results": list(encoded), "worker": worker_id, "now": now}
    done = {row[0] for row in tx.execute(sql.COMPLETE_MANY, params)}
    notes = [(s.job_id, now, "info", clean_text(s.note)) for s in settlements
             if s.note is not None and s.job_id in done]
    if notes:
        tx.cur.executemany(sql.INSERT_LOG, notes)
    released: dict[str, list[QueueEntry]] = {}
    if done:
        order = {s.job_id: index for index, s in enumerate(settlements)}
        for row in tx.execute(sql.RELEASE_DEPENDENTS_MANY, {"done": sorted(done)}):
            if row[6] == 0:
                by = max(row[7], key=lambda job_id: order.get(job_id, -1))
                released.setdefault(by, []).append(entry_from_row(row))
    if released:
        tx.notify()
    return [Cascade(released=tuple(released.get(s.job_id, ()))) if s.job_id in done else None
            for s in settlements]


def settle_one(sql: Statements, tx: Tx, s: Settlement, worker_id: str, now: float) -> Optional[Cascade]:
    """Apply a cancel or release settlement (failed attempts are `fail_many`'s); None if
    the job was not held so."""
    held = {"id": s.job_id, "worker": worker_id, "attempt": s.attempt, "now": now}
    if s.kind == "release":
        released = tx.execute(sql.RELEASE, held).fetchone()
        if released is None:
            return None
        if not released[0]:
            tx.notify()  # ready again, for whoever is free
            return Cascade()
        # Its cancellation was requested: it ended CANCELLED instead of PENDING.
        return Cascade(cancelled=cancel_dependents(sql, tx, s.job_id, now), cancelled_instead=True)
    if s.kind == "cancel":
        if tx.execute(sql.FINISH_CANCELLED, held).rowcount != 1:
            return None
        return Cascade(cancelled=cancel_dependents(sql, tx, s.job_id, now))
    raise ValueError(f"unknown settlement kind {s.kind!r}")
