"""One pooled child process of process isolation (`Child`), and how children end.

A child ends with its pipe closed (a polite end lets it exit on EOF), then SIGTERM, and
SIGKILL after a grace period; a timeout or a cancel signals its whole process group
(see `isolation_child.serve`). `end_all` ends every child left at interpreter exit. Which
child runs what is `isolation.ProcessRunner`'s business; starting, lending and ending them
is `isolation_pool.ChildPool`'s.
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

from .clock import real_monotonic


def default_start_method() -> str:
    if sys.platform.startswith("linux") and "forkserver" in multiprocessing.get_all_start_methods():
        return "forkserver"
    return "spawn"


@dataclass(eq=False)
class Child:
    """One pooled child process and the parent's end of its pipe.

    Ending a child can race: a worker thread reaps the child it supervises while the
    exit-time `end_all` (or `ProcessRunner.close`) ends every child left. `ending`
    serialises the two, and once `ended` the exit status stays readable in `exitcode`
    (the process object is closed). `ready` is the supervising thread's alone; `closing`
    is set under the child pool's lock (`ChildPool._cond`) before the child is ended, and
    read after."""

    process: Any  # multiprocessing.Process (BaseProcess)
    conn: Connection
    pid: Optional[int]
    attempts: int = 0
    sys_path: tuple[str, ...] = ()
    ready: bool = False  # it sent "ready": started, its start-up over
    # When its last progress report came (real_monotonic; None: none yet in this attempt):
    # it may hold one made since (isolation_child.REPORT_EVERY). The supervising thread's.
    reported_at: Optional[float] = None
    # `ending` guards ended, exitcode and at_exit, and the ending of the process.
    ending: threading.Lock = field(default_factory=threading.Lock, repr=False)
    ended: bool = False
    exitcode: Optional[int] = None
    at_exit: bool = False  # ended by end_all because this process is exiting
    # Its forkserver died: `process` reports exit code 255 while the child may live on
    # (no longer our descendant), so it is watched and ended by its pid (`outlived_server`).
    orphaned: bool = False
    closing: bool = False  # ended by `ProcessRunner.close` while it ran an attempt


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
        if outlived_server(child):
            return _end_orphan(child, grace, polite, group)
        if group:
            _kill_group(child.pid)  # what the job started and left behind
        child.exitcode = process.exitcode
        if child.exitcode is not None:
            child.ended = True
            process.close()
        return child.exitcode


def outlived_server(child: Child) -> bool:
    """True if `child`'s process object says it ended while its pid still runs: under
    forkserver, the process object's sentinel and exit code come from the forkserver,
    which reports 255 when it dies itself (SIGTERM to the engine's process group), and
    the child, reparented, runs on. Marks the child `orphaned`; call with `ending` held
    or from the thread supervising the child."""
    if child.orphaned:
        return True
    if child.process.exitcode is None or child.pid is None or not exists(child.pid):
        return False
    child.orphaned = True
    return True


def _end_orphan(child: Child, grace: float, polite: float, group: bool) -> Optional[int]:
    """`end_child` for an orphaned child: not ours to reap, so signalled and waited for by
    pid until it no longer exists (init reaps it). Its exit status is unknown (None)."""
    pid = child.pid
    assert pid is not None
    if not wait_gone(pid, polite):
        _signal_pid(pid, signal.SIGTERM, group)
        if not wait_gone(pid, grace):
            _signal_pid(pid, signal.SIGKILL, group)
            wait_gone(pid, 5.0)
    if group:
        _kill_group(pid)
    child.ended = not exists(pid)
    child.exitcode = None
    if child.ended:
        child.process.close()
    return None


def exists(pid: int) -> bool:
    """True while process `pid` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a pid reused by another user's process: ours is gone
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):  # no /proc (not Linux), or gone just now
        return sys.platform != "linux"


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait up to `timeout` seconds until process `pid` no longer runs; True if it is gone."""
    pause = threading.Event()  # never set: a bounded wait that wakes in steps
    deadline = real_monotonic() + timeout
    while exists(pid):
        left = deadline - real_monotonic()
        if left <= 0:
            return False
        pause.wait(min(0.01, left))
    return True


def _signal_pid(pid: int, number: int, group: bool) -> None:
    """Send signal `number` to `pid`, or to the process group it leads if `group`."""
    try:
        if group and hasattr(os, "killpg") and os.getpgid(pid) == pid:
            os.killpg(pid, number)
        else:
            os.kill(pid, number)
    except OSError:  # gone already
        pass


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


def how_it_ended(child: Child, exitcode: Optional[int]) -> str:
    """How an ended `child` ended, for a message: "... running job X {how} before ..."."""
    if child.at_exit:
        return "was ended because this process is exiting"
    if child.closing:
        return "was ended because its runner was closed"
    if child.orphaned:
        return "died after the forkserver that started it had died (exit status unknown)"
    if exitcode is None:
        return "died"
    if exitcode >= 0:
        return f"exited with code {exitcode} (os._exit, a fatal error, or a failed start)"
    how = f"was killed by signal {-exitcode} ({signal_name(-exitcode)})"
    if -exitcode == signal.SIGKILL:
        how += ": the out-of-memory killer, or a kill from outside"
    elif -exitcode == signal.SIGSEGV:
        how += ": a crash in native code"
    return how


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown signal"
