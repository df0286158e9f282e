"""The shortcuts on the path that records finished jobs behave as the longer ways they skip."""

from __future__ import annotations

import dataclasses
import inspect
import random
from typing import Any, Optional

import pytest

from jobcore.execution import Outcome
from jobcore.models import JobStatus
from jobcore.notify_dispatch import NotificationDispatcher
from jobcore.repository.base import Cascade, JobRecord, Settlement
from jobcore.repository.memory import MemoryRepository
from jobcore.repository.values import SHARED_EMPTY, detached_copy
from jobcore.retry import is_transient
from jobcore.settle import completed, decide


@pytest.mark.parametrize("cls", [Settlement, Cascade])
def test_frozen_values_are_made_as_their_dataclass_would_make_them(cls: Any) -> None:
    # given the fields of a frozen value whose __init__ was replaced by a faster one
    names = [f.name for f in dataclasses.fields(cls)]
    # then it takes the same parameters, with the same defaults
    params = inspect.signature(cls).parameters
    assert list(params) == names
    for f in dataclasses.fields(cls):
        expected = inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default
        assert params[f.name].default == expected
    # and what it makes is frozen, equal by value, and shows every field in order
    value = cls(*[f"v{i}" for i in range(len(names))])
    assert dataclasses.astuple(value) == tuple(f"v{i}" for i in range(len(names)))
    assert value == dataclasses.replace(value) and hash(value) == hash(dataclasses.replace(value))
    assert repr(value).startswith(f"{cls.__name__}({names[0]}='v0'")
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(value, names[0], "other")
    with pytest.raises(TypeError):
        cls(**{names[0]: 1, "no_such_field": 2})


def test_a_detached_copy_has_dicts_of_its_own_and_every_other_field_as_is() -> None:
    record = JobRecord(id="j", function_name="f", name="n", args=([1],), kwargs={"a": [1]},
                       metadata={"m": 1}, progress_details={"d": 1}, tags=frozenset({"t"}))
    clone = detached_copy(record)
    assert clone == record
    for f in dataclasses.fields(JobRecord):
        original, copied = getattr(record, f.name), getattr(clone, f.name)
        if isinstance(original, dict):
            assert copied is not original
        else:
            assert copied is original


def test_memory_rows_share_an_empty_dict_and_never_see_each_others_changes() -> None:
    # given a memory store holding three jobs that carry no kwargs, metadata or progress
    # details, stored one at a time and in a batch
    repo = MemoryRepository()
    repo.insert([JobRecord(id="a", function_name="f", name="a")], 1.0)
    repo.insert([JobRecord(id="b", function_name="f", name="b"), JobRecord(id="c", function_name="f", name="c")], 1.0)
    rows = repo._jobs  # noqa: SLF001 - what the store keeps, to check it shares
    # then the rows share one empty dict for each of those fields
    for field in ("kwargs", "metadata", "progress_details"):
        assert getattr(rows["a"], field) is getattr(rows["b"], field) is getattr(rows["c"], field) is SHARED_EMPTY
    # when every record given out has its dicts changed, and one job reports progress
    for record in [repo.get("a"), repo.get_without_args("b"), *repo.list(), *repo.apply([], ["c"], "w", 2.0, 60.0)[1]]:
        assert record is not None
        record.kwargs["x"], record.metadata["x"], record.progress_details["x"] = 1, 2, 3
    claimed = repo.get("c")
    assert claimed is not None
    repo.update_progress("c", "w", claimed.attempts, 0.5, "half", {"step": 1}, 3.0)
    # then no other job shows any of it, and the shared dict is still empty
    assert SHARED_EMPTY == {}
    for job_id in ("a", "b"):
        record = repo.get(job_id)
        assert record is not None
        assert (record.kwargs, record.metadata, record.progress_details) == ({}, {}, {})
    assert repo.get("c").progress_details == {"step": 1}  # type: ignore[union-attr]


