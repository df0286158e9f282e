"""`PoolState`: what the threads of one worker pool share, and the lock that guards it.

The claimed records waiting for a worker (and those waiting for an earlier attempt of
their job to end), the running attempts, the finished ones waiting to be recorded, the
flags of the one exchange under way, and the `Pacing`; with small
steps that read or change only this state. No threads start here and nothing is stored:
the worker threads (`workers`), the dispatcher (`dispatcher`) and the exchanges
(`exchanges`) act on it.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass
from typing import Callable, Optional

from .clock import real_monotonic
from . import lock_waits
from .context import JobContext
from .lock_waits import waitable_lock
from .pacing import RESERVE_HOLD, STALL_AFTER, Pacing
from .recorder import Finished
from .repository.base import JobRecord

# What an exchange is given to do: the outcomes to record, the room to claim, and whether
# to claim from the store by number (see `Exchanges.run`).
Exchange = tuple[list[Finished], int, bool]

# How a pool holds a job (`PoolState.holding_locked`): not at all, buffered or running, or
# its attempt over and its outcome being recorded (it settles here within that exchange).
NOT_HELD, HELD, RECORDING = 0, 1, 2


@dataclass(eq=False)
class Slot:
    """One worker thread's place in the pool."""

    index: int
    generation: int = 0  # the `PoolState.generation` it was started in
    abandoned: bool = False  # its job timed out: the thread is left to return when it may


@dataclass(eq=False)
class Attempt:
    """A job running on a worker thread."""

    record: JobRecord
    context: JobContext
    slot: Slot
    deadline: Optional[float]  # clock.monotonic() value, or None without a timeout
    started: float


