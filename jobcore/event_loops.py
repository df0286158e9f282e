"""The event loops coroutine jobs run on: one made for the attempt, or the one a worker
thread keeps between attempts that leave nothing on it. Does not decide which thread an
attempt runs on (`execution` does) and knows nothing of storage.

An attempt runs as `asyncio.run` would run it, on a loop nothing else runs on: the tasks
the job left are cancelled and drained when it ends, and if it left anything else there
(callbacks due later, file descriptors watched, async generators not finalised, a
default executor, a changed exception handler, task factory or debug flag), its async
generators and executor are shut down and the loop is closed, as `asyncio.run` closes
its own. A thread inside `loops_kept()` (a pool's worker thread) keeps a loop that is
left clean for its next coroutine attempt instead, and closes it when it leaves. (A new
loop per attempt costs a socket pair, an epoll instance and their closing: on a 2-vCPU
host, a drain of 20,000 coroutine jobs awaiting nothing ran at 4,561 jobs/s with a loop
per attempt, about one fifth of the same drain of plain functions.) The loops it makes
poll the kernel only when a poll may wait or something is watched (`_QuickSelector`),
unless an event loop policy gives loops of another kind: those are used as they come.
"""

from __future__ import annotations

import contextlib
import functools
import os
import selectors
import threading
from typing import TYPE_CHECKING, Any, Iterator, Optional

from .context import current_job
from .errors import JobCancelled

if TYPE_CHECKING:
    import asyncio


class _Kept(threading.local):
    """Per thread: whether it keeps its loop between attempts, the loop kept (None: none
    yet, or one taken by the attempt running), and the process it was made in."""

    keeping = False
    loop: Optional["asyncio.AbstractEventLoop"] = None
    pid = 0
    debug = False


_kept = _Kept()

# Loops kept by a thread of a process that forked, found by the child: never closed there
# (closing one would unregister its file descriptors from the epoll instance the child
# shares with its parent, whose loop then stopped hearing them) and never collected (a
# loop collected unclosed closes itself).
_inherited: list[Any] = []


@contextlib.contextmanager
def loops_kept() -> Iterator[None]:
    """Within it, this thread keeps its event loop from one coroutine attempt to the next
    while each leaves it clean; the loop is closed on leaving."""
    _kept.keeping = True
    try:
        yield
    finally:
        _kept.keeping = False
        loop = _take_kept_loop()  # (one a forked child found is left alone)
        if loop is not None:
            _shut_down_and_close(loop)


def run_to_end(coroutine: Any) -> Any:
    """Run `coroutine` to its end on this thread's kept loop or a new one, and return its
    result (or raise what it raised). No loop may be running in this thread."""
    import asyncio
    loop, debug = _take_kept_loop(), _kept.debug
    if loop is None:
        # Not asyncio.run: it would also set (then unset) the thread's current event loop,
        # which the caller of an immediate manager may rely on.
        loop = asyncio.new_event_loop()
        if _kept.keeping and type(loop) is asyncio.SelectorEventLoop:  # (not another kind a policy gives)
            loop.close()
            loop = asyncio.SelectorEventLoop(_QuickSelector())
        debug = loop.get_debug()
    context = current_job()
    try:
        task = asyncio.ensure_future(coroutine, loop=loop)
        if context is not None:
            # Timed out, the job is given up, and its thread would run on for as long as the
            # coroutine awaits (an hour's sleep, a request without a timeout): cancelled, the
            # task ends at its next await, and so does the thread. A cancel of the job
            # cancels it too, as asyncio would: a job awaiting a 5 s sleep, cancelled, ran
            # on to its end and COMPLETED.
            context.on_abandon = context.on_cancel = functools.partial(_cancel_from_elsewhere, loop, task)
            if context.abandoned or context.cancel_requested:  # before the hooks were set
                task.cancel()
        try:
            return loop.run_until_complete(task)
        except asyncio.CancelledError:
            if context is not None and context.cancel_requested and not context.abandoned:
                raise JobCancelled(context.id) from None  # the job ends CANCELLED
            raise
    finally:
        if context is not None:
            context.on_abandon = context.on_cancel = None  # (the loop and task are done
            # with; a cancel that came meanwhile runs at the next attempt's start, on a
            # task ended: nothing)
        _end_attempt(loop, debug)


class _QuickSelector(selectors.DefaultSelector):
    """The selector of the loops worker threads keep: a poll that may not wait (the loop
    has callbacks ready) returns at once when nothing is watched but the loop's own
    wake-up socket, instead of asking the kernel. That socket only wakes a loop blocked in
    a poll; a callback another thread schedules is in the ready queue already, and the
    socket is read at the next poll that may wait. (Each poll gave the GIL up and waited
    to win it back: two or more an attempt, most of a drain of coroutine jobs' time.)"""

    def select(self, timeout: Optional[float] = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None and timeout <= 0 and len(self.get_map()) <= 1:
            return []
        return super().select(timeout)


def _take_kept_loop() -> Optional[asyncio.AbstractEventLoop]:
    """This thread's kept loop, taken (an attempt nested in this one makes its own), if it
    keeps one made in this process and still open."""
    loop, _kept.loop = _kept.loop, None
    if loop is None:
        return None
    if _kept.pid != os.getpid():
        _inherited.append(loop)
        return None
    return None if loop.is_closed() else loop


def _end_attempt(loop: asyncio.AbstractEventLoop, debug: bool) -> None:
    """Cancel and drain the tasks the attempt left on `loop`, then keep the loop for this
    thread's next attempt if it keeps loops and nothing else is left on it (its debug
    flag still `debug`, the one it was made with); else shut it down and close it."""
    try:
        _cancel_leftover_tasks(loop)
    except BaseException:
        loop.close()
        raise
    if _kept.keeping and _kept.loop is None and loop.get_debug() == debug and _left_clean(loop):
        _kept.loop, _kept.pid, _kept.debug = loop, os.getpid(), debug
        return
    _shut_down_and_close(loop)


def _left_clean(loop: asyncio.AbstractEventLoop) -> bool:
    """True if nothing an attempt could leave on `loop` is left there but cancelled
    callbacks: no callback ready or due later, no file descriptor watched but the loop's
    own wake-up socket, no async generator, no default executor, the exception handler
    and task factory as a new loop has them. False for a loop whose insides are not those
    of CPython's selector event loop (it is then closed, as `asyncio.run` would)."""
    if loop.is_closed() or loop.is_running():
        return False
    try:
        return (not loop._ready  # type: ignore[attr-defined]
                and all(handle.cancelled() for handle in loop._scheduled)  # type: ignore[attr-defined]
                and len(loop._selector.get_map()) == 1  # type: ignore[attr-defined]
                and not loop._asyncgens  # type: ignore[attr-defined]
                and loop._default_executor is None  # type: ignore[attr-defined]
                and loop.get_exception_handler() is None
                and loop.get_task_factory() is None)
    except AttributeError:
        return False


def _shut_down_and_close(loop: asyncio.AbstractEventLoop) -> None:
    """Finalise `loop`'s async generators, shut its default executor down and close it."""
    try:
        if not loop.is_closed():
            loop.run_until_complete(_shut_down(loop))
    finally:
        loop.close()


def _cancel_from_elsewhere(loop: asyncio.AbstractEventLoop, task: asyncio.Future[Any]) -> None:
    """Cancel `task` on `loop`, which runs in another thread, unless the loop is closed
    (the job ended meanwhile)."""
    try:
        loop.call_soon_threadsafe(task.cancel)
    except RuntimeError:  # "Event loop is closed"
        pass


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
