"""`Enqueuer`: how `JobManager.enqueue` and `enqueue_many` store and queue jobs.

It checks jobs against this manager (registered names, process isolation), turns them
into records, stores them (one transaction per call), registers a `Job.function` once its
job is stored, and queues the ready ones. On a
started manager, a job that can run at once goes straight to a worker: a plain job is
stored in an exchange of the pool's (`WorkerPool.exchange_inserting`), others through a
promised idle worker. It holds no state of its own but `started`; reading jobs back and
changing them is the manager's.
"""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Any, Callable, Iterable, Optional, Sequence

from .claims import claims_if_committed
from .clock import Clock
from .errors import InvalidJob, JobcoreError, UnknownFunction
from .execution import check_room_to_run_here
from .models import Job, JobStatus, function_qualname
from .records import record_for
from .registry import FunctionRegistry, LocalJobs
from .repository.base import JobRecord, JobRepository, QueueEntry
from .waiting import Settlements
from .workers import WorkerPool

logger = logging.getLogger("jobcore")


class Enqueuer:
    """The enqueueing half of one `JobManager`."""

    def __init__(self, repository: JobRepository, registry: FunctionRegistry, local: LocalJobs,
                 pool: WorkerPool, settlements: Settlements, clock: Clock, *, producer: bool,
                 immediate: bool, worker_id: str, lease_timeout: float,
                 ring: Callable[[Optional[Sequence[QueueEntry]]], None] = lambda entries: None) -> None:
        self._repo = repository
        self._ring = ring  # tells the other managers of this process on the store (see `Doorbell`)
        self._registry = registry
        self._local = local
        self._pool = pool
        self._settlements = settlements
        self._clock = clock
        self._producer = producer
        self._immediate = immediate  # each enqueue then runs what is ready, in its thread
        self.worker_id = worker_id
        self._lease_timeout = lease_timeout
        # Names `_bind_function` warned of (see `_warn_if_name_is_not_its_own`): each once.
        # A set.add under the GIL: two threads may both warn of one name, no more.
        self._warned: set[str] = set()
        # True while the manager's worker threads run: jobs may then be handed straight to
        # them. Written by the manager's start and stop (under its lifecycle lock), read
        # here without a lock: a stale True only offers a job to a stopping pool, which
        # refuses it, and the job is stored the usual way.
        self.started = False
        # True while the manager starts (from before its first read of the store until
        # `started`): jobs stored meanwhile are queued here (`_queues`). Left to that read,
        # one stored just after it was in no queue, and waited, beside idle workers, for
        # a periodic read. Written and read as `started` is.
        self.starting = False
        # True while `run_pending` runs jobs in this manager: the jobs they enqueue are
        # queued here too, to run in their order among those of the window it read.
        self.running_pending = False

    def enqueue_many(self, jobs: Iterable[Job]) -> list[str]:
        """Store and queue `jobs` in one transaction: all are accepted or none is. Returns
        their ids (for a `unique_key` already held by an unfinished job, that job's)."""
        jobs = list(jobs)
        if len(jobs) == 1:
            return [self.enqueue_one(jobs[0])]
        for job in jobs:
            if not isinstance(job, Job):
                raise TypeError(f"enqueue takes Job objects, got {type(job).__name__}")
            job.validate()
        if len({job.id for job in jobs}) != len(jobs):
            raise InvalidJob("id", "the same job appears twice in one batch")
        if self._immediate:
            check_room_to_run_here()  # before storing: a job stored but not run would stay PENDING
        self._settlements.forget(job.id for job in jobs)  # ids used again once deleted
        now = self._clock.time()
        records = [self.record_for(job, now) for job in jobs]
        ids = self._repo.insert(records, now)
        for job in jobs:
            self._bind_function(job)
        ready = [record.queue_entry() for job, record, job_id in zip(jobs, records, ids)
                 if self._stored(job, record, job_id)]
        self._ring_others(ready, now)
        if ready and self._queues():
            self._pool.enqueue_entries(ready)
        if self._immediate:
            self._pool.run_pending()
        return ids

    def enqueue_one(self, job: Job) -> str:
        """`enqueue_many` of one job: the same steps in the same order, without the loops
        and checks a batch needs (most enqueues are of one job)."""
        if not isinstance(job, Job):
            raise TypeError(f"enqueue takes Job objects, got {type(job).__name__}")
        job.validate()
        if self._immediate:
            check_room_to_run_here()  # before storing: a job stored but not run would stay PENDING
        self._settlements.forget((job.id,))  # its id used again once deleted
        now = self._clock.time()
        record = self.record_for(job, now)
        if self.started:
            handed = self._hand_off(job, record, now)
            if handed is not None:
                self._bind_function(job)
                if job.function is not None and self._registry.get(job.function_name) is job.function:  # type: ignore[arg-type]
                    self._local.drop_function(job.id, job.function)  # carried until then: see `_bind_function`
                return handed
        job_id = self._repo.insert([record], now)[0]
        self._bind_function(job)
        ready = (record.queue_entry(),) if self._stored(job, record, job_id) else ()
        self._ring_others(ready, now)
        if ready and self._queues():
            self._pool.enqueue_entries(ready)
        if self._immediate:
            self._pool.run_pending()
        return job_id

    def _ring_others(self, ready: Sequence[QueueEntry], now: float) -> None:
        """Hand the other managers of this process on the store the entries of the jobs
        just stored (every one not waiting on another: see `Doorbell.ring`). An immediate
        manager hands over only those it does not run before its `enqueue` returns (of a
        function it does not run, or due later): handed over too, or the others woken to
        look, another manager's workers ran some of the rest (1 in 3 handed over), some
        still running when `enqueue` returned."""
        if self._immediate:
            ready = [entry for entry in ready if (entry.run_at is not None and entry.run_at > now)
                     or not self._pool.runnable(entry)]
            if not ready:
                return
        self._ring(ready)

    def queue_here(self, entries: Iterable[QueueEntry]) -> bool:
        """Queue stored jobs for this manager's workers (those of functions it runs), if it
        queues them now (`_queues`): jobs a stop handed back, and those another manager of
        this process just stored (its ring: see `Doorbell.ring`). True if it does."""
        if not self._queues():
            return False
        self._pool.enqueue_entries(entries)
        return True

    def _queues(self) -> bool:
        """Whether jobs stored now are queued here: once the workers run (or at once for
        an immediate manager). Before `start`, a persistent store keeps them: `start` reads
        the best of it into the queue, a window at a time, as after a restart (queueing
        each here cost an enqueue a tenth of its time, and a producer, which nothing here
        takes jobs from, would keep an entry for every job it ever enqueued of a function
        registered here; `Job(function=...)` registers one). A manager not started on the
        memory store, whose windows would each sort every pending job, queues them
        (unless it is a producer): the store keeps each job whole here anyway."""
        return (self.started or self.starting or self._immediate or self.running_pending
                or not (self._producer or self._repo.persistent))

    def _stored(self, job: Job, record: JobRecord, job_id: str) -> bool:
        """After `record` was inserted as `job_id`: remember what the job carries here, and
        tell whether it is to be queued: ready or due later (False if it waits on
        dependencies or was cancelled). False too, with nothing remembered, when it was
        not stored: an unfinished job already holds its unique_key (`job_id` is that job's)."""
        if job_id != record.id:
            return False
        if self.started or self._immediate or not self._producer:  # a producer not started keeps nothing per job
            self._local.remember(job.id, self._local_function(job), job.retry_on)
        return record.blocked == 0 and record.status is not JobStatus.CANCELLED

    def _hand_off(self, job: Job, record: JobRecord, now: float) -> Optional[str]:
        """Store a job that can run at once and give it straight to an idle worker, claimed
        in the same step: no dispatcher round trip, so the job starts sooner. Returns its
        id, or None (nothing stored) when no worker is idle or the job must wait anyway."""
        if record.status is not JobStatus.PENDING or record.blocked or record.is_schedule:
            return None
        if (job.function is None and record.function_name not in self._registry
                and not self._pool.runnable(record.queue_entry())):
            return None  # (a job's own or a registered function runs here: the common cases, asked first)
        if (not record.depends_on and record.unique_key is None and self._repo.exchanges_on_enqueue
                and self._repo.inserts_in_exchanges):
            # No row to check it against: stored in an exchange of the pool's, claimed there
            # if a worker has room for it. What it carries is kept before (a worker may run
            # it at once), and put back as it was if it was not stored: its id may be
            # another job's, whose own must stay.
            before = self._local.kept(job.id)
            self._local.remember(job.id, self._local_function(job), job.retry_on)
            stored = False
            try:
                stored = self._pool.exchange_inserting(record, now)
            finally:
                if not stored:
                    self._local.put_back(job.id, before)  # stored the usual way next, or not at all
            return record.id if stored else None
        self._pool.enqueued_apart()
        claimed: Optional[JobRecord] = None
        calling = False  # the store's call began (it may commit, and be interrupted after)
        promised: list[bool] = []  # True once a worker's slot is promised: handed back below
        before = self._local.kept(job.id)
        try:
            if not self._pool.reserve_idle_worker(promised):
                return None
            self._local.remember(job.id, self._local_function(job), job.retry_on)
            calling = True
            job_id, claimed = self._repo.insert_claimed(
                record, self.worker_id, now, now + self._lease_timeout)
        except BaseException as exc:
            # Ctrl-C just after the commit (most land there) left the job claimed: the
            # store's row tells, and a worker runs it (it stayed RUNNING until its lease
            # lapsed). What the store raised means nothing was stored.
            if calling and not isinstance(exc, JobcoreError):
                claimed = next(iter(claims_if_committed(self._repo, self.worker_id, record, [], now) or []), None)
            if claimed is None:
                self._local.put_back(job.id, before)
            raise
        finally:
            if promised:
                self._pool.hand_off(claimed)
        if job_id != record.id:
            self._local.put_back(job.id, before)  # an unfinished job already holds its unique_key
        elif claimed is None and record.status is JobStatus.PENDING and not record.blocked:
            self._pool.enqueue_entries([record.queue_entry()])  # someone else holds it or will
        return job_id

    def record_for(self, job: Job, now: float) -> JobRecord:
        """The record that stores a validated `job` enqueued at `now`; raises if this manager
        cannot accept it (an unknown function name, a function a child process cannot run)."""
        name = job.function_name
        assert name is not None
        if job.function is None and name not in self._registry and not self._producer:
            raise UnknownFunction(name)
        if job.isolation == "process":
            from .isolation import isolation_problem  # multiprocessing: only when needed
            func = job.function or self._registry.get(name)
            problem = None if func is None else isolation_problem(func)
            if problem is not None:
                raise InvalidJob("isolation", f"{name!r} cannot run in a child process: {problem}")
        return record_for(job, now)

    def _bind_function(self, job: Job) -> None:
        """Register the job's `function` under its name if none is registered. Called once
        the job is accepted (stored): one refused leaves the registry as it was, and
        threads enqueueing at once have nothing to undo. Until then the name runs no
        function here, so a job handed straight to a worker carries its own
        (`_local_function`, as for a name bound to another callable)."""
        name = job.function_name
        current = None if name is None else self._registry.get(name)
        if job.function is not None and name is not None and current is not job.function:
            self._registry.register(name, job.function, replace=False)
            # (A name the application gave is its own to keep apart. `==`: each look-up of
            # a method makes a new bound method, equal to the last.)
            if self._repo.persistent and name not in self._warned and name == function_qualname(job.function):
                what = (_shared_name_kind(job.function) if current is None
                        else None if current == job.function else "another callable holds that name here")
                if what is not None:
                    self._warned.add(name)
                    _warn_of_shared_name(name, what)

    def _local_function(self, job: Job) -> Optional[Callable[..., Any]]:
        """The job's callable when its name runs another one here (two lambdas, say)."""
        if job.function is None or self._registry.get(job.function_name) is job.function:  # type: ignore[arg-type]
            return None
        return job.function


