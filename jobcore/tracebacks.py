"""The text of a failed attempt's traceback: what `traceback.format_exception` gives, with
the stack of an exception raised again from the same places formatted once. Knows nothing
of jobs.

Formatting a stack makes `linecache` stat every source file in it (to notice an edited
file), and each stat hands the GIL to another thread and waits to win it back: with four
workers failing jobs, formatting the traceback was most of a failed attempt's cost (a
drain of jobs that fail for good ran at 5,000 jobs/s, a fifth of one that succeeds). A
failure storm repeats the same stacks, so each distinct stack (the code and instruction
of every frame) is formatted once, and its lines kept (at most STACKS_KEPT of them): they
show the source as it was when first formatted, the code that ran, not a file edited on
disk since (a module reloaded has new code, and new lines). The exception's own lines
(type, message, notes) are formatted every time. An exception that chains another, or a
group of them, is formatted whole by `traceback.format_exception`, as before.
"""

from __future__ import annotations

import builtins
import threading
import traceback
from types import CodeType, TracebackType
from typing import Optional

STACKS_KEPT = 256  # distinct stacks whose formatted lines are kept (then they start over)

_GROUPS: tuple[type, ...] = tuple(getattr(builtins, name) for name in ("BaseExceptionGroup",)
                                  if hasattr(builtins, name))
_HEADER = "Traceback (most recent call last):\n"

# (code, last instruction) of each frame, innermost last -> the stack's formatted lines.
# _lock guards it (a dict's single reads and writes are atomic; the clearing at the bound
# and the insert after it are kept together).
_stacks: dict[tuple[tuple[CodeType, int], ...], list[str]] = {}
_lock = threading.Lock()


def format_failure(error: BaseException) -> str:
    """`"".join(traceback.format_exception(error))`, the stack of a plain exception
    formatted once per distinct stack (see module docstring)."""
    if (error.__cause__ is not None or (error.__context__ is not None and not error.__suppress_context__)
            or isinstance(error, _GROUPS)):
        return "".join(traceback.format_exception(type(error), error, error.__traceback__))
    tb = error.__traceback__
    if tb is None:
        return "".join(traceback.format_exception_only(type(error), error))
    key = _stack_key(tb)
    lines = _stacks.get(key)
    if lines is None:
        whole = traceback.TracebackException(type(error), error, tb, compact=True)
        lines = whole.stack.format()
        with _lock:
            if len(_stacks) >= STACKS_KEPT:
                _stacks.clear()
            _stacks[key] = lines
        return _HEADER + "".join(lines) + "".join(whole.format_exception_only())
    return _HEADER + "".join(lines) + "".join(traceback.format_exception_only(type(error), error))


def _stack_key(tb: Optional[TracebackType]) -> tuple[tuple[CodeType, int], ...]:
    frames = []
    while tb is not None:
        frames.append((tb.tb_frame.f_code, tb.tb_lasti))
        tb = tb.tb_next
    return tuple(frames)
