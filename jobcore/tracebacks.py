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
disk since (a module reloaded has new code, and new lines). Each exception's own lines
(type, message, notes) are formatted every time, and so is a chain of them (`raise ...
from`, or raised while handling another), as the standard library chains them. A chain
holding an exception group is formatted whole by `traceback.format_exception`.
"""

from __future__ import annotations

import builtins
import traceback
from types import CodeType, TracebackType
from typing import Optional

STACKS_KEPT = 256  # distinct stacks whose formatted lines are kept (then they start over)

_GROUPS: tuple[type, ...] = tuple(getattr(builtins, name) for name in ("BaseExceptionGroup",)
                                  if hasattr(builtins, name))
_HEADER = "Traceback (most recent call last):\n"
# What the standard library writes between the exceptions of a chain (tested equal).
_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"

# (code, last instruction) of each frame, innermost last -> the stack's formatted lines.
# No lock: each read and write of the dict is atomic under the GIL; threads inserting at
# once may clear it twice, or pass the bound by one entry each. (A lock held by a worker
# thread as the process forked would stay held in the child, and its first failure would
# wait on it for ever.)
_stacks: dict[tuple[tuple[CodeType, int], ...], list[str]] = {}


def format_failure(error: BaseException) -> str:
    """`"".join(traceback.format_exception(error))`, each stack formatted once per distinct
    stack (see module docstring). Should the shortcut fail (it leans on how the standard
    library's `TracebackException` builds itself, which changes between versions), the
    text is formatted the standard way: it is called as an attempt fails, in the worker's
    thread, and an error out of it ended that thread with its job still running."""
    chain = _chain(error)
    if chain is not None:
        try:
            return _format_chain(chain)
        except Exception:  # noqa: S110 (formatted the standard way below)
            pass
    return "".join(traceback.format_exception(type(error), error, error.__traceback__))


def _format_chain(chain: list[tuple[str, BaseException]]) -> str:
    """The text of `chain` (as `_chain` gives it), each stack formatted once (see module
    docstring)."""
    parts: list[str] = []
    for link, exception in reversed(chain):
        if link:
            parts.append(link)
        if exception.__traceback__ is not None:
            parts.append(_HEADER)
            parts.extend(_stack_lines(exception))
        parts.extend(_own_lines(exception))
    return "".join(parts)


def _chain(error: BaseException) -> Optional[list[tuple[str, BaseException]]]:
    """The exceptions `traceback.format_exception` shows for `error`, outermost first, each
    with the line written before it that tells how it follows the next one (its cause, or
    the one it was raised while handling; none for the innermost); None if one is a group."""
    chain: list[tuple[str, BaseException]] = []
    seen: set[int] = set()
    exception: Optional[BaseException] = error
    while exception is not None:
        if isinstance(exception, _GROUPS):
            return None
        seen.add(id(exception))
        cause, context = exception.__cause__, exception.__context__
        if cause is not None and id(cause) not in seen:
            chain.append((_CAUSE, exception))
            exception = cause
        elif context is not None and not exception.__suppress_context__ and id(context) not in seen:
            chain.append((_CONTEXT, exception))
            exception = context
        else:
            chain.append(("", exception))
            exception = None
    return chain


def _stack_lines(exception: BaseException) -> list[str]:
    """The formatted frames of `exception`'s traceback (not None), kept by its stack."""
    key = _stack_key(exception.__traceback__)
    lines = _stacks.get(key)
    if lines is None:
        lines = _alone(exception, exception.__traceback__).stack.format()
        if len(_stacks) >= STACKS_KEPT:
            _stacks.clear()
        _stacks[key] = lines
    return lines


def _own_lines(exception: BaseException) -> list[str]:
    """`exception`'s own lines: type, message and notes (or a SyntaxError's)."""
    return list(_alone(exception, None).format_exception_only())


def _alone(exception: BaseException, tb: Optional[TracebackType]) -> traceback.TracebackException:
    """The standard library's view of `exception` with the traceback `tb`, without the
    exceptions it chains: `_seen` tells it they are taken care of (a keyword of its own,
    there since Python 3.10; without it, they are read too, each stack checked again,
    and the same lines come out)."""
    try:
        alone = traceback.TracebackException(type(exception), exception, tb, compact=True,
                                             _seen={id(exception)})
    except TypeError:
        return traceback.TracebackException(type(exception), exception, tb, compact=True)
    if not hasattr(alone, "exceptions"):
        # Python 3.13 sets it only while reading the chain, which `_seen` skips, and
        # formatting reads it: no group here (`_chain` leaves those to the standard way).
        setattr(alone, "exceptions", None)  # (no such attribute before Python 3.11)
    return alone


def _stack_key(tb: Optional[TracebackType]) -> tuple[tuple[CodeType, int], ...]:
    frames = []
    while tb is not None:
        frames.append((tb.tb_frame.f_code, tb.tb_lasti))
        tb = tb.tb_next
    return tuple(frames)