@pytest.mark.parametrize("attempt", [1, 3])
@pytest.mark.parametrize("cancel_requested", [False, True])
def test_completed_is_what_decide_returns_for_a_success(attempt: int, cancel_requested: bool) -> None:
    record = JobRecord(id="j", function_name="f", name="n", attempts=attempt)
    expected = decide(record, Outcome(value={"x": 1}), cancel_requested=cancel_requested,
                      classifier=is_transient, rng=random.Random(1), max_retry_delay=10.0,
                      now=5.0, ran_for=0.25, encoded_result='{"x": 1}')
    assert completed(record, {"x": 1}, 0.25, '{"x": 1}') == expected


def test_memory_apply_goes_through_a_subclass_s_claim_and_complete() -> None:
    # given a memory store whose subclass counts claims and completions
    class Counting(MemoryRepository):
        def __init__(self) -> None:
            super().__init__()
            self.calls: list[str] = []

        def claim(self, *args: Any) -> Optional[JobRecord]:
            self.calls.append("claim")
            return super().claim(*args)

        def complete(self, *args: Any) -> Optional[Cascade]:
            self.calls.append("complete")
            return super().complete(*args)

    repo = Counting()
    repo.insert([JobRecord(id="a", function_name="f", name="a"), JobRecord(id="b", function_name="f", name="b")],
                1.0)
    # when a job is claimed and, with the next claim, completed
    [claimed] = repo.apply([], ["a"], "w", 2.0, 60.0)[1]
    cascades, again = repo.apply([Settlement("complete", "a", claimed.attempts)], ["b"], "w", 3.0, 60.0)
    # then the subclass saw each of them, and they applied
    assert repo.calls == ["claim", "complete", "claim"]
    assert cascades == [Cascade()] and [r.id for r in again] == ["b"]


def test_channels_follow_adds_and_removes_in_order() -> None:
    class Channel:
        def send(self, event: Any) -> None:
            pass

    first, second, third = Channel(), Channel(), Channel()
    with NotificationDispatcher([first, second]) as dispatcher:
        assert dispatcher.channels == (first, second)
        dispatcher.add(third)
        dispatcher.remove(first)
        assert dispatcher.channels == (second, third)


# -- SQLite claims read a plain job's row 15 columns wide ----------------------------------

def _claim_cases(now: float) -> list[JobRecord]:
    """Jobs ready to claim: a plain one, and one for each field a plain job leaves at its
    default (each must come back exactly as a full read of its row shows it)."""
    def job(name: str, **fields: Any) -> JobRecord:
        given: dict[str, Any] = dict(args=(1, "a", [2]), kwargs={"k": {"v": 1.5}}, priority=3,
                                     max_retries=2, retry_delay=0.5, retry_backoff=3.0,
                                     retry_jitter=False, timeout=9.5, created_at=now)
        return JobRecord(id=f"job-{name}", function_name="f", name=name, **{**given, **fields})
    return [
        job("plain"),
        job("no-args", args=(), kwargs={}),
        job("tags", tags=frozenset({"x", "y"})),
        job("metadata", metadata={"m": [1]}),
        job("owner", owner="team"),
        job("unique", unique_key="u"),
        job("process", isolation="process"),
        job("memory", memory_limit=1 << 20),
        job("scheduled", status=JobStatus.SCHEDULED, scheduled_at=now - 5, run_at=now - 5),
    ]


def _sqlite(tmp_path: Any) -> Any:
    from jobcore.repository.sqlite import SQLiteRepository
    return SQLiteRepository(str(tmp_path / "claims.db"))


def _assert_each_claim_reads_as_its_row(repo: Any, claimed: list[JobRecord], ids: list[str]) -> None:
    assert [r.id for r in claimed] == ids
    for record in claimed:
        assert record == repo.get(record.id), record.name
        assert record.status is JobStatus.RUNNING and record.worker_id == "w"


