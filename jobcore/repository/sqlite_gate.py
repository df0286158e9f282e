"""`ForkGate`: every call this process makes into SQLite passes through it shared, and a
fork waits at it for the calls under way to end. Knows nothing of connections or SQL.

SQLite guards its process-wide state with mutexes of its own (the unix VFS's global
lock, each open file's lock bookkeeping, the WAL shared memory): a thread inside any
SQLite call (a read, a connection opening or closing) may hold one, and a child forked
at that moment inherits it locked, with no thread to let it go. The child's first
`sqlite3.connect` (or `PRAGMA journal_mode`) then waits on it for ever (measured: 1
child in 5 forked from a process whose threads poll). Python's own locks cannot be
taken for SQLite's, so the calls into it are counted here instead, and `before_fork`
waits until none is under way.

The way in and out costs about 0.25 µs and takes no lock while no fork is under way
(see `ForkGate`); a lock taken on each measured 0.75.
"""

from __future__ import annotations

import contextlib
import threading
from threading import get_ident

from .. import lock_waits
from ..lock_waits import waitable_lock


class ForkGate:
    """Counts the calls into SQLite under way (`enter`/`leave`, always paired: `leave`
    in a `finally`); `before_fork` closes the gate and waits for them to end,
    `after_fork_in_parent` opens it again, `forked` makes a new one in the child.

    The way in and out takes no lock while no fork is under way: a call counts itself by
    appending its thread's id to `_inside` (one atomic list operation under the GIL),
    then looks for a fork; a fork marks itself in `_forkers` (under `_cond`), then waits
    until `_inside` holds no other thread's id. Each sees the other's mark, whichever
    came first: an entry that finds a fork begun takes itself back out and waits; a fork
    begun after an entry counted waits for it to leave. A thread already inside (a read
    callback that writes, a write that opens its thread's connection) never waits: a
    fork begun between its entries would wait for a thread that waits for it."""

    def __init__(self) -> None:
        # _cond guards _forkers (the threads forking: while there is one the gate is
        # closed, and entries of other threads wait; two threads may fork at once, and a
        # thread may fork inside its own fork's hooks, a signal handler's: a list, each
        # fork's mark taken out by its own end, so that an inner fork's end leaves the
        # outer's gate closed) and
        # is what forks and the entries waiting on them sleep on. _inside holds the
        # thread id of each call inside: appended and removed without the lock (see
        # the class docstring).
        self._lock = waitable_lock()  # (a caller's thread may wait on _cond for a fork)
        self._cond = threading.Condition(self._lock)
        self._inside: list[int] = []
        self._forkers: list[int] = []
        # _out holds the id of each thread stepped out (`step_out`) of a call it is still
        # making, its connection in hand: appended before it leaves, removed once it is
        # back in, without the lock, as _inside.
        self._out: list[int] = []

    def enter(self) -> None:
        """Come in: at once if no fork is under way (or this thread is inside already, or
        is the one forking), else once the forks are done. (A fork is moments: it waits
        for the calls under way, milliseconds.)"""
        me = get_ident()
        self._inside.append(me)
        if self._forkers:
            self._wait_for_forks(me)

    def _wait_for_forks(self, me: int) -> None:
        """A fork is under way: unless this thread is inside already or is the one
        forking (a thread's local storage may be dropped at odd moments, a finalizer
        closing a connection, even inside a fork), take this entry back out, wait for
        the forks to end, and come in."""
        with self._cond:
            while self._forkers and me not in self._forkers and self._inside.count(me) == 1:
                self._inside.remove(me)
                self._cond.notify_all()  # a fork may wait for this entry
                while self._forkers and me not in self._forkers:
                    lock_waits.wait(self._cond, self._lock)
                self._inside.append(me)

    def leave(self) -> None:
        """Go out (see `enter`); a way out wakes a fork waiting."""
        self._inside.remove(get_ident())
        if self._forkers:
            with self._cond:
                self._cond.notify_all()

    def step_out(self) -> bool:
        """Leave for a while (this thread is about to sleep between tries: no SQLite call
        under way), if it is inside only once; True if it did (then `step_in` after)."""
        me = get_ident()
        if self._inside.count(me) != 1:
            return False
        self._out.append(me)
        self.leave()
        return True

    def step_in(self) -> None:
        me = get_ident()
        try:
            self.enter()
        except BaseException:
            # Interrupted as it waited for a fork (Ctrl-C): back in all the same, as the call
            # it stepped out of is, whose `leave` takes it out (it found none: ValueError).
            # (Not so for `enter` itself: its callers call `leave` only once it returned.)
            if me not in self._inside:
                self._inside.append(me)
            raise
        finally:
            self._out.remove(me)

    def anyone_stepped_out(self) -> bool:
        """Whether a thread is stepped out of a call it is still making (see `step_out`)."""
        return bool(self._out)

    def before_fork(self, timeout: float) -> bool:
        """Close the gate and wait, at most `timeout` seconds, until no thread but this
        one is inside (a fork from inside a call, say a signal handler's, must not wait
        for itself); False if one still was (the gate stays closed all the same)."""
        me = get_ident()
        with self._cond:
            self._forkers.append(me)
            return lock_waits.wait_for(self._cond, self._lock, lambda: all(ident == me for ident in self._inside), timeout)

    def others_inside(self) -> set[int]:
        """The ids of the threads other than this one inside a call now."""
        me = get_ident()
        return {ident for ident in list(self._inside) if ident != me}

    def inside_here(self) -> bool:
        """Whether this thread is inside a call (only this thread adds or removes its id)."""
        return get_ident() in self._inside

    def after_fork_in_parent(self) -> None:
        """This thread's fork is done: open the gate (unless another thread forks too)."""
        with self._cond:
            try:
                with contextlib.suppress(ValueError):
                    self._forkers.remove(get_ident())
            finally:
                self._cond.notify_all()

    def forked(self) -> None:
        """In a forked child: an open gate with a lock of its own, and only the calls of
        this thread (the one that forked) counted, if it forked from inside."""
        me = get_ident()
        self._lock = waitable_lock()
        self._cond = threading.Condition(self._lock)
        self._forkers = []
        self._inside = [ident for ident in self._inside if ident == me]
        self._out = [ident for ident in self._out if ident == me]
