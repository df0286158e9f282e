"""Process isolation: a pool of reusable child processes running job attempts; no retry policy, no storage.

A timeout or a cancel terminates the child (SIGTERM, then SIGKILL after a grace period)
and a fresh one replaces it on demand; a child that dies fails the attempt with
`WorkerProcessDied`, unless it died while starting, before the attempt reached it (then
another child runs it). A child outlives its forkserver, and is then watched through its
pipe and ended by its pid. `close` ends busy children too. Children come from the `forkserver` context on Linux and `spawn`
elsewhere, never from a fork of the threaded engine. This module decides nothing about
retries, persists nothing, and does not pick which jobs run isolated: the worker pool
hands it attempts. This module is the parent's side of an attempt: it hands the attempt
to a child, relays its reports and turns its answer, its death, a timeout or a cancel into
the outcome. Starting, lending, retiring and ending the children is
`jobcore.isolation_pool`; the child's loop, `jobcore.isolation_child`; what crosses the
pipe, `jobcore.isolation_wire`; one child and how it ends, `jobcore.isolation_process`.
"""

from __future__ import annotations

import logging
import pickle
import sys
import traceback as traceback_module
from dataclasses import dataclass
from multiprocessing.connection import wait as wait_for_ready
from multiprocessing.reduction import ForkingPickler
from typing import Any, Callable, Optional

from .clock import Clock, SystemClock, as_seconds, real_monotonic
from .context import JobContext
from .errors import JobCancelled, JobcoreError, JobTimeout
from .execution import Outcome
from .isolation_child import REPORT_EVERY, memory_limit_supported
from .isolation_pool import POLL_INTERVAL, ChildPool, FailedStart
from .isolation_process import Child, how_it_ended, outlived_server
from .isolation_wire import (AttemptRequest, NotIsolatable, RemoteError, RemoteFailure,
                              isolation_problem, rebuild_exception)

__all__ = ["NotIsolatable", "ProcessRunner", "RemoteError", "RunnerStats", "WorkerProcessDied",
           "isolation_problem", "memory_limit_supported"]

logger = logging.getLogger("jobcore.isolation")

_TRIES = 3  # children one attempt may use up when they die before it reaches them
_DRAIN_SECONDS = 0.2  # at most, relaying what a child sent before its timeout or cancel
# How long after a child's last progress report it may still send one it held (sent by its
# flusher REPORT_EVERY after the last one; the rest is room for that thread to be woken).
_HELD_REPORT_WAIT = 3 * REPORT_EVERY
START_TIMEOUT = 60.0  # seconds a fresh child may take to start before its attempt fails


class WorkerProcessDied(JobcoreError, OSError):
    """The child process running an attempt died before answering (a crash, `os._exit`,
    a signal, the out-of-memory killer). An `OSError`, so the default classifier retries it."""

    def __init__(self, message: str, *, exitcode: Optional[int] = None, pid: Optional[int] = None) -> None:
        super().__init__(message)
        self.exitcode = exitcode
        self.pid = pid


@dataclass(frozen=True)
class RunnerStats:
    """Counters of a `ProcessRunner` since it was built."""

    started: int      # child processes started
    reused: int       # attempts that ran in a child that had run one before
    running: int      # attempts running now
    idle: int         # children waiting for an attempt
    terminated: int   # children ended by a timeout or cancel
    died: int         # children that died on their own


