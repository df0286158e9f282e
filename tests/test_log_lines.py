"""A running job's log lines (docs/api.md). By default a line waits up to `log_interval`
(0.1 s) to be stored with the attempt's other lines, or goes with its outcome: any reader
of the store sees it by then, this process's `get_logs` at once, in order, and none is
lost when the attempt ends. With `log_interval=0` each line is committed before `log`
returns. A drain of jobs that log stores their lines with their outcomes, not a write
each (one line a job cut a SQLite drain to 0.27× of jobs that log none)."""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Optional

import pytest

from jobcore import FakeClock, Job, JobManager, JobStatus, SQLiteRepository, current_job
from jobcore import log_buffer
from jobcore.context import JobContext
from jobcore.log_buffer import MOST_WAITING, LogBuffer
from jobcore.repository.base import JobRepository
from mixed_repositories import BACKENDS, AsIs, repository_with
from pg_fixtures import *  # noqa: F401,F403 (the fixtures: server, schema)
from waiting import enqueue_and_time_out

WAIT = 10.0


@pytest.fixture(params=BACKENDS)
def any_repository(request: Any, tmp_path: Any) -> JobRepository:
    return repository_with(AsIs, request, tmp_path)


def _reader_sees(repository: JobRepository, job_id: str, wanted: list[str]) -> bool:
    """Whether a reader of the store (not the manager) sees the job's lines as `wanted`
    within WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if [message for _, _, message in repository.logs(job_id)] == wanted:
            return True
        time.sleep(0.005)
    return False


@pytest.mark.parametrize("log_interval", [None, 0.0])
def test_lines_reach_every_reader_in_order_and_none_is_lost_when_the_attempt_ends(
        any_repository: Any, make_manager: Any, log_interval: Optional[float]) -> None:
    repository = any_repository
    logged, read = threading.Event(), threading.Event()

    def job(fail: bool) -> None:
        context = current_job()
        assert context is not None
        context.log("one")
        logged.set()
        assert read.wait(WAIT)
        context.log("two", "warning")
        context.log("three")
        if fail:
            raise ValueError("after three lines")

    settings = {} if log_interval is None else {"log_interval": log_interval}
    manager: JobManager = make_manager(repository, max_workers=1, **settings)
    manager.register_function("job", job)
    manager.start()
    for fail in (False, True):
        logged.clear()
        read.clear()
        job_id = manager.enqueue(Job(function_name="job", args=(fail,), max_retries=0))
        try:
            assert logged.wait(WAIT)
            if log_interval == 0:
                # committed before `log` returned: read from this thread, another
                # connection than the job's (a pooled one on PostgreSQL), it is there now
                assert [message for _, _, message in repository.logs(job_id)] == ["one"]
            else:
                # this process shows the line at once; a reader of the store sees it while
                # the job still runs (within the interval)
                assert [entry.message for entry in manager.get_logs(job_id)] == ["one"]
                assert manager.count_logs(job_id) == 1
                assert _reader_sees(repository, job_id, ["one"])
            assert manager.poll(job_id).status is JobStatus.RUNNING
        finally:
            read.set()
        result = manager.wait(job_id, timeout=WAIT)
        assert result.status is (JobStatus.FAILED if fail else JobStatus.COMPLETED)
        # once the outcome is in, so is every line, in order, for any reader
        lines = [(level, message) for _, level, message in repository.logs(job_id)]
        assert lines[:3] == [("info", "one"), ("warning", "two"), ("info", "three")]
        assert len(lines) == (4 if fail else 3)  # and the engine's line for the failed attempt, last
        assert [(entry.level, entry.message) for entry in manager.get_logs(job_id)] == lines


class _CountedWrites(SQLiteRepository):
    """Counts the writes of log lines of their own (not with an outcome)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log_writes = 0

    def add_log(self, *args: Any) -> None:
        self.log_writes += 1
        super().add_log(*args)

    def add_logs(self, *args: Any) -> None:
        self.log_writes += 1
        super().add_logs(*args)


