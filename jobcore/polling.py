"""`StatusPoller`: one thread per manager that reads, in one batched call every few
milliseconds, the statuses of all the jobs callers of `wait` wait for, and tells which of
them to look again (their job is terminal, or gone, or could not be read).

It decides nothing for a caller, and reads no job whole: `waiting.Settlements` wakes the
callers it names, and each reads its own job's row then, once. A job held here (claimed by
this process's workers: it settles here, and its waiters are woken then) is read too, for
the one way it ends elsewhere: this process lost its lease (see `_round`).

Why one thread: each caller reading its own job's row at intervals cost each of them a
read (and the GIL, and the SQLite connection machinery) every 10 to 100 ms, so 200
threads waiting for jobs still queued made about 2,000 reads a second that fought the
workers for the CPU (200 threads waiting for 2,000 1 ms jobs: up to 8 s instead of 0.6 s).
Now a read covers every job due, whatever the number of callers.
"""

from __future__ import annotations

import atexit
import logging
import math
import threading
import weakref
from typing import Callable, Collection, Mapping, Optional

from .clock import SYSTEM_CLOCK, real_monotonic
from .models import JobStatus
from .repository import sqlite_conn  # (imported first: its exit hook (sqlite_lifetime) must come before ours)

logger = logging.getLogger("jobcore.waiting")

Statuses = Callable[[Collection[str]], Mapping[str, JobStatus]]  # as `JobRepository.get_statuses`

# How long `close` waits for the thread to end (a round under way ends with its read).
CLOSE_WAIT = 5.0

# The pollers whose thread runs, for `_close_at_exit` (a WeakSet: it adds and removes
# under its own guard). A thread still lingering at exit held its SQLite connection, and
# the store then left its commits in the write-ahead log rather than fold them into the
# database file (it skips the close while another thread with a connection is alive).
_RUNNING: "weakref.WeakSet[StatusPoller]" = weakref.WeakSet()


def _close_at_exit() -> None:
    """At interpreter exit: end every poller's thread, so that no jobcore thread is left
    holding a store connection (callers still waiting, on daemon threads, read their own
    jobs from then on)."""
    # All told first, then joined against one deadline: a thread stuck in a read (behind
    # a locked database) cost CLOSE_WAIT each, one after another.
    threads = [poller.close(join=False) for poller in list(_RUNNING)]
    deadline = real_monotonic() + CLOSE_WAIT
    for thread in threads:
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - real_monotonic()))


class _Watched:
    """One job the poller reads: who watches it, how to read it, and when next."""

    __slots__ = ("watchers", "statuses", "due", "interval")

    def __init__(self, statuses: Statuses, due: float, interval: float) -> None:
        # All guarded by the poller's lock.
        self.watchers = 1  # callers of `watch` for this id not yet gone (`unwatch`)
        self.statuses = statuses  # the first watcher's (every watcher of one manager gives the same)
        self.due = due  # monotonic time of its next read
        self.interval = interval  # seconds from that read to the one after, doubling to the last interval


