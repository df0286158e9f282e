"""`WorkerPool`: the threads that run jobs, and the dispatcher that claims and settles them.

Claimed records reach `max_workers` worker threads through a small buffer (while jobs
are very short, up to `max_workers` claimed jobs wait there in reserve). Finished
attempts are recorded in batches, in the same repository call as the next claims: an
*exchange*. One exchange runs at a time, made by whichever thread needs it:

- a worker that finds the buffer empty while jobs are queued makes it itself (recording
  every outcome that waits) and runs one of the jobs it claimed: while work is queued,
  no thread is woken to record or to claim, and no worker sleeps between jobs. A worker
  that finds a job in the buffer runs it and leaves its outcome to that exchange;
- the thread calling `enqueue` makes it for a plain job (`exchange_inserting`), storing
  the job in the same repository call, claimed if a worker has room: a quiet pool's
  idle worker gets the job with no dispatcher round trip, and while enqueues stream in
  (STREAM_GAP) they record the finished outcomes, a few at a time;
- the dispatcher thread makes it when work arrives for idle workers, when outcomes wait
  with nothing queued to claim, when they have waited RECORD_WITHIN (the workers busy
  with buffered jobs, or enqueues streaming in), while the repository fails (with
  back-off), and at stop. It also fires cron schedules.

A timeout hands a stuck thread's slot to a fresh thread. Periodic upkeep is the
`Housekeeper`'s. It depends on the repository interface only.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from .attempts import AttemptRunner
from .clock import Clock
from .context import JobContext
from .errors import JobTimeout, RepositoryError
from .execution import Outcome
from .queue import ReadyQueue
from .registry import FunctionRegistry, LocalJobs
from .repository.base import JobRecord, JobRepository, QueueEntry
from .retry import Classifier
from .recorder import Completion, Finished, Publisher, Recorder, Settled

logger = logging.getLogger("jobcore.workers")

RESERVE_BELOW = 0.005  # seconds: jobs shorter than this on average get claimed in reserve
# Seconds: the longest a finished attempt waits to be recorded while the workers, busy
# with buffered jobs, leave it for a later exchange; then the dispatcher records it.
RECORD_WITHIN = 0.002
# Seconds: enqueues closer together than this make a stream. While one lasts, exchanges
# are left to the enqueuing thread (see `exchange_inserting`), not made by the dispatcher.
STREAM_GAP = 0.001
# While enqueues stream in, an enqueue records the outcomes waiting once this many wait
# (or the first has waited half of RECORD_WITHIN).
STREAM_BATCH = 8


@dataclass(frozen=True)
class PoolSettings:
    """How a pool behaves; durations are float seconds."""

    max_workers: int
    lease_timeout: float
    poll_interval: float
    max_retry_delay: float
    retry_on: Classifier


@dataclass(eq=False)
class _Slot:
    """One worker thread's place in the pool."""

    index: int
    abandoned: bool = False


@dataclass(eq=False)
class _Attempt:
    record: JobRecord
    context: JobContext
    slot: _Slot
    deadline: Optional[float]  # clock.monotonic() value, or None without a timeout
    started: float


