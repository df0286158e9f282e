"""`MemoryRepository`: the job store in this process's memory, for tests and throwaway work.

Same contract as every repository; nothing is persisted and arguments are kept as the
Python objects given (JSON is not required). Not shared between processes. Storing new
jobs is `memory_adding`'s; listings, counts and log lines `memory_listing`'s; cancelling,
re-queueing and deleting on request `memory_changing`'s; the worker registry
`memory_workers`' (each declares the state it shares through `memory_state`). This module
keeps the state, its one lock, and the worker's path: the reads that find work, claiming,
settling, progress and log lines, leases, and schedules.
"""

from __future__ import annotations

import bisect
import builtins
import heapq
import operator
import threading
from typing import Any, Collection, Optional, Sequence

from ..forks import PerForkStack, on_fork, take_before_fork
from ..lock_waits import clear_way, holds
from ..models import JobStatus
from ._cascade import dependency_error_message
from .base import (CANCELLED_BY_REQUEST, CANCELLED_ERROR_TYPE, CANCELLED_WHILE_RUNNING, Cascade, JobRecord,
                   JobRepository, QueueEntry, Recovery, Settlement, WorkerInfo, cancelled_instead_note, id_taken,
                   released_to_claim)
from .memory_adding import MemoryAdding
from .memory_changing import MemoryChanging
from .memory_listing import MemoryListing
from .memory_workers import MemoryWorkers
# A copy with dicts of its own: whoever holds it can change it without touching the store.
from .values import detached_copy as _detached
from .values import FailedKey, copy_nested, failed_key, stored_copy as _stored


# What a completion that releases nothing, or a retry, returns: a Cascade is frozen (and
# holds tuples), so one can be shared; one object less per job recorded.
_NO_CASCADE = Cascade()


# The ids of rows made runnable that the feed keeps at least (see `runnable_since`): a
# manager reading it falls back to reading every pending and scheduled row when more were
# added between two of its looks.
FEED_KEEP = 20_000

_seq_of = operator.attrgetter("seq")
_priority_of = operator.attrgetter("priority")


def _due_key(due: tuple[Optional[float], JobRecord]) -> tuple[float, int]:
    """The order of `scheduled`'s (run_at, row) pairs: earliest first, then by seq."""
    return due[0] or 0.0, due[1].seq


