"""`JobManager`: the public face of jobcore — enqueue, poll, wait, cancel, retry, inspect.

It wires the parts together and answers for them: storing and queueing new jobs is the
`Enqueuer`'s (`enqueuing`), running them the `WorkerPool`'s (`workers`), starting and
stopping its threads the `Lifecycle`'s (`lifecycle`), scheduling of cron runs
`scheduler`'s, the reads that change nothing (poll, wait, list, stats, logs) its base
class `Inspection`'s (`inspection`), filling its queue from the store `QueueLoader`'s
(`loading`), checks of its arguments `arguments`'. It holds no job state of its own
beyond the `ReadyQueue` index (the repository is the source of truth).
"""

from __future__ import annotations

import functools
import os
import random
import socket
import threading
import uuid
from typing import Any, Callable, Iterable, Optional, TypeVar, Union, overload

from .arguments import LONGEST_PERIOD, count as _count, may_exist as _may_exist, positive as _positive
from .clock import SYSTEM_CLOCK, Clock
from .enqueuing import Enqueuer
from .errors import LONGEST_RETRY_DELAY, InvalidJobType
from .execution import check_room_to_run_here
from . import forgetting
from .forks import on_fork_in_child
from .models import Job, function_qualname
from .notifications import NotificationChannel
from .notify_dispatch import NotificationDispatcher
from .records import event_of
from .queue import ReadyQueue
from .registry import FunctionRegistry, LocalJobs
from .repository.base import CANCELLED_BY_REQUEST, CancelOutcome, JobRecord, Recovery
from .repository.factory import RepositoryLike, build_repository, default_database_path
from .retry import Classifier, is_transient
from .serialization import could_be_id
from .housekeeper import Housekeeper
from .inspection import Inspection
from .lifecycle import Lifecycle
from .loading import QueueLoader
from .waiting import Settlements
from .log_buffer import LOG_INTERVAL
from .workers import PoolSettings, WorkerPool

__all__ = ["JobManager", "RETRY_RULES", "LONGEST_PERIOD", "build_repository", "default_database_path"]

# A function registered (or decorated) and given back: its own type, so a checker still
# checks its calls.
FunctionT = TypeVar("FunctionT", bound=Callable[..., Any])

RETRY_RULES = ("only a failed or cancelled job can be re-queued, and not a cron schedule, a job"
               " whose dependency failed or was cancelled (retry that first), one that ended waiting"
               " on a dependency since deleted, or one whose unique_key another unfinished job holds")