class PoolState:
    """The shared state of one pool. `lock` guards every attribute. Worker threads wait on
    `work_ready` for a claimed record or an exchange to make; the dispatcher waits on
    `dispatch_needed` for work it must do; an enqueuing thread waits on `exchange_ended`
    for the exchange under way to end, to make its own; `stop` waits on `workers_changed`
    for the worker threads to end. Methods ending in `_locked` are
    called with `lock` held."""

    def __init__(self, max_workers: int) -> None:
        self.lock = waitable_lock()  # (an enqueue, on a caller's thread, waits on exchange_ended)
        self.work_ready = threading.Condition(self.lock)
        self.dispatch_needed = threading.Condition(self.lock)
        self.buffer: collections.deque[JobRecord] = collections.deque()  # claimed, not started
        # Set by the pool: about how many jobs its ready queue could give now (the queue's
        # own lock, taken inside this one; see `reserve_limited_locked`).
        self.ready_count: Callable[[], int] = lambda: 1 << 30
        self.running: dict[str, Attempt] = {}
        self.ran_in_callers = False  # `run_pending` ever ran an attempt here (see `_in_callers_locked`)
        # Claimed jobs whose earlier attempt still runs here, each started when it ends
        # (see `defer_locked`). Their ids are all in `running`, so what counts that as
        # held here (`holding_locked`, `WorkerPool.held_ids`, the heartbeat) counts them.
        self.deferred: dict[str, JobRecord] = {}
        self.finished: list[Finished] = []  # waiting for an exchange to record them
        self.settling: set[str] = set()  # finished here, not yet told to `on_settled`
        # Attempts given up at their timeout whose outcome a thread of its own is deciding
        # (the job's retry_on runs there: `PoolThreads.time_out_overdue`); in `settling`
        # meanwhile, and in `finished` once decided. The dispatcher's last recording waits.
        self.deciding = 0
        self.cancel_ids: set[str] = set()  # buffered jobs to cancel when they start
        self.stopping = True
        # Counts the pool's starts: threads started by an earlier one leave (`WorkerPool.start`).
        self.generation = 0
        self.handoffs = 0  # slots promised to new jobs being handed straight to a worker
        self.idle = 0  # workers waiting on work_ready
        self.waking = 0  # of those, notified and not yet running
        self.taken = 0  # buffered jobs workers have taken, ever: the dispatcher spots a stall
        self.exchanging = False  # an exchange is under way (one at a time, by any thread)
        self.enqueue_exchanging = False  # that exchange stores a new job (`Exchanges.inserting`)
        self.exchange_thread = 0  # the ident of the thread making it (while `exchanging`)
        self.exchange_outcomes: list[Finished] = []  # the outcomes it took (see `abandon_exchange_here_locked`)
        # The dispatcher woke while that exchange was under way with jobs ready in the
        # queue, and left them to it: its end may tell the dispatcher to look again (see
        # `ended_locked`).
        self.look_after_exchange = False
        # The housekeeper was told of work stored elsewhere (another process, another
        # manager here) while this pool wanted none (`WorkerPool.wants_work`): the first
        # worker to find nothing to do has it look then (`WorkerPool.on_free`).
        self.look_when_free = False
        self.exchange_ended = threading.Condition(self.lock)
        # Notified when a worker thread ends or is abandoned (its job timed out): `stop` waits on it.
        self.workers_changed = threading.Condition(self.lock)
        self.awaiting_exchange = 0  # enqueuing threads waiting on exchange_ended
        self.claiming = 0  # how many jobs that exchange may claim: held, for the room count
        self.failing = False  # the last exchange failed: only the dispatcher (backing off) tries
        # While `failing`: when the first of the exchanges failing now began (the manager's
        # clock, real seconds), whichever thread made it (a stop gives up after a lease).
        self.failing_since: Optional[tuple[float, float]] = None
        # The manager was closed (its repository with it): a failed exchange is not tried
        # again, its outcomes left to lease recovery.
        self.closed = False
        # Other processes took ids this manager queued, and the store still had ready jobs:
        # claim the best of those by number, not by id, until a claim comes back short.
        self.from_store = False
        # Wall time until which the last heartbeat leased every job held here then (jobs
        # claimed since carry their own lease): see `claims.ClaimCheck`.
        self.renewed_until = float("-inf")
        # When the housekeeper looks for overdue attempts next, at the latest (clock.monotonic();
        # None: not known): see `deadline_unplanned_locked` and `PoolThreads.plan_upkeep`.
        self.upkeep_at: Optional[float] = None
        self.max_workers = max_workers
        self.pacing = Pacing(max_workers)

    def forked(self) -> None:
        """In a forked child: the state of a pool that holds nothing and runs no thread,
        with a lock of its own. The parent's threads stayed in the parent, with the jobs
        they held (and perhaps this lock)."""
        self.__init__(self.max_workers)  # type: ignore[misc]

    def deadline_unplanned_locked(self, deadline: float) -> bool:
        """True if an attempt starting with `deadline` must wake the housekeeper: it looks
        for overdue attempts next at `upkeep_at`, if that is no later (and sees this one
        among those running then), and at no known time otherwise. `deadline` counts as
        planned from now on: the woken housekeeper looks again at once."""
        if self.upkeep_at is not None and self.upkeep_at <= deadline:
            return False
        self.upkeep_at = deadline
        return True

    def holding_locked(self, job_id: str) -> int:
        """How the job is held here: `HELD` (buffered or running), `RECORDING` (its attempt
        is over and its outcome being recorded), or `NOT_HELD` (0, the only falsy one)."""
        if job_id in self.running or any(r.id == job_id for r in self.buffer):
            return HELD
        return RECORDING if job_id in self.settling else NOT_HELD

    def room_locked(self, recording: bool = True) -> int:
        """How many more jobs to claim now, in an exchange that records every outcome
        waiting (`recording`) or none of them.

        The jobs held (buffered, running, promised, being claimed) stay within the
        pacing's capacity. SPEC's bound (at most 2 x max_workers jobs run again after
        the process dies) caps the jobs claimed and not yet recorded: outcomes waiting
        count too, unless the claim records them in the same transaction (jobs claimed
        there cannot start before those outcomes are stored)."""
        if self.stopping:
            return 0
        held = len(self.buffer) + len(self.running) + len(self.deferred) + self.handoffs + self.claiming
        room = self.pacing.capacity() - (held - self._in_callers_locked())  # (no worker's place)
        if room > 0 and not self.from_store:
            room = self.reserve_limited_locked(room)
        if recording:
            return room
        return min(room, 2 * self.max_workers - held - len(self.finished))

    def reserve_limited_locked(self, room: int, ready: Optional[int] = None) -> int:
        """`room` (to claim from `ready` jobs queued here: by default `ready_count()`, asked
        only while a reserve of jobs not tiny is held), less the reserve's part of it
        (claims beyond the free workers) that would leave fewer than `max_workers` of them
        for others: a burst of up to twice `max_workers` jobs of a few milliseconds went
        whole to one manager, half of it waiting in reserve while another process's
        workers sat idle (taking two jobs' length instead of one). Tiny jobs keep their
        whole reserve: a burst of them runs in a millisecond."""
        reserve = self.pacing.capacity() - self.max_workers
        if room <= 0 or reserve <= 0 or self.pacing.tiny():
            return room
        # (Counted in every room asked for, not cut from the room an exchange was begun
        # with: cut there, with every worker busy and a workers' worth queued, the
        # dispatcher began empty exchanges in a loop, a whole CPU for a long job's length.)
        if ready is None:
            ready = self.ready_count()
        spare = min(room, reserve)
        free = room - spare
        return free + max(0, min(spare, ready - free - self.max_workers))

    def room_to_run_locked(self) -> bool:
        """Whether a worker thread may start a job now: fewer than max_workers run on
        worker threads (those of an earlier start included; `run_pending`'s attempt, in
        the caller's thread, is none of them)."""
        return len(self.running) - self._in_callers_locked() < self.max_workers

    def _in_callers_locked(self) -> int:
        """How many of the attempts running here `run_pending` runs in a caller's thread
        (slot index -1): held here, so SPEC's bound counts them, but on no worker's place.
        Counted, not kept: a Ctrl-C between keeping and adding would leave a count wrong;
        and only once `run_pending` ran one (a worker's exchange asks at every take)."""
        if not (self.ran_in_callers and self.running):
            return 0
        return sum(1 for attempt in self.running.values() if attempt.slot.index < 0)

    def defer_locked(self, record: JobRecord) -> bool:
        """Keep the claimed `record`, just taken from the buffer, from starting while an
        earlier attempt of its job still runs here; True if it was kept aside.

        That happens only after this process stopped renewing its leases for longer than
        the lease (suspended, a paused VM): another process took the job back, and this
        pool claimed it again. The earlier attempt's outcome will be discarded (the row
        has moved on to the new attempt). The new one starts when the earlier one ends
        (`end_attempt_locked`), its lease renewed meanwhile: the process never runs two
        attempts of one job at once, and the job runs once more, as a taken-back job does.
        (A later claim of the same job, after another stall, replaces it: the store has
        moved on to that one.)"""
        if record.id not in self.running:
            return False
        kept = self.deferred.get(record.id)
        if kept is None or kept.attempts < record.attempts:
            self.deferred[record.id] = record
        return True

    def end_attempt_locked(self, attempt: Attempt) -> bool:
        """`attempt` no longer runs here (it returned, timed out, or was let go of before
        it started): it leaves `running`, and a claim of its job kept aside for it
        (`defer_locked`) goes to the front of the buffer. True if one did; waking a worker
        for it is the caller's business. Only that attempt leaves: never another attempt
        of the same job that runs in its place."""
        job_id = attempt.record.id
        if self.running.get(job_id) is not attempt:
            return False
        del self.running[job_id]
        record = self.deferred.pop(job_id, None)
        if record is None:
            return False
        self.buffer.appendleft(record)
        return True

    def wake_one_locked(self) -> None:
        """Wake one idle worker for buffered jobs, unless one is already on its way: it
        takes a job and, if more wait, wakes the next. While jobs hold the GIL, the thread
        running them drains the buffer alone and no one is woken for nothing; while they
        block, idle workers join in one after the other."""
        if self.idle and not self.waking:
            self.waking += 1
            self.work_ready.notify()

    def left_to_busy_worker_locked(self, active: bool = False) -> bool:
        """True while buffered jobs are left to the worker running jobs: they are tiny
        (`Pacing.tiny`) and a worker will be back at the buffer soon (one is running a
        job, or the caller is a worker about to: `active`). No idle worker is woken for
        them, nor are more claimed for them: that worker claims more itself once the
        buffer runs out. The dispatcher wakes one if they stall (`Dispatcher`)."""
        return (active or bool(self.running)) and self.pacing.tiny()

    def wake_for_buffer_locked(self, active: bool) -> None:
        """Wake one idle worker for buffered jobs (`wake_one_locked`), unless they are left
        to the busy worker (`left_to_busy_worker_locked`)."""
        if self.left_to_busy_worker_locked(active):
            if self.pacing.dispatcher_sleeps_past(real_monotonic() + STALL_AFTER):
                self.dispatch_needed.notify()  # to look for a stall in time
            return
        self.wake_one_locked()

    def time_reserve_locked(self) -> None:
        """If jobs are held in reserve with every worker busy, have the dispatcher time how
        long (see `Dispatcher._stale_reserve_locked`), which it cannot do asleep for good:
        told when an exchange ends, and when a worker takes a job leaving others in the
        buffer. Told only then, a reserve claimed while the workers were idle (they then
        took the jobs before it) stayed until the dispatcher woke for something else: a
        poll_interval, or the running jobs' length, beside another manager's idle workers.
        Not told while it wakes by itself within RESERVE_HOLD (a hold it times already).
        Called with the lock held."""
        if (self.buffer and self.idle <= self.waking
                and self.pacing.dispatcher_sleeps_past(real_monotonic() + RESERVE_HOLD)):
            self.dispatch_needed.notify()

    def busy_locked(self) -> bool:
        """True while jobs are buffered and a worker idle could be woken for them, outcomes
        wait to be recorded, or an exchange is under way: the dispatcher then keeps an eye
        on the buffer (not for a long job running alone, nor for jobs claimed in reserve
        while every worker runs one: it woke every STALL_AFTER for as long as they ran, to
        find no one to wake; the first worker free takes them)."""
        return bool((self.buffer and self.idle > self.waking) or self.finished or self.exchanging)

    def add_finished_locked(self, finished: Finished) -> None:
        """Queue an outcome for the next exchange. The first one sets the time by which
        it must be recorded; if jobs are buffered (its worker goes on to one, leaving the
        outcome for later) or enqueues stream in (the next one may record it), the
        dispatcher is woken when it would sleep past that time."""
        self.settling.add(finished.record.id)
        if not self.finished:
            now = real_monotonic()
            if self.pacing.first_outcome(now) and (self.buffer or self.pacing.streaming(now)):
                self.dispatch_needed.notify()
        self.finished.append(finished)

    def begin_exchange_locked(self, take_finished: bool = True, by_enqueue: bool = False) -> Exchange:
        """Take every outcome waiting (unless not `take_finished`), the room to claim and
        whether to claim from the store, for an exchange, which must follow (one that
        stores a new job if `by_enqueue`)."""
        finished: list[Finished] = []
        if take_finished:
            finished, self.finished = self.finished, []
        self.exchange_outcomes = finished
        self.exchange_thread = threading.get_ident()
        self.exchanging, self.enqueue_exchanging = True, by_enqueue
        if take_finished:
            self.pacing.taken()
        self.claiming = room = max(0, self.room_locked(recording=take_finished))
        return finished, room, self.from_store

    def exchanging_here_locked(self) -> bool:
        """True if the calling thread is making the exchange under way (a signal handler
        running on it interrupted that exchange)."""
        return self.exchanging and self.exchange_thread == threading.get_ident()

    def give_back_locked(self, finished: list[Finished]) -> None:
        """An exchange failed: its outcomes wait again, first."""
        if self.look_after_exchange:  # (see `ended_locked`: it claimed nothing)
            self.dispatch_needed.notify()
        self._exchange_over_locked()
        self.finished[:0] = finished

    def abandon_exchange_here_locked(self) -> None:
        """The exchange the calling thread makes ends before its repository call committed
        (it raised, or Ctrl-C landed anywhere on its way): the outcomes it took wait again,
        for the dispatcher to record at once. Nothing if this thread makes none."""
        if not self.exchanging_here_locked():
            return
        self.give_back_locked(self.exchange_outcomes)
        if self.finished:  # given back, or handed in while it ran
            self.pacing.due_now(real_monotonic())
            self.dispatch_needed.notify()

    def _exchange_over_locked(self) -> None:
        self.exchanging, self.enqueue_exchanging, self.claiming = False, False, 0
        self.exchange_outcomes = []
        self.look_after_exchange = False
        if self.awaiting_exchange:
            self.exchange_ended.notify_all()

    def await_exchange_locked(self, seconds: float) -> None:
        """Wait (releasing the lock) for the exchange under way to end, at most `seconds`."""
        self.awaiting_exchange += 1
        try:
            lock_waits.wait(self.exchange_ended, self.lock, seconds)
        finally:
            self.awaiting_exchange -= 1

    def ended_locked(self, finished: list[Finished], claimed: list[JobRecord], *,
                     wake: bool, active: bool = False) -> None:
        """An exchange recorded `finished` and claimed `claimed` (to the buffer; one idle
        worker woken for them if `wake`, as `wake_for_buffer_locked(active)` does)."""
        if self.look_after_exchange and len(claimed) < self.claiming:
            # It claimed less than it had room for, and jobs were queued after it took its
            # ids (a window read of the store, an enqueue, a timer come due): the dispatcher,
            # told of them, found it under way. Unless it looks again they wait beside an
            # idle worker until something else wakes one (for ever, at a start that left 2
            # of 10 workers idle). Not after a full claim: the room left is that of workers
            # that ended meanwhile, whose outcomes bring the dispatcher (below) or a claim
            # of their own (told at every such exchange, it woke 5 times as often in a drain
            # of tiny jobs, which ran 17% slower).
            self.dispatch_needed.notify()
        self._exchange_over_locked()
        if self.look_when_free and not claimed:
            self.wake_one_locked()  # (an idle worker finds nothing, and has the store looked at)
        for f in finished:
            self.pacing.ran(f.ran_for)
            # Most left in _settled already; this catches any never told of (a failed
            # bookkeeping step), which would otherwise look held here for ever.
            self.settling.discard(f.record.id)
        self.buffer.extend(claimed)
        if wake:
            self.wake_for_buffer_locked(active)
        self.time_reserve_locked()  # (also a reserve this exchange claimed nothing for)
        if self.stopping:
            self.dispatch_needed.notify()  # it may be waiting for this exchange to end
        elif self.finished:
            # Outcomes handed in while this exchange ran wait for the next one. A worker
            # that finds an exchange under way makes none and tells no one, so unless the
            # dispatcher is timed to wake by their due time, tell it now: with no worker
            # running and no enqueue coming, nothing else would record them.
            due = self.pacing.record_due
            if due is None or self.pacing.dispatcher_sleeps_past(due):
                self.dispatch_needed.notify()
