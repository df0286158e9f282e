"""The storage contract: the `JobRepository` interface, over the values in `values`
(`JobRecord`, one stored job, and the rest; re-exported here).

This module and its reading half, `reads` (`JobRepository`'s base), are the whole promise
a backend makes; `jobcore.testing.contract` checks it. No storage code, no clock read:
every method that needs the time takes `now` (float epoch seconds) from its caller.

Rules every implementation keeps:
- The repository is the single source of truth for job state. Every state change is a
  compare-and-set: it applies only if the row still has the status (and, for running
  jobs, the `worker_id` and `attempts`) the caller saw, and reports whether it applied.
- Each method is atomic: it applies wholly or not at all, even across processes sharing
  the store. A method that raises has changed nothing. (The defaults that take several
  calls, `apply` and `insert_claimed`, promise less and say what: see them.)
- Methods are safe to call from many threads at once.
- Failures of the store itself raise `jobcore.errors.RepositoryError`.
"""

from __future__ import annotations

import builtins
import abc
import inspect
import logging
from typing import Any, Callable, Collection, Hashable, Optional, Sequence

from ..models import JobStatus
from . import one_by_one
from .reads import JobReads
from .reads import statuses_read_one_by_one as statuses_read_one_by_one  # re-exported (waiting imports it)
from .through_apply import SettlesThroughApply
from .values import (CANCELLED_BY_REQUEST, CANCELLED_ERROR_TYPE, CANCELLED_WHILE_RUNNING, CancelOutcome,
                     Cascade, JobRecord, LastProgress, LogLine, PartlyApplied, QueueEntry, Recovery, Settlement,
                     WorkerInfo, cancelled_instead_note, claim_limit, id_taken, newest_failures,
                     released_to_claim, require_plain_pending)

# The values (and SettlesThroughApply) are re-exported: backends and callers import them from here.
__all__ = ["CANCELLED_BY_REQUEST", "CANCELLED_ERROR_TYPE", "CANCELLED_WHILE_RUNNING", "CancelOutcome",
           "Cascade", "JobRecord", "JobRepository", "LastProgress", "LogLine", "PartlyApplied", "QueueEntry",
           "Recovery", "Settlement", "SettlesThroughApply", "WorkerInfo", "cancelled_instead_note", "claim_limit",
           "id_taken", "newest_failures", "released_to_claim", "require_plain_pending", "takes_argument"]

logger = logging.getLogger("jobcore.repository")


