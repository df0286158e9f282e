"""The data model: `Job` (what to run), `JobResult` (what happened), priorities, statuses.

Validation of a job's own fields lives here: `Job.validate` and its shortcut, over the
limits and one-field checks of `job_fields`; ids come from `job_ids`. What depends on
storage (JSON encoding, payload size) lives in `serialization`, and nothing here touches
threads or storage.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from datetime import datetime
from collections.abc import Iterable as IterableABC
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence, Union

from .cron import parsed as parsed_cron
from .errors import InvalidJob, InvalidJobType
# The limits, `function_qualname` and `new_job_id` are re-exported: jobcore imports them from here.
from .job_fields import (INT64_MAX as INT64_MAX, ISOLATIONS as ISOLATIONS, MAX_RETRIES as MAX_RETRIES,
                         PRIORITY_MAX as PRIORITY_MAX, PRIORITY_MIN as PRIORITY_MIN, TIME_LIMIT as TIME_LIMIT,
                         function_qualname as function_qualname)
from .job_fields import check_id_text as _check_id_text, check_number as _check_number, check_time as _check_time
from .job_ids import new_job_id as new_job_id
from .serialization import check_text, encode


class JobPriority(enum.IntEnum):
    """Named priorities. Any int is accepted too: a higher number runs first."""

    LOW = 0
    NORMAL = 5
    HIGH = 10
    CRITICAL = 20


class JobStatus(str, enum.Enum):
    """Where a job is in its life. `FAILED` is terminal: it is the dead-letter queue."""

    PENDING = "pending"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value

    @property
    def is_terminal(self) -> bool:
        """True for COMPLETED, FAILED and CANCELLED: nothing more will happen."""
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
UNFINISHED_STATUSES = frozenset({JobStatus.PENDING, JobStatus.SCHEDULED, JobStatus.RUNNING})

# Every state change a repository may make, checked in one place (see repository.base).
ALLOWED_TRANSITIONS: Mapping[JobStatus, frozenset[JobStatus]] = {
    JobStatus.PENDING: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.SCHEDULED}),
    JobStatus.SCHEDULED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.PENDING}),
    JobStatus.RUNNING: frozenset(
        {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.SCHEDULED, JobStatus.CANCELLED,
         JobStatus.PENDING}
    ),
    JobStatus.COMPLETED: frozenset(),
    JobStatus.FAILED: frozenset({JobStatus.PENDING}),
    JobStatus.CANCELLED: frozenset({JobStatus.PENDING}),
}


@dataclass
class Job:
    """A unit of work to run in the background.

    Give either `function` (a callable, registered under its qualified name if it is not
    already) or `function_name` (a name registered with the manager, which survives
    restarts). Every field is validated at construction and again at enqueue; a bad value
    raises `TypeError` or `ValueError` naming the field.
    """

    function: Optional[Callable[..., Any]] = None
    function_name: Optional[str] = None
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    name: Optional[str] = None
    priority: int = JobPriority.NORMAL
    scheduled_at: Optional[datetime] = None
    cron: Optional[str] = None
    cron_timezone: Optional[str] = None
    depends_on: Sequence[Union[str, Job]] = field(default_factory=list)
    max_retries: int = 3
    retry_delay: float = 1.0
    retry_backoff: float = 2.0
    retry_jitter: bool = True
    timeout: Optional[float] = None
    tags: Union[set[str], frozenset[str], list[str], tuple[str, ...]] = field(default_factory=set)
    metadata: dict[str, Any] = field(default_factory=dict)
    owner: Optional[str] = None
    unique_key: Optional[str] = None
    isolation: str = "thread"
    memory_limit: Optional[int] = None
    retry_on: Optional[Callable[[BaseException], bool]] = None
    id: str = field(default_factory=new_job_id)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check and normalise every field; raise `TypeError`/`ValueError` naming the field.

        Normalising makes `args` a tuple, `tags` a set and `depends_on` a list of ids."""
        # It runs twice per job (construction and enqueue): most jobs pass the one cheap
        # pass of `_already_normal`; any other job, and every invalid one, is checked field
        # by field below, so errors and their order are those of the checks below.
        if self._already_normal():
            return
        if self.function is not None and not callable(self.function):
            raise InvalidJobType("function", f"must be callable, got {self.function!r}")
        if self.function_name is not None:
            if not isinstance(self.function_name, str):
                raise InvalidJobType("function_name", f"must be a str, got {self.function_name!r}")
            if not self.function_name.strip():
                raise InvalidJob("function_name", "must not be empty")
            _check_id_text("function_name", self.function_name)  # matched in SQLite's JSON functions too
        if self.function is None and self.function_name is None:
            raise InvalidJob("function", "give a callable `function` or a registered `function_name`")
        if self.function_name is None:
            self.function_name = function_qualname(self.function)  # type: ignore[arg-type]
        if isinstance(self.args, list):
            self.args = tuple(self.args)
        if not isinstance(self.args, tuple):
            raise InvalidJobType("args", f"must be a tuple or list, got {type(self.args).__name__}")
        if not isinstance(self.kwargs, dict):
            raise InvalidJobType("kwargs", f"must be a dict, got {type(self.kwargs).__name__}")
        for key in self.kwargs:
            if not isinstance(key, str):
                raise InvalidJobType("kwargs", f"keys must be str, got {key!r}")
        if "progress_callback" in self.kwargs:
            raise InvalidJob("kwargs", "progress_callback is supplied by the worker; do not pass it")
        if self.name is None:
            self.name = getattr(self.function, "__name__", None) or self.function_name
        if not isinstance(self.name, str):
            raise InvalidJobType("name", f"must be a str, got {self.name!r}")
        check_text("name", self.name)
        if isinstance(self.priority, bool) or not isinstance(self.priority, int):
            raise InvalidJobType(
                "priority", f"must be a JobPriority or int, got {type(self.priority).__name__} {self.priority!r}"
            )
        if not PRIORITY_MIN <= self.priority <= PRIORITY_MAX:
            raise InvalidJob("priority", f"must fit in 64 bits (from -2**63 to 2**63 - 1), got {self.priority!r}")
        if self.scheduled_at is not None:
            if not isinstance(self.scheduled_at, datetime):
                raise InvalidJobType("scheduled_at", f"must be a datetime, got {self.scheduled_at!r}")
            _check_time("scheduled_at", self.scheduled_at)
        if self.cron_timezone is not None:
            if not isinstance(self.cron_timezone, str):
                raise InvalidJobType("cron_timezone", f"must be an IANA name, got {self.cron_timezone!r}")
            if self.cron is None:
                raise InvalidJob("cron_timezone", "only applies to a job with `cron`")
        if self.cron is not None:
            if not isinstance(self.cron, str):
                raise InvalidJobType("cron", f"must be a str, got {self.cron!r}")
            parsed_cron(self.cron, self.cron_timezone)  # raises naming the bad field
        self.depends_on = self._normalise_depends_on(self.depends_on)
        if self.cron is not None and self.depends_on:
            raise InvalidJob("depends_on", "a cron schedule cannot depend on jobs")
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int):
            raise InvalidJobType("max_retries", f"must be an int, got {self.max_retries!r}")
        if not 0 <= self.max_retries <= MAX_RETRIES:
            raise InvalidJob("max_retries", f"must be from 0 to {MAX_RETRIES:,}, got {self.max_retries!r}")
        self.retry_delay = _check_number("retry_delay", self.retry_delay, minimum=0.0)  # type: ignore[assignment]
        self.retry_backoff = _check_number("retry_backoff", self.retry_backoff, minimum=1.0)  # type: ignore[assignment]
        if not isinstance(self.retry_jitter, bool):
            raise InvalidJobType("retry_jitter", f"must be a bool, got {self.retry_jitter!r}")
        self.timeout = _check_number("timeout", self.timeout, minimum=0.0, allow_none=True,
                                     strictly_above=True)
        if isinstance(self.tags, (list, tuple, frozenset)):
            self.tags = set(self.tags)
        if not isinstance(self.tags, set):
            raise InvalidJobType("tags", f"must be a set of str, got {type(self.tags).__name__}")
        for tag in self.tags:
            if not isinstance(tag, str):
                raise InvalidJobType("tags", f"must hold only str, got {tag!r}")
            _check_id_text("tags", tag)
        if not isinstance(self.metadata, dict):
            raise InvalidJobType("metadata", f"must be a dict, got {type(self.metadata).__name__}")
        if self.metadata:
            encode(self.metadata, field="metadata")  # every store: a JSON dict, as the stores encode it
        if self.owner is not None:
            if not isinstance(self.owner, str):
                raise InvalidJobType("owner", f"must be a str, got {self.owner!r}")
            check_text("owner", self.owner)
        if self.unique_key is not None:
            if not isinstance(self.unique_key, str):
                raise InvalidJobType("unique_key", f"must be a str, got {self.unique_key!r}")
            check_text("unique_key", self.unique_key)
        if self.isolation not in ISOLATIONS:
            raise InvalidJob("isolation", f"must be one of {ISOLATIONS}, got {self.isolation!r}")
        if self.memory_limit is not None:
            if isinstance(self.memory_limit, bool) or not isinstance(self.memory_limit, int):
                raise InvalidJobType("memory_limit", f"must be a number of bytes (int), got {self.memory_limit!r}")
            if not 0 < self.memory_limit <= INT64_MAX:
                raise InvalidJob("memory_limit", f"must be > 0 bytes (and fit 64 bits), got {self.memory_limit!r}")
            if self.isolation != "process":
                raise InvalidJob("memory_limit", "only applies with isolation='process'")
        if self.retry_on is not None and not callable(self.retry_on):
            raise InvalidJobType("retry_on", f"must be a callable taking the exception, got {self.retry_on!r}")
        if not isinstance(self.id, str) or not self.id:
            raise InvalidJobType("id", f"must be a non-empty str, got {self.id!r}")
        _check_id_text("id", self.id)

    def _already_normal(self) -> bool:
        """True if every field holds exact built-in types that the checks in `validate`
        accept and would leave as they are (an unset `function_name` or `name` is set here
        as they set it).

        Only exact types (`x.__class__ is float`, not a subclass) and values the full checks
        take without converting are accepted: for them, the full checks change nothing
        (`float()` of a float is the same object, an empty `depends_on` list is kept).
        Anything else returns False, before or after setting `name`, and the full checks
        then run from the start, reaching the same state or raising the same error."""
        function, function_name, kwargs = self.function, self.function_name, self.kwargs
        if function_name is None and function is not None and callable(function):
            try:  # what the full checks set at this point, having passed the checks before it
                function_name = self.function_name = function_qualname(function)
            except InvalidJobType:
                return False  # the full checks raise it
        if not (function_name.__class__ is str and function_name.strip() and function_name.isascii()
                and "\x00" not in function_name
                and (function is None or callable(function))
                and self.args.__class__ is tuple and kwargs.__class__ is dict):
            return False
        if kwargs:
            for key in kwargs:
                if key.__class__ is not str:
                    return False
            if "progress_callback" in kwargs:
                return False
        if self.name is None:  # what the full checks set at this point, having passed the above
            self.name = getattr(function, "__name__", None) or function_name
        priority, depends_on, tags, metadata = self.priority, self.depends_on, self.tags, self.metadata
        max_retries, retry_delay, retry_backoff, timeout = (
            self.max_retries, self.retry_delay, self.retry_backoff, self.timeout)
        if not (self.name.__class__ is str and self.name.isascii()
                and (priority.__class__ is int or priority.__class__ is JobPriority)
                and PRIORITY_MIN <= priority <= PRIORITY_MAX
                and self.scheduled_at is None
                and self.cron is None and self.cron_timezone is None
                and depends_on.__class__ is list and not depends_on
                and max_retries.__class__ is int and 0 <= max_retries <= MAX_RETRIES
                # NaN fails every comparison, and infinity the upper bound.
                and retry_delay.__class__ is float and 0.0 <= retry_delay < math.inf
                and retry_backoff.__class__ is float and 1.0 <= retry_backoff < math.inf
                and (self.retry_jitter is True or self.retry_jitter is False)
                and (timeout is None or (timeout.__class__ is float and 0.0 < timeout < math.inf))
                and tags.__class__ is set and metadata.__class__ is dict
                and (self.owner is None or (self.owner.__class__ is str and self.owner.isascii()))
                and (self.unique_key is None or (self.unique_key.__class__ is str and self.unique_key.isascii()))
                and self.isolation.__class__ is str and self.isolation in ISOLATIONS
                and self.memory_limit is None
                and (self.retry_on is None or callable(self.retry_on))
                and self.id.__class__ is str and self.id and self.id.isascii() and "\x00" not in self.id):
            return False
        for tag in tags:
            if tag.__class__ is not str or not tag.isascii() or "\x00" in tag:
                return False
        if metadata:
            try:
                encode(metadata, field="metadata")
            except (TypeError, ValueError):
                return False  # the full checks raise naming it
        return True

    @staticmethod
    def _normalise_depends_on(value: Any) -> list[str]:
        if value is None or (value.__class__ is list and not value):
            return [] if value is None else value  # the common case, without the checks below
        if isinstance(value, (str, Job)):
            value = [value]
        if not isinstance(value, IterableABC):
            raise InvalidJobType("depends_on", f"must be a list of job ids, got {value!r}")
        ids: dict[str, None] = {}  # ordered, and a repeat found in constant time (32k ids: 4 s as a list)
        for item in value:
            if isinstance(item, Job):
                item = item.id
            if not isinstance(item, str) or not item:
                raise InvalidJobType("depends_on", f"must hold job ids (str), got {item!r}")
            ids[item] = None
        return list(ids)


