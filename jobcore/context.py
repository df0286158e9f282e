"""`current_job()` and `JobContext`: what a running job knows about itself.

A worker binds a `JobContext` before calling the job's function; progress and log calls
go to a `ContextSink` (the manager) that stores them. Nothing here touches storage.
"""

from __future__ import annotations

import contextvars
import math
import numbers
import os
from typing import Any, Callable, Optional, Protocol, Union, cast

from .clock import real_monotonic
from .errors import JobCancelled
from .serialization import storable_text

_current: contextvars.ContextVar[Optional["JobContext"]] = contextvars.ContextVar(
    "jobcore_current_job", default=None)

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


# What a progress report takes: any real number (an int, a float, a Fraction, a NumPy float).
RealNumber = Union[float, numbers.Real]


class ContextSink(Protocol):
    """Where a running job's reports go."""

    def report_progress(self, context: "JobContext", progress: float, message: str,
                        details: dict[str, Any]) -> None: ...

    def report_log(self, context: "JobContext", level: str, message: str) -> None: ...


# This process's id, kept current across forks (os.getpid() is a system call).
_process = os.getpid()


def _forked() -> None:
    global _process
    _process = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


class JobContext:
    """The running job, as seen from inside it (`current_job()`).

    `progress()` and `check_cancelled()` raise `JobCancelled` once cancellation was
    requested; let it propagate and the job ends CANCELLED.

    A context belongs to one attempt. Once the attempt is over (it ended, or was abandoned
    after its timeout), it no longer changes the job: `cancelled` is true, `progress()` and
    `check_cancelled()` raise `JobCancelled` and `log()` is ignored, so that code the job
    left running (a thread it started, a context copied into an executor) stops at its
    next report instead of reporting into a later attempt.
    """

    def __init__(self, job_id: str, name: str, attempt: int, sink: ContextSink) -> None:
        self.id = job_id
        self.name = name
        self.attempt = attempt
        self._sink = sink
        self._process = _process  # (a thread forking inside the job keeps it bound in the child)
        # A plain flag, not an Event: nothing waits on it, and one is made per attempt.
        # Setting and reading a bool is atomic; the request only ever goes False -> True.
        self._cancel = False
        # Set by the manager when a timeout gave this attempt up (`abandon`): reports are ignored.
        self.abandoned = False
        # Called by `abandon`, if set: a coroutine job's loop sets it to cancel the job's
        # task there (a thread cannot be stopped from outside; a task can).
        self.on_abandon: Optional[Callable[[], None]] = None
        # Called by `request_cancel`, if set: the same for a cancel of the job, so that a
        # coroutine job ends at its next await (as a task cancelled in asyncio does)
        # rather than run to its end, its outcome kept, unless it reports progress.
        self.on_cancel: Optional[Callable[[], None]] = None
        # Set by the worker once the attempt returned, before its last report is written
        # and its outcome recorded: later reports are refused (see the class docstring).
        self.ended = False
        # True once the job reported progress: its stored row then says more than the
        # claimed record does (see `Completion`), and a report may wait to be stored.
        self.reported_progress = False
        # When the attempt began (real monotonic seconds): its progress reports are stored
        # at most once an interval, counted from here (see `progress.ProgressWriter`).
        self.began_at = real_monotonic()

    def abandon(self) -> None:
        """The engine gave this attempt up (its timeout passed): its reports are ignored
        from now on, and a coroutine job's task is cancelled (`on_abandon`)."""
        self.abandoned = True
        hook = self.on_abandon
        if hook is not None:
            hook()

    @property
    def cancelled(self) -> bool:
        """True once cancellation of this job was requested (or its attempt timed out, or
        is over)."""
        return self._cancel or self.over

    @property
    def over(self) -> bool:
        """True once this attempt ended or was abandoned: it no longer changes the job."""
        return self.abandoned or self.ended

    @property
    def cancel_requested(self) -> bool:
        """True once someone asked to cancel this job (a timeout does not count)."""
        return self._cancel

    def request_cancel(self) -> None:
        """Ask the job to stop (the engine calls this; jobs call `check_cancelled`; a
        coroutine job's task is cancelled, `on_cancel`)."""
        self._cancel = True
        hook = self.on_cancel  # (read after the flag is set: see `event_loops.run_to_end`)
        if hook is not None:
            hook()

    def runs_on(self, sink: object) -> bool:
        """True if this attempt reports to `sink` (the engine asks: is it one of mine?) and
        runs in this process: not in a child the job forked, where nothing runs it."""
        return self._sink is sink and self._process == _process

    def check_cancelled(self) -> None:
        """Raise `JobCancelled` if cancellation was requested, or if the engine gave this
        attempt up after its timeout (its outcome would be discarded anyway), or if the
        attempt is over."""
        if self.cancelled:
            raise JobCancelled(self.id)

    def progress(self, /, progress: RealNumber, message: Optional[str] = "", **details: Any) -> None:
        """Report progress (0.0 to 1.0, clamped), a message (None: none) and JSON details.

        Raises `JobCancelled` if the job was asked to stop, or the attempt is over."""
        self.check_cancelled()
        self.relay_progress(progress, message, details)  # (it may have ended since the check)

    def relay_progress(self, progress: RealNumber, message: Optional[str], details: dict[str, Any]) -> None:
        """Store a progress report the job made in a child process, which could not know
        of a cancel (the engine calls this for `isolation="process"`): unlike `progress`,
        never raises `JobCancelled`; ignored once the attempt is over."""
        value = _fraction_done(progress)
        text = storable_text(message if isinstance(message, str) else "" if message is None else str(message))
        self.reported_progress = True
        if not self.over:
            self._sink.report_progress(self, value, text, details)

    def log(self, message: str, level: str = "info") -> None:
        """Append a line to the job's log (see `JobManager.get_logs`); ignored once the
        attempt is over."""
        level = str(level).lower()
        if level not in LOG_LEVELS:
            raise ValueError(f"log level must be one of {LOG_LEVELS}, got {level!r}")
        if not self.over:
            self._sink.report_log(self, level, storable_text(str(message)))

    def progress_callback(self, /, progress: RealNumber, message: Optional[str] = "", **details: Any) -> None:
        """The `progress_callback` handed to functions that accept one."""
        self.progress(progress, message, **details)

    def __repr__(self) -> str:
        return f"JobContext(id={self.id!r}, name={self.name!r}, attempt={self.attempt})"


def _fraction_done(progress: Any) -> float:
    """`progress` (any real number: int, float, Fraction, a NumPy float) clamped to 0.0-1.0."""
    if progress.__class__ is float and not math.isnan(progress):  # the usual case: no ABC check
        return min(1.0, max(0.0, progress))
    if isinstance(progress, bool) or not isinstance(progress, numbers.Real):
        raise TypeError(f"progress must be a number from 0.0 to 1.0, got {progress!r}")
    try:
        value = float(progress)
    except OverflowError:  # an int too large for a float: far past either end
        return 1.0 if cast(Any, progress) > 0 else 0.0
    if math.isnan(value):
        raise TypeError(f"progress must be a number from 0.0 to 1.0, got {progress!r}")
    return min(1.0, max(0.0, value))


def current_job() -> Optional[JobContext]:
    """The job running in this thread or task, or None outside a job."""
    return _current.get()


def bind(context: Optional[JobContext]) -> contextvars.Token[Optional[JobContext]]:
    """Make `context` the current job (the worker calls this); returns a reset token."""
    return _current.set(context)


def unbind(token: contextvars.Token[Optional[JobContext]]) -> None:
    """Undo `bind`."""
    _current.reset(token)