@pytest.mark.parametrize("durability", ["normal", "full"])
def test_the_lines_of_short_jobs_go_with_their_outcomes_not_in_writes_of_their_own(
        tmp_path: Any, make_manager: Any, durability: str) -> None:
    repository = _CountedWrites(str(tmp_path / "jobs.db"), durability=durability)

    def job(n: int) -> None:
        current_job().log(f"first of {n}")
        current_job().log(f"second of {n}", "debug")

    manager: JobManager = make_manager(repository)
    manager.register_function("job", job)
    ids = [manager.enqueue(Job(function_name="job", args=(n,))) for n in range(300)]
    manager.start()
    for job_id in ids:
        manager.wait(job_id, timeout=WAIT)

    # 600 lines, and almost none written on its own (a job still running at a housekeeper's
    # pass may have its lines written then); each job's lines all there, in order
    assert repository.log_writes <= 20, repository.log_writes
    reader = SQLiteRepository(str(tmp_path / "jobs.db"))
    try:
        for n, job_id in enumerate(ids):
            assert [(level, message) for _, level, message in reader.logs(job_id)] == [
                ("info", f"first of {n}"), ("debug", f"second of {n}")]
    finally:
        reader.close()


def test_a_job_logging_in_a_loop_keeps_every_line_in_order(tmp_path: Any, make_manager: Any) -> None:
    count = 2 * MOST_WAITING + 500  # past the lines one attempt may have waiting, twice

    def job() -> None:
        for n in range(count):
            current_job().log(f"line {n}")
            if n % 700 == 0:
                time.sleep(0.12)  # and the housekeeper writes some of them meanwhile

    manager: JobManager = make_manager(str(tmp_path / "jobs.db"))
    manager.register_function("job", job)
    manager.start()
    job_id = manager.enqueue(Job(function_name="job"))
    assert manager.wait(job_id, timeout=WAIT).status is JobStatus.COMPLETED
    assert [entry.message for entry in manager.get_logs(job_id)] == [f"line {n}" for n in range(count)]


@pytest.mark.parametrize("retries", [0, 1])
def test_the_lines_of_an_attempt_given_up_at_its_timeout_go_with_its_outcome(
        any_repository: Any, make_manager: Any, retries: int) -> None:
    # given a thread job that logs a line, then hangs past its timeout (and a second
    # attempt, when retried, that logs one and returns); the manager's clock a fake one,
    # moved past the timeout once the line is logged
    repository = any_repository
    clock = FakeClock()
    logged, release = threading.Event(), threading.Event()

    def job() -> str:
        context = current_job()
        assert context is not None
        context.log(f"attempt {context.attempt}: connecting")
        if context.attempt == 1:
            logged.set()
            release.wait(WAIT)
        return "done"

    # (the lines would wait a minute for a write of their own: only the outcome brings them)
    manager: JobManager = make_manager(repository, max_workers=1, log_interval=60.0, clock=clock)
    manager.register_function("job", job)
    manager.start()
    try:
        job_id = enqueue_and_time_out(manager, clock, Job(function_name="job", timeout=5.0, max_retries=retries,
                                                           retry_delay=0.0, retry_jitter=False), logged, WAIT)
        result = manager.wait(job_id, timeout=WAIT)
        # then a reader of the store sees the given-up attempt's line as soon as `wait`
        # returns, before the note of its failure, and before the retry's lines
        lines = repository.logs(job_id)
        messages = [message for _, _, message in lines]
        assert messages[0] == "attempt 1: connecting"
        assert "JobTimeout" in messages[1] and messages[1].startswith("attempt 1 failed")
        if retries:
            assert result.status is JobStatus.COMPLETED
            assert len(messages) == 4 and messages[2] == "attempt 2: connecting"
            assert messages[3].startswith("attempt 2 completed after")
        else:
            assert result.status is JobStatus.FAILED and result.error_type == "JobTimeout"
            assert len(messages) == 2
        stamps = [at for at, _, _ in lines]
        assert stamps == sorted(stamps)
    finally:
        release.set()


