"""The `jobcore` command line: inspect and change a job database, run a worker or the dashboard.

Every command but `worker` talks to the database through a producer `JobManager` that is
never started, so it runs nothing. Exit codes: 0 ok, 1 not found or failed, 2 usage.
Errors are one line on stderr (`jobcore: error: ...`), never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import math
import os
import select
import signal
import socket
import sqlite3
import sys
import threading
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

from . import __version__, api
from .dashboard.views import job_detail, job_summary, log_entries
from .errors import JobcoreError, JobNotFound
from .manager import JobManager, default_database_path
from .models import JobPriority, JobResult, JobStatus
from .repository.sqlite import SQLiteRepository

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
STATUSES = [status.value for status in JobStatus]
BAR_WIDTH = 30


class CommandFailed(JobcoreError):
    """A command could not do what was asked; `main` prints it as one line and exits 1."""


# -- opening the database -----------------------------------------------------------------
def check_database(path: str, *, create: bool) -> None:
    """Refuse a path that is not a jobcore database, without writing to it.

    A missing path is refused unless `create` (only `worker` creates a database: a typo in
    `--db` must not silently show an empty queue). An SQLite file without jobcore's tables
    is refused too, so jobcore never adds its tables to another application's database."""
    if os.path.isdir(path):
        raise CommandFailed(f"{path!r} is a directory, not a jobcore database")
    if not os.path.exists(path):
        if create:
            return
        raise CommandFailed(f"no jobcore database at {path!r} (give --db PATH or set $JOBCORE_DB)")
    uri = Path(path).resolve().as_uri() + "?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.OperationalError as exc:
        raise CommandFailed(f"cannot open {path!r}: {exc}") from None
    except sqlite3.DatabaseError as exc:
        raise CommandFailed(f"{path!r} is not a jobcore database ({exc})") from None
    if "jobcore_meta" not in tables and (tables or not create):
        raise CommandFailed(f"{path!r} is an SQLite database but not a jobcore one (no jobcore tables)")


def open_manager(path: str, *, create: bool = False, **options: Any) -> JobManager:
    """A producer manager on the SQLite database at `path`, checked first (see
    `check_database`); `options` go to `JobManager`."""
    check_database(path, create=create)
    return JobManager(SQLiteRepository(path), producer=True, **options)


# -- printing -------------------------------------------------------------------------------
def clean(text: Any, *, multiline: bool = False) -> str:
    """Job data made safe for a terminal: control characters (escape sequences, and newlines
    unless `multiline`) are shown escaped instead of being interpreted."""
    keep = "\n\t" if multiline else ""
    return "".join(ch if ch in keep or ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
                   for ch in str(text))


def _when(result_time: Any) -> str:
    return "-" if result_time is None else result_time.strftime("%Y-%m-%d %H:%M:%S")


def _percent(progress: float) -> str:
    return f"{round(progress * 100)}%"


def _priority(value: int) -> str:
    names = {int(p): p.name.lower() for p in JobPriority}
    return f"{value} ({names[value]})" if value in names else str(value)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def _print_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    rows = [[clean(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in [list(headers), *rows]) for i in range(len(headers))]
    for row in [list(headers), *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths)) + "  " + row[-1])


def _shorten(text: Optional[str], limit: int = 60) -> str:
    text = clean(text or "")
    return text if len(text) <= limit else text[:limit - 1] + "…"


def render_bar(result: JobResult, width: int = BAR_WIDTH) -> str:
    """One line: `[#########.....]  45%  running  message`."""
    filled = int(round(result.progress * width))
    line = f"[{'#' * filled}{'.' * (width - filled)}] {_percent(result.progress):>4}  {result.status.value}"
    if result.progress_message:
        line += f"  {clean(result.progress_message)}"
    return line


# -- commands that read ------------------------------------------------------------------------
def _poll_or_fail(manager: JobManager, job_id: str) -> JobResult:
    result = manager.poll(job_id)
    if result is None:
        raise CommandFailed(str(JobNotFound(job_id)))
    return result


def cmd_stats(manager: JobManager, args: argparse.Namespace) -> int:
    stats = dict(manager.get_stats(), queue_size=manager.get_queue_size(),
                 workers=len(manager.list_workers()))
    if args.json:
        _print_json(stats)
    else:
        for key, value in stats.items():
            print(f"{key.replace('_', ' '):<12}{value:>8}")
    return EXIT_OK


