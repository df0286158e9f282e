"""Queue figures for the dashboard: the oldest pending job's age and `/metrics` in
Prometheus text format. Read-only, computed from the database on each call."""

from __future__ import annotations

from typing import Optional

from .. import __version__
from ..manager import JobManager
from ..models import JobStatus

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def oldest_pending_age(manager: JobManager, pending: int, now: float) -> Optional[float]:
    """Seconds since the oldest pending job was created, or None when none is pending
    (`JobRepository.oldest`: read from an index; the walk to the last of `list_jobs`,
    newest first, took 67-167 ms with 300,000 pending, at every refresh of every page)."""
    if pending <= 0:
        return None
    oldest = manager.repository.oldest(JobStatus.PENDING)
    if oldest is None:
        return None
    return max(0.0, now - oldest.created_at)


RECENT_JOBS = 5000  # finished jobs per status that the run-time figures look at
RUN_BUCKETS = (0.01, 0.1, 1.0, 10.0, 60.0, 600.0, 3600.0)


def recent_run_metrics(manager: JobManager) -> list[str]:
    """Per-function figures over the most recent finished jobs still stored (up to
    RECENT_JOBS completed and as many failed): a run-time histogram of the last attempt of
    completed jobs, and counts of finished jobs, failures and retries. They describe a
    window, so they can fall when old jobs are cleaned up."""
    completed = manager.list_job_summaries(status=JobStatus.COMPLETED, limit=RECENT_JOBS)
    failed = manager.list_job_summaries(status=JobStatus.FAILED, limit=RECENT_JOBS)
    runs: dict[str, list[float]] = {}
    for job in completed:
        if job.started_at is not None and job.completed_at is not None:
            runs.setdefault(job.function_name, []).append(
                max(0.0, (job.completed_at - job.started_at).total_seconds()))
    lines = ["# HELP jobcore_job_run_seconds Run time of the last attempt of recently completed jobs.",
             "# TYPE jobcore_job_run_seconds histogram"]
    for function, seconds in sorted(runs.items()):
        label = _escape_label(function)
        for bound in RUN_BUCKETS:
            count = sum(1 for value in seconds if value <= bound)
            lines.append(f'jobcore_job_run_seconds_bucket{{function="{label}",le="{bound:g}"}} {count}')
        lines.append(f'jobcore_job_run_seconds_bucket{{function="{label}",le="+Inf"}} {len(seconds)}')
        lines.append(f'jobcore_job_run_seconds_sum{{function="{label}"}} {round(sum(seconds), 6)}')
        lines.append(f'jobcore_job_run_seconds_count{{function="{label}"}} {len(seconds)}')
    finished: dict[tuple[str, str], int] = {}
    retries: dict[str, int] = {}
    for job in completed + failed:
        key = (job.function_name, job.status.value)
        finished[key] = finished.get(key, 0) + 1
        retries[job.function_name] = retries.get(job.function_name, 0) + max(0, job.attempts - 1)
    lines += ["# HELP jobcore_recent_jobs Recently finished jobs still stored, by function and status.",
              "# TYPE jobcore_recent_jobs gauge"]
    lines += [f'jobcore_recent_jobs{{function="{_escape_label(f)}",status="{status}"}} {count}'
              for (f, status), count in sorted(finished.items())]
    lines += ["# HELP jobcore_recent_retries Retries (attempts after the first) of recently finished jobs.",
              "# TYPE jobcore_recent_retries gauge"]
    lines += [f'jobcore_recent_retries{{function="{_escape_label(f)}"}} {count}'
              for f, count in sorted(retries.items())]
    return lines


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
    lines += recent_run_metrics(manager)
    lines += ["# HELP jobcore_info The jobcore version serving these metrics.", "# TYPE jobcore_info gauge",
              f'jobcore_info{{version="{_escape_label(__version__)}"}} 1']
    return "\n".join(lines) + "\n"
