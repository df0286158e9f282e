"""`Inspection`: what `JobManager` answers without changing any job (poll, wait, lists,
stats, logs, workers); it enqueues, cancels, retries, starts and stops nothing (a `wait`
may start the manager's `jobcore-waits` poller thread: see `polling`).

It is `JobManager`'s base class: the manager's `__init__` sets the attributes declared
here, which these reads only read. It imports nothing of `manager`.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Callable, Iterable, Optional, TypeVar, Union

from .arguments import count as _count, may_exist as _may_exist, positive as _positive
from .clock import Clock, real_monotonic, real_sleep
from .errors import JobNotFound, RepositoryError
from .lifecycle import Lifecycle
from .models import Job, JobResult, JobStatus, LogEntry
from .records import job_of, local_datetime, result_of
from .registry import FunctionRegistry, LocalJobs
from .repository.base import JobRecord, JobRepository, WorkerInfo
from .repository.values import copy_nested
from .serialization import could_be_id, storable
from .waiting import Settlements
from .workers import WorkerPool

__all__ = ["Inspection"]

T = TypeVar("T")

if TYPE_CHECKING:
    class _Parts:
        """What `JobManager.__init__` sets and these reads read (for type checkers only:
        at run time the base is `object`, and `help(JobManager)` shows no trace of it)."""
        repository: JobRepository
        worker_id: str
        lease_timeout: float
        _registry: FunctionRegistry
        _local: LocalJobs
        _settlements: Settlements
        _pool: WorkerPool
        _lifecycle: Lifecycle
        _clock: Clock
else:
    _Parts = object


class Inspection(_Parts):
    """The read-only side of `JobManager`: jobs, dead letters, counts, logs, workers."""

    __slots__ = ()  # (`JobManager` has the instance dict, as before this base was split off)

    def poll(self, job_id: str) -> Optional[JobResult]:
        """The job's current state, or None for an unknown id."""
        if not _may_exist(job_id):
            return None
        # Completed here lately: answered without reading the row, as `wait` answers. A loop
        # polling each job of a drain in turn read every row, and each read handed the GIL
        # to a worker and waited to win it back (drain 0.36× of the plain one on SQLite).
        completed = self._settlements.completed(job_id)
        if completed is not None:
            return completed
        if self._lifecycle.running and _spins_on(self, job_id):
            settled = self._spin_pause(job_id)
            if settled is not None:
                return settled
        since = self._pool.progress_mark()
        record = self.repository.get_without_args(job_id)
        if record is None:
            return None
        if self._lifecycle.running and not record.status.is_terminal:
            _polled.last = (id(self), job_id, real_monotonic())
            self._waits_in_a_loop()  # the caller will likely poll again: let the workers run it meanwhile
        return result_of(self._with_latest_progress(record, since))

    def _spin_pause(self, job_id: str) -> Optional[JobResult]:
        """For a loop polling `job_id` without a pause (see `_spins_on`): sleep for
        SPIN_PAUSE, or until the job ends if this process holds it (woken as `wait` is),
        and return it if it ended. Spinning, the loop read the row and handed the GIL over
        at each turn: every worker's call into SQLite gave the GIL to it, and each
        hand-over between threads costs tens of microseconds (on SQLite, a drain polled
        job by job ran at 0.36× of the plain one, and one whose last job was polled until
        done at about 0.55×). A job held here is seen to end as soon as `wait` would see it; any
        other change up to SPIN_PAUSE later."""
        if not self._pool.settles_here(job_id):  # queued, or another process's
            self._pool.caller_waits()
            real_sleep(SPIN_PAUSE)
            return None
        try:
            return self.wait(job_id, SPIN_PAUSE)
        except (TimeoutError, JobNotFound, RepositoryError):
            return None  # not ended: read now (a manager closed meanwhile is told by that read)

    def wait(self, job_id: str, timeout: Optional[float] = None) -> JobResult:
        """Block until the job is terminal (whichever process runs it) and return it.

        Raises `TimeoutError` after `timeout` seconds and `JobNotFound` (a LookupError)
        for an unknown id."""
        if timeout is not None:
            timeout = _positive("timeout", timeout, allow_zero=True)
        if not _may_exist(job_id):
            raise JobNotFound(job_id)
        return self._settlements.wait(job_id, timeout, held=self._pool.settles_here,
                                      read=self.repository.get_without_args,
                                      statuses=self.repository.get_statuses, worker_id=self.worker_id,
                                      sleeping=self._pool.caller_waits)

    def _paced(self, read: str, count: Callable[[], T]) -> T:
        """`count()`, the read `read` ("stats": `get_stats`, "queue": `get_queue_size`),
        often asked in a loop until the jobs are done. On a started manager, a thread
        asking again within SPIN_GAP of its last answer asks in a loop without a pause: it
        sleeps SPIN_PAUSE first (each of those reads took the GIL from the workers, a
        hand-over between threads each time: a drain ended by a `get_stats` loop ran at
        0.79× of the plain one on SQLite); any other call gives way once, as a poll does
        (`_waits_in_a_loop`)."""
        if not self._lifecycle.running:
            return count()
        last = getattr(_polled, read, None)
        if last is not None and last[0] == id(self) and real_monotonic() - last[1] < SPIN_GAP:
            self._pool.caller_waits()
            real_sleep(SPIN_PAUSE)
        else:
            self._waits_in_a_loop()
        answer = count()
        setattr(_polled, read, (id(self), real_monotonic()))
        return answer

    def _waits_in_a_loop(self) -> None:
        """The caller reads in a loop while it waits for jobs: a thread doing that streams
        enqueues in no more (`WorkerPool.caller_waits`, as for `wait`), and the workers
        get to run (`_give_way`)."""
        self._pool.caller_waits()
        _give_way()

    def list_jobs(self, status: Union[JobStatus, str, None] = None, tags: Union[str, Iterable[str], None] = None,
                  owner: Optional[str] = None, limit: Optional[int] = 50, offset: int = 0) -> list[JobResult]:
        """Jobs newest first, filtered by status, owner, and carrying all of `tags`."""
        return self._list(self.repository.list_without_args, status, tags, owner, limit, offset)

    def list_job_summaries(self, status: Union[JobStatus, str, None] = None,
                           tags: Union[str, Iterable[str], None] = None, owner: Optional[str] = None,
                           limit: Optional[int] = 50, offset: int = 0) -> list[JobResult]:
        """`list_jobs` for a table of jobs: the same jobs, with `result`, `traceback`,
        `metadata` and `progress_details` left empty (None, or an empty dict), which a
        store need not read. What the dashboard's job table, its metrics and `jobcore
        list` read: a job's whole result is for `poll`."""
        return self._list(self.repository.list_summaries, status, tags, owner, limit, offset)

    def _list(self, read: Callable[..., list[JobRecord]], status: Union[JobStatus, str, None],
              tags: Union[str, Iterable[str], None], owner: Optional[str], limit: Optional[int],
              offset: int) -> list[JobResult]:
        wanted = self._status_arg(status)
        tags = _tags_arg(tags)
        if limit is not None:
            _count("limit", limit)
        _count("offset", offset)
        for field, text in (("owner", owner), *(("tags", tag) for tag in tags or ())):
            if not isinstance(text, str) and not (field == "owner" and text is None):
                raise TypeError(f"{field} must be str, got {type(text).__name__} {text!r}")
        if not (storable(owner or "") and all(could_be_id(tag) for tag in tags or ())):
            return []  # no job holds such text (see `_may_exist`)
        since = self._pool.progress_mark()
        records = read(status=wanted, tags=tags, owner=owner, limit=limit, offset=offset)
        return [result_of(self._with_latest_progress(record, since)) for record in records]

    def _with_latest_progress(self, record: JobRecord, since: int) -> JobRecord:
        """`record` (just read, after the `progress_mark` `since`, so ours to change) with
        the latest progress its job reported here if that is not in the row yet (see
        `progress`): never that of an attempt whose outcome the row holds already, even
        when the attempt running now has the same number (a job re-queued counts from 1
        again)."""
        if record.status is JobStatus.RUNNING:
            report = self._pool.latest_progress(record.id, since)
            if (report is not None and record.worker_id == self.worker_id
                    and record.attempts == report.context.attempt):
                record.progress, record.progress_message = report.progress, report.message
                record.progress_details = copy_nested(report.details)  # (the report is written later)
        return record

    @staticmethod
    def _status_arg(status: Union[JobStatus, str, None]) -> Optional[JobStatus]:
        if status is None or isinstance(status, JobStatus):
            return status
        try:
            return JobStatus(str(status).lower())
        except ValueError:
            names = ", ".join(s.value for s in JobStatus)
            raise ValueError(f"unknown status {status!r}; use one of {names}") from None

    def get_dead_letter_queue(self, limit: Optional[int] = None) -> list[tuple[Job, JobResult]]:
        """The FAILED jobs, newest first, as (job, result) pairs: the most recently failed
        first (when its last attempt ended, however long ago it was enqueued), then the
        later enqueued among jobs that failed at the same moment."""
        if limit is not None:
            _count("limit", limit)
        records = self.repository.list_dead_letters(limit)
        return [(job_of(record, self._local.function(record.id) or self._registry.get(record.function_name)),
                 result_of(record)) for record in records]

    def list_dead_letters(self, limit: Optional[int] = None) -> list[JobResult]:
        """The dead-letter queue as `get_dead_letter_queue` orders it, as results only: the
        jobs' arguments are not read (what the dashboard and `jobcore dlq` show)."""
        if limit is not None:
            _count("limit", limit)
        return [result_of(record) for record in self.repository.list_dead_letters_without_args(limit)]

    def get_stats(self) -> dict[str, int]:
        """Job counts: `total` and one lower-case key per status, nothing else (the
        threads still stuck in timed-out attempts: `abandoned_threads`)."""
        counts = self._paced("stats", self.repository.count_by_status)
        stats = {"total": sum(counts.values())}
        stats.update({status.value: counts[status] for status in JobStatus})
        return stats

    @property
    def abandoned_threads(self) -> int:
        """Threads still stuck in attempts that timed out (they cannot be killed)."""
        return self._pool.abandoned_threads

    def get_queue_size(self) -> int:
        """Jobs not yet started: pending plus scheduled."""
        return self._paced("queue", self.repository.count_queued)

    def get_logs(self, job_id: str, offset: int = 0, limit: Optional[int] = None) -> list[LogEntry]:
        """The job's log lines, oldest first (empty for an unknown id): from the
        `offset`-th line on, at most `limit` of them (None: all), for a job that logs a lot."""
        _count("offset", offset)
        if limit is not None:
            _count("limit", limit)
        if not _may_exist(job_id):
            return []
        self._pool.land_logs(job_id)  # lines this process's workers logged and have not stored yet
        lines = (self.repository.logs(job_id) if offset == 0 and limit is None
                 else self.repository.log_page(job_id, offset, limit))
        return [LogEntry(local_datetime(at), level, message) for at, level, message in lines]

    def count_logs(self, job_id: str) -> int:
        """How many log lines the job has (0 for an unknown id)."""
        if not _may_exist(job_id):
            return 0
        self._pool.land_logs(job_id)
        return self.repository.count_logs(job_id)

    def list_workers(self) -> list[WorkerInfo]:
        """The managers running jobs on this repository (any process), oldest first: those
        that beat within their own `lease_timeout` (this manager's, for an entry that
        recorded none). One killed without stopping leaves an entry that a running manager
        removes in time; until then it is left out."""
        now = self._clock.time()
        return [worker for worker in self.repository.list_workers()
                if worker.heartbeat_at >= now - (self.lease_timeout if worker.lease_timeout is None
                                                 else worker.lease_timeout)]


