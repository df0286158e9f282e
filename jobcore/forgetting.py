"""Managers of one process on one store forget, together, the completions a cleanup deleted.

A manager remembers the latest jobs completed here (`waiting.Settlements`), and `poll` and
`wait` answer from that without reading the row. `cleanup_old_results` deletes finished
rows: the manager that made it forgets what it remembered, and so must every other
manager of the process on that store (a second manager's `cleanup_old_results(0)` left
the first one's `poll` showing COMPLETED for a job deleted, where SPEC says `None`).
Another process's cleanup is beyond this: docs/api.md says so at `poll`.

No threads here; `_lock` guards `_forgetters` (weak references to each manager's bound
method, so a registry entry keeps no manager alive).
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Callable, Hashable

_lock = threading.Lock()
_forgetters: dict[Hashable, list["weakref.WeakMethod[Callable[[], None]]"]] = {}


def _forked() -> None:
    """In a forked child: a lock of its own (a parent thread may have held this one)."""
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


def join(key: Hashable, forget: Callable[[], None]) -> None:
    """Have the bound method `forget` called whenever a manager of this process deletes
    finished jobs of the store `key` names (`JobRepository.store_key`)."""
    with _lock:
        for other in list(_forgetters):  # (managers gone: their entries go too)
            alive = [ref for ref in _forgetters[other] if ref() is not None]
            if alive:
                _forgetters[other] = alive
            else:
                del _forgetters[other]
        _forgetters.setdefault(key, []).append(weakref.WeakMethod(forget))


def deleted(key: Hashable) -> None:
    """Finished jobs of the store `key` names were deleted: every manager of this
    process on it forgets what it remembered of completions."""
    with _lock:
        refs = list(_forgetters.get(key, ()))
    for ref in refs:
        forget = ref()
        if forget is not None:
            forget()