def test_sqlite_batch_claims_give_records_equal_to_a_full_read_of_the_row(tmp_path: Any) -> None:
    # given a plain job and one job per optional field, each ready to claim
    repo = _sqlite(tmp_path)
    now = 1_700_000_000.0
    cases = _claim_cases(now)
    repo.insert(cases, now)
    ids = [r.id for r in cases]
    # when one exchange claims them by id
    _, claimed = repo.apply([], ids, "w", now + 1, now + 61)
    # then each record equals what reading its whole row gives, field by field
    _assert_each_claim_reads_as_its_row(repo, claimed, ids)
    repo.close()


def test_sqlite_a_claim_of_jobs_as_they_often_are_reads_no_row_beyond_its_own(tmp_path: Any) -> None:
    # given jobs that carry what jobs often carry: a unique key (against duplicates), tags,
    # metadata, an owner, a time to start at (due now); ready to claim
    repo = _sqlite(tmp_path)
    now = 1_700_000_000.0

    def job(name: str, **fields: Any) -> JobRecord:
        return JobRecord(id=name, function_name="f", name=name, args=(1,), created_at=now, **fields)
    jobs = [job("keyed", unique_key="k"), job("tagged", tags=frozenset({"a", "b"})), job("meta", metadata={"m": [1]}),
            job("owned", owner="alice"),
            job("delayed", status=JobStatus.SCHEDULED, scheduled_at=now - 1, run_at=now - 1),
            job("all", unique_key="k2", tags=frozenset({"c"}), metadata={"n": None}, owner="bob")]
    repo.insert(jobs, now)
    # and a job whose first attempt failed (its retry due), and one whose dependency completed
    retried, parent = job("retried", max_retries=2), job("parent")
    dependent = job("dependent", depends_on=("parent",))
    repo.insert([retried, parent, dependent], now)
    repo.apply([], ["retried", "parent"], "w", now, now + 60)
    assert repo.fail("retried", "w", 1, error="boom", error_type="OSError", traceback="Traceback: ...", now=now,
                     retry_at=now) is not None
    assert repo.complete("parent", "w", 1, result=None, now=now) is not None
    jobs += [retried, dependent]
    statements: list[str] = []
    conn = repo._db.get()
    conn.set_trace_callback(statements.append)
    # when one exchange claims them
    try:
        _, claimed = repo.apply([], [r.id for r in jobs], "w", now + 1, now + 61)
    finally:
        conn.set_trace_callback(None)
    # then the claim's own rows made their records, as a full read of each row gives them,
    # and no second read of their whole rows was made
    _assert_each_claim_reads_as_its_row(repo, claimed, [r.id for r in jobs])
    assert not [text for text in statements if "FROM jobs WHERE seq IN" in text], statements
    repo.close()


@pytest.mark.parametrize("column, value", [
    ("tags", "'[1'"), ("tags", "'[1]'"), ("tags", "'{}'"), ("metadata", "'[]'"), ("metadata", "'{'"),
    ("scheduled_at", "'soon'"), ("run_at", "1e300"), ("created_at", "'then'"), ("depends_on", "'[1]'"),
    ("depends_on", "'[\"@job_dep_lists\"]'"),
])
def test_sqlite_a_claimed_job_whose_row_holds_a_corrupt_value_reads_as_its_whole_row(
        tmp_path: Any, column: str, value: str) -> None:
    # given two jobs with tags, metadata and a time to start at, one of whose rows a hand
    # edit left with a value of the wrong shape in one of those columns
    repo = _sqlite(tmp_path)
    now = 1_700_000_000.0
    fields: dict[str, Any] = dict(tags=frozenset({"t"}), metadata={"m": 1}, owner="o", unique_key="u",
                                  status=JobStatus.SCHEDULED, scheduled_at=now - 5, run_at=now - 5)
    repo.insert([JobRecord(id=i, function_name="f", name=i, created_at=now, **{**fields, "unique_key": i})
                 for i in ("good", "bad")], now)
    repo._db.get().execute(f"UPDATE jobs SET {column} = {value} WHERE id = 'bad'")
    # when both are claimed
    _, claimed = repo.apply([], ["good", "bad"], "w", now, now + 60)
    # then each record is what a full read of its row gives: the corrupt one with the same
    # decode error (it fails alone), the other with none
    _assert_each_claim_reads_as_its_row(repo, claimed, ["good", "bad"])
    by_id = {r.id: r for r in claimed}
    assert by_id["good"].decode_error is None and by_id["bad"].decode_error is not None
    repo.close()


