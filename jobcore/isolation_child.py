"""The loop a pooled child process runs: attempts it is sent; it decides no timeouts or retries.

A child receives one `AttemptRequest` at a time over its pipe, imports the job's function
by module and qualified name, runs it with `current_job()` bound to a context whose
reports travel back over the pipe, and answers with the value or a `RemoteFailure`. It
does not decide timeouts, cancellation or retries (the parent terminates it instead),
and it never touches storage. The parent side is `jobcore.isolation`.

Messages from the child are tuples: `("ready",)` once, as it starts (an attempt's
timeout counts from there, not from the child's start-up); then, for each attempt,
`("progress", progress, message, details)`,
`("log", level, message)`, then exactly one of `("result", value, reusable)` or
`("error", RemoteFailure, reusable)`; `reusable` is False when the child should be retired.
Reports made after that answer (by a thread the job left running) are dropped here.
So is all a copy of the child sends that a job made with `os.fork()`; such a copy
that returns from the job exits, and does not serve the child's next request.
The child leads a process group of its own, so the processes its jobs start can be
ended with it.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import sys
import threading
import time
import traceback as traceback_module
from multiprocessing.connection import Connection, wait as wait_for_ready
from multiprocessing.reduction import ForkingPickler
from typing import Any, Callable, Optional

from . import serialization
from .context import JobContext
from .execution import call_job, mark_isolated_child
from .isolation_wire import AttemptRequest, UnpicklableResult, describe_exception, resolve_function

try:
    import resource
except ImportError:  # not on Windows
    resource = None  # type: ignore[assignment]


# Progress reports cross the pipe at most this often (seconds), each attempt's. A job
# reporting in a tight loop sent one message a report: the engine spent about 10 µs of CPU
# on each (a core at 80%) and held the job to its pace (a report cost 9 µs against 1.5 in
# a thread job). One made sooner is held, the latest only, and sent when the time comes
# (by the flusher thread), before a log line (their order is kept) or before the answer.
REPORT_EVERY = 0.01


class _PipeSink:
    """The child's end of the pipe to the parent, shared by the attempts it runs in turn.

    Only the child itself writes to it: a copy a job made with `os.fork()` holds the same
    pipe, and what it sent (its reports, its answer) would be read as the child's."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.pid = os.getpid()
        # lock guards writes to _conn (a job's own threads may report concurrently), each
        # `_AttemptSink`'s open flag, so no report follows its attempt's answer, and its
        # held report; and _holding below. held_report waits on it.
        self.lock = threading.Lock()
        self.held_report = threading.Condition(self.lock)
        self._holding: Optional[_AttemptSink] = None  # the sink holding one
        self.broken = False  # the parent closed its end (see `report_locked`)
        # Started here, as the child starts: not by a job's report, under the attempt's
        # memory_limit (where it may not start). If it cannot start, reports go at once.
        self.holds = self._start_flusher()

    def _start_flusher(self) -> bool:
        flusher = threading.Thread(target=self._flush, name="jobcore-child-reports", daemon=True)
        try:
            flusher.start()
        except RuntimeError:  # no thread to be had
            return False
        return True

    def flush_later_locked(self, sink: _AttemptSink) -> None:
        """Have `sink`'s held report sent when it is due; called with `lock` held."""
        self._holding = sink
        self.held_report.notify()

    def _flush(self) -> None:
        """The flusher thread: send each held report when it is due."""
        with self.lock:
            while True:
                if self._holding is None:
                    self.held_report.wait()
                    continue
                sink = self._holding
                left = sink.due_locked() - time.monotonic()
                if left > 0:
                    self.held_report.wait(left)
                    continue
                self._holding = None
                sink.send_held_locked()
                if self.broken:  # the parent stopped listening: it is ending us
                    return

    def forked(self) -> bool:
        """True in a copy of the child a job forked (which drops what it would send)."""
        return os.getpid() != self.pid

    def send_bytes(self, data: Any) -> None:
        if self.forked():  # (before the lock: another thread may have held it at the fork)
            return
        with self.lock:
            self._conn.send_bytes(data)

    def report_locked(self, data: Any) -> None:
        """Send a progress or log report; called with `lock` held. Dropped once the parent
        closed its end (it is ending us: a timeout, a cancel): the attempt is over, and
        its report is ignored, as a thread job's is. Raised, it cut short the job's
        `finally` blocks, which log their cleanup."""
        if self.broken:
            return
        try:
            self._conn.send_bytes(data)
        except (OSError, ValueError):
            self.broken = True


