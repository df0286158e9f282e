"""Converting between `JobRecord` and rows of jobcore's PostgreSQL `jobs` table.

Pure functions: no connections, no SQL beyond the column order `repository.columns.JOB_COLUMNS` fixes.
Arguments, metadata, progress details and results are JSON text (as on SQLite, so a
corrupt row fails its own job with a clear error instead of failing the query); tags and
dependencies are `TEXT[]`.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from .. import serialization
from ..errors import InvalidJob
from ..models import TIME_LIMIT, JobStatus
from ..repository.base import JobRecord, QueueEntry
from ..repository.columns import STATUSES, json_object, unpack_job_row



def clean_text(value: Optional[str]) -> Optional[str]:
    """Free text from a job (errors, logs, progress) made storable: PostgreSQL text holds
    neither NUL characters nor lone surrogates, and recording an outcome must not fail
    on either. NUL becomes the four characters `\\x00`; a surrogate its escape."""
    if value is None or (value.isascii() and "\x00" not in value):
        return value
    return value.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def refuse_nul(record: JobRecord) -> None:
    """`InvalidJob` naming the field if a text field of `record` holds a NUL character,
    which PostgreSQL text cannot hold. (Ids, tags and function names hold none: `Job`
    refuses it on every store.)"""
    for field, text in (("name", record.name), ("owner", record.owner), ("unique_key", record.unique_key),
                        ("cron_timezone", record.cron_timezone)):
        if text is not None and "\x00" in text:
            raise InvalidJob(field, "must not contain a NUL character: PostgreSQL cannot store one")


def row_params(record: JobRecord, now: float, status: JobStatus, blocked: int, error: Optional[str],
               max_payload_bytes: Optional[int]) -> tuple[Any, ...]:
    """The parameters of `schema.INSERT_JOB` for `record`, stored with `status`.

    Raises `TypeError`/`ValueError` (naming the field) for what JSON cannot hold, and
    as `refuse_nul`."""
    refuse_nul(record)
    payload = serialization.encode_payload(record.args, record.kwargs, max_payload_bytes)
    return (
        record.id, record.function_name, record.name, payload, record.priority, status.value,
        blocked, now, record.scheduled_at, record.run_at, record.max_retries, record.retry_delay,
        record.retry_backoff, bool(record.retry_jitter), record.timeout, sorted(record.tags),
        serialization.encode(record.metadata, field="metadata", max_bytes=max_payload_bytes), record.owner,
        record.unique_key,
        record.isolation, list(record.depends_on), record.cron, record.cron_timezone, error,
        "DependencyFailed" if error else None, now if error else None, record.memory_limit,
    )


def record_from_row(row: Sequence[Any]) -> JobRecord:
    """A `JobRecord` from a row selected as `JOB_COLUMNS`; a payload that cannot be
    decoded (or metadata or progress details that are not a JSON object) sets
    `decode_error` rather than raising."""
    record, raw = unpack_job_row(row)
    record.tags = frozenset(raw.tags or ())  # arrays: the driver already made them lists
    record.depends_on = tuple(raw.depends_on or ())
    try:
        if raw.payload is not None:  # None: selected without the arguments
            record.args, record.kwargs = serialization.decode_payload(raw.payload)
        record.metadata = json_object(serialization.loads(raw.metadata, "metadata"), "metadata")
        record.progress_details = json_object(serialization.loads(raw.progress_details, "progress_details"), "progress_details")
        record.result = serialization.decode(raw.result)
    except (ValueError, TypeError, RecursionError) as exc:  # (nested deeper than this stack decodes)
        if record.decode_error is None:  # else a number was wrong first: that one is told
            record.decode_error = f"stored job {record.id} cannot be decoded: {exc}"
    return record


def entry_from_row(row: Sequence[Any]) -> QueueEntry:
    """A `QueueEntry` from a row selected as `schema.ENTRY`. A due time that is no usable
    time (infinity, NaN: the timers would never reach it) reads as due now; claiming the
    job reads its row, whose decode error fails it as corrupt."""
    run_at = row[3]
    if run_at is not None and not -TIME_LIMIT < run_at < TIME_LIMIT:
        run_at = None
    return QueueEntry(row[0], row[1], row[2], run_at, row[4], bool(row[5]))


def status_of(value: str) -> JobStatus:
    """The `JobStatus` a stored status names (FAILED for one this version does not know)."""
    return STATUSES.get(value, JobStatus.FAILED)
