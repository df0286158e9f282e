"""Condition waits that Ctrl-C cannot leave holding no lock.

A signal handler runs on the main thread, between two bytecodes, and Ctrl-C's raises
KeyboardInterrupt there, also inside `Condition.wait` as it takes its lock back. With a
plain `threading.Lock` that re-take can itself be interrupted: the wait raises without
the lock, and the `with` block around it then releases the lock from under whichever
thread holds it by then. Two threads run inside at once, and the holder dies later of
"release unlocked lock" (a pool's worker threads all did, under a few hundred Ctrl-Cs
into a loop of enqueues, and no job ran again).

So a lock whose conditions a caller's thread may wait on (`enqueue`, `wait`, `stop`,
`close` are called from the main thread) is made by `waitable_lock`: an `RLock`, which
only its holder can release, and whose re-take inside a wait no signal interrupts. Such
waits go through `wait` (or `wait_for`), which also covers the few bytecodes of
`Condition.wait` where an interrupt still leaves the lock not held (as the wait lets it
go, or just before it takes it back): the lock is taken again before the exception goes
on. The engine's own threads (workers, dispatcher, housekeeper) receive no signal: their
waits need none of this.

Also here: `clear_way`, which a thread calls before taking a lock that guards a short
critical section of pure Python (one that never lets go of the GIL), so that threads
taking it at once do not fall into a lock convoy (see there).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Callable, Optional

from .clock import real_monotonic


def waitable_lock() -> threading.RLock:
    """A lock for conditions a caller's thread may wait on (see module docstring). Taken
    once at a time by the engine's code: a wait releases it and takes it back once."""
    return threading.RLock()


def wait(cond: threading.Condition, lock: threading.RLock, timeout: Optional[float] = None) -> bool:
    """`cond.wait(timeout)` (with `lock`, `cond`'s lock, held once), which returns or
    raises with `lock` held again, whatever exception a signal handler raised in it."""
    try:
        return cond.wait(timeout)
    except BaseException:
        retake(lock)
        raise


def wait_for(cond: threading.Condition, lock: threading.RLock, predicate: Callable[[], bool],
             timeout: Optional[float] = None) -> bool:
    """`cond.wait_for(predicate, timeout)`, through `wait`: the predicate's last value."""
    deadline = None if timeout is None else real_monotonic() + timeout
    while not predicate():
        left = None if deadline is None else deadline - real_monotonic()
        if left is not None and left <= 0:
            return False
        wait(cond, lock, left)
    return True


def holds(lock: threading.RLock) -> bool:
    """Whether this thread holds `lock` (as `Condition` itself asks an RLock)."""
    return bool(lock._is_owned())  # type: ignore[attr-defined]


def retake(lock: threading.RLock) -> None:
    """Take `lock` unless this thread holds it: after an interrupted wait, so that the
    `with` block around it releases a lock this thread holds. Another interrupt while
    taking it is dropped (the one that ended the wait goes on)."""
    while not lock._is_owned():  # type: ignore[attr-defined]  # (not `holds`: no Python frame to land in)
        try:
            lock.acquire()
        except BaseException:  # noqa: S110 (a second Ctrl-C: the first is being raised)
            pass


# Times a thread gives up the GIL in `clear_way` (about half a millisecond of them)
# before it takes the lock the usual way, blocking if it is still held. A holder waiting
# for the GIL must first be scheduled to take it, which may take tens of microseconds on
# a virtual machine.
YIELDS = 256


# How `clear_way` gives up the GIL: `os.sched_yield()` lets go of it and steps aside for
# a thread that is runnable. With `time.sleep(0)` instead, a thread that held the lock
# and waited for the GIL got it within the yields in 494 tries of 500 on Python 3.10
# (whose `sleep(0)` is a `select` that returns at once; 500 of 500 on 3.11), against 600
# of 600 with `sched_yield`; and four threads enqueueing at once beside three busy
# loops blocked up to 0.044 times a job, against at most 0.015. (Windows has no
# `sched_yield`.)
_give_up_the_gil: Callable[[], None] = getattr(os, "sched_yield", None) or (lambda: time.sleep(0))


def clear_way(lock: threading.RLock) -> None:
    """Before `with lock:` on a short critical section of pure Python: while another
    thread holds `lock`, give up the GIL, at most YIELDS times, instead of blocking on it.

    Why: a thread blocked on a lock is handed it when it is released, and then waits for
    the GIL; the thread holding the GIL comes to the lock again and blocks in turn, and so
    on. Once it starts (a GIL switch landing inside such a section is enough), every
    acquisition costs two thread switches: a lock convoy. Four threads enqueueing at once
    on the memory store ran at a third of one thread's rate, at 1.2 context switches a
    job. A thread that yields the GIL instead lets the holder finish its few bytecodes,
    and finds the lock free when it has the GIL again.

    The lock is tried (taken and let go at once), not asked: a plain `Lock`'s `locked()`
    reads False while a thread that took it blocking waits for the GIL to return (its
    flag is set only then), which is the convoy's own state, so callers that asked it
    first still fell in (about one run in eight of those four threads). Hence an `RLock`
    (`_is_owned` tells this thread's holds). Nothing to clear when this thread holds it
    already (taking it again never waits). It returns, or raises an interrupt (Ctrl-C),
    holding `lock` as often as before.

    A call before the lock's own `with`, not a lock class of its own: a context manager
    written in Python can be interrupted (Ctrl-C) inside its `__exit__` before it lets
    the lock go, where the C lock's `with` cannot."""
    if lock._is_owned():  # type: ignore[attr-defined]
        return
    try:
        if lock.acquire(False):
            lock.release()
            return
        for _ in range(YIELDS):
            _give_up_the_gil()
            if lock.acquire(False):
                lock.release()
                return
    except BaseException:
        # An interrupt as `acquire` returned True, before the release: not held before
        # (asked above), so held now only by that acquire.
        if lock._is_owned():  # type: ignore[attr-defined]
            lock.release()
        raise
