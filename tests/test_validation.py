"""Bad input: every mistake raises a clear error at the call and leaves the store unchanged."""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import pytest

from jobcore import (DependencyError, FakeClock, InvalidJob, Job, JobManager, JobPriority, JobStatus, MemoryRepository,
                     RetryableError, SQLiteRepository, UnknownFunction)
from jobcore.manager import LONGEST_PERIOD


def noop() -> None:
    return None


CONSTRUCTION_ERRORS: list[tuple[str, Callable[[], Any], type[Exception], str]] = [
    ("no function", lambda: Job(), ValueError, "function"),
    ("not callable", lambda: Job(function=42), TypeError, "function"),
    ("priority str", lambda: Job(function=noop, priority="high"), TypeError, "priority"),
    ("priority float", lambda: Job(function=noop, priority=1.5), TypeError, "priority"),
    ("priority huge", lambda: Job(function=noop, priority=2**63), ValueError, "priority"),
    ("priority huge below", lambda: Job(function=noop, priority=-(2**63) - 1), ValueError, "priority"),
    ("timeout str", lambda: Job(function=noop, timeout="10"), TypeError, "timeout"),
    ("timeout zero", lambda: Job(function=noop, timeout=0), ValueError, "timeout"),
    ("timeout negative", lambda: Job(function=noop, timeout=-1), ValueError, "timeout"),
    ("timeout nan", lambda: Job(function=noop, timeout=math.nan), ValueError, "timeout"),
    # An int past a float's range raised a bare OverflowError (math.isnan converts it first).
    ("timeout past a float", lambda: Job(function=noop, timeout=10**400), ValueError, "timeout"),
    ("delay past a float", lambda: Job(function=noop, retry_delay=10**400), ValueError, "retry_delay"),
    ("backoff past a float", lambda: Job(function=noop, retry_backoff=10**400), ValueError, "retry_backoff"),
    ("retries negative", lambda: Job(function=noop, max_retries=-1), ValueError, "max_retries"),
    ("retries float", lambda: Job(function=noop, max_retries=1.0), TypeError, "max_retries"),
    ("delay negative", lambda: Job(function=noop, retry_delay=-0.1), ValueError, "retry_delay"),
    ("backoff below one", lambda: Job(function=noop, retry_backoff=0.5), ValueError, "retry_backoff"),
    ("jitter str", lambda: Job(function=noop, retry_jitter="yes"), TypeError, "retry_jitter"),
    ("args dict", lambda: Job(function=noop, args={"a": 1}), TypeError, "args"),
    ("kwargs list", lambda: Job(function=noop, kwargs=[1]), TypeError, "kwargs"),
    ("kwargs key", lambda: Job(function=noop, kwargs={1: 2}), TypeError, "kwargs"),
    ("scheduled str", lambda: Job(function=noop, scheduled_at="tomorrow"), TypeError, "scheduled_at"),
    # A store cannot show these back: poll and every listing raised; year 0 did not name the field.
    ("scheduled year 4000", lambda: Job(function=noop, scheduled_at=datetime(4000, 1, 1)), ValueError,
     "scheduled_at"),
    ("scheduled min", lambda: Job(function=noop, scheduled_at=datetime.min), ValueError, "scheduled_at"),
    # Stores keep float seconds: in 3000 a float holds a time to about 4 µs, not 1.
    ("scheduled 3000 to the microsecond", lambda: Job(function=noop, scheduled_at=datetime(3000, 6, 1, 0, 0, 0, 123457)),
     ValueError, "scheduled_at"),
    ("scheduled min utc", lambda: Job(function=noop, scheduled_at=datetime.min.replace(tzinfo=timezone.utc)),
     ValueError, "scheduled_at"),
    ("retries huge", lambda: Job(function=noop, max_retries=2**63), ValueError, "max_retries"),
    ("memory limit huge", lambda: Job(function=noop, isolation="process", memory_limit=2**63), ValueError,
     "memory_limit"),
    ("tags str items", lambda: Job(function=noop, tags={1}), TypeError, "tags"),
    ("metadata not json", lambda: Job(function=noop, metadata={"x": object()}), TypeError, "metadata"),
    ("metadata list", lambda: Job(function=noop, metadata=[1]), TypeError, "metadata"),
    # json.dumps takes an int key and stores it as "2": on every store, metadata is a JSON dict
    ("metadata int key", lambda: Job(function=noop, metadata={"a": [{2: "x"}]}), TypeError, "metadata.*str dict keys"),
    ("isolation", lambda: Job(function=noop, isolation="fiber"), ValueError, "isolation"),
    ("depends_on ints", lambda: Job(function=noop, depends_on=[1]), TypeError, "depends_on"),
    ("empty name", lambda: Job(function_name=""), ValueError, "function_name"),
    ("owner int", lambda: Job(function=noop, owner=5), TypeError, "owner"),
]


