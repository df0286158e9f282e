"""Queue figures for the dashboard: the oldest pending job's age and `/metrics` in
Prometheus text format. Read-only, computed from the database on each call."""

from __future__ import annotations

from typing import Optional

from .. import __version__
from ..manager import JobManager
from ..models import JobStatus

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def oldest_pending_age(manager: JobManager, pending: int, now: float) -> Optional[float]:
    """Seconds since the oldest pending job was created, or None when none is pending.

    `list_jobs` is newest first, so the oldest of `pending` jobs is at offset pending - 1."""
    if pending <= 0:
        return None
    oldest = manager.list_jobs(status=JobStatus.PENDING, limit=1, offset=pending - 1)
    if not oldest:  # the queue moved between counting and reading
        oldest = manager.list_jobs(status=JobStatus.PENDING, limit=1)
    if not oldest or oldest[0].created_at is None:
        return None
    return max(0.0, now - oldest[0].created_at.timestamp())


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render_metrics(manager: JobManager, now: float, actions: dict[str, int]) -> str:
    """The Prometheus exposition text: jobs by status, queue depth, oldest pending age,
    the dead-letter queue's size, and counters of this dashboard's actions."""
    stats = manager.get_stats()
    lines = ["# HELP jobcore_jobs Jobs in the database, by status.", "# TYPE jobcore_jobs gauge"]
    lines += [f'jobcore_jobs{{status="{status.value}"}} {stats[status.value]}' for status in JobStatus]
    age = oldest_pending_age(manager, stats[JobStatus.PENDING.value], now)
    gauges = [
        ("jobcore_jobs_stored", "Jobs in the database, whatever their status.", stats["total"]),
        ("jobcore_queue_depth", "Jobs not yet started (pending plus scheduled).",
         stats[JobStatus.PENDING.value] + stats[JobStatus.SCHEDULED.value]),
        ("jobcore_oldest_pending_age_seconds", "Seconds since the oldest pending job was created (0: none).",
         0.0 if age is None else round(age, 3)),
        ("jobcore_dead_letter_jobs", "Failed jobs in the dead-letter queue.", stats[JobStatus.FAILED.value]),
        ("jobcore_workers", "Worker managers registered on this database (any process).",
         len(manager.list_workers())),
    ]
    for name, help_text, value in gauges:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value}"]
    lines += ["# HELP jobcore_dashboard_actions_total Cancels and retries requested through this dashboard.",
              "# TYPE jobcore_dashboard_actions_total counter"]
    lines += [f'jobcore_dashboard_actions_total{{action="{_escape_label(action)}"}} {count}'
              for action, count in sorted(actions.items())]
    lines += ["# HELP jobcore_info The jobcore version serving these metrics.", "# TYPE jobcore_info gauge",
              f'jobcore_info{{version="{_escape_label(__version__)}"}} 1']
    return "\n".join(lines) + "\n"
