"""One pooled child process of process isolation (`Child`), and how children end.

A child ends with its pipe closed (a polite end lets it exit on EOF), then SIGTERM, and
SIGKILL after a grace period; a timeout or a cancel signals its whole process group
(see `isolation_child.serve`). `end_all` ends every child left at interpreter exit. Which
child runs what, and when one is ended, is `isolation.ProcessRunner`'s business.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Optional


def default_start_method() -> str:
    if sys.platform.startswith("linux") and "forkserver" in multiprocessing.get_all_start_methods():
        return "forkserver"
    return "spawn"


@dataclass(eq=False)
class Child:
    """One pooled child process and the parent's end of its pipe.

    Ending a child can race: a worker thread reaps the child it supervises while the
    exit-time `end_all` ends every child left. `ending` serialises the two, and once
    `ended` the exit status stays readable in `exitcode` (the process object is closed)."""

    process: Any  # multiprocessing.Process (BaseProcess)
    conn: Connection
    pid: Optional[int]
    attempts: int = 0
    sys_path: tuple[str, ...] = ()
    # `ending` guards ended, exitcode and at_exit, and the ending of the process.
    ending: threading.Lock = field(default_factory=threading.Lock, repr=False)
    ended: bool = False
    exitcode: Optional[int] = None
    at_exit: bool = False  # ended by end_all because this process is exiting


def end_child(child: Child, grace: float, *, polite: float = 0.0, at_exit: bool = False,
              group: bool = False) -> Optional[int]:
    """End `child`: close its pipe and give it `polite` seconds to exit on that EOF, then
    SIGTERM, and SIGKILL after `grace`; reap it. Returns its exit status (None if it could
    not be reaped). Ending a child twice, from two threads or one after the other, is harmless.

    With `group` (a timeout, a cancel, the engine exiting) the signals go to the child's
    process group, so processes its job started (a shell command, a pool) end with it,
    and whatever of the group outlives the child gets SIGKILL."""
    with child.ending:
        if child.ended:
            return child.exitcode
        child.at_exit = at_exit
        try:
            child.conn.close()
        except OSError:
            pass
        process = child.process
        if polite > 0:
            process.join(polite)
        if process.exitcode is None:
            _signal(process, signal.SIGTERM, group)
            process.join(grace)
        if process.exitcode is None:
            _signal(process, signal.SIGKILL, group)
            process.join(5.0)  # SIGKILL cannot be caught; only a process stuck in the kernel lingers
        if group:
            _kill_group(child.pid)  # what the job started and left behind
        child.exitcode = process.exitcode
        if child.exitcode is not None:
            child.ended = True
            process.close()
        return child.exitcode


def _signal(process: Any, number: int, group: bool) -> None:
    """Send signal `number` to `process`, or to its process group if `group` and it leads
    one (a child still starting may not yet)."""
    if group and process.pid is not None and hasattr(os, "killpg"):
        try:
            if os.getpgid(process.pid) == process.pid:
                os.killpg(process.pid, number)
                return
        except OSError:  # gone already, or not ours to look at: signal the child alone
            pass
    if number == signal.SIGTERM:
        process.terminate()
    else:
        process.kill()


def _kill_group(pid: Optional[int]) -> None:
    """SIGKILL whatever is left of the process group led by the ended child `pid`."""
    if pid is None or not hasattr(os, "killpg"):
        return
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:  # none left (the usual case)
        pass


def alive(child: Child) -> bool:
    """True while `child` runs (False once ended, also by another thread)."""
    with child.ending:
        return not child.ended and bool(child.process.is_alive())


def end_all(children: set[Child], lock: threading.Condition, grace: float, lifeline: Connection) -> None:
    """At interpreter exit (or when the runner is collected): end every child left."""
    with lock:
        remaining = list(children)
        children.clear()
    for child in remaining:
        end_child(child, grace, at_exit=True, group=True)
    lifeline.close()


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown signal"
