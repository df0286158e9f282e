"""`on_fork`: let an object get ready for `os.fork()` and put itself right after it, in the
parent and in the child. It does not decide what an object does then: only when, and in
what order, its methods are called.

Threads do not survive `os.fork()`, and connections must not be shared across it; the
objects that hold either (a repository's connections, a started manager) register here.
A lock that another thread of the parent holds as it forks stays held for ever in the
child, and the data it guards may be half changed: an object whose state the child goes
on using takes its locks before the fork (`before`, in the forking thread) and lets them
go after it (`after_in_parent`), and the child makes new ones (`after_in_child`). It
must never wait without a bound there: the forking thread may be one of its own (a job,
a caller inside an enqueue), and a fork that never happens is worse than the risk taken.

The registrations are kept here, by weak reference, and go as their objects do; the
interpreter is given jobcore's three hooks once (its own never go: one per object, a
process that made and closed 10,000 managers kept 40,000 of them, and every fork called
them all, 22 ms instead of 0.55; found by a leak hunt).
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import threading
import weakref
from typing import Generic, NamedTuple, Optional, TypeVar

logger = logging.getLogger("jobcore")

T = TypeVar("T")

# How long a fork waits at most for a lock that guards in-memory state (held for moments).
FORK_WAIT = 10.0
# How long a fork waits at most for the registry's lock (held for a dict update, never
# while a hook or any other code runs): only a fork from a signal handler that
# interrupted this very thread inside `on_fork` could find it held that long.
REGISTRY_WAIT = 1.0


def on_fork(obj: object, *, before: Optional[str] = None, after_in_parent: Optional[str] = None,
            after_in_child: Optional[str] = None) -> None:
    """Call `obj.<before>()` in the forking thread just before each `os.fork()` this
    process makes from now on, `obj.<after_in_parent>()` in the parent and
    `obj.<after_in_child>()` in the child just after it, while `obj` lives (a weak
    reference: the registration does not keep it alive, and goes when `obj` does). The
    `before` hooks run last registered first, and the others first registered first, as
    Python runs its own (`os.register_at_fork`). All of jobcore's run together, where
    the first registration put them among the process's other at-fork hooks. A hook that
    raises is logged, and the others still run. `TypeError` if no method is named."""
    _registry.add(obj, before, after_in_parent, after_in_child)


def on_fork_in_child(obj: object, method: str) -> None:
    """Call `obj.<method>()` in every child this process forks from now on, while `obj`
    lives (a weak reference: the registration does not keep it alive)."""
    on_fork(obj, after_in_child=method)


def registered() -> int:
    """How many objects have hooks registered (for tests and leak hunts): one whose
    object is gone counts no more once the collector has freed it."""
    return _registry.count()


class PerForkStack(threading.local, Generic[T]):
    """What each fork under way in a thread keeps from its `before` hook to its
    `after_in_parent` (a lock taken, the entries called): a stack per thread, since a
    fork may come inside a fork's hooks (a signal handler's) and another thread may fork
    at once; each fork's end takes only its own. Make a new one in a forked child."""

    def __init__(self) -> None:  # (run in each thread at its first use)
        self._items: list[T] = []

    def push(self, item: T) -> None:
        self._items.append(item)

    def pop(self) -> Optional[T]:
        """This thread's latest item, taken; None if it has none (its fork pushed none)."""
        return self._items.pop() if self._items else None


class _Entry(NamedTuple):
    """One `on_fork` registration: its object, weakly, and the methods to call."""

    ref: "weakref.ref[object]"
    before: Optional[str]
    after_in_parent: Optional[str]
    after_in_child: Optional[str]