class _AttemptSink:
    """One attempt's progress and log reports to the parent (a `ContextSink`).

    Closed when the attempt ends, before its answer is sent: the parent takes every
    report for the attempt it is running, so a report from a thread the job left behind
    would otherwise land on the next job this child runs (its progress, its log). Such
    late reports are dropped. Progress details are checked here as the engine checks
    them in a thread job, so a bad one raises at the job's own call."""

    def __init__(self, pipe: _PipeSink, request: AttemptRequest) -> None:
        self._pipe = pipe
        self._check_details = request.check_details
        self._max_bytes = request.max_payload_bytes
        # Guarded by pipe.lock: whether the attempt is on, its progress report held (see
        # REPORT_EVERY: pickled as it was made), and when the last one was sent.
        self._open = True
        self._held: Optional[memoryview] = None
        self._sent_at = -math.inf

    def report_progress(self, context: JobContext, progress: float, message: str,
                        details: dict[str, Any]) -> None:
        if details and self._check_details:
            serialization.encode(details, field="progress details", max_bytes=self._max_bytes)
        if self._pipe.forked():
            return
        data = ForkingPickler.dumps(("progress", progress, message, details))
        with self._pipe.lock:
            if not self._open:
                return
            now = time.monotonic()
            if self._held is None and (now - self._sent_at >= REPORT_EVERY or not self._pipe.holds):
                self._pipe.report_locked(data)
                self._sent_at = now
                return
            if self._held is None:
                self._pipe.flush_later_locked(self)
            self._held = data

    def report_log(self, context: JobContext, level: str, message: str) -> None:
        if self._pipe.forked():
            return
        data = ForkingPickler.dumps(("log", level, message))
        with self._pipe.lock:
            if self._open:
                self.send_held_locked()
                self._pipe.report_locked(data)

    def due_locked(self) -> float:
        """When a report held is to be sent (time.monotonic; called with pipe.lock held)."""
        return self._sent_at + REPORT_EVERY

    def send_held_locked(self) -> None:
        """Send the progress report held, if any (called with pipe.lock held)."""
        if self._held is not None and self._open:
            self._pipe.report_locked(self._held)
            self._sent_at = time.monotonic()
        self._held = None

    def close(self) -> None:
        """The attempt is over: its report held is sent (before its answer), later ones
        are dropped."""
        if self._pipe.forked():
            return
        with self._pipe.lock:
            self.send_held_locked()
            self._open = False


class _Termination:
    """Set by the SIGTERM handler: the parent is ending this child (timeout, cancel, close)."""

    requested = False


def _on_sigterm(signum: int, frame: Any) -> None:
    # Raising in the main thread interrupts a busy loop between bytecodes and lets the
    # job's `finally` blocks run; the parent sends SIGKILL if this does not end us in time.
    _Termination.requested = True
    raise SystemExit(128 + signum)


def memory_limit_supported() -> bool:
    """True if `memory_limit` is enforced here (RLIMIT_AS on Linux and similar)."""
    return resource is not None and hasattr(resource, "RLIMIT_AS") and sys.platform != "darwin"