def test_sqlite_claims_of_jobs_changed_since_they_were_stored_read_their_row(tmp_path: Any) -> None:
    # given jobs claimed once and handed back changed: progress reported, a failure retried,
    # a cancel requested (so handed back CANCELLED) and then retried by hand, a job failed
    # for good and then retried by hand
    repo = _sqlite(tmp_path)
    now = 1_700_000_000.0
    records = [JobRecord(id=f"j{i}", function_name="f", name=f"n{i}", args=(i,), created_at=now)
               for i in range(4)]
    repo.insert(records, now)
    _, first = repo.apply([], [r.id for r in records], "w", now, now + 60)
    repo.update_progress("j0", "w", 1, 0.5, "half", {"step": 2}, now)
    repo.release("j0", "w", 1, now)
    repo.fail("j1", "w", 1, error="boom", error_type="OSError", traceback="tb", now=now, retry_at=now)
    repo.cancel("j2", now, "asked")  # running: a request
    repo.release("j2", "w", 1, now)
    assert repo.requeue("j2", now) is not None
    repo.fail("j3", "w", 1, error="bad", error_type="ValueError", traceback="tb", now=now, retry_at=None)
    assert repo.requeue("j3", now) is not None
    # when they are claimed again, the retry (scheduled) and one more by id, the rest
    # topped up by number
    _, claimed = repo.apply([], ["j1", "j0"], "w", now + 1, now + 61, top_up={"f"}, up_to=4)
    # then each record equals a full read of its row
    assert {r.id for r in claimed} == {"j0", "j1", "j2", "j3"}
    _assert_each_claim_reads_as_its_row(repo, claimed, [r.id for r in claimed])
    repo.close()


def test_sqlite_an_enqueue_exchange_claims_as_a_batch_claim_does(tmp_path: Any) -> None:
    # given queued jobs of every kind, and a new plain job stored in an exchange
    repo = _sqlite(tmp_path)
    now = 1_700_000_000.0
    cases = _claim_cases(now)
    repo.insert(cases, now)
    new = JobRecord(id="new", function_name="f", name="new", args=(7,), created_at=now)
    # when the exchange stores it claimed and claims the queued ones
    _, claimed = repo.insert_and_apply(new, [], [r.id for r in cases], "w", now + 1, now + 61,
                                       claim_new=True)
    # then every claimed record equals a full read of its row
    _assert_each_claim_reads_as_its_row(repo, claimed, ["new"] + [r.id for r in cases])
    repo.close()


def test_a_corrupt_payload_claimed_plain_fails_alone(tmp_path: Any) -> None:
    # given two plain jobs, one of whose stored arguments are not JSON
    repo = _sqlite(tmp_path)
    now = 1_700_000_000.0
    repo.insert([JobRecord(id=i, function_name="f", name=i, created_at=now) for i in ("good", "bad")], now)
    conn = repo._db.get()
    conn.execute("UPDATE jobs SET payload = '[[1' WHERE id = 'bad'")
    # when both are claimed
    _, claimed = repo.apply([], ["good", "bad"], "w", now, now + 60)
    # then the corrupt one carries a decode error, as a full read gives it, and the other none
    by_id = {r.id: r for r in claimed}
    assert by_id["good"].decode_error is None
    assert by_id["bad"].decode_error is not None and "bad" in by_id["bad"].decode_error
    assert by_id["bad"].decode_error == repo.get("bad").decode_error
    repo.close()