def _warn_of_shared_name(name: str, what: str) -> None:
    """Log that `name`, the name a persistent store keeps for a callable's jobs, does not
    lead back to that callable alone (`what` says why: a lambda, a nested function, a
    `functools.partial`, a method bound to an instance, a callable object, or another
    callable holds the name): after a restart, or in another process, those jobs run
    whatever callable is registered under `name` there (another lambda, another
    instance's method) without an error. Found by a review: a stored `charge` bound to
    Alice's account ran on Bob's once the restarted app enqueued one of Bob's."""
    logger.warning("jobs of %r are stored by that name only, and %s: after a restart, or in"
                   " another process, they run whatever callable is registered under that name"
                   " there. Register a module-level function with register_function(name, func)"
                   " and pass what differs as the job's arguments", name, what)


def _shared_name_kind(func: Callable[..., Any]) -> Optional[str]:
    """What `func` is, if its registered name (`function_qualname`) may name other
    callables too; None for a module-level function, class, classmethod or staticmethod."""
    if isinstance(func, functools.partial):
        return "it is a functools.partial (its bound arguments are not stored)"
    owner = getattr(func, "__self__", None)
    bound = inspect.ismethod(func) or (inspect.isbuiltin(func) and owner is not None and not inspect.ismodule(owner))
    if bound and not isinstance(owner, type):
        kind, what = ("method", "instance") if inspect.ismethod(func) else ("built-in method", "object")
        return f"it is a {kind} bound to one {type(owner).__name__} {what} (the {what} is not stored)"
    if bound and isinstance(owner, type) and func.__qualname__ != f"{owner.__qualname__}.{func.__name__}":
        return (f"it is a classmethod {owner.__name__} inherits (its name is {func.__qualname__}'s, which"
                f" runs on that class)")
    if not (inspect.isfunction(func) or inspect.ismethod(func) or inspect.isbuiltin(func)
            or isinstance(func, type)):
        return f"it is a callable {type(func).__name__} object (the object is not stored)"
    qualname = getattr(func, "__qualname__", "")
    if "<lambda>" in qualname:
        return "it is a lambda (every lambda of its module has that name)"
    if "<locals>" in qualname:
        return "it is defined inside another function (each definition has that name)"
    return None