class _Registry:
    """The live `on_fork` registrations, in the order they were made, and the three
    at-fork hooks that call them (given to the interpreter at the first registration)."""

    def __init__(self) -> None:
        # _lock guards _entries and _hooked. It is held only to update or copy _entries,
        # never while a hook or any other code runs. A dying object's weak reference
        # callback may run on any thread at any moment, the one holding _lock included:
        # it only tries the lock, and if that fails leaves its key in _dead, which
        # whoever holds _lock empties before letting it go (`_unlock`). Reentrant: a
        # collection inside a registration (any allocation may start one) may run a
        # finalizer that registers another object on the same thread (with a plain lock
        # it waited for itself for ever, found by a review); a copy changed under it is
        # taken again (`_copy`). A forked child makes a new _lock: a parent thread may
        # have held this one at the fork.
        self._lock = threading.RLock()
        self._entries: dict[int, _Entry] = {}  # by a key growing with each registration: in order
        self._keys = itertools.count()  # those keys (one `next` each: no step to interleave)
        self._hooked = False  # whether the interpreter was given `_before` and the others
        self._dead: list[int] = []  # keys of entries whose objects went (list.append: atomic)
        # Per fork: the entries whose `before` it ran, for `after_in_parent`.
        self._forking: PerForkStack[list[_Entry]] = PerForkStack()

    def add(self, obj: object, before: Optional[str], after_in_parent: Optional[str],
            after_in_child: Optional[str]) -> None:
        """See `on_fork`."""
        if before is None and after_in_parent is None and after_in_child is None:
            raise TypeError("on_fork: name at least one of before, after_in_parent and after_in_child")
        self._lock.acquire()
        try:
            key = next(self._keys)
            # (A TypeError for an object that takes no weak reference: nothing changed.)
            ref = weakref.ref(obj, functools.partial(self._gone, key))
            self._entries[key] = _Entry(ref, before, after_in_parent, after_in_child)
            if not self._hooked and hasattr(os, "register_at_fork"):
                # At the first registration, not at import: jobcore's modules give the
                # interpreter their own child hooks (fresh locks) as they are imported,
                # some after this one, and those must have run in a child before any
                # object's, as when each object registered its own. Marked first: a
                # registration nested in this one must not hook again.
                self._hooked = True
                os.register_at_fork(before=self._before, after_in_parent=self._after_in_parent,
                                    after_in_child=self._after_in_child)
        finally:
            self._unlock()

    def count(self) -> int:
        """How many entries are registered."""
        self._lock.acquire()
        try:
            return len(self._entries)
        finally:
            self._unlock()

    def _gone(self, key: int, _ref: object) -> None:
        """The weak reference callback of entry `key`: its object went."""
        self._dead.append(key)
        if self._lock.acquire(blocking=False):  # else its holder drops it (see _lock)
            self._unlock()

    def _unlock(self) -> None:
        """Drop the entries whose objects went, and release `_lock` (taken by the caller)."""
        while True:
            while self._dead:
                self._entries.pop(self._dead.pop(), None)
            self._lock.release()
            # A callback that failed to take the lock after the last look: drop its
            # entry too (if another thread took the lock meanwhile, that one does).
            if not self._dead or not self._lock.acquire(blocking=False):
                return

    def _copy(self) -> list[_Entry]:
        """The live entries, in the order they were registered."""
        held = take_before_fork(self._lock, "the registry of fork hooks", REGISTRY_WAIT)
        try:
            while True:
                try:
                    return list(self._entries.values())
                except RuntimeError:  # (only unheld) changed as it was copied: copy again
                    continue
        finally:
            if held:
                self._unlock()

    def _before(self) -> None:
        # A copy, so that the lock is not held while the hooks run (one may register
        # another object), nor in the child; `after_in_parent` calls the same entries.
        entries = self._copy()
        self._forking.push(entries)
        for entry in reversed(entries):
            _call(entry, entry.before)

    def _after_in_parent(self) -> None:
        entries = self._forking.pop()
        # (None: this thread's fork ran no `before` of ours, registered only now.)
        for entry in self._copy() if entries is None else entries:
            _call(entry, entry.after_in_parent)

    def _after_in_child(self) -> None:
        # The only thread here: no other can be changing the entries, and the parent
        # thread that may have held the lock at the fork is not here to let it go.
        self._lock = threading.RLock()
        self._forking = PerForkStack()
        # Every object registered before the fork: one that another thread registered
        # after this fork's `before` ran is in this child's memory too.
        for entry in self._copy():
            _call(entry, entry.after_in_child)


def _call(entry: _Entry, method: Optional[str]) -> None:
    """`entry`'s object's `method()`, if it names one and the object lives. What it raises
    is logged, not raised: the other hooks must run (as the interpreter does with its own)."""
    if method is None:
        return
    obj = entry.ref()
    if obj is None:
        return
    try:
        getattr(obj, method)()
    except BaseException:  # a fork half prepared for is worse (the interpreter ignores it too)
        logger.exception("fork hook %s of %r raised", method, obj)


def take_before_fork(lock: "threading.Lock | threading.RLock", what: str, timeout: float = FORK_WAIT) -> bool:
    """Take `lock` for a `before` hook, waiting at most `timeout` seconds; False (logged)
    if it stayed held: the fork goes on, and in the child `what` may be as a thread of
    the parent left it, halfway through a change."""
    if lock.acquire(timeout=timeout):
        return True
    logger.warning("forking while %s is held by another thread (for %.1fs): the child may find it"
                   " halfway through a change", what, timeout)
    return False


_registry = _Registry()
