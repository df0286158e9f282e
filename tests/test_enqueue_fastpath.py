"""The shortcuts of the enqueue path end where the general code would: same state, same errors.

`Job._already_normal` against the field-by-field checks, `record_for` (positional) against
the keyword construction it replaced, `MemoryRepository._insert_one` against
`_insert_batch`, and `enqueue` (one job) against `enqueue_many` (a batch).
"""

from __future__ import annotations

import dataclasses
import math
from datetime import datetime, timedelta
from typing import Any, Callable

import pytest

from jobcore import Job, JobManager, JobPriority, JobStatus, MemoryRepository
from jobcore.records import record_for
from jobcore.repository.base import JobRecord
from jobcore.scheduler import next_fire_epoch


def noop(*args: Any, **kwargs: Any) -> None:
    return None


class Name(str):
    pass


def _unnamed() -> None:
    return None


UNNAMED = _unnamed
UNNAMED.__qualname__ = ""


SOON = datetime.now() + timedelta(hours=1)

# Keyword arguments of `Job`: valid ones, ones only the full checks normalise, invalid ones.
JOB_FIELDS: list[dict[str, Any]] = [
    {"function_name": "task"},
    {"function": noop},
    {"function": noop, "function_name": "task", "name": "named"},
    {"function": lambda: None, "function_name": "task"},
    {"function_name": "task", "args": [1, 2], "kwargs": {"a": 1}},
    {"function_name": "task", "priority": JobPriority.HIGH},
    {"function_name": "task", "priority": -3, "max_retries": 0},
    {"function_name": "task", "priority": True},
    {"function_name": "task", "priority": 2**40},
    {"function_name": "task", "timeout": 2.5, "retry_delay": 0.0, "retry_backoff": 1.0},
    {"function_name": "task", "timeout": 3, "retry_delay": 2, "retry_backoff": 3},
    {"function_name": "task", "timeout": 0.0},
    {"function_name": "task", "timeout": math.inf},
    {"function_name": "task", "retry_delay": math.nan},
    {"function_name": "task", "retry_delay": -0.5},
    {"function_name": "task", "retry_backoff": 0.5},
    {"function_name": "task", "retry_jitter": False},
    {"function_name": "task", "retry_jitter": 1},
    {"function_name": "task", "max_retries": True},
    {"function_name": "task", "max_retries": -1},
    {"function_name": "task", "tags": {"a", "b"}, "metadata": {"m": [1, 2]}, "owner": "me"},
    {"function_name": "task", "tags": ["a", "a"]},
    {"function_name": "task", "tags": {1}},
    {"function_name": "task", "metadata": {"m": object()}},
    {"function_name": "task", "metadata": {"m": math.nan}},
    {"function_name": "task", "kwargs": {1: 2}},
    {"function_name": "task", "kwargs": {"progress_callback": 1}},
    {"function_name": "task", "scheduled_at": SOON, "unique_key": "k"},
    {"function_name": "task", "scheduled_at": "soon"},
    {"function_name": "task", "cron": "*/5 * * * *"},
    {"function_name": "task", "cron_timezone": "UTC"},
    {"function_name": "task", "depends_on": ["a", "a", "b"]},
    {"function_name": "task", "depends_on": "a"},
    {"function_name": "task", "isolation": "process", "memory_limit": 1 << 20},
    {"function_name": "task", "isolation": "fiber"},
    {"function_name": "task", "memory_limit": 1 << 20},
    {"function_name": "task", "retry_on": lambda exc: True},
    {"function_name": "task", "retry_on": 5},
    {"function_name": "task", "owner": 5},
    {"function_name": Name("task"), "name": Name("n")},
    {"function_name": "  "},
    {"function_name": 5},
    {"function": 5, "function_name": "task"},
    {"function": 5},
    {"function": Name},  # a class: named by its own qualified name
    {"function": Name("callable?")},
    {"function": len, "args": ("abc",)},
    {"function": "task".upper},
    {"function": lambda: None, "name": "lambda"},
    {"function": UNNAMED},  # no qualified name: the full checks raise naming the field
    {"function_name": "task", "args": {"a": 1}},
    {"function_name": "task", "name": 7},
    {"function_name": "task", "id": ""},
]


def outcome(build: Callable[[], Job], then: Callable[[Job], None] = lambda job: None) -> Any:
    """The job's fields after `build` and `then`, or the error either raised."""
    try:
        job = build()
        then(job)
    except (TypeError, ValueError) as exc:
        return type(exc), str(exc)
    return {name: getattr(job, name) for name in (f.name for f in dataclasses.fields(Job))}


