"""The default `JobRepository.apply`: settlements and claims made one single-job method
call at a time, for a backend that implements only those.

It cannot make the batch one transaction (a backend that can overrides `apply`, as
SQLite and PostgreSQL do; memory runs this under its own lock, which makes it one step),
so it keeps what it can of `apply`'s promise: every
settlement is checked before anything is written; a settlement that raises once earlier
ones were written raises `PartlyApplied`, saying which were recorded; and once anything
was written, a claim that raises ends the claiming, and what was done is returned.
"""

from __future__ import annotations

import builtins
import logging
from typing import TYPE_CHECKING, Collection, Optional, Sequence

from .. import serialization
from ..models import JobStatus
from .values import CANCELLED_BY_REQUEST, Cascade, JobRecord, PartlyApplied, Settlement, claim_limit

if TYPE_CHECKING:
    from .base import JobRepository

logger = logging.getLogger("jobcore.repository")

KINDS = frozenset({"complete", "retry", "fail", "cancel", "release"})


def apply(repo: JobRepository, settlements: Sequence[Settlement], claim_ids: Sequence[str], worker_id: str,
          now: float, lease_expires_at: float, top_up: Optional[Collection[str]],
          up_to: Optional[int]) -> tuple[builtins.list[Optional[Cascade]], builtins.list[JobRecord]]:
    """`JobRepository.apply` through `repo`'s single-job methods (see module docstring)."""
    if repo.persistent:  # (memory's `apply` comes here under its lock: it pays for no check)
        check_storable(repo, settlements)
    cascades: list[Optional[Cascade]] = []
    for settlement in settlements:
        try:
            cascades.append(repo._apply_one(settlement, worker_id, now))
        except Exception as exc:
            if not cascades:
                raise  # nothing written: "a method that raises has changed nothing"
            # Retried whole, those recorded would be "no longer held": their outcomes
            # discarded, their notifications never sent.
            raise PartlyApplied(cascades, exc) from exc
    claimed: list[JobRecord] = []
    try:
        for job_id in claim_ids:
            record = repo.claim(job_id, worker_id, now, lease_expires_at)
            if record is not None:
                claimed.append(record)
        wanted = claim_limit(claim_ids, up_to)
        if top_up is not None and len(claimed) < wanted:
            for entry in repo.ready(top_up, wanted - len(claimed)):
                record = repo.claim(entry.job_id, worker_id, now, lease_expires_at)
                if record is not None:
                    claimed.append(record)
    except Exception:
        if not settlements and not claimed:
            raise  # nothing written
        # Raised, the settlements recorded would be discarded on the retry, and the jobs
        # claimed would sit RUNNING, unknown to the caller, until their leases lapse.
        # Claims are best effort: fewer is what a race with another worker gives too.
        logger.warning("a claim failed after %d settlements and %d claims were made; the claims stop there",
                       len(settlements), len(claimed), exc_info=True)
    return cascades, claimed


def check_storable(repo: JobRepository, settlements: Sequence[Settlement]) -> None:
    """For a persistent repository: raise `ValueError` for an unknown settlement kind, and
    `TypeError`/`ValueError` for a result or progress details JSON cannot hold (or over
    `max_payload_bytes`), before anything is written."""
    for s in settlements:
        if s.kind not in KINDS:
            raise ValueError(f"unknown settlement kind {s.kind!r}")
        if s.kind == "complete" and s.encoded_result is None:
            serialization.encode(s.result, field="result", max_bytes=repo.max_payload_bytes)
        if s.progress is not None and s.progress.details and s.progress.encoded_details is None:
            serialization.encode(s.progress.details, field="progress details", max_bytes=repo.max_payload_bytes)


def apply_one(repo: JobRepository, s: Settlement, worker_id: str, now: float) -> Optional[Cascade]:
    """One settlement, as its single-job method makes it (see `JobRepository._apply_one`)."""
    if s.progress is not None:
        repo.update_progress(s.job_id, worker_id, s.attempt, s.progress.progress, s.progress.message,
                             s.progress.details, now)
    if s.kind == "complete":
        return repo.complete(s.job_id, worker_id, s.attempt, s.result, now, s.note)
    if s.kind in ("retry", "fail"):
        return repo.fail(s.job_id, worker_id, s.attempt, error=s.error or "", error_type=s.error_type or "",
                         traceback=s.traceback, now=now, retry_at=s.retry_at, note=s.note)
    if s.kind == "cancel":
        return repo.finish_cancelled(s.job_id, worker_id, s.attempt, now)
    if s.kind == "release":
        return released(repo, s.job_id, worker_id, s.attempt, now)
    raise ValueError(f"unknown settlement kind {s.kind!r}")


def released(repo: JobRepository, job_id: str, worker_id: str, attempt: int, now: float) -> Optional[Cascade]:
    """`release`, saying what it did as `apply` does: None if the job was not held so, an
    empty `Cascade` if it is PENDING again, or one with `cancelled_instead` and the
    dependents cancelled if it ended CANCELLED (its cancel was requested): `release`
    returns only a bool, so the row and its cancelled dependents are read back."""
    if not repo.release(job_id, worker_id, attempt, now):
        return None
    row = repo.get_without_args(job_id)
    if row is None or row.status is not JobStatus.CANCELLED or row.error != CANCELLED_BY_REQUEST:
        return Cascade()
    return Cascade(cancelled=_cancelled_with(repo, job_id, now), cancelled_instead=True)


def _cancelled_with(repo: JobRepository, job_id: str, now: float) -> tuple[str, ...]:
    """The dependents, transitively, that ended CANCELLED at `now` with `job_id`: read
    through `list` (a scan of the cancelled jobs; only for a hand-back that ended a job
    CANCELLED, which is rare)."""
    ended = [r for r in repo.list_without_args(status=JobStatus.CANCELLED, limit=None)
             if r.completed_at == now and r.depends_on]
    found: list[str] = []
    frontier = {job_id}
    while frontier:
        step = [r.id for r in ended if r.id not in found and frontier.intersection(r.depends_on)]
        found.extend(step)
        frontier = set(step)
    return tuple(found)
