"""Progress reports reach a persistent store at most every PROGRESS_INTERVAL per attempt,
never from the job's thread; an attempt's last report goes in the transaction recording
its outcome; and the process running the job shows each report at once."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any, Callable, Iterator, Optional, Sequence

import pytest

from jobcore import FakeClock, Job, JobManager, JobStatus, MemoryRepository, SQLiteRepository, current_job
from jobcore import progress as progress_module
from jobcore.context import JobContext
from jobcore.errors import RepositoryError
from jobcore.progress import PROGRESS_INTERVAL, ProgressWriter, Report
from jobcore.repository.base import JobRepository, Settlement
from mixed_repositories import BACKENDS, repository_with
from pg_fixtures import *  # noqa: F401,F403 (the fixtures: server, schema)
from waiting import enqueue_and_time_out, wait_until

WAIT = 10.0
REPORTS = 1_000


class CountingSQLite(SQLiteRepository):
    """A SQLite store that counts the progress writes it receives: on their own
    (`update_progress`), and carried by the settlements an `apply` records (`folded`, the
    progress each carried, by job id)."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.progress_writes = 0
        self.folded: dict[str, list[tuple[float, str, dict[str, Any]]]] = {}
        # Set by a test: `apply` waits for it before recording a settlement carrying progress.
        self.hold_folding: Optional[threading.Event] = None
        self.folding = threading.Event()

    def update_progress(self, *args: Any, **kwargs: Any) -> bool:
        self.progress_writes += 1
        return super().update_progress(*args, **kwargs)

    def apply(self, settlements: Sequence[Settlement], *args: Any, **kwargs: Any) -> Any:
        for s in settlements:
            if s.progress is not None:
                self.folded.setdefault(s.job_id, []).append(s.progress[:3])
                self.folding.set()
                if self.hold_folding is not None:
                    assert self.hold_folding.wait(WAIT)
        return super().apply(settlements, *args, **kwargs)

    def writes_of(self, job_id: str) -> int:
        """Progress writes in all: on their own and carried by the job's outcomes."""
        return self.progress_writes + len(self.folded.get(job_id, ()))


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
def sqlite_store(tmp_path: Any) -> Iterator[Callable[..., Any]]:
    """`sqlite_store(cls)`: a store of that SQLiteRepository subclass on the test's file,
    closed as the test ends (a manager's `with` block only stops it)."""
    opened: list[SQLiteRepository] = []

    def make(cls: type = CountingSQLite) -> Any:
        opened.append(cls(str(tmp_path / "jobs.db")))
        return opened[-1]

    yield make
    for repository in opened:
        repository.close()


@pytest.fixture
def sqlite_manager(sqlite_store: Callable[..., Any]) -> Iterator[tuple[JobManager, CountingSQLite]]:
    repository = sqlite_store()
    with JobManager(repository, max_workers=2) as manager:
        manager.register_function("many_reports", many_reports)
        yield manager, repository


def test_a_tight_loop_of_reports_writes_a_few_of_them(sqlite_manager: tuple[JobManager, CountingSQLite]) -> None:
    manager, repository = sqlite_manager
    job_id = manager.enqueue(Job(function_name="many_reports"))
    result = manager.wait(job_id, timeout=WAIT)

    assert result.status is JobStatus.COMPLETED
    # at most one per interval while the loop ran, and the last with the outcome
    assert 1 <= repository.writes_of(job_id) <= 2 + result.result / PROGRESS_INTERVAL
    assert repository.writes_of(job_id) < REPORTS / 10


def reports_and_ends(fail: bool = False, progress_callback: Any = None) -> str:
    for step in (1, 2, 3):
        progress_callback(step / 4, f"step {step}", step=step)
    if fail:
        raise ValueError("failed after step 3")
    return "done"