class MemoryRepository(MemoryAdding, MemoryListing, MemoryChanging, MemoryWorkers, JobRepository):
    """An in-memory `JobRepository`. Thread-safe; one lock guards all of its state."""

    persistent = False
    claims_released = True  # (apply's claim_released)
    change_token_sees_every_write = True  # _writes: see change_token
    stores_settlement_progress = True  # the default `apply`'s way, under the one lock

    def __init__(self) -> None:
        # _lock guards every attribute below (the methods of the Memory* bases take it too).
        self._lock = threading.RLock()
        # The rows, by id: copies made on the way in (`stored_copy`, whose empty dict fields
        # share one dict) and never given out: every record read is a `detached_copy`, and a
        # row's dict fields are only ever replaced, never changed in place.
        self._jobs: dict[str, JobRecord] = {}
        self._dependents: dict[str, set[str]] = {}
        self._logs: dict[str, list[tuple[float, str, str]]] = {}
        self._unique: dict[str, str] = {}
        self._next_seq = 1
        self._workers: dict[str, WorkerInfo] = {}
        # Every row of _jobs, by its status (_set_status moves it): reading one status,
        # counting, or looking for work costs what that status holds, not the whole store.
        self._by_status: dict[JobStatus, dict[str, JobRecord]] = {status: {} for status in JobStatus}
        # How many times a row entered each status (stored, or moved there): a listing of
        # one status that picks its rows without the lock knows by it that none entered.
        self._entered: dict[JobStatus, int] = dict.fromkeys(JobStatus, 0)
        # The FAILED rows in the dead-letter queue's order, oldest first (`failed_key`, kept
        # by _set_status, _add_row and delete_finished): its newest few are read from the
        # end. Sorting every failed row at each read took 20-45 ms with 60,000 of them
        # (103 with 200,000), the store locked throughout. Most enter at the end.
        self._failed_order: list[FailedKey] = []
        # The rows of each owner, in seq order (_add_row adds, delete_finished takes out; an
        # owner never changes): listing an owner's jobs walked every row (30 ms with
        # 300,000 kept, the store locked throughout).
        self._by_owner: dict[str, dict[str, JobRecord]] = {}
        # Moves at each row added and each status changed: every write that can make a job
        # runnable (a dependency released goes with its dependency's completion) or take one.
        self._writes = 0
        # The ids of the rows that may have become runnable or stopped being so while
        # waiting, in order (`_add_row`, `_set_status`, a release from dependencies): each
        # entered PENDING or SCHEDULED, was released, or ended (cancelled) from there.
        # Another manager of this process sharing the store reads what was added since its
        # last look (`runnable_since`) rather than every pending and scheduled row: a job
        # it scheduled beside 20,000 due later started 0.4-1.2 s late, found only by the
        # read of all of them, spaced out by its cost. The feed keeps its last FEED_KEEP to
        # 2 * FEED_KEEP ids; `_feed_start` is the position of its first (positions only
        # grow).
        self._feed: list[str] = []
        self._feed_start = 0
        # A forked child has a copy of the store of its own: one no thread was changing at
        # the fork, with a lock of its own (the parent's may have been held then).
        # Whether each fork under way took the lock (a fork inside a fork's hooks, or another
        # thread's fork at once, releases only its own hold).
        self._held_for_fork: PerForkStack[bool] = PerForkStack()
        on_fork(self, before="_before_fork", after_in_parent="_after_fork_in_parent",
                after_in_child="_forked")

    def _before_fork(self) -> None:
        self._held_for_fork.push(take_before_fork(self._lock, "the memory store's lock"))

    def _after_fork_in_parent(self) -> None:
        if self._held_for_fork.pop():
            self._lock.release()

    def _forked(self) -> None:
        self._held_for_fork = PerForkStack()
        self._lock = threading.RLock()

    # -- adding: see MemoryAdding ---------------------------------------------------
    def _forget_unique(self, row: JobRecord) -> None:
        if row.unique_key is not None and self._unique.get(row.unique_key) == row.id:
            del self._unique[row.unique_key]

    # -- reading (listings, counts and logs: see MemoryListing) -----------------------
    def get(self, job_id: str) -> Optional[JobRecord]:
        clear_way(self._lock)  # threads reading and writing at once: see `clear_way`
        with self._lock:
            row = self._jobs.get(job_id)
            return _detached(row) if row is not None else None

    def get_many(self, job_ids: Collection[str]) -> dict[str, JobRecord]:
        clear_way(self._lock)  # as `get`
        jobs = self._jobs
        with self._lock:  # (copied under it: rows change in place)
            return {job_id: _detached(row) for job_id in job_ids if (row := jobs.get(job_id)) is not None}

    def get_statuses(self, job_ids: Collection[str]) -> dict[str, JobStatus]:
        jobs = self._jobs
        with self._lock:
            return {job_id: row.status for job_id in job_ids if (row := jobs.get(job_id)) is not None}

    # `ready` and `scheduled` take the lock only to copy the list of rows of one status,
    # then pick and sort them without it, as a read of a database runs beside its writers:
    # a pass over 300,000 ready rows took 100-240 ms, 150,000 scheduled ones 117, and every
    # enqueue, claim and completion waited that long behind it (scheduled jobs started that
    # late). What they return may be stale by the time it is queued, as a database's read
    # is: a row claimed, cancelled or moved meanwhile is refused by its claim, and a row
    # made ready or scheduled meanwhile is queued by the path that changed it.
    def ready(self, function_names: Optional[Collection[str]], limit: int) -> list[QueueEntry]:
        with self._lock:
            pending = list(self._by_status[JobStatus.PENDING].values())
        rows = [r for r in pending
                if r.blocked == 0 and r.cron is None  # a cron row is a schedule
                and (function_names is None or r.function_name in function_names)]
        # Best first: higher priority, then lower seq. Two stable sorts by C key
        # functions, the first over rows mostly in seq order already: half the time of
        # one heapq.nsmallest by a tuple key (200,000 rows: 63 against 126 ms).
        rows.sort(key=_seq_of)
        rows.sort(key=_priority_of, reverse=True)  # reverse keeps equal keys in order
        return [r.queue_entry() for r in rows[:limit]]

    def scheduled(self, function_names: Optional[Collection[str]], limit: int) -> list[QueueEntry]:
        with self._lock:
            waiting = list(self._by_status[JobStatus.SCHEDULED].values())
        # Each row's run_at read once: the entries give the times they were picked by (one
        # that moved later meanwhile, a retry's back-off or a schedule's next fire, made the
        # window's last time later than it was, and the reader dropped the timers of jobs
        # still scheduled past the window but before that time).
        due = [(r.run_at, r) for r in waiting
               if r.blocked == 0 and (r.is_schedule or function_names is None or r.function_name in function_names)]
        best = heapq.nsmallest(limit, due, key=_due_key)
        return [QueueEntry(r.id, r.priority, r.seq, run_at, r.function_name, r.cron is not None) for run_at, r in best]

    def feed_position(self) -> int:
        """Where the feed of rows made runnable ends now: `runnable_since` from here gives
        those made runnable after this call."""
        with self._lock:
            return self._feed_start + len(self._feed)

    def runnable_since(self, position: int, function_names: Optional[Collection[str]],
                       ) -> Optional[tuple[list[QueueEntry], list[QueueEntry], list[str], int]]:
        """The rows noted in the feed since its `position` (`feed_position`): those
        runnable now, as `ready` and `scheduled` would give them (unsorted); the ids of
        those gone (cancelled, failed or deleted: a timer of theirs would only fail to
        claim); and the position to read from next. None if the feed no longer holds
        `position` (more than FEED_KEEP were added since: read `ready` and `scheduled`
        instead). As those reads, it copies the ids under the lock and picks the rows
        without it (see `ready`)."""
        with self._lock:
            start = self._feed_start
            if position < start:
                return None
            ids = self._feed[position - start:]
            end = start + len(self._feed)
        jobs, ready, scheduled, gone = self._jobs, [], [], []
        for job_id in dict.fromkeys(ids):
            r = jobs.get(job_id)
            status = None if r is None else r.status
            if r is None or status is JobStatus.CANCELLED or status is JobStatus.FAILED:
                gone.append(job_id)
                continue
            if r.blocked:
                continue
            if status is JobStatus.PENDING:
                if r.cron is None and (function_names is None or r.function_name in function_names):
                    ready.append(r.queue_entry())
            elif status is JobStatus.SCHEDULED:
                run_at = r.run_at  # (read once; None only in a row caught half changed)
                if run_at is not None and (r.is_schedule or function_names is None
                                           or r.function_name in function_names):
                    scheduled.append(QueueEntry(r.id, r.priority, r.seq, run_at, r.function_name,
                                                r.cron is not None))
        return ready, scheduled, gone, end

    def held_here(self) -> bool:
        return holds(self._lock)

    def change_token(self) -> Optional[object]:
        """How many writes could have made a job runnable or taken one (this manager's own
        included): an idle manager reads the store again only when it moved."""
        return self._writes  # one int read: no lock needed

    # -- running ---------------------------------------------------------------------
    def claim(self, job_id: str, worker_id: str, now: float, lease_expires_at: float) -> Optional[JobRecord]:
        with self._lock:
            row = self._jobs.get(job_id)
            if row is None or row.blocked or row.cron is not None:  # a cron row is a schedule
                return None
            status = row.status
            if not (status is JobStatus.PENDING or (
                    status is JobStatus.SCHEDULED and row.run_at is not None and row.run_at <= now)):
                return None
            self._set_status(row, JobStatus.RUNNING)
            row.attempts += 1
            row.started_at = now
            row.worker_id = worker_id
            row.lease_expires_at = lease_expires_at
            row.cancel_requested = False
            return _detached(row)

    def _held(self, job_id: str, worker_id: str, attempt: int) -> Optional[JobRecord]:
        row = self._jobs.get(job_id)
        if (row is None or row.status is not JobStatus.RUNNING or row.worker_id != worker_id
                or row.attempts != attempt):
            return None
        return row

    def _set_status(self, row: JobRecord, status: JobStatus) -> None:
        """Change a stored row's status, moving it to that status in `_by_status` (and in
        or out of `_failed_order`: a row enters FAILED with its `completed_at` set)."""
        was = row.status
        if was is JobStatus.FAILED:
            self._unlist_failed(row)
        del self._by_status[was][row.id]
        self._by_status[status][row.id] = row
        self._entered[status] += 1
        row.status = status
        if status is JobStatus.FAILED:
            bisect.insort(self._failed_order, failed_key(row))
        if status is not JobStatus.RUNNING and (
                status is JobStatus.PENDING or status is JobStatus.SCHEDULED
                or was is JobStatus.PENDING or was is JobStatus.SCHEDULED):
            self._note_runnable(row.id)  # (made runnable, or ended while it waited)
        self._writes += 1

    def _note_runnable(self, job_id: str) -> None:
        """Add a row that may have become runnable, or ended while it waited, to the feed
        (see `runnable_since`)."""
        feed = self._feed
        feed.append(job_id)
        if len(feed) > 2 * FEED_KEEP:
            del feed[:FEED_KEEP]
            self._feed_start += FEED_KEEP

    def _add_row(self, row: JobRecord) -> None:
        """Store a new row (its seq the next one: `list` relies on _jobs being in seq order)."""
        self._jobs[row.id] = row
        self._by_status[row.status][row.id] = row
        self._entered[row.status] += 1
        if row.owner is not None:
            self._by_owner.setdefault(row.owner, {})[row.id] = row
        if row.status is JobStatus.FAILED:
            bisect.insort(self._failed_order, failed_key(row))
        elif row.status is JobStatus.PENDING or row.status is JobStatus.SCHEDULED:
            self._note_runnable(row.id)
        self._writes += 1

    def _unlist_failed(self, row: JobRecord) -> None:
        """Take a FAILED row out of `_failed_order` (its key unchanged since it entered)."""
        order, key = self._failed_order, failed_key(row)
        at = bisect.bisect_left(order, key)
        if at < len(order) and order[at] == key:
            del order[at]
        else:  # (its completed_at changed while it was FAILED: found by its id)
            self._failed_order = [entry for entry in order if entry[3] != row.id]

    def _end(self, row: JobRecord, status: JobStatus, now: float) -> None:
        row.completed_at = now  # (first: a row enters _failed_order by it)
        self._set_status(row, status)
        row.lease_expires_at = None
        self._forget_unique(row)

    def complete(self, job_id: str, worker_id: str, attempt: int, result: Any, now: float,
                 note: Optional[str] = None) -> Optional[Cascade]:
        with self._lock:
            row = self._held(job_id, worker_id, attempt)
            if row is None:
                return None
            if note is not None:
                self._logs.setdefault(job_id, []).append((now, "info", note))
            self._end(row, JobStatus.COMPLETED, now)
            row.result = result
            row.progress = 1.0
            row.error = row.error_type = row.traceback = None
            dependents = self._dependents.get(job_id)
            if not dependents:
                return _NO_CASCADE
            released = []
            for dep_id in dependents:
                dependent = self._jobs.get(dep_id)
                if dependent is None or dependent.status not in (JobStatus.PENDING, JobStatus.SCHEDULED):
                    continue
                dependent.blocked = max(0, dependent.blocked - 1)
                if dependent.blocked == 0:
                    released.append(dependent.queue_entry())
                    self._note_runnable(dep_id)
            return Cascade(released=tuple(released)) if released else _NO_CASCADE

    def _cancel_dependents(self, root: JobRecord, now: float) -> tuple[str, ...]:
        message = dependency_error_message(root.id, root.name, root.status.value)
        cancelled: list[str] = []
        stack = list(self._dependents.get(root.id, ()))
        while stack:
            row = self._jobs.get(stack.pop())
            if row is None or row.status not in (JobStatus.PENDING, JobStatus.SCHEDULED):
                continue
            self._end(row, JobStatus.CANCELLED, now)
            row.error, row.error_type = message, "DependencyFailed"
            cancelled.append(row.id)
            stack.extend(self._dependents.get(row.id, ()))
        return tuple(cancelled)

    def fail(self, job_id: str, worker_id: str, attempt: int, *, error: str, error_type: str,
             traceback: Optional[str], now: float, retry_at: Optional[float],
             note: Optional[str] = None) -> Optional[Cascade]:
        with self._lock:
            row = self._held(job_id, worker_id, attempt)
            if row is None:
                return None
            if row.cancel_requested:  # cancel() returned True: no retry, no dead letter
                if note is not None:
                    self._logs.setdefault(job_id, []).append((now, "error", cancelled_instead_note(note)))
                return self._finish_cancelled(row, now, instead=True)
            if note is not None:
                self._logs.setdefault(job_id, []).append((now, "error", note))
            row.error, row.error_type, row.traceback = error, error_type, traceback
            if retry_at is not None:  # the next attempt starts from no progress
                row.run_at = retry_at  # (first: a feed reader may see the row as it enters SCHEDULED)
                row.lease_expires_at = None
                row.progress, row.progress_message, row.progress_details = 0.0, "", {}
                self._set_status(row, JobStatus.SCHEDULED)
                return _NO_CASCADE
            self._end(row, JobStatus.FAILED, now)
            return Cascade(cancelled=self._cancel_dependents(row, now))

    def finish_cancelled(self, job_id: str, worker_id: str, attempt: int, now: float) -> Optional[Cascade]:
        with self._lock:
            row = self._held(job_id, worker_id, attempt)
            return None if row is None else self._finish_cancelled(row, now)

    def _finish_cancelled(self, row: JobRecord, now: float, instead: bool = False) -> Cascade:
        """End a held row CANCELLED on its cancel request (`instead` of a retry or failure)."""
        self._end(row, JobStatus.CANCELLED, now)
        row.error, row.error_type = CANCELLED_WHILE_RUNNING, CANCELLED_ERROR_TYPE
        return Cascade(cancelled=self._cancel_dependents(row, now), cancelled_instead=instead)

    def release(self, job_id: str, worker_id: str, attempt: int, now: float) -> bool:
        return self._release(job_id, worker_id, attempt, now) is not None

    def _release(self, job_id: str, worker_id: str, attempt: int, now: float) -> Optional[Cascade]:
        """`release`, saying what it did as `apply` does: None if not held so."""
        with self._lock:
            row = self._held(job_id, worker_id, attempt)
            if row is None:
                return None
            row.attempts -= 1
            cancelled = row.cancel_requested  # cancel() returned True: it never runs
            row.worker_id, row.lease_expires_at, row.cancel_requested = None, None, False
            if not cancelled:
                self._set_status(row, JobStatus.PENDING)
                return _NO_CASCADE
            self._end(row, JobStatus.CANCELLED, now)
            row.error, row.error_type = CANCELLED_BY_REQUEST, CANCELLED_ERROR_TYPE
            return Cascade(cancelled=self._cancel_dependents(row, now), cancelled_instead=True)

    def _apply_one(self, s: Settlement, worker_id: str, now: float) -> Optional[Cascade]:
        if s.kind == "release":  # its cascade says whether it ended CANCELLED instead
            return self._release(s.job_id, worker_id, s.attempt, now)
        return super()._apply_one(s, worker_id, now)

    def apply(self, settlements: Sequence[Settlement], claim_ids: Sequence[str], worker_id: str,
              now: float, lease_expires_at: float, top_up: Optional[Collection[str]] = None,
              up_to: Optional[int] = None, *,
              claim_seqs: Optional[Sequence[int]] = None, claim_released: int = 0,
              released_functions: Optional[Collection[str]] = None,
              ) -> tuple[builtins.list[Optional[Cascade]], builtins.list[JobRecord]]:
        clear_way(self._lock)
        with self._lock:  # one atomic step, as SQLite's single transaction
            cascades, claimed = super().apply(settlements, claim_ids, worker_id, now, lease_expires_at, top_up, up_to)
            for entry in released_to_claim(cascades, now, claim_released, released_functions):
                record = self.claim(entry.job_id, worker_id, now, lease_expires_at)
                if record is not None:
                    claimed.append(record)
            return cascades, claimed

    def update_progress(self, job_id: str, worker_id: str, attempt: int, progress: float,
                        message: str, details: dict[str, Any], now: float) -> bool:
        with self._lock:
            row = self._held(job_id, worker_id, attempt)
            if row is None:
                return False
            row.progress, row.progress_message, row.progress_details = progress, message, copy_nested(details)
            return True

    def add_log(self, job_id: str, level: str, message: str, now: float) -> None:
        with self._lock:
            if job_id in self._jobs:  # a line for a job deleted meanwhile is dropped
                self._logs.setdefault(job_id, []).append((now, level, message))

    def heartbeat(self, worker_id: str, job_ids: Collection[str], lease_expires_at: float,
                  now: float) -> builtins.list[str]:
        with self._lock:
            requested = []
            for job_id in job_ids:
                row = self._jobs.get(job_id)
                if row is not None and row.status is JobStatus.RUNNING and row.worker_id == worker_id:
                    row.lease_expires_at = lease_expires_at
                    if row.cancel_requested:
                        requested.append(row.id)
            return requested

    def recover_expired(self, now: float) -> builtins.list[QueueEntry]:
        return list(self.recover(now).requeued)

    def recover(self, now: float) -> Recovery:
        with self._lock:
            recovered: list[QueueEntry] = []
            failed: list[str] = []
            cancelled_ids: list[str] = []
            for row in sorted(self._by_status[JobStatus.RUNNING].values(), key=_seq_of):
                if row.lease_expires_at is None or row.lease_expires_at >= now:
                    continue
                message = f"worker {row.worker_id} lost its lease on attempt {row.attempts}"
                if row.cancel_requested or row.attempts > row.max_retries:
                    cancelled = row.cancel_requested
                    self._end(row, JobStatus.CANCELLED if cancelled else JobStatus.FAILED, now)
                    row.error, row.error_type = message, "JobCancelled" if cancelled else "WorkerLost"
                    (cancelled_ids if cancelled else failed).append(row.id)
                    self._cancel_dependents(row, now)
                else:  # to run again, from no progress
                    self._set_status(row, JobStatus.PENDING)
                    row.lease_expires_at = None
                    row.error, row.error_type = message, "WorkerLost"
                    row.progress, row.progress_message, row.progress_details = 0.0, "", {}
                    recovered.append(row.queue_entry())
                self._logs.setdefault(row.id, []).append((now, "warning", message))
            return Recovery(tuple(recovered), tuple(failed), tuple(cancelled_ids))

    def fail_schedule(self, schedule_id: str, error: str, now: float) -> bool:
        with self._lock:
            row = self._jobs.get(schedule_id)
            if row is None or not row.is_schedule or row.status is not JobStatus.SCHEDULED:
                return False
            self._end(row, JobStatus.FAILED, now)
            row.error, row.error_type = error, "CorruptJob"
            return True

    def fire_schedule(self, schedule_id: str, fire_at: float, next_run_at: float, run: JobRecord,
                      now: float) -> bool:
        with self._lock:
            schedule = self._jobs.get(schedule_id)
            if (schedule is None or not schedule.is_schedule or schedule.status is not JobStatus.SCHEDULED
                    or schedule.run_at != fire_at):
                return False
            if run.id in self._jobs:
                raise id_taken(run.id)
            schedule.run_at = next_run_at
            self._note_runnable(schedule_id)
            row = _stored(run)
            row.seq = run.seq = self._next_seq
            self._next_seq += 1
            row.created_at = now
            self._add_row(row)
            return True