def _tags_arg(tags: object) -> Optional[list[str]]:
    """`list_jobs`'s `tags` as a list (None: no filter): one str, or a collection of them.
    Anything else is a TypeError naming `tags` (0 or False once listed every job, unfiltered;
    a generator was used up by the checks before the store read it)."""
    if tags is None:
        return None
    if isinstance(tags, str):
        return [tags]
    if isinstance(tags, (bytes, bytearray)) or not isinstance(tags, Iterable):
        raise TypeError(f"tags must be a str or a collection of str, got {type(tags).__name__} {tags!r}")
    return list(tags)


# A thread that polls an unfinished job again within SPIN_GAP seconds of its last poll of
# it, with nothing else polled between, spins on it (see `Inspection._spin_pause`); one
# that asks for `get_stats` or `get_queue_size` again that soon after its last answer asks
# in a loop (see `Inspection._paced`).
SPIN_GAP = 0.001
SPIN_PAUSE = 0.001
# Per thread. .last: (id of the manager, job id, real monotonic time) of its last poll of
# an unfinished job; .stats and .queue: (id of the manager, real monotonic time) of its
# last answer of each. Ids, not managers: a thread must not keep a closed one alive.
_polled = threading.local()


def _spins_on(manager: object, job_id: str) -> bool:
    """Whether the calling thread polls `job_id` of `manager` in a loop (see SPIN_GAP)."""
    last = getattr(_polled, "last", None)
    return (last is not None and last[0] == id(manager) and last[1] == job_id
            and real_monotonic() - last[2] < SPIN_GAP)


def _give_way() -> None:
    """Let other threads of this process run before the caller goes on.

    For the reads an application repeats in a loop while it waits for jobs (`poll` of an
    unfinished job, `get_stats`, `get_queue_size`). Such a loop, on the memory store,
    never blocks, so it would keep the GIL until the interpreter takes it away (every
    5 ms by default): the workers it waits for would run in those slices only. Measured
    with 4 workers on the memory store: a job polled without a pause finished about 6 ms
    after its enqueue began (median; about 0.55 ms with this), and a `get_stats` loop
    halved the rate of a drain. A `sleep(0)` gives the GIL up at once and costs about a
    microsecond."""
    real_sleep(0)