def serve(conn: Connection, lifeline: Connection) -> None:
    """The child's main loop: run attempts until the pipe closes or `None` arrives.

    `lifeline` is the read end of a pipe whose only write end the engine holds: it reads
    as ended once the engine is gone, and then this process exits, busy or not."""
    mark_isolated_child()  # before any job's module is imported: it may start a manager
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGTERM, _on_sigterm)
    if hasattr(os, "setpgid"):
        # A process group of its own, which the processes a job starts join: a timeout
        # or a cancel ends them with the child (`isolation_process.end_child`).
        os.setpgid(0, 0)
    _exit_with_engine(lifeline)
    pipe = _PipeSink(conn)
    try:
        try:
            pipe.send_bytes(ForkingPickler.dumps(("ready",)))
        except OSError:
            return  # the parent is ending us already
        while True:
            try:
                request = conn.recv()
            except (EOFError, OSError):
                return  # the parent closed the pipe or died
            if request is None:
                return
            reply = _attempt(request, pipe)
            if pipe.forked():
                # A copy the job forked came back out of it (no `os._exit` on its path):
                # it neither answers for the child nor serves the child's next request.
                _leave_fork(reply[0] == "result")
            try:
                data = ForkingPickler.dumps(reply)
            except Exception as exc:  # the return value does not pickle
                error = UnpicklableResult(f"the return value of {request.qualname} ({type(reply[1]).__name__})"
                                  f" cannot be sent back from the child process: {exc}")
                data = ForkingPickler.dumps(("error", describe_exception(error, ""), True))
            try:
                pipe.send_bytes(data)
            except OSError:
                return  # the parent stopped listening: it is ending us
            if not reply[2]:
                return
    except BaseException:
        if _Termination.requested:
            _die_by_sigterm()
        raise


def _leave_fork(succeeded: bool) -> None:
    """End a copy of the child a job forked, which returned from the job (0) or raised (1)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(0 if succeeded else 1)


def _die_by_sigterm() -> None:
    """End with the SIGTERM wait status, so the parent sees what happened to us."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)
    os._exit(128 + signal.SIGTERM)  # not reached on POSIX


def _attempt(request: AttemptRequest, pipe: _PipeSink) -> tuple[Any, ...]:
    if request.sys_path is not None:
        sys.path[:] = request.sys_path
    sink = _AttemptSink(pipe, request)
    context = JobContext(request.job_id, request.name, request.attempt, sink)
    restore = _limit_memory(request.memory_limit, context)
    reusable = True
    try:
        func = resolve_function(request.module, request.qualname)
        return ("result", call_job(func, request.args, request.kwargs, context, asyncio.run), reusable)
    except BaseException as exc:  # reported to the parent; the child lives on
        if _Termination.requested:
            raise
        if isinstance(exc, MemoryError):
            reusable = False  # allocations half-failed inside libraries: start afresh
        return ("error", describe_exception(exc, traceback_module.format_exc()), reusable)
    finally:
        context.ended = True  # as in a worker thread: code the job left running sees it over
        sink.close()
        if restore is not None:
            restore()


def _limit_memory(limit: Optional[int], context: JobContext) -> Optional[Callable[[], None]]:
    """Lower RLIMIT_AS to `limit` bytes for this attempt; returns how to undo it."""
    if limit is None:
        return None
    if resource is None or not hasattr(resource, "RLIMIT_AS"):
        context.log(f"memory_limit ignored: this platform has no RLIMIT_AS ({sys.platform})", "warning")
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    wanted = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (wanted, hard))
    except (ValueError, OSError) as exc:
        context.log(f"memory_limit ignored: setrlimit(RLIMIT_AS, {wanted}) failed: {exc}", "warning")
        return None
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _exit_with_engine(lifeline: Connection) -> None:
    """Exit as soon as the engine's end of `lifeline` closes, so that a busy job cannot
    outlive the engine that ran it (nothing is ever written to it)."""
    def watch() -> None:
        wait_for_ready([lifeline])
        if hasattr(os, "killpg") and os.getpgrp() == os.getpid():
            # The processes the job started, in the group this child leads, go with it:
            # left, they ran on beside the job's retry by another engine.
            try:
                os.killpg(os.getpid(), signal.SIGKILL)  # (this process among them)
            except OSError:
                pass
        os._exit(1)
    threading.Thread(target=watch, name="jobcore-isolated-lifeline", daemon=True).start()


