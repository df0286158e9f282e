"""The values the storage contract speaks in: `JobRecord` (one stored job), `QueueEntry`,
`Settlement` (with its `LastProgress`), `Cascade`, `Recovery`, `CancelOutcome` and `WorkerInfo`.

Plain data and the small checks (and the dead-letter queue's order) every backend shares; no storage code, no clock. The
interface that takes and returns them is `repository.base.JobRepository`, which
re-exports them all.
"""

from __future__ import annotations

import enum
import heapq
import json
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Callable, Collection, Iterable, NamedTuple, Optional, Sequence

from ..errors import InvalidJob, InvalidJobType, RepositoryError
from ..models import JobStatus
from ..serialization import encode


# One empty frozenset for every record without tags: since Python 3.10 each frozenset()
# is a new 216-byte object, a fifth of what the memory store keeps per job.
NO_TAGS: frozenset[str] = frozenset()


@dataclass(slots=True)
class JobRecord:
    """One stored job: everything a worker needs to run it and `poll` needs to report it.

    Times are float epoch seconds. `run_at` is when a SCHEDULED job becomes due (a future
    `scheduled_at`, a retry's back-off, or a cron schedule's next fire). `blocked` counts
    the dependencies not yet COMPLETED. `decode_error` is set, instead of raising, when a
    stored row cannot be decoded, so that one corrupt job fails alone.
    """

    id: str
    function_name: str
    name: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    priority: int = 5
    status: JobStatus = JobStatus.PENDING
    seq: int = 0
    created_at: float = 0.0
    scheduled_at: Optional[float] = None
    run_at: Optional[float] = None
    started_at: Optional[float] = None
    completed_at: Optional[float] = None
    attempts: int = 0
    max_retries: int = 3
    retry_delay: float = 1.0
    retry_backoff: float = 2.0
    retry_jitter: bool = True
    timeout: Optional[float] = None
    tags: frozenset[str] = NO_TAGS
    metadata: dict[str, Any] = field(default_factory=dict)
    owner: Optional[str] = None
    unique_key: Optional[str] = None
    isolation: str = "thread"
    memory_limit: Optional[int] = None
    depends_on: tuple[str, ...] = ()
    blocked: int = 0
    progress: float = 0.0
    progress_message: str = ""
    progress_details: dict[str, Any] = field(default_factory=dict)
    result: Any = None
    error: Optional[str] = None
    error_type: Optional[str] = None
    traceback: Optional[str] = None
    worker_id: Optional[str] = None
    lease_expires_at: Optional[float] = None
    cancel_requested: bool = False
    cron: Optional[str] = None
    cron_timezone: Optional[str] = None
    decode_error: Optional[str] = None

    @property
    def is_schedule(self) -> bool:
        """True for a cron schedule row (it fires runs; it never runs itself)."""
        return self.cron is not None

    def copy(self) -> "JobRecord":
        """A shallow copy (as `copy.copy`, several times faster)."""
        return _copy_record(self)

    def queue_entry(self) -> "QueueEntry":
        """The key the manager's ready queue orders this job by."""
        # tuple.__new__ is what QueueEntry(...) runs, minus its Python-level __new__.
        return _new_tuple(QueueEntry, (self.id, self.priority, self.seq, self.run_at,
                                       self.function_name, self.cron is not None))


# JobRecord's fields in order, for code that passes every one by position (binding 40
# keywords costs as much again as the record itself, on paths run once per job). Checked
# here, so that a field added or moved fails at import instead of storing values in the
# wrong fields.
RECORD_FIELDS = (
    "id", "function_name", "name", "args", "kwargs", "priority", "status", "seq", "created_at",
    "scheduled_at", "run_at", "started_at", "completed_at", "attempts", "max_retries",
    "retry_delay", "retry_backoff", "retry_jitter", "timeout", "tags", "metadata", "owner",
    "unique_key", "isolation", "memory_limit", "depends_on", "blocked", "progress",
    "progress_message", "progress_details", "result", "error", "error_type", "traceback",
    "worker_id", "lease_expires_at", "cancel_requested", "cron", "cron_timezone", "decode_error")
if tuple(f.name for f in fields(JobRecord)) != RECORD_FIELDS:
    raise ImportError("JobRecord's fields changed: update RECORD_FIELDS and the code passing them by position")

_new_tuple = tuple.__new__


# The one empty dict that rows kept by the memory store share for each dict field they
# leave empty (see `stored_copy`). Nothing may change it: the store only ever replaces
# a row's dict fields, and every record it gives out is a `detached_copy`.
SHARED_EMPTY: dict[str, Any] = {}


_NESTED = (dict, list, tuple)


