"""Conversions between the public model (`Job`, `JobResult`, events) and stored `JobRecord`s.

Pure functions: no storage, no threads, no clock (times come in as arguments). Stored
times are epoch seconds; the public model shows naive local datetimes.
"""

from __future__ import annotations

import dataclasses
import math
from datetime import datetime
from typing import Any, Callable, Optional, cast, overload

from .errors import InvalidJob
from .job_fields import TIME_LIMIT
from .models import Job, JobResult, JobStatus
from .repository.base import JobRecord
from .repository.values import NO_TAGS
from .scheduler import next_fire_epoch

_EVENT_STATUS = {"job.completed": "completed", "job.cancelled": "cancelled",
                 "job.dead_lettered": "failed", "job.retrying": "scheduled"}


@overload
def local_datetime(ts: float) -> datetime: ...
@overload
def local_datetime(ts: None) -> None: ...
@overload
def local_datetime(ts: Optional[float]) -> Optional[datetime]: ...


def local_datetime(ts: Optional[float]) -> Optional[datetime]:
    """A naive local datetime from epoch seconds (None stays None)."""
    return None if ts is None else datetime.fromtimestamp(ts)


def record_for(job: Job, now: float) -> JobRecord:
    """The record that stores a validated `job` enqueued at `now`.

    A future `scheduled_at` makes it SCHEDULED; a `cron` job becomes a schedule due at its
    first fire after `now`, and not before a future `scheduled_at` (a fire at that very
    moment counts: "do not start before it")."""
    assert job.function_name is not None and job.name is not None
    scheduled_at = None if job.scheduled_at is None else job.scheduled_at.timestamp()
    due_later = scheduled_at is not None and scheduled_at > now
    run_at = scheduled_at if due_later else None
    cron = job.cron
    if cron is not None:
        try:
            # Fires are whole seconds: the first at or after `scheduled_at` is the first after
            # the second before its ceiling. (A microsecond before it was no earlier once
            # a float's step passed a microsecond, in 2514: a fire on it was skipped.)
            start = max(now, math.ceil(scheduled_at) - 1) if due_later and scheduled_at is not None else now
            run_at = next_fire_epoch(cron, job.cron_timezone, start)
        except ValueError as exc:  # it never fires (`0 0 30 2 *`)
            raise InvalidJob("cron", str(exc)) from None
        if run_at >= TIME_LIMIT:  # (its scheduled_at was in range: the stores read it back as corrupt)
            raise InvalidJob("cron", f"its first fire ({datetime.fromtimestamp(run_at).isoformat()}) is past"
                                     " 29 April 3871, the last time a store keeps")
        due_later = True
    depends_on = cast(list[str], job.depends_on)  # (validated: the ids, Job objects made ids)
    # Every field given by position, in `RECORD_FIELDS` (checked at import).
    return JobRecord(
        job.id, job.function_name, job.name, job.args, dict(job.kwargs), int(job.priority),
        _SCHEDULED if due_later else _PENDING, 0, 0.0, scheduled_at, run_at, None, None, 0,
        job.max_retries, job.retry_delay, job.retry_backoff, job.retry_jitter, job.timeout,
        frozenset(job.tags) if job.tags else NO_TAGS, dict(job.metadata), job.owner, job.unique_key, job.isolation,
        job.memory_limit, tuple(depends_on), len(depends_on), 0.0, "", {}, None, None, None, None,
        None, None, False, cron, job.cron_timezone, None)


_PENDING, _SCHEDULED = JobStatus.PENDING, JobStatus.SCHEDULED


_RESULT_FIELDS = tuple(f.name for f in dataclasses.fields(JobResult))


def new_result(*values: Any) -> JobResult:
    """`JobResult(*values)`, every field given in order, at a third of the cost.

    `JobResult` is a frozen dataclass: its generated `__init__` sets each of its 24 fields
    through `object.__setattr__` (7.5 µs). `poll`, `wait` and listing build one per job, so
    here the fields go into the new instance's `__dict__` in one step (about 2 µs)."""
    result = object.__new__(JobResult)
    result.__dict__.update(zip(_RESULT_FIELDS, values))
    return result


def result_of(record: JobRecord) -> JobResult:
    """What `poll` shows of a stored job. `scheduled_at` is when it is next due while it
    waits for a time (SCHEDULED), else the time it was given (a retry's time is not kept
    once the retry ran).

    A job stored corrupt (`decode_error`) shows that error until it has one of its own (it
    fails with it, as `CorruptJob`, when a worker claims it)."""
    error, error_type = record.error, record.error_type
    if record.decode_error is not None and error is None:
        error, error_type = record.decode_error, error_type or "CorruptJob"
    return new_result(
        record.id, record.name, record.status, record.progress, record.progress_message,
        dict(record.progress_details), record.result, error, error_type,
        record.traceback, record.attempts, local_datetime(record.created_at),
        local_datetime(record.run_at if record.status is JobStatus.SCHEDULED and record.run_at is not None
                       else record.scheduled_at),
        local_datetime(record.started_at), local_datetime(record.completed_at), record.owner,
        frozenset(record.tags), dict(record.metadata), record.function_name, record.priority,
        record.max_retries, tuple(record.depends_on), record.worker_id, record.cron)


def job_of(record: JobRecord, function: Optional[Callable[..., Any]]) -> Job:
    """The `Job` a stored record was made from (with `function` if registered here), a
    cron schedule's with its `cron` and `cron_timezone`. A row holding what `Job` refuses
    (a corrupt row, edited by hand) gives a `Job` of its values as stored, unchecked: one
    such row must not make every other job of a listing unreadable."""
    values: dict[str, Any] = dict(
        function=function, function_name=record.function_name, args=tuple(record.args),
        kwargs=dict(record.kwargs), name=record.name, priority=record.priority,
        scheduled_at=local_datetime(record.scheduled_at), depends_on=list(record.depends_on),
        max_retries=record.max_retries, retry_delay=record.retry_delay,
        retry_backoff=record.retry_backoff, retry_jitter=record.retry_jitter, timeout=record.timeout,
        tags=set(record.tags), metadata=dict(record.metadata), owner=record.owner,
        unique_key=record.unique_key, isolation=record.isolation,
        memory_limit=record.memory_limit, id=record.id,
    )
    if record.cron is not None:
        values.update(cron=record.cron, cron_timezone=record.cron_timezone)
    try:
        return Job(**values)
    except (TypeError, ValueError):
        job = object.__new__(Job)  # no __post_init__: nothing checked
        for f in dataclasses.fields(Job):
            value = values[f.name] if f.name in values else (
                f.default if f.default is not dataclasses.MISSING else f.default_factory())  # type: ignore[operator]
            setattr(job, f.name, value)
        return job


def event_of(event: str, record: JobRecord, details: dict[str, Any], now: float) -> dict[str, Any]:
    """The dict notification channels receive for `event` about `record`."""
    payload = {
        "event": event, "job_id": record.id, "name": record.name,
        "function_name": record.function_name, "attempts": record.attempts,
        "status": _EVENT_STATUS.get(event), "error": details.get("error"),
        "error_type": details.get("error_type"), "traceback": details.get("traceback"),
        "owner": record.owner, "timestamp": datetime.fromtimestamp(now).astimezone().isoformat(),
    }
    if details.get("retry_at") is not None:
        payload["retry_at"] = datetime.fromtimestamp(details["retry_at"]).astimezone().isoformat()
    return payload
