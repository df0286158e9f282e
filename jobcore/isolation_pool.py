"""The child processes of a `ProcessRunner` as a pool: started, lent, taken back, retired, ended and counted; no attempt protocol.

`ChildPool` lends an idle child (the warmest) or starts one while below its limit, else
waits for one; takes back a child that answered, or retires it (after
`max_attempts` attempts, once orphaned, once closed); ends a busy child at once (a
timeout, a cancel) or reaps one that died, and refills its place on demand; ends every
child at `close` and at interpreter exit. Children come from the `forkserver` or `spawn`
context, never from a fork of the threaded engine. It sends nothing to a child and reads
nothing from one: what an attempt sends and hears, and its outcome, are
`jobcore.isolation`'s; one child and how it ends, `jobcore.isolation_process`.
"""

from __future__ import annotations

import logging
import multiprocessing
import sys
import threading
import traceback as traceback_module
from dataclasses import dataclass
from multiprocessing.util import Finalize
from typing import Any, Callable, Optional, Union

from . import lock_waits
from .clock import Clock
from .execution import ISOLATED_PROCESS_NAME, Outcome
from .isolation_child import serve
from .lock_waits import waitable_lock
from .isolation_process import Child, alive, default_start_method, end_all, end_child

logger = logging.getLogger("jobcore.isolation")

CHILD_MODULE = serve.__module__  # what a child runs, jobcore with it
POLL_INTERVAL = 0.05  # seconds between checks for cancel while an attempt waits for a child or runs in one


def preload_in_forkserver(context: Any) -> None:
    """Have the fork server, if it has not started yet, import jobcore once for all the
    children it forks, beside the modules it preloads already (`__main__`, or an
    application's own). Each child imported it afresh: 0.17-0.24 s of CPU before its
    first job, where one forked from a server holding it spent 0.03-0.06 (a child starts
    once, and again after each timeout or cancel of a job it runs)."""
    import multiprocessing.forkserver as forkserver  # (Unix only, as the method)

    server = getattr(forkserver, "_forkserver", None)
    preloaded = getattr(server, "_preload_modules", None)
    preloaded = ["__main__"] if preloaded is None else list(preloaded)  # ([]: the application's choice)
    if CHILD_MODULE not in preloaded:
        context.set_forkserver_preload([*preloaded, CHILD_MODULE])


@dataclass(frozen=True)
class FailedStart:
    """A child that could not be started, and why (with the traceback): the attempt tries another."""

    error: Exception
    traceback: str


