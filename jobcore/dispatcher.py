"""`Dispatcher`: the pool's thread that makes the exchanges no other thread makes.

It makes one when work arrives for idle workers, when outcomes wait with nothing queued
to claim, when they have waited past their time (the workers busy with buffered jobs, or
enqueues streaming in), while the repository fails (with back-off), and at stop, when it
also hands back the claimed jobs no worker started (and gives up the outcomes the
repository has failed to record for a lease_timeout, rather than wait for it to work).
It fires due cron schedules, and wakes an idle worker for buffered tiny jobs that the
busy worker has left waiting (`Pacing.tiny`). Between those it sleeps on
`PoolState.dispatch_needed`. The worker threads are `workers`'.
"""

from __future__ import annotations

import logging
import threading
from typing import Optional

from .clock import Clock, real_monotonic
from .exchanges import Exchanges
from .pacing import RESERVE_HOLD, STALL_AFTER
from .pool_state import Exchange, PoolState
from .queue import ReadyQueue
from .recorder import Finished, Recorder
from .repository.base import JobRecord


logger = logging.getLogger("jobcore.workers")
_MAX_PAUSE = 2.0  # seconds: the longest pause after a fault of the dispatcher's (see `Dispatcher._run`)
# Cron schedules due at once are fired this many at a time, an exchange made between (the
# runs of the first claimed while the rest fire): 1,000 sharing a fire time, all fired
# before any exchange, started their runs only after the last was stored.
FIRE_AT_ONCE = 50

