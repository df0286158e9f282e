"""Rows of jobcore's SQLite tables: encoding records to parameters, decoding rows back,
and translating driver errors. No connections and no SQL execution here.
"""

from __future__ import annotations

import json
import os
import sqlite3
from typing import Any, Optional, Sequence

from .. import serialization
from ..errors import RepositoryError
from ..models import JobStatus
from .base import JobRecord, QueueEntry
from .columns import unpack_job_row
from .sqlite_schema import CLAIMED_PLAIN



def translate(exc: sqlite3.Error, path: str) -> RepositoryError:
    """A `RepositoryError` saying in words what went wrong with the file at `path`."""
    text = str(exc)
    if "locked" in text or "busy" in text:
        problem = "the database stayed locked past the busy timeout"
    elif "readonly" in text or "read-only" in text:
        problem = "the database is read-only"
    elif "disk" in text and "full" in text:
        problem = "the disk is full"
    elif "not a database" in text or "malformed" in text:
        problem = "the file is not a jobcore database (or is corrupt)"
    elif "unable to open" in text:
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            problem = f"cannot create the file: its directory {folder!r} does not exist"
        else:
            problem = "cannot open or create the file (check its permissions and its directory's)"
    else:
        problem = text
    return RepositoryError(f"SQLite at {path!r}: {problem} ({text})")


def is_plain(record: JobRecord) -> bool:
    """True if every optional field of `record` holds its default (see INSERT_PLAIN_JOB)."""
    return (record.scheduled_at is None and record.run_at is None and not record.tags
            and not record.metadata and record.owner is None and record.unique_key is None
            and not record.depends_on and record.cron is None and record.cron_timezone is None
            and record.memory_limit is None)


# Each status's text by a dict lookup: `.value` on an Enum member runs two Python calls.
_STATUS_TEXT = {status: status.value for status in JobStatus}


def plain_params(record: JobRecord, now: float, status: JobStatus,
                 max_payload_bytes: Optional[int]) -> tuple[Any, ...]:
    """The INSERT_PLAIN_JOB parameters storing `record`, whose optional fields hold their
    defaults (raises TypeError/ValueError naming a field)."""
    payload = serialization.encode_payload(record.args, record.kwargs, max_payload_bytes)
    return (record.id, record.function_name, record.name, payload, record.priority, _STATUS_TEXT[status], now,
            record.max_retries, record.retry_delay, record.retry_backoff, int(record.retry_jitter),
            record.timeout, record.isolation)


def row_params(record: JobRecord, now: float, status: JobStatus, blocked: int, error: Optional[str],
               max_payload_bytes: Optional[int]) -> tuple[Any, ...]:
    """The INSERT_JOB parameters storing `record` (raises TypeError/ValueError naming a field)."""
    return plain_params(record, now, status, max_payload_bytes) + (
        blocked, record.scheduled_at, record.run_at,
        json.dumps(sorted(record.tags)) if record.tags else "[]",
        serialization.encode(record.metadata, field="metadata") if record.metadata else "{}",
        record.owner, record.unique_key,
        json.dumps(list(record.depends_on)) if record.depends_on else "[]",
        record.cron, record.cron_timezone, error,
        "DependencyFailed" if error else None, now if error else None, record.memory_limit,
    )


def record_from_row(row: Sequence[Any]) -> JobRecord:
    """A `JobRecord` from a row of `COLUMNS`; an undecodable row gets `decode_error`."""
    record, raw = unpack_job_row(row)
    try:
        if raw.payload is not None:  # None: selected without the arguments
            record.args, record.kwargs = serialization.decode_payload(raw.payload)
        # Most jobs carry none of these: skip the decoder for the empty forms.
        record.tags = frozenset(json.loads(raw.tags)) if raw.tags != "[]" else frozenset()
        record.metadata = json.loads(raw.metadata) if raw.metadata != "{}" else {}
        record.depends_on = tuple(json.loads(raw.depends_on)) if raw.depends_on != "[]" else ()
        record.progress_details = json.loads(raw.progress_details) if raw.progress_details != "{}" else {}
        record.result = serialization.decode(raw.result)
    except (ValueError, TypeError) as exc:
        record.decode_error = f"stored job {record.id} cannot be decoded: {exc}"
    return record


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
    the columns that differ between plain jobs. An undecodable payload gets `decode_error`."""
    (job_id, function_name, name, payload, priority, seq, created_at, attempts, max_retries,
     retry_delay, retry_backoff, jitter, timeout, isolation, _) = row
    # Every field by position, in RECORD_FIELDS (checked at import).
    record = JobRecord(
        job_id, function_name, name, (), {}, priority, _RUNNING, seq, created_at, None, None,
        started_at, None, attempts, max_retries, retry_delay, retry_backoff, bool(jitter),
        timeout, frozenset(), {}, None, None, isolation, None, (), 0, 0.0, "", {}, None, None,
        None, None, worker_id, lease_expires_at, False, None, None, None)
    try:
        record.args, record.kwargs = serialization.decode_payload(payload)
    except (ValueError, TypeError) as exc:
        record.decode_error = f"stored job {job_id} cannot be decoded: {exc}"
    return record


_RUNNING = JobStatus.RUNNING


def entry_from_row(row: Sequence[Any]) -> QueueEntry:
    """A `QueueEntry` from (id, priority, seq, run_at, function_name, is_schedule)."""
    return QueueEntry(row[0], row[1], row[2], row[3], row[4], bool(row[5]))