@pytest.mark.parametrize("fail", [False, True])
def test_a_short_attempts_reports_are_recorded_with_its_outcome_in_one_transaction(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch, sqlite_store: Callable[..., Any], fail: bool) -> None:
    # given an interval no attempt outlives: nothing is due before the attempt ends
    monkeypatch.setattr(progress_module, "PROGRESS_INTERVAL", 3600.0)
    repository = sqlite_store()
    with JobManager(repository, max_workers=2) as manager:
        manager.register_function("reports_and_ends", reports_and_ends)
        # when a job reports three times, then returns or raises
        job_id = manager.enqueue(Job(function_name="reports_and_ends", kwargs={"fail": fail}, max_retries=0))
        result = manager.wait(job_id, timeout=WAIT)
    # then no report had a write of its own: the last one went in the call (one
    # transaction) that recorded the outcome
    assert repository.progress_writes == 0
    assert repository.folded == {job_id: [(0.75, "step 3", {"step": 3})]}
    # and the row holds it, read afresh from the file
    stored = SQLiteRepository(str(tmp_path / "jobs.db"))
    try:
        row = stored.get(job_id)
    finally:
        stored.close()
    assert row is not None
    assert row.status is (JobStatus.FAILED if fail else JobStatus.COMPLETED)
    assert (row.progress, row.progress_message, row.progress_details) == (
        0.75 if fail else 1.0, "step 3", {"step": 3})
    assert (result.progress, result.progress_message, result.progress_details) == (
        row.progress, row.progress_message, row.progress_details)


