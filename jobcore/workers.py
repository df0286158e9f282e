"""`WorkerPool`: the loop of the threads that run jobs, and what the rest of jobcore asks of
them; not the starting, stopping and replacing of those threads (`pool_threads`).

Claimed records reach `max_workers` worker threads through a small buffer (while jobs
are very short, up to `max_workers` claimed jobs wait there in reserve). Finished
attempts are recorded in batches, in the same repository call as the next claims: an
*exchange* (`exchanges`), one at a time, made by whichever thread needs it:

- a worker that finds the buffer empty while jobs are queued makes it itself (recording
  every outcome that waits) and runs one of the jobs it claimed: while work is queued,
  no thread is woken to record or to claim, and no worker sleeps between jobs. A worker
  that finds a job in the buffer runs it and leaves its outcome to that exchange;
- the thread calling `enqueue` makes it for a plain job (`exchange_inserting`), storing
  the job in the same repository call, claimed if a worker has room: a quiet pool's
  idle worker gets the job with no dispatcher round trip, and while enqueues stream in
  (see `pacing`) they record the finished outcomes, a few at a time;
- the dispatcher thread (`dispatcher`) makes the others, and fires cron schedules.

The threads share a `PoolState` under its one lock. A timeout hands a stuck thread's
slot to a fresh thread (`pool_threads`). The claims held here, their leases and cancels
are `holdings`'; `run_pending`, running jobs in the caller's thread, is `single_step`'s.
Periodic upkeep is the `Housekeeper`'s. It depends on the repository interface only.
"""

from __future__ import annotations

import logging
import random
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from . import serialization
from .attempts import AttemptRunner
from .claims import ClaimCheck
from .clock import Clock, real_monotonic
from .context import JobContext
from .dispatcher import Dispatcher
from .errors import JobTimeout
from .exchanges import Exchanges
from .execution import Outcome
from .tracebacks import format_failure
from .holdings import Holdings
from .log_buffer import LOG_INTERVAL, LogBuffer
from .pool_state import Attempt, PoolState, Slot
from .pool_threads import PoolThreads
from .progress import ProgressWriter, Report
from .queue import ReadyQueue
from .registry import FunctionRegistry, LocalJobs
from .repository.base import JobRecord, JobRepository, LogLine, QueueEntry
from .repository.values import copy_nested
from .retry import Classifier
from .single_step import SingleStep
from .completions import Completion
from .recorder import Finished, Publisher, Recorder, Settled

logger = logging.getLogger("jobcore.workers")


@dataclass(frozen=True)
class PoolSettings:
    """How a pool behaves; durations are float seconds."""

    max_workers: int
    lease_timeout: float
    poll_interval: float
    max_retry_delay: float
    retry_on: Classifier
    log_interval: float = LOG_INTERVAL  # seconds a job's log line may wait to be stored (see log_buffer)

    @property
    def beat_every(self) -> float:
        """How often the leases of running jobs are renewed: every `poll_interval`, and at
        least three times a lease (beating every poll_interval set near or past the lease,
        a live job's lease lapsed between beats, and another process ran it beside it)."""
        return min(self.poll_interval, self.lease_timeout / 3)