@dataclass(frozen=True)
class JobResult:
    """A snapshot of a job's state, as `poll` returns it. Times are naive local datetimes."""

    job_id: str
    name: str
    status: JobStatus
    progress: float = 0.0
    progress_message: str = ""
    progress_details: dict[str, Any] = field(default_factory=dict)
    result: Any = None
    error: Optional[str] = None
    error_type: Optional[str] = None
    traceback: Optional[str] = None
    attempts: int = 0
    created_at: Optional[datetime] = None
    scheduled_at: Optional[datetime] = None
    started_at: Optional[datetime] = None
    completed_at: Optional[datetime] = None
    owner: Optional[str] = None
    tags: frozenset[str] = frozenset()
    metadata: dict[str, Any] = field(default_factory=dict)
    function_name: str = ""
    priority: int = JobPriority.NORMAL
    max_retries: int = 3
    depends_on: tuple[str, ...] = ()
    worker_id: Optional[str] = None
    cron: Optional[str] = None

    @property
    def is_terminal(self) -> bool:
        """True once nothing more will happen to the job."""
        return self.status.is_terminal

    @property
    def succeeded(self) -> bool:
        """True when the job COMPLETED."""
        return self.status is JobStatus.COMPLETED


class LogEntry(NamedTuple):
    """One line of a job's log."""

    timestamp: datetime
    level: str
    message: str
