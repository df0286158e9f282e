"""`Completion`: what one process remembers of a job it completed, so that `wait` can
answer without reading the row back (see `waiting.Settlements`), and which completions
are worth remembering: small ones, of jobs that reported no progress.
"""

from __future__ import annotations

import operator
from typing import Any, NamedTuple, Optional

from . import serialization, sizes
from .models import JobResult, JobStatus
from .records import local_datetime, new_result
from .repository.base import JobRecord, Settlement

# A completed job's result longer than this (as JSON) is not remembered (see Completion).
REMEMBERED_RESULT_CHARS = 1024
# Nor one whose kept fields (its metadata, tags, name...) take more memory than about
# this many bytes (see `sizes.bytes_left`): each is remembered among thousands (see
# waiting.Settlements), and they may be as large as a payload (4,096 jobs with 100 KB of
# metadata each held 410 MB). Those of a job without metadata or tags: about 200.
REMEMBERED_FIELDS_BYTES = 4096



# The fields of a claimed record a `Completion` keeps: those `poll` shows that completing
# leaves as they were (see `JobRepository.apply`). One C-level call reads them all.
_KEPT = ("id", "name", "progress_message", "progress_details", "attempts", "created_at",
         "scheduled_at", "started_at", "owner", "tags", "metadata", "function_name",
         "priority", "max_retries", "depends_on", "worker_id", "cron")
_read_kept = operator.attrgetter(*_KEPT)


class Completion(NamedTuple):
    """A job this process completed: enough to tell what its row now holds without
    reading it back. `kept` holds the claimed record's fields named in _KEPT (it ran
    without reporting progress, so nothing else changed them in the row meanwhile);
    `result` is what the repository stored (the JSON text, for a persistent one); `at`
    the completion time. Made by the dispatcher for every completion, so kept cheap."""

    kept: tuple[Any, ...]
    result: Any
    at: float
    persistent: bool

    @staticmethod
    def of(record: JobRecord, reported_progress: bool, settlement: Settlement, at: float,
           persistent: bool) -> Optional["Completion"]:
        """The completion `settlement` recorded, if it is one worth remembering: not when
        the job reported progress, nor (in a persistent store) for a long result, nor
        when its kept fields are large (`REMEMBERED_FIELDS_BYTES`)."""
        if settlement.kind != "complete" or reported_progress:
            return None
        result = settlement.encoded_result if persistent else settlement.result
        if persistent and (result is None or len(result) > REMEMBERED_RESULT_CHARS):
            return None
        if not _kept_fields_fit(record):
            return None
        return Completion(_read_kept(record), result, at, persistent)

    def job_result(self) -> JobResult:
        """What `poll` would show of the job's row now (the same as `result_of` of it),
        made straight from the kept fields: `wait` returns this for every job it waits on,
        so it is built without an intermediate `JobRecord`."""
        (job_id, name, message, details, attempts, created_at, scheduled_at, started_at,
         owner, tags, metadata, function_name, priority, max_retries, depends_on, worker_id,
         cron) = self.kept
        result = serialization.decode(self.result) if self.persistent else self.result
        return new_result(
            job_id, name, JobStatus.COMPLETED, 1.0, message, dict(details), result, None, None,
            None, attempts, local_datetime(created_at), local_datetime(scheduled_at), local_datetime(started_at),
            local_datetime(self.at), owner, frozenset(tags), dict(metadata), function_name,
            priority, max_retries, tuple(depends_on), worker_id, cron)


def _kept_fields_fit(record: JobRecord) -> bool:
    """Whether the fields of `record` a `Completion` keeps take about
    REMEMBERED_FIELDS_BYTES or fewer (see `sizes.bytes_left`). For most jobs (without
    metadata, tags, dependencies, progress details, owner or cron) that is six truth
    tests and three `len` calls (about 0.2 µs); no field is ever encoded."""
    try:
        left = REMEMBERED_FIELDS_BYTES - 3 * sizes.STR - len(record.name) - len(record.function_name) - len(
            record.progress_message)
    except TypeError:  # not text (a row edited by hand): not worth the care
        return False
    if not (record.metadata or record.tags or record.depends_on or record.progress_details
            or record.owner or record.cron):
        return left >= 0
    for value in (record.metadata, record.tags, record.depends_on, record.progress_details,
                  record.owner, record.cron):
        if value and left >= 0:
            left = sizes.bytes_left(value, left)
    return left >= 0
