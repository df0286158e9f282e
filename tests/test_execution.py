"""Whether a job's function is handed a `progress_callback`: the answer `inspect.signature`
gives, cached without keeping an ended job's function (or what it holds) alive."""

from __future__ import annotations

import functools
import gc
import inspect
import sys
import types
import weakref
from typing import Any, Callable

import pytest

from jobcore import Job, JobManager, JobStatus, MemoryRepository
from jobcore import retry
from jobcore.execution import accepts_progress_callback

WAIT = 10.0  # generous bound for waits that normally end in milliseconds


def _signature_says(func: Callable[..., Any]) -> bool:
    try:
        return "progress_callback" in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False


def _assert_answers(*funcs: Callable[..., Any]) -> None:
    """Each answer, asked in this order and then again (from the cache), is the signature's."""
    for func in funcs + funcs:
        assert accepts_progress_callback(func) is _signature_says(func), func


def reports(a: Any, b: Any, progress_callback: Any = None) -> None:
    pass


def quiet(a: Any, b: Any) -> None:
    pass


def first_reports(progress_callback: Any, a: Any = None) -> None:
    pass


class Worker:
    def run(self, a: Any, progress_callback: Any = None) -> None:
        pass

    def quiet(self, a: Any) -> None:
        pass

    @classmethod
    def make(cls, progress_callback: Any = None) -> None:
        pass

    @staticmethod
    def static(progress_callback: Any = None) -> None:
        pass

    def __call__(self, progress_callback: Any = None) -> None:
        pass


class QuietCall:
    def __call__(self, a: Any) -> None:
        pass


class Unhashable:
    def __eq__(self, other: object) -> bool:  # and so no __hash__
        return True

    def __call__(self, progress_callback: Any = None) -> None:
        pass


class Built:
    def __init__(self, progress_callback: Any = None) -> None:
        pass


def test_functions_lambdas_and_methods_get_the_signatures_answer() -> None:
    worker = Worker()
    _assert_answers(reports, quiet, first_reports, lambda progress_callback: None, lambda x: None,
                    worker.run, worker.quiet, Worker().run, Worker.make, Worker.static, Worker.run,
                    worker, QuietCall(), Unhashable(), Built, len, print)
    assert accepts_progress_callback(Worker().run) and not accepts_progress_callback(QuietCall())


def test_a_method_whose_first_parameter_is_progress_callback_does_not_take_one() -> None:
    # given a function whose first parameter is progress_callback, bound as a method
    bound = first_reports.__get__(object())
    # then bound, it no longer takes one (the instance fills it), unbound it does
    _assert_answers(first_reports, bound)
    assert accepts_progress_callback(first_reports) and not accepts_progress_callback(bound)


@pytest.mark.parametrize("make", [
    lambda: functools.partial(reports, 1),                        # leaves it: takes one
    lambda: functools.partial(reports, 1, 2),                     # the same
    lambda: functools.partial(reports, 1, 2, print),              # binds it by position: takes none
    lambda: functools.partial(reports, 1, 2, 3, 4),               # too many: no signature
    lambda: functools.partial(reports, progress_callback=print),  # by keyword: still takes one
    lambda: functools.partial(reports, b=2),
    lambda: functools.partial(functools.partial(reports, 1), 2, print),
    lambda: functools.partial(quiet, 1),
    lambda: functools.partial(Worker().run, 1),
    lambda: functools.partial(Worker().run, 1, print),
    lambda: functools.partial(Worker(), print),
    lambda: functools.partial(Built),
], ids=["one arg", "two args", "binds it", "too many", "by keyword", "other keyword", "nested",
        "quiet", "method", "method binds it", "callable object", "class"])
def test_a_new_partial_per_job_gets_the_signatures_answer(make: Callable[[], Any]) -> None:
    _assert_answers(make(), make(), make())


def test_partials_of_one_function_binding_different_slots_get_their_own_answers() -> None:
    # given partials of one function, asked in turn (each answer cached before the next)
    made = [functools.partial(reports, 1, 2), functools.partial(reports, 1, 2, print),
            functools.partial(reports, 1), functools.partial(reports, progress_callback=print),
            functools.partial(reports, 1, 2, 3, 4), reports]
    # then each gets its own
    _assert_answers(*made)
    assert [accepts_progress_callback(p) for p in made] == [True, False, True, True, False, True]


def _passes_through(func: Callable[..., Any], wraps: bool) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)
    return functools.wraps(func)(wrapper) if wraps else wrapper


def test_a_decorated_function_gets_its_wrapped_functions_answer() -> None:
    # given the same wrapper code, once bare and once naming what it wraps (functools.wraps)
    bare, decorated = _passes_through(reports, wraps=False), _passes_through(reports, wraps=True)
    assert bare.__code__ is decorated.__code__
    # then the bare one takes none, the decorated one one (as inspect.signature follows
    # __wrapped__), whichever is asked first
    _assert_answers(bare, decorated, _passes_through(quiet, wraps=True))
    assert not accepts_progress_callback(bare) and accepts_progress_callback(decorated)