class RecordingWrites:
    """Counts what a repository is given: progress writes of their own, and the settlements
    carrying progress, by the call that recorded them (`apply` or `insert_and_apply`: one
    transaction each). Mixed into a repository class (see `repository_with`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        self.own_writes = 0
        self.carried: list[tuple[str, str, float, str]] = []  # (call, kind, progress, message)

    def update_progress(self, *args: Any, **kwargs: Any) -> bool:
        self.own_writes += 1
        return super().update_progress(*args, **kwargs)  # type: ignore[misc, no-any-return]

    def _note(self, call: str, settlements: Sequence[Settlement]) -> None:
        self.carried += [(call, s.kind, s.progress.progress, s.progress.message)
                         for s in settlements if s.progress is not None]

    def apply(self, settlements: Sequence[Settlement], *args: Any, **kwargs: Any) -> Any:
        self._note("apply", settlements)
        return super().apply(settlements, *args, **kwargs)  # type: ignore[misc]

    def insert_and_apply(self, record: Any, settlements: Sequence[Settlement], *args: Any, **kwargs: Any) -> Any:
        self._note("insert_and_apply", settlements)
        return super().insert_and_apply(record, settlements, *args, **kwargs)  # type: ignore[misc]


@pytest.fixture(params=BACKENDS)
def recording_repository(request: Any, tmp_path: Any) -> JobRepository:
    return repository_with(RecordingWrites, request, tmp_path)


@pytest.mark.parametrize("fail", [False, True])
def test_each_store_ends_with_the_last_report_of_a_short_attempt(
        recording_repository: Any, make_manager: Any, monkeypatch: pytest.MonkeyPatch, fail: bool) -> None:
    monkeypatch.setattr(progress_module, "PROGRESS_INTERVAL", 3600.0)
    repository = recording_repository
    manager: JobManager = make_manager(repository, max_workers=2)
    manager.register_function("reports_and_ends", reports_and_ends)
    manager.start()
    job_id = manager.enqueue(Job(function_name="reports_and_ends", kwargs={"fail": fail}, max_retries=0))
    result = manager.wait(job_id, timeout=WAIT)
    row = repository.get(job_id)
    assert row is not None and row.status is result.status
    assert (row.progress, row.progress_message, row.progress_details) == (
        0.75 if fail else 1.0, "step 3", {"step": 3})
    if repository.persistent:
        # no write of its own: the last report went with the outcome, in one call
        assert repository.own_writes == 0
        assert [entry[1:] for entry in repository.carried] == [("fail" if fail else "complete", 0.75, "step 3")]
    else:
        # the memory store takes every report at once (nothing waits to go with the outcome)
        assert repository.own_writes == 3 and repository.carried == []


@pytest.mark.parametrize("retries", [0, 1])
def test_an_attempt_given_up_at_its_timeout_ends_with_its_last_report(
        recording_repository: Any, make_manager: Any, monkeypatch: pytest.MonkeyPatch, retries: int) -> None:
    # given an interval no attempt outlives, and a thread job that reports, then hangs
    # past its timeout (its report waits here: only the outcome can bring it); the
    # manager's clock a fake one, moved past the timeout once the job reported
    monkeypatch.setattr(progress_module, "PROGRESS_INTERVAL", 3600.0)
    repository = recording_repository
    clock = FakeClock()
    reported, release = threading.Event(), threading.Event()

    def hangs(progress_callback: Any = None) -> str:
        progress_callback(0.5, "downloading", file="big.iso")
        reported.set()
        release.wait(WAIT)
        return "late"

    manager: JobManager = make_manager(repository, max_workers=1, clock=clock)
    manager.register_function("hangs", hangs)
    manager.start()
    try:
        job_id = enqueue_and_time_out(manager, clock, Job(function_name="hangs", timeout=5.0, max_retries=retries,
                                                           retry_delay=60.0, retry_jitter=False), reported, WAIT)
        if retries:  # waiting for its retry, from no progress (as every retry starts)
            wait_until(lambda: (row := repository.get(job_id)) is not None and row.status is JobStatus.SCHEDULED,
                       timeout=WAIT, what="the retry scheduled")
            row = repository.get(job_id)
            assert row is not None and (row.progress, row.progress_message, row.progress_details) == (0.0, "", {})
        else:
            result = manager.wait(job_id, timeout=WAIT)
            # then the failed job keeps the given-up attempt's last report, as any job that
            # ended while an attempt ran keeps that attempt's, for every reader
            assert (result.status, result.error_type) == (JobStatus.FAILED, "JobTimeout")
            assert (result.progress, result.progress_message, result.progress_details) == (
                0.5, "downloading", {"file": "big.iso"})
            row = repository.get(job_id)
            assert row is not None and (row.progress, row.progress_message, row.progress_details) == (
                0.5, "downloading", {"file": "big.iso"})
        if repository.persistent:  # carried by the outcome, not written by itself
            assert repository.own_writes == 0
            assert [entry[1:] for entry in repository.carried] == [
                ("retry" if retries else "fail", 0.5, "downloading")]
    finally:
        release.set()


def test_this_process_shows_the_last_report_until_the_outcome_is_recorded(
        monkeypatch: pytest.MonkeyPatch, sqlite_store: Callable[..., Any]) -> None:
    monkeypatch.setattr(progress_module, "PROGRESS_INTERVAL", 3600.0)
    repository = sqlite_store()
    repository.hold_folding = threading.Event()
    with JobManager(repository, max_workers=1) as manager:
        manager.register_function("reports_and_ends", reports_and_ends)
        job_id = manager.enqueue(Job(function_name="reports_and_ends"))
        try:
            # given the attempt ended, its outcome (carrying its last report) held on its way
            assert repository.folding.wait(WAIT)
            # then poll in this process shows that report while the row does not hold it yet
            polled = manager.poll(job_id)
            assert polled is not None and polled.status is JobStatus.RUNNING
            assert (polled.progress, polled.progress_message, polled.progress_details) == (0.75, "step 3", {"step": 3})
            row = repository.get(job_id)
            assert row is not None and (row.progress, row.progress_message) == (0.0, "")
        finally:
            repository.hold_folding.set()
        result = manager.wait(job_id, timeout=WAIT)
    assert (result.status, result.progress, result.progress_message) == (JobStatus.COMPLETED, 1.0, "step 3")


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


def _context(job_id: str, now: list[float], attempt: int = 1) -> JobContext:
    """A context whose attempt began at the test clock's `now`."""
    context = JobContext(job_id, job_id, attempt, _Sink())
    context.began_at = now[0]
    context.reported_progress = True  # as `progress()` sets it
    return context


def _writer(housekeeper: bool = True) -> tuple[ProgressWriter, list[tuple[str, float]], list[int]]:
    written: list[tuple[str, float]] = []
    wakes = [0]

    def wake() -> bool:
        wakes[0] += 1
        return housekeeper

    return ProgressWriter(lambda r: written.append((r.context.id, r.progress)), throttle=True, wake=wake), written, wakes


