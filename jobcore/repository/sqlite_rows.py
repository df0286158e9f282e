"""Rows of jobcore's SQLite tables: encoding records to parameters, decoding rows back
(text that is not UTF-8 too), and translating driver errors. No connections and no SQL
execution here.
"""

from __future__ import annotations

import errno
import json
import os
import reprlib
import sqlite3
from typing import Any, Optional, Sequence

from .. import serialization
from ..errors import RepositoryError
from ..models import TIME_LIMIT, JobStatus
from .base import JobRecord, QueueEntry
from .values import NO_TAGS
from .columns import (DEFAULT_PRIORITY, JOB_COLUMNS, REAL_TYPES, json_object, json_strings, text_of_id,
                      unpack_job_row, unsound_numbers, usable_time)
from .sqlite_transition_sql import CLAIMED_NAMES, CLAIMED_PLAIN, DEFAULT_SETTINGS


# -- text that is not UTF-8 ------------------------------------------------------------------
# SQLite keeps whatever bytes a TEXT value is given (another tool, a hand edit, corruption),
# and sqlite3's default text_factory (str) raises OperationalError on a value that is not
# UTF-8, failing the whole statement: one such row stopped every claim of a worker (its
# group-commit transaction rolled back, retried for ever) and every listing. A Python
# text_factory on every connection would cost about 0.2 us a text value read (measured), so
# a connection reads text strictly until it meets such a value, then tolerantly
# (`tolerant_text`, see sqlite_conn.Connections), and the statement runs again.
NOT_UTF8 = "Could not decode to UTF-8"  # how sqlite3's OperationalError for one begins


class UndecodableText(str):
    """Stored text whose bytes are not UTF-8, as a tolerant connection reads it: each byte
    that is not UTF-8 shows as U+FFFD. Its type tells it from text stored as jobcore
    stores it: a job row holding one fails alone, as corrupt (`decode_error`)."""

    __slots__ = ()


# Whether this process ever read an `UndecodableText`: until it has, the row decoders do not
# look for one (a check of every column of every row read, for a value most stores never hold).
undecodable_read = False


def tolerant_text(data: bytes) -> str:
    """The text_factory of a connection that met text that is not UTF-8: `data` decoded,
    or if it is not UTF-8 an `UndecodableText`."""
    try:
        return data.decode()
    except UnicodeDecodeError:
        global undecodable_read
        undecodable_read = True
        return UndecodableText(data.decode("utf-8", "replace"))


class TextNotUtf8(RepositoryError):
    """A statement read stored text that is not UTF-8 on a connection that read text
    strictly (sqlite3's default). The connection reads it tolerantly from then on
    (`tolerant_text`): what failed succeeds if run again, as sqlite_conn's `reading` and
    `transaction` run it."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(f"SQLite at {path!r} holds text that is not UTF-8 ({detail})")


def is_not_utf8(exc: BaseException) -> bool:
    """True if `exc` is sqlite3's error for reading, strictly, text that is not UTF-8."""
    return isinstance(exc, sqlite3.OperationalError) and str(exc).startswith(NOT_UTF8)


# The columns of a job row, None for those whose text that is not UTF-8 is told of by
# `unpack_job_row`: the id (by columns.unsound_numbers: no text of jobcore's) and the
# status (by columns.unknown_status: none jobcore writes).
_JOB_COLUMN_NAMES = tuple(None if name in ("id", "status") else name
                          for name in (name.strip() for name in JOB_COLUMNS.split(",")))


def _undecodable_error(record: JobRecord, row: Sequence[Any], names: Sequence[Optional[str]]) -> Optional[str]:
    """`record`'s `decode_error` (None if it has none) with the columns of `row` (named by
    `names`) that held text that is not UTF-8 added: its arguments, tags, metadata or result
    would otherwise be decoded from the text as read, U+FFFD for each bad byte."""
    wrong = [f"{name} holds text that is not UTF-8 ({reprlib.repr(str(value))})"
             for name, value in zip(names, row) if type(value) is UndecodableText and name is not None]
    if not wrong:
        return record.decode_error
    told = "; ".join(wrong)
    if record.decode_error is None:
        return f"stored job {record.id} cannot be decoded: {told}"
    return f"{record.decode_error}; {told}"



READ_ONLY = "the database is read-only"  # how `translate`'s words for a file it may not write begin

