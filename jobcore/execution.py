"""Running one attempt of a job's function in the calling thread, and what came of it.

Handles `progress_callback`, coroutine functions (on a per-thread event loop) and the
binding of `current_job()`. It decides nothing about retries and touches no storage.
"""

from __future__ import annotations

import functools
import inspect
import threading
import traceback as traceback_module
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

from .context import JobContext, bind, unbind
from .errors import JobCancelled

if TYPE_CHECKING:
    import asyncio

_loops = threading.local()


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


def _event_loop() -> asyncio.AbstractEventLoop:
    import asyncio  # on the first coroutine job only: importing it costs ~25 ms at start-up
    loop = getattr(_loops, "loop", None)
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        _loops.loop = loop
    return loop


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
    """Call `func(*args, **kwargs)` as the job `context` on this thread's event loop if it
    is a coroutine; never raises."""
    try:
        return Outcome(call_job(func, args, kwargs, context, _run_on_this_threads_loop))
    except BaseException as exc:  # a job must never kill its worker thread
        return Outcome(error=exc, traceback=traceback_module.format_exc())


def _run_on_this_threads_loop(coroutine: Any) -> Any:
    return _event_loop().run_until_complete(coroutine)


async def _await(awaitable: Any) -> Any:
    return await awaitable
