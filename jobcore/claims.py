"""`ClaimCheck`: whether a job a pool claimed is still its own before the job starts.

A claim is a lease that heartbeats renew. A process that stops renewing for longer than
the lease (suspended, starved of CPU, a paused VM) may find, when it wakes, that another
process took back the jobs it held and ran them. A running job cannot be called back,
but one still waiting in the pool's buffer need not start: the pool checks it with the
repository first, whenever neither its claim nor the pool's last heartbeat leaves it half
a lease (the rest is room for clocks that differ between processes). Between heartbeats
every `poll_interval` and a lease of `lease_timeout`, that never happens in a healthy
process, so the check costs nothing there. No threads and no locks here; the pool calls it.
"""

from __future__ import annotations

import logging
from typing import Optional

from .clock import Clock, real_sleep
from .errors import RepositoryError
from .models import JobStatus
from .repository.base import JobRecord, JobRepository

logger = logging.getLogger("jobcore.workers")

# Reads `claims_if_committed` makes while more Ctrl-Cs land in them (each a round trip).
READS_AFTER_INTERRUPT = 3
# How often `still_ours` renews and reads a claim whose renewal did not land, and the
# pause between tries (real seconds): the transaction holding the row ends in moments.
RENEWAL_TRIES = 5
RENEWAL_PAUSE = 0.02


class ClaimCheck:
    """The check for one pool: its repository, its worker id, its clock and lease."""

    def __init__(self, repository: JobRepository, worker_id: str, clock: Clock,
                 lease_timeout: float) -> None:
        self._repo = repository
        self.worker_id = worker_id
        self._clock = clock
        self._lease = lease_timeout

    def suspect(self, record: JobRecord, renewed_until: float, now: float) -> bool:
        """True if `record`'s lease may have lapsed by wall time `now`: neither its claim's
        expiry nor `renewed_until` (what the pool's last heartbeat gave every job it held)
        is half a lease away."""
        claimed_until = record.lease_expires_at
        known = renewed_until if claimed_until is None else max(claimed_until, renewed_until)
        return now >= known - self._lease / 2

    def still_ours(self, record: JobRecord, *, renew: bool) -> bool:
        """True if the store still has `record`'s attempt running under this pool's worker
        id; with `renew`, its lease is renewed first (renewal only touches a row still
        ours, so a True answer comes with a fresh lease). A repository that fails to
        answer counts as No: not starting the job loses nothing, its lease lapses and it
        runs elsewhere or later.

        A renewal can be skipped without a word: PostgreSQL's skips a row another
        transaction locks. That may be another process's recovery taking the job back,
        not committed yet, while the read still shows the job ours (it ran in two live
        workers at once), or this manager's own heartbeat renewing it. Either ends in
        moments: while the lease read back is not half a lease away, the check is made
        again after a pause (RENEWAL_TRIES in all). Then the job is handed back (PENDING
        again, its attempt uncounted, if it is still ours once the lock is released: a
        hand-back waits for it) and counts as not ours: never run beside another attempt,
        nor left RUNNING here unrun until its lease lapsed and it failed as WorkerLost."""
        for tries_left in range(RENEWAL_TRIES - 1, -1, -1):
            now = self._clock.time()
            try:
                if renew:
                    self._repo.heartbeat(self.worker_id, [record.id], now + self._lease, now)
                current = self._repo.get_without_args(record.id)
            except RepositoryError as exc:
                logger.warning("could not check the claim on job %s before starting it: %s", record.id, exc)
                return False
            ours = (current is not None and current.status is JobStatus.RUNNING
                    and current.worker_id == self.worker_id and current.attempts == record.attempts)
            lease = None if current is None else current.lease_expires_at
            if not ours or not renew or (lease is not None and lease >= now + self._lease / 2):
                break
            ours = False  # its renewal did not land: a lock held the row
            if tries_left:
                real_sleep(RENEWAL_PAUSE)
            else:
                self._hand_back(record)
        if not ours:
            logger.warning("job %s: this worker's claim lapsed before it started (the process"
                           " stopped renewing it); not started here", record.id)
        return ours

    def _hand_back(self, record: JobRecord) -> None:
        """Hand back `record`'s claim if it is still this pool's (see `still_ours`)."""
        try:
            self._repo.release(record.id, self.worker_id, record.attempts, self._clock.time())
        except RepositoryError as exc:  # its lease lapses, and it is taken back then
            logger.warning("could not hand back job %s: %s", record.id, exc)


def claims_if_committed(repository: JobRepository, worker_id: str, record: JobRecord, claim_ids: list[str],
                        now: float) -> Optional[list[JobRecord]]:
    """After an interrupt (Ctrl-C) inside a call that stores the new `record` at `now` and
    claims for `worker_id` (an enqueue's exchange, a hand-off), which may have landed
    after its transaction committed: None if `record` is not stored (nothing was), else
    the jobs among `claim_ids` and `record` the call claimed, RUNNING under `worker_id`,
    best first. Left alone, those stayed RUNNING, never run, until their leases lapsed.
    None too if the store cannot tell (then as if nothing was committed)."""
    for tries_left in range(READS_AFTER_INTERRUPT - 1, -1, -1):
        try:
            stored = repository.get(record.id)
            # (the same id stored by another job, refused: not this one's row)
            if stored is None or stored.created_at != now or stored.function_name != record.function_name:
                return None
            rows = [stored if job_id == record.id else repository.get(job_id)
                    for job_id in dict.fromkeys([*claim_ids, record.id])]
            break
        except BaseException as exc:  # noqa: BLE001 (another Ctrl-C: read again; a store failing: can't tell)
            if tries_left and not isinstance(exc, Exception):
                continue
            logger.warning("could not read which jobs an interrupted enqueue claimed (%r); those it did"
                           " run once their leases lapse", exc)
            return None
    mine = [r for r in rows if r is not None and r.status is JobStatus.RUNNING and r.worker_id == worker_id]
    mine.sort(key=lambda r: (-r.priority, r.seq))
    return mine
