"""Managers of one process on one store forget, together, the completions a cleanup deleted.

A manager remembers the latest jobs completed here (`waiting.Settlements`), and `poll` and
`wait` answer from that without reading the row. `cleanup_old_results` deletes finished
rows: the manager that made it forgets what it remembered, and so must every other
manager of the process on that store (a second manager's `cleanup_old_results(0)` left
the first one's `poll` showing COMPLETED for a job deleted, where SPEC says `None`).
Another process's cleanup is beyond this: docs/api.md says so at `poll`.

No threads here; `_lock` guards `_by_object` and `_by_value` (a store's managers, as weak
references to their bound methods, so an entry keeps no manager alive), and `_swept`. A
store named by an object (a memory store: its repository) is a weak key, so that the
store is not kept alive by its entry; one named by a value (SQLite's file, PostgreSQL's
DSN and schema) is a plain key, its entry dropped once its managers are gone: as its
list is next touched, or at a sweep of every such entry once they have doubled since
the last one (`_swept`: how many were left then).
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Callable, Hashable, MutableMapping

_Refs = list["weakref.WeakMethod[Callable[[], None]]"]
_lock = threading.Lock()
_by_object: "weakref.WeakKeyDictionary[Hashable, _Refs]" = weakref.WeakKeyDictionary()
_by_value: dict[Hashable, _Refs] = {}
_swept = 0


def _forked() -> None:
    """In a forked child: a lock of its own (a parent thread may have held this one)."""
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


def _entries(key: Hashable) -> MutableMapping[Hashable, _Refs]:
    """The mapping `key`'s entry goes in: a weak one if `key` can be weakly referenced."""
    try:
        weakref.ref(key)
    except TypeError:
        return _by_value
    return _by_object


def join(key: Hashable, forget: Callable[[], None]) -> None:
    """Have the bound method `forget` called whenever another manager of this process
    deletes finished jobs of the store `key` names (`JobRepository.store_key`)."""
    global _swept
    entries = _entries(key)
    with _lock:
        alive = [ref for ref in entries.get(key, ()) if ref() is not None]
        alive.append(weakref.WeakMethod(forget))
        entries[key] = alive
        if len(_by_value) > 2 * _swept + 16:  # (amortised: each join costs O(1) of sweeping)
            for other, refs in list(_by_value.items()):
                if not any(ref() is not None for ref in refs):
                    del _by_value[other]
            _swept = len(_by_value)


def deleted(key: Hashable, by: Callable[[], None]) -> None:
    """Finished jobs of the store `key` names were deleted by the manager whose `forget`
    is `by` (it forgot already): every other manager of this process on it forgets what
    it remembered of completions."""
    entries = _entries(key)
    with _lock:
        refs = [ref for ref in entries.get(key, ()) if ref() is not None]
        if refs:
            entries[key] = refs
        else:
            entries.pop(key, None)
    for ref in refs:
        forget = ref()
        if forget is not None and forget != by:
            forget()
