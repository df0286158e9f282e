"""Progress reports reach a persistent store at most every PROGRESS_INTERVAL per attempt,
the latest one always, and the process running the job shows each report at once."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Iterator

import pytest

from jobcore import Job, JobManager, JobStatus, MemoryRepository, SQLiteRepository
from jobcore import progress as progress_module
from jobcore.context import JobContext
from jobcore.errors import RepositoryError
from jobcore.progress import PROGRESS_INTERVAL, ProgressWriter, Report
from waiting import wait_until

WAIT = 10.0
REPORTS = 1_000


class CountingSQLite(SQLiteRepository):
    """A SQLite store that counts the progress writes it receives."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.progress_writes = 0

    def update_progress(self, *args: Any, **kwargs: Any) -> bool:
        self.progress_writes += 1
        return super().update_progress(*args, **kwargs)


class CountingMemory(MemoryRepository):
    def __init__(self) -> None:
        super().__init__()
        self.progress_writes = 0

    def update_progress(self, *args: Any, **kwargs: Any) -> bool:
        self.progress_writes += 1
        return super().update_progress(*args, **kwargs)


def many_reports(fail: bool = False, progress_callback: Any = None) -> float:
    """Report REPORTS times as fast as it can; returns the seconds that took."""
    began = time.monotonic()
    for i in range(REPORTS):
        progress_callback((i + 1) / (REPORTS + 1), f"item {i}", i=i)
    if fail:
        raise ValueError("failed after the last item")
    return time.monotonic() - began


@pytest.fixture
def sqlite_manager(tmp_path: Any) -> Iterator[tuple[JobManager, CountingSQLite]]:
    repository = CountingSQLite(str(tmp_path / "jobs.db"))
    with JobManager(repository, max_workers=2) as manager:
        manager.register_function("many_reports", many_reports)
        yield manager, repository


def test_a_tight_loop_of_reports_writes_a_few_of_them(sqlite_manager: tuple[JobManager, CountingSQLite]) -> None:
    manager, repository = sqlite_manager
    result = manager.wait(manager.enqueue(Job(function_name="many_reports")), timeout=WAIT)

    assert result.status is JobStatus.COMPLETED
    # the first report at once, at most one per interval while the loop ran, the last at its end
    assert 2 <= repository.progress_writes <= 3 + result.result / PROGRESS_INTERVAL
    assert repository.progress_writes < REPORTS / 10


def test_the_row_keeps_the_last_report_of_an_attempt(sqlite_manager: tuple[JobManager, CountingSQLite]) -> None:
    manager, _ = sqlite_manager
    done = manager.wait(manager.enqueue(Job(function_name="many_reports")), timeout=WAIT)
    failed = manager.wait(manager.enqueue(Job(function_name="many_reports", kwargs={"fail": True},
                                              max_retries=0)), timeout=WAIT)

    assert (done.progress, done.progress_message, done.progress_details) == (1.0, f"item {REPORTS - 1}",
                                                                             {"i": REPORTS - 1})
    assert failed.status is JobStatus.FAILED
    assert failed.progress == pytest.approx(REPORTS / (REPORTS + 1))
    assert (failed.progress_message, failed.progress_details) == (f"item {REPORTS - 1}", {"i": REPORTS - 1})


def _held_after(reports: list[tuple[float, str]], reported: threading.Event, release: threading.Event
                ) -> Callable[..., None]:
    def job(progress_callback: Any = None) -> None:
        for fraction, message in reports:
            progress_callback(fraction, message)
        reported.set()
        release.wait(WAIT)
    return job


def test_this_process_shows_each_report_at_once_and_others_soon_after(tmp_path: Any) -> None:
    reported, release = threading.Event(), threading.Event()
    path = str(tmp_path / "jobs.db")
    with JobManager(path, max_workers=1) as manager:
        manager.register_function("held", _held_after([(0.1, "started"), (0.5, "half")], reported, release))
        job_id = manager.enqueue(Job(function_name="held"))
        try:
            assert reported.wait(WAIT)
            polled, listed = manager.poll(job_id), manager.list_jobs(status="running")
            assert polled is not None and (polled.progress, polled.progress_message) == (0.5, "half")
            assert [(r.job_id, r.progress, r.progress_message) for r in listed] == [(job_id, 0.5, "half")]
            # another reader of the file sees it once the interval has passed (the housekeeper)
            other = JobManager(path, max_workers=1)
            try:
                wait_until(lambda: other.poll(job_id).progress == 0.5, WAIT, "the report in the row")  # type: ignore[union-attr]
                assert other.poll(job_id).progress_message == "half"  # type: ignore[union-attr]
            finally:
                other.close()
        finally:
            release.set()
        assert manager.wait(job_id, timeout=WAIT).status is JobStatus.COMPLETED