def test_reports_wait_an_interval_from_the_attempts_start_then_the_latest_is_written(now: list[float]) -> None:
    writer, written, wakes = _writer()
    context = _context("a", now)
    now[0] += PROGRESS_INTERVAL / 2
    for fraction in (0.1, 0.2, 0.3):
        writer.report(Report(context, fraction, "", {}))
    # nothing written by the job's thread; the housekeeper told once, of when it is due
    assert written == [] and wakes == [1]
    assert writer.latest("a") == Report(context, 0.3, "", {})
    assert writer.flush_due() == pytest.approx(100.0 + PROGRESS_INTERVAL)  # not yet
    now[0] = 100.0 + PROGRESS_INTERVAL
    assert writer.flush_due() is None
    # (and still shown here: `poll` reads the row first, and may have read it before this
    # write; it must not show an older report than it showed before)
    assert written == [("a", 0.3)] and writer.latest("a") == Report(context, 0.3, "", {})
    # then the next report waits an interval from that write
    writer.report(Report(context, 0.4, "", {}))
    assert writer.flush_due() == pytest.approx(100.0 + 2 * PROGRESS_INTERVAL)
    assert written == [("a", 0.3)] and wakes == [2]


def test_a_report_after_a_quiet_spell_is_written_at_once_by_the_housekeeper(now: list[float]) -> None:
    writer, written, wakes = _writer()
    context = _context("a", now)
    now[0] += 5.0
    writer.report(Report(context, 0.5, "", {}))
    assert wakes == [1] and written == []  # the housekeeper is woken; the job's thread writes nothing
    assert writer.flush_due() is None
    assert written == [("a", 0.5)]


def test_without_a_housekeeper_the_reporting_thread_writes_what_is_due(now: list[float]) -> None:
    writer, written, _ = _writer(housekeeper=False)
    context = _context("a", now)
    writer.report(Report(context, 0.1, "", {}))  # within the attempt's first interval: waits
    assert written == []
    now[0] += PROGRESS_INTERVAL
    writer.report(Report(context, 0.2, "", {}))
    assert written == [("a", 0.2)]


def test_an_ended_attempt_hands_its_last_report_to_its_outcome(now: list[float]) -> None:
    writer, written, _ = _writer()
    ended, given_up = _context("a", now), _context("b", now)
    for context in (ended, given_up):
        writer.report(Report(context, 0.1, "", {}))
        writer.report(Report(context, 0.2, "", {}))
    given_up.abandoned = True  # its attempt timed out
    assert writer.latest("b") is None

    ended.ended = given_up.ended = True
    # the last report of the ended attempt goes to its outcome, unwritten here
    assert writer.take(ended) == Report(ended, 0.2, "", {})
    assert writer.take(given_up) is None
    writer.report(Report(ended, 0.9, "", {}))  # made by code the attempt left running: refused
    now[0] += PROGRESS_INTERVAL
    assert writer.flush_due() is None and written == []
    # this process shows it until the outcome is recorded
    assert writer.latest("a") == Report(ended, 0.2, "", {})
    writer.settled(["a", "b"])
    assert writer.latest("a") == Report(ended, 0.2, "", {})  # for a row read before it settled
    assert writer.latest("b") is None
    # and the next attempt starts afresh
    writer.report(Report(_context("a", now, attempt=2), 0.5, "", {}))
    assert writer.latest("a") is not None and written == []


def test_an_attempt_given_up_at_its_timeout_leaves_its_last_report_to_its_timeouts_outcome(
        now: list[float]) -> None:
    writer, written, _ = _writer()
    given_up, forgotten = _context("b", now), _context("c", now)
    for context in (given_up, forgotten):
        writer.report(Report(context, 0.2, "half", {}))
        context.abandoned = True  # its attempt timed out; its thread may still run
    # then no flush writes it, nor drops it, nor wakes for it
    now[0] += 10 * PROGRESS_INTERVAL
    assert writer.flush_due() is None and written == []
    assert writer.plan(now[0] + 1.0) == now[0] + 1.0
    # its thread, should it return, hands on nothing (that outcome is discarded)
    given_up.ended = True
    assert writer.take(given_up) is None
    # the exchange recording its JobTimeout takes it, once
    assert writer.take(given_up, given_up=True) == Report(given_up, 0.2, "half", {})
    assert writer.take(given_up, given_up=True) is None
    # and one whose outcome took nothing is forgotten once it settled
    writer.settled(["b", "c"])
    assert writer.take(forgotten, given_up=True) is None and written == []