class WorkerPool:
    """Runs jobs from a `ReadyQueue` (see module docstring)."""

    def __init__(self, repository: JobRepository, queue: ReadyQueue, registry: FunctionRegistry,
                 local: LocalJobs, clock: Clock, settings: PoolSettings, worker_id: str,
                 publish: Publisher, on_settled: Settled, rng: random.Random) -> None:
        self._repo = repository
        self._queue = queue
        self._registry = registry
        self._local = local
        self._clock = clock
        self._settings = settings
        self.worker_id = worker_id
        self._recorder = Recorder(repository, queue, registry, local, clock, worker_id,
                                  lease_timeout=settings.lease_timeout,
                                  max_retry_delay=settings.max_retry_delay, retry_on=settings.retry_on,
                                  rng=rng, publish=publish, on_settled=self._settled)
        self._on_settled = on_settled
        self._attempts = AttemptRunner(registry, local, clock, settings.max_workers)
        # _lock guards every attribute below. Worker threads wait on _work_ready for a
        # claimed record or an exchange to make; the dispatcher waits on _dispatch_needed
        # for work it must do (see module docstring).
        self._lock = threading.Lock()
        self._work_ready = threading.Condition(self._lock)
        self._dispatch_needed = threading.Condition(self._lock)
        self._buffer: collections.deque[JobRecord] = collections.deque()
        self._running: dict[str, _Attempt] = {}
        self._finished: list[Finished] = []
        self._settling: set[str] = set()
        self._cancel_ids: set[str] = set()
        self._threads: list[tuple[threading.Thread, _Slot]] = []
        self._dispatcher: Optional[threading.Thread] = None
        self._abandoned = 0
        self._next_slot = 0
        self._stopping = True
        self._handoffs = 0  # slots promised to new jobs being handed straight to a worker
        self._idle = 0  # workers waiting on _work_ready
        self._waking = 0  # of those, notified and not yet running
        self._exchanging = False  # an exchange is under way (one at a time, by any thread)
        self._claiming = 0  # how many jobs that exchange may claim: held, for the room count
        self._failing = False  # the last exchange failed: only the dispatcher (backing off) tries
        # Other processes took ids this manager queued, and the store still had ready jobs:
        # claim the best of those by number, not by id, until a claim comes back short.
        self._from_store = False
        self._record_due: Optional[float] = None  # time.monotonic() by which _finished is recorded
        self._dispatcher_wakes_at: Optional[float] = None  # time.monotonic(); None: not before notified
        self._last_offer = float("-inf")  # time.monotonic() of the last exchange_inserting call
        self._stream_until = float("-inf")  # time.monotonic(): enqueues stream in until then
        self._average_run = 1.0  # seconds; start without a reserve until jobs prove short
        self.on_deadline: Callable[[], None] = lambda: None  # set by the housekeeper
        queue.listener = self._poke

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker threads and the dispatcher."""
        with self._lock:
            self._stopping = False
            self._threads = []
            for _ in range(self._settings.max_workers):
                self._spawn_locked()
            self._dispatcher = threading.Thread(target=self._dispatch, name="jobcore-dispatcher", daemon=True)
            self._dispatcher.start()

    def _spawn_locked(self) -> None:
        slot = _Slot(self._next_slot)
        self._next_slot += 1
        thread = threading.Thread(target=self._work, args=(slot,), daemon=True,
                                  name=f"jobcore-worker-{slot.index}")
        self._threads.append((thread, slot))
        thread.start()

    def stop(self, timeout: Optional[float]) -> bool:
        """Start no more jobs; wait up to `timeout` for running ones to finish and be
        recorded (claimed, unstarted ones are handed back). True if all threads ended."""
        with self._lock:
            self._stopping = True
            self._work_ready.notify_all()
            self._dispatch_needed.notify_all()
            # Not the abandoned ones: a thread stuck past its timeout may never return.
            threads = [thread for thread, slot in self._threads if not slot.abandoned]
            dispatcher = self._dispatcher
        deadline = None if timeout is None else self._clock.monotonic() + timeout
        for thread in threads + ([dispatcher] if dispatcher else []):
            remaining = None if deadline is None else max(0.0, deadline - self._clock.monotonic())
            thread.join(remaining)
        return not any(t.is_alive() for t in threads)

    @property
    def threads(self) -> list[threading.Thread]:
        """The live worker threads (not those abandoned in a timed-out attempt)."""
        with self._lock:
            return [thread for thread, slot in self._threads if thread.is_alive() and not slot.abandoned]

    @property
    def abandoned_threads(self) -> int:
        """Threads still stuck in an attempt that timed out."""
        with self._lock:
            return self._abandoned

    def held_ids(self) -> list[str]:
        """Ids this pool holds a claim on: buffered, running, or being recorded."""
        with self._lock:
            return [r.id for r in self._buffer] + list(self._running) + list(self._settling)

    def settles_here(self, job_id: str) -> bool:
        """True if this pool holds a claim on `job_id` that `on_settled` has yet to tell of
        (buffered, running, or being recorded): the job settles here, and the caller hears
        of it then."""
        with self._lock:
            return (job_id in self._running or job_id in self._settling
                    or any(r.id == job_id for r in self._buffer))

    def _settled(self, settled: list[tuple[str, Optional[Completion]]]) -> None:
        """The recorder settled these: they leave `_settling` (see `settles_here`) before
        `on_settled` hears of them."""
        with self._lock:
            self._settling.difference_update(job_id for job_id, _ in settled)
        self._on_settled(settled)

    @property
    def idle(self) -> bool:
        """True when nothing runs or waits here: time to look for work elsewhere."""
        with self._lock:
            busy = bool(self._running or self._buffer or self._finished or self._exchanging)
        return not busy and len(self._queue) == 0

    def request_cancel(self, job_id: str) -> bool:
        """Signal a job held here to stop; False if it is not held here."""
        with self._lock:
            attempt = self._running.get(job_id)
            if attempt is None:
                if not any(r.id == job_id for r in self._buffer):
                    return False
                self._cancel_ids.add(job_id)
                return True
        attempt.context.request_cancel()
        return True

    def enqueue_entries(self, entries: Iterable[QueueEntry]) -> None:
        """Queue entries this process can run (ready now, or as timers)."""
        self._recorder.enqueue_entries(entries)

    # -- the enqueuing thread's exchange: a new job stored with the outcomes and claims ------
    def exchange_inserting(self, record: JobRecord, now: float) -> bool:
        """Store the plain pending `record` (no dependencies, no unique key) in an exchange
        made now, by the enqueuing thread, if none is under way and there is room to claim
        or an outcome to record. In one repository call it records the waiting outcomes,
        stores the job and claims the best queued jobs, the new one among them if it is
        good enough. False (nothing done): the caller stores the job the usual way.
        Raises what storing it raised (nothing was stored, recorded or claimed), the
        outcomes then left to the dispatcher.

        A quiet pool hands a new job straight to an idle worker this way (no dispatcher
        round trip), and under a stream of enqueues (see STREAM_GAP) every job carries
        the outcomes finished since the last: one transaction per job, and no thread
        woken to record or to claim."""
        started = time.monotonic()
        with self._lock:
            if started - self._last_offer < STREAM_GAP:
                self._stream_until = started + STREAM_GAP
            self._last_offer = started
            if self._stopping or self._exchanging or self._failing or self._from_store:
                return False
            if self._room_locked() <= 0 and not self._finished:
                return False
            # While the stream lasts, outcomes wait for a few more: recorded together, they
            # share statements and bookkeeping. Not past half their RECORD_WITHIN, though:
            # then the dispatcher would record them, in a transaction of its own.
            due = self._record_due
            take = (len(self._finished) >= STREAM_BATCH or not self._streaming_locked()
                    or due is None or started >= due - RECORD_WITHIN / 2)
            if not take and self._room_locked() <= 0:
                return False  # nothing to record yet, nothing to claim: the usual way
            finished, room, _ = self._begin_exchange_locked(take_finished=take)
        entries = self._queue.pop_ready(room) if room > 0 else []
        claim_new = room > len(entries)
        if not claim_new and entries and record.priority > entries[-1].priority:
            self._queue.push(entries.pop())  # the new job goes before the worst of them
            claim_new = True
        try:
            claimed = self._recorder.exchange_inserting(record, claim_new, finished,
                                                        [e.job_id for e in entries], now)
        except Exception:
            for entry in entries:  # outside _lock: the queue's listener takes it
                self._queue.push(entry)
            with self._lock:
                self._exchanging, self._claiming = False, 0
                if finished:
                    self._finished[:0] = finished
                    self._record_due = time.monotonic()
                    self._dispatch_needed.notify()
            raise
        if not claim_new:
            self._recorder.enqueue_entries([record.queue_entry()])
        with self._lock:
            self._exchanging, self._claiming = False, 0
            self._ended_locked(finished)
            self._buffer.extend(claimed)
            if claimed:
                self._wake_one_locked()
            if self._stopping:
                self._dispatch_needed.notify()  # it may be waiting for this exchange to end
        return True

    # -- direct hand-off: a new job to an idle worker, without the dispatcher ----------------
    def reserve_idle_worker(self) -> bool:
        """Promise a slot to a job about to be enqueued, if a worker is idle, nothing is
        queued ahead of it (so handing it over directly keeps priority order) and no
        outcome waits to be recorded. The caller must follow with `hand_off` either way.

        That last condition keeps the shortcut to a quiet pool, where it saves latency:
        under a steady stream of jobs the dispatcher claims new jobs in the transaction
        that records finished ones, which a hand-off per job would split into two."""
        with self._lock:
            if self._stopping or self._finished or self._settling:
                return False
            busy = len(self._buffer) + len(self._running) + self._handoffs + self._claiming
            if busy >= self._settings.max_workers or self._from_store or self._queue.has_ready():
                return False
            self._handoffs += 1
            return True

    def hand_off(self, record: Optional[JobRecord]) -> None:
        """Give a worker the job claimed for a slot `reserve_idle_worker` promised, or
        (None) give the slot back."""
        with self._lock:
            self._handoffs -= 1
            if record is None:
                self._dispatch_needed.notify()  # the slot is free again
                return
            if not self._stopping:
                self._buffer.appendleft(record)
                self._wake_one_locked()
                return
        # Stopped since the slot was promised: no worker will take it, so hand it back
        # unstarted (PENDING again, the attempt not counted) rather than leave it held.
        self._recorder.hand_back([record])

    @property
    def claims_from_store(self) -> bool:
        """True while ready jobs are claimed from the store by number (other processes
        take the ids queued here): reloading the queue's ready ids would be in vain."""
        with self._lock:
            return self._from_store

    def runnable(self, entry: QueueEntry) -> bool:
        """True if this process can run (or fire) the queued job."""
        return self._recorder.runnable(entry)

    def _poke(self) -> None:
        with self._lock:
            self._dispatch_needed.notify()

    # -- worker threads -------------------------------------------------------------------
    def _work(self, slot: _Slot) -> None:
        while True:
            with self._lock:
                while True:
                    if self._stopping:
                        return  # buffered claims are handed back by the dispatcher
                    exchange = self._worker_exchange_locked()
                    if exchange is not None or self._buffer:
                        break
                    self._idle += 1
                    self._work_ready.wait()
                    self._idle -= 1
                    if self._waking:
                        self._waking -= 1
                if exchange is None:
                    attempt = self._start_locked(self._buffer.popleft(), slot)
                    if self._buffer:
                        self._wake_one_locked()
            if exchange is not None:
                self._exchange(*exchange, by_worker=True)
                continue
            record, context = attempt.record, attempt.context
            if attempt.deadline is not None:
                self.on_deadline()
            outcome = self._attempts.run(record, context)
            finished = Finished(record, context, outcome, self._clock.monotonic() - attempt.started)
            if not slot.abandoned:
                finished.settlement = self._recorder.decide(finished)
            with self._lock:
                if slot.abandoned:
                    self._abandoned -= 1
                    logger.warning("job %s returned after its timeout; its outcome is discarded", record.id)
                    return
                del self._running[record.id]
                self._add_finished_locked(finished)
                if self._stopping:
                    self._dispatch_needed.notify()  # at stop the dispatcher records everything

    def _start_locked(self, record: JobRecord, slot: _Slot) -> _Attempt:
        """Make `record` this slot's running attempt. Called with _lock held."""
        context = JobContext(record.id, record.name, record.attempts, self)
        now = self._clock.monotonic()
        # An isolated attempt's timeout is enforced by its runner, which kills the child;
        # only a thread's is enforced here, by abandoning the thread.
        isolated = record.isolation == "process"
        deadline = None if record.timeout is None or isolated else now + record.timeout
        attempt = _Attempt(record, context, slot, deadline, now)
        self._running[record.id] = attempt
        if record.id in self._cancel_ids or record.cancel_requested:
            self._cancel_ids.discard(record.id)
            context.request_cancel()
        return attempt

    def _worker_exchange_locked(self) -> Optional[tuple[list[Finished], int, bool]]:
        """The exchange a worker makes before taking a job, if one is due: when the buffer
        is empty and there is room to fill from the queue. With nothing to claim, waiting
        outcomes are the dispatcher's to record (it is told). Called with _lock held."""
        if self._exchanging or self._failing or self._buffer:
            return None
        if self._room_locked() > 0 and (self._from_store or self._queue.has_ready()):
            return self._begin_exchange_locked()
        if self._finished and not self._streaming_locked():
            self._dispatch_needed.notify()
        return None

    def _streaming_locked(self) -> bool:
        """True while enqueues stream in (see STREAM_GAP). Called with _lock held."""
        return time.monotonic() < self._stream_until

    def _wake_one_locked(self) -> None:
        """Wake one idle worker for buffered jobs, unless one is already on its way: it
        takes a job and, if more wait, wakes the next. While jobs hold the GIL, the thread
        running them drains the buffer alone and no one is woken for nothing; while they
        block, idle workers join in one after the other. Called with _lock held."""
        if self._idle and not self._waking:
            self._waking += 1
            self._work_ready.notify()

    def _add_finished_locked(self, finished: Finished) -> None:
        """Queue an outcome for the next exchange. The first one sets the time by which
        it must be recorded; if jobs are buffered (its worker goes on to one, leaving the
        outcome for later) or enqueues stream in (the next one may record it), the
        dispatcher is woken when it would sleep past that time."""
        self._settling.add(finished.record.id)
        if not self._finished:
            self._record_due = due = time.monotonic() + RECORD_WITHIN
            wakes_at = self._dispatcher_wakes_at
            if (self._buffer or self._streaming_locked()) and (wakes_at is None or wakes_at > due):
                self._dispatch_needed.notify()
        self._finished.append(finished)

    def close(self) -> None:
        """End idle child processes (after `stop`)."""
        self._attempts.close()

    # -- ContextSink: reports from running jobs ---------------------------------------------
    def report_progress(self, context: JobContext, progress: float, message: str,
                        details: dict[str, Any]) -> None:
        self._repo.update_progress(context.id, self.worker_id, context.attempt, progress, message,
                                   details, self._clock.time())

    def report_log(self, context: JobContext, level: str, message: str) -> None:
        self._repo.add_log(context.id, level, message, self._clock.time())

    # -- exchanges: record finished attempts, claim the next jobs ----------------------------
    def _room_locked(self) -> int:
        """How many more jobs to claim now. Called with _lock held."""
        if self._stopping:
            return 0
        return (self._capacity() - len(self._buffer) - len(self._running) - self._handoffs
                - self._claiming)

    def _begin_exchange_locked(self, take_finished: bool = True) -> tuple[list[Finished], int, bool]:
        """Take every outcome waiting (unless not `take_finished`), the room to claim and
        whether to claim from the store, for `_exchange` (or `exchange_inserting`), which
        must follow. Called with _lock held."""
        finished: list[Finished] = []
        if take_finished:
            finished, self._finished = self._finished, []
            self._record_due = None
        self._exchanging = True
        self._claiming = room = max(0, self._room_locked())
        return finished, room, self._from_store

    def _exchange(self, finished: list[Finished], room: int, from_store: bool, *, by_worker: bool) -> bool:
        """Record `finished` and claim up to `room` ready jobs in one repository call; the
        claimed go to the buffer. A worker making it takes one of them itself, so it wakes
        one idle worker fewer. False if the repository failed: everything is put back and
        the dispatcher retries, backing off.

        Claims name the ids queued here, best first, and are topped up from the store
        when some went stale. While other processes take most of them (`from_store`), the
        plain pending ids are skipped: due timers and retries are claimed by id, and the
        rest of the room by number, the store's best ready jobs."""
        known = self._queue.high_seq
        if from_store:
            self._queue.drop_stale(known)
        entries = self._queue.pop_ready(room) if room > 0 else []
        ids = [e.job_id for e in entries]
        wanted = room if from_store else len(ids)
        claimed = self._recorder.exchange(finished, ids, self._registry.names, up_to=wanted)
        if claimed is None:
            for entry in entries:  # outside _lock: the queue's listener takes it
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
        with self._lock:
            self._exchanging, self._claiming = False, 0
            if claimed is None:  # nothing was recorded: the dispatcher records them, first
                self._finished[:0] = finished
                self._failing = True
                self._dispatch_needed.notify()
                return False
            self._failing, self._from_store = False, from_store
            self._ended_locked(finished)
            self._buffer.extend(claimed)
            if len(claimed) > (1 if by_worker else 0):
                self._wake_one_locked()
            if self._stopping:
                self._dispatch_needed.notify()  # it may be waiting for this exchange to end
        return True

    def _ended_locked(self, finished: list[Finished]) -> None:
        """Bookkeeping once `finished` is recorded. Called with _lock held."""
        for f in finished:  # a moving average of run times decides the reserve
            self._average_run += 0.1 * (f.ran_for - self._average_run)
            # Most left in _settled already; this catches any never told of (a failed
            # bookkeeping step), which would otherwise look held here for ever.
            self._settling.discard(f.record.id)

    # -- the dispatcher -------------------------------------------------------------------------
    def _dispatch(self) -> None:
        backoff = 0.0
        while True:
            with self._lock:
                while True:
                    schedules = [] if self._stopping else self._queue.pop_due_schedules()
                    exchange = None if self._exchanging else self._dispatcher_exchange_locked()
                    if exchange is not None or schedules:
                        break
                    if self._stopping and not self._running and not self._exchanging:
                        buffered = list(self._buffer)
                        self._buffer.clear()
                        break
                    self._dispatcher_sleep_locked()
            if exchange is None and not schedules:
                self._recorder.hand_back(buffered)
                return
            for schedule in schedules:
                self._recorder.fire_schedule(schedule)
            if exchange is None:
                continue
            if backoff:
                threading.Event().wait(backoff)
            if self._exchange(*exchange, by_worker=False):
                backoff = 0.0
            else:
                backoff = min(max(backoff * 2, 0.05), 2.0)

    def _dispatcher_exchange_locked(self) -> Optional[tuple[list[Finished], int, bool]]:
        """The exchange the dispatcher makes now, if any (see module docstring). Called
        with _lock held, when no exchange is under way."""
        if self._streaming_locked() and not (self._stopping or self._failing):
            # The next enqueue makes the exchange, unless outcomes wait past their time.
            due = self._record_due
            if not (self._finished and due is not None and time.monotonic() >= due):
                return None
        if self._finished:
            # An empty buffer: no worker is about to record them (one would be making
            # this exchange, or sleeping).
            due = self._record_due
            if (self._stopping or self._failing or not self._buffer or due is None
                    or time.monotonic() >= due):
                return self._begin_exchange_locked()
        if self._room_locked() > 0 and (self._from_store or self._queue.has_ready()):
            return self._begin_exchange_locked()
        return None

    def _dispatcher_sleep_locked(self) -> None:
        """Wait for a notification, the next timer or schedule, or the time by which
        waiting outcomes must be recorded. Called with _lock held."""
        now = time.monotonic()
        waits = []
        due = self._queue.next_due()  # clock time: a fake clock's jump notifies instead
        if due is not None:
            waits.append(max(0.0, due - self._clock.time()))
        if self._finished and self._record_due is not None:
            waits.append(max(0.0, self._record_due - now))
        if now < self._stream_until:
            # While enqueues stream in, look at this pace: an outcome left for the next
            # enqueue is then recorded in time without a notification of its own, and
            # whatever waits is taken up soon after the stream stops.
            waits.append(RECORD_WITHIN)
        timeout = min(waits) if waits else None
        self._dispatcher_wakes_at = None if timeout is None else now + timeout
        self._dispatch_needed.wait(timeout)
        self._dispatcher_wakes_at = None

    def _capacity(self) -> int:
        """How many jobs to hold: one per worker, plus as many claimed in reserve while jobs
        are short (under RESERVE_BELOW seconds on average), so a worker never waits for the
        dispatcher between tiny jobs. Long jobs get no reserve: a claimed job would show as
        running, keep a later higher-priority job waiting, and be out of reach of idle
        workers elsewhere. Called with _lock held."""
        workers = self._settings.max_workers
        return 2 * workers if self._average_run < RESERVE_BELOW else workers

    # -- single-step mode ----------------------------------------------------------------------
    def run_pending(self, limit: Optional[int] = None) -> int:
        """Run ready jobs one by one in the calling thread until none is ready (or `limit`
        ran); fire due schedules on the way. Returns how many jobs ran. Timeouts are not
        enforced here. For tests and immediate mode, on a pool that is not started."""
        ran = 0
        while limit is None or ran < limit:
            for schedule in self._queue.pop_due_schedules():
                self._recorder.fire_schedule(schedule)
            entries = self._queue.pop_ready(1)
            if not entries:
                return ran
            claimed = self._recorder.exchange([], [entries[0].job_id])
            if not claimed:
                continue
            record = claimed[0]
            context = JobContext(record.id, record.name, record.attempts, self)
            started = self._clock.monotonic()
            with self._lock:
                self._running[record.id] = _Attempt(record, context, _Slot(-1), None, started)
            outcome = self._attempts.run(record, context)
            with self._lock:
                del self._running[record.id]
            if self._recorder.exchange([Finished(record, context, outcome,
                                                 self._clock.monotonic() - started)], []) is None:
                raise RepositoryError(f"could not record the outcome of job {record.id}; see the log")
            ran += 1
        return ran

    # -- called by the housekeeper --------------------------------------------------------
    def time_out_overdue(self, now: float) -> Optional[float]:
        """Give up attempts past their deadline (monotonic `now`): their threads are
        abandoned and replaced, and a `JobTimeout` is recorded. Returns the earliest
        deadline still ahead, or None."""
        with self._lock:
            ahead = []
            for attempt in list(self._running.values()):
                if attempt.deadline is None:
                    continue
                if attempt.deadline > now:
                    ahead.append(attempt.deadline)
                    continue
                record = attempt.record
                del self._running[record.id]
                attempt.slot.abandoned = True
                attempt.context.abandoned = True
                self._abandoned += 1
                if not self._stopping:
                    self._spawn_locked()  # capacity stays max_workers
                logger.warning("job %s exceeded its timeout of %.3fs; its thread is abandoned",
                               record.id, record.timeout)
                outcome = Outcome(error=JobTimeout(record.timeout or 0.0))
                self._add_finished_locked(Finished(record, attempt.context, outcome, now - attempt.started))
                self._dispatch_needed.notify()
        return min(ahead) if ahead else None

    def heartbeat(self) -> list[str]:
        """Renew the leases of the jobs held here and act on cancel requests made
        elsewhere; returns the ids held here."""
        ids = self.held_ids()
        if ids:
            now = self._clock.time()
            for job_id in self._repo.heartbeat(self.worker_id, ids, now + self._settings.lease_timeout, now):
                self.request_cancel(job_id)
        return ids