class ProcessRunner:
    """A pool of reusable child processes running job attempts (see the module docstring).

    Children start lazily, at most `max_processes` at a time, each running one attempt at
    a time. `grace` is how many seconds a terminated child has between SIGTERM and
    SIGKILL. `max_attempts_per_process` retires a child after that many attempts (None:
    never). A fresh child that has not started within `start_timeout` seconds is ended
    and its attempt fails with `WorkerProcessDied`; an attempt's timeout starts only once
    its child has started. Thread-safe; `run` blocks the calling thread for the attempt."""

    def __init__(self, max_processes: int, *, grace: float = 1.0,
                 max_attempts_per_process: Optional[int] = None, start_method: Optional[str] = None,
                 clock: Optional[Clock] = None, start_timeout: float = START_TIMEOUT) -> None:
        if isinstance(max_processes, bool) or not isinstance(max_processes, int) or max_processes < 1:
            raise ValueError(f"max_processes must be an int >= 1, got {max_processes!r}")
        if isinstance(grace, bool) or not isinstance(grace, (int, float)) or not grace >= 0:
            raise ValueError(f"grace must be a number of seconds >= 0, got {grace!r}")
        grace = as_seconds(grace)
        self._start_timeout = as_seconds(start_timeout)
        self._clock = clock or SystemClock()
        # The children, their counters and their lock (which this class never takes).
        self._pool = ChildPool(max_processes, grace, max_attempts_per_process, start_method, self._clock)

    @property
    def start_method(self) -> str:
        """'forkserver' or 'spawn'."""
        return self._pool.start_method

    @property
    def stats(self) -> RunnerStats:
        """A snapshot of the counters."""
        return RunnerStats(*self._pool.counts())

    def pids(self) -> list[int]:
        """Process ids of the live children (idle or busy)."""
        return self._pool.pids()

    # -- running an attempt ---------------------------------------------------------------------
    def run(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
            context: JobContext, *, timeout: Optional[float] = None,
            memory_limit: Optional[int] = None, check_details: bool = False,
            max_payload_bytes: Optional[int] = None) -> Outcome:
        """Run one attempt of `func(*args, **kwargs)` in a child as the job `context`;
        block until it ends; never raise.

        Progress and log reports reach `context`. On `timeout` (seconds) the child is
        terminated and the outcome is `JobTimeout`; once `context.cancelled` (checked every
        `POLL_INTERVAL`) it is `JobCancelled`; a child that dies gives `WorkerProcessDied`.
        An exception from the job comes back as its own class when that can be rebuilt
        here, else as a `RemoteError`; the traceback is the child's. `memory_limit` caps
        the child's address space in bytes (RLIMIT_AS) for this attempt. With
        `check_details`, progress details must encode as JSON (within `max_payload_bytes`):
        the job's call raises otherwise, as in a thread job on a persistent store."""
        try:
            return self._run(func, args, kwargs, context, timeout, memory_limit,
                             (check_details, max_payload_bytes))
        except BaseException as exc:  # the worker thread must survive anything
            # No context.id here: the context may be what failed (run must not raise).
            logger.exception("an isolated attempt failed in the runner")
            return Outcome(error=exc, traceback=traceback_module.format_exc())

    def _run(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
             context: JobContext, timeout: Optional[float], memory_limit: Optional[int],
             details: tuple[bool, Optional[int]]) -> Outcome:
        problem = isolation_problem(func)
        if problem is not None:
            return Outcome(error=NotIsolatable(_describe(func), problem))
        module, qualname = func.__module__, func.__qualname__
        # A child that died while idle, or while starting (before it could run the job:
        # Ctrl-C reaching it before it ignores SIGINT, say), is not the job's failure: replaced.
        failed_start: Optional[Outcome] = None
        for _ in range(_TRIES):
            child = self._pool.acquire(lambda: self._stopped(context, None, None))
            if isinstance(child, FailedStart):  # (the forkserver killed as it started, say)
                failed_start = Outcome(error=WorkerProcessDied(f"could not start a child process: {child.error}"),
                                       traceback=child.traceback)
                continue
            if isinstance(child, Outcome):
                return child
            path = tuple(sys.path)
            request = AttemptRequest(module, qualname, tuple(args), dict(kwargs), context.id, context.name,
                                     context.attempt, memory_limit, None if path == child.sys_path else path,
                                     *details)
            try:
                data = ForkingPickler.dumps(request)
            except Exception as exc:
                self._pool.release(child, reusable=True)
                return Outcome(error=TypeError(f"the arguments of job {context.id} cannot be sent to a"
                                               f" child process (they must pickle): {exc}"))
            child.sys_path = path  # (a child the request does not reach is used no more)
            outcome = self._supervise(child, context, timeout, data)
            if outcome is not None:
                return outcome
        if failed_start is not None:
            return failed_start
        return Outcome(error=WorkerProcessDied(f"{_TRIES} child processes in a row died before job {context.id}"
                                               " could be handed to them (while idle or starting)"))

    def _supervise(self, child: Child, context: JobContext, timeout: Optional[float],
                   request: memoryview) -> Optional[Outcome]:
        """Send `request` and relay the child's reports until its answer, its death, a
        timeout or a cancel; None if the child died before the request reached it (while
        idle or starting), so that the job could not run in it.

        The timeout counts from the child's "ready" (sent once, as it starts): starting a
        child is the pool's cost, not the job's. Until then the start-up limit applies,
        and the request waits: one larger than the pipe holds would block here until a
        child still starting read it, past its start-up limit and any cancel."""
        if child.ready and not self._send(child, request):
            return None
        watched = [child.conn, child.process.sentinel]
        starting = not child.ready
        child.reported_at = None
        deadline = self._deadline(self._start_timeout if starting else timeout)
        while True:
            wait = POLL_INTERVAL
            if deadline is not None:
                wait = max(0.0, min(wait, deadline - self._clock.monotonic()))
            try:
                ready = wait_for_ready(watched, wait)
            except (OSError, ValueError):  # its pipe was closed under us: ended at exit
                return self._gone(child, context, starting)
            if child.conn in ready:
                try:
                    raw = child.conn.recv_bytes()
                except (EOFError, OSError):
                    return self._gone(child, context, starting)
                outcome = self._handle(raw, child, context)
                if outcome is not None:
                    return outcome
                if starting and child.ready:
                    starting = False
                    if not self._send(child, request):
                        return None
                    deadline = self._deadline(timeout)
            elif ready:  # only the sentinel
                if outlived_server(child):
                    # The forkserver died, not the child: its pipe still tells when it answers
                    # or dies (EOF), so it is watched by that alone.
                    logger.warning("the forkserver that started child process %s (job %s) died;"
                                   " the child runs on", child.pid, context.id)
                    watched = [child.conn]
                else:  # dead, yet something holds its pipe open
                    return self._gone(child, context, starting)
            if starting and deadline is not None and self._clock.monotonic() >= deadline:
                self._pool.terminate(child)
                message = (f"the child process (pid {child.pid}) for job {context.id} did not start"
                           f" within {self._start_timeout:g}s")
                logger.warning("%s", message)
                return Outcome(error=WorkerProcessDied(message, pid=child.pid))
            stopped = self._stopped(context, timeout, None if starting else deadline)
            if stopped is not None:
                return self._stop(child, context, stopped)

    def _send(self, child: Child, request: memoryview) -> bool:
        """Hand the attempt to a started child; False if it died (while idle, just now)."""
        try:
            child.conn.send_bytes(request)
        except OSError:
            self._pool.dead(child)
            return False
        return True

    def _deadline(self, timeout: Optional[float]) -> Optional[float]:
        return None if timeout is None else self._clock.monotonic() + timeout

    def _stop(self, child: Child, context: JobContext, stopped: Outcome) -> Outcome:
        """End an attempt that timed out or was cancelled; `stopped` says which.

        What the child sent before is relayed first, as the job's own thread would have
        stored it by then: its log lines and progress reports, or its answer, which is
        then the outcome (the attempt had ended). For at most `_DRAIN_SECONDS`: a child
        that goes on reporting is ended all the same."""
        drain_until = real_monotonic() + _DRAIN_SECONDS
        # A progress report made within REPORT_EVERY of the last one the child sent is held
        # there, and sent when that time comes: waited for until then, from the last report
        # before the stop (not from each one read since: a child reporting all along kept
        # the wait going to the end of the drain, 0.2 s).
        held_until = None if child.reported_at is None else min(drain_until, child.reported_at + _HELD_REPORT_WAIT)
        try:
            while (now := real_monotonic()) < drain_until:
                wait = 0.0 if held_until is None else max(0.0, held_until - now)
                if not child.conn.poll(wait):
                    break
                outcome = self._handle(child.conn.recv_bytes(), child, context)
                if outcome is not None:
                    return outcome
        except (EOFError, OSError):  # it died meanwhile: what it sent was read
            pass
        self._pool.terminate(child)
        return stopped

    def _handle(self, raw: bytes, child: Child, context: JobContext) -> Optional[Outcome]:
        """Act on one message from the child; an Outcome once the attempt is over."""
        try:
            message = pickle.loads(raw)
        except Exception as exc:  # e.g. a result whose class does not load here
            self._pool.terminate(child)
            return Outcome(error=TypeError(f"a message from the child process running job {context.id}"
                                           f" cannot be unpickled here: {type(exc).__name__}: {exc}"))
        kind = message[0]
        if kind == "ready":
            child.ready = True
            return None
        if kind == "result":
            self._pool.release(child, reusable=message[2])
            return Outcome(value=message[1])
        if kind == "error":
            self._pool.release(child, reusable=message[2])
            failure: RemoteFailure = message[1]
            return Outcome(error=rebuild_exception(failure), traceback=failure.traceback or None)
        try:
            if kind == "progress":  # (sent before the child could know of a cancel: stored)
                child.reported_at = real_monotonic()
                context.relay_progress(message[1], message[2], message[3])
            elif kind == "log":
                context.log(message[2], message[1])
        except Exception:  # a report that cannot be stored must not end the job
            logger.warning("could not record a %s report of job %s", kind, context.id, exc_info=True)
        return None

    def _stopped(self, context: JobContext, timeout: Optional[float],
                 deadline: Optional[float]) -> Optional[Outcome]:
        if context.cancelled or context.abandoned:
            return Outcome(error=JobCancelled(context.id))
        if deadline is not None and self._clock.monotonic() >= deadline:
            return Outcome(error=JobTimeout(timeout or 0.0))
        return None

    # -- a child that died -----------------------------------------------------------------------
    def _gone(self, child: Child, context: JobContext, starting: bool) -> Optional[Outcome]:
        """A child that died: its attempt's outcome, or None if it died while starting
        (before "ready", so before it could have received the attempt) on its own."""
        exitcode = self._pool.dead(child)
        if starting and not (child.closing or child.at_exit):
            logger.warning("child process %s died while starting (exit status %s), before job %s"
                           " could run in it; trying another", child.pid, exitcode, context.id)
            return None
        return self._died_outcome(exitcode, child, context)

    @staticmethod
    def _died_outcome(exitcode: Optional[int], child: Child, context: JobContext) -> Outcome:
        pid = child.pid
        how = how_it_ended(child, exitcode)
        message = f"the child process (pid {pid}) running job {context.id} {how} before returning a result"
        logger.warning("%s", message)
        return Outcome(error=WorkerProcessDied(message, exitcode=exitcode, pid=pid))

    def close(self, timeout: float = 5.0) -> None:
        """Stop taking attempts and end every child: an idle one gets up to `timeout`
        seconds to exit on its pipe's end before it is killed; a busy one, with its process
        group, SIGTERM and then SIGKILL after the grace period. Returns once they are gone.
        An attempt whose child this ended fails with `WorkerProcessDied` (its runner was
        closed); the engine records no such outcome: the job's lease lapses instead."""
        self._pool.close(timeout)

    def __enter__(self) -> "ProcessRunner":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _describe(func: Callable[..., Any]) -> str:
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)
    module = getattr(func, "__module__", None)
    return f"{module}.{name}" if module else str(name)