class Dispatcher:
    """The dispatcher thread of one pool."""

    def __init__(self, state: PoolState, exchanges: Exchanges, queue: ReadyQueue,
                 recorder: Recorder, clock: Clock, give_up_after: float) -> None:
        self._state = state
        self._exchanges = exchanges
        self._queue = queue
        self._recorder = recorder
        self._clock = clock
        # While the pool stops, outcomes the store has failed to record for this long
        # (the lease_timeout: their leases have expired by then) are given up.
        self._give_up_after = give_up_after
        self.thread: Optional[threading.Thread] = None
        # PoolState.taken when last looked at, and since when (real monotonic) the buffer
        # has held jobs with that count unchanged: only this thread reads or writes them.
        self._seen_taken = 0
        self._seen_at = 0.0
        # The same, for jobs held in reserve while every worker is busy (see RESERVE_HOLD);
        # None while the buffer is not so held (the count is taken afresh when it is).
        self._held_taken = 0
        self._held_since: Optional[float] = None
        # When the pool last started (epoch seconds, set before the thread starts): fire
        # times passed since are each fired, not coalesced (see `ScheduleFirer.fire`).
        self._started_at = 0.0

    def start(self, generation: int) -> None:
        """Start the thread for the pool's start numbered `generation`; it ends once the
        pool stops and nothing is left to record, or once the pool starts again (the next
        start's dispatcher takes over)."""
        self._started_at = self._clock.time()
        self.thread = threading.Thread(target=self._run, args=(generation,), name="jobcore-dispatcher",
                                       daemon=True)
        self.thread.start()

    def _run(self, generation: int) -> None:
        """The thread: `_serve`, begun again after a fault of the engine's own code, which
        is logged (a pause first: 50 ms, doubling to 2 s while faults repeat). Ended by
        one, this thread left no one to fire a scheduled job, a retry or a cron schedule
        when it came due. A stop does not wait for it past a 2 s pause: what it held
        (claims no worker started) is taken back once their leases lapse."""
        pause = 0.0
        while True:
            try:
                self._serve(generation)
                return
            except Exception:
                logger.exception("the dispatcher failed; it goes on")
                # Schedules it took to fire may be lost with the fault: a read of the store
                # queues them again (their fire-time guard, `pop_due_schedules(firing=True)`,
                # would have kept them out for ever).
                self._queue.fire_ended(None)
            state = self._state
            with state.lock:
                if state.generation != generation:
                    return
                if state.stopping and pause >= _MAX_PAUSE:
                    logger.error("stopping: the dispatcher keeps failing, and gives up")
                    return
            pause = min(max(pause * 2, 0.05), _MAX_PAUSE)
            threading.Event().wait(pause)

    def _serve(self, generation: int) -> None:
        state = self._state
        backoff = 0.0
        while True:
            with state.lock:
                while True:
                    if state.generation != generation:
                        return
                    self._wake_if_stalled_locked()
                    stale = self._stale_reserve_locked()
                    if stale:
                        break
                    schedules = [] if state.stopping else self._queue.pop_due_schedules(FIRE_AT_ONCE, firing=True)
                    if state.exchanging:  # (its end tells this thread to look again if need be)
                        exchange = None
                        if not state.look_after_exchange and (state.from_store or self._queue.has_ready()):
                            state.look_after_exchange = True
                    else:
                        exchange = self._exchange_due_locked()
                    if exchange is not None or schedules:
                        break
                    if state.stopping and not state.exchanging:
                        # Claimed jobs no worker here will start are handed back at once, not
                        # once the running jobs end: held meanwhile, they waited the length of
                        # a long job beside another manager's idle workers.
                        buffered = self._take_buffer_locked()
                        # (Cancels asked of them are the store's now: it ends those CANCELLED.)
                        state.cancel_ids.difference_update(r.id for r in buffered)
                        last = not (state.running or state.deciding)
                        if buffered or last:
                            break
                    self._sleep_locked()
            if stale:
                self._give_back(stale)
                continue
            if exchange is None and not schedules:
                self._recorder.hand_back(buffered)
                if last:
                    return
                continue
            if schedules:
                self._recorder.fire_schedules(schedules, running_since=self._started_at)
            if exchange is None:
                continue
            if backoff:
                threading.Event().wait(backoff)
            # The failing clock starts when the first failed exchange began (this thread's
            # or a worker's), not when it returned: in a database locked by another program
            # that is a whole busy timeout later, which a stop waited on top of the lease.
            # On this manager's clock and in real seconds: a stop gives up after a lease of
            # either (leases lapse on the manager's clock, and a fake one standing still
            # must not hold the stop for ever).
            tried = (self._clock.monotonic(), real_monotonic())
            if self._exchanges.run(*exchange, by_worker=False, began=tried):
                backoff = 0.0
                continue
            now = (self._clock.monotonic(), real_monotonic())
            failing_since = state.failing_since or tried  # (set under the lock by this thread's `run`)
            failing_for = max(now[0] - failing_since[0], now[1] - failing_since[1])
            with state.lock:
                if state.closed:  # it failed on a closed repository: give up, for good
                    logger.warning("manager closed with %d outcomes not recorded; their jobs are taken"
                                   " back when their leases expire", len(state.finished))
                    state.finished.clear()
                    return
                lost = []
                if state.stopping and failing_for >= self._give_up_after:
                    lost, state.finished = state.finished, []
            if lost:
                self._give_up(lost, failing_for)
                continue  # (no back-off: what is left is handing back what no worker started)
            backoff = min(max(backoff * 2, 0.05), 2.0)

    def _give_up(self, lost: list[Finished], failing_for: float) -> None:
        """Stop trying to record `lost`, at a stop (a store down, a database locked, for
        lease_timeout): retried for ever, they kept `stop()`, and the process's exit,
        waiting for the store to come back. Their leases have expired (none could be
        renewed meanwhile): each job is taken back and runs again, as after a crash."""
        ids = [f.record.id for f in lost]
        logger.error("stopping: the outcomes of %d jobs could not be recorded for %.1fs, and are given up;"
                     " each job is taken back once its lease expires, and runs again: %s",
                     len(ids), failing_for, ", ".join(ids))
        self._recorder.forget_unrecorded(ids)

    def _exchange_due_locked(self) -> Optional[Exchange]:
        """The exchange to make now, if any (see module docstring). Called with the lock
        held, when no exchange is under way."""
        state, pacing = self._state, self._state.pacing
        if pacing.streaming(real_monotonic()) and not (state.stopping or state.failing):
            # The next enqueue makes the exchange, unless outcomes wait past their time.
            if not (state.finished and pacing.overdue(real_monotonic())):
                return None
        if state.finished:
            # An empty buffer: no worker is about to record them (one would be making
            # this exchange, or sleeping).
            if (state.stopping or state.failing or not state.buffer or pacing.record_due is None
                    or pacing.overdue(real_monotonic())):
                return state.begin_exchange_locked()
        if state.room_locked() > 0 and (state.from_store or self._queue.has_ready()):
            if state.finished and len(state.buffer) > state.max_workers // 2:
                # Outcomes wait, due later, and the reserve holds enough to keep the workers
                # going: the room is claimed with them then. Topped up at each job's end, a
                # pool running 10 ms jobs on 16 workers made an exchange per job (1.1 each,
                # 300-320 µs of CPU a job); a worker finding the buffer low claims itself.
                return None
            if state.buffer and state.left_to_busy_worker_locked():
                # That worker claims more itself once the buffer runs out, recording its
                # outcomes in the same exchange: topping the buffer up meanwhile helps no
                # one, and this thread did it again at every look while the worker took
                # jobs (a memory drain with 4 workers made 87% of its exchanges here, of
                # about 2 jobs each, the two threads taking turns at the GIL: 1.5-2 thread
                # switches a job against 0.03 without, 36-42 µs a job against 22-23).
                return None
            return state.begin_exchange_locked()
        return None

    def _stale_reserve_locked(self) -> list[JobRecord]:
        """The jobs held in reserve, taken out of the buffer (held, `settling`, until handed
        back), if none was taken for RESERVE_HOLD while every worker was busy; else none.
        Called with the lock held, at each of this thread's wake-ups."""
        state, now = self._state, real_monotonic()
        if not state.buffer or state.idle > state.waking or state.stopping or state.exchanging:
            self._held_since = None
            return []
        if self._held_since is None or state.taken != self._held_taken:
            self._held_taken, self._held_since = state.taken, now
            return []
        if now - self._held_since < RESERVE_HOLD:
            return []
        records = self._take_buffer_locked()
        state.pacing.reserve_went_stale()
        self._held_since = None
        return records

    def _take_buffer_locked(self) -> list[JobRecord]:
        """The claimed jobs no worker started, taken out of the buffer to be handed back (at
        a stop, or held in reserve too long): held (`settling`) until `on_settled` is told
        of them, whether they end PENDING or, their cancel requested, CANCELLED. Called
        with the lock held."""
        state = self._state
        buffered = list(state.buffer)
        state.buffer.clear()
        state.settling.update(r.id for r in buffered)
        return buffered

    def _give_back(self, records: list[JobRecord]) -> None:
        """Hand back jobs held in reserve too long (`_stale_reserve_locked`): PENDING again,
        queued here again, the other managers of the process told; the workers here, and
        elsewhere, take the best of them as they come free. Those the store failed to hand
        back are still this pool's: they go back to the buffer."""
        kept = self._recorder.give_back(records)
        logger.debug("handed back %d jobs held in reserve %.2fs with every worker busy", len(records),
                     RESERVE_HOLD)
        state = self._state
        with state.lock:
            # Cancels asked of the jobs handed back are the store's now (it ended those
            # CANCELLED, as at stop); those kept keep theirs, for when they start.
            held = {record.id for record in kept}
            state.cancel_ids.difference_update(record.id for record in records if record.id not in held)
            if kept:
                state.buffer.extend(kept)
                state.wake_for_buffer_locked(active=False)

    def _wake_if_stalled_locked(self) -> None:
        """Wake an idle worker if buffered jobs have waited STALL_AFTER with none taken
        (while jobs are tiny, buffered ones wake no one: see `wake_for_buffer_locked`).
        Called with the lock held, at each of this thread's wake-ups."""
        state, now = self._state, real_monotonic()
        if not state.buffer or state.taken != self._seen_taken:
            self._seen_taken, self._seen_at = state.taken, now
        elif now - self._seen_at >= STALL_AFTER and not state.stopping:
            state.wake_one_locked()
            self._seen_at = now

    def _sleep_locked(self) -> None:
        """Wait for a notification, the next timer or schedule, or the time by which
        waiting outcomes must be recorded. Called with the lock held."""
        state = self._state
        # Clock time: a fake clock's jump notifies instead. A stopping pool fires no
        # schedule (one due would wake it again at once, for as long as a job still ran).
        due = self._queue.next_due(schedules=not state.stopping)
        timer_in = None if due is None else max(0.0, due - self._clock.time())
        if self._held_since is not None:  # (see `_stale_reserve_locked`)
            held_in = max(0.0, self._held_since + RESERVE_HOLD - real_monotonic())
            timer_in = held_in if timer_in is None else min(timer_in, held_in)
        # Outcomes past their time while an exchange is under way are not this thread's to
        # record until it ends, and its end tells this thread (`PoolState.ended_locked`).
        # Timed by their due time, it spun with a zero timeout for as long as that exchange
        # waited for the database (another manager's write on the file, say: 670,000
        # wake-ups in 4 s, every job of the process several times slower).
        now = real_monotonic()
        outcomes_wait = bool(state.finished) and not (state.exchanging and state.pacing.overdue(now))
        timeout = state.pacing.dispatcher_timeout(now, outcomes_wait, timer_in, busy=state.busy_locked())
        state.dispatch_needed.wait(timeout)
        state.pacing.dispatcher_woke()