def copy_nested(value: dict[str, Any]) -> dict[str, Any]:
    """A copy of `value` and of the dicts, lists and tuples in it, at any depth, as JSON
    gives them back (dicts, a `Counter` or `defaultdict` too, as plain dicts; lists and
    tuples as lists), without recursion (a value nested 1,000 deep is one JSON holds); one
    met twice is copied once, so a cycle stays a cycle. Other values are kept. A flat dict
    costs what `dict(value)` does, and a little more."""
    top = dict(value)
    if not any(isinstance(item, _NESTED) for item in top.values()):
        return top
    copies: dict[int, Any] = {id(value): top}
    stack: list[Any] = [top]
    while stack:
        container = stack.pop()
        pairs = container.items() if container.__class__ is dict else enumerate(container)
        for key, item in list(pairs):
            if not isinstance(item, _NESTED):
                continue
            copy = copies.get(id(item))
            if copy is None:
                copy = copies[id(item)] = dict(item) if isinstance(item, dict) else list(item)
                stack.append(copy)
            container[key] = copy
    return top


def _record_copier(detach: bool = False, share_empty: bool = False) -> Callable[[JobRecord], JobRecord]:
    """The function behind `JobRecord.copy`: it sets every field of an instance made without
    `__init__` straight from the original (0.8 µs; `__init__` with 40 arguments took 2.4 µs,
    and the memory store copies a record on every write and read). It is generated, as
    dataclasses generates `__init__`, so that it always names every field of the class.
    With `detach`, each dict field (those whose default is a new dict) gets a shallow
    copy of its own in the same pass: `detached_copy`; with `share_empty` too, an empty
    one gets `SHARED_EMPTY` instead: `stored_copy`."""
    def copied(name: str) -> str:
        # Metadata and progress details are the store's own, nested dicts and lists too
        # (a caller appending to a list in `poll(...).metadata` changed every later answer);
        # kwargs, like args and results, are the objects given (see MemoryRepository).
        copy = f"nested(record.{name})" if name in ("metadata", "progress_details") else f"dict(record.{name})"
        if share_empty:
            return f"{copy} if record.{name} else shared_empty"
        return copy
    lines = [f"    clone.{f.name} = {copied(f.name)}\n" if detach and f.default_factory is dict
             else f"    clone.{f.name} = record.{f.name}\n" for f in fields(JobRecord)]
    source = "def copy_record(record):\n    clone = new(JobRecord)\n" + "".join(lines) + "    return clone\n"
    namespace: dict[str, Any] = {"new": object.__new__, "JobRecord": JobRecord, "shared_empty": SHARED_EMPTY,
                                 "nested": copy_nested}
    exec(source, namespace)  # noqa: S102 - source built above from the field names only
    return namespace["copy_record"]  # type: ignore[no-any-return]


_copy_record = _record_copier()

# A shallow copy whose dict fields (kwargs, metadata, progress_details) are copies too:
# whoever holds it can change them without touching the original (the memory store's
# `_detached`). One generated pass, rather than `copy` and then each dict set again.
detached_copy = _record_copier(detach=True)

_stored_as_given = _record_copier(detach=True, share_empty=True)


def stored_copy(record: JobRecord) -> JobRecord:
    """`detached_copy` for a row the memory store keeps: its empty dict fields share
    `SHARED_EMPTY` (three empty dicts are 192 bytes, a fifth of what it keeps per job).
    Its metadata is what JSON gives back, as the persistent stores keep it (a tuple in it
    a list, an IntEnum an int): the same `poll` on every store."""
    row = _stored_as_given(record)
    if row.metadata:  # (refused as SQLite refuses it: a record given through the repository API)
        text = encode(row.metadata, field="metadata")
        try:
            row.metadata = json.loads(text)
        except RecursionError:
            raise InvalidJobType("metadata", "must be JSON-serialisable: nested too deeply to decode") from None
    return row


class QueueEntry(NamedTuple):
    """What the manager needs to index a queued job without loading its payload."""

    job_id: str
    priority: int
    seq: int
    run_at: Optional[float]
    function_name: str
    is_schedule: bool = False