def test_an_explicit_signature_is_the_answer() -> None:
    def takes(**kwargs: Any) -> None:
        pass

    def told(**kwargs: Any) -> None:
        pass

    told.__signature__ = inspect.signature(reports)  # type: ignore[attr-defined]
    _assert_answers(takes, told)
    assert accepts_progress_callback(told) and not accepts_progress_callback(takes)


class Payload:
    """Something a job's function holds (weakly referenceable, unlike a bytearray)."""

    def run(self, progress_callback: Any = None) -> int:
        return 1

    def __call__(self, progress_callback: Any = None) -> int:
        return 1


def _holding(payload: Payload, how: str) -> Callable[..., Any]:
    if how == "partial":
        return functools.partial(reports, 1, payload)
    if how == "lambda":
        return lambda progress_callback=None: payload
    return payload.run if how == "bound method" else payload


@pytest.mark.parametrize("how", ["partial", "lambda", "bound method", "callable object"])
def test_an_answer_keeps_nothing_the_callable_holds_alive(how: str) -> None:
    # given a callable holding an object, asked about, then dropped
    payload = Payload()
    held = weakref.ref(payload)
    func = _holding(payload, how)
    assert accepts_progress_callback(func) and accepts_progress_callback(func)
    del func, payload
    gc.collect()
    # then the object is gone
    assert held() is None


def work(payload: Payload) -> int:
    return 1


def test_an_ended_jobs_partial_and_what_it_holds_are_not_kept() -> None:
    # given a job whose function is a partial holding an object, run and cleaned up
    payload = Payload()
    held = weakref.ref(payload)
    with JobManager(MemoryRepository(), max_workers=1) as manager:
        job_id = manager.enqueue(Job(function=functools.partial(work, payload)))
        del payload
        assert manager.wait(job_id, timeout=WAIT).status is JobStatus.COMPLETED
        assert manager.cleanup_old_results(0) == 1
    del manager
    gc.collect()
    # then nothing keeps the object (the signature cache kept the partial, and it)
    assert held() is None


async def _never_reached() -> str:
    return "ran"


class _NoReports:
    def report_progress(self, *args: Any) -> None:
        pass

    def report_log(self, *args: Any) -> None:
        pass


def test_a_coroutine_job_given_up_before_its_task_first_ran_leaves_no_never_awaited_warning() -> None:
    # A timeout of 1e-9 s abandons the attempt before its task starts: the task is
    # cancelled before the wrapper coroutine ran, which then ended closed, never having
    # awaited the job's own coroutine ("coroutine ... was never awaited" at collection).
    import warnings
    from jobcore.context import JobContext
    from jobcore.execution import run_attempt
    context = JobContext("job-1", "a job", 1, _NoReports())
    context.abandon()  # given up already, as a timeout does before the loop starts
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outcome = run_attempt(_never_reached, (), {}, context)
        assert outcome.error is not None and type(outcome.error).__name__ == "CancelledError"
        del outcome
        gc.collect()
    assert [str(w.message) for w in caught if "never awaited" in str(w.message)] == []


def test_a_job_starting_while_another_thread_imports_asyncio_runs(monkeypatch: Any) -> None:
    # given asyncio half imported, as while another thread imports it for the first time
    # (a first coroutine job, or a library that pulls it in): the module is in sys.modules
    # before its attributes are (a hunt saw up to 832 of 1,201 jobs fail for good then,
    # with "partially initialized module 'asyncio' has no attribute '_get_running_loop'")
    manager = JobManager(MemoryRepository())
    manager.register_function("add", lambda a, b: a + b)
    job_id = manager.enqueue(Job(function_name="add", args=(1, 2), max_retries=0))
    monkeypatch.setitem(sys.modules, "asyncio", types.ModuleType("asyncio"))
    # when a job starts then, then it runs as usual
    assert manager.run_pending() == 1
    monkeypatch.undo()
    result = manager.poll(job_id)
    assert result is not None and (result.status, result.result) == (JobStatus.COMPLETED, 3)
    manager.close()


def test_a_failure_judged_while_a_module_it_looks_at_is_half_imported_is_judged(monkeypatch: Any) -> None:
    # given (as on Python 3.10) a timeout class looked up in a module another thread is
    # importing right now, which does not define it yet
    monkeypatch.setattr(retry, "_OTHER_TIMEOUT_MODULES", ("asyncio.exceptions",))
    monkeypatch.setitem(sys.modules, "asyncio.exceptions", types.ModuleType("asyncio.exceptions"))
    # when a failure is judged, then it is judged by the other rules (it raised AttributeError)
    assert retry.is_transient(ValueError("bad input")) is False
    assert retry.is_transient(ConnectionError("reset")) is True
