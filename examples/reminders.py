"""Recurring jobs with cron: a reminder schedule firing live, then cancelled.

Run it from a fresh clone:  python examples/reminders.py

In a real app reminders would go out every 15 minutes: `cron="*/15 * * * *"`. So that
you can watch it fire, this script uses the six-field form, whose extra leading field is
seconds: `*/2 * * * * *` fires every 2 seconds. A cron job is a schedule (a row that stays
SCHEDULED); each fire enqueues one ordinary run whose metadata names the schedule and the
fire time. `cancel(schedule_id)` ends the schedule. The `periodic` decorator is the
short way to keep one schedule per function across restarts.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from datetime import datetime
from itertools import islice
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jobcore import CronExpression, Job, JobManager, JobStatus, current_job  # noqa: E402

manager: Optional[JobManager] = None   # set in main(); the job reads its own metadata


def send_due_reminders() -> int:
    """Send the reminders due now (here: just say so)."""
    run = manager.poll(current_job().id)
    print(f"  {datetime.now():%H:%M:%S.%f}"[:-3] + f"  run for fire time {run.metadata['fire_at']}"
          f" (schedule {run.metadata['schedule_id'][:8]}...)", flush=True)
    return 0


def main() -> None:
    global manager
    path = os.environ.get("JOBCORE_DB") or os.path.join(tempfile.mkdtemp(), "reminders.db")
    print(f"database: {path}")

    print("\nwhen '*/15 * * * *' (every 15 minutes) fires next, from now:")
    for fire in islice(CronExpression("*/15 * * * *").iter_fires(datetime.now()), 4):
        print(f"  {fire:%Y-%m-%d %H:%M}")

    with JobManager(path, max_workers=2) as manager:
        manager.register_function("reminders.send", send_due_reminders)

        print("\na six-field schedule, '*/2 * * * * *' (every 2 seconds), live:")
        schedule_id = manager.enqueue(Job(function_name="reminders.send", cron="*/2 * * * * *",
                                          name="send reminders"))
        schedule = manager.poll(schedule_id)
        print(f"  schedule {schedule_id[:8]}... is {schedule.status.value},"
              f" next fire {schedule.scheduled_at:%H:%M:%S}")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            runs = [r for r in manager.list_jobs(limit=None) if r.metadata.get("schedule_id") == schedule_id]
            if sum(r.status is JobStatus.COMPLETED for r in runs) >= 3:
                break
            time.sleep(0.05)

        cancelled_at = datetime.now()
        print(f"\ncancel(schedule_id) -> {manager.cancel(schedule_id)}")
        print(f"  the schedule is now {manager.poll(schedule_id).status.value}; waiting 2.5 s...")
        time.sleep(2.5)
        runs = [r for r in manager.list_jobs(limit=None) if r.metadata.get("schedule_id") == schedule_id]
        print(f"  {len(runs)} runs in all:")
        for run in reversed(runs):
            print(f"    {run.status.value:<9} fire_at={run.metadata['fire_at']}"
                  f"  started {run.started_at:%H:%M:%S}")
        late = [r for r in runs if r.created_at > cancelled_at]
        print(f"  runs created after the cancel: {len(late)}")

        print("\nthe periodic decorator: register a function and keep one schedule for it")

        @manager.periodic("*/15 * * * *", name="reminders.every_15_minutes")
        def send_reminders() -> None:
            send_due_reminders()

        schedules = [r for r in manager.list_jobs(status=JobStatus.SCHEDULED, limit=None) if r.cron]
        for row in schedules:
            print(f"  schedule {row.name!r}: cron {row.cron!r}, next fire {row.scheduled_at:%H:%M}")
        # Declared again (as after a restart), it reuses the same schedule instead of adding one.
        manager.periodic("*/15 * * * *", name="reminders.every_15_minutes")(send_reminders)
        again = [r for r in manager.list_jobs(status=JobStatus.SCHEDULED, limit=None) if r.cron]
        print(f"  declared twice, still {len(again)} schedule(s)")
        for row in again:
            manager.cancel(row.job_id)   # leave nothing recurring behind in $JOBCORE_DB


if __name__ == "__main__":
    main()