@pytest.mark.parametrize("fields", JOB_FIELDS, ids=[str(n) for n in range(len(JOB_FIELDS))])
def test_the_quick_check_ends_as_the_full_checks(monkeypatch: pytest.MonkeyPatch,
                                                  fields: dict[str, Any]) -> None:
    fields = {"id": "job-1", **fields}
    quick = outcome(lambda: Job(**fields))
    monkeypatch.setattr(Job, "_already_normal", lambda self: False)
    assert outcome(lambda: Job(**fields)) == quick


def test_the_quick_check_takes_common_jobs() -> None:
    for job in (Job(function_name="task", args=(1,)), Job(function=noop, kwargs={"a": 1}, priority=0),
                Job(function_name="task", tags={"t"}, metadata={"m": 1}, timeout=5.0, owner="o")):
        assert job._already_normal()
    # A job given only its callable is named by the quick check, as the full checks name it.
    job = Job(function=noop, args=(1,))
    job.function_name = job.name = None
    assert job._already_normal() and job.function_name == f"{__name__}.noop" and job.name == "noop"
    # Ints where floats are kept are converted by the full checks; after that, quick.
    job = Job(function_name="task", retry_delay=2)
    assert job.retry_delay == 2.0 and type(job.retry_delay) is float and job._already_normal()


MUTATIONS: list[Callable[[Job], None]] = [
    lambda job: None,
    lambda job: setattr(job, "priority", 1.5),
    lambda job: setattr(job, "retry_delay", 4),
    lambda job: setattr(job, "timeout", -1.0),
    lambda job: setattr(job, "name", None),
    lambda job: setattr(job, "args", [3]),
    lambda job: job.tags.add(7),  # type: ignore[arg-type]
    lambda job: job.kwargs.__setitem__("progress_callback", 1),
    lambda job: job.depends_on.append("other"),
    lambda job: setattr(job, "cron", "* * * * *"),
]


@pytest.mark.parametrize("mutate", MUTATIONS, ids=[str(n) for n in range(len(MUTATIONS))])
def test_validating_again_after_a_change_ends_as_the_full_checks(monkeypatch: pytest.MonkeyPatch,
                                                                  mutate: Callable[[Job], None]) -> None:
    def changed_then_validated(job: Job) -> None:
        mutate(job)
        job.validate()

    def build() -> Job:
        return Job(function=noop, id="job-1", kwargs={"a": 1}, tags={"t"})

    quick = outcome(build, changed_then_validated)
    monkeypatch.setattr(Job, "_already_normal", lambda self: False)
    assert outcome(build, changed_then_validated) == quick


def keyword_record(job: Job, now: float) -> JobRecord:
    """`record_for` as it was written before it passed the fields by position."""
    scheduled_at = None if job.scheduled_at is None else job.scheduled_at.timestamp()
    due_later = scheduled_at is not None and scheduled_at > now
    run_at = scheduled_at if due_later else None
    if job.cron is not None:
        run_at = next_fire_epoch(job.cron, job.cron_timezone, max(now, scheduled_at or now))
        due_later = True
    return JobRecord(
        id=job.id, function_name=job.function_name, name=job.name, args=job.args,  # type: ignore[arg-type]
        kwargs=dict(job.kwargs), priority=int(job.priority),
        status=JobStatus.SCHEDULED if due_later else JobStatus.PENDING,
        scheduled_at=scheduled_at, run_at=run_at, max_retries=job.max_retries,
        retry_delay=job.retry_delay, retry_backoff=job.retry_backoff, retry_jitter=job.retry_jitter,
        timeout=job.timeout, tags=frozenset(job.tags), metadata=dict(job.metadata), owner=job.owner,
        unique_key=job.unique_key, isolation=job.isolation, memory_limit=job.memory_limit,
        depends_on=tuple(job.depends_on), blocked=len(job.depends_on), cron=job.cron,
        cron_timezone=job.cron_timezone,
    )


RECORD_JOBS: list[Callable[[], Job]] = [
    lambda: Job(function_name="task", args=(1,)),
    lambda: Job(function=noop, kwargs={"a": 1}, priority=JobPriority.CRITICAL, timeout=2.0),
    lambda: Job(function_name="task", scheduled_at=SOON, tags={"x"}, metadata={"m": 1}, owner="o"),
    lambda: Job(function_name="task", scheduled_at=datetime(2001, 1, 1), unique_key="k"),
    lambda: Job(function_name="task", cron="*/5 * * * *", cron_timezone="UTC"),
    lambda: Job(function_name="task", depends_on=["a", "b"], retry_jitter=False, max_retries=0),
    lambda: Job(function=noop, isolation="process", memory_limit=1 << 24),
]


@pytest.mark.parametrize("build", RECORD_JOBS, ids=[str(n) for n in range(len(RECORD_JOBS))])
def test_record_for_gives_the_record_keyword_construction_gives(build: Callable[[], Job]) -> None:
    job, now = build(), 1_700_000_000.0
    made, expected = record_for(job, now), keyword_record(job, now)
    for field in dataclasses.fields(JobRecord):
        assert getattr(made, field.name) == getattr(expected, field.name), field.name
        assert type(getattr(made, field.name)) is type(getattr(expected, field.name)), field.name
    assert made.kwargs is not job.kwargs and made.metadata is not job.metadata


