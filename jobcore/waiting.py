"""`Settlements`: what one manager knows of the jobs that settled in its process, and the
callers blocked in `wait` until a job settles.

It reads no rows itself: `wait` is given how to read one, how to read the statuses of
many, and how to tell whether the job is held here (then it settles here, and its
waiters are woken at that moment, and no one else: each settlement costs the same
however many threads wait for other jobs). Jobs settled by other processes are noticed
by one `polling.StatusPoller` for all the callers: it reads the statuses of every job
waited for in one call, at growing intervals, and wakes the callers of those that ended;
each caller reads its own job's row only when it begins to wait and once it was told to.
"""

from __future__ import annotations

import functools
import math
import threading
from collections import OrderedDict
from typing import Callable, Iterable, Optional, Union

from . import lock_waits
from .clock import SYSTEM_CLOCK, real_monotonic
from .errors import JobNotFound, RepositoryError
from .job_ids import made_by_jobcore
from .lock_waits import waitable_lock
from .models import JobResult, JobStatus
from .polling import Statuses, StatusPoller
from .pool_state import RECORDING
from .completions import Completion
from .records import result_of
from .repository.base import JobRecord, statuses_read_one_by_one

RECENT_COMPLETIONS = 4096  # jobs completed here that `wait` can answer without a read, at first
MOST_COMPLETIONS = 32_768  # and at most: remembered while callers of `wait` fall behind
BEHIND_READS = 16  # reads of jobs completed here, while that many are remembered, to double it
FIRST_INTERVAL = 0.01  # seconds between reads of a job another process may settle, doubling
LAST_INTERVAL = 0.1  # to this
# The longest a caller sleeps at once (a timeout past what a lock can wait for, 10**400
# or inf, raised OverflowError); it looks again after it.
LONGEST_SLEEP = 3600.0
CLOSE_LOOKS = 2.0  # seconds `close` waits at most for the callers it woke to look once more
POLLER_LINGER = 1.0  # seconds the thread reading them waits for another caller once none waits
# Seconds a waiter told by the poller that its job ended elsewhere still waits, unread, for
# that job's outcome being recorded here (see `Settlements._look`); the poller tells it
# again at its next read, up to LAST_INTERVAL later.
RECORDING_GRACE = 0.5


class _Waiters:
    """The threads in `Settlements.wait` for one job id, and how they are woken."""

    __slots__ = ("threads", "told", "ended_elsewhere", "woken")

    def __init__(self, lock: threading.RLock) -> None:
        # All guarded by the owning `Settlements`' lock (`woken` is a condition on it).
        self.threads = 0  # in `wait` for this id: the record goes when the last one leaves
        # Times they were told to look again since the first of them came (the job settled
        # here, or the poller found it ended, gone or unreadable): a waiter compares it with
        # what it saw before it looked, so news between its look and its sleep is not missed.
        self.told = 0
        # When (real monotonic) the poller first found the job's row ended, gone or
        # unreadable, else None: from then on each look reads the row, even while this
        # process still holds the job (an attempt that runs on here after another process
        # took the job back and settled it), but not, for RECORDING_GRACE, while its ended
        # attempt's outcome is being recorded here (`_look`).
        self.ended_elsewhere: Optional[float] = None
        self.woken = threading.Condition(lock)  # notified when they are told