def test_a_memory_store_gets_every_report() -> None:
    repository = CountingMemory()
    with JobManager(repository, max_workers=1) as manager:
        manager.register_function("many_reports", many_reports)
        result = manager.wait(manager.enqueue(Job(function_name="many_reports")), timeout=WAIT)

    assert result.progress_message == f"item {REPORTS - 1}"
    assert repository.progress_writes == REPORTS


# -- the writer alone, on a clock the test moves --------------------------------------------------
class _Sink:
    def report_progress(self, *args: Any) -> None:
        raise AssertionError("not used here")

    def report_log(self, *args: Any) -> None:
        raise AssertionError("not used here")


@pytest.fixture
def now(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    clock = [100.0]
    monkeypatch.setattr(progress_module, "real_monotonic", lambda: clock[0])
    return clock


def _writer() -> tuple[ProgressWriter, list[tuple[str, float]], list[int]]:
    written: list[tuple[str, float]] = []
    wakes = [0]

    def wake() -> None:
        wakes[0] += 1

    return ProgressWriter(lambda r: written.append((r.context.id, r.progress)), throttle=True, wake=wake), written, wakes


def test_reports_wait_for_the_interval_then_the_latest_is_written(now: list[float]) -> None:
    writer, written, wakes = _writer()
    context = JobContext("a", "a", 1, _Sink())
    for fraction in (0.1, 0.2, 0.3):
        writer.report(Report(context, fraction, "", {}))
    assert written == [("a", 0.1)] and wakes == [1]  # the housekeeper told once
    assert writer.latest("a") == Report(context, 0.3, "", {})
    assert writer.flush_due() == pytest.approx(100.0 + PROGRESS_INTERVAL)  # not yet
    now[0] += PROGRESS_INTERVAL
    assert writer.flush_due() is None
    assert written == [("a", 0.1), ("a", 0.3)] and writer.latest("a") is None


def test_an_ended_attempt_writes_what_waits_unless_it_was_given_up(now: list[float]) -> None:
    writer, written, _ = _writer()
    ended, given_up = JobContext("a", "a", 1, _Sink()), JobContext("b", "b", 1, _Sink())
    for context in (ended, given_up):
        writer.report(Report(context, 0.1, "", {}))
        writer.report(Report(context, 0.2, "", {}))
    given_up.abandoned = True  # its attempt timed out

    assert writer.latest("b") is None
    writer.take(ended)
    writer.take(given_up)
    assert written == [("a", 0.1), ("b", 0.1), ("a", 0.2)]
    assert writer.flush_due() is None
    writer.report(Report(JobContext("a", "a", 2, _Sink()), 0.5, "", {}))  # the next attempt: at once
    assert written[-1] == ("a", 0.5)


def test_a_store_refusing_the_last_report_is_logged_and_the_attempt_goes_on(
        now: list[float], caplog: pytest.LogCaptureFixture) -> None:
    writes: list[float] = []

    def write(report: Report) -> None:
        if writes:
            raise RepositoryError("disk full")
        writes.append(report.progress)

    writer = ProgressWriter(write, throttle=True, wake=lambda: None)
    context = JobContext("a", "a", 1, _Sink())
    writer.report(Report(context, 0.1, "", {}))
    writer.report(Report(context, 0.2, "", {}))

    with caplog.at_level("WARNING", logger="jobcore.progress"):
        writer.take(context)  # does not raise: the worker goes on to record the outcome
    assert writes == [0.1]
    assert "could not store the last progress report of job a: disk full" in caplog.text
    assert writer.latest("a") is None


class _Recording:
    """A sink that keeps what it is given."""

    def __init__(self) -> None:
        self.progress: list[float] = []
        self.messages: list[str] = []

    def report_progress(self, context: JobContext, progress: float, message: str, details: dict) -> None:
        self.progress.append(progress)
        self.messages.append(message)

    def report_log(self, context: JobContext, level: str, message: str) -> None:
        pass


def test_progress_takes_any_real_number_and_clamps_it() -> None:
    from fractions import Fraction

    sink = _Recording()
    context = JobContext("a", "a", 1, sink)
    for value in (Fraction(1, 4), 2 ** 2000, -(2 ** 2000), 0.5, 3):
        context.progress(value)
    assert sink.progress == [0.25, 1.0, 0.0, 0.5, 1.0]
    for bad in (float("nan"), True, "0.5", None, complex(1, 0)):
        with pytest.raises(TypeError, match="progress must be a number"):
            context.progress(bad)


def test_a_progress_message_of_none_is_no_message() -> None:
    # given progress_callback(0.5, None): the message was stored as the text "None"
    sink = _Recording()
    context = JobContext("a", "a", 1, sink)
    context.progress(0.5, None)  # type: ignore[arg-type]
    context.progress(0.6, 42)  # type: ignore[arg-type]
    assert sink.messages == ["", "42"]
