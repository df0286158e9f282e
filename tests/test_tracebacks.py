"""A failed attempt's traceback is the text `traceback.format_exception` gives, its stack
formatted once per distinct stack: a failure raised again from the same places reads no
source file's status again (each read handed the GIL over: failures drained at a fifth of
the rate of successes)."""

from __future__ import annotations

import linecache
import traceback
from typing import Any, Callable

import pytest

from jobcore import Job, JobStatus, MemoryRepository
from jobcore import tracebacks
from jobcore.tracebacks import format_failure


def _raise_value(message: str) -> None:
    raise ValueError(message)


def _deeper(message: str) -> None:
    _raise_value(message)


def _with_note() -> None:
    error = RuntimeError("noted")
    if hasattr(error, "add_note"):
        error.add_note("a note of its own")
    raise error


def _from_none() -> None:
    try:
        {}["missing"]
    except KeyError:
        raise LookupError("not found") from None


def _from_cause() -> None:
    try:
        _raise_value("the cause")
    except ValueError as exc:
        raise RuntimeError("raised from it") from exc


def _in_handling() -> None:
    try:
        _raise_value("the first")
    except ValueError:
        raise RuntimeError("raised while handling it")


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")


def _unprintable() -> None:
    raise _Unprintable()


def _syntax() -> None:
    compile("def broken(:\n", "<made>", "exec")


def _group() -> None:
    group = getattr(__builtins__ if isinstance(__builtins__, dict) else vars(__builtins__), "ExceptionGroup", None)
    if group is None:
        raise ValueError("no groups before Python 3.11")
    raise group("several", [ValueError("one"), KeyError("two")])


def _caught(raiser: Callable[[], None]) -> BaseException:
    try:
        raiser()
    except BaseException as exc:  # noqa: BLE001
        return exc
    raise AssertionError("it did not raise")


RAISERS = [lambda: _raise_value("plain"), lambda: _deeper("deeper"), _with_note, _from_none, _from_cause,
           _in_handling, _unprintable, _syntax, _group, lambda: {}["key"]]


@pytest.mark.parametrize("raiser", RAISERS, ids=["plain", "deeper", "note", "from None", "from a cause",
                                                 "while handling", "unprintable", "syntax", "group", "KeyError"])
def test_the_text_is_format_exceptions_first_and_again(raiser: Callable[[], None]) -> None:
    for _ in range(2):  # formatted, then from the stack kept
        error = _caught(raiser)
        assert format_failure(error) == "".join(traceback.format_exception(type(error), error, error.__traceback__))


def test_an_exception_never_raised_is_its_own_lines() -> None:
    error = ValueError("made, not raised")
    assert format_failure(error) == "".join(traceback.format_exception(type(error), error, None)) == \
        "ValueError: made, not raised\n"


def test_the_same_stack_with_another_message_keeps_its_message() -> None:
    first, second = (_caught(lambda: _deeper(message)) for message in ("first", "second"))  # (one lambda)
    assert format_failure(first).endswith("ValueError: first\n")
    assert format_failure(second).endswith("ValueError: second\n")
    assert format_failure(first).splitlines()[:-1] == format_failure(second).splitlines()[:-1]


def test_at_most_stacks_kept_are_kept(monkeypatch: Any) -> None:
    monkeypatch.setattr(tracebacks, "STACKS_KEPT", 2)
    monkeypatch.setattr(tracebacks, "_stacks", {})
    for raiser in (lambda: _raise_value("a"), lambda: _deeper("b"), _with_note, _unprintable):
        format_failure(_caught(raiser))
        assert len(tracebacks._stacks) <= 2


def test_jobs_failing_from_the_same_place_read_their_source_files_status_once(make_manager: Any,
                                                                              monkeypatch: Any) -> None:
    checked: list[str] = []
    check = linecache.checkcache

    def counting(filename: Any = None) -> None:
        checked.append(str(filename))
        check(filename)

    monkeypatch.setattr(linecache, "checkcache", counting)
    manager = make_manager(MemoryRepository(), max_workers=1).start()
    results = [manager.wait(manager.enqueue(Job(function=_deeper, args=(f"boom {n}",), max_retries=0)), timeout=10)
               for n in range(5)]
    assert [r.status for r in results] == [JobStatus.FAILED] * 5
    assert [r.traceback.splitlines()[-1] for r in results] == [f"ValueError: boom {n}" for n in range(5)]
    assert all("_raise_value" in r.traceback and "_deeper" in r.traceback for r in results)
    # the first failure's stack was formatted (its files checked); the four others reused it
    assert 0 < len([name for name in checked if name.endswith("test_tracebacks.py")]) <= 1, checked


def _three_levels() -> None:
    try:
        _from_cause()
    except RuntimeError as exc:
        raise KeyError("outermost") from exc


def _looped() -> None:
    first, second = ValueError("first"), RuntimeError("second")
    first.__cause__ = second
    second.__context__ = first
    raise first


def _cause_and_context() -> None:
    try:
        _raise_value("the context")
    except ValueError:
        raise RuntimeError("with a cause too") from KeyError("the cause")


@pytest.mark.parametrize("raiser", [_three_levels, _looped, _cause_and_context],
                         ids=["three levels", "a loop", "a cause and a context"])
def test_a_chain_is_format_exceptions_first_and_again(raiser: Callable[[], None]) -> None:
    for _ in range(2):
        error = _caught(raiser)
        assert format_failure(error) == "".join(traceback.format_exception(type(error), error, error.__traceback__))


def test_a_chain_raised_again_reads_no_source_files_status(monkeypatch: Any) -> None:
    format_failure(_caught(_three_levels))  # its stacks formatted, and kept
    checked: list[Any] = []
    monkeypatch.setattr(linecache, "checkcache", lambda filename=None: checked.append(filename))
    text = format_failure(_caught(_three_levels))
    assert checked == [] and text.endswith("KeyError: 'outermost'\n") and "direct cause" in text


def test_a_failure_the_shortcut_cannot_format_is_formatted_the_standard_way_and_the_worker_goes_on(
        make_manager: Any, monkeypatch: Any) -> None:
    # given a shortcut that breaks, as Python 3.13's `TracebackException` broke it (its
    # `exceptions` not set, and read by `format_exception_only`): an error from inside it
    def broken(exception: BaseException) -> list[str]:
        raise AttributeError("'TracebackException' object has no attribute 'exceptions'")

    monkeypatch.setattr(tracebacks, "_own_lines", broken)
    error = _caught(lambda: _deeper("unformatted"))
    # then the text is the standard one
    assert format_failure(error) == "".join(traceback.format_exception(type(error), error, error.__traceback__))
    # and a worker whose job fails goes on to the next job (the error ended its thread,
    # the failed job left running and every later one waiting)
    manager = make_manager(MemoryRepository(), max_workers=1).start()
    failed = manager.wait(manager.enqueue(Job(function=_deeper, args=("boom",), max_retries=0)), timeout=10)
    assert failed.status is JobStatus.FAILED and failed.traceback.endswith("ValueError: boom\n")
    assert manager.wait(manager.enqueue(Job(function=len, args=("abc",))), timeout=10).result == 3
