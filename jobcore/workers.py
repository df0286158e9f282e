"""`WorkerPool`: the threads that claim, run and settle jobs; timeouts hand slots on.

Worker threads pop ids from the `ReadyQueue`, claim them in the repository and run them;
the outcome is settled here (completed, retried, dead-lettered, cancelled). Timeouts hand
a stuck thread's slot to a fresh thread. The periodic work (leases, recovery, discovery)
is the `Housekeeper`'s. It depends on the repository interface only.
"""

from __future__ import annotations

import logging
import random
import threading
import traceback as traceback_module
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from .clock import Clock
from .context import JobContext
from .errors import JobTimeout, PermanentError, RepositoryError, RetryableError
from .execution import Outcome, run_attempt
from .queue import ReadyQueue
from .registry import FunctionRegistry, LocalJobs
from .repository.base import Cascade, JobRecord, JobRepository, QueueEntry
from .retry import Classifier, retry_delay, should_retry
from .scheduler import ScheduleFirer

logger = logging.getLogger("jobcore.workers")

Publisher = Callable[[str, JobRecord, dict[str, Any]], None]


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
    started: float = field(default=0.0)


class WorkerPool:
    """Runs jobs from a `ReadyQueue` on `max_workers` threads (see module docstring)."""

    def __init__(self, repository: JobRepository, queue: ReadyQueue, registry: FunctionRegistry,
                 local: LocalJobs, clock: Clock, settings: PoolSettings, worker_id: str,
                 publish: Publisher, on_settled: Callable[[str], None], rng: random.Random) -> None:
        self._repo = repository
        self._queue = queue
        self._registry = registry
        self._local = local
        self._clock = clock
        self._settings = settings
        self.worker_id = worker_id
        self._publish = publish
        self._on_settled = on_settled
        self._rng = rng
        self._scheduler = ScheduleFirer(repository, clock, self.enqueue_entries)
        # _lock guards _running, _threads, _abandoned, _next_slot and _stopping.
        self._lock = threading.Lock()
        self._running: dict[str, _Attempt] = {}
        self._threads: list[threading.Thread] = []
        self._abandoned = 0
        self._next_slot = 0
        self._stopping = True
        self.on_deadline: Callable[[], None] = lambda: None  # set by the housekeeper

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker threads."""
        with self._lock:
            self._stopping = False
            self._threads = []
            for _ in range(self._settings.max_workers):
                self._spawn_locked()

    def _spawn_locked(self) -> None:
        slot = _Slot(self._next_slot)
        self._next_slot += 1
        thread = threading.Thread(target=self._work, args=(slot,), daemon=True,
                                  name=f"jobcore-worker-{slot.index}")
        self._threads.append(thread)
        thread.start()

    def stop(self, timeout: Optional[float]) -> bool:
        """Stop after running jobs finish; wait up to `timeout`. True if all threads ended."""
        with self._lock:
            self._stopping = True
            threads = [t for t in self._threads]
        deadline = None if timeout is None else self._clock.monotonic() + timeout
        for thread in threads:
            remaining = None if deadline is None else max(0.0, deadline - self._clock.monotonic())
            thread.join(remaining)
        return not any(t.is_alive() for t in threads)

    @property
    def threads(self) -> list[threading.Thread]:
        """The live worker threads (abandoned, stuck ones excluded)."""
        with self._lock:
            return [t for t in self._threads if t.is_alive()]

    @property
    def abandoned_threads(self) -> int:
        """Threads still stuck in an attempt that timed out."""
        with self._lock:
            return self._abandoned

    def running_ids(self) -> list[str]:
        with self._lock:
            return list(self._running)

    def request_cancel(self, job_id: str) -> bool:
        """Signal a job running here to stop; False if it is not running here."""
        with self._lock:
            attempt = self._running.get(job_id)
        if attempt is None:
            return False
        attempt.context.request_cancel()
        return True

    def runnable(self, entry: QueueEntry) -> bool:
        """True if this process can run (or fire) the queued job."""
        return (entry.is_schedule or entry.function_name in self._registry
                or self._local.function(entry.job_id) is not None)

    def enqueue_entries(self, entries: Any) -> None:
        """Queue entries this process can run (ready now, or as timers)."""
        now = self._clock.time()
        for entry in entries:
            if self.runnable(entry):
                due = entry.run_at if entry.run_at is not None and entry.run_at > now else None
                self._queue.push(entry, due)

    # -- worker threads -------------------------------------------------------------------
    def _work(self, slot: _Slot) -> None:
        while True:
            entry = self._queue.pop()
            if entry is None:
                return
            if entry.is_schedule:
                self._fire_schedule(entry)
                continue
            now = self._clock.time()
            try:
                record = self._repo.claim(entry.job_id, self.worker_id, now,
                                          now + self._settings.lease_timeout)
            except RepositoryError as exc:
                logger.error("could not claim job %s, retrying in 1s: %s", entry.job_id, exc)
                self._queue.push(entry, now + 1.0)
                continue
            if record is None:
                continue  # cancelled, claimed elsewhere, or not due: the repository decides
            if not self._run(record, slot):
                return  # a timeout gave this thread's slot to a fresh thread

    def _fire_schedule(self, entry: QueueEntry) -> None:
        try:
            self._scheduler.fire(entry)
        except RepositoryError as exc:
            logger.error("could not fire schedule %s, retrying in 1s: %s", entry.job_id, exc)
            self._queue.push(entry, self._clock.time() + 1.0)
        except Exception:  # a broken schedule must not kill the worker
            logger.exception("schedule %s failed to fire", entry.job_id)

    def _run(self, record: JobRecord, slot: _Slot) -> bool:
        context = JobContext(record.id, record.name, record.attempts, self)
        timeout = record.timeout
        now = self._clock.monotonic()
        attempt = _Attempt(record, context, slot, None if timeout is None else now + timeout, now)
        with self._lock:
            self._running[record.id] = attempt
        if attempt.deadline is not None:
            self.on_deadline()
        if record.cancel_requested:
            context.request_cancel()
        func = self._local.function(record.id) or self._registry.get(record.function_name)
        if record.decode_error is not None:
            outcome = Outcome(error=_CorruptJob(record.decode_error))
        elif func is None:
            outcome = Outcome(error=_NotRegistered(f"no function registered as {record.function_name!r}"))
        else:
            outcome = run_attempt(func, record.args, record.kwargs, context)
        with self._lock:
            if slot.abandoned:
                self._abandoned -= 1
                logger.warning("job %s returned after its timeout; its outcome is discarded", record.id)
                return False
            del self._running[record.id]
        self._settle(attempt, outcome)
        return True

    # -- ContextSink: reports from running jobs ---------------------------------------------
    def report_progress(self, context: JobContext, progress: float, message: str,
                        details: dict[str, Any]) -> None:
        self._repo.update_progress(context.id, self.worker_id, context.attempt, progress, message,
                                   details, self._clock.time())

    def report_log(self, context: JobContext, level: str, message: str) -> None:
        self._repo.add_log(context.id, level, message, self._clock.time())

    # -- settling outcomes ------------------------------------------------------------------
    def _settle(self, attempt: _Attempt, outcome: Outcome) -> None:
        record = attempt.record
        ran_for = self._clock.monotonic() - attempt.started
        try:
            if outcome.succeeded:
                try:
                    note = f"attempt {record.attempts} completed" if record.attempts > 1 else None
                    cascade = self._persist(lambda: self._repo.complete(
                        record.id, self.worker_id, record.attempts, outcome.value, self._clock.time(), note))
                except (TypeError, ValueError) as exc:  # the result cannot be stored
                    outcome = Outcome(error=exc, traceback=traceback_module.format_exc())
                else:
                    self._finish(record, cascade, "job.completed", {"result": outcome.value})
                    return
            if outcome.cancelled or attempt.context.cancelled:
                cascade = self._persist(lambda: self._repo.finish_cancelled(
                    record.id, self.worker_id, record.attempts, self._clock.time()))
                self._finish(record, cascade, "job.cancelled", {"error": "cancelled while running"})
                return
            self._fail(record, outcome, ran_for)
        except RepositoryError as exc:
            logger.error("could not record the outcome of job %s (its lease will expire and it"
                         " will run again): %s", record.id, exc)
        finally:
            self._on_settled(record.id)

    def _fail(self, record: JobRecord, outcome: Outcome, ran_for: float) -> None:
        exc = outcome.error
        assert exc is not None
        error = str(exc) or repr(exc)
        error_type = type(exc).__name__
        classifier = self._local.retry_on(record.id) or self._settings.retry_on
        try:
            transient = should_retry(exc, classifier)
        except Exception:  # a broken classifier must not kill the worker
            logger.exception("retry classifier failed on job %s; treating the error as permanent", record.id)
            transient = False
        now = self._clock.time()
        retry_at = None
        if transient and record.attempts <= record.max_retries:
            delay = exc.delay if isinstance(exc, RetryableError) and exc.delay is not None else None
            if delay is None:
                delay = retry_delay(record.attempts, delay=record.retry_delay, backoff=record.retry_backoff,
                                    jitter=record.retry_jitter, max_delay=self._settings.max_retry_delay,
                                    rng=self._rng)
            retry_at = now + delay
            note = (f"attempt {record.attempts} failed after {ran_for:.3f}s: {error_type}: {error};"
                    f" retry {record.attempts} of {record.max_retries} in {delay:.3f}s")
        else:
            why = "no retries left" if transient else "permanent error"
            note = f"attempt {record.attempts} failed after {ran_for:.3f}s: {error_type}: {error}; {why}"
        cascade = self._persist(lambda: self._repo.fail(
            record.id, self.worker_id, record.attempts, error=error, error_type=error_type,
            traceback=outcome.traceback, now=now, retry_at=retry_at, note=note))
        details = {"error": error, "error_type": error_type, "traceback": outcome.traceback}
        if retry_at is None:
            self._finish(record, cascade, "job.dead_lettered", details)
        elif cascade is not None:
            self._queue.push(record.queue_entry(), retry_at)
            self._publish("job.retrying", record, {**details, "retry_at": retry_at})

    def _finish(self, record: JobRecord, cascade: Optional[Cascade], event: str,
                details: dict[str, Any]) -> None:
        if cascade is None:
            logger.warning("job %s was no longer held by this worker; its outcome is discarded", record.id)
            return
        self._local.forget(record.id)
        self.enqueue_entries(cascade.released)
        for job_id in cascade.cancelled:
            self._local.forget(job_id)
            self._on_settled(job_id)
        self._publish(event, record, details)

    def _persist(self, write: Callable[[], Any]) -> Any:
        """Run a repository write, retrying storage errors with back-off for a while."""
        delay, waited = 0.05, 0.0
        while True:
            try:
                return write()
            except RepositoryError as exc:
                if waited >= self._settings.lease_timeout / 2:
                    raise
                logger.warning("repository write failed, retrying in %.2fs: %s", delay, exc)
                threading.Event().wait(delay)
                waited += delay
                delay = min(delay * 2, 2.0)

    # -- called by the housekeeper --------------------------------------------------------
    def time_out_overdue(self, now: float) -> Optional[float]:
        """Give up attempts past their deadline (monotonic `now`); return the earliest
        deadline still ahead, or None."""
        with self._lock:
            overdue = [a for a in self._running.values() if a.deadline is not None and a.deadline <= now]
            ahead = [a.deadline for a in self._running.values() if a.deadline is not None and a.deadline > now]
        for attempt in overdue:
            self._time_out(attempt)
        return min(ahead) if ahead else None

    def heartbeat(self) -> list[str]:
        """Renew the leases of the jobs running here and act on cancel requests made
        elsewhere; returns the ids running here."""
        ids = self.running_ids()
        if ids:
            now = self._clock.time()
            for job_id in self._repo.heartbeat(self.worker_id, ids, now + self._settings.lease_timeout, now):
                self.request_cancel(job_id)
        return ids

    @property
    def idle(self) -> bool:
        """True when nothing runs here and nothing is queued: time to look for work."""
        with self._lock:
            busy = bool(self._running)
        return not busy and len(self._queue) == 0

    def _time_out(self, attempt: _Attempt) -> None:
        record = attempt.record
        with self._lock:
            if self._running.get(record.id) is not attempt:
                return  # it finished meanwhile
            del self._running[record.id]
            attempt.slot.abandoned = True
            attempt.context.abandoned = True
            self._abandoned += 1
            if not self._stopping:
                self._spawn_locked()  # capacity stays max_workers
        timeout = record.timeout or 0.0
        logger.warning("job %s exceeded its timeout of %.3fs; its thread is abandoned", record.id, timeout)
        error = JobTimeout(timeout)
        try:
            self._fail(record, Outcome(error=error, traceback=None), timeout)
        except RepositoryError as exc:
            logger.error("could not record the timeout of job %s: %s", record.id, exc)
        finally:
            self._on_settled(record.id)


class _CorruptJob(PermanentError):
    """A stored job that cannot be decoded (reported as error_type `CorruptJob`)."""


class _NotRegistered(PermanentError):
    """A claimed job whose function is not registered here."""


_CorruptJob.__name__ = "CorruptJob"
_NotRegistered.__name__ = "UnknownFunction"
