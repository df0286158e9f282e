"""The process-wide default manager and the module-level `enqueue`/`poll`/`cancel`.

The default manager is created on first use (SQLite at `$JOBCORE_DB` or `./jobcore.db`),
started, and stopped at interpreter exit. Nothing else lives here.
"""

from __future__ import annotations

import atexit
import os
import threading
from typing import Any, Callable, Optional, Union, overload

from .manager import FunctionT, JobManager
from .models import Job, JobResult

# _default_lock guards _default.
_default_lock = threading.Lock()
_default: Optional[JobManager] = None


def _forked() -> None:
    """In a forked child: a lock of its own (a parent thread may have held this one,
    inside a module-level `enqueue`, as it forked)."""
    global _default_lock
    _default_lock = threading.Lock()


os.register_at_fork(after_in_child=_forked)


def get_job_manager() -> JobManager:
    """The process-wide default manager, created and started on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = _started(JobManager())
        elif _default._lifecycle.forked_while_running:
            # A forked child (a web server's worker, say): the default manager's workers
            # stayed in the parent. This process gets one of its own, on the same store,
            # running the functions registered so far.
            _default = _started(_default._successor())
        return _default


def _started(manager: JobManager) -> JobManager:
    """Start `manager` and have it stopped gracefully at interpreter exit."""
    manager.start()
    # A finalizer of multiprocessing's: they run at interpreter exit (its atexit handler)
    # and also as a process multiprocessing started ends (with os._exit, running no atexit
    # handler; a parent's finalizers are dropped at the fork). Higher priorities first:
    # this graceful stop (which lets running jobs finish, isolated ones too) comes before
    # the end of isolated jobs' child processes (exitpriority 10). Its atexit handler is
    # registered as multiprocessing.util is first imported: when that was here, inside
    # another atexit handler (the default manager's first use there), it never ran, and
    # the manager's jobs were left RUNNING; `_stop_at_exit`, registered as this module is
    # imported, stops it then.
    import multiprocessing.util
    multiprocessing.util.Finalize(None, manager.stop, exitpriority=20)
    return manager


def _stop_at_exit() -> None:
    """At interpreter exit: stop the default manager gracefully (see `_started`; a second
    stop is a no-op)."""
    manager = _default
    if manager is not None:
        manager.stop()


atexit.register(_stop_at_exit)


def set_job_manager(manager: Optional[JobManager]) -> Optional[JobManager]:
    """Make `manager` the process-wide default (None: build one on next use); returns the
    previous default. A worker process sets its own before importing task modules, so
    their `register_job_function` calls land on it."""
    global _default
    with _default_lock:
        previous, _default = _default, manager
        return previous


def enqueue(job: Job) -> str:
    """Enqueue `job` on the default manager; returns its id."""
    return get_job_manager().enqueue(job)


def poll(job_id: str) -> Optional[JobResult]:
    """The job's state from the default manager, or None for an unknown id."""
    return get_job_manager().poll(job_id)


def cancel(job_id: str) -> bool:
    """Cancel a job through the default manager."""
    return get_job_manager().cancel(job_id)


@overload
def register_job_function(name: FunctionT, func: None = None) -> FunctionT: ...


@overload
def register_job_function(name: str, func: None = None) -> Callable[[FunctionT], FunctionT]: ...


@overload
def register_job_function(name: str, func: FunctionT) -> FunctionT: ...


def register_job_function(name: Union[str, Callable[..., Any]], func: Optional[Callable[..., Any]] = None) -> Any:
    """Register `func` under `name` on the default manager (a decorator without `func`;
    a function alone is registered under its `module.qualname`, as `register_function` does)."""
    register: Callable[..., Any] = get_job_manager().register_function  # (its overloads are this one's)
    return register(name, func)