def _new_worker_id() -> str:
    """An id for a manager of this process: host, pid and 8 random hex digits."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class JobManager(Inspection):
    """Runs jobs from a repository on worker threads; see SPEC for the full contract.

    `repository`: a `JobRepository`, a SQLite path, or None for `$JOBCORE_DB` or
    `./jobcore.db`. `max_workers` threads run jobs. `lease_timeout` (seconds) is how long a
    running job's claim lasts without a heartbeat. `producer=True` lets `enqueue` accept
    function names this manager has not registered (for workers elsewhere to run).
    `max_retry_delay` caps back-off; `retry_on` replaces the transient-error classifier;
    `clock` and `rng` let tests control time and jitter. `immediate=True` runs each job
    synchronously inside `enqueue` (as Celery's eager mode does; for tests), and
    `run_pending()` runs what is ready in the calling thread. `log_interval` (seconds, 0.1
    by default) is how long a job's log line may wait to be stored, with the attempt's
    other lines (one write) or its outcome; 0 stores each line before `log` returns. Use it
    as a context manager to start and stop it.
    """

    def __init__(self, repository: RepositoryLike = None, *, max_workers: int = 4,
                 lease_timeout: float = 60.0, producer: bool = False, poll_interval: float = 1.0,
                 discovery_interval: float = 0.05,
                 max_retry_delay: float = 3600.0, retry_on: Optional[Classifier] = None,
                 clock: Optional[Clock] = None, rng: Optional[random.Random] = None,
                 worker_id: Optional[str] = None, immediate: bool = False,
                 log_interval: float = LOG_INTERVAL) -> None:
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ValueError(f"max_workers must be an int >= 1, got {max_workers!r}")
        if retry_on is not None and not callable(retry_on):
            raise TypeError(f"retry_on must be a callable taking the exception, got {retry_on!r}")
        if rng is not None and not callable(getattr(rng, "uniform", None)):  # a seed given as 42, say
            raise TypeError(f"rng must be a random.Random (for a seed: random.Random(seed)), got {rng!r}")
        if clock is not None and not all(callable(getattr(clock, name, None))
                                         for name in ("time", "monotonic", "subscribe")):
            raise TypeError(f"clock must be a jobcore Clock (SystemClock, FakeClock), got {clock!r}")
        if worker_id is not None and not isinstance(worker_id, str):
            raise TypeError(f"worker_id must be a str, got {type(worker_id).__name__} {worker_id!r}")
        if worker_id is not None and not (worker_id and could_be_id(worker_id)):
            raise ValueError(f"worker_id must be non-empty, without NUL or lone surrogates, got {worker_id!r}")
        discovery_interval = _positive("discovery_interval", discovery_interval, most=LONGEST_PERIOD)
        settings = PoolSettings(
            max_workers=max_workers,
            lease_timeout=_positive("lease_timeout", lease_timeout, most=LONGEST_PERIOD),
            poll_interval=_positive("poll_interval", poll_interval, most=LONGEST_PERIOD),
            max_retry_delay=_positive("max_retry_delay", max_retry_delay, allow_zero=True, most=LONGEST_RETRY_DELAY),
            retry_on=retry_on or is_transient,
            log_interval=_positive("log_interval", log_interval, allow_zero=True, most=LONGEST_PERIOD),
        )
        # What a successor in a forked child is built with (`_successor`).
        self._options: dict[str, Any] = dict(
            max_workers=max_workers, lease_timeout=lease_timeout, producer=producer, poll_interval=poll_interval,
            discovery_interval=discovery_interval, max_retry_delay=max_retry_delay, retry_on=retry_on,
            clock=clock, immediate=immediate, log_interval=log_interval)
        self.repository = build_repository(repository)
        self.producer = bool(producer)
        self.immediate = bool(immediate)
        self.max_workers = max_workers
        self.lease_timeout = settings.lease_timeout
        self._made_id = worker_id is None  # (one given is the caller's to keep unique)
        self.worker_id = _new_worker_id() if worker_id is None else worker_id
        self._clock = SYSTEM_CLOCK if clock is None else clock
        self._registry = FunctionRegistry()
        self._local = LocalJobs()
        self._queue = ReadyQueue(self._clock)
        self._notifier = NotificationDispatcher()
        self._settlements = Settlements()  # jobs settled here, and `wait`'s sleepers
        self._pool = WorkerPool(self.repository, self._queue, self._registry, self._local, self._clock,
                                settings, self.worker_id, self._publish, self._settlements.note,
                                functools.partial(self._settlements.mark, noted=True),
                                random.Random() if rng is None else rng)
        self._loader = QueueLoader(self.repository, self._registry, self._pool, self._queue,
                                   bounded=not self.immediate)
        self._load_queue = self._loader.load
        self._housekeeper = Housekeeper(self.repository, self._pool, self._clock, settings,
                                        self._loader.spaced_reload,
                                        discovery_interval,
                                        self._recovered,
                                        stocked=self._loader.stocked, glance=self._loader.glance)
        self._enqueuer = Enqueuer(self.repository, self._registry, self._local, self._pool,
                                  self._settlements, self._clock, producer=self.producer,
                                  immediate=self.immediate, worker_id=self.worker_id,
                                  lease_timeout=self.lease_timeout, ring=self._housekeeper.ring)
        self._pool.on_handed_back = self._enqueuer.queue_here
        self._housekeeper.offered = self._enqueuer.queue_here
        self._queue.running_low = self._housekeeper.refill_soon
        # Starting and stopping the threads, and a forked child's reset of every part.
        self._lifecycle = Lifecycle(self.repository, self._clock, self._pool, self._housekeeper, self._enqueuer,
                                    self._notifier, (self._pool, self._queue, self._settlements, self._registry,
                                                     self._local, self._housekeeper, self._notifier),
                                    immediate=self.immediate, worker_id=self.worker_id,
                                    load_queue=self._load_queue)
        on_fork_in_child(self, "_forked")
        self._store_key = self.repository.store_key  # (as it was when the manager joined)
        forgetting.join(self._store_key, self._forget_deleted)

    def _forked(self) -> None:
        """In a forked child: a worker id of this process's own (unless one was given).
        Children of a process that built the manager (gunicorn's `--preload`) each start
        it: under the parent's id, their claims were one worker's, and the first child
        found gone took the live ones' jobs back, which then ran twice at once."""
        if self._made_id:
            self.worker_id = _new_worker_id()
            self._pool.rename(self.worker_id)
            self._enqueuer.worker_id = self._lifecycle.worker_id = self.worker_id

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "JobManager":
        """Start the workers; jobs already stored (pending, scheduled) run, and jobs whose
        leases expired once a lease period has passed (see `LeaseTiming`).

        After a `stop` that did not wait, the threads of the earlier start take no part:
        see `WorkerPool.start` and `Housekeeper.start`. An `immediate` manager starts no
        threads: it runs jobs inside `enqueue`.

        Called while a `stop` in another thread waits for the jobs, it waits for that stop
        to return, then starts. Raises RuntimeError where that would wait for itself:
        from inside one of this manager's jobs (while such a stop waits), and on a thread
        already inside `start` or `stop` (a signal handler that interrupted it).

        If it fails (the store failing as it registers this manager as a worker, say), it
        raises with nothing started: no job runs, and a later `start` may try again.

        After `close()` it raises RuntimeError, on every store: a closed manager is unusable.

        In the child process of an isolated job it does nothing: a job's module imported
        there (which may start a manager, or call `register_job_function`) must not run
        workers that claim other jobs inside a process a timeout or cancel ends."""
        self._lifecycle.start()
        return self

    def stop(self, wait: bool = True, timeout: Optional[float] = None) -> None:
        """Stop taking jobs; with `wait`, let running jobs finish (up to `timeout` s).

        Jobs still running when it returns (`timeout` ran out, or not `wait`) go on in
        their threads, and this process keeps renewing their leases until they end and
        records their outcomes then: no other worker runs them meanwhile. `close()` (or
        the process exiting) ends that; their leases then lapse and they are taken back.
        Outcomes the repository fails to record for `lease_timeout` while stopping (a
        server down) are given up, logged by job id: their jobs are taken back and run
        again. So a stop without a timeout never waits for the store to come back.

        Several may run at once (threads, a supervisor's deadline): each waits for the
        running jobs up to its own `timeout`. Called again on a thread already inside
        `start` or `stop` (a signal handler that interrupted it), it returns at once,
        changing nothing: the call under way goes on. On one that interrupted an
        `enqueue`'s exchange, it does not wait for the last recording of the outcomes,
        which waits for that exchange: it is made once the handler returned, and the next
        `stop` (or `close`) waits for it. After a stop interrupted while it waited
        (Ctrl-C), the next `stop` finishes it.

        From inside one of this manager's jobs, only `stop(wait=False)`: with `wait` it
        would wait for that job, its own caller (RuntimeError; stop it from another
        thread). Called by a notification channel, it does not wait for the events still
        being delivered."""
        if timeout is not None:
            timeout = _positive("timeout", timeout, allow_zero=True)
        self._lifecycle.stop(wait, timeout)

    def _successor(self) -> "JobManager":
        """A manager not started, for this process, on the same repository, with this
        one's settings, the functions registered on it and its notification channels
        (the default manager of a process forked while it ran). Here, not in `Lifecycle`:
        lifecycle.py does not import manager.py."""
        successor = JobManager(self.repository, **self._options)
        for name in self._registry.names:
            successor.register_function(name, self._registry.get(name))
        for channel in self._notifier.channels:
            successor.add_notification_channel(channel)
        return successor

    def close(self) -> None:
        """Stop, and release the repository, child processes and notification threads.
        Jobs a `stop` that did not wait left running here have their leases renewed no
        more: they are taken back once those expire.

        Raises RuntimeError, changing nothing, where it would wait for itself: called by
        a notification channel (for its own delivery thread to end: call `stop()` there
        instead), from inside one of this manager's jobs (call `stop(wait=False)` there),
        or on a thread already inside `start` or `stop` (a signal handler)."""
        self._lifecycle.close(self.stop, self._settlements.close)  # (`wait`'s poller thread ends)

    @property
    def running(self) -> bool:
        """True between `start` and `stop`."""
        return self._lifecycle.running

    @property
    def workers(self) -> list[threading.Thread]:
        """The live worker threads."""
        return self._pool.threads

    def __enter__(self) -> "JobManager":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _recovered(self, recovery: Recovery) -> None:
        """Queue jobs taken back from dead workers; announce those that ended for good."""
        self._pool.enqueue_entries(recovery.requeued)
        if recovery.requeued:
            self._housekeeper.ring()  # (another manager of this process may run them)
        for event, ids in (("job.dead_lettered", recovery.failed), ("job.cancelled", recovery.cancelled)):
            for job_id in ids:
                self._settlements.mark([(job_id, None)])
                record = self.repository.get(job_id)
                if record is not None:
                    self._publish(event, record, {"error": record.error, "error_type": record.error_type})

    # -- functions -----------------------------------------------------------------------------
    @overload
    def register_function(self, name: FunctionT, func: None = None) -> FunctionT: ...

    @overload
    def register_function(self, name: str, func: None = None) -> Callable[[FunctionT], FunctionT]: ...

    @overload
    def register_function(self, name: str, func: FunctionT) -> FunctionT: ...

    def register_function(self, name: Union[str, Callable[..., Any]], func: Optional[Callable[..., Any]] = None) -> Any:
        """Let jobs naming `name` run `func`. Without `func`, returns a decorator. Given a
        function alone (`register_function(f)`, or `@register_function` bare), registers it
        under its `module.qualname`, the name `Job(function=f)` gives it, and returns it."""
        if callable(name):
            if func is not None:
                raise InvalidJobType("function_name", f"must be a str, got {name!r}")
            func, name = name, function_qualname(name)
        if func is None:
            def decorator(target: Callable[..., Any]) -> Callable[..., Any]:
                self.register_function(name, target)
                return target
            return decorator
        self._registry.register(name, func)
        if self._lifecycle.running:
            self._load_queue()
        return func

    def periodic(self, cron: str, *, name: Optional[str] = None, timezone: Optional[str] = None,
                 run_at_startup: bool = False, **job_options: Any) -> Callable[[FunctionT], FunctionT]:
        """Decorator: register the function and keep one cron schedule running it.

            @manager.periodic("*/15 * * * *")
            def send_reminders(): ...

        The schedule is keyed by the function's name, so restarts reuse it rather than
        adding another; if the expression changed, the old schedule is replaced.
        `run_at_startup` also enqueues one run now. Other keywords go to `Job`."""
        def decorator(func: FunctionT) -> FunctionT:
            function_name = name or function_qualname(func)
            self.register_function(function_name, func)
            self._ensure_schedule(function_name, cron, timezone, job_options)
            if run_at_startup:
                self.enqueue(Job(function_name=function_name, **job_options))
            return func
        return decorator

    def _ensure_schedule(self, function_name: str, cron: str, timezone: Optional[str],
                         job_options: dict[str, Any]) -> str:
        key = f"jobcore:schedule:{function_name}"
        job = Job(function_name=function_name, cron=cron, cron_timezone=timezone, unique_key=key,
                  **job_options)
        schedule_id = self.enqueue(job)
        existing = self.repository.get(schedule_id)
        if schedule_id != job.id and existing is not None and (
                existing.cron, existing.cron_timezone) != (cron, timezone):
            self.cancel(schedule_id)
            schedule_id = self.enqueue(Job(function_name=function_name, cron=cron, cron_timezone=timezone,
                                           unique_key=key, **job_options))
        return schedule_id

    # -- enqueueing -------------------------------------------------------------------------------
    def enqueue(self, job: Job) -> str:
        """Validate, persist and queue `job`; return its id (or, for a `unique_key` already
        held by an unfinished job, that job's id)."""
        return self._enqueuer.enqueue_one(job)

    def enqueue_many(self, jobs: Iterable[Job]) -> list[str]:
        """Enqueue several jobs in one transaction: all are accepted or none is."""
        return self._enqueuer.enqueue_many(jobs)

    def run_pending(self, limit: Optional[int] = None) -> int:
        """Run ready jobs synchronously in this thread until none is ready (or `limit`
        ran), firing due schedules; returns how many ran. For tests: with a `FakeClock`,
        `clock.advance(...)` then `run_pending()` runs retries and scheduled jobs that came
        due. Timeouts are not enforced (except a process-isolated job's, whose child process is
        ended at its timeout). Not for a started (threaded) manager."""
        if self._lifecycle.running and not self.immediate:
            raise RuntimeError("run_pending() is for managers that are not started (or immediate ones)")
        if limit is not None:
            _count("limit", limit)
        check_room_to_run_here()  # a job it runs may call it again, and so on
        ran, enqueuer = 0, self._enqueuer
        was, enqueuer.running_pending = enqueuer.running_pending, True  # (see `Enqueuer.running_pending`)
        try:
            with self._housekeeper.hearing_cancels():
                while True:  # a window of the store at a time
                    self._load_queue()
                    ran_now = self._pool.run_pending(None if limit is None else limit - ran)
                    ran += ran_now
                    # Until a window runs nothing: the jobs run may have stored others ready now
                    # (a retry inside a job, a dependent released), which a persistent store
                    # keeps no note of here.
                    if not ran_now or (limit is not None and ran >= limit):
                        return ran
        finally:
            enqueuer.running_pending = was

    # -- changing ------------------------------------------------------------------------------------
    def cancel(self, job_id: str) -> bool:
        """Cancel a job: pending or scheduled at once; running by request (the job stops
        at its next progress report or `check_cancelled`). False if unknown or finished."""
        if not _may_exist(job_id):
            return False
        outcome, cascade = self.repository.cancel(job_id, self._clock.time(), CANCELLED_BY_REQUEST)
        if outcome is CancelOutcome.REQUESTED:
            if not self._pool.request_cancel(job_id):
                self._housekeeper.ring_cancel(job_id)  # another manager of this process may run it
            return True
        if outcome is CancelOutcome.CANCELLED:
            ended = (job_id, *cascade.cancelled)
            self._queue.discard(ended)  # a timer of theirs would only fail to claim
            for cancelled in ended:
                self._local.ended(cancelled)
                self._settlements.mark([(cancelled, None)])
            return True
        return False

    def retry(self, job_id: str) -> bool:
        """Re-queue a FAILED or CANCELLED job with its attempts reset; False otherwise
        (see RETRY_RULES)."""
        if not self._retry(job_id):
            return False
        self._housekeeper.ring()  # (another manager of this process may run it, or be free to)
        return True

    def _retry(self, job_id: str) -> bool:
        """`retry`, telling no other manager of the process."""
        if not _may_exist(job_id):
            return False
        now = self._clock.time()
        before = self.repository.get(job_id)
        entry = self.repository.requeue(job_id, now)
        if entry is None or before is None:
            return False
        last = f" after {before.error_type}: {before.error}" if before.error_type else ""
        self.repository.add_log(job_id, "info", f"re-queued by request{last} (attempts reset)", now)
        self._queue.discard([job_id])  # an entry it had before it ended (a timer) is stale
        self._enqueuer.queue_here([entry])
        return True

    def retry_dead_letters(self, limit: Optional[int] = None) -> list[str]:
        """Re-queue every job in the dead-letter queue (newest first, up to `limit`);
        returns the ids re-queued."""
        retried = [job.id for job, _ in self.get_dead_letter_queue(limit) if self._retry(job.id)]
        if retried:
            self._housekeeper.ring()  # once (rung per job, 5,000 made the other managers read 5,000 times)
        return retried

    def cleanup_old_results(self, retention_days: float = 7) -> int:
        """Delete terminal jobs finished more than `retention_days` ago (0: all terminal
        jobs); returns how many were deleted."""
        days = _positive("retention_days", retention_days, allow_zero=True, unit="days")
        before = None if days == 0 else self._clock.time() - days * 86400.0
        try:
            return self.repository.delete_finished(before)
        finally:  # (a cleanup that failed part of the way may have deleted some)
            # `wait` on a deleted job must not find it here, nor in another manager of
            # this process on the store (`forgetting`).
            self._forget_deleted()
            forgetting.deleted(self._store_key, self._forget_deleted)

    def _forget_deleted(self) -> None:
        """Finished jobs of the store were deleted (by this manager or another of the
        process): forget the completions remembered, and any committed before the delete
        and noted after it (the time read after it: see `Settlements.forget_all`)."""
        self._settlements.forget_all(self._clock.time())

    # -- notifications -------------------------------------------------------------------------------
    def add_notification_channel(self, channel: NotificationChannel) -> None:
        """Send engine events (at least dead-lettered jobs) to `channel.send(event)`."""
        self._notifier.add(channel)

    def _publish(self, event: str, record: JobRecord, details: dict[str, Any]) -> None:
        if self._notifier.channels:
            self._notifier.publish(event_of(event, record, details, self._clock.time()))

    def __repr__(self) -> str:
        state = "running" if self._lifecycle.running else "stopped"
        return f"<JobManager {self.worker_id} {state} workers={self.max_workers} repository={self.repository!r}>"