# SQLite opens a WAL database only with its -shm file, which it cannot create in a directory
# it may not write (a read-only mount, permissions).
_READ_ONLY_DIRECTORY = (f"{READ_ONLY}, and so is its directory, which holds no -wal and -shm files that SQLite"
                        " could use: give write access to the directory")


def translate(exc: sqlite3.Error, path: str) -> RepositoryError:
    """A `RepositoryError` saying in words what went wrong with the file at `path`."""
    text = str(exc)
    name = getattr(exc, "sqlite_errorname", "")  # Python 3.11+: SQLITE_FULL, SQLITE_IOERR_SHMSIZE...
    folder = os.path.dirname(os.path.abspath(path))
    if "locked" in text or "busy" in text:
        problem = "the database stayed locked past the busy timeout"
    elif "readonly" in text or "read-only" in text:
        # SQLite (3.40 here) names the directory's fault SQLITE_READONLY_DIRECTORY, in the
        # words of any read-only database ("attempt to write a readonly database"), even
        # when the file itself may be written. Without an error name (Python 3.10), the
        # directory and the -shm file tell.
        if name == "SQLITE_READONLY_DIRECTORY" or (
                not name and not os.access(folder, os.W_OK) and not os.path.exists(f"{path}-shm")):
            problem = _READ_ONLY_DIRECTORY
        else:
            problem = READ_ONLY
    elif name in ("SQLITE_FULL", "SQLITE_IOERR_SHMSIZE") or ("disk" in text and "full" in text) or (
            # SQLITE_IOERR_SHMSIZE: the -shm file could not grow (opening, reading); a full
            # disk met while writing may read as "disk I/O error" too. Without an error
            # name (Python 3.10), the disk's free space tells.
            (name.startswith("SQLITE_IOERR") or "disk I/O error" in text) and _no_space_left(folder)):
        problem = "the disk is full"
    elif "not a database" in text or "malformed" in text:
        problem = "the file is not a jobcore database (or is corrupt)"
    elif "unable to open" in text:
        if os.path.isdir(path):
            problem = "it is a directory, not a database file"
        elif not os.path.isdir(folder):
            problem = f"cannot create the file: its directory {folder!r} does not exist"
        elif os.path.exists(path) and not os.access(folder, os.W_OK):
            problem = _READ_ONLY_DIRECTORY  # in the words some SQLite builds give it
        elif _out_of_descriptors():
            # (Each thread that uses the store holds a connection: threads of attempts
            # given up at their timeout, stuck for ever, each kept one.)
            problem = ("this process has as many files open as it may (EMFILE): raise its limit"
                       " (ulimit -n), or use fewer threads")
        else:
            problem = "cannot open or create the file (check its permissions and its directory's)"
    else:
        problem = text
    return RepositoryError(f"SQLite at {path!r}: {problem} ({text})")


def _out_of_descriptors() -> bool:
    """True if this process cannot open one more file (EMFILE): SQLite says "unable to
    open database file" then, in the words of a file that cannot be opened."""
    try:
        os.close(os.open(os.devnull, os.O_RDONLY))
    except OSError as exc:
        return exc.errno in (errno.EMFILE, errno.ENFILE)
    return False


def _no_space_left(folder: str) -> bool:
    try:
        return os.statvfs(folder).f_bavail == 0
    except (AttributeError, OSError):  # no statvfs (Windows), or no such folder
        return False


def is_plain(record: JobRecord) -> bool:
    """True if every optional field of `record` holds its default (see INSERT_PLAIN_JOB)."""
    return (record.scheduled_at is None and record.run_at is None and not record.tags
            and not record.metadata and record.owner is None and record.unique_key is None
            and not record.depends_on and record.cron is None and record.cron_timezone is None
            and record.memory_limit is None)


# Each status's text by a dict lookup: `.value` on an Enum member runs two Python calls.
_STATUS_TEXT = {status: status.value for status in JobStatus}


def default_params(record: JobRecord, now: float, status: JobStatus,
                   max_payload_bytes: Optional[int]) -> tuple[Any, ...]:
    """The INSERT_DEFAULT_JOB parameters storing `record`, whose optional fields and
    settings hold their defaults (`is_plain`, `has_default_settings`; raises
    TypeError/ValueError naming a field)."""
    payload = serialization.encode_payload(record.args, record.kwargs, max_payload_bytes)
    return (record.id, record.function_name, record.name, payload, record.priority, _STATUS_TEXT[status], now)


