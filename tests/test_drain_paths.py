"""The shortcuts on the path that records finished jobs behave as the longer ways they skip."""

from __future__ import annotations

import dataclasses
import inspect
import random
from typing import Any, Optional

import pytest

from jobcore.execution import Outcome
from jobcore.notify_dispatch import NotificationDispatcher
from jobcore.repository.base import Cascade, JobRecord, Settlement
from jobcore.repository.memory import MemoryRepository
from jobcore.repository.values import detached_copy
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
