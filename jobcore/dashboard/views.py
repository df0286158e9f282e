"""JSON views of jobs, shared by the CLI's `--json` output and the dashboard's API.

Pure functions from `JobResult`/`LogEntry` (and a `RetryAllReport`) to JSON-ready dicts (times as ISO 8601 local
time with offset, status names lower case). They read nothing and change nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable, Optional

from ..dead_letters import RetryAllReport
from ..models import JobResult, LogEntry


def iso(moment: Optional[datetime]) -> Optional[str]:
    """A naive local datetime as ISO 8601 with the local UTC offset, or None."""
    return None if moment is None else moment.astimezone().isoformat()


def job_summary(result: JobResult) -> dict[str, Any]:
    """What a job table row shows: identity, state, progress, owner, tags and times."""
    return {
        "id": result.job_id,
        "name": result.name,
        "function_name": result.function_name,
        "status": result.status.value,
        "progress": result.progress,
        "progress_message": result.progress_message,
        "attempts": result.attempts,
        "max_retries": result.max_retries,
        "priority": int(result.priority),
        "owner": result.owner,
        "tags": sorted(result.tags),
        "error_type": result.error_type,
        "error": result.error,
        "created_at": iso(result.created_at),
        "scheduled_at": iso(result.scheduled_at),
        "started_at": iso(result.started_at),
        "completed_at": iso(result.completed_at),
    }


def log_entries(entries: Iterable[LogEntry]) -> list[dict[str, Any]]:
    """Log lines as dicts: timestamp, level (lower case), message."""
    return [{"timestamp": iso(entry.timestamp), "level": entry.level, "message": entry.message}
            for entry in entries]


def job_detail(result: JobResult, logs: Optional[Iterable[LogEntry]] = None) -> dict[str, Any]:
    """Everything `poll` knows about a job, plus its log when `logs` is given."""
    detail = job_summary(result)
    detail.update({
        "progress_details": result.progress_details,
        "result": result.result,
        "traceback": result.traceback,
        "metadata": result.metadata,
        "depends_on": list(result.depends_on),
        "worker_id": result.worker_id,
        "cron": result.cron,
    })
    if logs is not None:
        detail["logs"] = log_entries(logs)
    return detail


def retry_all_report(report: RetryAllReport) -> dict[str, Any]:
    """What re-queuing the dead-letter queue did: `retried` (ids), their `count`, and
    `skipped`, each job not re-queued as `id`, `name` and `reason`."""
    return {"retried": list(report.retried), "count": len(report.retried),
            "skipped": [{"id": entry.job_id, "name": entry.name, "reason": entry.reason}
                        for entry in report.skipped]}