def plain_params(record: JobRecord, now: float, status: JobStatus,
                 max_payload_bytes: Optional[int]) -> tuple[Any, ...]:
    """The INSERT_PLAIN_JOB parameters storing `record`, whose optional fields hold their
    defaults: `default_params`, then its settings."""
    return default_params(record, now, status, max_payload_bytes) + (
        record.max_retries, record.retry_delay, record.retry_backoff, int(record.retry_jitter),
        record.timeout, record.isolation)


def has_default_settings(record: JobRecord) -> bool:
    """True if `record`'s retry settings, timeout and isolation are those INSERT_DEFAULT_JOB
    writes (`DEFAULT_SETTINGS`): then `default_params` store it."""
    return (record.max_retries, record.retry_delay, record.retry_backoff, record.retry_jitter, record.timeout,
            record.isolation) == DEFAULT_SETTINGS


def depends_on_text(record: JobRecord) -> str:
    """`record`'s dependencies as the JSON its row (or job_dep_lists) stores."""
    return json.dumps(list(record.depends_on)) if record.depends_on else "[]"


def row_params(record: JobRecord, now: float, status: JobStatus, blocked: int, error: Optional[str],
               max_payload_bytes: Optional[int], depends_on: Optional[str] = None) -> tuple[Any, ...]:
    """The INSERT_JOB parameters storing `record` (raises TypeError/ValueError naming a
    field), its depends_on column holding `depends_on` if given."""
    return plain_params(record, now, status, max_payload_bytes) + (
        blocked, record.scheduled_at, record.run_at,
        json.dumps(sorted(record.tags)) if record.tags else "[]",
        serialization.encode(record.metadata, field="metadata", max_bytes=max_payload_bytes) if record.metadata else "{}",
        record.owner, record.unique_key,
        depends_on_text(record) if depends_on is None else depends_on,
        record.cron, record.cron_timezone, error,
        "DependencyFailed" if error else None, now if error else None, record.memory_limit,
    )


def record_from_row(row: Sequence[Any]) -> JobRecord:
    """A `JobRecord` from a row of `COLUMNS`; an undecodable row gets `decode_error` (a
    number of the wrong kind, JSON that does not parse or is not of its field's shape,
    text that is not UTF-8)."""
    record, raw = unpack_job_row(row)
    if undecodable_read:  # the row may hold text that is not UTF-8 (see tolerant_text)
        record.decode_error = _undecodable_error(record, row, _JOB_COLUMN_NAMES)
    try:
        if raw.payload is not None:  # None: selected without the arguments
            record.args, record.kwargs = serialization.decode_payload(raw.payload)
        _decode_lists(record, raw.tags, raw.metadata, raw.depends_on)
        if raw.progress_details != "{}":
            record.progress_details = json_object(serialization.loads(raw.progress_details, "progress_details"), "progress_details")
        record.result = serialization.decode(raw.result)
    except (ValueError, TypeError, RecursionError) as exc:  # (nested deeper than this stack decodes)
        if record.decode_error is None:  # else a number was wrong first: that one is told
            record.decode_error = f"stored job {record.id} cannot be decoded: {exc}"
    return record


def _decode_lists(record: JobRecord, tags: Any, metadata: Any, depends_on: Any) -> None:
    """Set `record`'s tags, metadata and dependencies from their columns' JSON (raises
    ValueError or TypeError naming the column for one not of its shape)."""
    # Most jobs carry none of these: skip the decoder for the empty forms.
    if tags != "[]":
        record.tags = frozenset(json_strings(serialization.loads(tags, "tags"), "tags"))
    if metadata != "{}":
        record.metadata = json_object(serialization.loads(metadata, "metadata"), "metadata")
    if depends_on != "[]":
        record.depends_on = tuple(json_strings(serialization.loads(depends_on, "depends_on"), "depends_on"))


def claimed_records(rows: Sequence[Sequence[Any]], full: dict[str, Sequence[Any]], started_at: float,
                    worker_id: str, lease_expires_at: float) -> list[JobRecord]:
    """The records of claimed jobs, in the order of `rows` (rows of `CLAIMED_COLUMNS`,
    from a claim given `started_at`, `worker_id` and `lease_expires_at`). A row whose last
    column says the job is not plain is taken from `full`, its whole row by id."""
    return [_plain_claimed(row, started_at, worker_id, lease_expires_at) if row[CLAIMED_PLAIN]
            else record_from_row(full[row[0]]) for row in rows]


