"""The commands that read and change a job database, and how they open it; none runs a job or a server.

Each command takes a producer `JobManager` (never started, so it runs nothing) and the
parsed arguments, prints its answer and returns an exit status; a failure is raised as
`CommandFailed` for `main` to print as one line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

from ..dashboard.views import job_detail, job_summary, log_entries, retry_all_report
from ..dead_letters import retry_all
from ..errors import JobcoreError, JobNotFound
from ..manager import RETRY_RULES, JobManager
from ..models import JobResult, JobStatus
from ..repository.factory import POSTGRES_SCHEMES, build_repository
from ..repository.sqlite import SQLiteRepository
from ..repository.sqlite_rows import translate
from .render import _percent, _print_json, _print_table, _priority, _shorten, _when, clean, render_bar

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


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
    except sqlite3.OperationalError as exc:  # read-only directory, full disk, locked...: in words
        raise CommandFailed(str(translate(exc, path))) from None
    except sqlite3.DatabaseError as exc:
        raise CommandFailed(f"{path!r} is not a jobcore database ({exc})") from None
    if "jobcore_meta" not in tables and (tables or not create):
        raise CommandFailed(f"{path!r} is an SQLite database but not a jobcore one (no jobcore tables)")


def open_manager(path: str, *, create: bool = False, **options: Any) -> JobManager:
    """A producer manager on the database at `path` — an SQLite file, checked first (see
    `check_database`), or a `postgresql://` DSN; `options` go to `JobManager`."""
    if path.startswith(POSTGRES_SCHEMES):
        try:
            return JobManager(build_repository(path), producer=True, **options)
        except (ImportError, JobcoreError, ValueError) as exc:  # ValueError: a malformed DSN
            raise CommandFailed(str(exc)) from None
    check_database(path, create=create)
    return JobManager(SQLiteRepository(path), producer=True, **options)


# -- commands that read ------------------------------------------------------------------------
def _poll_or_fail(manager: JobManager, job_id: str) -> JobResult:
    result = manager.poll(job_id)
    if result is None:
        raise CommandFailed(str(JobNotFound(job_id)))
    return result


def cmd_stats(manager: JobManager, args: argparse.Namespace) -> int:
    stats: dict[str, int] = dict(manager.get_stats())
    # From the same read (as the dashboard's): a second read, beside a worker, gave a queue
    # size that was not these counts' pending + scheduled.
    stats.update(queue_size=stats["pending"] + stats["scheduled"], workers=len(manager.list_workers()))
    if args.json:
        _print_json(stats)
    else:
        for key, value in stats.items():
            print(f"{key.replace('_', ' '):<12}{value:>8}")
    return EXIT_OK


def cmd_list(manager: JobManager, args: argparse.Namespace) -> int:
    results = manager.list_job_summaries(status=args.status, tags=args.tag or None, owner=args.owner,
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
        ("details", json.dumps(result.progress_details) if result.progress_details else None),  # of the progress
        ("attempts", f"{result.attempts} (max retries {result.max_retries})"),
        ("priority", _priority(result.priority)),
        ("owner", result.owner), ("tags", ", ".join(sorted(result.tags)) or None),
        ("created", result.created_at and _when(result.created_at)),
        ("scheduled", result.scheduled_at and _when(result.scheduled_at)),
        ("started", result.started_at and _when(result.started_at)),
        ("completed", result.completed_at and _when(result.completed_at)),
        ("worker", result.worker_id), ("depends on", ", ".join(result.depends_on) or None),
        ("cron", result.cron and f"{result.cron} (a schedule: each fire enqueues a run)"),
        ("metadata", json.dumps(result.metadata) if result.metadata else None),
        ("result", None if result.result is None else json.dumps(result.result, default=str)),
        ("error type", result.error_type), ("error", result.error),
    ]
    for label, value in fields:
        if value is not None:
            print(f"{label + ':':<12}{clean(value)}")
    if result.traceback:
        print("traceback:")
        print(clean(result.traceback, multiline=True).rstrip("\n"))  # (a BLOB a hand edit left: bytes)
    return EXIT_OK


def cmd_logs(manager: JobManager, args: argparse.Namespace) -> int:
    _poll_or_fail(manager, args.id)
    entries = manager.get_logs(args.id)
    if args.json:
        _print_json(log_entries(entries))
        return EXIT_OK
    for entry in entries:
        # One entry, one line: a newline in a message is shown escaped (raw, it printed a
        # second line that read as another entry, written by the job).
        print(f"{_when(entry.timestamp)}  {entry.level.upper():<8} {clean(entry.message)}")
    return EXIT_OK


def _retry_all(manager: JobManager, args: argparse.Namespace) -> int:
    """Re-queue the dead-letter queue, naming each job not re-queued and why; exit 1 if
    any is left in it."""
    report = retry_all(manager, args.limit or None)
    if args.json:  # the dashboard's answer to POST /api/dlq/retry
        _print_json(retry_all_report(report))
    else:
        print(f"re-queued {len(report.retried)} failed job(s)")
        for entry in report.skipped:
            name = f" ({clean(entry.name)})" if entry.name else ""
            print(f"not re-queued: {entry.job_id}{name}: {clean(entry.reason)}")
    if report.left:
        raise CommandFailed(f"{report.left} failed job(s) could not be re-queued and stay in the dead-letter queue")
    return EXIT_OK


def cmd_dlq(manager: JobManager, args: argparse.Namespace) -> int:
    if args.retry_all:
        return _retry_all(manager, args)
    results = manager.list_dead_letters(args.limit or None)  # by failure time; no arguments read
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
    before = _poll_or_fail(manager, args.id).status
    if manager.cancel(args.id):
        # (Running before or after: a running job's cancel is a request, even if it has
        # stopped by now; one in this process stops within moments, and read only after,
        # it was told as "cancelled" at once.)
        if JobStatus.RUNNING in (before, _poll_or_fail(manager, args.id).status):
            record = manager.repository.get_without_args(args.id)
            how = ("its process is ended within a second or so" if record is not None and record.isolation == "process"
                   else "it stops at its next progress report (a coroutine job, at its next await)")
            print(f"cancellation requested: job {args.id} is running; {how}")
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
    raise CommandFailed(f"job {args.id} ({status}) was not re-queued: {RETRY_RULES}")


def cmd_cleanup(manager: JobManager, args: argparse.Namespace) -> int:
    deleted = manager.cleanup_old_results(args.retention_days)
    when = "" if args.retention_days == 0 else f" more than {args.retention_days:g} day(s) ago"
    print(f"deleted {deleted} job(s) that finished{when}")
    return EXIT_OK
