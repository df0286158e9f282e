"""Process isolation: `ProcessRunner` runs job attempts in a pool of reusable child processes.

A timeout or a cancel terminates the child (SIGTERM, then SIGKILL after a grace period)
and a fresh one replaces it on demand; a child that dies fails the attempt with
`WorkerProcessDied`. Children come from the `forkserver` context on Linux and `spawn`
elsewhere, never from a fork of the threaded engine. This module decides nothing about
retries, persists nothing, and does not pick which jobs run isolated: the worker pool
hands it attempts. The child's side is `jobcore.isolation_child`.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import multiprocessing
import pickle
import signal
import sys
import threading
import traceback as traceback_module
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait as wait_for_ready
from multiprocessing.reduction import ForkingPickler
from multiprocessing.util import Finalize
from typing import Any, Callable, Optional, Union

from .clock import Clock, SystemClock
from .context import JobContext
from .errors import JobCancelled, JobcoreError, JobTimeout, PermanentError
from .execution import Outcome
from .isolation_child import AttemptRequest, RemoteFailure, serve

logger = logging.getLogger("jobcore.isolation")

POLL_INTERVAL = 0.05  # seconds between checks for cancel while a child runs an attempt


class WorkerProcessDied(JobcoreError, OSError):
    """The child process running an attempt died before answering (a crash, `os._exit`,
    a signal, the out-of-memory killer). An `OSError`, so the default classifier retries it."""

    def __init__(self, message: str, *, exitcode: Optional[int] = None, pid: Optional[int] = None) -> None:
        super().__init__(message)
        self.exitcode = exitcode
        self.pid = pid


class NotIsolatable(PermanentError, TypeError):
    """The job's function cannot be found by name in a child process (a lambda, a nested
    function, a bound method...). Raised at enqueue; as an attempt's error, never retried."""

    def __init__(self, function: str, problem: str) -> None:
        super().__init__(f"{function} cannot run with isolation='process': {problem}")
        self.function = function
        self.problem = problem


class RemoteError(JobcoreError):
    """An exception from a child whose class could not be rebuilt here.

    The instance's class is a subclass named like the original (so `error_type` reads the
    same) that also derives from the nearest base class importable here, so
    `isinstance(err, ConnectionError)` still holds for a subclass of it."""

    def __init__(self, message: str, type_module: str, type_qualname: str, remote_traceback: str) -> None:
        super().__init__(message)
        self.type_module = type_module
        self.type_qualname = type_qualname
        self.remote_traceback = remote_traceback


@dataclass(frozen=True)
class RunnerStats:
    """Counters of a `ProcessRunner` since it was built."""

    started: int      # child processes started
    reused: int       # attempts that ran in a child that had run one before
    running: int      # attempts running now
    idle: int         # children waiting for an attempt
    terminated: int   # children ended by a timeout or cancel
    died: int         # children that died on their own


def memory_limit_supported() -> bool:
    """True if `memory_limit` is enforced here (RLIMIT_AS on Linux and similar)."""
    try:
        import resource
    except ImportError:
        return False
    return hasattr(resource, "RLIMIT_AS") and sys.platform != "darwin"