def _plain_claimed(row: Sequence[Any], started_at: float, worker_id: str,
                   lease_expires_at: float) -> JobRecord:
    """The record of a plain job just claimed: `record_from_row` of its whole row, from
    the columns that differ between plain jobs. An undecodable payload, tags, metadata or
    list of dependencies, a number of the wrong kind, or text that is not UTF-8, gets
    `decode_error`."""
    (job_id, function_name, name, payload, priority, seq, created_at, scheduled_at, run_at, attempts,
     max_retries, retry_delay, retry_backoff, jitter, timeout, tags, metadata, owner, unique_key, isolation,
     depends_on, error, error_type, traceback, _) = row
    # Every field by position, in RECORD_FIELDS (checked at import).
    record = JobRecord(
        job_id, function_name, name, (), {}, priority, _RUNNING, seq, created_at, scheduled_at, run_at,
        started_at, None, attempts, max_retries, retry_delay, retry_backoff, bool(jitter),
        timeout, NO_TAGS, {}, owner, unique_key, isolation, None, (), 0, 0.0, "", {}, None, error,
        error_type, traceback, worker_id, lease_expires_at, False, None, None, None)
    # `unsound_numbers` of the numbers a plain row holds, checked here in locals (cheaper).
    if not (type(priority) is int and type(attempts) is int and type(max_retries) is int
            and type(retry_delay) in REAL_TYPES and type(retry_backoff) in REAL_TYPES
            and (timeout is None or (type(timeout) in REAL_TYPES and timeout > 0))
            and type(created_at) in REAL_TYPES and -TIME_LIMIT < created_at < TIME_LIMIT
            and (scheduled_at is None
                 or (type(scheduled_at) in REAL_TYPES and -TIME_LIMIT < scheduled_at < TIME_LIMIT))
            and (run_at is None or (type(run_at) in REAL_TYPES and -TIME_LIMIT < run_at < TIME_LIMIT))):
        record.decode_error = unsound_numbers(record)
    if undecodable_read:  # the row may hold text that is not UTF-8 (see tolerant_text)
        record.id = text_of_id(job_id)  # of type str (an UndecodableText is told of below)
        record.decode_error = _undecodable_error(record, row, CLAIMED_NAMES)
    try:  # in `record_from_row`'s order: the first that fails is told
        record.args, record.kwargs = serialization.decode_payload(payload)
        _decode_lists(record, tags, metadata, depends_on)
    except (ValueError, TypeError, RecursionError) as exc:  # (nested deeper than this stack decodes)
        if record.decode_error is None:
            record.decode_error = f"stored job {job_id} cannot be decoded: {exc}"
    return record


_RUNNING = JobStatus.RUNNING


def entry_from_row(row: Sequence[Any]) -> QueueEntry:
    """A `QueueEntry` from (id, priority, seq, run_at, function_name, is_schedule).

    A corrupt row's priority that is not a number, or due time that is no usable time
    (text, infinity: the ready heap and the timers cannot order it, and `-'abc'` failed a
    manager's start), reads as the default priority, or as due now. Claiming the job reads
    its row, whose decode error fails it as corrupt (the claims take a scheduled job whose
    due time is unusable as due: see sqlite_transition_sql._DUE)."""
    priority, run_at = row[1], row[3]
    if type(priority) is not int or not (run_at is None or (type(run_at) in REAL_TYPES
                                                             and -TIME_LIMIT < run_at < TIME_LIMIT)):
        priority = priority if type(priority) is int else DEFAULT_PRIORITY
        run_at = usable_time(run_at)
    return QueueEntry(row[0], priority, row[2], run_at, row[4], bool(row[5]))


def queue_entries(rows: Sequence[Sequence[Any]], unaddressable: set[int]) -> list[QueueEntry]:
    """`entry_from_row` of each row whose id is text; the seqs of the others (bytes: a hand
    edit, another tool) go into `unaddressable`, for recovery to fail them as corrupt. An
    id that is not text never enters a queue: the claims' JSON of ids failed on it, and
    with it every exchange of the manager (its outcomes were never recorded)."""
    entries = [entry_from_row(row) for row in rows if type(row[0]) is str]
    if len(entries) != len(rows):
        unaddressable.update(row[2] for row in rows if type(row[0]) is not str)
    return entries
