"""`Lifecycle`: when a manager's threads start and stop (`start`, `stop`, `close`) and what
a forked child does with them, with the state and locks those calls share.

Runs no thread itself (`WorkerPool` and `Housekeeper` run them) and checks no caller's
arguments: `JobManager`, which owns one and delegates to it, states the contract.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Optional, Protocol, Sequence

from . import lock_waits
from .clock import Clock, real_monotonic
from .context import current_job
from .enqueuing import Enqueuer
from .execution import in_isolated_child
from .forks import on_fork_in_child
from .housekeeper import Housekeeper
from .lock_waits import waitable_lock
from .notify_dispatch import NotificationDispatcher
from .repository.base import JobRepository
from .workers import WorkerPool

logger = logging.getLogger("jobcore")


class Forkable(Protocol):
    """A part of a manager that gets locks of its own in a forked child."""

    def forked(self) -> None: ...


class Lifecycle:
    """Whether one manager runs (`running`), and the calls that change it: see
    `JobManager.start`, `stop` and `close` for what they promise.

    `load_queue` indexes the stored jobs (the manager's own, which its housekeeper calls
    too); `parts` are the manager's parts that a forked child resets (`forked`), in that
    order."""

    def __init__(self, repository: JobRepository, clock: Clock, pool: WorkerPool, housekeeper: Housekeeper,
                 enqueuer: Enqueuer, notifier: NotificationDispatcher, parts: Sequence[Forkable], *,
                 immediate: bool, worker_id: str, load_queue: Callable[[], bool]) -> None:
        self._repository = repository
        self._clock = clock
        self._pool = pool
        self._housekeeper = housekeeper
        self._enqueuer = enqueuer
        self._notifier = notifier
        self._parts = tuple(parts)
        self._immediate = immediate
        self.worker_id = worker_id
        self._load_queue = load_queue
        # _lock guards running, _stops and _stop_unfinished. `start` holds it throughout;
        # `stop` only to change them, not while it waits for jobs (see `_stop_threads`).
        self._lock = waitable_lock()
        self.running = False  # True between `start` and `stop` (read without the lock)
        self._stops = 0  # `stop` calls stopping the pool and housekeeper now: `start` waits for them
        self._stops_ended = threading.Condition(self._lock)  # notified as each of those returns
        # A stop began, and none has stopped the pool and housekeeper since (one was
        # interrupted, by Ctrl-C say): the next `stop` does it, the next `start` takes over.
        self._stop_unfinished = False
        # `.call` is "start" or "stop" while this thread is inside that call: a signal
        # handler that interrupts it runs on the same thread, and must not wait for it.
        self._in_lifecycle = threading.local()
        # True in a child forked while this manager ran: its workers stayed in the parent.
        self.forked_while_running = False
        # True once `close` released the parts: `start` refuses (guarded by _lock). SQLite's
        # closed store refused it anyway; the memory store ran jobs whose events no channel heard.
        self._closed = False
        on_fork_in_child(self, "_forked")

    def start(self) -> None:
        """`JobManager.start` (see there), but for the argument checks and the return."""
        if in_isolated_child() and not self._immediate:
            logger.debug("manager %s not started: this process runs isolated attempts", self.worker_id)
            return
        call = getattr(self._in_lifecycle, "call", None)
        if call is not None:
            raise RuntimeError(f"start() called while this thread is inside {call}() (from a signal handler?)"
                               " would wait for itself; call it once that returned")
        self._in_lifecycle.call = "start"
        try:
            with self._lock:
                if self.forked_while_running:
                    raise RuntimeError("this manager was started in the process this one was forked from, and"
                                       " its workers run there; build a new JobManager to run workers in this"
                                       " process")
                if self._closed:
                    raise RuntimeError("start() called on a closed manager: close() released its repository and"
                                       " notification threads; build a new JobManager")
                if self._stops:
                    job = current_job()
                    if job is not None and job.runs_on(self._pool):
                        raise RuntimeError("start() called from inside one of this manager's jobs while stop()"
                                           " waits for its jobs would wait for itself")
                    while self._stops:  # a start must not race a stop: it follows it
                        lock_waits.wait(self._stops_ended, self._lock)
                if self.running:
                    return
                if self._immediate:
                    self._load_queue()
                    self.running = True
                    return
                # Expired leases are not taken back here: the housekeeper does, a lease after
                # its first heartbeat (at once for gone workers of this host: see LeaseTiming).
                try:
                    self._enqueuer.starting = True  # (before the read: see `Enqueuer.starting`)
                    # Work the other managers or processes store from the read on is heard of.
                    unlisten = self._housekeeper.listen()
                    try:
                        self._load_queue()
                    except BaseException:
                        unlisten()
                        raise
                    # The housekeeper first: its start registers this manager as a worker, a
                    # store call that may fail; it must fail before any worker takes a job.
                    self._housekeeper.start(unlisten)
                    try:
                        self._pool.start()
                    except BaseException:
                        self._pool.stop(0.0)  # what it started takes no job, and ends
                        self._housekeeper.stop(0.0)
                        raise
                    self._stop_unfinished = False  # (an interrupted stop's threads were taken over)
                    self.running = self._enqueuer.started = True
                finally:
                    self._enqueuer.starting = False
        finally:
            self._in_lifecycle.call = None

    def stop(self, wait: bool, timeout: Optional[float]) -> None:
        """`JobManager.stop` (see there) with `timeout` already checked."""
        if getattr(self._in_lifecycle, "call", None) is not None:
            return  # the start or stop this thread is inside goes on once the handler returns
        job = current_job()
        if wait and job is not None and job.runs_on(self._pool):
            raise RuntimeError("stop() called from inside one of this manager's jobs would wait for that"
                               " job itself; call stop(wait=False) there, or stop() from another thread")
        if wait and self._pool.on_own_thread():  # (a retry_on classifier, a channel's wants())
            raise RuntimeError("stop() called on one of this manager's own threads would wait for that"
                               " thread itself; call stop(wait=False) there, or stop() from another thread")
        self._in_lifecycle.call = "stop"
        try:
            stopped = self._stop_threads(timeout if wait else 0.0)
        finally:
            self._in_lifecycle.call = None
        # Bounded: a user's callback channel that hangs must not hang stop(). Not on a
        # delivery thread (a channel stopping the manager): it would wait for itself.
        if stopped and not self._notifier.on_delivery_thread() \
                and not self._notifier.flush(timeout=5.0 if wait else 0.5):
            # Said, as close() says it: a `with` block's stop, then the process's exit, lost
            # the events of a slow channel without a word.
            for channel, left in self._notifier.backlog():
                logger.warning("notification channel %r still busy as the manager stops: %d events not"
                               " handled yet, delivered while this process lives (close() waits 5 s more)",
                               channel, left)

    def _stop_threads(self, timeout: Optional[float]) -> bool:
        """Stop the pool and the housekeeper, waiting for running jobs up to `timeout`;
        False if there was nothing to stop: not started, and no stop under way or left
        unfinished. The lock is held only to change the state, so that concurrent stops
        each keep to their own timeout (one under way is joined, not taken for done)."""
        counted = False  # whether this stop is counted in _stops (the finally uncounts it)
        try:  # begun before the count: Ctrl-C just after it left it counted, and close() waited for ever
            with self._lock:
                if self.running:
                    self._stop_unfinished = True
                    self.running = self._enqueuer.started = False
                elif not (self._stop_unfinished or self._stops):
                    return False
                if self._immediate:
                    self._stop_unfinished = False
                    return False
                self._stops += 1
                counted = True
            deadline = None if timeout is None else real_monotonic() + timeout
            self._pool.stop(timeout)
            self._housekeeper.stop(None if deadline is None else max(0.0, deadline - real_monotonic()))
            self._pool.flush_logs()  # lines no outcome carries (an attempt given up after its timeout)
            # The other managers of the process look now: the retries and scheduled jobs
            # this one timed are theirs to run (a retry due a second on waited for their
            # next look, 30 s with that discovery_interval).
            self._housekeeper.ring()
            # Unfinished still if the pool's dispatcher was left to finish on its own (a
            # signal handler's stop inside an enqueue's exchange): the next stop, or
            # `close`, waits for it.
            left = self._pool.dispatcher_left
            with self._lock:
                self._stop_unfinished = left
        finally:
            if counted:
                with self._lock:
                    self._stops -= 1
                    self._stops_ended.notify_all()
        return True

    def close(self, stop: Callable[[], None], release: Callable[[], None] = lambda: None) -> None:
        """`JobManager.close` (see there): `stop()` (the manager's own, which a subclass
        may extend), then release the parts, call `release()`, and close the repository."""
        if self._notifier.on_delivery_thread():
            raise RuntimeError("close() called from a notification channel would wait for itself;"
                               " call stop() there, and close() from another thread")
        job = current_job()
        if job is not None and job.runs_on(self._pool):
            raise RuntimeError("close() called from inside one of this manager's jobs would wait for that"
                               " job itself; call stop(wait=False) there, and close() from another thread")
        call = getattr(self._in_lifecycle, "call", None)
        if call is not None:
            raise RuntimeError(f"close() called while this thread is inside {call}() (from a signal handler?)"
                               " would wait for itself; call stop() there, and close() once that returned")
        stop()
        with self._lock:
            while self._stops:  # another thread's stop returns before what it uses is released
                lock_waits.wait(self._stops_ended, self._lock)
            self._closed = True
        self._housekeeper.close()  # leases it still renews after a stop: renewed no more
        self._pool.close()
        self._notifier.close()
        release()
        self._repository.close()

    def _forked(self) -> None:
        """In a forked child. The parent's threads stayed in the parent, with the locks
        they held at the fork and the jobs they held (buffered, running, being recorded):
        here the parts get locks of their own, and the pool holds nothing, so `wait` and
        `poll` read those jobs' rows (they settle there). The notification channels'
        delivery threads and the events queued for them stay in the parent too: events
        published here go to the same channels, on threads of this process. A child
        forked while this manager ran goes on as a manager that is not started: it
        stores, polls and cancels jobs, and whatever runs jobs on the store (the parent,
        say) runs those enqueued here. No thread of this process is inside `start` or
        `stop` (the parent's are not here)."""
        self._lock = waitable_lock()
        self._stops_ended = threading.Condition(self._lock)
        self._stops = 0
        self._stop_unfinished = False
        self._in_lifecycle = threading.local()
        for part in self._parts:
            part.forked()
        if self.running and not self._immediate:  # an immediate manager has no threads
            self.forked_while_running = True
            self.running = self._enqueuer.started = False
