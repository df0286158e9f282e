"""A Ctrl-C that lands in user code the engine calls while it records an outcome (a retry
classifier, a channel's `wants`).

On the engine's own threads such code raising anything (pytest.fail's `Failed`,
`SystemExit`) is logged and survived: a thread that died left its job RUNNING. On the
main thread it is the user's Ctrl-C. Inside `held_interrupts` (`run_pending` recording
the attempt it ran in the caller's thread, an `enqueue` on a started manager recording
outcomes there) it is held, the outcomes recorded and their events published as if that
code had raised anything else, and raised to the caller once the block ends. Elsewhere it
goes on at once: nothing is ever held for a later call.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

_held = threading.local()  # per thread: `depth` of held_interrupts blocks, the `interrupt` held


def survived(exc: BaseException) -> None:
    """`exc` was raised by user code the engine called and is handled as a failure of that
    code: a Ctrl-C on the main thread is held inside `held_interrupts`, else raised now."""
    if isinstance(exc, KeyboardInterrupt) and threading.current_thread() is threading.main_thread():
        if not getattr(_held, "depth", 0):
            raise exc
        _held.interrupt = exc


@contextlib.contextmanager
def held_interrupts() -> Iterator[None]:
    """Hold a Ctrl-C `survived` meets inside the block, and raise it as the block ends."""
    _held.depth = getattr(_held, "depth", 0) + 1
    try:
        yield
    finally:
        _held.depth -= 1
        interrupt = getattr(_held, "interrupt", None)
        if interrupt is not None and not _held.depth:
            _held.interrupt = None
            raise interrupt
