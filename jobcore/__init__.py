"""jobcore: durable priority background jobs for Python, on SQLite, with the standard library.

    from jobcore import Job, JobManager

    with JobManager("jobs.db") as manager:
        job_id = manager.enqueue(Job(function=print, args=("hello",)))
        print(manager.wait(job_id).status)
"""

from .api import cancel, enqueue, get_job_manager, poll, register_job_function
from .clock import FakeClock, SystemClock
from .context import JobContext, current_job
from .cron import CronExpression
from .errors import (DependencyError, ImmediateRecursionError, InvalidCronExpression, InvalidJob,
                     InvalidJobType, JobcoreError, JobCancelled, JobNotFound, JobTimeout, PermanentError,
                     RepositoryError, RetryableError, UnknownFunction)
from .manager import JobManager
from .models import Job, JobPriority, JobResult, JobStatus, LogEntry
from .notifications import (CallbackNotificationChannel, EmailNotificationChannel,
                            NotificationChannel, WebhookNotificationChannel)
from .repository import JobRepository, MemoryRepository, SQLiteRepository

__version__ = "0.1.0"

__all__ = [
    "CallbackNotificationChannel", "CronExpression", "DependencyError", "EmailNotificationChannel",
    "FakeClock", "ImmediateRecursionError", "InvalidCronExpression", "InvalidJob", "InvalidJobType", "Job", "JobCancelled",
    "JobContext", "JobManager", "JobNotFound", "JobPriority", "JobRepository", "JobResult",
    "JobStatus", "JobTimeout", "JobcoreError", "LogEntry", "MemoryRepository", "NotificationChannel",
    "PermanentError", "RepositoryError", "RetryableError", "SQLiteRepository", "SystemClock",
    "UnknownFunction", "WebhookNotificationChannel", "cancel", "current_job", "enqueue",
    "get_job_manager", "poll", "register_job_function",
]
