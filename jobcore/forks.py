"""`on_fork`: let an object get ready for `os.fork()` and put itself right after it, in the
parent and in the child.

Threads do not survive `os.fork()`, and connections must not be shared across it; the
objects that hold either (a repository's connections, a started manager) register here.
A lock that another thread of the parent holds as it forks stays held for ever in the
child, and the data it guards may be half changed: an object whose state the child goes
on using takes its locks before the fork (`before`, in the forking thread) and lets them
go after it (`after_in_parent`), and the child makes new ones (`after_in_child`). It
must never wait without a bound there: the forking thread may be one of its own (a job,
a caller inside an enqueue), and a fork that never happens is worse than the risk taken.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from typing import Callable, Optional

logger = logging.getLogger("jobcore")


def on_fork(obj: object, *, before: Optional[str] = None, after_in_parent: Optional[str] = None,
            after_in_child: Optional[str] = None) -> None:
    """Call `obj.<before>()` in the forking thread just before each `os.fork()` this
    process makes from now on, `obj.<after_in_parent>()` in the parent and
    `obj.<after_in_child>()` in the child just after it, while `obj` lives (a weak
    reference: the registration does not keep it alive). Python runs the `before` hooks
    last registered first, and the others first registered first."""
    ref = weakref.ref(obj)

    def caller(method: Optional[str]) -> Optional[Callable[[], None]]:
        if method is None:
            return None
        name = method

        def call() -> None:
            alive = ref()
            if alive is not None:
                getattr(alive, name)()
        return call

    hooks = {"before": caller(before), "after_in_parent": caller(after_in_parent),
             "after_in_child": caller(after_in_child)}
    os.register_at_fork(**{when: hook for when, hook in hooks.items() if hook is not None})


def on_fork_in_child(obj: object, method: str) -> None:
    """Call `obj.<method>()` in every child this process forks from now on, while `obj`
    lives (a weak reference: the registration does not keep it alive)."""
    on_fork(obj, after_in_child=method)


# How long a fork waits at most for a lock that guards in-memory state (held for moments).
FORK_WAIT = 10.0


def take_before_fork(lock: "threading.Lock | threading.RLock", what: str, timeout: float = FORK_WAIT) -> bool:
    """Take `lock` for a `before` hook, waiting at most `timeout` seconds; False (logged)
    if it stayed held: the fork goes on, and in the child `what` may be as a thread of
    the parent left it, halfway through a change."""
    if lock.acquire(timeout=timeout):
        return True
    logger.warning("forking while %s is held by another thread (for %.1fs): the child may find it"
                   " halfway through a change", what, timeout)
    return False
