"""`Exchanges`: record finished attempts and claim the next jobs in one repository call.

One exchange runs at a time (`PoolState.exchanging`), made by whichever thread needs it:
a worker that ran out of claimed jobs (`worker_exchange_locked`, then `run`), the
dispatcher (`run`), or the thread calling `enqueue` (`inserting`), which stores its new
job in the same call. Also the direct hand-off of a new job to an idle worker, for jobs
and backends an enqueue's exchange cannot take. When to make an exchange is the callers'
business (and `Pacing`'s); no thread starts here.
"""

from __future__ import annotations

import logging
import threading
from typing import Optional

from .claims import claims_if_committed
from .clock import real_monotonic
from .deferred_interrupts import held_interrupts
from .errors import JobcoreError
from .pacing import EXCHANGE_WAIT
from .pool_state import Exchange, PoolState
from .queue import ReadyQueue
from .recorder import Finished, Recorder
from .registry import FunctionRegistry
from .repository.base import JobRecord, JobRepository, QueueEntry

logger = logging.getLogger("jobcore.workers")


class Exchanges:
    """The exchanges of one pool, on its `PoolState`."""

    def __init__(self, state: PoolState, repository: JobRepository, queue: ReadyQueue,
                 registry: FunctionRegistry, recorder: Recorder, max_workers: int) -> None:
        self._state = state
        self._repo = repository
        self._queue = queue
        self._registry = registry
        self._recorder = recorder
        self._max_workers = max_workers
        # While claims come from the store: the lowest priority of the jobs the last one
        # claimed by number (the store's ready jobs left are no better), else None. Only
        # exchanges set and read it, one at a time (PoolState's exchange under way).
        self._store_best: Optional[int] = None

    # -- a worker's exchange ----------------------------------------------------------------
    def worker_exchange_locked(self) -> Optional[Exchange]:
        """The exchange a worker makes before taking a job, if one is due: when the buffer
        is empty and there is room to fill from the queue, or, with nothing to claim, to
        record the outcomes waiting when no other job runs here (none will join them
        soon). Otherwise, with nothing to claim, they are the dispatcher's to record (it is
        told), unless enqueues stream in (the next one records them). Called with the lock
        held."""
        state = self._state
        if state.exchanging or state.failing or state.buffer:
            return None
        if state.room_locked() > 0 and (state.from_store or self._queue.has_ready()):
            return state.begin_exchange_locked()
        if state.finished and not state.pacing.streaming(real_monotonic()):
            if not (state.running or state.deferred or state.handoffs or state.claiming or state.stopping):
                # This thread has nothing to run: it records them now, where the dispatcher,
                # woken for it, would (a thread hand-over each way: a chain of dependent
                # jobs took two per link, the second for the dependent this released).
                return state.begin_exchange_locked()
            state.dispatch_needed.notify()
        return None

    def run(self, finished: list[Finished], room: int, from_store: bool, *, by_worker: bool,
            began: Optional[tuple[float, float]] = None) -> bool:
        """Record `finished` and claim up to `room` ready jobs in one repository call; the
        claimed go to the buffer. A worker making it takes one of them itself, so it wakes
        one idle worker fewer. False if the repository failed: everything is put back and
        the dispatcher retries, backing off. `began`: when this exchange began (the
        manager's clock, real seconds), kept as `PoolState.failing_since` if it is the
        first of a run of failures.

        Claims name the ids queued here, best first, and are topped up from the store
        when some went stale. While other processes take most of them (`from_store`), the
        plain pending ids are skipped: due timers and retries are claimed by id, and the
        rest of the room by number, the store's best ready jobs (so a due timer goes first
        only if as good as the best pending job it knew of)."""
        known = self._queue.high_seq
        state = self._state
        try:
            # Claimed by id ahead of the store's best: only due timers and retries as good
            # as the best pending jobs known (a lower one waits: 200 jobs at LOW came due
            # and ran ahead of 1,800 at HIGH).
            best = None
            if from_store:
                dropped_best = self._queue.drop_stale_pending(known)[1]
                best = max((p for p in (dropped_best, self._store_best) if p is not None), default=None)
            entries = self._queue.pop_ready(room, at_least=best, claiming=True) if room > 0 else []
        except Exception:  # a fault here must not end the thread: it holds the pool's one exchange
            logger.exception("reading the ready queue failed; this exchange claims nothing")
            entries = []
        ids = [e.job_id for e in entries]
        wanted = room if from_store else len(ids)
        # The room left may take the dependents these outcomes release (a chain's next link);
        # claims from the store take the whole room by number already, those among them.
        try:
            claimed = self._recorder.exchange(finished, ids, self._registry.names, up_to=wanted,
                                              claim_seqs=[e.seq for e in entries],
                                              claim_released=0 if from_store else room - len(ids))
        finally:
            if ids:
                self._queue.claim_ended(ids)
        try:
            if claimed is None:
                for entry in entries:  # outside the lock: the queue's listener takes it
                    self._queue.push(entry)
            elif self._repo.persistent:
                named = set(ids)
                by_number = [record.id for record in claimed if record.id not in named]
                if by_number:
                    # Their ids may still be queued here (the store's best ready jobs head this
                    # queue too). Named in a later claim they would come back stale, and be
                    # topped up by number again: a chain that fills exchanges with misses.
                    self._queue.discard(by_number)
                if len(claimed) < wanted:
                    # Topped up from the store and still short: no ready job is left there for
                    # this manager, so the ready ids it knew of were taken by other processes.
                    # Forget them now rather than claim them in vain, a transaction at a time.
                    self._queue.drop_stale(known)
                    from_store = False
                elif ids and not {record.id for record in claimed}.issuperset(ids):
                    from_store = True  # ids went stale, yet the store had as many as asked
                self._store_best = (min(record.priority for record in claimed if record.id not in named)
                                    if from_store and by_number else None)
            if claimed:
                claimed = self._make_way(claimed)  # (after the above: they were claimed)
        except Exception:  # a fault of the engine's: the exchange must end all the same (left
            # begun, no exchange came after it, and nothing ran again); what it claimed is
            # this pool's to run
            logger.exception("an exchange failed after its repository call; what it claimed runs here")
        with state.lock:
            if claimed is None:  # nothing was recorded: the dispatcher records them, first
                state.give_back_locked(finished)
                if not state.failing or state.failing_since is None:
                    state.failing_since = began
                state.failing = True
                state.dispatch_needed.notify()
                return False
            state.failing, state.failing_since, state.from_store = False, None, from_store
            state.ended_locked(finished, claimed, wake=len(claimed) > (1 if by_worker else 0),
                               active=by_worker)
        return True

    def _make_way(self, claimed: list[JobRecord]) -> list[JobRecord]:
        """`Recorder.make_way` after an exchange committed, or if it fails (a fault of the
        engine's), `claimed` as they are: they are this pool's to run, and the exchange
        must end all the same (left begun, no exchange came after it)."""
        try:
            return self._recorder.make_way(claimed)
        except Exception:
            logger.exception("making way for released jobs failed; the %d jobs claimed run here", len(claimed))
            return claimed

    # -- the enqueuing thread's exchange: a new job stored with the outcomes and claims ------
    def _refused_at_once(self, now: float) -> bool:
        """True if `inserting` returns False at once: the pool stops or fails, reads the
        store, or has no room to claim and no outcome to record; or an exchange is under
        way that a lone producer would not wait for. Asked first without the pool's lock
        (a stale answer errs either way: a refusal sends the job the usual way, a consent
        is asked again under the lock), then with it."""
        state = self._state
        if state.stopping or state.failing or state.from_store:
            return True
        if state.exchanging:  # waited for only by a lone producer, behind no enqueue's exchange
            return state.enqueue_exchanging or not state.pacing.one_producer(now)
        return state.room_locked() <= 0 and not state.finished

    def inserting(self, record: JobRecord, now: float) -> bool:
        """Store the plain pending `record` (no dependencies, no unique key) in an exchange
        made now, by the enqueuing thread, if there is room to claim or an outcome to
        record; an exchange under way is waited for first (up to `EXCHANGE_WAIT`), unless
        another enqueue makes it or several threads enqueue. In one repository call it
        records the waiting outcomes, stores the job and claims the best queued jobs, the
        new one among them if it is good enough. False (nothing done): the caller stores
        the job the usual way. Raises what storing it raised (nothing was stored, recorded
        or claimed), the outcomes then left to the dispatcher.

        A quiet pool hands a new job straight to an idle worker this way (no dispatcher
        round trip), and under a stream of enqueues (see `Pacing`) every job carries the
        outcomes finished since the last: one transaction per job, and no thread woken to
        record or to claim."""
        state = self._state
        started = real_monotonic()
        entries: list[QueueEntry] = []
        claim_new = False
        finished: list[Finished] = []  # the outcomes it records (taken as it begins)
        calling = False  # the repository call began (it may commit, and be interrupted after)
        claimed: Optional[list[JobRecord]] = None  # once the repository call committed
        kept: Optional[list[JobRecord]] = None  # of those, the ones `make_way` kept
        # One try from before the exchange begins to after it ends: Ctrl-C (or a signal
        # handler raising) may land anywhere on the way, and an exchange left begun stopped
        # every later one, so no job ran again (a hunt: 5 runs of 5 wedged).
        try:
            # Offered, and whether it can be made, told without the pool's lock first:
            # threads enqueueing at once, each taking it here and again to tell the
            # dispatcher (`WorkerPool._tell_dispatcher`), handed it and the GIL to each
            # other at every turn (a convoy: 4 threads enqueued at a third of one's rate).
            state.pacing.offered(started, threading.get_ident())
            if self._refused_at_once(started):
                return False
            with state.lock:
                if state.exchanging and not self._refused_at_once(started):
                    state.await_exchange_locked(EXCHANGE_WAIT)  # a worker's, or the dispatcher's
                if state.exchanging or self._refused_at_once(started):
                    return False
                # The outcomes waiting are recorded now if the pacing says so, or if a claim
                # made without them would have no room (SPEC's bound counts them).
                take = (state.pacing.enqueue_takes_outcomes(started, len(state.finished))
                        or state.room_locked(recording=False) <= 0)
                finished, room, _ = state.begin_exchange_locked(take_finished=take, by_enqueue=True)
            entries = self._queue.pop_ready(room) if room > 0 else []
            if entries and any(e.run_at is not None and e.run_at > now for e in entries):
                entries = self._not_due_queued_again(entries, now)
            claim_new = room > len(entries)
            if not claim_new and entries and record.priority > entries[-1].priority:
                self._queue.push(entries.pop())  # the new job goes before the worst of them
                claim_new = True
            calling = True
            # A Ctrl-C in a classifier or a channel's `wants()` (user code this records on
            # the caller's thread) is held until the recording is done, events and all,
            # then goes on as one landing just after the commit does (see below).
            with held_interrupts():
                claimed = self._recorder.exchange_inserting(record, claim_new, finished, [e.job_id for e in entries],
                                                            now, [e.seq for e in entries])
            if not claim_new:
                self._recorder.enqueue_entries([record.queue_entry()])
            kept = self._make_way(claimed)
            with state.lock:
                state.ended_locked(finished, kept, wake=bool(kept))
            return True
        except BaseException as exc:
            # What the store raised means nothing was committed; anything else (Ctrl-C) may
            # have landed just after the commit (most do: the call waits there), and what
            # the store holds tells. The exchange is ended whatever lands meanwhile (the
            # store's read is where more signals come): left begun, no job ran again.
            try:
                if claimed is None and calling and not isinstance(exc, JobcoreError):
                    claimed = claims_if_committed(self._repo, self._recorder.worker_id, record,
                                                  [e.job_id for e in entries], now)
            finally:
                ended = False
                while not ended:
                    try:
                        self._end_interrupted(record, claim_new, entries, finished, claimed, kept)
                        ended = True
                    except Exception:  # (not expected: never loop on it)
                        logger.exception("ending an interrupted enqueue's exchange failed")
                        ended = True
                    except BaseException:  # noqa: S110 (another Ctrl-C: made again, the first goes on)
                        pass
            raise

    def _not_due_queued_again(self, entries: list[QueueEntry], now: float) -> list[QueueEntry]:
        """`entries` less those not due by `now` (the enqueue's time, at which its exchange
        claims), which are queued again for the next claim: the pop took them by the
        queue's clock, read later. Claimed, they were refused by the store, and lost:
        in no queue any more, a retry that came due in between waited for a periodic
        read of the store (found by a hunt: 1-5 retries in 800, seconds late)."""
        due = []
        for entry in entries:
            if entry.run_at is not None and entry.run_at > now:
                self._queue.push(entry)  # (outside the lock: the queue's listener tells the dispatcher)
            else:
                due.append(entry)
        return due

    def _end_interrupted(self, record: JobRecord, claim_new: bool, entries: list[QueueEntry],
                         finished: list[Finished], claimed: Optional[list[JobRecord]],
                         kept: Optional[list[JobRecord]]) -> None:
        """End the exchange `inserting` began, interrupted: undone if nothing was committed
        (`claimed` None), else ended with what it claimed. Idempotent: made again if an
        interrupt lands in it."""
        state = self._state
        if claimed is None:  # nothing stored, recorded or claimed: the exchange is undone
            for entry in entries:  # outside the lock: the queue's listener takes it (again: ignored)
                self._queue.push(entry)
            with state.lock:
                state.abandon_exchange_here_locked()
        else:  # committed, and interrupted after: the claimed go to the workers all the same
            if not claim_new:
                self._recorder.enqueue_entries([record.queue_entry()])  # (a second push is ignored)
            with state.lock:
                if state.exchanging_here_locked():
                    held = claimed if kept is None else kept
                    state.ended_locked(finished, held, wake=bool(held))

    # -- direct hand-off: a new job to an idle worker, without the dispatcher ----------------
    def reserve_idle_worker(self, promised: list[bool]) -> bool:
        """Promise a slot to a job about to be enqueued, if a worker is idle, nothing is
        queued ahead of it (so handing it over directly keeps priority order) and no
        outcome waits to be recorded; `promised` gets True with the promise, at once (no
        point between them where Ctrl-C lands): the caller must follow with `hand_off`
        if it holds True, wherever an interrupt landed after (one between the promise and
        the caller's `try` leaked the slot; after `max_workers` of them nothing ran).

        That last condition keeps the shortcut to a quiet pool, where it saves latency:
        under a steady stream of jobs the dispatcher claims new jobs in the transaction
        that records finished ones, which a hand-off per job would split into two."""
        state = self._state
        with state.lock:
            if state.stopping or state.finished or state.settling:
                return False
            busy = (len(state.buffer) + len(state.running) + len(state.deferred) + state.handoffs
                    + state.claiming)
            if busy >= self._max_workers or state.from_store or self._queue.has_ready():
                return False
            state.handoffs += 1
            promised.append(True)
            return True

    def hand_off(self, record: Optional[JobRecord]) -> None:
        """Give a worker the job claimed for a slot `reserve_idle_worker` promised, or
        (None) give the slot back."""
        state = self._state
        with state.lock:
            state.handoffs -= 1
            if record is None:
                state.dispatch_needed.notify()  # the slot is free again
                return
            if not state.stopping:
                state.buffer.appendleft(record)
                state.wake_for_buffer_locked(active=False)
                return
        # Stopped since the slot was promised: no worker will take it, so hand it back
        # unstarted (PENDING again, the attempt not counted) rather than leave it held.
        self._recorder.hand_back([record])
