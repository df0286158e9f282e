"""`CtrlCOnce`: Ctrl-C (a KeyboardInterrupt) made to land at a chosen point inside an
engine call on the calling thread, as a signal would, for tests of what it leaves behind."""

from __future__ import annotations

import sys
import threading
from typing import Any, Callable


class CtrlCOnce:
    """Raises KeyboardInterrupt on this thread at the first line run in a function named
    `where` once `armed()` says so: where Ctrl-C may land inside an engine call (between
    two statements), found by the state it is in rather than by a line number."""

    def __init__(self, where: str, armed: Callable[[], bool]) -> None:
        self.where, self.armed, self.fired = where, armed, False

    def _local(self, frame: Any, event: str, arg: Any) -> Any:
        if event == "line" and not self.fired and self.armed():
            self.fired = True
            sys.settrace(None)
            raise KeyboardInterrupt
        return self._local

    def _global(self, frame: Any, event: str, arg: Any) -> Any:
        return self._local if frame.f_code.co_name == self.where else None

    def __enter__(self) -> "CtrlCOnce":
        sys.settrace(self._global)
        return self

    def __exit__(self, *exc: Any) -> None:
        sys.settrace(None)


def lock_is_free(lock: Any, wait: float = 10.0) -> bool:
    """Whether another thread can take `lock` (within `wait` seconds; this thread may hold
    it again: an RLock): what an interrupt left of a lock it landed near."""
    free: list[bool] = []

    def take() -> None:
        free.append(lock.acquire(timeout=wait))
        if free[-1]:
            lock.release()

    other = threading.Thread(target=take)
    other.start()
    other.join(wait + 1)
    return free == [True]
