"""`on_fork_in_child`: let an object put itself right in a process forked from this one.

Threads do not survive `os.fork()`, and connections must not be shared across it; the
objects that hold either (a repository's connections, a started manager) register here.
"""

from __future__ import annotations

import os
import weakref


def on_fork_in_child(obj: object, method: str) -> None:
    """Call `obj.<method>()` in every child this process forks from now on, while `obj`
    lives (a weak reference: the registration does not keep it alive)."""
    ref = weakref.ref(obj)

    def after_in_child() -> None:
        alive = ref()
        if alive is not None:
            getattr(alive, method)()

    os.register_at_fork(after_in_child=after_in_child)