class JobRepository(JobReads):
    """Where jobs live. Subclass it to add a backend; run `jobcore.testing.contract`.

    `persistent` says whether rows outlive the process: a persistent repository stores
    arguments and results as JSON and rejects what JSON cannot hold.
    """

    persistent: bool = True
    max_payload_bytes: Optional[int] = None
    # True if `change_token` moves at every write committed through any other connection
    # or thread (claims and completions included): an unchanged token then means nothing
    # in the store changed but this caller's own writes, so a manager holding every job its
    # own writes made runnable need not read the store again (see housekeeper).
    change_token_sees_every_write: bool = False
    # True if `apply` and `insert_and_apply` use `claim_seqs` to find the rows to claim by
    # their `seq`: the engine passes it only then, and only to a method that takes it (a
    # backend, or a subclass's override, written before it gets none).
    finds_rows_by_seq: bool = False
    # True if `apply` and `insert_and_apply` store a settlement's `progress` (the default
    # `apply` does): the engine then hands an attempt's last progress report to the
    # transaction that records its outcome. Else (a backend whose `apply` predates it) the
    # engine stores that report with `update_progress` before the outcome.
    stores_settlement_progress: bool = False
    # True if `apply` and `insert_and_apply` append a settlement's `logs` (as `add_logs`
    # would) in the same step: the engine then hands an attempt's log lines still waiting
    # to the transaction that records its outcome. Else it stores them with `add_logs`
    # before the outcome.
    stores_settlement_logs: bool = False
    # True if `apply` takes `claim_released` and `released_functions` (see `apply`): the
    # engine then has the dependents an exchange's outcomes release claimed in that same
    # step. A subclass whose `apply` passes its arguments on keeps its backend's answer.
    claims_released: bool = False
    # True if a manager may store a plain new job in an exchange made by the thread that
    # enqueues it (`insert_and_apply`, where implemented: see `inserts_in_exchanges`). That
    # exchange is one transaction of several statements, cheap where each statement is a
    # call into a library (SQLite, memory). A backend where each is a network round trip
    # says False: its new jobs are then stored alone (`insert`, `insert_claimed`) and the
    # workers' exchanges record outcomes and claim several jobs at a time.
    exchanges_on_enqueue: bool = True

    # -- adding jobs -----------------------------------------------------------------
    @abc.abstractmethod
    def insert(self, records: Sequence[JobRecord], now: float) -> list[str]:
        """Store `records` atomically (all or none) and return their ids, in order.

        Sets `seq`, `blocked` and `status` on each given record that is stored. `seq`
        is above every stored job's (FIFO among equal priorities; the seq of a newest
        job since deleted may be given again). A record whose `unique_key` matches an
        unfinished job (or an earlier record of the batch) is not stored; its place in
        the result holds that job's id.
        Every `depends_on` id must be stored already or be in the batch, else
        `DependencyError` (and nothing is stored). `blocked` is set to the number of
        dependencies not COMPLETED; a record depending on a FAILED or CANCELLED job is
        stored CANCELLED with an error naming it. Raises `TypeError`/`ValueError` for a
        payload the store cannot hold.
        """

    def insert_claimed(self, record: JobRecord, worker_id: str, now: float,
                       lease_expires_at: float) -> tuple[str, Optional[JobRecord]]:
        """Store one record (as `insert`) and, if it is ready to run at once, claim it for
        `worker_id` (as `claim`): a new job handed straight to an idle worker.

        Returns the id `insert` would return and the claimed record, or None when the job
        was stored without being claimed (waiting on dependencies or a time, cancelled, or
        its `unique_key` resolved to another job, or another worker claimed it first). It
        raises only if nothing was stored.

        This default takes two transactions; a backend may do both in one. A claim that
        raises once the job is stored is logged, and the job returned unclaimed (it waits
        for a later claim, as if another worker had taken it first): raised, it would tell
        the caller that nothing was stored, and a caller retrying would store it twice."""
        job_id = self.insert([record], now)[0]
        if job_id != record.id or record.status is not JobStatus.PENDING or record.blocked:
            return job_id, None
        try:
            _, claimed = self.apply([], [job_id], worker_id, now, lease_expires_at)
        except Exception as exc:  # stored already: the caller must not be told otherwise
            logger.warning("job %s was stored but claiming it failed; it waits for a later claim: %r",
                           job_id, exc)
            return job_id, None
        return job_id, claimed[0] if claimed else None

    def insert_and_apply(self, record: JobRecord, settlements: Sequence[Settlement], claim_ids: Sequence[str],
                         worker_id: str, now: float, lease_expires_at: float, *, claim_new: bool,
                         claim_seqs: Optional[Sequence[int]] = None) -> tuple[list[Optional[Cascade]], list[JobRecord]]:
        """Store `record` (as `insert`; with `claim_new`, already claimed for `worker_id`,
        as `insert_claimed`), then `apply(settlements, claim_ids, ..., claim_seqs=...)`:
        one atomic step.
        For a record that needs no check against other rows: PENDING, no `depends_on`, no
        `unique_key`, not a cron schedule (else `ValueError`).

        A manager whose enqueues stream in makes its exchanges this way: each new job
        carries the outcomes waiting to be recorded and the claims, in one transaction,
        where they would otherwise take one of their own.

        Returns each settlement's cascade (as `apply`) and the claimed records, the new
        one first if claimed. If it raises, nothing was stored, recorded or claimed. A
        backend that cannot promise that leaves this default, which raises
        `NotImplementedError` (see `inserts_in_exchanges`); the manager then stores jobs
        and makes exchanges apart."""
        raise NotImplementedError

    @property
    def inserts_in_exchanges(self) -> bool:
        """True if this backend implements `insert_and_apply`."""
        return type(self).insert_and_apply is not JobRepository.insert_and_apply

    # -- reading: inherited from `reads.JobReads` (get, ready, scheduled, list, logs, ...) --

    # -- running ---------------------------------------------------------------------
    @abc.abstractmethod
    def claim(self, job_id: str, worker_id: str, now: float, lease_expires_at: float) -> Optional[JobRecord]:
        """Take a job to run: PENDING, or SCHEDULED with `run_at <= now`, with no
        unfinished dependency, and not a schedule. It becomes RUNNING with `attempts`
        incremented, `started_at = now`, `worker_id` and the lease set, `cancel_requested`
        cleared. Returns the claimed record, or None if it was not claimable."""

    @abc.abstractmethod
    def complete(self, job_id: str, worker_id: str, attempt: int, result: Any, now: float,
                 note: Optional[str] = None) -> Optional[Cascade]:
        """RUNNING (held by `worker_id` on `attempt`) -> COMPLETED with `result` and
        progress 1.0; dependents lose one block and those with none left are `released`.
        `note`, if given, is logged (level info) in the same transaction. Returns None if
        the job was not held so (its result is discarded)."""

    @abc.abstractmethod
    def fail(self, job_id: str, worker_id: str, attempt: int, *, error: str, error_type: str,
             traceback: Optional[str], now: float, retry_at: Optional[float],
             note: Optional[str] = None) -> Optional[Cascade]:
        """Record a failed attempt of a job held by `worker_id` on `attempt`; `note`, if
        given, is logged (level error) in the same transaction.

        With `retry_at`, the job becomes SCHEDULED to run again then, its progress
        reset (0.0, no message, no details: the next attempt starts from none); without,
        it becomes FAILED (the dead-letter queue), keeping its progress, and its
        dependents are `cancelled`, transitively. Returns None if the job was not held so.

        If the job's cancellation was requested (`cancel_requested`: the attempt ended
        before the worker heard of it), it becomes CANCELLED instead, in the same
        compare-and-set, exactly as `finish_cancelled` leaves it (error
        `CANCELLED_WHILE_RUNNING`, type `CANCELLED_ERROR_TYPE`), its dependents
        `cancelled`; the cascade says `cancelled_instead`, and `note`, if given, is
        logged as `cancelled_instead_note(note)`. A cancel that returned True is never
        undone by a retry."""

    @abc.abstractmethod
    def finish_cancelled(self, job_id: str, worker_id: str, attempt: int, now: float) -> Optional[Cascade]:
        """A running job stopped on a cancel request: RUNNING -> CANCELLED with error
        `CANCELLED_WHILE_RUNNING` (type `CANCELLED_ERROR_TYPE`), dependents cancelled
        transitively. Returns None if the job was not held so."""

    def release(self, job_id: str, worker_id: str, attempt: int, now: float) -> bool:
        """Hand back a job claimed by `worker_id` on `attempt` but never started: it is
        PENDING again and the attempt is not counted. False if it was not held so.

        If its cancellation was requested (`cancel` returned True while it was claimed),
        it becomes CANCELLED instead, in the same compare-and-set, as `cancel` of a pending
        job leaves it (error `CANCELLED_BY_REQUEST`, type `CANCELLED_ERROR_TYPE`, the
        attempt not counted) and its dependents are cancelled, transitively; through
        `apply`, the cascade says `cancelled_instead` and lists them. A cancel that
        returned True is never undone by a hand-back.

        This default is a fallback for backends that do not override it: it re-schedules
        the job for `now` and so leaves the attempt counted, which the contract suite
        flags."""
        return self.fail(job_id, worker_id, attempt, error="released unstarted", error_type="Released",
                         traceback=None, now=now, retry_at=now) is not None

    def apply(self, settlements: Sequence[Settlement], claim_ids: Sequence[str], worker_id: str,
              now: float, lease_expires_at: float, top_up: Optional[Collection[str]] = None,
              up_to: Optional[int] = None, *,
              claim_seqs: Optional[Sequence[int]] = None) -> tuple[builtins.list[Optional[Cascade]], builtins.list[JobRecord]]:
        """Record `settlements` (each as `complete`/`fail`/`finish_cancelled`/`release`
        would, each a compare-and-set on its attempt) and then claim what it can of
        `claim_ids` (as `claim` would), in as few transactions as the backend allows.
        With `top_up` (function names), claims that failed (another process took the job)
        are made up with the best ready jobs naming those functions, as `ready` orders them,
        up to `up_to` claims in all (default, and at least, `len(claim_ids)`): a manager
        whose known ids keep going stale asks for the best jobs by number alone.

        Returns, in order, each settlement's cascade (None where the worker no longer held
        the job; for "release", an empty Cascade when it applied, unless the job ended
        CANCELLED instead: see `release`), and the records claimed.
        A settlement whose result the store cannot hold raises `TypeError`/`ValueError`
        before anything is written.

        This default (see `one_by_one`) makes them one single-job call at a time, not as
        one transaction, and so promises less: in a persistent store it checks every
        settlement first (its kind, and that JSON holds its result within
        `max_payload_bytes`); a settlement that raises once earlier ones were written
        raises `PartlyApplied` (a `RepositoryError` saying which were recorded; nothing is
        undone); once anything was written, a claim that raises ends the claiming (logged)
        and what was done is returned. A release reports `cancelled_instead` by reading
        the row back.

        A backend's `apply` may also take `claim_released` (an int, default 0) and
        `released_functions` (function names, or None for any): it then claims as well, in
        the same step, up to `claim_released` of the dependents its settlements release
        that are ready now and name one of `released_functions`, best first
        (`released_to_claim`), returned with the other claims. The engine passes them only
        where `claims_released` says so, to a method that takes them (SQLite's,
        PostgreSQL's and the memory repository's): a chain of dependent jobs then costs one transaction a link, not one
        to release and one to claim.

        `claim_seqs` (given only where `finds_rows_by_seq`) is the `seq` of each of
        `claim_ids`, in order: the backend may find the rows by it, claiming only those
        whose ids match too. Likewise a settlement's `seq`, if set, may find its row.

        A settlement's `progress` (given only where `stores_settlement_progress`) is
        stored as `update_progress` would store it, just before that settlement: a
        compare-and-set on the same attempt, so the row of an outcome recorded ends with it."""
        return one_by_one.apply(self, settlements, claim_ids, worker_id, now, lease_expires_at, top_up, up_to)

    def _apply_one(self, s: Settlement, worker_id: str, now: float) -> Optional[Cascade]:
        """One settlement, through the single-job method that makes it (for the default
        `apply`; a subclass may make some kinds itself)."""
        return one_by_one.apply_one(self, s, worker_id, now)

    @abc.abstractmethod
    def cancel(self, job_id: str, now: float, reason: str) -> tuple[CancelOutcome, Cascade]:
        """Cancel a job: PENDING or SCHEDULED (a schedule too) -> CANCELLED with `reason`
        as its error, and dependents cancelled transitively; RUNNING -> `cancel_requested`
        set (the worker ends it). Terminal or unknown jobs are left alone."""

    @abc.abstractmethod
    def requeue(self, job_id: str, now: float) -> Optional[QueueEntry]:
        """FAILED or CANCELLED -> PENDING with attempts reset and the error and progress
        fields cleared (each failed attempt's note stays in the logs). Returns the job's
        queue entry, or None if it was in another state, is a cron schedule (an ended
        schedule stays ended: enqueue it again), depends on a FAILED or CANCELLED job
        (retry that first), or another unfinished job holds its unique_key."""

    @abc.abstractmethod
    def update_progress(self, job_id: str, worker_id: str, attempt: int, progress: float,
                        message: str, details: dict[str, Any], now: float) -> bool:
        """Store the progress of a job held by `worker_id` on `attempt`; False if not held."""

    @abc.abstractmethod
    def add_log(self, job_id: str, level: str, message: str, now: float) -> None:
        """Append a line to the job's log; none if the job is not stored (deleted while a
        timed-out attempt's thread still logged): no line outlives its job."""

    def add_logs(self, job_id: str, lines: Sequence[LogLine]) -> None:
        """Append these lines, `(at, level, message)` each, to the job's log, in order.
        This default adds them one by one with `add_log`; a store may add them at once."""
        for at, level, message in lines:
            self.add_log(job_id, level, message, at)

    @abc.abstractmethod
    def heartbeat(self, worker_id: str, job_ids: Collection[str], lease_expires_at: float,
                  now: float) -> builtins.list[str]:
        """Extend to `lease_expires_at` the lease of each job in `job_ids` that `worker_id`
        is running; return the ids among them whose cancellation was requested. A store
        whose write may wait behind a lock (another program's) adds that wait to the lease:
        it counts from when it is written, not from when it was asked for."""

    def cancels_requested(self, worker_id: str, job_ids: Collection[str]) -> builtins.list[str]:
        """The ids among `job_ids` that `worker_id` is running and whose cancellation was
        requested; it only reads (`heartbeat` hears them too, renewing leases). This
        default reads the jobs with `get_many`; a store may read just those columns."""
        return [r.id for r in self.get_many(job_ids).values()
                if r.status is JobStatus.RUNNING and r.worker_id == worker_id and r.cancel_requested]

    @abc.abstractmethod
    def recover_expired(self, now: float) -> builtins.list[QueueEntry]:
        """Take back RUNNING jobs whose lease expired before `now` (their worker died or
        froze): they become PENDING again (their attempt stays counted, their progress
        reset as a retry's is: see `fail`), FAILED with error_type `WorkerLost` when that
        attempt was their last, or CANCELLED when their cancellation had been requested
        (both keeping their progress). Returns the re-queued."""

    @abc.abstractmethod
    def fire_schedule(self, schedule_id: str, fire_at: float, next_run_at: float, run: JobRecord,
                      now: float) -> bool:
        """Fire a cron schedule once: if the schedule is still SCHEDULED with
        `run_at == fire_at`, move its `run_at` to `next_run_at` and store `run` (a PENDING
        job; its `seq` is set) in the same transaction. Returns False, changing nothing,
        if the schedule was cancelled or fired already (by any process): each fire time
        yields at most one run."""

    def fire_schedules(self, fires: Sequence[tuple[str, float, float, JobRecord]],
                       now: float) -> builtins.list[bool]:
        """`fire_schedule` for each (schedule_id, fire_at, next_run_at, run) of `fires`,
        in order; whether each fired. A backend may store them all in one transaction
        (SQLite does: schedules sharing a fire time, fired a transaction each, started
        their runs that much later); by default, one `fire_schedule` call each."""
        return [self.fire_schedule(schedule_id, fire_at, next_run_at, run, now)
                for schedule_id, fire_at, next_run_at, run in fires]

    def fail_schedule(self, schedule_id: str, error: str, now: float) -> bool:
        """A cron schedule that can never fire (its row is corrupt: a column that cannot be
        decoded, a cron expression or time zone that does not parse): SCHEDULED -> FAILED
        with `error`, error type `CorruptJob`, as a claim fails any other corrupt row.
        Returns False, changing nothing, if it is not a SCHEDULED schedule. By default
        False: a backend without it leaves such a schedule as it is (logged, never fired)."""
        return False

    # -- workers and change detection ------------------------------------------------
    @abc.abstractmethod
    def register_worker(self, worker_id: str, host: str, pid: int, now: float,
                        lease_timeout: Optional[float] = None) -> None:
        """Record a started manager in the worker registry (replacing a same-id entry),
        with its own `lease_timeout` (seconds; `WorkerInfo.lease_timeout`), by which
        `reap_workers` and readers of `list_workers` judge the entry silent.

        (The engine passes `lease_timeout` only to a method that takes it: a backend
        written before it stores none, and its entries are judged by the reader's lease.)"""

    @abc.abstractmethod
    def beat_worker(self, worker_id: str, running: Collection[str], now: float) -> Optional[bool]:
        """Refresh a registered worker's heartbeat time and the ids it is running.

        May return False when no such worker is registered (another worker removed its
        entry while its heartbeats failed, in an outage): the manager registers again.
        None (or True) says nothing is known to be wrong."""

    @abc.abstractmethod
    def unregister_worker(self, worker_id: str) -> None:
        """Remove a worker from the registry (it stopped)."""

    @abc.abstractmethod
    def list_workers(self) -> builtins.list[WorkerInfo]:
        """Every registered worker, oldest first."""

    @abc.abstractmethod
    def reap_workers(self, before: float, now: Optional[float] = None) -> builtins.list[str]:
        """Remove workers whose last heartbeat is older than `before`; return their ids.
        With `now`, an entry that recorded its own `lease_timeout` is judged by that
        instead: removed if its last heartbeat is older than `now - lease_timeout`
        (workers with different leases share a store: a long-lease worker beating every
        few seconds must not be removed by the reaper's short lease). `before` then
        applies only to entries without one. (Their jobs come back through
        `recover_expired` once their leases lapse.)

        (The engine passes `now` only to a method that takes it: a backend written before
        it reaps every entry by `before`.)"""

    def expire_worker(self, worker_id: str, now: float) -> int:
        """End the leases of every job `worker_id` is running (it is known to be dead), so
        `recover_expired(now)` takes them back at once; returns how many. This default goes
        through `list` and `heartbeat`; backends may override it with one statement."""
        held = [r.id for r in self.list(status=JobStatus.RUNNING, limit=None) if r.worker_id == worker_id]
        self.heartbeat(worker_id, held, now - 1.0, now)
        return len(held)

    @property
    def store_key(self) -> Hashable:
        """What names the store within this process: managers of one process on the same
        store wake each other when one stores work (see `doorbell`). This repository
        object itself by default; a backend whose objects may share a store (two
        `SQLiteRepository` objects on one file) names the store."""
        return self

    def held_here(self) -> bool:
        """Whether the calling thread is inside a call of this store that holds a lock its
        other calls wait for (a signal handler interrupted it there): a `stop` made in the
        handler then does not wait for the engine's threads to record outcomes, which would
        wait for that lock. False by default (a backend with no such lock)."""
        return False

    def change_token(self) -> Optional[object]:
        """A cheap value that changes whenever another connection or process may have
        changed the store, so idle managers know when to look for new work. None means
        the backend cannot tell: managers then look every `poll_interval`. See also
        `change_token_sees_every_write`."""
        return None

    def watch_changes(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call `wake()`, from a thread of the repository's, soon after another process
        commits work (what moves `change_token`), until the function returned is called.
        For a backend told of other processes' commits (PostgreSQL's NOTIFY), so that a
        manager looks at once instead of at its next `discovery_interval`. This default
        (a backend that can only be looked at) never calls it."""
        return _nothing

    def recover(self, now: float) -> Recovery:
        """`recover_expired`, also saying which jobs it ended FAILED or CANCELLED (so the
        engine can notify of them). This default reports only the re-queued ones."""
        return Recovery(requeued=tuple(self.recover_expired(now)))

    # -- housekeeping --------------------------------------------------------------
    @abc.abstractmethod
    def delete_finished(self, before: Optional[float]) -> int:
        """Delete terminal jobs (and their logs) finished before `before` (None: all)."""

    def close(self) -> None:
        """Release connections and files. The repository is unusable afterwards."""


def takes_argument(method: Callable[..., Any], name: str) -> bool:
    """True if `method` takes the keyword argument `name` (by name or through `**kwargs`):
    the engine passes an argument added to this interface later only to a backend's
    method (or a subclass's override) that takes it, so one written before still works."""
    try:
        parameters = inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def _nothing() -> None:
    """Undoes a `watch_changes` that watches nothing."""
