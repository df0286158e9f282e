"""The columns of a stored job in the order every SQL backend selects them, and the
unpacking of such a row into a `JobRecord`'s plain fields.

SQLite's and PostgreSQL's row decoders both start from `unpack_job_row`, so the order is
written once, here; each then decodes what its store keeps in its own types (JSON text,
arrays). No SQL runs here.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

from ..models import JobStatus
from .base import JobRecord

JOB_COLUMNS = (
    "id, function_name, name, payload, priority, status, seq, created_at, scheduled_at, run_at,"
    " started_at, completed_at, attempts, max_retries, retry_delay, retry_backoff, retry_jitter,"
    " timeout, tags, metadata, owner, unique_key, isolation, depends_on, blocked, progress,"
    " progress_message, progress_details, result, error, error_type, traceback, worker_id,"
    " lease_expires_at, cancel_requested, cron, cron_timezone, memory_limit"
)

# The same row without the arguments, for reads that show a job (`poll`, `wait`, listing):
# a JobResult carries no arguments, and reading and decoding them costs as much as they
# are large (24.7 ms a `poll` for 640 KB of JSON lists). A NULL payload decodes to none.
JOB_COLUMNS_WITHOUT_ARGS = JOB_COLUMNS.replace(" payload,", " NULL,", 1)
assert JOB_COLUMNS_WITHOUT_ARGS.count("NULL") == 1 and "payload" not in JOB_COLUMNS_WITHOUT_ARGS

STATUSES = {status.value: status for status in JobStatus}


class Encoded(NamedTuple):
    """The columns of a row that each backend decodes its own way."""

    payload: Any
    tags: Any
    metadata: Any
    depends_on: Any
    progress_details: Any
    result: Any


def unpack_job_row(row: Sequence[Any]) -> tuple[JobRecord, Encoded]:
    """A `JobRecord` with every plain field of a `JOB_COLUMNS` row set (an unknown status
    reads FAILED), and the columns left to decode."""
    record = JobRecord(id=row[0], function_name=row[1], name=row[2])
    (_, _, _, payload, record.priority, status, record.seq, record.created_at, record.scheduled_at,
     record.run_at, record.started_at, record.completed_at, record.attempts, record.max_retries,
     record.retry_delay, record.retry_backoff, jitter, record.timeout, tags, metadata,
     record.owner, record.unique_key, record.isolation, depends_on, record.blocked,
     record.progress, record.progress_message, details, result, record.error,
     record.error_type, record.traceback, record.worker_id, record.lease_expires_at,
     cancel_requested, record.cron, record.cron_timezone, record.memory_limit) = row
    record.status = STATUSES.get(status, JobStatus.FAILED)
    record.retry_jitter = bool(jitter)
    record.cancel_requested = bool(cancel_requested)
    return record, Encoded(payload, tags, metadata, depends_on, details, result)
