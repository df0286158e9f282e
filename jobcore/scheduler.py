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
from typing import Callable, Optional, Sequence
from zoneinfo import ZoneInfo

from .clock import Clock
from .cron import parsed
from .models import TIME_LIMIT, JobStatus
from .repository.base import JobRecord, JobRepository, QueueEntry

logger = logging.getLogger("jobcore.scheduler")


def next_fire_epoch(cron: str, timezone: Optional[str], after: float) -> float:
    """Epoch seconds of the first fire of `cron` strictly after `after` (epoch seconds).

    Without a time zone the expression follows local wall time, with the rules a zone's
    gets (docs/cron.md): a wall time the clocks skip is skipped, and one they repeat fires
    at its first pass only."""
    expression = parsed(cron, timezone)
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


# Seconds: a running manager fires each fire time it fell behind by no more than this (and
# its lease_timeout, past which it is as good as not running), one run each; one further
# back coalesces with those after it. A manager behind by more is overloaded past
# catching up, or its clock stepped forward or its process was suspended: a 40 s step of
# the wall clock fired a per-second schedule 41 times at once.
CATCH_UP_WITHIN = 10.0


class ScheduleFirer:
    """Fires due schedules on behalf of a worker pool."""

    def __init__(self, repository: JobRepository, clock: Clock,
                 requeue: Callable[[list[QueueEntry], Optional[int]], None], catch_up_within: float,
                 ring: Callable[[], None] = lambda: None,
                 fired_elsewhere: Callable[[], None] = lambda: None,
                 failed: Callable[[JobRecord, str], None] = lambda schedule, error: None) -> None:
        self._repo = repository
        # Tells of a schedule this firer ended FAILED, with its error: it is in the
        # dead-letter queue, and notification channels hear of it as of any job there.
        self._failed = failed
        # Tells the other managers of this process on the store of runs fired (one of them
        # may be the one that runs that function).
        self._ring = ring
        # Has this manager look at the store (once a worker is free): a fire it was due to
        # make was made by another process, whose run is stored for whoever runs it. On
        # SQLite nothing else tells it so: the run waited for its next look, up to a
        # discovery_interval after the fire time it had woken for.
        self._fired_elsewhere = fired_elsewhere
        self._clock = clock
        # Queues runs and the schedules' next timers, found by the read marked by its
        # second argument (see `ReadyQueue.reading`).
        self._requeue = requeue
        # Seconds: how far back a running manager fires each fire time it fell behind by
        # (see CATCH_UP_WITHIN).
        self._catch_up_within = min(catch_up_within, CATCH_UP_WITHIN)

    def fire(self, entries: Sequence[QueueEntry], read: Optional[int] = None,
             running_since: Optional[float] = None) -> None:
        """Handle due schedules' timers: enqueue each one's run if it is due and still ours
        to fire, all in one store call (`JobRepository.fire_schedules`: 1,000 schedules
        sharing a fire time, fired in a transaction each, started their runs 0.2-1.2 s
        late on SQLite). `read`: the mark of a `ReadyQueue.reading` begun before the
        schedules were read. `running_since`: when this manager started (epoch seconds),
        if it runs: a fire time passed since then, within `catch_up_within` of now, is not
        skipped (the next fire is the one after it, due at once if passed: a manager that
        fell behind under load skipped fire times); one missed before coalesces with
        every one since (the next fire is the first after now)."""
        now = self._clock.time()
        requeue: list[QueueEntry] = []
        fires: list[tuple[JobRecord, float, float, JobRecord]] = []
        elsewhere = False  # whether another process made a fire this call was to make
        # One read for them all, and each next fire time worked out once for the schedules
        # that share it (an expression, a zone, a time after): read and worked out one by
        # one, each took a third of firing the schedules.
        schedules = self._repo.get_many(list(dict.fromkeys(entry.job_id for entry in entries)))
        next_fires: dict[tuple[str, Optional[str], float], float] = {}
        for entry in entries:
            schedule = schedules.pop(entry.job_id, None)  # (an id queued twice fires once)
            if schedule is None or schedule.status is not JobStatus.SCHEDULED or schedule.cron is None:
                continue  # cancelled or cleaned up: the schedule has ended
            if schedule.decode_error is not None:
                self._fail_corrupt(schedule, schedule.decode_error, now)
                continue
            fire_at = schedule.run_at
            if fire_at is None or fire_at > now:
                requeue.append(schedule.queue_entry())  # not due (another process moved it on)
                elsewhere = True
                continue
            caught_up = running_since is not None and fire_at >= max(running_since, now - self._catch_up_within)
            key = (schedule.cron, schedule.cron_timezone, fire_at if caught_up else now)
            try:
                next_at = next_fires.get(key)
                if next_at is None:
                    next_at = next_fires[key] = next_fire_epoch(*key)
            except Exception as exc:  # a row changed behind enqueue's checks: it can never fire
                self._fail_corrupt(schedule, f"the schedule cannot fire: cron {schedule.cron!r}"
                                             f" (time zone {schedule.cron_timezone!r}): {exc}", now)
                continue
            fires.append((schedule, fire_at, next_at, run_for(schedule, fire_at)))
        fired = self._repo.fire_schedules([(s.id, fire_at, next_at, run) for s, fire_at, next_at, run in fires],
                                          now) if fires else []
        for (schedule, fire_at, next_at, run), done in zip(fires, fired):
            if done and next_at >= TIME_LIMIT:
                # Its last run: no store keeps the next fire's time (SQLite and PostgreSQL
                # read it back as corrupt, the memory store would keep it), so the
                # schedule ends here, the same on every store.
                logger.info("schedule %s fired for %s", schedule.id, run.metadata["fire_at"])
                requeue.append(run.queue_entry())
                self._fail_corrupt(schedule, f"the schedule cannot fire again: its next fire"
                                             f" ({fire_time_text(next_at, schedule.cron_timezone)}) is past"
                                             " 29 April 3871, the last time a store keeps", now)
            elif done:
                logger.info("schedule %s fired for %s", schedule.id, run.metadata["fire_at"])
                schedule.run_at = next_at
                requeue += (run.queue_entry(), schedule.queue_entry())
            else:  # fired already (by another process), or ended meanwhile
                current = self._repo.get(schedule.id)
                if current is not None and current.status is JobStatus.SCHEDULED:
                    requeue.append(current.queue_entry())
                    elsewhere = True
        if requeue:
            self._requeue(requeue, read)
        if any(fired):
            self._ring()
        if elsewhere:
            self._fired_elsewhere()

    def _fail_corrupt(self, schedule: JobRecord, error: str, now: float) -> None:
        """End a schedule that can never fire FAILED (`CorruptJob`), as a claim ends any
        other corrupt row; one left SCHEDULED would never run and never end."""
        if self._repo.fail_schedule(schedule.id, error, now):
            logger.error("schedule %s is corrupt and failed: %s", schedule.id, error)
            self._failed(schedule, error)
        else:
            logger.error("schedule %s is corrupt and will not fire: %s", schedule.id, error)