def isolation_problem(func: Callable[..., Any]) -> Optional[str]:
    """None if a child process can import `func` by module and qualified name and call it;
    otherwise a sentence saying why not. Call it at enqueue for `isolation="process"`."""
    if not callable(func):
        return f"{func!r} is not callable"
    if isinstance(func, functools.partial):
        return "a functools.partial has no importable name; register the function itself and pass arguments in the job"
    owner = getattr(func, "__self__", None)
    if (inspect.ismethod(func) or inspect.isbuiltin(func)) and owner is not None \
            and not isinstance(owner, type) and not inspect.ismodule(owner):
        return (f"it is a method bound to a {type(owner).__name__} instance, which a child process"
                " cannot look up by name; use a module-level function, classmethod or staticmethod")
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        return ("it has no __module__ and __qualname__ to find it by (a callable object?);"
                " use a module-level function")
    if "<lambda>" in qualname:
        return "it is a lambda, which has no name a child process can import; define it with def at module level"
    if "<locals>" in qualname:
        return (f"it is defined inside another function ({qualname}), so a child process cannot"
                " import it; move it to module level")
    loaded = sys.modules.get(module)
    if loaded is None:
        return f"its module {module!r} is not imported here"
    if module == "__main__" and not getattr(loaded, "__file__", None):
        return ("it is defined in an interactive __main__ (no script file), which a child process"
                " cannot import; move it into a module")
    target: Any = loaded
    for part in qualname.split("."):
        target = getattr(target, part, _MISSING)
        if target is _MISSING:
            return f"{module}.{qualname} does not lead back to it; define it at module level"
    if target is not func and target != func:
        return (f"{module}.{qualname} names a different object (decorated without functools.wraps,"
                " or redefined?); register the object that module attribute holds")
    return None


_MISSING = object()


def rebuild_exception(failure: RemoteFailure) -> BaseException:
    """The exception a child reported: the original class when it can be rebuilt with the
    same message, else a `RemoteError` subclass named like it."""
    if failure.pickled is not None:
        try:
            exc = pickle.loads(failure.pickled)
            if isinstance(exc, BaseException):
                return exc
        except Exception:  # the class does not load here: fall through
            pass
    cls = _resolve(failure.module, failure.qualname)
    if isinstance(cls, type) and issubclass(cls, BaseException):
        try:
            exc = cls.__new__(cls)
            exc.args = failure.args if failure.args is not None else (failure.message,)
            if failure.state:
                exc.__dict__.update(failure.state)
            if str(exc) == failure.message:
                return exc
        except Exception:  # a class with its own ideas about construction
            pass
    return _remote_class(failure)(failure.message, failure.module, failure.qualname, failure.traceback)


_remote_classes: dict[tuple[str, str], type[RemoteError]] = {}


def _remote_class(failure: RemoteFailure) -> type[RemoteError]:
    key = (failure.module, failure.qualname)
    known = _remote_classes.get(key)
    if known is not None:
        return known
    base: Optional[type] = None
    for module, qualname in failure.bases:
        found = _resolve(module, qualname)
        if isinstance(found, type) and issubclass(found, BaseException):
            base = found
            break
    namespace = {"__module__": failure.module, "__qualname__": failure.qualname}
    name = failure.qualname.rpartition(".")[2]
    cls: type[RemoteError] = type(name, (RemoteError,), namespace)
    if base is not None and not issubclass(RemoteError, base):
        try:
            cls = type(name, (RemoteError, base), namespace)
        except TypeError:  # incompatible layouts: the name and message still come through
            pass
    return _remote_classes.setdefault(key, cls)


def _resolve(module: str, qualname: str) -> Any:
    try:
        target: Any = importlib.import_module(module)
        for part in qualname.split("."):
            target = getattr(target, part)
    except Exception:
        return None
    return target


def _default_start_method() -> str:
    if sys.platform.startswith("linux") and "forkserver" in multiprocessing.get_all_start_methods():
        return "forkserver"
    return "spawn"


@dataclass(eq=False)
class _Child:
    """One pooled child process and the parent's end of its pipe."""

    process: Any  # multiprocessing.Process (BaseProcess)
    conn: Connection
    pid: Optional[int]
    attempts: int = 0
    sys_path: tuple[str, ...] = ()


