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

Nested entries of a thread already inside (a read callback that writes, a write that
opens its thread's connection) only count deeper: they never wait, or a fork begun
between them would wait for a thread that waits for it.
"""

from __future__ import annotations

import threading


class _Depth(threading.local):
    """How deep this thread is inside the gate (0: outside). A class default, not a
    `getattr` default: the miss that one costs (an AttributeError raised and caught)
    was most of the gate's cost on the hot path (measured: 0.4 µs of 1.2)."""

    n = 0


class ForkGate:
    """Counts the threads inside a call into SQLite (`enter`/`leave`, always paired:
    `leave` in a `finally`); `before_fork` closes the gate and waits for them to leave,
    `after_fork_in_parent` opens it again, `forked` makes a new one in the child."""

    def __init__(self) -> None:
        # _lock (and _cond on it) guards _users (threads inside: one each, however deep)
        # and _forkers (the threads forking: while there is one the gate is closed, and
        # entries of other threads wait; two threads may fork at once). The hot path
        # takes _lock itself, with acquire and release: a third of the cost of the
        # condition's `with` (measured).
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._users = 0
        self._forkers: set[int] = set()
        self._depth = _Depth()

    def enter(self) -> None:
        """Come in: at once if this thread is inside already, else once no fork is under
        way. (The fork is moments: it waits for the calls under way, milliseconds.)"""
        depth = self._depth
        n = depth.n
        if n:
            depth.n = n + 1
            return
        lock = self._lock
        lock.acquire()  # (see __init__)
        try:
            # The forking thread itself never waits here: a thread's local storage may be
            # dropped at odd moments (a finalizer closing a connection), even inside a fork.
            while self._forkers and threading.get_ident() not in self._forkers:
                self._cond.wait()
            # The depth before the count (and the count before the depth in `leave`): an
            # interrupt between them leaves this thread uncounted (its later entries only
            # nest, and no fork waits for it), never a count no `leave` takes back (every
            # fork would wait its whole bound).
            depth.n = 1
            self._users += 1
        finally:
            lock.release()

    def leave(self) -> None:
        """Go out (see `enter`); the last way out of a thread wakes a fork waiting."""
        depth = self._depth
        n = depth.n
        if n > 1:
            depth.n = n - 1
            return
        if n == 1:
            lock = self._lock
            lock.acquire()
            try:
                self._users -= 1
                depth.n = 0
                if self._forkers:
                    self._cond.notify_all()
            finally:
                lock.release()

    def step_out(self) -> bool:
        """Leave for a while (this thread is about to sleep between tries: no SQLite call
        under way), if it is inside only once; True if it did (then `step_in` after)."""
        if self._depth.n != 1:
            return False
        self.leave()
        return True

    def step_in(self) -> None:
        self.enter()

    def before_fork(self, timeout: float) -> bool:
        """Close the gate and wait, at most `timeout` seconds, until no thread but this
        one is inside (a fork from inside a call, say a signal handler's, must not wait
        for itself); False if one still was (the gate stays closed all the same)."""
        own = 1 if self._depth.n else 0
        with self._cond:
            self._forkers.add(threading.get_ident())
            return self._cond.wait_for(lambda: self._users <= own, timeout)

    def after_fork_in_parent(self) -> None:
        """This thread's fork is done: open the gate (unless another thread forks too)."""
        with self._cond:
            self._forkers.discard(threading.get_ident())
            self._cond.notify_all()

    def forked(self) -> None:
        """In a forked child: an open gate with a lock of its own, and only this thread
        (the one that forked) counted, if it forked from inside."""
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._forkers = set()
        self._users = 1 if self._depth.n else 0