@pytest.mark.parametrize("label,build,error,field", CONSTRUCTION_ERRORS,
                         ids=[case[0] for case in CONSTRUCTION_ERRORS])
def test_bad_job_fields_raise_naming_the_field(label: str, build: Callable[[], Any],
                                               error: type[Exception], field: str) -> None:
    with pytest.raises(error, match=field):
        build()


def test_priority_accepts_enum_and_any_int() -> None:
    assert Job(function=noop, priority=JobPriority.HIGH).priority == JobPriority.HIGH
    assert Job(function=noop, priority=-3).priority == -3


ENQUEUE_ERRORS: list[tuple[str, Callable[[], Job], type[Exception], str]] = [
    ("unserialisable arg", lambda: Job(function=noop, args=(object(),)), TypeError, "args"),
    ("unserialisable kwarg", lambda: Job(function=noop, kwargs={"when": datetime.now()}), TypeError, "kwargs"),
    ("oversized payload", lambda: Job(function=noop, args=("x" * 2_000_000,)), ValueError, "payload"),
    ("oversized metadata", lambda: Job(function=noop, metadata={"blob": "x" * 2_000_000}), ValueError,
     "metadata.*payload limit"),  # stored whole before: the limit is per payload, metadata one
    # the limit is in bytes of UTF-8: characters were counted, and 4 MB of emoji passed
    ("oversized payload of 2-byte characters", lambda: Job(function=noop, args=("é" * 600_000,)), ValueError,
     "args.*1200009 bytes.*payload limit"),
    ("oversized payload of 4-byte characters", lambda: Job(function=noop, args=("😀" * 300_000,)), ValueError,
     "args.*1200009 bytes.*payload limit"),
    ("unknown function", lambda: Job(function_name="nope"), UnknownFunction, "nope"),
    ("unknown dependency", lambda: Job(function=noop, depends_on=["missing"]), DependencyError, "missing"),
    ("nan argument", lambda: Job(function=noop, args=(math.nan,)), TypeError, "args"),
    ("schedule that never fires", lambda: Job(function=noop, cron="0 0 30 2 *"), InvalidJob, "Job.cron.*does not fire"),
    # a str Python allows and UTF-8 cannot store: the driver's bare UnicodeEncodeError named no field
    ("lone surrogate in an argument", lambda: Job(function=noop, args=("a\ud800",)), TypeError, "args.*surrogate"),
    # json writes 1, True and None keys as "1", "true", "null": the function got other keys,
    # and {1: 'a', '1': 'b'} lost an entry
    ("int key in a nested argument", lambda: Job(function=noop, args=(1, [{"a": {1: "a", "1": "b"}}])), TypeError,
     r"args\[1\].*str dict keys.*int key 1"),
    ("None key in a kwarg", lambda: Job(function=noop, kwargs={"d": {None: 1}}), TypeError,
     r"kwargs\['d'\].*NoneType key None"),
    ("lone surrogate in metadata", lambda: Job(function=noop, metadata={"k": "\udc00"}), TypeError,
     "metadata.*surrogate"),
]


@pytest.mark.parametrize("label,build,error,text", ENQUEUE_ERRORS, ids=[case[0] for case in ENQUEUE_ERRORS])
def test_bad_enqueue_raises_and_changes_nothing(make_manager: Any, db_path: str, label: str,
                                               build: Callable[[], Job], error: type[Exception],
                                               text: str) -> None:
    manager = make_manager(db_path)
    manager.enqueue(Job(function=noop))
    with pytest.raises(error, match=text):
        manager.enqueue(build())
    assert manager.get_stats()["total"] == 1
    assert manager.get_queue_size() == 1


