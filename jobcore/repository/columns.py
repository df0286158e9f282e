"""The columns of a stored job in the order every SQL backend selects them, and the
unpacking of such a row into a `JobRecord`'s plain fields.

SQLite's and PostgreSQL's row decoders both start from `unpack_job_row`, so the order is
written once, here; each then decodes what its store keeps in its own types (JSON text,
arrays). Also what both store of a settlement's last progress report. No SQL runs here.
"""

from __future__ import annotations

import reprlib
from typing import Any, NamedTuple, Optional, Sequence

from .. import serialization
from ..models import TIME_LIMIT, JobStatus
from .base import JobRecord, Settlement

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

# The row as a table of jobs shows it (the dashboard, `jobcore list`, the run-time
# metrics): no arguments, metadata, progress details, result or traceback (read as
# empty). Reading and decoding each job's whole result cost the dashboard's job table
# 1.2-2.6 s of CPU and about 600 MB a refresh with 100 results of 0.9 MB each, none of
# which it shows.
JOB_COLUMNS_SUMMARY = (JOB_COLUMNS_WITHOUT_ARGS.replace(" metadata,", " '{}',", 1)
                       .replace(" progress_details, result,", " '{}', NULL,", 1)
                       .replace(" traceback,", " NULL,", 1))
assert JOB_COLUMNS_SUMMARY.count("NULL") == 3 and JOB_COLUMNS_SUMMARY.count("'{}'") == 2

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
    """A `JobRecord` with every plain field of a `JOB_COLUMNS` row set, and the columns
    left to decode. A status jobcore never writes (a hand edit: 'PENDING') reads FAILED
    with a `decode_error` saying so, as a number of the wrong kind does."""
    record = JobRecord(id=row[0], function_name=row[1], name=row[2])
    (_, _, _, payload, record.priority, status, record.seq, record.created_at, record.scheduled_at,
     record.run_at, record.started_at, record.completed_at, record.attempts, record.max_retries,
     record.retry_delay, record.retry_backoff, jitter, record.timeout, tags, metadata,
     record.owner, record.unique_key, record.isolation, depends_on, record.blocked,
     record.progress, record.progress_message, details, result, record.error,
     record.error_type, record.traceback, record.worker_id, record.lease_expires_at,
     cancel_requested, record.cron, record.cron_timezone, record.memory_limit) = row
    known = STATUSES.get(status)
    record.status = known or JobStatus.FAILED
    record.retry_jitter = bool(jitter)
    record.cancel_requested = bool(cancel_requested)
    record.decode_error = unsound_numbers(record)
    if known is None:
        record.decode_error = unknown_status(record, status)
    return record, Encoded(payload, tags, metadata, depends_on, details, result)


def unknown_status(record: JobRecord, status: Any) -> str:
    """The `decode_error` of `record`, read from a row whose status is `status`, none that
    jobcore writes (added to what `unsound_numbers` found, if anything)."""
    told = f"status holds {reprlib.repr(status)}, not one jobcore writes (it reads as failed)"
    if record.decode_error is None:
        return f"stored job {record.id} cannot be decoded: {told}"
    return f"{record.decode_error}; {told}"


# A stored number of the right kind. SQLite keeps whatever a column is given: a row edited
# by hand can hold text where a time or a priority belongs, and one such value reached
# the ready heap (`-priority`), a worker's deadline (`now + timeout`) or `poll`
# (`datetime.fromtimestamp`) and failed every job, or killed the worker thread.
REAL_TYPES = (float, int)
# TIME_LIMIT (models): past it (or infinity) `poll` and every listing of the job raised
# OverflowError.


# SQL true of a stored time that is no usable one, for the statements that find jobs by a
# time (with `{column}` filled in): text or bytes (SQLite keeps whatever a column is
# given, and orders them above every number), infinity, NaN (PostgreSQL orders it above
# every number), a number beyond TIME_LIMIT. Such a due time never passed `run_at <= now`,
# nor such a lease `lease_expires_at < now`, so the job stayed SCHEDULED, or RUNNING, for
# ever. NULL is not one (the comparisons give NULL). The bounds are written out, not bound:
# two more parameters of every claim otherwise.
UNUSABLE_TIME_SQL = f"NOT ({{column}} > {-TIME_LIMIT:.1f} AND {{column}} < {TIME_LIMIT:.1f})"


def usable_time(value: Any) -> Optional[float]:
    """`value`, a stored time, if it is one jobcore can use (a number within TIME_LIMIT);
    else None."""
    return value if type(value) in REAL_TYPES and -TIME_LIMIT < value < TIME_LIMIT else None


def unreadable_lease_message(lease: Any) -> str:
    """What a running job's log says when recovery ends its lease that held `lease`, no
    usable time."""
    return (f"lease_expires_at held {reprlib.repr(lease)}, not a time: the lease ends now; a live worker"
            " renews it at its next heartbeat, else the job is taken back")


def unsound_numbers(record: JobRecord) -> Optional[str]:
    """None if every number of `record` (as a row gave it) is a number of its field's kind;
    else what is wrong, as a `decode_error`, with each wrong field set to its default so
    that nothing else fails on it (the job then fails alone as corrupt)."""
    # One expression, each field checked by its type (a time also by its range), no call:
    # this runs for every row read (0.15 to 0.2 us).
    real, limit = REAL_TYPES, TIME_LIMIT
    at: Optional[float]
    if (type(record.id) is str and type(record.priority) is int and type(record.attempts) is int
            and type(record.max_retries) is int and type(record.retry_delay) in real
            and type(record.retry_backoff) in real and type(record.progress) in real
            and type(at := record.created_at) in real and -limit < at < limit
            and ((at := record.scheduled_at) is None or (type(at) in real and -limit < at < limit))
            and ((at := record.run_at) is None or (type(at) in real and -limit < at < limit))
            and ((at := record.started_at) is None or (type(at) in real and -limit < at < limit))
            and ((at := record.completed_at) is None or (type(at) in real and -limit < at < limit))
            and ((at := record.lease_expires_at) is None or (type(at) in real and -limit < at < limit))
            and (record.timeout is None or (type(record.timeout) in real and record.timeout > 0))
            and (record.memory_limit is None or type(record.memory_limit) is int)
            and type(record.blocked) is int and record.blocked >= 0):
        return None
    return _reset_unsound(record)