class Settlements:
    """The jobs settled here, and the threads waiting for one (see module docstring)."""

    def __init__(self) -> None:
        # _lock guards _waiters (each one's fields too: its condition is on this lock),
        # _completions, _keep and _behind. One condition per job waited for, not one for
        # all: with one, every settlement woke every waiter, and each whose job was not
        # held here read its row again, so the work per job grew with the threads waiting
        # (200 of them: about 80 row reads per job). Reentrant: `close` from a signal
        # handler may interrupt this thread while it holds the lock inside `wait` (it
        # waited for itself for ever; found by a review).
        self._lock = waitable_lock()
        self._closed = False  # by `close`: a job not ended then is waited for no more
        self._left = threading.Condition(self._lock)  # notified as the last waiter of a job leaves, once closed
        self._inside = threading.local()  # .waits: how many `wait` calls this thread is inside
        self._waiters: dict[str, _Waiters] = {}  # job id -> the threads in `wait` for it
        # The latest jobs completed here, oldest first (at most _keep): `wait` answers from
        # these without reading the row back. A caller waiting on every job in turn may fall
        # further behind the workers than that; each job it then reads back was completed
        # here before the oldest one remembered, and after BEHIND_READS of them _keep
        # doubles (up to MOST_COMPLETIONS, about 0.8 KB each), so it catches up again
        # instead of reading every job from then on. A large one is never here (see
        # `Completion.of`): with 100 KB of metadata each, 4,096 held 410 MB. Those of jobs
        # with ids of their own are kept too, but never answered from (see `completed`).
        self._completions: OrderedDict[str, Completion] = OrderedDict()
        self._keep = RECENT_COMPLETIONS
        self._behind = 0  # reads counted towards the next doubling
        # Completions made (`Completion.at`, read before their commit) at or before this
        # are not remembered: see `forget_all`.
        self._forgotten_until = -math.inf
        # Reads the jobs waited for that another process may settle, for every caller at
        # once (the callers each read their own at intervals before: see polling).
        self._poller = StatusPoller(self._look_again, first_interval=FIRST_INTERVAL,
                                    last_interval=LAST_INTERVAL, linger=POLLER_LINGER)

    def forked(self) -> None:
        """In a forked child: no thread waits here yet (the parent's stayed there), and a
        lock of its own (one of them may have held this one)."""
        self._lock = waitable_lock()
        self._left = threading.Condition(self._lock)
        self._waiters = {}
        self._poller.forked()

    def note(self, settled: Iterable[tuple[str, Optional[Completion]]]) -> None:
        """Remember the completions among these settlements (a `Completion` each), waking
        no one: `mark` does, once the jobs no longer look held here. Noted while they still
        do, a job is never seen neither held nor remembered (a `wait` then read its row)."""
        with self._lock:
            self._note_locked(settled)

    def _note_locked(self, settled: Iterable[tuple[str, Optional[Completion]]]) -> None:
        completions = self._completions
        for job_id, completion in settled:
            if completion is not None and completion.at > self._forgotten_until:
                completions[job_id] = completion
                if len(completions) > self._keep:
                    completions.popitem(last=False)

    def mark(self, settled: Iterable[tuple[str, Optional[Completion]]], *, noted: bool = False) -> None:
        """Note that these jobs reached a terminal state here (each with its `Completion`
        if it completed; `noted`: `note` remembered those already) and wake whoever waits
        for one of them, and no one else: a waiter woken finds its job already noted."""
        if not noted:
            settled = list(settled)  # (gone through twice)
        with self._lock:
            if not noted:
                self._note_locked(settled)
            waiters = self._waiters
            for job_id, _ in settled:
                waiting = waiters.get(job_id) if waiters else None  # most settle with nobody waiting
                if waiting is not None:
                    waiting.told += 1
                    waiting.woken.notify_all()

    def close(self) -> None:
        """The manager closed: end the poller's thread, and wake every caller still
        waiting: each looks once more, and raises RepositoryError if its job has not
        ended (a closed SQLite or PostgreSQL store raises on that look already; a memory
        store, whose close changes nothing, had its callers wait for ever)."""
        # On a thread inside `wait` (a signal handler's close), nothing is waited for: the
        # frame it interrupted may hold what the others need.
        inside = bool(getattr(self._inside, "waits", 0))
        self._poller.close(join=not inside)
        with self._lock:
            self._closed = True
            for waiting in self._waiters.values():
                waiting.told += 1
                waiting.woken.notify_all()
            # Their last looks, before the store closes (`close` closes it next): a
            # caller whose job had ended elsewhere, not yet read by the poller, read a
            # closed store and raised instead of returning its result (found by a
            # review). Bounded: a look blocked behind a locked store is not waited out.
            deadline = real_monotonic() + CLOSE_LOOKS
            while self._waiters and not inside and (left := deadline - real_monotonic()) > 0:
                lock_waits.wait(self._left, self._lock, left)

    def _look_again(self, job_ids: list[str]) -> None:
        """The poller's news: wake the waiters of these jobs to read them (each ended, is
        gone, or could not be read in the batch), and no one else."""
        with self._lock:
            for job_id in job_ids:
                waiting = self._waiters.get(job_id)
                if waiting is not None:
                    waiting.told += 1
                    if waiting.ended_elsewhere is None:
                        waiting.ended_elsewhere = real_monotonic()
                    waiting.woken.notify_all()

    def completed(self, job_id: str) -> Optional[JobResult]:
        """What `poll` would show of `job_id` if it is among the latest jobs completed here
        (see `wait`, which answers from the same: a completed job's row never changes, and
        only for ids jobcore made, never given again); else None."""
        with self._lock:
            completion = self._completions.get(job_id)
        # Asked here, of the few jobs asked about, not of every completion noted.
        if completion is None or not made_by_jobcore(job_id):
            return None
        return completion.job_result()

    def forget(self, job_ids: Iterable[str]) -> None:
        """Forget the completions of these ids (used again by new jobs after theirs were
        deleted, by any process)."""
        # Looked up first without the lock (one dict lookup each, whole under the GIL):
        # an id is only ever found here after its job was deleted and its id given again,
        # so most enqueues take no lock for this.
        completions = self._completions
        known = [job_id for job_id in job_ids if job_id in completions] if completions else None
        if known:
            with self._lock:
                for job_id in known:
                    completions.pop(job_id, None)

    def forget_all(self, deleted_by: float = -math.inf) -> None:
        """Forget every completion (their rows may have been deleted), and every one made
        at or before `deleted_by` (a time read once the rows were deleted) that is noted
        later: committed before the delete, a completion may be noted after it (its `wait`
        returned from the row first), and `wait` then answered COMPLETED for a job deleted.
        (Times of the manager's clock, read before each commit and after the delete: only a
        clock set back between the two lets one through; one not remembered is read.)"""
        with self._lock:
            self._completions.clear()
            self._forgotten_until = max(self._forgotten_until, deleted_by)

    def __len__(self) -> int:
        """How many completions are remembered."""
        with self._lock:
            return len(self._completions)

    def wait(self, job_id: str, timeout: Optional[float], *, held: Callable[[str], int],
             read: Callable[[str], Optional[JobRecord]], statuses: Optional[Statuses] = None,
             worker_id: Optional[str] = None, sleeping: Optional[Callable[[], None]] = None) -> JobResult:
        """Block until `job_id` is terminal and return what `poll` would show of it.

        `timeout`: seconds (checked by the caller; None: no limit), then `TimeoutError`.
        `held(job_id)` tells whether the job settles here (truthy: then its row is not read
        until it has; `pool_state.RECORDING` once its outcome is being recorded); `read` reads its row without arguments; `statuses` reads the statuses of
        many jobs (as `JobRepository.get_statuses`; None: one `read` each). `worker_id`:
        the one this process completes jobs as (a completed row of its read back counts as
        falling behind). `sleeping()` is called once, before the caller first sleeps.
        `JobNotFound` for an unknown id.

        The row is read when the wait begins, and again only when the job settled here
        (and was not remembered), or the poller found it ended or gone: however many
        threads wait, the rows read while they do grow with time, not with their number."""
        completed = self.completed(job_id)
        if completed is not None:  # completed here already: answered without joining its waiters
            return completed
        deadline = None if timeout is None else SYSTEM_CLOCK.monotonic() + timeout
        poller, counted = self._poller, False
        watching: list[bool] = []  # True once the poller counts this call among the job's watchers
        # Joined in the same step as counted there (no point between where Ctrl-C lands):
        # one landing as `_enter` returned, before the `try`, left a waiter counted for
        # ever (and `close` waited for it).
        entered: list[_Waiters] = []
        try:
            self._enter(job_id, entered)
            waiting = entered[0]
            self._inside.waits = getattr(self._inside, "waits", 0) + 1
            counted = True
            while True:
                with self._lock:
                    seen = waiting.told  # before looking: news after it wakes the sleep
                    elsewhere = waiting.ended_elsewhere
                found = self._look(job_id, held, read, worker_id, elsewhere_since=elsewhere)
                if isinstance(found, JobResult):
                    return found
                if self._closed:
                    raise RepositoryError(f"job {job_id!r} is still {found.value}, and its manager was closed")
                remaining = None if deadline is None else deadline - SYSTEM_CLOCK.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"job {job_id!r} is still {found.value} after {timeout}s")
                if not watching:
                    if sleeping is not None:
                        sleeping()
                    poller.watch(job_id, statuses or functools.partial(statuses_read_one_by_one, read),
                                 watching)
                # Settled here: woken at once (and only its waiters are). Settled by another
                # process: woken once the poller reads it ended. With no poller thread (none
                # could start), the caller reads its job itself every LAST_INTERVAL.
                if not poller.ensure_running():
                    remaining = LAST_INTERVAL if remaining is None else min(LAST_INTERVAL, remaining)
                self._sleep(waiting, seen, remaining)
        finally:
            if counted:
                self._inside.waits -= 1
            if watching:
                poller.unwatch(job_id)
            if entered:
                self._leave(job_id, entered[0])

    def _enter(self, job_id: str, entered: list[_Waiters]) -> None:
        """Count the caller among the waiters of `job_id`, for the rest of its `wait`, and
        put them in `entered` at once."""
        with self._lock:
            waiting = self._waiters.get(job_id)
            if waiting is None:
                waiting = self._waiters[job_id] = _Waiters(self._lock)
            waiting.threads += 1
            entered.append(waiting)

    def _leave(self, job_id: str, waiting: _Waiters) -> None:
        """The caller's `wait` for `job_id` is over: the last one out drops its waiters."""
        with self._lock:
            waiting.threads -= 1
            if not waiting.threads:
                del self._waiters[job_id]
                if self._closed:
                    self._left.notify_all()

    def _look(self, job_id: str, held: Callable[[str], int], read: Callable[[str], Optional[JobRecord]],
              worker_id: Optional[str], elsewhere_since: Optional[float] = None) -> Union[JobResult, JobStatus]:
        """What `wait` would return now if the job is terminal, else its status (RUNNING,
        unread, while it is held here, unless the poller found its row ended elsewhere
        (`elsewhere_since`, when it first did): the attempt here may never return. Unread
        still for RECORDING_GRACE after that news while its outcome is being recorded here.
        See `wait` for the other arguments."""
        completed = self.completed(job_id)
        if completed is not None:  # completed here: its row holds nothing else
            return completed
        holding = held(job_id)
        # It settles here, and wakes us then: no need to read. After the poller's news too,
        # for a while, once its attempt is over (RECORDING): its outcome's exchange settles
        # it here at once, whether it commits or finds the job taken back; the poller often
        # reads the row between that commit and the settling, and each waiter then read it
        # for nothing. Not for longer: a recording held up (a store locked by another
        # program) kept a job another process had completed waiting for it.
        if holding and (elsewhere_since is None or (
                holding == RECORDING and real_monotonic() - elsewhere_since < RECORDING_GRACE)):
            return JobStatus.RUNNING
        record = read(job_id)
        if record is None:
            raise JobNotFound(job_id)
        if not record.status.is_terminal:
            return record.status
        if record.status is JobStatus.COMPLETED and worker_id is not None and record.worker_id == worker_id:
            self._read_back(record.completed_at)
        return result_of(record)

    def _read_back(self, completed_at: Optional[float]) -> None:
        """A job completed here (at `completed_at`) was read back: count it if it was
        forgotten, having completed before the oldest completion remembered (not one
        read between its commit and `mark`), and remember more after enough of them."""
        with self._lock:
            if len(self._completions) < self._keep or self._keep >= MOST_COMPLETIONS:
                return
            oldest = next(iter(self._completions.values()))
            if completed_at is None or completed_at >= oldest.at:
                return
            self._behind += 1
            if self._behind >= BEHIND_READS:
                self._keep, self._behind = min(2 * self._keep, MOST_COMPLETIONS), 0

    def _sleep(self, waiting: _Waiters, seen: int, seconds: Optional[float]) -> None:
        """Sleep up to `seconds` (None: no limit; at most LONGEST_SLEEP at a time: the
        caller looks again after it), or until the waiters `waiting` holds are told to
        look again; not at all if they were told since `waiting.told` was `seen`."""
        if seconds is not None and seconds > LONGEST_SLEEP:  # (inf, 1e300: past what a lock can wait)
            seconds = LONGEST_SLEEP
        with self._lock:
            if waiting.told == seen:
                lock_waits.wait(waiting.woken, self._lock, seconds)