def test_mutating_a_job_after_construction_is_checked_again_at_enqueue(make_manager: Any, db_path: str) -> None:
    manager = make_manager(db_path)
    job = Job(function=noop)
    job.priority = "urgent"  # type: ignore[assignment]
    with pytest.raises(TypeError, match="priority"):
        manager.enqueue(job)
    assert manager.get_stats()["total"] == 0


# Changed after construction, in place or by assignment: `enqueue` checks the job again.
MUTATIONS: list[tuple[str, Callable[[Job], None], type[Exception], str]] = [
    ("priority assigned", lambda job: setattr(job, "priority", "urgent"), TypeError, "priority"),
    ("max_retries assigned", lambda job: setattr(job, "max_retries", -1), ValueError, "max_retries"),
    ("kwarg key added", lambda job: job.kwargs.__setitem__(1, "x"), TypeError, "kwargs"),
    ("progress_callback added", lambda job: job.kwargs.__setitem__("progress_callback", 1), ValueError,
     "progress_callback"),
    ("tag added", lambda job: job.tags.add(7), TypeError, "tags"),  # type: ignore[arg-type]
    ("metadata added", lambda job: job.metadata.__setitem__("at", object()), TypeError, "metadata"),
    ("dependency added", lambda job: job.depends_on.append(42), TypeError, "depends_on"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize("label,mutate,error,text", MUTATIONS, ids=[case[0] for case in MUTATIONS])
@pytest.mark.parametrize("batch", [False, True], ids=["enqueue", "enqueue_many"])
def test_a_job_changed_in_place_after_construction_is_checked_again(
        make_manager: Any, db_path: str, label: str, mutate: Callable[[Job], None],
        error: type[Exception], text: str, batch: bool) -> None:
    manager = make_manager(db_path)
    job = Job(function=noop, kwargs={"a": 1}, tags={"t"}, metadata={"m": 1})
    mutate(job)
    with pytest.raises(error, match=text):
        manager.enqueue_many([job]) if batch else manager.enqueue(job)
    assert manager.get_stats()["total"] == 0


def test_enqueue_rejects_non_jobs_and_duplicate_ids(make_manager: Any, db_path: str) -> None:
    manager = make_manager(db_path)
    with pytest.raises(TypeError, match="Job"):
        manager.enqueue("not a job")  # type: ignore[arg-type]
    job = Job(function=noop)
    manager.enqueue(job)
    with pytest.raises(InvalidJob, match="already exists"):  # a JobcoreError, as api.md says
        manager.enqueue(job)
    with pytest.raises(ValueError, match="twice"):
        manager.enqueue_many([Job(function=noop, id="same"), Job(function=noop, id="same")])
    assert manager.get_stats()["total"] == 1


def test_manager_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="max_workers"):
        JobManager(":memory:", max_workers=0)
    with pytest.raises(ValueError, match="lease_timeout"):
        JobManager(":memory:", lease_timeout=-1)
    with pytest.raises(TypeError, match="repository"):
        JobManager(42)  # type: ignore[arg-type]
    # NaN turned the cap off; past 100 years a retry time has soon no date to show
    for bad in (math.nan, math.inf, 1e12):
        with pytest.raises(ValueError, match="max_retry_delay"):
            JobManager(":memory:", max_retry_delay=bad)
    with pytest.raises(ValueError, match="lease_timeout"):
        JobManager(":memory:", lease_timeout=math.nan)
    # A seed for rng, or a clock that is not one, was accepted: the first retry of every
    # job then failed it for good with an AttributeError from inside the engine.
    for seed in (42, 0):
        with pytest.raises(TypeError, match="rng must be a random.Random"):
            JobManager(":memory:", rng=seed)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="clock must be"):
        JobManager(":memory:", clock=object())  # type: ignore[arg-type]
    JobManager(":memory:", rng=random.Random(0), clock=FakeClock()).close()
    manager = JobManager(":memory:")
    for bad in (-1, 1.5, True):  # run_pending(-1) ran nothing and returned 0; stop(timeout=-1) passed
        with pytest.raises(ValueError, match="limit"):
            manager.run_pending(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        manager.stop(timeout=-1)
    assert manager.run_pending(0) == 0
    manager.close()


def test_a_worker_id_that_is_no_id_is_refused() -> None:
    # It was taken as given: an int or a tuple ran jobs on memory, and a tuple failed start()
    # on SQLite with a RepositoryError, a lone surrogate with a UnicodeEncodeError.
    for bad in (5, ("w",), b"w"):
        with pytest.raises(TypeError, match="worker_id must be a str"):
            JobManager(":memory:", worker_id=bad)  # type: ignore[arg-type]
    for bad in ("", "w\x00", "w\udcff"):
        with pytest.raises(ValueError, match="worker_id must be non-empty"):
            JobManager(":memory:", worker_id=bad)
    manager = JobManager(":memory:", worker_id="web-1")
    assert manager.worker_id == "web-1"
    manager.close()


def test_a_bad_discovery_interval_is_refused_before_the_database_is_made(tmp_path: Any) -> None:
    # (it was checked after the file, its -wal and -shm were made, and left them open)
    path = tmp_path / "d.db"
    for bad in (0, math.nan):
        with pytest.raises(ValueError, match="discovery_interval"):
            JobManager(str(path), discovery_interval=bad)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", [math.nan, math.inf, 10**400, 4e9, -1])
def test_a_busy_timeout_that_is_no_wait_is_refused_at_construction(tmp_path: Any, bad: Any) -> None:
    # NaN and infinity were taken: a write that waited on another thread's then raised a
    # bare ValueError or OverflowError from the lock's acquire
    with pytest.raises(ValueError, match="^busy_timeout must be a number of seconds from 0 to 100 years"):
        SQLiteRepository(str(tmp_path / "b.db"), busy_timeout=bad)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("cap", [0, -5, 1.5, "1000", True])
def test_a_payload_cap_no_payload_fits_is_refused_at_construction(tmp_path: Any, cap: Any) -> None:
    # given max_payload_bytes=-5 or 0: accepted, then every enqueue with arguments failed,
    # and so did every job's result (a function that returned 1 ended FAILED)
    path = tmp_path / "cap.db"
    with pytest.raises(ValueError, match="max_payload_bytes"):
        SQLiteRepository(str(path), max_payload_bytes=cap)
    assert not path.exists()  # refused before the file was made


def test_a_payload_cap_of_one_byte_or_none_is_taken(tmp_path: Any) -> None:
    for cap in (1, None):
        repository = SQLiteRepository(str(tmp_path / f"{cap}.db"), max_payload_bytes=cap)
        assert repository.max_payload_bytes == cap
        repository.close()


@pytest.mark.parametrize("name", ["lease_timeout", "poll_interval", "discovery_interval"])
def test_a_period_past_100_years_is_refused(name: str) -> None:
    # A lease_timeout of 1e11 s was taken: the lease, ending past the times a store keeps,
    # was read back by other managers' recovery as corrupt, ended, and logged into the
    # running job's log on every heartbeat.
    with pytest.raises(ValueError) as refused:
        JobManager(":memory:", **{name: 1e11})
    assert str(refused.value) == f"{name} must be at most 3155760000 seconds (100 years), got 100000000000.0"
    JobManager(":memory:", **{name: LONGEST_PERIOD}).close()


@pytest.mark.parametrize("name", ["lease_timeout", "poll_interval", "discovery_interval", "max_retry_delay"])
def test_a_period_past_a_floats_range_is_refused_naming_it(name: str) -> None:
    # was a bare "OverflowError: int too large to convert to float"
    with pytest.raises(ValueError, match=f"^{name} must be at most"):
        JobManager(":memory:", **{name: 10**400})


def test_a_timeout_or_retention_past_a_floats_range_means_for_ever(make_manager: Any, db_path: str) -> None:
    # given a started manager and a job it completed
    manager = make_manager(db_path, max_workers=1)
    manager.register_function("noop", noop)
    manager.start()
    job_id = manager.enqueue(Job(function_name="noop"))

    # when every duration is an int no float holds (each raised OverflowError)
    result = manager.wait(job_id, timeout=10**400)
    manager.stop(timeout=10**400)  # api.md: "any number, however large"
    deleted = manager.cleanup_old_results(10**400)

    # then they mean what math.inf means: no limit, and nothing finished that long ago
    assert result.status is JobStatus.COMPLETED
    assert not manager.running
    assert deleted == 0 and manager.poll(job_id).status is JobStatus.COMPLETED


def test_the_longest_lease_ends_at_a_time_the_store_keeps(db_path: str) -> None:
    clock = FakeClock()
    producer = JobManager(db_path, producer=True, clock=clock)
    job_id = producer.enqueue(Job(function_name="elsewhere.task"))
    repository = SQLiteRepository(db_path)
    now = clock.time()
    assert repository.claim(job_id, "a-worker", now, now + LONGEST_PERIOD) is not None

    recovered = repository.recover(now + 1.0)  # what another manager does every lease / 4

    assert recovered.requeued == () and repository.logs(job_id) == []
    assert producer.poll(job_id).status is JobStatus.RUNNING
    repository.close()
    producer.close()


def test_stop_takes_a_timeout_longer_than_the_platform_waits() -> None:
    manager = JobManager(":memory:", max_workers=2).start()

    manager.stop(timeout=1e300)  # OverflowError: timestamp out of range for platform time_t

    assert not manager.running
    manager.close()


@pytest.mark.parametrize("delay", [math.inf, math.nan, 1e12, -1, True, "30"])
def test_a_retryable_error_with_a_delay_no_retry_time_can_follow_is_refused(delay: Any) -> None:
    # Accepted, inf / nan / 1e12 made a job whose poll() and list_jobs() raised (no date
    # for its retry time), or one never retried.
    with pytest.raises(ValueError, match="RetryableError.delay"):
        RetryableError("later", delay=delay)
    assert RetryableError("later", delay=3600).delay == 3600.0


def test_cleanup_and_wait_arguments_are_checked(make_manager: Any, db_path: str) -> None:
    manager = make_manager(db_path)
    with pytest.raises(ValueError, match="retention_days"):
        manager.cleanup_old_results(retention_days=-1)
    with pytest.raises(TypeError, match="retention_days must be a number of days"):
        manager.cleanup_old_results(retention_days="7")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="retention_days"):
        manager.cleanup_old_results(retention_days=math.nan)  # was 0 deleted, no error


