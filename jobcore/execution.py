"""Running one attempt of a job's function in the calling thread, and what came of it
(and whether the calling thread has the stack left to run one nested in its call).

Handles `progress_callback`, coroutine functions and the binding of `current_job()`. It
decides nothing about retries and touches no storage.

A coroutine job runs as `asyncio.run` would run it, on an event loop nothing else runs on
(`event_loops`: a worker thread's kept loop, left clean by the attempts before, or one
made for the attempt).

Called from a thread whose own loop is running (an immediate manager's `enqueue`, or
`run_pending`, in async code), an attempt runs on a helper thread, and the caller waits
for it: a coroutine job gets a loop of its own there (one thread runs one loop at a
time), and a sync job runs as on a worker thread, where no loop runs (so that it may
call `asyncio.run` itself, as it may on a started manager).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import sys
import threading
import types
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Optional

from . import event_loops
from .context import JobContext, bind, unbind
from .errors import ImmediateRecursionError
from .retry import is_cancellation
from .tracebacks import format_failure


@dataclass(slots=True)
class Outcome:
    """What an attempt ended with: a value, or an exception and its formatted traceback."""

    value: Any = None
    error: Optional[BaseException] = None
    traceback: Optional[str] = None

    @property
    def cancelled(self) -> bool:
        """The attempt ended on `JobCancelled` (also one raised in a task of a `TaskGroup`,
        which reaches here inside an exception group)."""
        return self.error is not None and is_cancellation(self.error)

    @property
    def succeeded(self) -> bool:
        return self.error is None


def accepts_progress_callback(func: Callable[..., Any]) -> bool:
    """True if `func` declares a parameter named `progress_callback`, as `inspect.signature`
    gives its parameters (cached: inspecting a signature costs more than running a small
    job, 6-13 µs here, and a new partial or lambda per job would miss a cache keyed by
    the callable itself)."""
    key = _signature_key(func)
    if key is not None:
        answer = _by_code.get(key)
        if answer is None:
            answer = _inspect_progress_callback(func)
            if len(_by_code) >= _BY_CODE_MAX:  # dynamically made code: start over
                _by_code.clear()
            _by_code[key] = answer
        return answer
    return _by_object(func)


def _inspect_progress_callback(func: Callable[..., Any]) -> bool:
    try:
        return "progress_callback" in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False


# The answers for functions, bound methods and partials, by `_signature_key`: code objects,
# counts and keyword names, never the callable, its bound arguments or its instance (a
# module-global cache keyed by the callable kept every job's partial, and what it held,
# alive after the job ended). Dict reads and writes are atomic: two threads that miss at
# once both inspect and store the same answer.
_by_code: dict[Hashable, bool] = {}
_BY_CODE_MAX = 1024
# Attributes of a function's or partial's own that `inspect.signature` reads before its
# code (a decorator's `__wrapped__`, an explicit signature, a partialmethod's function):
# with one of them, the code alone does not decide the answer.
_SIGNATURE_ATTRIBUTES = ("__wrapped__", "__signature__", "__text_signature__", "_partialmethod",
                         "__partialmethod__")
_PLACEHOLDER = getattr(functools, "Placeholder", None)  # Python 3.14: a partial's unbound slot


def _signature_key(func: Callable[..., Any]) -> Optional[Hashable]:
    """What the names and kinds of `inspect.signature(func)`'s parameters depend on alone,
    holding none of `func`'s data; None for a callable other than a plain function, a
    bound method or a `functools.partial` of one (or with a signature attribute of its own).

    A function's parameters are its code's; a bound method's those of its `__func__` but the
    first; a partial's those of its `func` less the ones its positional arguments fill, and
    with those its keywords name made keyword-only (still there: called with
    `progress_callback=`, it overrides the one bound), whatever the values bound."""
    kind = type(func)
    if kind is types.FunctionType:
        return None if _has_own_signature(func) else func.__code__
    if kind is types.MethodType:
        inner = _signature_key(func.__func__)  # type: ignore[attr-defined]
        return None if inner is None else ("method", inner)
    if kind is functools.partial:
        inner = _signature_key(func.func)  # type: ignore[attr-defined]
        if inner is None or _has_own_signature(func):
            return None
        args: tuple[Any, ...] = func.args  # type: ignore[attr-defined]
        filled = len(args) if _PLACEHOLDER is None else tuple(arg is _PLACEHOLDER for arg in args)
        return ("partial", inner, filled, frozenset(func.keywords))  # type: ignore[attr-defined]
    return None


def _has_own_signature(func: Any) -> bool:
    own = func.__dict__
    return bool(own) and any(name in own for name in _SIGNATURE_ATTRIBUTES)


# Other callables (callable objects, classes, decorated functions), by the object's
# identity (never its own __hash__ or __eq__: user code), holding it weakly: its entry goes
# with it (the callback runs as it is freed, before its id can be given again). One that
# cannot be held weakly is inspected at each call.
_by_object_answers: dict[int, tuple[weakref.ref[Any], bool]] = {}


def _by_object(func: Callable[..., Any]) -> bool:
    key = id(func)
    entry = _by_object_answers.get(key)
    if entry is not None and entry[0]() is func:
        return entry[1]
    answer = _inspect_progress_callback(func)
    try:
        held = weakref.ref(func, lambda _: _by_object_answers.pop(key, None))
    except TypeError:  # not weakly referenceable (a builtin)
        return answer
    _by_object_answers[key] = (held, answer)
    return answer


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
            awaiting = _await(value)
            try:
                value = run_coroutine(awaiting)
            except BaseException:
                # Never started: no loop or thread could be made to run it, or its task was
                # cancelled before its first step (a timeout abandoned it at once), which
                # leaves the wrapper closed, never having awaited the job's coroutine.
                _discard(awaiting, value)
                raise
        return value
    finally:
        unbind(token)


def _discard(awaiting: Any, awaitable: Any) -> None:
    """Close the coroutines of those two that never started, so that Python does not warn,
    at some later garbage collection, that they were never awaited: the error says what
    went wrong. One that started has ended already (its error is being raised)."""
    if inspect.getcoroutinestate(awaiting) == inspect.CORO_CREATED:
        awaiting.close()
    if inspect.iscoroutine(awaitable) and inspect.getcoroutinestate(awaitable) == inspect.CORO_CREATED:
        awaitable.close()


def run_attempt(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                context: JobContext) -> Outcome:
    """Call `func(*args, **kwargs)` as the job `context` (a coroutine to its end, on an event
    loop of its own; on a helper thread if a loop runs in this one: see the module
    docstring); never raises."""
    try:
        if _loop_runs_here():
            return Outcome(_run_on_a_helper_thread(call_job, func, args, kwargs, context, run_coroutine))
        return Outcome(call_job(func, args, kwargs, context, run_coroutine))
    except BaseException as exc:  # a job must never kill its worker thread
        return Outcome(error=exc, traceback=format_failure(exc))


def _loop_runs_here() -> bool:
    """True if an event loop runs in this thread (never on a worker thread of its own)."""
    # Not imported: no loop runs (importing it costs ~25 ms). Half imported, by another
    # thread right now: no loop of it runs here yet either. (Its attribute read then
    # raised AttributeError, and every job starting during that import failed for good.)
    running = getattr(sys.modules.get("asyncio"), "_get_running_loop", None)
    return running is not None and running() is not None


def run_coroutine(coroutine: Any) -> Any:
    """Run `coroutine` to its end on an event loop nothing else runs on and return its
    result, as `asyncio.run` does (see `event_loops`); if this thread's loop is running,
    on a helper thread (see the module docstring)."""
    if _loop_runs_here():  # not after run_attempt, which then moved to a helper thread
        return _run_on_a_helper_thread(event_loops.run_to_end, coroutine)
    return event_loops.run_to_end(coroutine)


@dataclass(slots=True)
class _Ending:
    """What a coroutine run on a helper thread ended with."""

    value: Any = None
    error: Optional[BaseException] = None


# How many helper threads the current context runs in, one inside another's call: a job
# run on a helper thread may enqueue the next job on an immediate manager, which runs it
# on one more helper thread (its own stack, and a loop of its own: 3 file descriptors)
# inside that enqueue, and so on. Each thread's stack is new, so the frames left there
# never tell how deep such a chain goes (`check_room_to_run_here` counts both).
# contextvars.copy_context() carries it into each helper thread.
_helper_threads: contextvars.ContextVar[int] = contextvars.ContextVar("jobcore_helper_threads", default=0)


def _run_on_a_helper_thread(call: Callable[..., Any], *args: Any) -> Any:
    """Return `call(*args)`, run in a thread of its own; the caller waits for it (and
    what it raises is raised again here). The thread runs in a copy of the caller's
    context, so `current_job()` and the caller's context variables are seen there, one
    helper thread deeper. The caller's loop is blocked meanwhile, as by any blocking
    call: the job must not await anything of that loop."""
    context = contextvars.copy_context()
    ending = _Ending()

    def run() -> None:
        try:
            ending.value = context.run(_one_thread_deeper, call, args)
        except BaseException as exc:  # raised again in the caller's thread
            ending.error = exc

    thread = threading.Thread(target=run, name="jobcore-helper", daemon=True)
    thread.start()
    thread.join()
    error, ending.error = ending.error, None
    if error is not None:
        raise error
    return ending.value


def _one_thread_deeper(call: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    _helper_threads.set(_helper_threads.get() + 1)  # in the helper's copy of the context
    return call(*args)


# Helper threads an immediate manager's `enqueue` (or `run_pending`) may run in, one
# nested in another (see `_helper_threads`): a chain of jobs each enqueueing the next,
# called from async code or of coroutine jobs, runs each on a new thread, and grew until
# the process ran out of threads or file descriptors (OSError EMFILE at level 338 under
# the common limit of 1024 open files, then retried as transient). 100, as deep as a
# chain of sync jobs goes under the default recursion limit (about 128 levels), uses
# 300 file descriptors at most.
NESTED_THREAD_LIMIT = 100


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


ISOLATED_PROCESS_NAME = "jobcore-isolated"  # the multiprocessing name of those children


def in_isolated_child() -> bool:
    """True in the child process of an isolated job (see `mark_isolated_child`), from its
    start: also while multiprocessing prepares it, importing the app's main script again
    (as `__mp_main__`), before it is marked. Code at the script's top level runs then: a
    `register_job_function` there started the default manager in the child, which took
    the app's jobs."""
    if _isolated_child:
        return True
    process = sys.modules.get("multiprocessing.process")  # (imported already in such a child)
    return process is not None and process.current_process().name == ISOLATED_PROCESS_NAME


def check_room_to_run_here() -> None:
    """Raise `ImmediateRecursionError` unless NESTED_RUN_ROOM frames are left below the
    caller before the recursion limit (enough to run a job and record its outcome), and
    the caller runs in fewer than NESTED_THREAD_LIMIT nested helper threads."""
    limit = sys.getrecursionlimit()
    nested = _helper_threads.get()
    if nested >= NESTED_THREAD_LIMIT:
        raise ImmediateRecursionError(NESTED_RUN_ROOM, limit, nested_threads=nested)
    try:
        sys._getframe(max(0, limit - NESTED_RUN_ROOM))  # one C call, however deep
    except ValueError:  # the stack is not that deep
        return
    raise ImmediateRecursionError(NESTED_RUN_ROOM, limit)


async def _await(awaitable: Any) -> Any:
    return await awaitable
