"""Cron schedules: when a schedule is due, enqueue exactly one run for that fire time.

A schedule is a stored row with a `cron` expression whose `run_at` is its next fire. When
it comes due, `ScheduleFirer.fire` moves `run_at` to the following fire and stores one run
in the same transaction (a compare-and-set on `run_at`), so several managers or processes
sharing a database fire each time once. Fires missed while nothing ran are coalesced into
one run. It decides nothing about running jobs; it only creates them.
"""

from __future__ import annotations

import logging
import math
import uuid
from datetime import datetime, tzinfo
from typing import Callable, Optional
from zoneinfo import ZoneInfo

from .clock import Clock
from .cron import CronExpression
from .models import JobStatus
from .repository.base import JobRecord, JobRepository, QueueEntry

logger = logging.getLogger("jobcore.scheduler")


def next_fire_epoch(cron: str, timezone: Optional[str], after: float) -> float:
    """Epoch seconds of the first fire of `cron` strictly after `after` (epoch seconds).

    Without a time zone the expression follows local wall time, with the rules a zone's
    gets (docs/cron.md): a wall time the clocks skip is skipped, and one they repeat fires
    at its first pass only."""
    expression = CronExpression(cron, timezone)
    # Fires are whole seconds: the first after `after` is the first after its whole second.
    # (`fromtimestamp` rounds to the microsecond: 0.4 µs before a fire landed on it, and
    # the fire after it came next, a period late.)
    after = math.floor(after)
    if timezone:
        return expression.next_fire(datetime.fromtimestamp(after, ZoneInfo(timezone))).timestamp()
    # A naive `after` is local wall time, and `fromtimestamp` sets its fold in the second
    # pass of a repeated hour; the naive fire is a first pass (fold 0), as `.timestamp()` reads it.
    return expression.next_fire(datetime.fromtimestamp(after)).timestamp()


def fire_time_text(moment: float, timezone: Optional[str]) -> str:
    """ISO 8601 text of a fire time, with its UTC offset, in the schedule's zone."""
    zone: Optional[tzinfo] = ZoneInfo(timezone) if timezone else None
    stamp = datetime.fromtimestamp(moment, zone) if zone else datetime.fromtimestamp(moment).astimezone()
    return stamp.isoformat()


def run_for(schedule: JobRecord, fire_at: float) -> JobRecord:
    """The run a schedule enqueues for `fire_at`: a plain job naming its schedule."""
    metadata = dict(schedule.metadata)
    metadata["schedule_id"] = schedule.id
    metadata["fire_at"] = fire_time_text(fire_at, schedule.cron_timezone)
    return JobRecord(
        id=uuid.uuid4().hex, function_name=schedule.function_name, name=schedule.name,
        args=schedule.args, kwargs=dict(schedule.kwargs), priority=schedule.priority,
        status=JobStatus.PENDING, scheduled_at=fire_at, max_retries=schedule.max_retries,
        retry_delay=schedule.retry_delay, retry_backoff=schedule.retry_backoff,
        retry_jitter=schedule.retry_jitter, timeout=schedule.timeout, tags=schedule.tags,
        metadata=metadata, owner=schedule.owner, isolation=schedule.isolation,
        memory_limit=schedule.memory_limit,
    )


class ScheduleFirer:
    """Fires due schedules on behalf of a worker pool."""

    def __init__(self, repository: JobRepository, clock: Clock,
                 requeue: Callable[[list[QueueEntry], Optional[int]], None]) -> None:
        self._repo = repository
        self._clock = clock
        # Queues runs and the schedule's next timer, found by the read marked by its
        # second argument (see `ReadyQueue.reading`).
        self._requeue = requeue

    def fire(self, entry: QueueEntry, read: Optional[int] = None) -> None:
        """Handle a schedule's timer: enqueue its run if it is due and still ours to fire.
        `read`: the mark of a `ReadyQueue.reading` begun before the schedule was read."""
        schedule = self._repo.get(entry.job_id)
        if schedule is None or schedule.status is not JobStatus.SCHEDULED or schedule.cron is None:
            return  # cancelled or cleaned up: the schedule has ended
        now = self._clock.time()
        if schedule.decode_error is not None:
            self._fail_corrupt(schedule, schedule.decode_error, now)
            return
        fire_at = schedule.run_at
        if fire_at is None or fire_at > now:
            self._requeue([schedule.queue_entry()], read)  # not due (another process moved it on)
            return
        # Coalesce: however many fires were missed, the next one is after now.
        try:
            next_at = next_fire_epoch(schedule.cron, schedule.cron_timezone, now)
        except Exception as exc:  # a row changed behind enqueue's checks: it can never fire
            self._fail_corrupt(schedule, f"the schedule cannot fire: cron {schedule.cron!r}"
                                         f" (time zone {schedule.cron_timezone!r}): {exc}", now)
            return
        run = run_for(schedule, fire_at)
        if self._repo.fire_schedule(schedule.id, fire_at, next_at, run, now):
            logger.info("schedule %s fired for %s", schedule.id, run.metadata["fire_at"])
            schedule.run_at = next_at
            self._requeue([run.queue_entry(), schedule.queue_entry()], read)
        else:
            current = self._repo.get(schedule.id)
            if current is not None and current.status is JobStatus.SCHEDULED:
                self._requeue([current.queue_entry()], read)

    def _fail_corrupt(self, schedule: JobRecord, error: str, now: float) -> None:
        """End a schedule that can never fire FAILED (`CorruptJob`), as a claim ends any
        other corrupt row; one left SCHEDULED would never run and never end."""
        if self._repo.fail_schedule(schedule.id, error, now):
            logger.error("schedule %s is corrupt and failed: %s", schedule.id, error)
        else:
            logger.error("schedule %s is corrupt and will not fire: %s", schedule.id, error)