def cmd_list(manager: JobManager, args: argparse.Namespace) -> int:
    results = manager.list_jobs(status=args.status, tags=args.tag or None, owner=args.owner,
                                limit=args.limit or None, offset=args.offset)
    if args.json:
        _print_json([job_summary(result) for result in results])
    elif not results:
        print("no jobs")
    else:
        _print_table(["ID", "STATUS", "PROGRESS", "ATTEMPTS", "CREATED", "OWNER", "NAME"],
                     [[r.job_id, r.status.value, _percent(r.progress), str(r.attempts), _when(r.created_at),
                       r.owner or "-", r.name] for r in results])
    return EXIT_OK


def cmd_show(manager: JobManager, args: argparse.Namespace) -> int:
    result = _poll_or_fail(manager, args.id)
    if args.json:
        _print_json(job_detail(result, manager.get_logs(args.id)))
        return EXIT_OK
    fields = [
        ("id", result.job_id), ("name", result.name), ("function", result.function_name),
        ("status", result.status.value),
        ("progress", f"{_percent(result.progress)} {result.progress_message}".rstrip()),
        ("attempts", f"{result.attempts} (max retries {result.max_retries})"),
        ("priority", _priority(result.priority)),
        ("owner", result.owner), ("tags", ", ".join(sorted(result.tags)) or None),
        ("created", result.created_at and _when(result.created_at)),
        ("scheduled", result.scheduled_at and _when(result.scheduled_at)),
        ("started", result.started_at and _when(result.started_at)),
        ("completed", result.completed_at and _when(result.completed_at)),
        ("worker", result.worker_id), ("depends on", ", ".join(result.depends_on) or None),
        ("metadata", json.dumps(result.metadata) if result.metadata else None),
        ("result", None if result.result is None else json.dumps(result.result, default=str)),
        ("error type", result.error_type), ("error", result.error),
    ]
    for label, value in fields:
        if value is not None:
            print(f"{label + ':':<12}{clean(value)}")
    if result.traceback:
        print("traceback:")
        print(clean(result.traceback.rstrip("\n"), multiline=True))
    return EXIT_OK


def cmd_logs(manager: JobManager, args: argparse.Namespace) -> int:
    _poll_or_fail(manager, args.id)
    entries = manager.get_logs(args.id)
    if args.json:
        _print_json(log_entries(entries))
        return EXIT_OK
    for entry in entries:
        print(f"{_when(entry.timestamp)}  {entry.level.upper():<8} {clean(entry.message, multiline=True)}")
    return EXIT_OK


def cmd_dlq(manager: JobManager, args: argparse.Namespace) -> int:
    if args.retry_all:
        ids = manager.retry_dead_letters(args.limit or None)
        print(f"re-queued {len(ids)} failed job(s)")
        return EXIT_OK
    results = [result for _, result in manager.get_dead_letter_queue(args.limit or None)]
    if args.json:
        _print_json([job_summary(result) for result in results])
    elif not results:
        print("the dead-letter queue is empty")
    else:
        _print_table(["ID", "ATTEMPTS", "FAILED", "NAME", "ERROR"],
                     [[r.job_id, str(r.attempts), _when(r.completed_at), r.name,
                       _shorten(f"{r.error_type}: {r.error}")] for r in results])
    return EXIT_OK


def cmd_watch(manager: JobManager, args: argparse.Namespace) -> int:
    result = _poll_or_fail(manager, args.id)
    tty = sys.stdout.isatty()
    shown = None
    while True:
        line = render_bar(result)
        if tty:
            print("\r" + line + "\x1b[K", end="", flush=True)
        elif line != shown:
            print(line, flush=True)
        shown = line
        if result.is_terminal:
            break
        with contextlib.suppress(TimeoutError):
            manager.wait(args.id, timeout=args.interval)  # returns early when the job ends
        result = _poll_or_fail(manager, args.id)
    if tty:
        print()
    if result.status is JobStatus.COMPLETED:
        return EXIT_OK
    detail = f": {result.error_type}: {result.error}" if result.error_type else ""
    raise CommandFailed(f"job {args.id} ended {result.status.value}{clean(detail)}")


# -- commands that change --------------------------------------------------------------------
def cmd_cancel(manager: JobManager, args: argparse.Namespace) -> int:
    _poll_or_fail(manager, args.id)
    if manager.cancel(args.id):
        if _poll_or_fail(manager, args.id).status is JobStatus.RUNNING:
            print(f"cancellation requested: job {args.id} is running and stops at its next progress report")
        else:
            print(f"cancelled {args.id}")
        return EXIT_OK
    status = _poll_or_fail(manager, args.id).status.value
    raise CommandFailed(f"job {args.id} is already {status};"
                        " only pending, scheduled or running jobs can be cancelled")


