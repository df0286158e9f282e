"""A Ctrl-C that lands in user code the engine calls while it records an outcome (a retry
classifier, a channel's `wants`), held until the recording is done.

On the engine's own threads such code raising anything (pytest.fail's `Failed`,
`SystemExit`) is logged and survived: a thread that died left its job RUNNING. On the
main thread, which `run_pending` and an immediate manager's `enqueue` record on, a
KeyboardInterrupt there is the user's Ctrl-C: it is kept here, the outcome recorded as if
the code had raised anything else, and `raise_deferred` then raises it to the caller.
"""

from __future__ import annotations

import threading

_held = threading.local()  # per thread: the interrupt held, if any


def survived(exc: BaseException) -> None:
    """`exc` was raised by user code the engine called and has been handled as a failure
    of that code; if it is a Ctrl-C on the main thread, hold it for `raise_deferred`."""
    if isinstance(exc, KeyboardInterrupt) and threading.current_thread() is threading.main_thread():
        _held.interrupt = exc


def raise_deferred() -> None:
    """Raise the interrupt held for this thread, if any (once)."""
    interrupt = getattr(_held, "interrupt", None)
    if interrupt is not None:
        _held.interrupt = None
        raise interrupt