def test_no_flush_takes_the_lines_of_an_attempt_given_up_at_its_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    # given lines of two attempts waiting, the first given up at its timeout
    clock = [100.0]
    monkeypatch.setattr(log_buffer, "real_monotonic", lambda: clock[0])
    written: list[tuple[str, list[str]]] = []
    buffer = LogBuffer(lambda job_id, lines: written.append((job_id, [m for _, _, m in lines])),
                       throttle=True, interval=0.1, wake=lambda: True)
    given_up, running = (JobContext(job_id, job_id, 1, None) for job_id in ("a", "b"))  # type: ignore[arg-type]
    buffer.report(given_up, (clock[0], "info", "a one"))
    clock[0] = 100.5
    buffer.report(running, (clock[0], "info", "b one"))
    given_up.abandoned = True
    # then the flusher is woken for the running attempt's lines alone
    assert buffer.plan(200.0) == pytest.approx(100.6)
    # and a flush, their interval past, writes those alone (the others go with the
    # JobTimeout's outcome, in its transaction)
    clock[0] = 101.0
    assert buffer.flush_due() is None
    assert written == [("b", ["b one"])]
    assert buffer.plan(200.0) == 200.0
    # which takes them, once
    assert buffer.take(given_up, handing_on=True) == ((100.0, "info", "a one"),)
    assert buffer.take(given_up, handing_on=True) == ()


def test_a_manager_not_started_running_jobs_in_the_callers_thread_keeps_their_lines(
        tmp_path: Any, make_manager: Any) -> None:
    def job(n: int) -> None:
        current_job().log(f"job {n}")

    manager: JobManager = make_manager(str(tmp_path / "jobs.db"))
    manager.register_function("job", job)
    ids = [manager.enqueue(Job(function_name="job", args=(n,))) for n in range(3)]
    assert manager.run_pending() == 3
    reader = SQLiteRepository(str(tmp_path / "jobs.db"))
    try:
        assert [[message for _, _, message in reader.logs(job_id)] for job_id in ids] == [
            ["job 0"], ["job 1"], ["job 2"]]
    finally:
        reader.close()


def test_lines_left_waiting_at_stop_are_stored(tmp_path: Any, make_manager: Any) -> None:
    release = threading.Event()

    def job() -> None:
        current_job().log("still running")
        release.wait(WAIT)

    manager: JobManager = make_manager(str(tmp_path / "jobs.db"), log_interval=60.0)
    manager.register_function("job", job)
    manager.start()
    job_id = manager.enqueue(Job(function_name="job", timeout=0.2, max_retries=0))
    try:
        assert manager.wait(job_id, timeout=WAIT).status is JobStatus.FAILED  # timed out: no outcome carries it
        manager.stop()
        reader = SQLiteRepository(str(tmp_path / "jobs.db"))
        try:
            assert "still running" in [message for _, _, message in reader.logs(job_id)]
        finally:
            reader.close()
    finally:
        release.set()


def test_a_stop_from_a_signal_handler_interrupting_a_write_of_lines_does_not_wait_for_itself(
        tmp_path: Any) -> None:
    # given two running jobs' lines waiting, and this thread writing one's for `get_logs`
    # when a signal handler calls `stop()` (which writes whatever still waits)
    release = threading.Event()

    def job() -> None:
        current_job().log("waiting")
        release.wait(WAIT)

    # (not closed if the stop hung: closing would wait for it too, and the test with it)
    manager = JobManager(str(tmp_path / "jobs.db"), log_interval=60.0, max_workers=2)
    manager.register_function("job", job)
    manager.start()
    job_id, other_id = (manager.enqueue(Job(function_name="job")) for _ in range(2))
    logs = manager._pool._logs
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline and len(logs._waiting) < 2:
        time.sleep(0.005)
    store, stopped = logs._write, threading.Event()

    def write_interrupted(*args: Any) -> None:
        logs._write = store
        manager.stop(wait=False)  # as the handler would, on this thread, in the middle of the write
        stopped.set()
        store(*args)

    logs._write = write_interrupted
    # when it reads the log (the stop runs inside its write)
    done = threading.Thread(target=lambda: manager.get_logs(job_id), daemon=True)
    done.start()
    done.join(WAIT)
    release.set()
    # then the stop returned, and the read too, both lines stored
    assert stopped.is_set() and not done.is_alive()
    try:
        assert [[message for _, _, message in manager.repository.logs(either)][:1]
                for either in (job_id, other_id)] == [["waiting"], ["waiting"]]
    finally:
        manager.stop(timeout=WAIT)
        manager.close()


@pytest.mark.parametrize("value,error", [(-0.1, ValueError), (float("nan"), ValueError), ("0.1", TypeError)])
def test_log_interval_must_be_a_number_of_seconds(tmp_path: Any, value: Any, error: type) -> None:
    with pytest.raises(error, match="log_interval"):
        JobManager(str(tmp_path / "jobs.db"), log_interval=value)