class ChildPool:
    """At most `max_processes` children, started lazily (see the module docstring).

    `grace` is how many seconds a terminated child has between SIGTERM and SIGKILL;
    `max_attempts` retires a child after that many attempts (None: never). Thread-safe."""

    def __init__(self, max_processes: int, grace: float, max_attempts: Optional[int],
                 start_method: Optional[str], clock: Clock) -> None:
        self._max = max_processes
        self._grace = grace
        self._max_attempts = max_attempts
        # (typeshed's BaseContext lacks `Process`, which every concrete context has)
        self._mp: Any = multiprocessing.get_context(start_method or default_start_method())
        if self.start_method == "forkserver":
            preload_in_forkserver(self._mp)
        self._clock = clock
        # _cond's lock guards _idle, _live, _running, _closed and the counters.
        self._lock = waitable_lock()  # (run_pending runs isolated jobs on a caller's thread)
        self._cond = threading.Condition(self._lock)
        self._idle: list[Child] = []
        self._live = 0      # children started and not yet ended (idle, busy or starting)
        self._running = 0
        self._closed = False
        self._started = self._reused = self._terminated = self._died = 0
        # Every child not yet ended; shared with the exit-time finalizer, which must not
        # hold a reference to self. Guarded by _cond's lock.
        self._children: set[Child] = set()
        # Children get the read end; the write end stays here only (spawn and forkserver
        # pass no other descriptors), so it reads as ended when this process is gone.
        self._lifeline, lifeline_w = self._mp.Pipe(duplex=False)
        # exitpriority: runs at interpreter exit before multiprocessing joins its children.
        self._finalizer = Finalize(self, end_all, args=(self._children, self._cond, self._grace, lifeline_w),
                                   exitpriority=10)

    @property
    def start_method(self) -> str:
        """'forkserver' or 'spawn'."""
        return str(self._mp.get_start_method())

    def counts(self) -> tuple[int, int, int, int, int, int]:
        """started, reused, running, idle, terminated, died: one snapshot (see `RunnerStats`)."""
        with self._cond:
            return (self._started, self._reused, self._running, len(self._idle),
                    self._terminated, self._died)

    def pids(self) -> list[int]:
        """Process ids of the live children (idle or busy)."""
        with self._cond:
            return [c.pid for c in self._children if c.pid is not None]

    # -- lending a child ------------------------------------------------------------------------
    def acquire(self, stopped: Callable[[], Optional[Outcome]]) -> Union[Child, Outcome, FailedStart]:
        """An idle child, or a new one when below the limit; waits for one otherwise.

        An Outcome when the pool is closed, or when `stopped()` (checked before each try)
        gives one: the attempt was cancelled meanwhile."""
        while True:
            stopped_outcome = stopped()
            if stopped_outcome is not None:
                return stopped_outcome
            idle: Optional[Child] = None
            with self._cond:
                if self._closed:
                    return Outcome(error=RuntimeError("the process runner is closed"))
                if self._idle:
                    idle = self._idle.pop()  # the warmest child
                    self._running += 1
            if idle is not None:
                if alive(idle):
                    with self._cond:
                        self._reused += 1
                    return idle
                exitcode = self.dead(idle)  # killed while idle (OOM killer, kill): replace it
                logger.warning("idle child process %s had died (exit status %s); replacing it",
                               idle.pid, exitcode)
                continue
            with self._cond:
                if self._live < self._max:
                    self._live += 1
                    self._running += 1
                    break
                lock_waits.wait(self._cond, self._lock, POLL_INTERVAL)
        try:
            child = self._start_child()
        except Exception as exc:
            with self._cond:
                self._live -= 1
                self._running -= 1
                self._cond.notify()
            logger.error("could not start a child process: %s", exc)
            return FailedStart(exc, traceback_module.format_exc())
        if child is None:
            return Outcome(error=RuntimeError("the process runner is closed"))
        return child

    def _start_child(self) -> Optional[Child]:
        """A new child, counted live and running by the caller; None if `close` came while
        it started (it is ended here: `close` did not see it, and returns without it)."""
        parent_end, child_end = self._mp.Pipe(duplex=True)
        process = self._mp.Process(target=serve, args=(child_end, self._lifeline), name=ISOLATED_PROCESS_NAME,
                                   daemon=False)
        try:
            process.start()
        finally:
            child_end.close()  # else the parent would never see EOF when the child dies
        child = Child(process, parent_end, process.pid, sys_path=tuple(sys.path))
        with self._cond:
            self._started += 1
            closed = self._closed
            if closed:
                self._live -= 1
                self._running -= 1
                self._cond.notify()
            else:
                self._children.add(child)
        if closed:
            end_child(child, self._grace, group=True)
            return None
        logger.debug("started child process %s (%s)", process.pid, self.start_method)
        return child

    # -- ending children --------------------------------------------------------------------------
    def release(self, child: Child, reusable: bool) -> None:
        """Return a child that answered to the idle list, or retire it."""
        child.attempts += 1
        with self._cond:
            self._running -= 1
            keep = reusable and not self._closed and not child.orphaned and (
                self._max_attempts is None or child.attempts < self._max_attempts)
            if keep:
                self._idle.append(child)
            else:
                self._live -= 1
                self._children.discard(child)
            self._cond.notify()
        if not keep:
            end_child(child, self._grace, polite=self._grace)

    def terminate(self, child: Child) -> None:
        """End a busy child at once (timeout, cancel); its place is refilled on demand."""
        with self._cond:
            self._terminated += 1
            self._forget_locked(child)
        end_child(child, self._grace, group=True)

    def dead(self, child: Child) -> Optional[int]:
        """Account for a child that died on its own and reap it, and end what is left of
        its process group (what its job started: nothing of the attempt runs on beside a
        retry); returns its exit code."""
        with self._cond:
            self._died += 1
            self._forget_locked(child)
        # Polite: its pipe is closed, so the exit status follows at once.
        return end_child(child, self._grace, polite=self._grace, group=True)

    def _forget_locked(self, child: Child) -> None:
        self._live -= 1
        self._running -= 1
        self._children.discard(child)
        self._cond.notify()

    def close(self, timeout: float) -> None:
        """Lend no more children and end every child (see `ProcessRunner.close`)."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._live -= len(idle)
            for child in idle:
                self._children.discard(child)
            busy = list(self._children)  # their supervising threads account for them
            for child in busy:
                child.closing = True
            self._cond.notify_all()
        for child in idle:
            child.conn.close()  # EOF: the child's loop returns (all of them at once)
        deadline = self._clock.monotonic() + timeout
        for child in idle:
            end_child(child, self._grace, polite=max(0.0, deadline - self._clock.monotonic()))
        for child in busy:
            end_child(child, self._grace, group=True)