def test_a_settled_attempts_report_is_shown_only_for_a_row_read_before_it_settled(now: list[float]) -> None:
    # given an attempt that reported, ended, and handed its last report to its outcome
    writer, _, _ = _writer()
    ended = _context("a", now)
    writer.report(Report(ended, 0.8, "almost", {}))
    ended.ended = True
    assert writer.take(ended) == Report(ended, 0.8, "almost", {})
    # when a row is read (after a mark), then the outcome is recorded and settled
    read_before = writer.mark()
    writer.settled(["a"])
    read_after = writer.mark()
    # then the report is shown for the row read before, which may show the attempt still
    # running; never for one read after, which holds the outcome or what came after it
    # (the job retried or re-queued, maybe running again as an attempt of that number)
    assert writer.latest("a", read_before) == Report(ended, 0.8, "almost", {})
    assert writer.latest("a", read_after) is None
    # and a new attempt's reports are shown, whenever the row was read
    again = _context("a", now)
    writer.report(Report(again, 0.1, "", {}))
    assert writer.latest("a", read_after) == Report(again, 0.1, "", {})


def test_a_report_being_written_as_the_attempt_ends_goes_with_the_outcome_too(now: list[float]) -> None:
    # The flusher's write may reach the store only after the outcome (then refused): the
    # outcome must carry that report as well.
    context = _context("a", now)
    taken: list[Optional[Report]] = []

    def write(report: Report) -> None:
        context.ended = True  # the attempt ends while this write is under way
        taken.append(writer.take(context))
        assert writer.latest("a") == report  # shown until the outcome is recorded

    writer = ProgressWriter(write, throttle=True, wake=lambda: True)
    now[0] += 5.0
    writer.report(Report(context, 0.7, "", {}))
    writer.flush_due()
    assert taken == [Report(context, 0.7, "", {})]
    assert writer.latest("a") == Report(context, 0.7, "", {})  # the write done, the outcome not yet


def test_a_write_the_store_refuses_is_logged_and_the_others_go_on(
        now: list[float], caplog: pytest.LogCaptureFixture) -> None:
    writes: list[str] = []

    def write(report: Report) -> None:
        if report.context.id == "a":
            raise RepositoryError("disk full")
        writes.append(report.context.id)

    writer = ProgressWriter(write, throttle=True, wake=lambda: True)
    a, b = _context("a", now), _context("b", now)
    now[0] += 5.0
    writer.report(Report(a, 0.1, "", {}))
    writer.report(Report(b, 0.1, "", {}))
    with caplog.at_level("WARNING", logger="jobcore.progress"):
        assert writer.flush_due() is None  # does not raise: the housekeeper goes on
    assert writes == ["b"]
    assert "could not store a progress report of job a: disk full" in caplog.text
    # (each still shown here, the refused one too: a later report, or the outcome, stores it)
    assert writer.latest("a") == Report(a, 0.1, "", {}) and writer.latest("b") == Report(b, 0.1, "", {})


class _ApplyOnly(CountingSQLite):
    """A store whose `apply` predates `Settlement.progress`: it records no progress."""

    stores_settlement_progress = False
    refuse_progress = False

    def update_progress(self, *args: Any, **kwargs: Any) -> bool:
        if self.refuse_progress:
            self.progress_writes += 1
            raise RepositoryError("disk full")
        return super().update_progress(*args, **kwargs)


@pytest.mark.parametrize("refuse", [False, True])
def test_a_store_that_cannot_record_progress_with_outcomes_gets_the_last_report_before_it(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, sqlite_store: Callable[..., Any],
        refuse: bool) -> None:
    monkeypatch.setattr(progress_module, "PROGRESS_INTERVAL", 3600.0)
    repository = sqlite_store(_ApplyOnly)
    repository.refuse_progress = refuse
    with caplog.at_level("WARNING", logger="jobcore.workers"):
        with JobManager(repository, max_workers=1) as manager:
            manager.register_function("reports_and_ends", reports_and_ends)
            result = manager.wait(manager.enqueue(Job(function_name="reports_and_ends")), timeout=WAIT)
    assert repository.folded == {}  # never handed a report it would drop
    assert repository.progress_writes == 1
    assert result.status is JobStatus.COMPLETED  # the outcome went on either way
    if refuse:
        assert "could not store the last progress report of job" in caplog.text
        assert result.progress_message == ""
    else:
        assert (result.progress, result.progress_message, result.progress_details) == (1.0, "step 3", {"step": 3})