def test_job_ids_are_distinct_uuid4_hex_strings_in_threads_and_forked_children() -> None:
    import os
    import threading
    import uuid

    def check(ids: list[str]) -> None:
        for job_id in ids:
            parsed = uuid.UUID(job_id)
            assert parsed.hex == job_id and parsed.version == 4 and parsed.variant == uuid.RFC_4122

    # more than one pool of random bytes per thread (256 ids each), in several threads
    made: list[list[str]] = [[] for _ in range(4)]
    threads = [threading.Thread(target=lambda out=out: out.extend(Job(function=noop).id for _ in range(600)))
               for out in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    ids = [job_id for out in made for job_id in out]
    check(ids)
    assert len(set(ids)) == len(ids) == 2400

    # a forked child draws bytes of its own, not the rest of its parent's pool
    Job(function=noop)  # the parent's pool now holds unused ids
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id and leave at once
        os.write(write, Job(function=noop).id.encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    check([child])
    assert child != Job(function=noop).id


@pytest.mark.parametrize("limit", [-1, 1.5, "2", True, 2**63])
def test_a_bad_limit_or_offset_is_a_value_error_on_every_store(make_manager: Any, db_path: str, limit: Any) -> None:
    # get_dead_letter_queue took them unchecked: -1 gave every job on SQLite and all but
    # one on memory, 1.5 a raw sqlite3.IntegrityError, "2" a TypeError on memory only
    from jobcore import MemoryRepository
    for manager in (make_manager(db_path), make_manager(MemoryRepository())):
        for call in (lambda: manager.get_dead_letter_queue(limit), lambda: manager.list_jobs(limit=limit),
                     lambda: manager.list_jobs(offset=limit)):
            with pytest.raises(ValueError, match="limit|offset"):
                call()


def test_progress_details_over_the_payload_limit_fail_at_the_call(make_manager: Any, db_path: str) -> None:
    # (they were stored whole; the limit holds for each payload: arguments, result,
    # metadata, progress details). Checked in the job's thread, so the job sees the error.
    from jobcore import InvalidJob
    seen: list[str] = []

    def reports(progress_callback: Callable[..., None]) -> str:
        progress_callback(0.5, "small", rows=3)
        try:
            progress_callback(0.6, "big", blob="x" * 2_000_000)
        except InvalidJob as exc:
            seen.append(str(exc))
        return "done"

    manager = make_manager(db_path).start()
    manager.register_function("reports", reports)
    result = manager.wait(manager.enqueue(Job(function_name="reports")), timeout=10)
    assert result.result == "done" and result.progress_details == {"rows": 3}
    assert len(seen) == 1 and "progress details" in seen[0] and "payload limit" in seen[0]


@pytest.mark.parametrize("field", ["name", "owner", "unique_key", "tags", "function_name"])
def test_a_lone_surrogate_in_a_text_field_is_refused_naming_it(field: str) -> None:
    value: Any = {"t\ud800"} if field == "tags" else "a\ud800b"
    with pytest.raises(TypeError, match=f"Job.{field}: holds a lone surrogate"):
        Job(function=noop, **{field: value})


@pytest.mark.parametrize("field", ["id", "tags"])
def test_a_nul_in_an_id_or_a_tag_is_refused_naming_it(field: str) -> None:
    # (SQLite's JSON functions end such a string at the NUL: a job with that id was stored
    # and never claimed; PostgreSQL cannot store one at all)
    value: Any = {"urgent\x00x"} if field == "tags" else "job\x00one"
    with pytest.raises(ValueError, match=f"Job.{field}: must not contain a NUL character"):
        Job(function=noop, **{field: value})


@pytest.mark.parametrize("number", [float("nan"), float("inf")])
def test_metadata_holding_nan_or_infinity_is_refused_for_every_store(number: float) -> None:
    # JSON has no NaN or Infinity: a persistent store refused it when storing, while the
    # memory store kept it (metadata is "a JSON-serialisable dict" with every repository)
    with pytest.raises(TypeError, match="Job.metadata: must be JSON-serialisable"):
        Job(function=noop, metadata={"score": number})


def never_accepted(*args: Any) -> None:
    return None


def batch_mate() -> None:
    return None


def _bad_priority() -> Job:
    job = Job(function=never_accepted)
    job.priority = "urgent"  # type: ignore[assignment]
    return job


# `Job(function=f)` registers f (under its qualified name) only if the job is accepted.
REJECTIONS: list[tuple[str, Callable[[], Job], type[Exception], str]] = [
    ("unserialisable arg", lambda: Job(function=never_accepted, args=(object(),)), TypeError, "args"),
    ("oversized payload", lambda: Job(function=never_accepted, args=("x" * 2_000_000,)), ValueError, "payload"),
    ("unknown dependency", lambda: Job(function=never_accepted, depends_on=["missing"]), DependencyError, "missing"),
    ("bad priority type", _bad_priority, TypeError, "priority"),
    ("schedule that never fires", lambda: Job(function=never_accepted, cron="0 0 30 2 *"), InvalidJob, "cron"),
    ("id already stored", lambda: Job(function=never_accepted, id="taken"), InvalidJob, "already exists"),
]
NEVER_ACCEPTED = f"{__name__}.never_accepted"
BATCH_MATE = f"{__name__}.batch_mate"


@pytest.mark.parametrize("label,build,error,text", REJECTIONS, ids=[case[0] for case in REJECTIONS])
@pytest.mark.parametrize("how", ["enqueue", "enqueue_many", "started"])
def test_a_rejected_job_leaves_its_function_unregistered(make_manager: Any, db_path: str, label: str,
                                                         build: Callable[[], Job], error: type[Exception],
                                                         text: str, how: str) -> None:
    # given a manager (started or not) where neither function is registered
    manager = make_manager(db_path)
    manager.enqueue(Job(function=noop, id="taken"))
    if how == "started":
        manager.start()

    # when a job of each is rejected: alone, or with a good job in one batch
    with pytest.raises(error, match=text):
        if how == "enqueue_many":
            manager.enqueue_many([Job(function=batch_mate), build()])
        else:
            manager.enqueue(build())

    # then neither is registered: a job naming them is refused as it was before
    for name in (NEVER_ACCEPTED, BATCH_MATE):
        with pytest.raises(UnknownFunction, match=name):
            manager.enqueue(Job(function_name=name))
    assert manager.get_stats()["total"] == 1


def test_a_rejected_job_leaves_a_function_registered_before_registered(make_manager: Any, db_path: str) -> None:
    manager = make_manager(db_path)
    manager.register_function(NEVER_ACCEPTED, never_accepted)
    with pytest.raises(TypeError, match="args"):
        manager.enqueue(Job(function=never_accepted, args=(object(),)))
    manager.start()
    assert manager.wait(manager.enqueue(Job(function_name=NEVER_ACCEPTED)), timeout=10).error is None


def first_seen_here(n: int) -> int:
    return n


def test_good_and_bad_jobs_of_a_new_function_from_many_threads(make_manager: Any, db_path: str) -> None:
    # given a started manager, and threads enqueueing at once, each a rejected then an
    # accepted job of a function not registered yet
    import threading

    manager = make_manager(db_path, max_workers=2).start()
    barrier = threading.Barrier(4)
    accepted: list[str] = []
    refused: list[Exception] = []

    def enqueue_both(n: int) -> None:
        barrier.wait(10)
        for i in range(20):
            try:
                manager.enqueue(Job(function=first_seen_here, args=(object(),)))
            except TypeError as exc:
                refused.append(exc)
            accepted.append(manager.enqueue(Job(function=first_seen_here, args=(n * 100 + i,))))

    threads = [threading.Thread(target=enqueue_both, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    # then every bad one was refused, every good one runs, and the function stays registered
    assert len(refused) == 80 and len(accepted) == 80
    assert sorted(manager.wait(job_id, timeout=10).result for job_id in accepted) == sorted(
        n * 100 + i for n in range(4) for i in range(20))
    name = f"{__name__}.first_seen_here"
    assert manager.wait(manager.enqueue(Job(function_name=name, args=(7,))), timeout=10).result == 7


def test_a_job_id_or_filter_of_the_wrong_type_is_named(make_manager: Any, db_path: str) -> None:
    # (text no job can hold: test_text_no_store_holds.py)
    manager = make_manager(db_path)
    for call in (lambda: manager.poll(5), lambda: manager.cancel(5), lambda: manager.get_logs(5)):
        with pytest.raises(TypeError, match="job_id must be a str"):
            call()
    with pytest.raises(TypeError, match="owner must be str"):
        manager.list_jobs(owner=5)
    for tags in ([None], ["a", None], [5]):  # (a None tag raised a TypeError naming nothing)
        with pytest.raises(TypeError, match="tags must be str"):
            manager.list_jobs(tags=tags)


def test_the_memory_store_refuses_metadata_json_would_change_as_sqlite_does() -> None:
    # given through the repository API (no Job to check it): an int key beside its str
    # twin was stored and one entry lost; a date raised a bare TypeError
    from jobcore.errors import InvalidJobType
    from jobcore.repository.base import JobRecord
    store = MemoryRepository()
    for metadata in ({1: "a", "1": "b"}, {"d": datetime(2024, 1, 1).date()}):
        with pytest.raises(InvalidJobType, match="metadata"):
            store.insert([JobRecord(id="x", function_name="f", name="f", metadata=metadata)], 0.0)
    assert store.get("x") is None


def test_metadata_comes_back_as_json_gives_it_on_every_store(make_manager: Any, db_path: str) -> None:
    # The memory store gave back a tuple, an IntEnum and a str subclass as given, SQLite
    # (and PostgreSQL) a list, an int and a str: one poll, two answers.
    class Text(str):
        pass

    metadata = {"pair": (1, 2), "priority": JobPriority.HIGH, "text": Text("t"), "nested": {"t": ("a",)}}
    shown = []
    for store in (MemoryRepository(), db_path):
        manager = make_manager(store)
        shown.append(manager.poll(manager.enqueue(Job(function=noop, metadata=metadata))).metadata)
    assert shown[0] == shown[1] == {"pair": [1, 2], "priority": 10, "text": "t", "nested": {"t": ["a"]}}
    assert [[type(value) for value in each.values()] for each in shown] == [[list, int, str, dict]] * 2


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_schedule_whose_first_fire_is_past_the_last_time_a_store_keeps_is_refused(
        kind: str, make_manager: Any, db_path: str) -> None:
    # Its scheduled_at (1 January 3871) is in range, its first fire (1 June) is not: the
    # memory store kept it, SQLite and PostgreSQL stored it and read it back as corrupt.
    manager = make_manager(MemoryRepository() if kind == "memory" else db_path)
    with pytest.raises(InvalidJob, match="cron: its first fire .3871-06-01"):
        manager.enqueue(Job(function=noop, cron="0 0 1 6 *", scheduled_at=datetime(3871, 1, 1)))
    assert manager.get_stats()["total"] == 0


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_scheduled_at_accepted_is_shown_back_to_the_microsecond(kind: str, make_manager: Any, db_path: str) -> None:
    # given times a float of seconds holds exactly: any before 2242, whole seconds (and
    # halves) later
    manager = make_manager(MemoryRepository() if kind == "memory" else db_path)
    times = [datetime(2242, 3, 1, 0, 0, 0, 999_999), datetime(1700, 1, 1, 0, 0, 0, 1),
             datetime(3000, 6, 1, 12, 0, 0), datetime(3800, 1, 1, 0, 0, 0, 500_000)]
    ids = [manager.enqueue(Job(function=noop, scheduled_at=at)) for at in times]

    # (an offset holding a fraction of a second was refused, its microseconds not the UTC time's)
    odd = datetime(2030, 1, 1, 12, 0, 0, tzinfo=timezone(timedelta(hours=1, microseconds=500)))
    assert manager.poll(manager.enqueue(Job(function=noop, scheduled_at=odd))).scheduled_at == odd.astimezone().replace(tzinfo=None)
    # (and one in a zone's fold or gap: `==` across zones said the instant was not kept)
    from zoneinfo import ZoneInfo
    new_york = ZoneInfo("America/New_York")
    for local in (datetime(2025, 11, 2, 1, 30, tzinfo=new_york), datetime(2025, 11, 2, 1, 30, fold=1, tzinfo=new_york),
                  datetime(2025, 3, 9, 2, 30, tzinfo=new_york)):
        shown = manager.poll(manager.enqueue(Job(function=noop, scheduled_at=local))).scheduled_at
        assert shown.timestamp() == local.timestamp()
    # then poll shows each back as given
    for job_id, at in zip(ids, times):
        shown = manager.poll(job_id).scheduled_at
        assert shown == at and shown.microsecond == at.microsecond


def test_tags_that_are_no_str_or_collection_are_named_not_ignored(make_manager: Any, db_path: str) -> None:
    # given one job tagged "a" and one untagged
    manager = make_manager(db_path)
    manager.register_function("noop", lambda: None)
    tagged = manager.enqueue(Job(function_name="noop", tags={"a"}))
    manager.enqueue(Job(function_name="noop"))
    # when tags is a falsy or other non-iterable value (0 and False once listed every job,
    # unfiltered; 5 raised Python's own "Value after * must be an iterable")
    for bad in (0, False, 5, 3.5, b"a"):
        with pytest.raises(TypeError, match="tags must be a str or a collection of str"):
            manager.list_jobs(tags=bad)
    # and a generator filters as its list does (the checks used it up before the store read it)
    assert [r.job_id for r in manager.list_jobs(tags=(t for t in ["a"]))] == [tagged]
    assert [r.job_id for r in manager.list_jobs(tags=iter(("a",)))] == [tagged]


def test_depends_on_drops_repeats_without_comparing_every_pair() -> None:
    # given a fan-in of 2,000 dependencies: each was compared with every one kept before
    # it (32,000 took 4 s to build, again at enqueue and in the dead-letter queue)
    comparisons = [0]

    class CountedId(str):
        __hash__ = str.__hash__

        def __eq__(self, other: object) -> bool:
            comparisons[0] += 1
            return str.__eq__(self, other)

    ids = [CountedId(f"{n:032x}") for n in range(2000)]
    job = Job(function=len, depends_on=[*ids, ids[0], ids[5]])
    assert job.depends_on == ids and comparisons[0] < 100