class ProcessRunner:
    """A pool of reusable child processes running job attempts (see the module docstring).

    Children start lazily, at most `max_processes` at a time, each running one attempt at
    a time. `grace` is how many seconds a terminated child has between SIGTERM and
    SIGKILL. `max_attempts_per_process` retires a child after that many attempts (None:
    never). Thread-safe; `run` blocks the calling thread for the attempt."""

    def __init__(self, max_processes: int, *, grace: float = 1.0,
                 max_attempts_per_process: Optional[int] = None, start_method: Optional[str] = None,
                 clock: Optional[Clock] = None) -> None:
        if isinstance(max_processes, bool) or not isinstance(max_processes, int) or max_processes < 1:
            raise ValueError(f"max_processes must be an int >= 1, got {max_processes!r}")
        if isinstance(grace, bool) or not isinstance(grace, (int, float)) or not grace >= 0:
            raise ValueError(f"grace must be a number of seconds >= 0, got {grace!r}")
        self._max = max_processes
        self._grace = float(grace)
        self._max_attempts = max_attempts_per_process
        self._mp = multiprocessing.get_context(start_method or _default_start_method())
        self._clock = clock or SystemClock()
        # _cond's lock guards _idle, _live, _running, _closed and the counters.
        self._cond = threading.Condition(threading.Lock())
        self._idle: list[_Child] = []
        self._live = 0      # children started and not yet ended (idle, busy or starting)
        self._running = 0
        self._closed = False
        self._started = self._reused = self._terminated = self._died = 0
        # Every child not yet ended; shared with the exit-time finalizer, which must not
        # hold a reference to self. Guarded by _cond's lock.
        self._children: set[_Child] = set()
        # exitpriority: runs at interpreter exit before multiprocessing joins its children.
        self._finalizer = Finalize(self, _end_all, args=(self._children, self._cond, self._grace),
                                   exitpriority=10)

    @property
    def start_method(self) -> str:
        """'forkserver' or 'spawn'."""
        return self._mp.get_start_method()

    @property
    def stats(self) -> RunnerStats:
        """A snapshot of the counters."""
        with self._cond:
            return RunnerStats(self._started, self._reused, self._running, len(self._idle),
                               self._terminated, self._died)

    def pids(self) -> list[int]:
        """Process ids of the live children (idle or busy)."""
        with self._cond:
            return [c.pid for c in self._children if c.pid is not None]

    # -- running an attempt ---------------------------------------------------------------------
    def run(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
            context: JobContext, *, timeout: Optional[float] = None,
            memory_limit: Optional[int] = None) -> Outcome:
        """Run one attempt of `func(*args, **kwargs)` in a child as the job `context`;
        block until it ends; never raise.

        Progress and log reports reach `context`. On `timeout` (seconds) the child is
        terminated and the outcome is `JobTimeout`; once `context.cancelled` (checked every
        `POLL_INTERVAL`) it is `JobCancelled`; a child that dies gives `WorkerProcessDied`.
        An exception from the job comes back as its own class when that can be rebuilt
        here, else as a `RemoteError`; the traceback is the child's. `memory_limit` caps
        the child's address space in bytes (RLIMIT_AS) for this attempt."""
        try:
            return self._run(func, args, kwargs, context, timeout, memory_limit)
        except BaseException as exc:  # the worker thread must survive anything
            logger.exception("isolated attempt of job %s failed in the runner", context.id)
            return Outcome(error=exc, traceback=traceback_module.format_exc())

    def _run(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
             context: JobContext, timeout: Optional[float], memory_limit: Optional[int]) -> Outcome:
        problem = isolation_problem(func)
        if problem is not None:
            return Outcome(error=NotIsolatable(_describe(func), problem))
        module, qualname = func.__module__, func.__qualname__
        for _ in range(2):  # a child that died while idle is replaced once
            child = self._acquire(context)
            if isinstance(child, Outcome):
                return child
            path = tuple(sys.path)
            request = AttemptRequest(module, qualname, tuple(args), dict(kwargs), context.id, context.name,
                                     context.attempt, memory_limit, None if path == child.sys_path else path)
            try:
                data = ForkingPickler.dumps(request)
            except Exception as exc:
                self._release(child, reusable=True)
                return Outcome(error=TypeError(f"the arguments of job {context.id} cannot be sent to a"
                                               f" child process (they must pickle): {exc}"))
            try:
                child.conn.send_bytes(data)
            except OSError:
                self._dead(child, context)
                continue
            child.sys_path = path
            # The timeout counts from here: starting a child is the pool's cost, not the job's.
            deadline = None if timeout is None else self._clock.monotonic() + timeout
            return self._supervise(child, context, timeout, deadline)
        return self._dead_outcome(None, None, context, "could not be handed the job")

    def _acquire(self, context: JobContext) -> Union[_Child, Outcome]:
        """An idle child, or a new one when below the limit; waits for one otherwise."""
        while True:
            stopped = self._stopped(context, None, None)
            if stopped is not None:
                return stopped
            idle: Optional[_Child] = None
            with self._cond:
                if self._closed:
                    return Outcome(error=RuntimeError("the process runner is closed"))
                if self._idle:
                    idle = self._idle.pop()  # the warmest child
                    self._running += 1
                    self._reused += 1
            if idle is not None:
                if idle.process.is_alive():
                    return idle
                self._dead(idle, context)  # killed while idle (OOM killer, kill): replace it
                continue
            with self._cond:
                if self._live < self._max:
                    self._live += 1
                    self._running += 1
                    break
                self._cond.wait(POLL_INTERVAL)
        try:
            return self._start_child()
        except Exception as exc:
            with self._cond:
                self._live -= 1
                self._running -= 1
                self._cond.notify()
            logger.error("could not start a child process: %s", exc)
            return Outcome(error=WorkerProcessDied(f"could not start a child process: {exc}"),
                           traceback=traceback_module.format_exc())

    def _start_child(self) -> _Child:
        parent_end, child_end = self._mp.Pipe(duplex=True)
        process = self._mp.Process(target=serve, args=(child_end,), name="jobcore-isolated", daemon=False)
        try:
            process.start()
        finally:
            child_end.close()  # else the parent would never see EOF when the child dies
        child = _Child(process, parent_end, process.pid, sys_path=tuple(sys.path))
        with self._cond:
            self._started += 1
            self._children.add(child)
        logger.debug("started child process %s (%s)", process.pid, self.start_method)
        return child

    def _supervise(self, child: _Child, context: JobContext, timeout: Optional[float],
                   deadline: Optional[float]) -> Outcome:
        """Relay the child's reports until its answer, its death, a timeout or a cancel."""
        watched = [child.conn, child.process.sentinel]
        while True:
            wait = POLL_INTERVAL
            if deadline is not None:
                wait = max(0.0, min(wait, deadline - self._clock.monotonic()))
            ready = wait_for_ready(watched, wait)
            if child.conn in ready:
                try:
                    raw = child.conn.recv_bytes()
                except (EOFError, OSError):
                    return self._dead(child, context)
                outcome = self._handle(raw, child, context)
                if outcome is not None:
                    return outcome
            elif ready:  # only the sentinel: dead, yet something holds its pipe open
                return self._dead(child, context)
            stopped = self._stopped(context, timeout, deadline)
            if stopped is not None:
                self._terminate(child)
                return stopped

    def _handle(self, raw: bytes, child: _Child, context: JobContext) -> Optional[Outcome]:
        """Act on one message from the child; an Outcome once the attempt is over."""
        try:
            message = pickle.loads(raw)
        except Exception as exc:  # e.g. a result whose class does not load here
            self._terminate(child)
            return Outcome(error=TypeError(f"a message from the child process running job {context.id}"
                                           f" cannot be unpickled here: {type(exc).__name__}: {exc}"))
        kind = message[0]
        if kind == "result":
            self._release(child, reusable=message[2])
            return Outcome(value=message[1])
        if kind == "error":
            self._release(child, reusable=message[2])
            failure: RemoteFailure = message[1]
            return Outcome(error=rebuild_exception(failure), traceback=failure.traceback or None)
        try:
            if kind == "progress":
                context.progress(message[1], message[2], **message[3])
            elif kind == "log":
                context.log(message[2], message[1])
        except JobCancelled:
            self._terminate(child)
            return Outcome(error=JobCancelled(context.id))
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

    # -- ending children --------------------------------------------------------------------------
    def _release(self, child: _Child, reusable: bool) -> None:
        """Return a child that answered to the idle list, or retire it."""
        child.attempts += 1
        with self._cond:
            self._running -= 1
            keep = reusable and not self._closed and (
                self._max_attempts is None or child.attempts < self._max_attempts)
            if keep:
                self._idle.append(child)
            else:
                self._live -= 1
                self._children.discard(child)
            self._cond.notify()
        if not keep:
            _end(child, self._grace, polite=True)

    def _terminate(self, child: _Child) -> None:
        """End a busy child at once (timeout, cancel); its place is refilled on demand."""
        with self._cond:
            self._terminated += 1
            self._forget_locked(child)
        _end(child, self._grace, polite=False)

    def _dead(self, child: _Child, context: JobContext) -> Outcome:
        with self._cond:
            self._died += 1
            self._forget_locked(child)
        child.process.join(self._grace)  # its pipe closed: the exit status follows at once
        exitcode = child.process.exitcode
        _end(child, self._grace, polite=False)
        return self._dead_outcome(exitcode, child.pid, context, "died")

    def _forget_locked(self, child: _Child) -> None:
        self._live -= 1
        self._running -= 1
        self._children.discard(child)
        self._cond.notify()

    @staticmethod
    def _dead_outcome(exitcode: Optional[int], pid: Optional[int], context: JobContext, what: str) -> Outcome:
        if exitcode is not None and exitcode < 0:
            how = f"was killed by signal {-exitcode} ({_signal_name(-exitcode)})"
            if -exitcode == signal.SIGKILL:
                how += ": the out-of-memory killer, or a kill from outside"
            elif -exitcode == signal.SIGSEGV:
                how += ": a crash in native code"
        elif exitcode is not None:
            how = f"exited with code {exitcode} (os._exit, a fatal error, or a failed start)"
        else:
            how = what
        message = f"the child process (pid {pid}) running job {context.id} {how} before returning a result"
        logger.warning("%s", message)
        return Outcome(error=WorkerProcessDied(message, exitcode=exitcode, pid=pid))

    def close(self, timeout: float = 5.0) -> None:
        """Stop taking attempts and end the idle children, waiting up to `timeout` seconds
        for them to exit before killing them; busy children end when their attempt does."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._live -= len(idle)
            for child in idle:
                self._children.discard(child)
            self._cond.notify_all()
        for child in idle:
            child.conn.close()  # EOF: the child's loop returns
        deadline = self._clock.monotonic() + timeout
        for child in idle:
            child.process.join(max(0.0, deadline - self._clock.monotonic()))
            _end(child, self._grace, polite=False)

    def __enter__(self) -> "ProcessRunner":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _end(child: _Child, grace: float, *, polite: bool) -> None:
    """End `child`: close its pipe (a polite end lets it exit on EOF), then SIGTERM, and
    SIGKILL after `grace`; reap it."""
    try:
        child.conn.close()
    except OSError:
        pass
    process = child.process
    if polite:
        process.join(grace)
    if process.exitcode is None:
        process.terminate()
        process.join(grace)
    if process.exitcode is None:
        process.kill()
        process.join(5.0)  # SIGKILL cannot be caught; only a process stuck in the kernel lingers
    if process.exitcode is not None:
        process.close()


def _end_all(children: set[_Child], lock: threading.Condition, grace: float) -> None:
    """At interpreter exit (or when the runner is collected): end every child left."""
    with lock:
        remaining = list(children)
        children.clear()
    for child in remaining:
        _end(child, grace, polite=False)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown signal"


def _describe(func: Callable[..., Any]) -> str:
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)
    module = getattr(func, "__module__", None)
    return f"{module}.{name}" if module else str(name)