def cmd_retry(manager: JobManager, args: argparse.Namespace) -> int:
    _poll_or_fail(manager, args.id)
    if manager.retry(args.id):
        print(f"re-queued {args.id} (pending, attempts reset)")
        return EXIT_OK
    status = _poll_or_fail(manager, args.id).status.value
    raise CommandFailed(f"job {args.id} is {status}; only failed or cancelled jobs can be retried")


def cmd_cleanup(manager: JobManager, args: argparse.Namespace) -> int:
    deleted = manager.cleanup_old_results(args.retention_days)
    when = "" if args.retention_days == 0 else f" more than {args.retention_days:g} day(s) ago"
    print(f"deleted {deleted} job(s) that finished{when}")
    return EXIT_OK


# -- long-running commands --------------------------------------------------------------------
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


def _import_failure(module: str, exc: BaseException) -> CommandFailed:
    frames = [f for f in traceback.extract_tb(exc.__traceback__)[1:] if not f.filename.startswith("<")]
    location = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return CommandFailed(f"cannot import {module!r}: {type(exc).__name__}: {exc}{location}")


def install_default_manager(manager: JobManager) -> None:
    """Make `manager` what `jobcore.get_job_manager()` returns, before any module asks.

    So `register_job_function` in the worker's modules registers on the manager that runs
    with `--workers` threads, and the manager starts once everything is registered."""
    api.set_job_manager(manager)