class _Recording:
    """A sink that keeps what it is given."""

    def __init__(self) -> None:
        self.progress: list[float] = []
        self.messages: list[str] = []
        self.details: list[dict] = []

    def report_progress(self, context: JobContext, progress: float, message: str, details: dict) -> None:
        self.progress.append(progress)
        self.messages.append(message)
        self.details.append(details)

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


def test_a_detail_may_have_any_name_but_progress_and_message() -> None:
    # A detail named `self` raised "got multiple values for argument 'self'"
    sink = _Recording()
    context = JobContext("a", "a", 1, sink)
    context.progress(0.5, "m", self=1, context=2)
    context.progress_callback(0.6, message="n", self=3)
    assert sink.details == [{"self": 1, "context": 2}, {"self": 3}] and sink.messages == ["m", "n"]



def test_a_report_whose_write_returns_after_its_attempt_settled_is_not_shown_again() -> None:
    # The housekeeper was writing an attempt's last report (its store call waiting, on a
    # busy file) as the attempt ended and its outcome was recorded: once the write
    # returned, the report moved to the written ones, never to leave them, and every
    # later poll of the job (re-queued and running again here, as attempt 1 again) showed
    # it, whatever its mark.
    writing, release = threading.Event(), threading.Event()

    def slow_write(report: Report) -> None:
        writing.set()
        assert release.wait(10)

    writer = ProgressWriter(slow_write, throttle=True, wake=lambda: True)
    context = JobContext("a", "a", 1, _Recording())
    context.began_at -= 2 * PROGRESS_INTERVAL  # its first report is due at once
    context.reported_progress = True
    writer.report(Report(context, 0.8, "almost", {"step": 8}))
    flusher = threading.Thread(target=writer.flush_due)
    flusher.start()
    assert writing.wait(10)
    context.ended = True
    taken = writer.take(context)
    assert taken is not None and taken.progress == 0.8  # the outcome records it
    writer.settled(["a"])
    assert writer.latest("a", writer.mark()) is None
    release.set()
    flusher.join(10)
    assert not flusher.is_alive()
    assert writer.latest("a", writer.mark()) is None


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_details_are_kept_as_reported_whatever_the_job_or_a_caller_changes_after(
        kind: str, make_manager: Any, tmp_path: Any) -> None:
    # A job's list in its details, and the list in a JobResult poll gave, were the very list
    # the store (memory) or the report waiting to be written (SQLite) held: changing
    # either changed the job's progress, until it ended and after.
    reported, release = threading.Event(), threading.Event()

    def reports_then_changes_its_list() -> None:
        items, counts = [1, 2], Counter(ok=1)
        current_job().progress(0.5, "half", items=items, nested={"n": [1]}, counts=counts)  # type: ignore[union-attr]
        items.append("changed by the job")
        counts["ok"] += 998  # (a Counter, as a dict subclass, was kept as the job's own)
        reported.set()
        assert release.wait(WAIT)

    manager: JobManager = make_manager(MemoryRepository() if kind == "memory" else str(tmp_path / "jobs.db"),
                                       max_workers=1)
    manager.register_function("reports", reports_then_changes_its_list)
    manager.start()
    job_id = manager.enqueue(Job(function_name="reports"))
    try:
        assert reported.wait(WAIT)
        polled = manager.poll(job_id)
        assert polled is not None and polled.progress_details == {"items": [1, 2], "nested": {"n": [1]}, "counts": {"ok": 1}}
        polled.progress_details["items"].append("changed by the caller")
        polled.progress_details["nested"]["n"].append("changed by the caller")
        polled.progress_details["counts"]["caller"] = 1
        assert manager.poll(job_id).progress_details == {"items": [1, 2], "nested": {"n": [1]}, "counts": {"ok": 1}}  # type: ignore[union-attr]
    finally:
        release.set()
    assert manager.wait(job_id, timeout=WAIT).progress_details == {"items": [1, 2], "nested": {"n": [1]}, "counts": {"ok": 1}}
