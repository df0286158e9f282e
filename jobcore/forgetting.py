"""Managers of one process on one store forget, together, the completions a cleanup deleted.

A manager remembers the latest jobs completed here (`waiting.Settlements`), and `poll` and
`wait` answer from that without reading the row. `cleanup_old_results` deletes finished
rows: the manager that made it forgets what it remembered, and so must every other
manager of the process on that store (a second manager's `cleanup_old_results(0)` left
the first one's `poll` showing COMPLETED for a job deleted, where SPEC says `None`).
Another process's cleanup is beyond this: docs/api.md says so at `poll`.

No threads here; `_lock` guards `_forgetters` (weak references to each manager's bound
method, so a registry entry keeps no manager alive; those of managers gone are dropped
as their store's list is next touched, and every store's once the stores listed have
doubled since the last such sweep: a store named by its repository object, a memory
store, is not kept alive for long by its key) and `_swept` (how many were left then).
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Callable, Hashable

_lock = threading.Lock()
_forgetters: dict[Hashable, list["weakref.WeakMethod[Callable[[], None]]"]] = {}
_swept = 0


def _forked() -> None:
    """In a forked child: a lock of its own (a parent thread may have held this one)."""
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


def join(key: Hashable, forget: Callable[[], None]) -> None:
    """Have the bound method `forget` called whenever another manager of this process
    deletes finished jobs of the store `key` names (`JobRepository.store_key`)."""
    global _swept
    with _lock:
        alive = [ref for ref in _forgetters.get(key, ()) if ref() is not None]
        alive.append(weakref.WeakMethod(forget))
        _forgetters[key] = alive
        if len(_forgetters) > 2 * _swept + 16:  # (amortised: each join costs O(1) of sweeping)
            for other, refs in list(_forgetters.items()):
                if not any(ref() is not None for ref in refs):
                    del _forgetters[other]
            _swept = len(_forgetters)


def deleted(key: Hashable, by: Callable[[], None]) -> None:
    """Finished jobs of the store `key` names were deleted by the manager whose `forget`
    is `by` (it forgot already): every other manager of this process on it forgets what
    it remembered of completions."""
    with _lock:
        refs = [ref for ref in _forgetters.get(key, ()) if ref() is not None]
        if refs:
            _forgetters[key] = refs
        else:
            _forgetters.pop(key, None)
    for ref in refs:
        forget = ref()
        if forget is not None and forget != by:
            forget()