def stored_state(repo: MemoryRepository) -> Any:
    rows = {job_id: dataclasses.astuple(row) for job_id, row in repo._jobs.items()}
    by_status = {status: list(rows) for status, rows in repo._by_status.items()}
    return rows, by_status, repo._next_seq, dict(repo._unique), dict(repo._dependents)


@pytest.mark.parametrize("build", [RECORD_JOBS[0], RECORD_JOBS[1], RECORD_JOBS[2], RECORD_JOBS[4]],
                         ids=["plain", "options", "scheduled", "cron"])
def test_storing_one_record_alone_matches_the_batch_path(build: Callable[[], Job]) -> None:
    quick, general = MemoryRepository(), MemoryRepository()
    for repo in (quick, general):
        repo.insert([record_for(Job(function_name="task", id="before"), 5.0)], 5.0)
    job = build()
    given_quick, given_general = record_for(job, 10.0), record_for(job, 10.0)
    assert quick._insert_one(given_quick, 10.0) == job.id
    assert general._insert_batch([given_general], 10.0) == [job.id]
    assert given_quick == given_general
    assert stored_state(quick) == stored_state(general)
    stored = quick._jobs[job.id]
    assert stored is not given_quick and stored.kwargs is not given_quick.kwargs
    for insert in (lambda r: quick._insert_one(r, 11.0), lambda r: general._insert_batch([r], 11.0)):
        with pytest.raises(ValueError, match="already exists") as error:
            insert(record_for(job, 11.0))
        assert str(error.value) == f"Job.id: a job with id {job.id!r} already exists"
    assert stored_state(quick) == stored_state(general)


def test_enqueue_of_one_job_stores_and_queues_as_a_batch_does() -> None:
    manager = JobManager(MemoryRepository())
    manager.register_function("task", noop)
    one = Job(function_name="task", args=(1,), tags={"t"}, priority=7)
    batch = [Job(function_name="task", args=(1,), tags={"t"}, priority=7) for _ in range(2)]
    assert manager.enqueue(one) == one.id
    assert manager.enqueue_many(batch) == [job.id for job in batch]
    ignored = {"id", "seq", "created_at"}
    rows = [manager.repository.get(job.id) for job in (one, *batch)]
    shown = [{f.name: getattr(row, f.name) for f in dataclasses.fields(JobRecord) if f.name not in ignored}
             for row in rows]
    assert shown[0] == shown[1] == shown[2]
    assert len(manager._queue) == 3
    assert manager.run_pending() == 3


def test_json_text_and_errors_are_those_of_the_encoder() -> None:
    from jobcore import serialization

    loop: list[Any] = []
    loop.append(loop)
    values = [[[1, "é\u2028"], {"a": 1.5, "b": None}], {"k": [True]}, "text", 3, 1e300, None,
              [math.nan], [math.inf], [object()], {1: 2, None: 3, 2.5: 4}, {(1,): 2}, loop, [10**40]]

    def result(encode: Callable[[Any], str], value: Any) -> Any:
        try:
            return encode(value)
        except (TypeError, ValueError) as exc:
            return type(exc), str(exc)

    for value in values:
        assert result(serialization._c_to_json, value) == result(serialization._encoder.encode, value)
    assert serialization._to_json is serialization._c_to_json  # this Python's json has its C encoder


def test_decoding_a_column_gives_what_json_loads_gives_or_its_error() -> None:
    import json

    from jobcore import serialization

    texts = ["null", "1", "-2.5e3", '"a"', '"\\u00e9"', "[1,[2,{}]]", '{"a":null}', "true", "NaN",
             "-Infinity", " 1", "1 ", "\n[1]\n", "[1]x", "[1", "", "nul", "{}{}", '"\\ud800"']

    def outcome(decode: Callable[[str], Any], text: str) -> Any:
        try:
            value = decode(text)
        except ValueError as exc:
            return str(exc)
        return type(value), repr(value)

    for text in texts:
        expected = outcome(json.loads, text)
        if isinstance(expected, str):  # json.loads's error, told with the column it was read from
            expected = f"result holds text that is not JSON ({expected})"
        assert outcome(serialization.decode, text) == expected, text
    assert serialization.decode(None) is None


def test_a_record_copy_has_every_field_of_the_original() -> None:
    values = {f.name: object() for f in dataclasses.fields(JobRecord)}
    record = JobRecord(**values)
    clone = record.copy()
    assert type(clone) is JobRecord and clone is not record
    for name, value in values.items():
        assert getattr(clone, name) is value, name
    clone.kwargs = {}
    assert record.kwargs is values["kwargs"]
