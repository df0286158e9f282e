"""The child side of process isolation: the loop a pooled child process runs, and the wire format.

A child receives one `AttemptRequest` at a time over its pipe, imports the job's function
by module and qualified name, runs it with `current_job()` bound to a context whose
reports travel back over the pipe, and answers with the value or a `RemoteFailure`. It
does not decide timeouts, cancellation or retries (the parent terminates it instead),
and it never touches storage. The parent side is `jobcore.isolation`.

Messages from the child are tuples: `("progress", progress, message, details)`,
`("log", level, message)`, then exactly one of `("result", value, reusable)` or
`("error", RemoteFailure, reusable)`; `reusable` is False when the child should be retired.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import pickle
import signal
import sys
import threading
import traceback as traceback_module
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from typing import Any, Callable, Optional

from .context import JobContext, bind, unbind
from .execution import accepts_progress_callback

ORPHAN_CHECK_INTERVAL = 1.0  # seconds between checks that the parent is still alive

try:
    import resource
except ImportError:  # not on Windows
    resource = None  # type: ignore[assignment]


@dataclass(frozen=True)
class AttemptRequest:
    """What the parent sends to run one attempt: the function by name, and the job."""

    module: str
    qualname: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    job_id: str
    name: str
    attempt: int
    memory_limit: Optional[int] = None          # bytes of address space (RLIMIT_AS)
    sys_path: Optional[tuple[str, ...]] = None   # the parent's sys.path when it changed


@dataclass(frozen=True)
class RemoteFailure:
    """An exception raised in the child, in a form that always crosses the pipe.

    `pickled` holds the instance only when it survived a pickle round trip with the same
    type and message; `args` and `state` (its `__dict__`) only when they pickle; `bases`
    names the exception classes in its MRO after its own, nearest first."""

    module: str
    qualname: str
    message: str
    traceback: str
    pickled: Optional[bytes] = None
    args: Optional[tuple[Any, ...]] = None
    state: Optional[dict[str, Any]] = None
    bases: tuple[tuple[str, str], ...] = ()


def describe_exception(exc: BaseException, traceback_text: str) -> RemoteFailure:
    """Pack `exc` for the trip to the parent (see `RemoteFailure`)."""
    cls = type(exc)
    message = _safe_str(exc)
    pickled = None
    try:
        data = pickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
        copy = pickle.loads(data)
        if type(copy) is cls and _safe_str(copy) == message:
            pickled = data
    except Exception:  # unpicklable, or a constructor that does not accept its own args
        pass
    return RemoteFailure(
        module=getattr(cls, "__module__", "builtins") or "builtins",
        qualname=getattr(cls, "__qualname__", cls.__name__),
        message=message, traceback=traceback_text, pickled=pickled,
        args=_if_picklable(tuple(exc.args)), state=_if_picklable(dict(getattr(exc, "__dict__", {}))),
        bases=tuple((base.__module__, base.__qualname__) for base in cls.__mro__[1:]
                    if isinstance(base, type) and issubclass(base, BaseException)),
    )


def resolve_function(module: str, qualname: str) -> Callable[..., Any]:
    """Import `module` and follow `qualname` to the job's callable; ImportError if absent."""
    try:
        target: Any = importlib.import_module(module)
    except Exception as exc:
        raise ImportError(f"the child process cannot import module {module!r} for job function"
                          f" {qualname!r}: {type(exc).__name__}: {exc}") from exc
    for part in qualname.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            hint = (" (a function defined under `if __name__ == '__main__':` does not exist when"
                    " the main module is imported in a child)" if module == "__main__" else "")
            raise ImportError(f"the child process found no {qualname!r} in module {module!r}{hint}") from None
    return target


class _PipeSink:
    """Sends a job's progress and log reports to the parent (a `ContextSink`)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        # _lock guards writes to _conn: a job's own threads may report concurrently.
        self._lock = threading.Lock()

    def report_progress(self, context: JobContext, progress: float, message: str,
                        details: dict[str, Any]) -> None:
        self.send(("progress", progress, message, details))

    def report_log(self, context: JobContext, level: str, message: str) -> None:
        self.send(("log", level, message))

    def send(self, message: tuple[Any, ...]) -> None:
        self.send_bytes(ForkingPickler.dumps(message))

    def send_bytes(self, data: Any) -> None:
        with self._lock:
            self._conn.send_bytes(data)


class _Termination:
    """Set by the SIGTERM handler: the parent is ending this child (timeout, cancel, close)."""

    requested = False


def _on_sigterm(signum: int, frame: Any) -> None:
    # Raising in the main thread interrupts a busy loop between bytecodes and lets the
    # job's `finally` blocks run; the parent sends SIGKILL if this does not end us in time.
    _Termination.requested = True
    raise SystemExit(128 + signum)


def serve(conn: Connection) -> None:
    """The child's main loop: run attempts until the pipe closes or `None` arrives."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGTERM, _on_sigterm)
    _watch_parent(os.getppid())
    sink = _PipeSink(conn)
    try:
        while True:
            try:
                request = conn.recv()
            except (EOFError, OSError):
                return  # the parent closed the pipe or died
            if request is None:
                return
            reply = _attempt(request, sink)
            try:
                data = ForkingPickler.dumps(reply)
            except Exception as exc:  # the return value does not pickle
                error = TypeError(f"the return value of {request.qualname} ({type(reply[1]).__name__})"
                                  f" cannot be sent back from the child process: {exc}")
                data = ForkingPickler.dumps(("error", describe_exception(error, ""), True))
            sink.send_bytes(data)
            if not reply[2]:
                return
    except SystemExit:
        if not _Termination.requested:
            raise
        _die_by_sigterm()


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


def _attempt(request: AttemptRequest, sink: _PipeSink) -> tuple[Any, ...]:
    if request.sys_path is not None:
        sys.path[:] = request.sys_path
    context = JobContext(request.job_id, request.name, request.attempt, sink)
    restore = _limit_memory(request.memory_limit, context)
    reusable = True
    try:
        func = resolve_function(request.module, request.qualname)
        return ("result", _call(func, request.args, request.kwargs, context), reusable)
    except BaseException as exc:  # reported to the parent; the child lives on
        if _Termination.requested:
            raise
        if isinstance(exc, MemoryError):
            reusable = False  # allocations half-failed inside libraries: start afresh
        return ("error", describe_exception(exc, traceback_module.format_exc()), reusable)
    finally:
        if restore is not None:
            restore()


def _call(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
          context: JobContext) -> Any:
    call_kwargs = dict(kwargs)
    if accepts_progress_callback(func):
        call_kwargs["progress_callback"] = context.progress_callback
    token = bind(context)
    try:
        value = func(*args, **call_kwargs)
        if inspect.isawaitable(value):
            value = asyncio.run(_await(value))
        return value
    finally:
        unbind(token)


async def _await(awaitable: Any) -> Any:
    return await awaitable


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


def _watch_parent(parent_pid: int) -> None:
    """Exit if we are orphaned, so a busy job cannot outlive the engine that ran it.

    (With forkserver our parent is the fork server, which exits when the engine does.)"""
    def watch() -> None:
        tick = threading.Event()
        while not tick.wait(ORPHAN_CHECK_INTERVAL):
            if os.getppid() != parent_pid:
                os._exit(1)
    threading.Thread(target=watch, name="jobcore-isolated-orphan-watch", daemon=True).start()


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return f"<{type(exc).__name__}: str() failed>"


def _if_picklable(value: Any) -> Any:
    try:
        pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return None
    return value
