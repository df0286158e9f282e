"""`Holdings`: the jobs a pool holds a claim on, their leases renewed and cancels passed on;
it neither runs nor records them.

A job is held from its claim until `on_settled` is told of it: buffered, running, or
being recorded (`PoolState`). Here: which jobs those are, the heartbeat that renews
their leases and hears of cancels requested elsewhere, the cancel requests themselves,
and letting go of a claimed job that is no longer the pool's (see `claims`). No threads
start here; the `PoolState`'s lock guards what this reads and changes.
"""

from __future__ import annotations

import collections
from typing import Optional

from .claims import ClaimCheck
from .clock import Clock
from .pool_state import Attempt, PoolState
from .recorder import Settled
from .repository.base import JobRecord, JobRepository


class Holdings:
    """The claims of one pool, on its `PoolState`."""

    def __init__(self, state: PoolState, repository: JobRepository, claims: ClaimCheck, clock: Clock,
                 worker_id: str, lease_timeout: float, on_settled: Settled) -> None:
        self._state = state
        self._repo = repository
        self._claims = claims
        self._clock = clock
        self.worker_id = worker_id
        self._lease_timeout = lease_timeout
        self._on_settled = on_settled

    def ids(self) -> list[str]:
        """Ids this pool holds a claim on: buffered, running, or being recorded."""
        state = self._state
        with state.lock:
            return [r.id for r in state.buffer] + list(state.running) + list(state.settling)

    def settles_here(self, job_id: str) -> int:
        """See `WorkerPool.settles_here`."""
        with self._state.lock:
            return self._state.holding_locked(job_id)

    def request_cancel(self, job_id: str) -> bool:
        """Signal a job held here to stop; False if it is not held here."""
        state = self._state
        with state.lock:
            attempt = state.running.get(job_id)
            if attempt is None:
                if not any(r.id == job_id for r in state.buffer):
                    return False
                state.cancel_ids.add(job_id)
                return True
            if job_id in state.deferred:  # claimed again here: that attempt starts cancelled
                state.cancel_ids.add(job_id)
        if not attempt.context.cancel_requested:
            # Once: a coroutine job's task is cancelled at each request, and one that caught
            # the first to clean up had its cleanup cut short by the next heartbeat's.
            attempt.context.request_cancel()
        return True

    def hear_cancels(self) -> None:
        """See `WorkerPool.hear_cancels`."""
        ids = self.ids()
        if not ids:
            return
        for job_id in self._repo.cancels_requested(self.worker_id, ids):
            self.request_cancel(job_id)

    def heartbeat(self) -> list[str]:
        """See `WorkerPool.heartbeat`."""
        state = self._state
        ids = self.ids()
        now = self._clock.time()
        renewed_until = now + self._lease_timeout
        if ids:
            for job_id in self._repo.heartbeat(self.worker_id, ids, renewed_until, now):
                self.request_cancel(job_id)
        with state.lock:
            buffered = [r for r in state.buffer if self._claims.suspect(r, state.renewed_until, now)]
        for record in buffered:
            if not self._claims.still_ours(record, renew=False):
                self.drop_unstarted(record, started=None)
        with state.lock:
            state.renewed_until = max(state.renewed_until, renewed_until)
        return ids

    def drop_unstarted(self, record: JobRecord, *, started: Optional[Attempt]) -> None:
        """Let go of a claimed job that is no longer this pool's, without running or
        recording it: taken off the running attempts (`started`: the attempt a worker had
        just made of it) or out of the buffer; whoever waits for it here reads the store again."""
        state = self._state
        with state.lock:
            if started is not None:
                state.end_attempt_locked(started)
            else:
                kept = [r for r in state.buffer if r is not record]
                if len(kept) == len(state.buffer):
                    return  # a worker took it meanwhile, and checks it itself
                state.buffer = collections.deque(kept)
            state.cancel_ids.discard(record.id)
            state.dispatch_needed.notify()  # room to claim again
        self._on_settled([(record.id, None)])