def cmd_worker(args: argparse.Namespace) -> int:
    db = os.path.abspath(args.db)
    manager = open_manager(db, create=True, max_workers=args.workers, lease_timeout=args.lease_timeout,
                           poll_interval=args.poll_interval)
    os.environ["JOBCORE_DB"] = db  # before the imports: modules that build JobManager() share it
    install_default_manager(manager)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does; the console script does not
    for module in args.imports:
        try:
            importlib.import_module(module)
        except Exception as exc:
            manager.close()
            raise _import_failure(module, exc) from None
    with StopSignals() as signals:
        manager.start()
        print(f"jobcore worker {manager.worker_id}: {args.workers} thread(s) on {db},"
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
    from .dashboard.server import DashboardServer

    try:
        server = DashboardServer(manager, host=args.host, port=args.port, token=args.token)
    except OSError as exc:
        raise CommandFailed(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    with StopSignals() as signals:
        server.start()
        print(f"jobcore dashboard on {server.login_url} for {manager.repository.path} (Ctrl-C to stop)",
              flush=True)
        signals.wait()
    server.close()
    return EXIT_OK


# -- the parser --------------------------------------------------------------------------------
def _number(kind: Callable[[str], Any], minimum: float = 0, *, above: bool = False) -> Callable[[str], Any]:
    """An argparse type: a `kind` number >= `minimum` (> with `above`)."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if value < minimum or (above and value == minimum):
            raise argparse.ArgumentTypeError(f"must be {'>' if above else '>='} {minimum:g}, got {text}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


EPILOG = """\
exit status: 0 ok, 1 not found or failed, 2 usage error (130: watch interrupted).
Only `worker` creates a missing database; the other commands refuse a path that is not an
existing jobcore database, so a mistyped --db never shows an empty queue.
Run `jobcore COMMAND --help` for a command's options."""

WORKER_HELP = """\
Import MODULE(s) and run their jobs until SIGINT or SIGTERM, then stop gracefully:
take no new job, let running ones finish (up to --grace seconds), exit 0. A second
signal quits at once (exit 1); jobs it interrupts are taken back by another worker
when their lease expires.

The worker contract: before importing, the worker sets $JOBCORE_DB to --db and makes
its own manager (with --workers threads) the process-wide default, so a module only
has to register its functions at import time:

    import jobcore

    @jobcore.register_job_function("emails.send")
    def send(to, progress_callback=None): ...

The current directory is put on sys.path first, as `python -m` does."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `jobcore` (every command and option, with help)."""
    db_help = "the SQLite database (default: $JOBCORE_DB, else ./jobcore.db)"
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", metavar="PATH", default=argparse.SUPPRESS, help=db_help)
    parser = argparse.ArgumentParser(
        prog="jobcore",
        description="Inspect and manage a jobcore job database, run a worker or the dashboard.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", metavar="PATH", default=None, help=db_help)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log engine and server activity to stderr")
    parser.add_argument("--version", action="version", version=f"jobcore {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, handler: Callable[..., int], summary: str,
                description: Optional[str] = None) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=summary, description=description or summary,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.set_defaults(handler=handler)
        return sub

    def with_json(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument("--json", action="store_true", help="print JSON instead of text")
        return sub

    with_json(command("stats", cmd_stats, "job counts by status and the queue size"))
    sub = with_json(command("list", cmd_list, "list jobs, newest first"))
    sub.add_argument("--status", choices=STATUSES, help="only jobs with this status")
    sub.add_argument("--owner", help="only jobs of this owner")
    sub.add_argument("--tag", action="append", metavar="TAG",
                     help="only jobs carrying TAG (repeat: all of them)")
    sub.add_argument("--limit", type=_number(int), default=50, help="at most N jobs (default 50; 0: all)")
    sub.add_argument("--offset", type=_number(int), default=0, help="skip the newest N matching jobs")
    for name, handler, summary in [
        ("show", cmd_show, "a job's details; for a failed job its error type and traceback"),
        ("logs", cmd_logs, "a job's log lines, oldest first"),
    ]:
        with_json(command(name, handler, summary)).add_argument("id", metavar="ID", help="the job id")
    for name, handler, summary in [
        ("cancel", cmd_cancel, "cancel a pending, scheduled or running job"),
        ("retry", cmd_retry, "re-queue a failed or cancelled job"),
    ]:
        command(name, handler, summary).add_argument("id", metavar="ID", help="the job id")
    sub = with_json(command("dlq", cmd_dlq, "the dead-letter queue: failed jobs, newest first"))
    sub.add_argument("--limit", type=_number(int), default=0, help="at most N jobs (default 0: all)")
    sub.add_argument("--retry-all", action="store_true", help="re-queue every job in the dead-letter queue")
    sub = command("cleanup", cmd_cleanup, "delete finished jobs older than a retention period")
    sub.add_argument("--retention-days", type=_number(float), default=7.0, metavar="N",
                     help="delete completed, failed and cancelled jobs that finished more than N days ago"
                          " (default 7; 0 deletes every finished job)")
    sub = command("watch", cmd_watch, "a live progress bar until the job ends"
                  " (exit 0 if it completed, else 1)")
    sub.add_argument("id", metavar="ID", help="the job id")
    sub.add_argument("--interval", type=_number(float, above=True), default=0.5,
                     help="seconds between refreshes (default 0.5)")
    sub = command("worker", cmd_worker, "run the jobs of the functions that MODULE registers",
                  description=WORKER_HELP)
    sub.add_argument("--import", dest="imports", action="append", required=True, metavar="MODULE",
                     help="module to import (repeat for several)")
    sub.add_argument("--workers", type=_number(int, 1), default=os.environ.get("JOBCORE_WORKERS") or "4",
                     help="worker threads (default: $JOBCORE_WORKERS, else 4)")
    sub.add_argument("--lease-timeout", type=_number(float, above=True), default=60.0, metavar="SECONDS",
                     help="how long a running job's claim lasts without a heartbeat before another"
                          " worker may take it back (default 60)")
    sub.add_argument("--poll-interval", type=_number(float, above=True), default=1.0, metavar="SECONDS",
                     help="seconds between heartbeats, and between full looks for work (default 1)")
    sub.add_argument("--grace", type=_number(float), default=None, metavar="SECONDS",
                     help="on stop, wait at most this long for running jobs (default: until they finish)")
    sub = command("dashboard", cmd_dashboard, "serve the web dashboard (live jobs, stats, cancel, retry)",
                  description="Serve the web dashboard and its JSON API (see docs/dashboard.md).\n"
                              "Bound to 127.0.0.1 by default. Bound elsewhere, every request needs the"
                              " access token;\nwithout --token a random one is made and printed in the URL.")
    sub.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    sub.add_argument("--port", type=_number(int), default=8080, help="port (default 8080; 0: any free port)")
    sub.add_argument("--token", default=None,
                     help="require this access token (?token=... or 'Authorization: Bearer')")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.db = args.db or default_database_path()
    try:
        if args.command == "worker":
            return cmd_worker(args)
        manager = open_manager(args.db)
        try:
            return int(args.handler(manager, args))
        finally:
            manager.close()
    except BrokenPipeError:  # `jobcore list | head`: stop quietly
        sys.stdout = open(os.devnull, "w")
        return EXIT_OK
    except (JobcoreError, OSError) as exc:
        print(f"jobcore: error: {clean(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
