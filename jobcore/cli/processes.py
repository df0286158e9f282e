"""The long-running commands, `worker` and `dashboard`, and the signals that stop them; no job output.

Both run until SIGINT or SIGTERM; `worker` then stops gracefully, and a second signal
quits at once.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import select
import signal
import socket
import sys
import sysconfig
import threading
import traceback
from typing import Any

from .. import api
from ..manager import JobManager
from ..repository.base import JobRepository
from ..repository.factory import absolute_location
from ..repository.sqlite import SQLiteRepository
from .commands import EXIT_FAILED, EXIT_OK, CommandFailed, open_manager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """SIGINT and SIGTERM, waited for through a self-pipe (`signal.set_wakeup_fd`).

    Whichever thread the kernel delivers a signal to, the C handler writes its number to
    the pipe and `wait` wakes up; the Python handler does nothing, so no code that takes a
    lock ever runs at an arbitrary point of the main thread (an `Event.set()` handler can
    deadlock with the `Event.wait()` it interrupts). `wake()` wakes `wait` with 0."""

    def __enter__(self) -> "StopSignals":
        self._reader, self._writer = socket.socketpair()
        self._writer.setblocking(False)  # the C handler must never block on a full pipe
        self._previous_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        self._previous = {signum: signal.signal(signum, self._ignore) for signum in STOP_SIGNALS}
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self._previous_fd)
        self._reader.close()
        self._writer.close()

    @staticmethod
    def _ignore(signum: int, frame: Any) -> None:
        """Installed so the signals reach the wakeup pipe instead of their defaults."""

    def wait(self) -> int:
        """Block until SIGINT or SIGTERM (returns its number) or `wake()` (returns 0)."""
        while True:
            select.select([self._reader], [], [])
            number = self._reader.recv(1)[0]
            if number == 0 or number in STOP_SIGNALS:  # other Python-handled signals write here too
                return number

    def wake(self) -> None:
        """Wake `wait` (from another thread) with 0."""
        with contextlib.suppress(OSError):
            self._writer.send(b"\0")


# The import machinery's own files, never where an import failed: `importlib/__init__.py`
# raises a misspelt module's ModuleNotFoundError and re-raises a module's SyntaxError.
_IMPORTLIB_DIR = (os.path.join(os.path.dirname(os.path.abspath(importlib.__file__)), "")
                  if importlib.__file__ else None)


# Where installed code lives (the standard library, site-packages, jobcore itself): a
# failure raised there by a call from the user's module is shown at the user's line.
# Longest first: a virtualenv's platstdlib (venv/lib/python3.X/) holds its site-packages.
_LIBRARY_DIRS = tuple(sorted(dict.fromkeys(
    os.path.join(os.path.abspath(path), "")
    for path in (sysconfig.get_paths().get(name) for name in ("stdlib", "platstdlib", "purelib", "platlib"))
    if path), key=len, reverse=True))
_JOBCORE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "")


def _in_user_code(filename: str) -> bool:
    return not filename.startswith("<") and not (  # "<frozen importlib._bootstrap>", "<string>"
        _IMPORTLIB_DIR is not None and os.path.abspath(filename).startswith(_IMPORTLIB_DIR))


def _in_a_library(filename: str, top: str) -> bool:
    """Whether `filename` is installed code other than the package `top` being imported
    (an app installed in site-packages is the user's own code there)."""
    path = os.path.abspath(filename)
    if path.startswith(_JOBCORE_DIR):
        return True  # (jobcore's own manager.py is no app's module named manager)
    for folder in _LIBRARY_DIRS:
        if path.startswith(folder):
            return path[len(folder):].split(os.sep, 1)[0] not in (top, f"{top}.py")
    return False


def _import_failure(module: str, exc: BaseException) -> CommandFailed:
    """One line: the exception and where it was raised (the user's file and line); no
    place at all when none is the user's (`No module named 'taskz'` is raised by importlib)."""
    message = str(exc)
    if isinstance(exc, SyntaxError) and exc.filename and not exc.filename.startswith("<"):
        # Raised by the compiler, from no frame: its place is the source it was reading.
        message, location = str(exc.msg), f" ({exc.filename}:{exc.lineno})"
    else:
        frames = [f for f in traceback.extract_tb(exc.__traceback__)[1:] if _in_user_code(f.filename)]
        # The last of the user's own, if any (a ValueError raised inside json, or jobcore,
        # by the module's call): else the last outside the import machinery.
        frames = [f for f in frames if not _in_a_library(f.filename, module.split(".")[0])] or frames
        location = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return CommandFailed(f"cannot import {module!r}: {type(exc).__name__}: {message}{location}")


def install_default_manager(manager: JobManager) -> None:
    """Make `manager` what `jobcore.get_job_manager()` returns, before any module asks.

    So `register_job_function` in the worker's modules registers on the manager that runs
    with `--workers` threads, and the manager starts once everything is registered."""
    api.set_job_manager(manager)


def cmd_worker(args: argparse.Namespace) -> int:
    db = absolute_location(args.db)
    manager = open_manager(db, create=True, max_workers=args.workers, lease_timeout=args.lease_timeout,
                           poll_interval=args.poll_interval, discovery_interval=args.discovery_interval)
    os.environ["JOBCORE_DB"] = db  # before the imports: modules that build JobManager() share it
    install_default_manager(manager)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does; the console script does not
    for module in args.imports:
        try:
            importlib.import_module(module)
        except (Exception, SystemExit) as exc:  # (sys.exit(0) there exited 0, silent)
            manager.close()
            raise _import_failure(module, exc) from None
    with StopSignals() as signals:
        try:
            manager.start()
        except RuntimeError as exc:  # "can't start new thread": a pids limit, a container's TasksMax
            manager.close()
            raise CommandFailed(f"cannot start {args.workers} worker threads: {exc}") from None
        print(f"jobcore worker {manager.worker_id}: {args.workers} thread(s) on {_location(manager.repository)},"
              f" modules {', '.join(args.imports)}; stop with Ctrl-C or SIGTERM", flush=True)
        signals.wait()
        print("jobcore worker: stopping, letting running jobs finish (signal again to quit now)", flush=True)

        def stop_then_wake() -> None:
            try:
                manager.stop(wait=True, timeout=args.grace)
            finally:
                signals.wake()

        # Stopped on another thread, so that the main thread stays free to hear a second signal.
        threading.Thread(target=stop_then_wake, name="jobcore-stopper", daemon=True).start()
        if signals.wait() != 0:
            print("jobcore worker: quitting now; interrupted jobs run again once their leases expire",
                  file=sys.stderr, flush=True)
            sys.stdout.flush()
            os._exit(EXIT_FAILED)  # at once: no interpreter shutdown that could wait on a job
    still_running = len(manager.workers)
    manager.close()
    if still_running:
        raise CommandFailed(f"{still_running} job(s) still running after --grace {args.grace:g}s;"
                            " they run again elsewhere once their leases expire")
    print("jobcore worker: stopped", flush=True)
    return EXIT_OK


def cmd_dashboard(manager: JobManager, args: argparse.Namespace) -> int:
    from ..dashboard.server import DashboardServer

    try:
        server = DashboardServer(manager, host=args.host, port=args.port, token=args.token)
    except OSError as exc:
        raise CommandFailed(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    with StopSignals() as signals:
        server.start()
        print(f"jobcore dashboard on {server.login_url} for {_location(manager.repository)} (Ctrl-C to stop)",
              flush=True)
        signals.wait()
    server.close()
    return EXIT_OK


def _location(repository: JobRepository) -> str:
    """Where the jobs are, for a banner: a SQLite file's path, else the repository's repr
    (a PostgreSQL repository names its server and schema, never the password)."""
    return repository.path if isinstance(repository, SQLiteRepository) else repr(repository)
