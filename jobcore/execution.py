"""Running one attempt of a job's function in the calling thread, and what came of it
(and whether the calling thread has the stack left to run one nested in its call).

Handles `progress_callback`, coroutine functions and the binding of `current_job()`. It
decides nothing about retries and touches no storage.

A coroutine job runs as `asyncio.run` would run it: on an event loop of its own, made for
the attempt and closed after it, once the tasks the job left on it are cancelled and
drained, its async generators finalised and its default executor shut down. (A loop kept
per thread, as before, let such leftovers wake up inside a later job of the thread, where
`current_job()` still named theirs. A loop per attempt costs about 45 µs of CPU a
coroutine job, measured: 11 µs before, 54 µs after, for a job awaiting `sleep(0)`.)

Called from a thread whose own loop is running (an immediate manager's `enqueue`, or
`run_pending`, in async code), a coroutine job runs on a helper thread with a loop of its
own, and the caller waits for it: one thread runs one loop at a time.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import sys
import threading
import traceback as traceback_module
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

from .context import JobContext, bind, unbind
from .errors import ImmediateRecursionError, JobCancelled

if TYPE_CHECKING:
    import asyncio


@dataclass(slots=True)
class Outcome:
    """What an attempt ended with: a value, or an exception and its formatted traceback."""

    value: Any = None
    error: Optional[BaseException] = None
    traceback: Optional[str] = None

    @property
    def cancelled(self) -> bool:
        return isinstance(self.error, JobCancelled)

    @property
    def succeeded(self) -> bool:
        return self.error is None


def accepts_progress_callback(func: Callable[..., Any]) -> bool:
    """True if `func` declares a parameter named `progress_callback` (cached per function:
    inspecting a signature costs more than running a small job)."""
    try:
        return _accepts_progress_callback(func)
    except TypeError:  # unhashable callable
        return _inspect_progress_callback(func)


def _inspect_progress_callback(func: Callable[..., Any]) -> bool:
    try:
        return "progress_callback" in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False


_accepts_progress_callback = functools.lru_cache(maxsize=1024)(_inspect_progress_callback)


def call_job(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
             context: JobContext, run_coroutine: Callable[[Any], Any]) -> Any:
    """Call `func` as the job `context` (with a `progress_callback` if it takes one, and
    `current_job()` bound); an awaitable result is run to completion by `run_coroutine`."""
    if accepts_progress_callback(func):
        kwargs = {**kwargs, "progress_callback": context.progress_callback}
    token = bind(context)
    try:
        value = func(*args, **kwargs)  # ** hands the function a dict of its own
        if value is not None and inspect.isawaitable(value):
            value = run_coroutine(_await(value))
        return value
    finally:
        unbind(token)


def run_attempt(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                context: JobContext) -> Outcome:
    """Call `func(*args, **kwargs)` as the job `context` (a coroutine to its end, on an event
    loop of its own: see the module docstring); never raises."""
    try:
        return Outcome(call_job(func, args, kwargs, context, run_coroutine))
    except BaseException as exc:  # a job must never kill its worker thread
        return Outcome(error=exc, traceback=traceback_module.format_exc())


def run_coroutine(coroutine: Any) -> Any:
    """Run `coroutine` to its end on a new event loop and return its result, as
    `asyncio.run` does; if this thread's loop is running, on a helper thread (see the
    module docstring)."""
    import asyncio  # on the first coroutine job only: importing it costs ~25 ms at start-up
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # none runs here: the usual case
        return _run_on_a_new_loop(coroutine)
    return _run_on_a_helper_thread(coroutine)


def _run_on_a_new_loop(coroutine: Any) -> Any:
    import asyncio
    # Not asyncio.run: it would also set (then unset) the thread's current event loop,
    # which the caller of an immediate manager may rely on.
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coroutine)
    finally:
        try:
            _cancel_leftover_tasks(loop)
            loop.run_until_complete(_shut_down(loop))
        finally:
            loop.close()


def _cancel_leftover_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel the tasks the job left on `loop` and let them end (as `asyncio.run` does)."""
    import asyncio
    leftovers = asyncio.all_tasks(loop)
    if not leftovers:
        return
    for task in leftovers:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
    for task in leftovers:
        if not task.cancelled() and task.exception() is not None:
            loop.call_exception_handler({
                "message": "unhandled exception in a task a job left running when it ended",
                "exception": task.exception(), "task": task})


async def _shut_down(loop: asyncio.AbstractEventLoop) -> None:
    await loop.shutdown_asyncgens()
    await loop.shutdown_default_executor()


@dataclass(slots=True)
class _Ending:
    """What a coroutine run on a helper thread ended with."""

    value: Any = None
    error: Optional[BaseException] = None


def _run_on_a_helper_thread(coroutine: Any) -> Any:
    """Run `coroutine` on a new loop in a thread of its own and wait for it. The thread
    runs in a copy of the caller's context, so `current_job()` there is the caller's job.
    The caller's loop is blocked meanwhile, as by any blocking call: the job must not
    await anything of that loop."""
    context = contextvars.copy_context()
    ending = _Ending()

    def run() -> None:
        try:
            ending.value = context.run(_run_on_a_new_loop, coroutine)
        except BaseException as exc:  # raised again in the caller's thread
            ending.error = exc

    thread = threading.Thread(target=run, name="jobcore-coroutine", daemon=True)
    thread.start()
    thread.join()
    error, ending.error = ending.error, None
    if error is not None:
        raise error
    return ending.value


# Frames kept free below a call that runs jobs in the calling thread (an immediate
# manager's `enqueue`, `run_pending`): a job run there may enqueue the next, run inside
# that enqueue, and so on. Without room, the RecursionError that ends such a chain was
# raised again while a job was claimed or its outcome recorded: 1 to 3 jobs stayed RUNNING
# or PENDING for ever, and some chains hung, each level formatting the chained tracebacks
# of those below. Measured: running a job and recording its outcome takes at most 17
# frames below `enqueue` (SQLite and memory; success, failure, retry, a dependent
# released), logging an exception 21 more; tests/test_testing_helpers.py's chains pass
# with 25.
NESTED_RUN_ROOM = 100


# True in the child process of an isolated job (set by `isolation_child.serve` before it
# imports any job's module): a manager that module builds and starts, or the default
# manager its `register_job_function` calls build, must not run workers there.
_isolated_child = False


def mark_isolated_child() -> None:
    """Note that this process runs isolated attempts for another process's manager."""
    global _isolated_child
    _isolated_child = True


def in_isolated_child() -> bool:
    """True in the child process of an isolated job (see `mark_isolated_child`)."""
    return _isolated_child


def check_room_to_run_here() -> None:
    """Raise `ImmediateRecursionError` unless NESTED_RUN_ROOM frames are left below the
    caller before the recursion limit: enough to run a job and record its outcome."""
    limit = sys.getrecursionlimit()
    try:
        sys._getframe(max(0, limit - NESTED_RUN_ROOM))  # one C call, however deep
    except ValueError:  # the stack is not that deep
        return
    raise ImmediateRecursionError(NESTED_RUN_ROOM, limit)


async def _await(awaitable: Any) -> Any:
    return await awaitable
