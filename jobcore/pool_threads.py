"""`PoolThreads`: starts, stops and replaces a pool's threads; what they run is not here.

Each start begins a new generation of worker threads and a dispatcher (`dispatcher`);
a stop waits for them; an attempt past its timeout has its thread abandoned and
replaced by a fresh one, and a `JobTimeout` queued for an exchange to record. What a
worker thread does is `WorkerPool._serve`'s (`workers`). The list of threads is guarded
by the `PoolState`'s lock; no lock of its own.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Callable, Optional

from . import lock_waits
from .clock import LONGEST_WAIT, Clock, join_within, real_monotonic
from .context import JobContext
from .dispatcher import Dispatcher
from .errors import JobTimeout
from .event_loops import loops_kept
from .execution import Outcome
from .pool_state import PoolState, Slot
from .progress import Report
from .recorder import Finished
from .repository.base import LogLine, Settlement

logger = logging.getLogger("jobcore.workers")


class PoolThreads:
    """The worker threads and the dispatcher of one pool; each worker thread runs `serve`
    with its `Slot`."""

    def __init__(self, state: PoolState, dispatcher: Dispatcher, clock: Clock, max_workers: int,
                 lease_timeout: float, serve: Callable[[Slot], None],
                 given_up: Callable[[JobContext], tuple[Optional[Report], tuple[LogLine, ...]]],
                 decide_given_up: Callable[[Finished], Optional[Settlement]] = lambda finished: None,
                 store_held_here: Callable[[], bool] = lambda: False) -> None:
        self._state = state
        self._store_held_here = store_held_here
        self._dispatcher = dispatcher
        self._clock = clock
        self._max_workers = max_workers
        self._lease_timeout = lease_timeout
        self._serve = serve
        # What an attempt given up at its timeout left waiting (its last progress report,
        # its log lines): taken by the exchange recording its `JobTimeout` (`Finished.collect`).
        self._given_up = given_up
        # The settlement of such an attempt's `Finished` (None: left to the exchange),
        # called on a thread of its own: the job's retry_on, user code, runs there (in the
        # exchange, it held up every claim while it ran; a stop from it waited for itself).
        self._decide_given_up = decide_given_up
        # The `PoolState`'s lock guards these.
        self._threads: list[tuple[threading.Thread, Slot]] = []
        self._deciders: set[threading.Thread] = set()  # deciding timed-out attempts' outcomes
        self._abandoned = 0
        self._next_slot = 0
        # A stop on the thread making an exchange left the dispatcher unjoined (see `stop`):
        # the next stop joins it.
        self.dispatcher_left = False

    def forked(self) -> None:
        """In a forked child (after `PoolState.forked`): no thread runs here."""
        self._threads = []
        self._deciders = set()
        self._abandoned = 0
        self.dispatcher_left = False

    def start(self) -> None:
        """Start the worker threads and the dispatcher: a new generation of them.

        After a stop that did not wait, threads of the earlier start may still run. They
        take no part in this one: its dispatcher is waited for (it ends at once, or after
        the exchange it is making), and each of its workers still running a job ends when
        the job returns, handing in the outcome for this generation's exchanges to record.
        The running jobs stay within `max_workers` (a new worker has no room for a job
        while an old one runs)."""
        state = self._state
        with state.lock:
            state.generation += 1
            # Old threads waiting for work wake up to see they are no longer wanted.
            state.work_ready.notify_all()
            state.dispatch_needed.notify_all()
            previous = self._dispatcher.thread
        if previous is not None:
            previous.join()  # not the caller: the dispatcher runs no user code
        with state.lock:
            state.stopping = False
            if not (state.buffer or state.running):
                # Nothing is held: what is claimed from now on carries its own lease. (Jobs
                # an earlier start left held keep the last heartbeat's: see `claims`.)
                state.renewed_until = self._clock.time() + self._lease_timeout
            try:
                for _ in range(self._max_workers):
                    self._spawn_locked()
                self._dispatcher.start(state.generation)
            except BaseException:
                # (no thread to be had) What did start takes no job: a worker waiting for
                # this lock claimed and ran jobs before the caller's stop, left RUNNING,
                # with no dispatcher to record them.
                state.stopping = True
                state.work_ready.notify_all()
                raise

    def _spawn_locked(self) -> None:
        """Start a worker thread; raises what starting it raised, listing no thread then
        (a stop waited for ever for one listed that never started)."""
        slot = Slot(self._next_slot, generation=self._state.generation)
        self._next_slot += 1
        thread = threading.Thread(target=self._work, args=(slot,), daemon=True,
                                  name=f"jobcore-worker-{slot.index}")
        self._threads.append((thread, slot))
        try:
            thread.start()
        except BaseException:
            self._threads = [(other, kept) for other, kept in self._threads if kept is not slot]
            raise

    def _work(self, slot: Slot) -> None:
        try:
            with loops_kept():  # coroutine jobs' event loop, closed as the thread leaves
                self._serve(slot)
        finally:
            with self._state.lock:
                # Forgotten (an abandoned thread that came back, too: timeouts must not grow the list).
                self._threads = [(thread, other) for thread, other in self._threads if other is not slot]
                self._state.workers_changed.notify_all()  # `stop` may be waiting for this one

    def stop(self, timeout: Optional[float]) -> bool:
        """Start no more jobs; wait up to `timeout` for running ones to finish and be
        recorded (claimed, unstarted ones are handed back). True if all threads ended.

        Not for threads abandoned in a timed-out attempt, which may never return: also
        not for one abandoned while this waits (its job timed out during the stop)."""
        state = self._state
        # The caller's seconds, real ones: a fake clock standing still must not hold it up.
        deadline = None if timeout is None else real_monotonic() + timeout

        def remaining() -> Optional[float]:
            return None if deadline is None else max(0.0, deadline - real_monotonic())

        def working() -> bool:  # (a thread leaves `_threads` as its loop ends)
            return any(not slot.abandoned for _, slot in self._threads)

        with state.lock:
            state.stopping = True
            state.work_ready.notify_all()
            state.dispatch_needed.notify_all()
            dispatcher = self._dispatcher.thread
            # On the thread making the exchange under way, or inside a call of the store
            # holding its lock (a signal handler's stop that interrupted an enqueue, or a
            # `poll` of the memory store), the dispatcher is not waited for: it waits for
            # that exchange or lock before its last recording (the outcomes waiting, and
            # the claimed jobs no worker started handed back), which it makes once the
            # handler returned. Waited for, it waited out the timeout, or for ever without
            # one (on SQLite, a busy timeout per try, until the outcomes were given up and
            # the jobs ran again). The next stop (`close` makes one) waits for it.
            self.dispatcher_left = state.exchanging_here_locked() or self._store_held_here()
            if self.dispatcher_left:
                dispatcher = None
            threads = list(self._threads)
            while working():
                left = remaining()
                if left == 0.0:
                    break
                # (min: no OverflowError)
                lock_waits.wait(state.workers_changed, state.lock, None if left is None else min(left, LONGEST_WAIT))
            ended = not working()
            # Threads whose loops ended, not yet gone: joined below (moments each), so
            # that none is alive when this returns (at interpreter exit, the store closes
            # its connections only once no other thread of its is alive).
            still = {id(slot) for _, slot in self._threads}
            leaving = [thread for thread, slot in threads if not slot.abandoned and id(slot) not in still]
        for thread in leaving:
            join_within(thread, remaining())
        if dispatcher is not None:
            join_within(dispatcher, remaining())
        return ended

    @property
    def threads(self) -> list[threading.Thread]:
        """The live worker threads (not those abandoned in a timed-out attempt)."""
        with self._state.lock:
            return [thread for thread, slot in self._threads if thread.is_alive() and not slot.abandoned]

    @property
    def abandoned(self) -> int:
        """Threads still stuck in an attempt that timed out."""
        with self._state.lock:
            return self._abandoned

    def leave_locked(self) -> None:
        """A worker of an earlier start leaves (see `start`): the outcome it may just have
        handed in and the jobs it may just have claimed are left to this generation's
        threads, told of them as a worker that goes on would have. Called with the lock held."""
        state = self._state
        state.dispatch_needed.notify()  # records what waits, as `worker_exchange_locked` tells it to
        if state.buffer:
            state.wake_one_locked()

    def returned_late_locked(self) -> None:
        """An abandoned thread's attempt returned (its outcome is discarded, and the thread
        ends). Called with the lock held."""
        self._abandoned -= 1

    def on_own_thread(self) -> bool:
        """True on one of this pool's threads: a worker (abandoned too), the dispatcher, or
        one deciding a timed-out attempt's outcome."""
        current = threading.current_thread()
        with self._state.lock:
            return (current is self._dispatcher.thread or current in self._deciders
                    or any(thread is current for thread, _ in self._threads))

    def time_out_overdue(self, now: float) -> Optional[float]:
        """See `WorkerPool.time_out_overdue`."""
        given_up: list[Finished] = []
        try:
            return self._time_out_overdue(now, given_up)
        finally:
            for finished in given_up:
                self._decide_apart(finished)

    def _top_up_locked(self) -> None:
        """Start the worker threads a timeout could not replace (no thread could be had
        then): at each of the housekeeper's passes, until the pool has `max_workers` again."""
        state = self._state
        if state.stopping:
            return
        working = sum(1 for _, slot in self._threads if not slot.abandoned and slot.generation == state.generation)
        for _ in range(self._max_workers - working):
            try:
                self._spawn_locked()
            except Exception:  # (still none to be had: the next pass tries again)
                return
            logger.info("a worker thread replaced one a timeout abandoned")

    def _decide_apart(self, finished: Finished) -> None:
        """Decide the outcome of an attempt given up at its timeout on a thread of its own,
        then queue it for an exchange to record; at once, undecided, if no thread can be
        started (the exchange decides it then). Never raises: it runs on the housekeeper's
        thread, whose heartbeats must go on (out of threads, or Python 3.12.0-3.12.1 at
        exit, which refuses new threads, it ended that thread, and a stop waited for ever)."""
        thread = threading.Thread(target=self._decide, args=(finished,), daemon=True,
                                  name=f"jobcore-timeout-{finished.record.id[:12]}")
        with self._state.lock:
            self._deciders.add(thread)
        try:
            thread.start()
        except BaseException as exc:  # noqa: BLE001 (a Ctrl-C here too: the outcome must not be lost)
            logger.warning("job %s: no thread to decide its timed-out attempt's outcome on (%r); the"
                           " exchange recording it decides it", finished.record.id, exc)
            with self._state.lock:
                self._deciders.discard(thread)
            self._hand_in(finished)

    def _decide(self, finished: Finished) -> None:
        try:
            finished.settlement = self._decide_given_up(finished)
        finally:  # (decided or not: the exchange decides what is not)
            self._hand_in(finished)

    def _hand_in(self, finished: Finished) -> None:
        state = self._state
        with state.lock:
            self._deciders.discard(threading.current_thread())  # (the housekeeper's: not there)
            state.deciding -= 1
            state.add_finished_locked(finished)
            state.dispatch_needed.notify()

    def _time_out_overdue(self, now: float, given_up: list[Finished]) -> Optional[float]:
        with self._state.lock:
            self._top_up_locked()
            ahead = []
            for attempt in list(self._state.running.values()):
                if attempt.deadline is None:
                    continue
                if attempt.deadline > now:
                    ahead.append(attempt.deadline)
                    continue
                record = attempt.record
                if self._state.end_attempt_locked(attempt):
                    self._state.wake_one_locked()  # a claim of the job kept aside for it starts now
                attempt.slot.abandoned = True
                attempt.context.abandon()  # a coroutine job's task is cancelled: its thread returns
                self._abandoned += 1
                self._state.workers_changed.notify_all()  # `stop` waits no more for its thread
                logger.warning("job %s exceeded its timeout of %.3fs; its thread is abandoned",
                               record.id, record.timeout)
                outcome = Outcome(error=JobTimeout(record.timeout or 0.0))
                given_up.append(Finished(record, attempt.context, outcome, now - attempt.started,
                                         collect=functools.partial(self._given_up, attempt.context)))
                self._state.deciding += 1
                self._state.settling.add(record.id)  # held here until recorded, as in `add_finished_locked`
                if not self._state.stopping and attempt.slot.generation == self._state.generation:
                    try:
                        self._spawn_locked()  # capacity stays max_workers (an earlier start's slot ends anyway)
                    except Exception as exc:  # (out of threads: this runs on the housekeeper's, which must go on)
                        logger.error("no worker thread could replace the one job %s's timeout abandoned (%r):"
                                     " the pool runs one worker short", record.id, exc)
        return min(ahead) if ahead else None

    def plan_upkeep(self, wake_at: float) -> float:
        """See `WorkerPool.plan_upkeep`."""
        with self._state.lock:
            for attempt in self._state.running.values():
                if attempt.deadline is not None and attempt.deadline < wake_at:
                    wake_at = attempt.deadline
            self._state.upkeep_at = wake_at
            return wake_at