def _frozen_init(cls: type) -> type:
    """Give the frozen dataclass `cls` a faster `__init__` of the same signature: it fills
    the instance's `__dict__` in one call, where the generated one calls
    `object.__setattr__` once per field (a `Settlement` took 3.8 µs to make, 1.9 µs so;
    one is made per job recorded). Equality, hashing, repr and frozenness stay the
    dataclass's own. Generated from the fields, so it always names every one of them."""
    namespace: dict[str, Any] = {}
    params, items = [], []
    for f in fields(cls):
        assert f.default_factory is MISSING, "only plain defaults are supported"
        if f.default is MISSING:
            params.append(f.name)
        else:
            namespace[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
        items.append(f"{f.name!r}: {f.name}")
    source = (f"def __init__(self, {', '.join(params)}):\n"
              f"    self.__dict__.update({{{', '.join(items)}}})\n")
    exec(source, namespace)  # noqa: S102 - source built above from the field names only
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = init  # type: ignore[misc]
    return cls


LogLine = tuple[float, str, str]  # a job's log line: (epoch seconds, level, message)


class LastProgress(NamedTuple):
    """An attempt's last progress report, carried by its `Settlement`: `progress` (0.0 to
    1.0), `message`, `details`, and `encoded_details`, the details already encoded by
    `serialization.encode` if the engine has them (a store that keeps JSON may store that
    text as it is)."""

    progress: float
    message: str
    details: dict[str, Any]
    encoded_details: Optional[str] = None


@_frozen_init
@dataclass(frozen=True)
class Settlement:
    """The recorded end of one attempt of a job held by a worker.

    `kind`: "complete" (with `result`), "retry" (SCHEDULED again at `retry_at`), "fail"
    (FAILED: the dead-letter queue), "cancel" (CANCELLED while running) or "release"
    (handed back unstarted: PENDING again, the attempt not counted). `note` is logged.
    `encoded_result`, if given, is `result` already encoded by `serialization.encode`: a
    store that keeps JSON may store it as it is instead of encoding `result` again.
    `seq`, if given and not 0 (a record's seq before it is stored), is the job's `seq` as
    the store assigned it: a store may find the row by it (checking `job_id` too) rather
    than through an index on ids.
    `progress`, if given, is the attempt's last progress report, not in the row yet: a
    store that says `stores_settlement_progress` writes it (as `update_progress` would)
    in the same step, before the outcome, so the row ends with it (a completion then sets
    `progress` to 1.0 and keeps the report's message and details).
    `logs`: the attempt's log lines not in the store yet, `(at, level, message)` each, in
    the order logged: a store that says `stores_settlement_logs` appends them (as
    `add_logs` would) in the same step."""

    kind: str
    job_id: str
    attempt: int
    result: Any = None
    error: Optional[str] = None
    error_type: Optional[str] = None
    traceback: Optional[str] = None
    retry_at: Optional[float] = None
    note: Optional[str] = None
    encoded_result: Optional[str] = None
    seq: Optional[int] = None
    progress: Optional[LastProgress] = None
    logs: tuple[LogLine, ...] = ()

    def carrying(self, progress: Optional[LastProgress], logs: tuple[LogLine, ...]) -> "Settlement":
        """A copy of this settlement carrying `progress` and `logs`: one dict copy, where
        `dataclasses.replace` checks every field (0.6 µs against 3.4, measured; one is
        made per job that reported progress or logged)."""
        copy: Settlement = object.__new__(Settlement)
        copy.__dict__.update(self.__dict__, progress=progress, logs=logs)
        return copy


@dataclass(frozen=True)
class WorkerInfo:
    """A manager that runs jobs, as the worker registry records it (times: epoch seconds)."""

    worker_id: str
    host: str
    pid: int
    started_at: float
    heartbeat_at: float
    running: tuple[str, ...] = ()
    # The worker's own lease_timeout (seconds): its entry counts as silent, and is
    # reaped, once it has not beaten for that long. None for an entry written without
    # one (an older jobcore, or a backend that stores none): the reader's lease is used.
    lease_timeout: Optional[float] = None


@dataclass(frozen=True)
class Recovery:
    """What `JobRepository.recover` took back: jobs re-queued, and jobs that ended FAILED
    (their last attempt was lost: the dead-letter queue) or CANCELLED (cancel requested)."""

    requeued: tuple[QueueEntry, ...] = ()
    failed: tuple[str, ...] = ()
    cancelled: tuple[str, ...] = ()


class CancelOutcome(enum.Enum):
    """What `JobRepository.cancel` did."""

    CANCELLED = "cancelled"      # was pending or scheduled; now CANCELLED
    REQUESTED = "requested"      # is running; `cancel_requested` is now set
    FINISHED = "finished"        # already terminal; nothing changed
    NOT_FOUND = "not_found"      # no such job


@_frozen_init
@dataclass(frozen=True)
class Cascade:
    """The effect of a state change on dependent jobs.

    `released`: dependents whose last dependency just COMPLETED (now ready or due).
    `cancelled`: dependents, transitively, just CANCELLED because this job will never
    complete.
    `cancelled_instead`: a retry or failure that ended the job CANCELLED instead, as
    `finish_cancelled` would have, or a release (a hand-back) that ended it CANCELLED
    instead of PENDING, as `cancel` of a pending job would have, because its cancellation
    had been requested."""

    released: tuple[QueueEntry, ...] = ()
    cancelled: tuple[str, ...] = ()
    cancelled_instead: bool = False


class PartlyApplied(RepositoryError):
    """Raised by the default `JobRepository.apply` (one single-job call at a time, no
    transaction) when a settlement raised after earlier ones were recorded: `cascades`
    holds what those returned, in order (the first `len(cascades)` settlements); the one
    that raised is `__cause__`, and it and those after it were not recorded, nor any claim
    made. Retrying only those loses nothing."""

    def __init__(self, cascades: Sequence[Optional[Cascade]], cause: BaseException) -> None:
        super().__init__(f"{len(cascades)} settlements were recorded, then one failed: {cause}")
        self.cascades = list(cascades)


# The error and error type of a job stopped while running on a cancel request
# (`finish_cancelled`, or a retry or failure settled as CANCELLED instead).
CANCELLED_WHILE_RUNNING = "cancelled while running"
CANCELLED_ERROR_TYPE = "JobCancelled"
# The error of a job cancelled before it started: `cancel` of a pending or scheduled job
# (the reason the manager gives), or a claimed job handed back unstarted whose
# cancellation had been requested (`release`).
CANCELLED_BY_REQUEST = "cancelled by request"


def cancelled_instead_note(note: str) -> str:
    """The log line of a failed attempt (its `note`) that a store settled as CANCELLED
    instead of a retry or failure, the job's cancellation having been requested."""
    return f"{note}; its cancellation was requested: cancelled instead"


def id_taken(job_id: str) -> InvalidJob:
    """The error `insert` raises for a record whose id a stored job already has."""
    return InvalidJob("id", f"a job with id {job_id!r} already exists")


def require_plain_pending(record: "JobRecord") -> None:
    """Refuse (`ValueError`) a record `insert_and_apply` does not take: one that is not
    PENDING, has `depends_on` or a `unique_key`, or is a cron schedule."""
    if (record.depends_on or record.unique_key is not None or record.is_schedule
            or record.status is not JobStatus.PENDING):
        raise ValueError(f"job {record.id} is not a plain pending job")


def released_to_claim(cascades: Sequence[Optional["Cascade"]], now: float, limit: int,
                      functions: Optional[Collection[str]]) -> list[QueueEntry]:
    """What an `apply` given `claim_released=limit` claims: the dependents `cascades`
    released that are ready now (due, not cron schedules) and name one of `functions`
    (None: any), best first (priority, then seq), at most `limit` of them."""
    if limit <= 0:
        return []
    ready = [entry for cascade in cascades if cascade is not None for entry in cascade.released
             if not entry.is_schedule and (entry.run_at is None or entry.run_at <= now)
             and (functions is None or entry.function_name in functions)]
    return sorted(ready, key=lambda entry: (-entry.priority, entry.seq))[:limit]


def claim_limit(claim_ids: Sequence[str], up_to: Optional[int]) -> int:
    """How many jobs an `apply` with a top-up claims at most: `up_to`, never fewer than
    the ids it names."""
    return len(claim_ids) if up_to is None else max(up_to, len(claim_ids))


# A FAILED record's place in the dead-letter queue, which lists the greatest first (see
# `newest_failures`): whether it has a completed_at, that time, its seq, and its id.
FailedKey = tuple[bool, float, int, str]


def failed_key(record: "JobRecord") -> FailedKey:
    """`record`'s place in the dead-letter queue (`FailedKey`)."""
    at = record.completed_at
    return at is not None, 0.0 if at is None else at, record.seq, record.id


def newest_failures(records: Iterable["JobRecord"], limit: Optional[int]) -> list["JobRecord"]:
    """The dead-letter queue's order over FAILED `records`, up to `limit` (None: all): the
    most recently failed first (by `completed_at`, when the last attempt ended, which a
    `retry` resets, not when the job was enqueued); among jobs that failed at the same
    moment, the later enqueued (higher `seq`) first; a row without `completed_at` after
    every row with one. What `list_dead_letters` gives, for a store that sorts in Python."""
    if limit is None:
        return sorted(records, key=failed_key, reverse=True)
    return heapq.nlargest(limit, records, key=failed_key)


def schema_version(stored: Any, store: str, holder: str) -> int:
    """The schema version a store keeps as `stored`, as an int. A `RepositoryError` (its
    message starting with `store`, where; `holder`, what is then corrupt: "file",
    "schema") for one that is no number, or below 1, which no jobcore ever wrote (the
    migrations looked for its step: a `KeyError`)."""
    try:
        version = int(stored)
    except (TypeError, ValueError):
        raise RepositoryError(f"{store}: schema version {stored!r} is not a number: the {holder} is corrupt"
                              " or not jobcore's") from None
    if version < 1:
        raise RepositoryError(f"{store}: schema version {stored!r} is not one jobcore ever wrote: the {holder}"
                              " is corrupt or not jobcore's")
    return version