class StatusPoller:
    """Reads the statuses of the jobs watched, each at growing intervals, in as few calls
    as there are `statuses` functions among them (one per manager), and calls `look_again`
    with the ids of those found terminal or gone, or whose read failed.

    `first_interval` and `last_interval`: seconds from a job's first watch to its first
    read, doubling from read to read up to the last (a caller watches a job right after
    reading its row itself). A round reads every job due within half the first interval,
    so rounds come at most every half first interval, however many jobs are watched. The
    thread starts with the first `ensure_running` while something is watched, and ends
    once nothing was watched for `linger` seconds (a caller waiting on job after job keeps
    one thread, and its store connection)."""

    def __init__(self, look_again: Callable[[list[str]], None], *, first_interval: float,
                 last_interval: float, linger: float) -> None:
        self._look_again = look_again  # called without the lock: it takes the waiters' lock
        self._first = first_interval
        self._last = last_interval
        self._linger = linger
        self._slack = first_interval / 2  # how early a round reads a job due soon after it
        self._new_state()

    def _new_state(self) -> None:
        # _lock guards _watched (each entry's fields too), _thread, _sleeping_until and _warned;
        # _wakeup, a condition on it, wakes the thread when a job is watched that is due
        # before it would wake.
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._watched: dict[str, _Watched] = {}  # job id -> how and when it is read
        self._thread: Optional[threading.Thread] = None  # the thread reading them, if one runs
        # While the thread sleeps, the monotonic time it wakes at (math.inf: lingering,
        # nothing watched); None while it runs a round, or no thread runs.
        self._sleeping_until: Optional[float] = None
        self._warned = False  # that no thread could start (said once)
        self._closed = False  # by `close`: no thread starts again

    def forked(self) -> None:
        """In a forked child: nothing is watched and no thread runs (the parent's stayed
        there), and a lock of its own (the thread may have held the parent's); closed if
        the parent's was."""
        closed = self._closed
        self._new_state()
        self._closed = closed

    def watch(self, job_id: str, statuses: Statuses, watching: list[bool]) -> None:
        """Read `job_id`'s status from now on, first in `first_interval` seconds, until as
        many `unwatch` calls as `watch` calls came for it, whether or not it is held here
        (see `_round`). `statuses`: how to read the statuses of jobs (as
        `JobRepository.get_statuses`). `watching` gets True in the same step as the
        call is counted (no point between them where Ctrl-C lands): the caller must
        `unwatch` if it holds True, wherever an interrupt landed after (one as `watch`
        returned left the job read for ever). Call `ensure_running` too."""
        due = SYSTEM_CLOCK.monotonic() + self._first
        with self._lock:
            watched = self._watched.get(job_id)
            if watched is not None:  # another caller waits for it: keep its schedule
                watched.watchers += 1
                watching.append(True)
                return
            self._watched[job_id] = _Watched(statuses, due, min(2 * self._first, self._last))
            watching.append(True)
            if self._sleeping_until is not None and due < self._sleeping_until:
                self._wakeup.notify()

    def unwatch(self, job_id: str) -> None:
        """One caller of `watch(job_id)` no longer needs it read."""
        with self._lock:
            watched = self._watched.get(job_id)
            if watched is None:  # watched before a fork, in the parent (`forked` forgot it)
                return
            watched.watchers -= 1
            if not watched.watchers:
                del self._watched[job_id]

    def close(self, join: bool = True) -> Optional[threading.Thread]:
        """End the thread (waiting, if `join`, for a round under way, up to CLOSE_WAIT
        seconds) and start none again: callers still waiting read their own jobs from
        then on (on a closed store, that raises). For the manager's `close`, and at
        interpreter exit. Returns the thread, if one ran."""
        with self._lock:
            self._closed = True
            thread = self._thread
            self._wakeup.notify()
        if join and thread is not None and thread is not threading.current_thread():
            thread.join(CLOSE_WAIT)
        return thread

    def ensure_running(self) -> bool:
        """Start the thread if none runs. False if it cannot start (the interpreter is
        exiting, or out of threads, or the poller was closed): the caller must then read
        its job itself."""
        with self._lock:
            if self._thread is not None:
                return True
            if self._closed:
                return False
            # Started under the lock: the new thread takes it first thing, so it waits for
            # this call to return; `Thread.start` waits only for it to begin.
            thread = threading.Thread(target=self._run, name="jobcore-waits", daemon=True)
            try:
                thread.start()
            except RuntimeError as exc:
                if not self._warned:  # (each caller asks again before each sleep)
                    self._warned = True
                    logger.warning("no thread could start to read the jobs waited for; each caller of"
                                   " wait reads its own: %s", exc)
                return False
            self._thread = thread
            _RUNNING.add(self)
            return True

    @property
    def thread(self) -> Optional[threading.Thread]:
        """The thread reading the jobs watched, if one runs."""
        with self._lock:
            return self._thread

    def _run(self) -> None:
        ended, last_round = False, -math.inf
        try:
            while (due := self._next_round(last_round + self._slack)) is not None:
                last_round, jobs = due
                self._round(jobs)
                del due, jobs  # (lingering, the thread kept the last round's stores alive, files open)
            ended = True
        finally:
            if not ended:  # not expected: the callers look for themselves, and start another thread
                with self._lock:
                    self._thread = self._sleeping_until = None
                    ids = list(self._watched)
                self._look_again(ids)

    def _next_round(self, not_before: float) -> Optional[tuple[float, list[tuple[str, _Watched]]]]:
        """Sleep until a watched job is due (and until `not_before`, monotonic), then
        return the time and the jobs due within the slack, their next reads planned; None
        once nothing was watched for `linger` seconds (the thread is then forgotten, and
        the next `ensure_running` starts another).

        A round reads every job due up to half the first interval after its start, so
        none is due before the next may start: `not_before` delays none, but keeps the
        rounds apart when one took long (200 callers and 4 workers sharing a GIL, say)."""
        with self._lock:
            idle_since: Optional[float] = None
            while True:
                if self._closed:
                    self._thread = self._sleeping_until = None
                    return None
                now = SYSTEM_CLOCK.monotonic()
                watched = self._watched
                if not watched:
                    idle_since = now if idle_since is None else idle_since
                    left = idle_since + self._linger - now
                    if left <= 0:
                        self._thread = self._sleeping_until = None
                        return None
                    self._sleeping_until = math.inf
                    self._wakeup.wait(left)
                    continue
                idle_since = None
                wake_at = max(min(entry.due for entry in watched.values()), not_before)
                if wake_at > now:
                    self._sleeping_until = wake_at
                    self._wakeup.wait(wake_at - now)
                    continue
                self._sleeping_until = None
                horizon = now + self._slack
                due = [(job_id, entry) for job_id, entry in watched.items() if entry.due <= horizon]
                for _, entry in due:
                    entry.due = now + entry.interval
                    entry.interval = min(2 * entry.interval, self._last)
                return now, due

    def _round(self, due: list[tuple[str, _Watched]]) -> None:
        """Read the statuses of the jobs `due`, one call per `statuses` function, and have
        the callers of those terminal, gone or unread look again. Jobs held here too: a
        process that froze past a job's lease still runs its attempt once it resumes,
        while another process took the job back and settled it, and its waiters learn of
        that only here (the attempt may never return)."""
        by_reader: dict[Statuses, list[str]] = {}
        for job_id, entry in due:  # (entries read without the lock: their functions never change)
            by_reader.setdefault(entry.statuses, []).append(job_id)
        told: list[str] = []
        for statuses, ids in by_reader.items():
            try:
                found = statuses(ids)
            except Exception as exc:  # each caller's own read will raise it, or succeed
                logger.debug("reading the statuses of %d jobs waited for failed; their callers read"
                             " their own rows: %r", len(ids), exc)
                told.extend(ids)
                continue
            for job_id in ids:
                status = found.get(job_id)
                if status is None or status.is_terminal:
                    told.append(job_id)
        if told:
            self._look_again(told)


# Registered at import, after sqlite_conn's (imported above): atexit runs the last
# registered first, so the pollers' threads end before the stores close at exit. (At
# the first thread's start, a first `wait` made inside an exit handler registered it too
# late to run.)
atexit.register(_close_at_exit)