# The numeric fields of a record: (name, kinds, may be None, is a time, must be > 0).
# (A timeout of 0 or less, which enqueue refuses, timed every attempt out as it began.)
_NUMBERS = (
    ("priority", (int,), False, False, False),
    ("created_at", REAL_TYPES, False, True, False), ("scheduled_at", REAL_TYPES, True, True, False),
    ("run_at", REAL_TYPES, True, True, False), ("started_at", REAL_TYPES, True, True, False),
    ("completed_at", REAL_TYPES, True, True, False), ("attempts", (int,), False, False, False),
    ("max_retries", (int,), False, False, False), ("retry_delay", REAL_TYPES, False, False, False),
    ("retry_backoff", REAL_TYPES, False, False, False), ("timeout", REAL_TYPES, True, False, True),
    ("memory_limit", (int,), True, False, False),
    ("progress", REAL_TYPES, False, False, False), ("lease_expires_at", REAL_TYPES, True, True, False),
)
_DEFAULTS = JobRecord("", "", "")
DEFAULT_PRIORITY = _DEFAULTS.priority  # what a corrupt row's priority reads as


def _reset_unsound(record: JobRecord) -> Optional[str]:
    wrong = []
    if type(record.id) is not str:  # SQLite keeps bytes too; the record shows it as text
        if isinstance(record.id, str):  # of another type: SQLite text that is not UTF-8 (sqlite_rows)
            wrong.append(f"id holds text that is not UTF-8 ({reprlib.repr(str(record.id))})")
        else:
            wrong.append(f"id holds {reprlib.repr(record.id)}, not text")
        record.id = text_of_id(record.id)
    # The count of unfinished dependencies: 'x' or -1 never reaches 0, and the job waited for ever.
    if not (type(record.blocked) is int and record.blocked >= 0):
        wrong.append(f"blocked holds {reprlib.repr(record.blocked)}, not an integer >= 0")
        record.blocked = 0
    for name, kinds, nullable, is_time, positive in _NUMBERS:
        value = getattr(record, name)
        if value is None and nullable:
            continue
        if type(value) in kinds and (not is_time or -TIME_LIMIT < value < TIME_LIMIT) and (not positive or value > 0):
            continue
        kind = ("a time" if is_time else "an integer" if kinds == (int,)
                else "a number > 0" if positive else "a number")
        wrong.append(f"{name} holds {reprlib.repr(value)}, not {kind}")
        setattr(record, name, getattr(_DEFAULTS, name))
    if not wrong:
        return None
    return f"stored job {record.id} cannot be decoded: {'; '.join(wrong)}"


def text_of_id(value: Any) -> str:
    """A stored id that is not text (bytes: a hand edit, another tool), as text to show."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def json_object(value: Any, field: str) -> dict[str, Any]:
    """`value`, decoded JSON of the column `field`, if it is an object (else ValueError)."""
    if type(value) is not dict:
        raise ValueError(f"{field} holds {reprlib.repr(value)}, not a JSON object")
    return value


def json_strings(value: Any, field: str) -> list[str]:
    """`value`, decoded JSON of the column `field`, if it is a list of strings (else ValueError)."""
    if type(value) is not list or not all(type(item) is str for item in value):
        raise ValueError(f"{field} holds {reprlib.repr(value)}, not a list of strings")
    return value


def encode_progress(settlements: Sequence[Settlement]) -> Optional[list[Optional[str]]]:
    """The details of the last progress report each settlement carries, as the JSON text
    a SQL store keeps (None where it carries none); None if none carries one (most
    batches: one pass). Raises `TypeError`/`ValueError`, before anything is written, for
    details JSON cannot hold."""
    if all(s.progress is None for s in settlements):
        return None
    return [None if s.progress is None else s.progress.encoded_details
            if s.progress.encoded_details is not None
            else serialization.encode(s.progress.details, field="progress details")
            for s in settlements]


_JSON_SCALARS = frozenset({str, int, float, bool, type(None)})


def claimed_as_stored(record: JobRecord, payload: str, worker_id: str, now: float,
                      lease_expires_at: float) -> JobRecord:
    """`record`, just stored claimed (its first attempt) with `payload`, made what a
    claim would return.

    On the way from `enqueue` to a worker starting the job, so kept short: the record
    is the caller's own (not copied), and arguments that are all JSON scalars, which
    decode to what they were, are not decoded again."""
    if record.kwargs or any(type(arg) not in _JSON_SCALARS for arg in record.args):
        # The worker sees the arguments as any claim would: decoded from the stored JSON.
        record.args, record.kwargs = serialization.decode_payload(payload)
    if record.metadata:  # as stored (JSON), not as given: `wait` shows it as `poll` does
        record.metadata = serialization.decode(serialization.encode(record.metadata, field="metadata"))
    record.status, record.blocked, record.created_at, record.started_at = JobStatus.RUNNING, 0, now, now
    record.attempts, record.worker_id, record.lease_expires_at = 1, worker_id, lease_expires_at
    return record
