"""The `jobcore` command line: its parser and `main`; the commands themselves live in the modules beside it.

Every command but `worker` talks to the database through a producer `JobManager` that is
never started, so it runs nothing. Exit codes: 0 ok, 1 not found or failed, 2 usage.
Errors are one line on stderr (`jobcore: error: ...`), never a traceback. Output never
fails for want of an encoding: text that stdout or stderr cannot encode is shown escaped.

`commands` holds the commands that read and change jobs, `processes` the long-running
`worker` and `dashboard`, `render` the terminal formatting they share.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import logging
import math
import os
import sys
from typing import Any, Callable, Optional, Sequence, Union

from .. import __version__
from ..dashboard.checks import MAX_PORT, MAX_WHOLE, check_token
from ..errors import JobcoreError
from ..manager import LONGEST_PERIOD, default_database_path
from ..models import JobStatus
from .commands import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, CommandFailed, check_database,
                       cmd_cancel, cmd_cleanup, cmd_dlq, cmd_list, cmd_logs, cmd_retry, cmd_show, cmd_stats,
                       cmd_watch, open_manager)
from .processes import StopSignals, cmd_dashboard, cmd_worker, install_default_manager
from .render import clean, render_bar

__all__ = [
    "main", "build_parser", "CommandFailed", "check_database", "open_manager", "clean", "render_bar",
    "StopSignals", "install_default_manager", "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_INTERRUPTED",
]

STATUSES = [status.value for status in JobStatus]


# -- the parser --------------------------------------------------------------------------------
def _number(kind: Callable[[str], Any], minimum: float = 0, maximum: Optional[float] = None, *,
            above: bool = False) -> Callable[[str], Any]:
    """An argparse type: a `kind` number >= `minimum` (> with `above`), and <= `maximum` if given."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if value < minimum or (above and value == minimum):
            raise argparse.ArgumentTypeError(f"must be {'>' if above else '>='} {minimum:g}, got {text}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum}, got {text}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


COUNT = _number(int, 0, MAX_WHOLE)  # a --limit or --offset: the database's integers end at 2**63 - 1
PORT = _number(int, 0, MAX_PORT)
PERIOD = _number(float, above=True, maximum=int(LONGEST_PERIOD))  # as JobManager takes (why: LONGEST_PERIOD)
WORKERS = _number(int, 1, 10_000)  # (10**20 ran the machine out of pids before it could fail)


def _token(text: str) -> str:
    """An argparse type: an access token (not empty, printable ASCII without spaces)."""
    try:
        return check_token(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
        sub.set_defaults(handler=handler, usage_error=sub.error)  # usage_error: for what `main` checks
        return sub

    def with_json(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument("--json", action="store_true", help="print JSON instead of text")
        return sub

    with_json(command("stats", cmd_stats, "job counts by status and the queue size"))
    sub = with_json(command("list", cmd_list, "list jobs, newest first"))
    sub.add_argument("--status", type=str.lower, choices=STATUSES,
                     help="only jobs with this status (in any case)")
    sub.add_argument("--owner", help="only jobs of this owner")
    sub.add_argument("--tag", action="append", metavar="TAG",
                     help="only jobs carrying TAG (repeat: all of them)")
    sub.add_argument("--limit", type=COUNT, default=50, help="at most N jobs (default 50; 0: all)")
    sub.add_argument("--offset", type=COUNT, default=0, help="skip the newest N matching jobs")
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
    sub = with_json(command("dlq", cmd_dlq, "the dead-letter queue: failed jobs, the most recently failed first"))
    sub.add_argument("--limit", type=COUNT, default=0, help="at most N jobs (default 0: all)")
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
    # default None: $JOBCORE_WORKERS is read in `main`, so a bad one is named, not "--workers"
    sub.add_argument("--workers", type=WORKERS, default=None,
                     help="worker threads (default: $JOBCORE_WORKERS, else 4; at most 10000)")
    sub.add_argument("--lease-timeout", type=PERIOD, default=60.0, metavar="SECONDS",
                     help="how long a running job's claim lasts without a heartbeat before another"
                          " worker may take it back (default 60; at most 3155760000, 100 years)")
    sub.add_argument("--poll-interval", type=PERIOD, default=1.0, metavar="SECONDS",
                     help="seconds between heartbeats, and between full looks for work (default 1;"
                          " at most 100 years)")
    sub.add_argument("--discovery-interval", type=PERIOD, default=0.05, metavar="SECONDS",
                     help="seconds between looks for jobs other processes stored (default 0.05; SQLite:"
                          " a job another process enqueues waits about half of it, PostgreSQL hears of"
                          " it at once)")
    sub.add_argument("--grace", type=_number(float), default=None, metavar="SECONDS",
                     help="on stop, wait at most this long for running jobs (default: until they finish)")
    sub = command("dashboard", cmd_dashboard, "serve the web dashboard (live jobs, stats, cancel, retry)",
                  description="Serve the web dashboard and its JSON API (see docs/dashboard.md).\n"
                              "Bound to 127.0.0.1 by default. Bound elsewhere, every request needs the"
                              " access token;\nwithout --token a random one is made and printed in the URL.")
    sub.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    sub.add_argument("--port", type=PORT, default=8080, help="port, 0 to 65535 (default 8080; 0: any free port)")
    sub.add_argument("--token", type=_token, default=None,
                     help="require this access token (?token=... or 'Authorization: Bearer');"
                          " printable ASCII, no spaces")
    return parser


def _escape_unencodable(exc: UnicodeError) -> tuple[Union[str, bytes], int]:
    """An encoding error handler: what surrogateescape restores (the bytes of a non-UTF-8
    path, as Python's own handler for the standard streams does), else backslash escapes."""
    try:
        return _SURROGATEESCAPE(exc)
    except UnicodeError:  # not only escaped bytes: shown as escapes
        return codecs.backslashreplace_errors(exc)


_SURROGATEESCAPE = codecs.lookup_error("surrogateescape")


codecs.register_error("jobcore.escape", _escape_unencodable)


def _never_fail_to_encode() -> None:
    """Make stdout and stderr show text their encoding lacks escaped (`\u6708`) instead of
    raising UnicodeEncodeError halfway through the output: a job named in Japanese listed
    to a cp1252 file (a Windows redirect), an ASCII or Latin-1 locale. A stream whose
    handler never fails (replace, backslashreplace...) is left as its user set it."""
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) in ("strict", "surrogateescape") and hasattr(stream, "reconfigure"):
            with contextlib.suppress(ValueError, OSError):  # a closed or detached stream: left alone
                stream.reconfigure(errors="jobcore.escape")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status."""
    _never_fail_to_encode()  # first: argparse's messages may quote an argument
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.db = args.db or default_database_path()
    if args.command == "worker" and args.workers is None:
        try:
            args.workers = WORKERS(os.environ.get("JOBCORE_WORKERS") or "4")
        except argparse.ArgumentTypeError as exc:
            args.usage_error(f"$JOBCORE_WORKERS: {exc}")  # exits 2 with the usage, as argparse does
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