class WorkerPool:
    """Runs jobs from a `ReadyQueue` (see module docstring)."""

    def __init__(self, repository: JobRepository, queue: ReadyQueue, registry: FunctionRegistry,
                 local: LocalJobs, clock: Clock, settings: PoolSettings, worker_id: str,
                 publish: Publisher, note_settled: Settled, on_settled: Settled,
                 rng: random.Random) -> None:
        self._repo = repository
        self._queue = queue
        self._clock = clock
        self.worker_id = worker_id
        self._recorder = Recorder(repository, queue, registry, local, clock, worker_id,
                                  lease_timeout=settings.lease_timeout,
                                  max_retry_delay=settings.max_retry_delay, retry_on=settings.retry_on,
                                  rng=rng, publish=publish, on_settled=self._settled,
                                  ring=lambda: self.on_work_stored(),
                                  handed_back=lambda entries: self.on_handed_back(entries),
                                  look=self.look_when_free)
        self._on_settled = on_settled
        self._note_settled = note_settled
        # An isolated job's progress details are checked in its child, as report_progress
        # checks a thread job's.
        self._attempts = AttemptRunner(registry, local, clock, settings.max_workers,
                                       check_details=repository.persistent,
                                       max_payload_bytes=repository.max_payload_bytes)
        self._state = PoolState(settings.max_workers)
        self._state.ready_count = queue.ready_count
        self._claims = ClaimCheck(repository, worker_id, clock, settings.lease_timeout)
        self._exchanges = Exchanges(self._state, repository, queue, registry, self._recorder,
                                    settings.max_workers)
        self._dispatcher = Dispatcher(self._state, self._exchanges, queue, self._recorder, clock,
                                      give_up_after=settings.lease_timeout)
        self._pool_threads = PoolThreads(self._state, self._dispatcher, clock, settings.max_workers,
                                         settings.lease_timeout, serve=self._serve, given_up=self._left_waiting,
                                         decide_given_up=self._recorder.decide_given_up,
                                         store_held_here=repository.held_here)
        self._holdings = Holdings(self._state, repository, self._claims, clock, worker_id,
                                  settings.lease_timeout, on_settled)
        self.on_deadline: Callable[[], None] = lambda: None  # set by the housekeeper
        # Set by the housekeeper: look at the store now (see `look_when_free`); called by a
        # worker with no lock held.
        self.on_free: Callable[[], None] = lambda: None
        # Set by the housekeeper: tell the other managers of this process on the store that
        # this pool's writes made jobs ready (see `Recorder`); any thread, no lock held.
        self.on_work_stored: Callable[[], None] = lambda: None
        # Set by the manager: queue here the jobs a stop handed back, if this manager queues
        # stored jobs now (see `Recorder`); the dispatcher's thread, no lock held.
        self.on_handed_back: Callable[[list[QueueEntry]], object] = lambda entries: None
        # Set by the housekeeper: have it write the progress reports and log lines due
        # (False: it does not run).
        self.on_progress_waiting: Callable[[], bool] = lambda: False
        self._progress = self._progress_writer()
        self._log_interval = settings.log_interval
        self._logs = self._log_buffer()
        self._single_step = SingleStep(self._state, queue, self._recorder, self._attempts, clock, sink=self,
                                       last_report=self._last_report, log_lines=self._log_lines)
        queue.listener = self._ready_arrived

    def _progress_writer(self) -> ProgressWriter:
        return ProgressWriter(self._write_progress, throttle=self._repo.persistent,
                              wake=lambda: self.on_progress_waiting())

    def _log_buffer(self) -> LogBuffer:
        return LogBuffer(self._repo.add_logs, throttle=self._repo.persistent, interval=self._log_interval,
                         wake=lambda: self.on_progress_waiting())

    def rename(self, worker_id: str) -> None:
        """Claim, renew and record as `worker_id` from now on (a forked child's own: see
        `JobManager._forked`); called while nothing runs here."""
        self.worker_id = self._claims.worker_id = self._holdings.worker_id = worker_id
        self._recorder.rename(worker_id)

    def forked(self) -> None:
        """In a forked child: a pool that holds nothing and runs no thread. The parent's
        threads stayed there with the jobs they held (buffered, running, being recorded),
        which settle there: held here, `wait` would sleep until a settlement here that
        never comes, and `poll` would show the progress they had at the fork."""
        self._state.forked()
        self._pool_threads.forked()
        self._progress = self._progress_writer()
        self._logs = self._log_buffer()
        self._attempts.forked()

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker threads and the dispatcher: a new generation of them (threads
        of an earlier start still running take no part: see `PoolThreads.start`)."""
        self._pool_threads.start()

    def stop(self, timeout: Optional[float]) -> bool:
        """Start no more jobs; wait up to `timeout` for running ones to finish and be
        recorded (claimed, unstarted ones are handed back). True if all threads ended
        (not counting those abandoned in a timed-out attempt: see `PoolThreads.stop`)."""
        return self._pool_threads.stop(timeout)

    def on_own_thread(self) -> bool:
        """True on one of the pool's threads (a worker, the dispatcher, one deciding a
        timed-out attempt's outcome): a stop that waits would wait for itself there."""
        return self._pool_threads.on_own_thread()

    @property
    def dispatcher_left(self) -> bool:
        """True if the last `stop` could not wait for the dispatcher's last recording (it
        was called on the thread making an exchange): the next stop waits for it."""
        with self._state.lock:
            return self._pool_threads.dispatcher_left

    @property
    def threads(self) -> list[threading.Thread]:
        """The live worker threads (not those abandoned in a timed-out attempt)."""
        return self._pool_threads.threads

    @property
    def abandoned_threads(self) -> int:
        """Threads still stuck in an attempt that timed out."""
        return self._pool_threads.abandoned

    def held_ids(self) -> list[str]:
        """Ids this pool holds a claim on: buffered, running, or being recorded."""
        return self._holdings.ids()

    def settles_here(self, job_id: str) -> int:
        """Truthy if this pool holds a claim on `job_id` that `on_settled` has yet to tell
        of: the job settles here, and the caller hears of it then. `pool_state.HELD` while
        it is buffered or running, `pool_state.RECORDING` once its attempt is over and its
        outcome is being recorded; 0 when not held."""
        return self._holdings.settles_here(job_id)

    def caller_waits(self) -> None:
        """The calling thread is about to sleep in `wait` for a job: if it was
        streaming enqueues in, the stream ends (`Pacing.producer_waits`), and the
        dispatcher records the outcomes the stream left for a next enqueue."""
        state, thread = self._state, threading.get_ident()
        if not state.pacing.offered_last(thread):
            # (Most callers: nothing to end, so the pool's lock is not taken. Taken at each
            # poll, 50 threads polling their jobs every 10 ms met the workers there.)
            return
        with state.lock:
            if state.pacing.producer_waits(thread):
                state.dispatch_needed.notify()

    def _settled(self, settled: list[tuple[str, Optional[Completion]]]) -> None:
        """The recorder settled these: their completions are noted (`note_settled`) while
        they are still in `settling`, then they leave it (see `settles_here`), then
        `on_settled` hears of them. A caller looking in between finds each job either held
        here or remembered, never neither (it then read the row)."""
        self._note_settled(settled)
        with self._state.lock:
            self._state.settling.difference_update(job_id for job_id, _ in settled)
        self._progress.settled(job_id for job_id, _ in settled)  # their last reports are in their rows
        self._logs.settled(job_id for job_id, _ in settled)  # and their log lines in the store
        self._on_settled(settled)

    @property
    def idle(self) -> bool:
        """True when nothing runs here and nothing queued here is ready: time to look for
        work elsewhere. Timers and cron schedules not due yet do not count: a manager
        holding one (a `periodic` job, a retry an hour ahead) still notices at once the
        jobs another process enqueues or retries."""
        state = self._state
        with state.lock:
            busy = bool(state.running or state.buffer or state.finished or state.deciding or state.exchanging)
        return not busy and not self._queue.has_ready()

    @property
    def wants_work(self) -> bool:
        """True when a worker is free and nothing queued here is ready: time to look for
        work elsewhere (SPEC: a job due elsewhere starts within 100 ms when a worker is
        free). As `idle`, timers not due yet do not count; unlike it, jobs running here do
        not either: a manager running one long job on one worker of four looked only every
        `poll_interval`, and jobs another process stored waited up to that long."""
        state = self._state
        with state.lock:
            full = bool(not state.room_to_run_locked() or state.buffer or state.exchanging or state.stopping)
        return not full and not self._queue.has_ready()

    def request_cancel(self, job_id: str) -> bool:
        """Signal a job held here to stop; False if it is not held here."""
        return self._holdings.request_cancel(job_id)

    def enqueue_entries(self, entries: Iterable[QueueEntry], read: Optional[int] = None,
                        window_full: Optional[bool] = None) -> None:
        """Queue entries this process can run (ready now, or as timers); `read` and
        `window_full` as for `Recorder.enqueue_entries`."""
        self._recorder.enqueue_entries(entries, read, window_full)

    def exchange_inserting(self, record: JobRecord, now: float) -> bool:
        """Store a plain pending job in an exchange made by the enqueuing thread; False if
        none is made now (see `Exchanges.inserting`)."""
        return self._exchanges.inserting(record, now)

    def enqueued_apart(self) -> None:
        """An enqueue on this started pool stores its job apart from any exchange (a store
        that makes none on enqueue, such as PostgreSQL's, or a job that needs checks
        against other rows): it counts towards a stream of enqueues all the same (see
        `Pacing.offered`; `exchange_inserting` counts the others), so that while one lasts
        the dispatcher is not told of each new job but looks every RECORD_WITHIN. Told of
        each, on PostgreSQL (whose enqueue leaves the GIL to the other threads for a round
        trip) it was woken 2.1-2.8 times a job in a stream; 0.5-0.8 since."""
        self._state.pacing.offered(real_monotonic(), threading.get_ident())

    def reserve_idle_worker(self, promised: list[bool]) -> bool:
        """Promise a slot to a job about to be enqueued (see `Exchanges.reserve_idle_worker`);
        `hand_off` must follow if `promised` holds True."""
        return self._exchanges.reserve_idle_worker(promised)

    def hand_off(self, record: Optional[JobRecord]) -> None:
        """Give a worker the job claimed for a promised slot, or (None) give the slot back."""
        self._exchanges.hand_off(record)

    def look_when_free(self, wake: bool = True) -> None:
        """Call `on_free` once a worker finds nothing to do (with `wake`, an idle one is
        woken for it now, unless an exchange or buffered jobs will wake one): the
        housekeeper was told of work stored elsewhere while this pool wanted none.
        Dropped, that work waited beside idle workers for the next look (a
        `discovery_interval` on: 30 s for a manager given that). Not `wake` when that look
        found the pool busy again: a worker woken for it would ask again at once, for as
        long as the pool stays so (its store failing, say)."""
        state = self._state
        if state.look_when_free:
            return  # (read without the lock: a stale True is one a worker is acting on now)
        with state.lock:
            state.look_when_free = True
            if wake and not (state.exchanging or state.buffer):
                state.wake_one_locked()

    @property
    def claims_from_store(self) -> bool:
        """True while ready jobs are claimed from the store by number (other processes
        take the ids queued here): reloading the queue's ready ids would be in vain."""
        with self._state.lock:
            return self._state.from_store

    def runnable(self, entry: QueueEntry) -> bool:
        """True if this process can run (or fire) the queued job."""
        return self._recorder.runnable(entry)

    def wake_dispatcher(self) -> None:
        """Have the dispatcher look for work now (it claims what is due and there is room
        for): new jobs in the store that nothing queued here tells of."""
        self._tell_dispatcher(unless_it_looks_soon=False)

    def _ready_arrived(self) -> None:
        """The queue's listener: jobs may be ready. The dispatcher is told, unless it will
        look soon anyway while enqueues stream in (`Pacing.dispatcher_looks_soon`)."""
        self._tell_dispatcher(unless_it_looks_soon=True)

    def _tell_dispatcher(self, *, unless_it_looks_soon: bool) -> None:
        if self._dispatcher.thread is None:
            return  # never started: no one to tell (the dispatcher looks before it first sleeps)
        state = self._state
        if unless_it_looks_soon and self._looks_soon():
            # Read without the lock (threads enqueueing at once met there at every job): a
            # dispatcher seen asleep until RECORD_WITHIN from now is, or will be, awake by
            # then, and looks at the queue (this job is in it already) as it wakes.
            return
        with state.lock:
            if unless_it_looks_soon and self._looks_soon():
                return
            state.dispatch_needed.notify()

    def _looks_soon(self) -> bool:
        """True if the dispatcher will look at the queue soon unprompted (see
        `Pacing.dispatcher_looks_soon`), the pool neither stopping nor failing."""
        state = self._state
        return (not (state.stopping or state.failing)
                and state.pacing.dispatcher_looks_soon(real_monotonic()))

    # -- worker threads -------------------------------------------------------------------
    def _serve(self, slot: Slot) -> None:
        state, exchanges = self._state, self._exchanges
        attempt: Attempt  # the attempt this thread runs (set before any use)
        finished: Optional[Finished] = None  # its outcome, once it ran
        while True:
            with state.lock:
                if slot.abandoned:
                    # Given up at its timeout: a thread took its place, so this one ends,
                    # whether its job returned late or never began (its claim was checked).
                    self._pool_threads.returned_late_locked()
                    logger.warning("job %s %s", attempt.record.id,
                                   "timed out before it began (its claim was being checked); it did not run"
                                   if finished is None else "returned after its timeout; its outcome is discarded")
                    return
                if finished is not None:
                    # Handed in under the same lock take that looks for the next job: one
                    # lock round trip per job, not two.
                    # (A claim of the same job kept aside for this attempt goes to the
                    # buffer, and this thread takes it next: see `PoolState.defer_locked`.)
                    state.end_attempt_locked(attempt)
                    state.add_finished_locked(finished)
                    if state.stopping:
                        state.dispatch_needed.notify()  # at stop the dispatcher records everything
                    finished = None
                look = False  # whether this thread has the store looked at (see `look_when_free`)
                while True:
                    if state.stopping:
                        return  # buffered claims are handed back by the dispatcher
                    if slot.generation != state.generation:
                        self._pool_threads.leave_locked()
                        return
                    exchange = exchanges.worker_exchange_locked()
                    # A buffered job only while fewer than max_workers run on worker threads:
                    # after a stop that did not wait and a start, workers of the earlier start
                    # may still run jobs (the short-job reserve claimed more for this start's
                    # threads, which ran them beside those). The last of those to end wakes
                    # one (`leave_locked`). (`run_pending`'s attempt, in the caller's thread,
                    # takes no worker's place.)
                    if exchange is not None or (state.buffer and state.room_to_run_locked()):
                        break
                    if state.look_when_free:
                        look, state.look_when_free = True, False
                        break
                    state.idle += 1
                    state.work_ready.wait()
                    state.idle -= 1
                    if state.waking:
                        state.waking -= 1
                if exchange is None and not look:
                    record = state.buffer.popleft()
                    state.taken += 1
                    if state.buffer:
                        state.wake_for_buffer_locked(active=True)
                        state.time_reserve_locked()
                    elif state.look_when_free:
                        # The look asked for while this pool was busy (`look_when_free`) is
                        # made by an idle worker, if one is left: the workers woken for the
                        # buffer each took a job, so none found nothing to do, and jobs
                        # another process stored meanwhile waited beside the idle ones until
                        # a running job ended (a discovery_interval, if none was running).
                        state.wake_one_locked()
                    if state.defer_locked(record):
                        continue  # an earlier attempt of the job still runs here
                    attempt = self._start_locked(record, slot)
                    suspect = self._claims.suspect(attempt.record, state.renewed_until, self._clock.time())
                    plan_deadline = attempt.deadline is not None and state.deadline_unplanned_locked(attempt.deadline)
            if look:  # with no lock held: the housekeeper's look reads the pool's state
                try:
                    self.on_free()
                except Exception:  # (not expected) never end the thread: the next periodic look finds the work
                    logger.exception("asking for a look at the store failed")
                continue
            if exchange is not None:
                exchanges.run(*exchange, by_worker=True, began=(self._clock.monotonic(), real_monotonic()))
                continue
            try:
                finished = self._end_attempt(attempt, slot, suspect, plan_deadline)
            except Exception as exc:  # a fault of the engine's: never end the thread, nor leave the job RUNNING
                finished = self._engine_fault(attempt, exc)

    def _end_attempt(self, attempt: Attempt, slot: Slot, suspect: bool, plan_deadline: bool) -> Optional[Finished]:
        """Run the attempt this thread took (`_serve`) and tell how it ended, or None if it
        is not to be recorded here (its claim lapsed before it began; an isolated one
        ended by `close`)."""
        state = self._state
        record, context = attempt.record, attempt.context
        if suspect:
            if not self._claims.still_ours(record, renew=True):
                self._holdings.drop_unstarted(record, started=attempt)
                return None
            if slot.abandoned:  # its timeout passed while the claim was checked: recorded so
                return None
        if plan_deadline:
            self.on_deadline()
        outcome = self._attempts.run(record, context)
        if record.isolation == "process" and self._is_closed():
            # `close` ended its child (or it answered as close began): not recorded.
            # Its lease lapses and the job is taken back, never beside that child.
            logger.info("job %s: its child process was ended by close(); the attempt is not"
                        " recorded", record.id)
            context.ended = True
            self._holdings.drop_unstarted(record, started=attempt)
            return None
        if attempt.deadline is not None:
            with state.lock:  # what the engine does next is not the job's time
                overdue = not slot.abandoned and self._clock.monotonic() >= attempt.deadline
                attempt.deadline = None
            if overdue:  # it returned late, before the housekeeper looked: a timeout all the same
                outcome = Outcome(error=JobTimeout(record.timeout or 0.0))
        context.ended = True  # code the job left running no longer reports into it
        try:
            last_report = self._last_report(context) if context.reported_progress else None
            log_lines = self._log_lines(context)
        except Exception:  # a fault of the engine's: the job's own outcome is recorded all the same
            logger.exception("job %s: its last progress report and log lines could not be taken;"
                             " its outcome is recorded without them", record.id)
            last_report, log_lines = None, ()
        finished = Finished(record, context, outcome, self._clock.monotonic() - attempt.started,
                            last_report=last_report, log_lines=log_lines)
        if not slot.abandoned:
            finished.settlement = self._recorder.decide(finished)
        return finished

    def _engine_fault(self, attempt: Attempt, exc: Exception) -> Finished:
        """The outcome of an attempt around which the engine's own code raised `exc`
        before the job's outcome was known (a bug: the job's errors are its outcome, the
        store's are retried): a failure with that error, decided when it is recorded
        (retried as the job's retry policy says). The thread goes on to its next job;
        left to end it, the job stayed RUNNING under this process and `stop` waited for
        the thread for ever."""
        record, context = attempt.record, attempt.context
        logger.error("job %s: the engine failed around its attempt; recorded as a failure", record.id,
                     exc_info=exc)
        with self._state.lock:
            attempt.deadline = None  # (as `_end_attempt` does): no timeout is the job's now
        context.ended = True
        return Finished(record, context, Outcome(error=exc, traceback=format_failure(exc)),
                        self._clock.monotonic() - attempt.started)

    def _start_locked(self, record: JobRecord, slot: Slot) -> Attempt:
        """Make `record` this slot's running attempt. Called with the lock held."""
        context = JobContext(record.id, record.name, record.attempts, self)
        now = self._clock.monotonic()
        # An isolated attempt's timeout is enforced by its runner, which kills the child;
        # only a thread's is enforced here, by abandoning the thread.
        isolated = record.isolation == "process"
        deadline = None if record.timeout is None or isolated else now + record.timeout
        attempt = Attempt(record, context, slot, deadline, now)
        self._state.running[record.id] = attempt
        if record.id in self._state.cancel_ids or record.cancel_requested:
            self._state.cancel_ids.discard(record.id)
            context.request_cancel()
        return attempt

    def _is_closed(self) -> bool:
        with self._state.lock:
            return self._state.closed

    def close(self) -> None:
        """End the child processes of isolated jobs, busy ones too (after `stop`): their
        attempts are not recorded. The dispatcher, if a stop that did not wait left it
        recording, gives up once it cannot (the repository closes next)."""
        with self._state.lock:
            self._state.closed = True
            self._state.dispatch_needed.notify()
        self._attempts.close()

    # -- ContextSink: reports from running jobs ---------------------------------------------
    def report_progress(self, context: JobContext, progress: float, message: str,
                        details: dict[str, Any]) -> None:
        if details and self._repo.persistent:  # checked here, in the job's thread: raises at its call
            serialization.encode(details, field="progress details", max_bytes=self._repo.max_payload_bytes)
            # A copy, lists and dicts in it too: it is written later, and shown meanwhile, as
            # it was when reported, whatever the job changes in them after. (A store that
            # is not persistent takes each report at once, and copies it itself.)
            details = copy_nested(details)
        self._progress.report(Report(context, progress, message, details))

    def _write_progress(self, report: Report) -> None:
        context = report.context
        self._repo.update_progress(context.id, self.worker_id, context.attempt, report.progress,
                                   report.message, report.details, self._clock.time())

    def _left_waiting(self, context: JobContext) -> tuple[Optional[Report], tuple[LogLine, ...]]:
        """What the attempt of `context`, given up at its timeout, left waiting here: its last
        progress report and its log lines, for the exchange recording its `JobTimeout` to
        store with it, as a worker hands on those of an attempt that ended (its thread,
        should it return, hands on nothing: its outcome is discarded)."""
        return self._last_report(context, given_up=True), self._log_lines(context, given_up=True)

    def _last_report(self, context: JobContext, given_up: bool = False) -> Optional[Report]:
        """The ended attempt's last progress report that may not be in its row yet, for the
        transaction recording its outcome to store (see `progress`). A store that cannot
        (not `stores_settlement_progress`) gets it here, before the outcome, as its own
        write; if it fails that, it is logged, and the outcome goes on. `given_up`: for
        an attempt given up at its timeout (see `_left_waiting`)."""
        report = self._progress.take(context, given_up=given_up)
        if report is None or self._repo.stores_settlement_progress:
            return report
        try:
            self._write_progress(report)
        except Exception as exc:  # the worker thread must go on to record the outcome
            logger.warning("could not store the last progress report of job %s: %s", context.id, exc)
        return None

    def report_log(self, context: JobContext, level: str, message: str) -> None:
        self._logs.report(context, (self._clock.time(), level, message))

    def _log_lines(self, context: JobContext, given_up: bool = False) -> tuple[LogLine, ...]:
        """The ended attempt's log lines still waiting (see `log_buffer`), for the
        transaction recording its outcome to store. A store that cannot
        (not `stores_settlement_logs`) gets them here, before the outcome, as a write of
        their own; if it fails that, it is logged, and the outcome goes on. An attempt
        given up at its timeout hands them on with its `JobTimeout` (`given_up`, see
        `_left_waiting`), not when its thread returns (that outcome is discarded)."""
        if context.abandoned and not given_up:
            return ()
        if self._repo.stores_settlement_logs:
            return self._logs.take(context, handing_on=True)
        lines = self._logs.take(context, handing_on=False)
        if lines:
            try:
                self._repo.add_logs(context.id, list(lines))
            except Exception as exc:  # the worker thread must go on to record the outcome
                logger.warning("could not store the last %d log lines of job %s: %s", len(lines), context.id, exc)
        return ()

    def flush_logs(self) -> None:
        """Store every log line waiting here (the housekeeper stopped)."""
        self._logs.flush_all()

    def land_logs(self, job_id: str) -> None:
        """Before a read of the job's log: its lines logged so far are stored (see
        `LogBuffer.land`)."""
        self._logs.land(job_id)

    # -- single-step mode ----------------------------------------------------------------------
    def run_pending(self, limit: Optional[int] = None) -> int:
        """Run ready jobs one by one in the calling thread until none is ready (or `limit`
        ran); returns how many ran. No timeouts: see `SingleStep.run_pending`."""
        return self._single_step.run_pending(limit)

    # -- progress reports -------------------------------------------------------------------
    def progress_mark(self) -> int:
        """A mark to take before reading a job's row, for `latest_progress`."""
        return self._progress.mark()

    def latest_progress(self, job_id: str, since: int) -> Optional[Report]:
        """The latest progress report of a job running here that may not be in its row yet
        (its outcome not recorded either), if any, for a row read after `since` (a
        `progress_mark`): see `ProgressWriter.latest`."""
        return self._progress.latest(job_id, since)

    # -- called by the housekeeper --------------------------------------------------------
    def flush_progress(self) -> Optional[float]:
        """Store the progress reports and log lines due (see `ProgressWriter.flush_due`,
        `LogBuffer.flush_due`); returns when the next are due (real monotonic seconds), or
        None."""
        reports, lines = self._progress.flush_due(), self._logs.flush_due()
        return lines if reports is None else reports if lines is None else min(reports, lines)

    def plan_progress(self, at: float) -> float:
        """The housekeeper is going to sleep until real monotonic `at`; returns when it
        must wake to store a progress report or log lines instead (see
        `ProgressWriter.plan`, `LogBuffer.plan`)."""
        return self._logs.plan(self._progress.plan(at))

    def time_out_overdue(self, now: float) -> Optional[float]:
        """Give up attempts past their deadline (monotonic `now`): their threads are
        abandoned and replaced, and a `JobTimeout` is recorded. Returns the earliest
        deadline still ahead, or None."""
        return self._pool_threads.time_out_overdue(now)

    def plan_upkeep(self, wake_at: float) -> float:
        """Note that the housekeeper, about to sleep until monotonic `wake_at`, looks for
        overdue attempts next then, or at the earliest deadline of those running if that is
        sooner (returned: when it must wake). An attempt starting with a deadline before
        that wakes it (`on_deadline`); the others do not (one wake-up per job of a stream
        with timeouts cost a quarter of the drain's rate)."""
        return self._pool_threads.plan_upkeep(wake_at)

    def hear_cancels(self) -> None:
        """Act on cancel requests made elsewhere (another process: the CLI, the dashboard,
        a web app's) for the jobs held here, read without renewing leases: the housekeeper
        asks when the store changed, so that they reach the job within a
        `discovery_interval` rather than at the next heartbeat (`poll_interval`)."""
        self._holdings.hear_cancels()

    def heartbeat(self) -> list[str]:
        """Renew the leases of the jobs held here and act on cancel requests made
        elsewhere; returns the ids held here. After a gap in which leases may have lapsed
        (see `claims`), buffered jobs that are no longer this pool's are dropped, unstarted."""
        return self._holdings.heartbeat()
