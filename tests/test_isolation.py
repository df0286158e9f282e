"""Process isolation: attempts run in pooled child processes that timeouts and cancels end.

Real child processes throughout. The job functions are module-level so a child can
import this module by name (the runner hands children the parent's sys.path).
"""

from __future__ import annotations

import asyncio
import functools
import math
import multiprocessing
import os
import contextlib
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.reduction import ForkingPickler
from typing import Any, Iterator, Optional

import pytest

from jobcore.clock import real_monotonic
from jobcore.context import JobContext, current_job
from jobcore.errors import JobCancelled, JobTimeout
from jobcore.execution import Outcome, run_attempt
from jobcore import isolation as isolation_module
from jobcore.isolation_process import Child, default_start_method
from jobcore.isolation import (NotIsolatable, ProcessRunner, RemoteError, WorkerProcessDied,
                               isolation_problem, memory_limit_supported)
from jobcore.retry import is_transient
from subprocesses import close_pipes

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOUND = 10.0  # seconds: the most any join in this file waits before failing the test


# -- job functions (run in the child) --------------------------------------------------------------
def add(a: int, b: int) -> int:
    return a + b


def fail_with_value_error(n: int) -> None:
    raise ValueError(f"bad input {n}")


def fail_with_connection_error() -> None:
    raise ConnectionError("peer reset the connection")


class CodeError(Exception):
    """An exception whose constructor does not take its own message (pickle mangles it)."""

    def __init__(self, code: int) -> None:
        super().__init__(f"failed with code {code}")
        self.code = code


def fail_with_code_error() -> None:
    raise CodeError(7)


def fail_with_local_error() -> None:
    class LocalGlitch(ConnectionError):
        pass
    raise LocalGlitch("the link flapped")


def report(progress_callback: Any = None) -> str:
    progress_callback(0.25, "quarter", step=1)
    job = current_job()
    assert job is not None
    job.log("halfway there", "warning")
    job.progress(1.0, "done", step=2)
    return f"{job.id}/{job.name}/{job.attempt}/{os.getpid()}"


def report_often(times: int) -> int:
    job = current_job()
    assert job is not None
    for i in range(1, times + 1):
        job.progress(i / times, f"step {i}", step=i)
    return times


def report_twice_then_wait(marker: str) -> None:
    job = current_job()
    assert job is not None
    job.progress(0.1, "first")
    job.progress(0.2, "second")  # (held: made within REPORT_EVERY of the first)
    while not os.path.exists(marker):  # until the test has seen it
        time.sleep(0.005)


def flusher_running() -> bool:
    return any(thread.name == "jobcore-child-reports" for thread in threading.enumerate())


async def async_double(x: int) -> tuple[int, Optional[str]]:
    await asyncio.sleep(0)
    job = current_job()
    return x * 2, None if job is None else job.id


def busy_loop() -> None:
    current_job().log("running")  # type: ignore[union-attr]
    while True:
        pass


def busy_with_progress(progress_callback: Any = None) -> None:
    current_job().log("running")  # type: ignore[union-attr]
    while True:
        progress_callback(0.5, "working")


def busy_then_mark(marker: str, report_first: bool = False) -> None:
    try:
        current_job().log("running")  # type: ignore[union-attr]
        while True:
            pass
    finally:
        if report_first:  # (after the attempt's end: dropped, and the block goes on)
            current_job().log("cleaning up")  # type: ignore[union-attr]
            current_job().progress(1.0, "cleaned")  # type: ignore[union-attr]
        with open(marker, "w") as out:
            out.write("cleaned up")


def busy_ignoring_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    current_job().log("running")  # type: ignore[union-attr]
    while True:
        pass


def wait_for_file(path: str) -> int:
    current_job().log("running")  # type: ignore[union-attr]
    while not os.path.exists(path):
        threading.Event().wait(0.01)
    return os.getpid()


def fork_a_copy_that_raises() -> tuple[str, int]:
    """Fork; the copy logs and raises out of the job (no `os._exit`); returns once it ended."""
    pid = os.fork()
    if pid == 0:
        current_job().log("from the copy")  # type: ignore[union-attr]
        raise RuntimeError("the copy's own error")
    for _ in range(int(BOUND / 0.01)):
        ended, status = os.waitpid(pid, os.WNOHANG)
        if ended:
            return "the child's own result", os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)  # it served on in the child's place: the old code
    os.waitpid(pid, 0)
    return "the child's own result", -1


def log_then_spin(lines: int, marker: str) -> None:
    for number in range(lines):
        current_job().log(f"line {number}")  # type: ignore[union-attr]
    with open(marker, "w"):
        pass  # every log() call has returned: the lines are in the pipe, or read
    while True:
        pass


def exit_abruptly(code: int) -> None:
    os._exit(code)


def return_lock() -> Any:
    return threading.Lock()


def allocate(n_bytes: int) -> int:
    return len(bytearray(n_bytes))


def child_pid() -> int:
    return os.getpid()


class Tools:
    @staticmethod
    def triple(x: int) -> int:
        return 3 * x

    @classmethod
    def name(cls) -> str:
        return cls.__name__

    def method(self) -> None:
        pass


class Greeter:
    def __call__(self) -> str:
        return "hello"


# -- fixtures -------------------------------------------------------------------------------------------
class RecordingSink:
    """A fake ContextSink: keeps every report, and lets a test wait for a log line."""

    def __init__(self) -> None:
        self._cond = threading.Condition()  # guards events
        self.events: list[tuple[Any, ...]] = []

    def report_progress(self, context: JobContext, progress: float, message: str,
                        details: dict[str, Any]) -> None:
        with self._cond:
            self.events.append(("progress", progress, message, details))
            self._cond.notify_all()

    def report_log(self, context: JobContext, level: str, message: str) -> None:
        with self._cond:
            self.events.append(("log", level, message))
            self._cond.notify_all()

    def wait_for_progress(self, message: str) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: any(e[0] == "progress" and e[2] == message for e in self.events),
                                       BOUND), f"no progress report {message!r} within {BOUND}s"

    def wait_for_log(self, message: str) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: any(e[0] == "log" and e[2] == message for e in self.events),
                                       BOUND), f"no log line {message!r} within {BOUND}s"


def wait_until_gone(pid: int) -> None:
    """Block until process `pid` no longer exists (its parent reaped it), at most BOUND s."""
    gone = threading.Event()
    for _ in range(int(BOUND / 0.01)):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        gone.wait(0.01)
    raise AssertionError(f"process {pid} still exists after {BOUND}s")


@pytest.fixture
def runner() -> Iterator[ProcessRunner]:
    with ProcessRunner(2, grace=0.5) as pool:
        yield pool


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


@pytest.fixture
def context(sink: RecordingSink) -> JobContext:
    return JobContext("job-1", "a job", 1, sink)


@pytest.fixture
def in_background() -> Iterator[Any]:
    """Run a blocking call on another thread; the test collects it with a bounded wait."""
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="test-isolation") as executor:
        yield executor.submit


# -- values, errors, reports -----------------------------------------------------------------------
def test_a_value_comes_back(runner: ProcessRunner, context: JobContext) -> None:
    outcome = runner.run(add, (2, 3), {}, context)
    assert outcome == Outcome(value=5)


def test_an_exception_comes_back_with_type_message_and_the_childs_traceback(
        runner: ProcessRunner, context: JobContext) -> None:
    outcome = runner.run(fail_with_value_error, (7,), {}, context)
    assert type(outcome.error) is ValueError and str(outcome.error) == "bad input 7"
    assert outcome.traceback is not None
    assert "fail_with_value_error" in outcome.traceback and "ValueError: bad input 7" in outcome.traceback


def test_a_connection_error_comes_back_as_a_connection_error(
        runner: ProcessRunner, context: JobContext) -> None:
    outcome = runner.run(fail_with_connection_error, (), {}, context)
    assert isinstance(outcome.error, ConnectionError) and is_transient(outcome.error)


def test_an_exception_that_pickle_mangles_is_rebuilt_with_its_message_and_attributes(
        runner: ProcessRunner, context: JobContext) -> None:
    outcome = runner.run(fail_with_code_error, (), {}, context)
    assert type(outcome.error) is CodeError
    assert str(outcome.error) == "failed with code 7" and outcome.error.code == 7


def test_an_exception_whose_class_cannot_be_imported_keeps_its_name_and_nearest_base(
        runner: ProcessRunner, context: JobContext) -> None:
    outcome = runner.run(fail_with_local_error, (), {}, context)
    assert isinstance(outcome.error, RemoteError) and isinstance(outcome.error, ConnectionError)
    assert type(outcome.error).__name__ == "LocalGlitch" and str(outcome.error) == "the link flapped"
    assert is_transient(outcome.error)


def test_progress_and_logs_reach_the_parent_context_in_order(
        runner: ProcessRunner, context: JobContext, sink: RecordingSink) -> None:
    outcome = runner.run(report, (), {}, context)
    job_id, name, attempt, pid = outcome.value.split("/")
    assert (job_id, name, attempt) == ("job-1", "a job", "1") and int(pid) != os.getpid()
    assert sink.events == [("progress", 0.25, "quarter", {"step": 1}),
                           ("log", "warning", "halfway there"),
                           ("progress", 1.0, "done", {"step": 2})]


def test_progress_reported_in_a_tight_loop_crosses_the_pipe_a_few_times_ending_with_the_last(
        runner: ProcessRunner, context: JobContext, sink: RecordingSink) -> None:
    # given a job reporting its progress 20,000 times as fast as it can (each report crossed
    # the pipe: the engine spent about 10 µs of CPU on each, and the job ran at its pace)
    outcome = runner.run(report_often, (20_000,), {}, context)
    assert outcome.value == 20_000
    # then a few of them reached the parent, in order, the last one among them
    reports = [e for e in sink.events if e[0] == "progress"]
    assert 1 <= len(reports) < 2_000, len(reports)
    assert reports[-1] == ("progress", 1.0, "step 20000", {"step": 20_000})
    assert [e[3]["step"] for e in reports] == sorted(e[3]["step"] for e in reports)


def test_a_progress_report_held_back_reaches_the_parent_while_the_job_runs_on(
        runner: ProcessRunner, context: JobContext, sink: RecordingSink, in_background: Any,
        tmp_path: Any) -> None:
    # given a job that reports twice at once, then makes no report while it runs on
    marker = str(tmp_path / "seen")
    running = in_background(runner.run, report_twice_then_wait, (marker,), {}, context)
    # then the second report reaches the parent while it runs (not only with its answer)
    sink.wait_for_progress("second")
    assert not running.done()
    open(marker, "w").close()
    assert running.result(timeout=BOUND).error is None
    assert [e[2] for e in sink.events if e[0] == "progress"] == ["first", "second"]


def test_the_thread_sending_held_reports_runs_before_any_job_reports(
        runner: ProcessRunner, context: JobContext) -> None:
    # (started by a job's report, it ran under the attempt's memory_limit, where it could
    # fail to start: the report raised, and no held report was sent from then on)
    assert runner.run(flusher_running, (), {}, context).value is True


def test_the_thread_sending_held_reports_ends_quietly_once_the_parent_stops_listening(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # given a child's end of the pipe whose parent closed its end (as it does before it ends
    # the child), and a progress report held there (the thread died on the broken pipe, and
    # its traceback, cut off by the child's end, went to the worker's stderr)
    from types import SimpleNamespace
    from jobcore.isolation_child import _AttemptSink, _PipeSink
    failures: list[Any] = []
    monkeypatch.setattr(threading, "excepthook", failures.append)
    ours, theirs = multiprocessing.Pipe()
    theirs.close()
    before = set(threading.enumerate())
    pipe = _PipeSink(ours)
    flusher, = [t for t in threading.enumerate() if t not in before and t.name == "jobcore-child-reports"]
    sink = _AttemptSink(pipe, SimpleNamespace(check_details=False, max_payload_bytes=None))  # type: ignore[arg-type]
    sink._sent_at = time.monotonic()  # (a report just sent: the next is held)
    # when the report is held and its time comes
    sink.report_progress(JobContext("job-1", "a job", 1, RecordingSink()), 0.5, "held", {})
    flusher.join(BOUND)
    # then the thread ended without an exception
    assert not flusher.is_alive() and failures == []
    ours.close()


class _HeldReportPipe:
    """The parent's end of a child's pipe, whose child sends a progress report it held
    once the parent waits for one (a poll with a timeout), not before."""

    def __init__(self, conn: Any, child_end: Any) -> None:
        self._conn, self._child_end = conn, child_end
        self.waits: list[float] = []

    def poll(self, timeout: float = 0.0) -> bool:
        """(Never blocks: a wait that nothing answers ends at once.)"""
        self.waits.append(timeout)
        if timeout > 0 and len(self.waits) == 1:
            self._child_end.send_bytes(ForkingPickler.dumps(("progress", 0.2, "second", {})))
        return bool(self._conn.poll(0))

    def recv_bytes(self) -> bytes:
        return bytes(self._conn.recv_bytes())


def test_a_stopped_attempt_waits_for_a_held_report_from_the_last_report_before_the_stop(
        runner: ProcessRunner, context: JobContext, sink: RecordingSink, monkeypatch: pytest.MonkeyPatch) -> None:
    # given a child whose last report came a while before the stop, and which sends one more
    # as the stop waits (a child reporting all along: each report read used to start the
    # wait afresh, and the drain ran to its end, 0.2 s, with the child alive)
    parent_end, child_end = multiprocessing.Pipe()
    pipe = _HeldReportPipe(parent_end, child_end)
    child = Child(process=None, conn=pipe, pid=None)  # type: ignore[arg-type]
    monkeypatch.setattr(isolation_module, "_HELD_REPORT_WAIT", 10.0)  # (the pipe never blocks)
    monkeypatch.setattr(isolation_module, "_DRAIN_SECONDS", 60.0)
    child.reported_at = real_monotonic() - 1.0
    monkeypatch.setattr(runner._pool, "terminate", lambda child: None)
    # when the attempt is stopped
    runner._stop(child, context, Outcome(error=JobCancelled("job-1")))
    # then the report is relayed, and the wait after it ends when the first one would have
    assert sink.events == [("progress", 0.2, "second", {})]
    assert len(pipe.waits) == 2 and pipe.waits[1] < pipe.waits[0] <= 9.0, pipe.waits


@pytest.mark.parametrize("reported_lately", [True, False])
def test_a_stopped_attempt_waits_for_a_report_its_child_may_hold(
        reported_lately: bool, runner: ProcessRunner, context: JobContext, sink: RecordingSink,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # given a child that sent a progress report just now (or none), and holds another
    # (made within REPORT_EVERY of the first: sent when that time comes); the last report
    # a job made before its timeout or cancel was lost
    parent_end, child_end = multiprocessing.Pipe()
    pipe = _HeldReportPipe(parent_end, child_end)
    child = Child(process=None, conn=pipe, pid=None)  # type: ignore[arg-type]
    child.reported_at = real_monotonic() if reported_lately else None
    monkeypatch.setattr(runner._pool, "terminate", lambda child: None)
    # when the attempt is stopped
    stopped = Outcome(error=JobCancelled("job-1"))
    assert runner._stop(child, context, stopped) is stopped
    # then a report held is waited for and relayed; with none lately, nothing is waited for
    if reported_lately:
        assert sink.events == [("progress", 0.2, "second", {})]
    else:
        assert sink.events == [] and pipe.waits == [0.0]


def test_a_coroutine_function_runs_on_an_event_loop_in_the_child(
        runner: ProcessRunner, context: JobContext) -> None:
    assert runner.run(async_double, (21,), {}, context).value == (42, "job-1")


def test_a_return_value_that_does_not_pickle_fails_the_attempt_and_the_child_lives_on(
        runner: ProcessRunner, context: JobContext) -> None:
    outcome = runner.run(return_lock, (), {}, context)
    assert isinstance(outcome.error, TypeError) and "cannot be sent back" in str(outcome.error)
    assert runner.run(add, (1, 1), {}, context).value == 2
    assert runner.stats.started == 1


def test_arguments_that_do_not_pickle_fail_the_attempt_before_any_child_runs_it(
        runner: ProcessRunner, context: JobContext) -> None:
    outcome = runner.run(add, (threading.Lock(), 1), {}, context)
    assert isinstance(outcome.error, TypeError) and "must pickle" in str(outcome.error)
    assert runner.run(add, (1, 1), {}, context).value == 2


def test_run_never_raises_even_when_its_context_is_what_is_wrong(runner: ProcessRunner) -> None:
    # given no JobContext (the runner's own handler must not read the thing that failed)
    outcome = runner.run(add, (1, 1), {}, None)  # type: ignore[arg-type]
    # then the failure is the outcome, not an exception out of run
    assert isinstance(outcome.error, AttributeError) and outcome.traceback


def test_a_module_put_on_sys_path_after_the_child_started_is_found(
        runner: ProcessRunner, context: JobContext, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    assert runner.run(add, (1, 1), {}, context).value == 2  # the child exists now
    (tmp_path / "late_isolation_jobs.py").write_text("def shout(s):\n    return s.upper()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import late_isolation_jobs  # type: ignore[import-not-found]
    try:
        assert runner.run(late_isolation_jobs.shout, ("hi",), {}, context).value == "HI"
        assert runner.stats.started == 1
    finally:
        sys.modules.pop("late_isolation_jobs", None)


# -- timeouts and cancellation ---------------------------------------------------------------------
def test_a_busy_loop_times_out_and_the_runner_goes_on_with_a_fresh_child(
        runner: ProcessRunner, context: JobContext) -> None:
    assert runner.run(add, (1, 2), {}, context).value == 3  # a warm child: time the job alone
    started = time.monotonic()
    outcome = runner.run(busy_loop, (), {}, context, timeout=0.5)
    elapsed = time.monotonic() - started
    assert isinstance(outcome.error, JobTimeout) and outcome.error.timeout == 0.5
    assert elapsed >= 0.45  # not before its timeout (a loop that never ends proves the kill)
    assert runner.run(add, (1, 2), {}, context).value == 3
    stats = runner.stats
    assert (stats.terminated, stats.started, stats.running) == (1, 2, 0)


def test_a_terminated_job_runs_its_finally_blocks(
        runner: ProcessRunner, context: JobContext, sink: RecordingSink,
        in_background: Any, tmp_path: Any) -> None:
    marker = tmp_path / "marker.txt"
    future = in_background(runner.run, busy_then_mark, (str(marker),), {}, context)
    sink.wait_for_log("running")
    context.request_cancel()
    assert future.result(timeout=BOUND).cancelled
    assert marker.read_text() == "cleaned up"  # the child was reaped, so the write is done


@pytest.mark.parametrize("end", ["cancel", "timeout"])
def test_reports_a_finally_block_makes_after_the_end_are_dropped_and_the_rest_of_it_runs(
        runner: ProcessRunner, context: JobContext, sink: RecordingSink,
        in_background: Any, tmp_path: Any, end: str) -> None:
    # given a busy isolated job whose `finally` logs and reports progress before its cleanup
    marker = tmp_path / "marker.txt"
    timeout = 0.5 if end == "timeout" else None
    future = in_background(runner.run, busy_then_mark, (str(marker), True), {}, context, timeout=timeout)
    sink.wait_for_log("running")
    # when the attempt ends (the parent stops listening, then ends the child)
    if end == "cancel":
        context.request_cancel()
    future.result(timeout=BOUND)
    # then its cleanup ran all the same (the reports raised BrokenPipeError, cutting it short)
    assert marker.read_text() == "cleaned up"


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace_period(context: JobContext) -> None:
    with ProcessRunner(1, grace=0.2) as runner:
        assert runner.run(add, (1, 2), {}, context).value == 3  # a warm child: time the job alone
        started = time.monotonic()
        outcome = runner.run(busy_ignoring_sigterm, (), {}, context, timeout=0.3)
        assert isinstance(outcome.error, JobTimeout)
        assert time.monotonic() - started >= 0.45  # SIGTERM was given its grace first
        assert runner.run(add, (1, 2), {}, context).value == 3


def test_cancel_ends_a_busy_loop(runner: ProcessRunner, context: JobContext, sink: RecordingSink,
        in_background: Any) -> None:
    future = in_background(runner.run, busy_loop, (), {}, context)
    sink.wait_for_log("running")
    context.request_cancel()
    outcome = future.result(timeout=BOUND)
    assert isinstance(outcome.error, JobCancelled) and outcome.cancelled
    assert runner.stats.terminated == 1  # ended by killing its child: it never checks


def test_cancel_seen_at_a_progress_report_ends_the_job(runner: ProcessRunner, context: JobContext,
                                                        sink: RecordingSink, in_background: Any) -> None:
    future = in_background(runner.run, busy_with_progress, (), {}, context)
    sink.wait_for_log("running")
    context.request_cancel()
    assert future.result(timeout=BOUND).cancelled


class HeldSink(RecordingSink):
    """A RecordingSink whose first log line is stored only once `go` is set: the lines
    the child sends meanwhile wait in the pipe."""

    def __init__(self) -> None:
        super().__init__()
        self.go = threading.Event()

    def report_log(self, context: JobContext, level: str, message: str) -> None:
        assert self.go.wait(BOUND)
        super().report_log(context, level, message)


def test_log_lines_sent_before_a_cancel_are_all_stored(runner: ProcessRunner, in_background: Any,
                                                       tmp_path: Any) -> None:
    # The child was ended as soon as the cancel was seen, with the lines it had sent
    # still unread in the pipe: thread jobs kept every line, isolated ones lost the tail.
    sink = HeldSink()
    context = JobContext("job-1", "a job", 1, sink)
    marker = tmp_path / "logged"
    future = in_background(runner.run, log_then_spin, (200, str(marker)), {}, context)
    for _ in range(int(BOUND / 0.01)):
        if marker.exists():
            break
        time.sleep(0.01)
    assert marker.exists()
    context.request_cancel()
    sink.go.set()
    assert future.result(timeout=BOUND).cancelled
    assert [event[2] for event in sink.events] == [f"line {number}" for number in range(200)]


def test_a_copy_a_job_forks_neither_reports_nor_answers_for_it(runner: ProcessRunner, context: JobContext,
                                                               sink: RecordingSink) -> None:
    # The copy's error was the attempt's outcome, and the child's own answer, left in the
    # pipe, became the next attempt's; the copy served on beside the child.
    outcome = runner.run(fork_a_copy_that_raises, (), {}, context)
    assert outcome.error is None and outcome.value == ("the child's own result", 1)
    assert sink.events == []
    assert runner.run(add, (2, 3), {}, context).value == 5


def test_a_job_cancelled_before_it_starts_never_reaches_a_child(
        runner: ProcessRunner, context: JobContext) -> None:
    context.request_cancel()
    assert runner.run(add, (1, 2), {}, context).cancelled
    assert runner.stats.started == 0


# -- children that die ----------------------------------------------------------------------------------
def test_a_child_that_exits_abruptly_fails_the_attempt_with_a_transient_error(
        runner: ProcessRunner, context: JobContext) -> None:
    outcome = runner.run(exit_abruptly, (3,), {}, context)
    assert type(outcome.error).__name__ == "WorkerProcessDied"
    assert isinstance(outcome.error, WorkerProcessDied) and outcome.error.exitcode == 3
    assert "exited with code 3" in str(outcome.error) and is_transient(outcome.error)
    assert runner.run(add, (1, 2), {}, context).value == 3


def test_a_child_killed_from_outside_is_reported(
        runner: ProcessRunner, context: JobContext, sink: RecordingSink,
        in_background: Any) -> None:
    future = in_background(runner.run, busy_loop, (), {}, context)
    sink.wait_for_log("running")
    (pid,) = runner.pids()
    os.kill(pid, signal.SIGKILL)
    outcome = future.result(timeout=BOUND)
    assert isinstance(outcome.error, WorkerProcessDied)
    assert outcome.error.pid == pid and outcome.error.exitcode == -signal.SIGKILL
    assert "SIGKILL" in str(outcome.error)
    assert runner.stats.died == 1


def wait_for(condition: Any, what: str) -> None:
    """Block until `condition()` holds, at most BOUND seconds."""
    pause = threading.Event()
    for _ in range(int(BOUND / 0.01)):
        if condition():
            return
        pause.wait(0.01)
    raise AssertionError(f"not within {BOUND}s: {what}")


def test_a_forkserver_that_dies_leaves_the_running_attempt_to_its_child(
        runner: ProcessRunner, context: JobContext, sink: RecordingSink, in_background: Any,
        tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    # Under forkserver a child's exit is reported by the forkserver; when that died
    # (SIGTERM to the engine's process group) the attempt was once failed at once as
    # "exited with code 255" while the child ran on, and its retry ran beside it.
    if runner.start_method != "forkserver":
        pytest.skip("only the forkserver start method has a forkserver")
    from multiprocessing import forkserver
    marker = tmp_path / "go"
    future = in_background(runner.run, wait_for_file, (str(marker),), {}, context)
    sink.wait_for_log("running")
    (pid,) = runner.pids()
    os.kill(forkserver._forkserver._forkserver_pid, signal.SIGTERM)  # type: ignore[attr-defined]
    wait_for(lambda: future.done() or "forkserver that started" in caplog.text,
             "the runner saw the forkserver die")
    assert not future.done(), future.result()  # the attempt is not over while its child runs
    marker.write_text("go")
    assert future.result(timeout=BOUND).value == pid  # the child's answer is the outcome
    wait_until_gone(pid)  # not reused (no forkserver tells of its end): ended
    assert runner.run(add, (1, 2), {}, context).value == 3  # a new forkserver, a new child


def test_a_child_ended_at_interpreter_exit_fails_its_attempt_as_transient_not_as_a_runner_error(
        runner: ProcessRunner, context: JobContext, sink: RecordingSink, in_background: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    # At exit the runner's finalizer ends every child while a worker thread still
    # supervises one; the thread once read the closed process and failed the job with
    # a permanent ValueError("process object is closed").
    future = in_background(runner.run, busy_loop, (), {}, context)
    sink.wait_for_log("running")
    (pid,) = runner.pids()
    runner._pool._finalizer()  # what atexit runs
    outcome = future.result(timeout=BOUND)
    assert isinstance(outcome.error, WorkerProcessDied), outcome.error
    assert "because this process is exiting" in str(outcome.error) and outcome.error.pid == pid
    assert is_transient(outcome.error)
    assert "failed in the runner" not in caplog.text
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped, not a zombie


def test_close_after_the_exit_time_finalizer_ended_an_idle_child_is_quiet(context: JobContext) -> None:
    runner = ProcessRunner(1)
    pid = runner.run(child_pid, (), {}, context).value
    runner._pool._finalizer()  # interpreter exit ended the idle child first
    runner.close()       # then a manager's close: nothing left to end, nothing raised
    assert runner.pids() == []
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_an_idle_child_that_died_is_replaced_without_failing_the_next_attempt(
        runner: ProcessRunner, context: JobContext) -> None:
    pid = runner.run(child_pid, (), {}, context).value
    os.kill(pid, signal.SIGKILL)
    wait_until_gone(pid)
    assert runner.run(add, (1, 2), {}, context).value == 3
    assert runner.stats.died == 1 and runner.stats.started == 2


@pytest.mark.skipif(not memory_limit_supported(), reason="RLIMIT_AS is not enforced here")
def test_a_memory_limit_turns_a_big_allocation_into_a_memory_error(
        runner: ProcessRunner, context: JobContext) -> None:
    gib = 1024 ** 3
    outcome = runner.run(allocate, (4 * gib,), {}, context, memory_limit=gib)
    assert isinstance(outcome.error, MemoryError)
    assert runner.run(allocate, (1024,), {}, context).value == 1024  # a fresh child, no limit


# -- the pool ------------------------------------------------------------------------------------------
def test_a_thousand_small_jobs_reuse_two_children(context: JobContext) -> None:
    n = 1000
    with ProcessRunner(2) as runner, ThreadPoolExecutor(max_workers=2) as threads:
        started = time.monotonic()
        outcomes = list(threads.map(lambda i: runner.run(add, (i, 1), {}, context), range(n)))
        isolated = (time.monotonic() - started) / n
        stats = runner.stats
    assert [o.value for o in outcomes] == [i + 1 for i in range(n)]
    assert stats.started <= 2 and stats.reused >= n - 2
    started = time.monotonic()
    for i in range(n):
        run_attempt(add, (i, 1), {}, context)
    threaded = (time.monotonic() - started) / n
    print(f"\nper attempt: isolated {isolated * 1e6:.0f} us (2 children, 2 threads), "
          f"thread {threaded * 1e6:.1f} us")


def test_a_child_is_retired_after_max_attempts_per_process(context: JobContext) -> None:
    with ProcessRunner(1, max_attempts_per_process=2) as runner:
        first, second, third = (runner.run(child_pid, (), {}, context).value for _ in range(3))
        assert first == second != third
        assert runner.stats.started == 2


def test_close_ends_the_children_and_refuses_further_attempts(context: JobContext) -> None:
    runner = ProcessRunner(2)
    pid = runner.run(child_pid, (), {}, context).value
    runner.close()
    assert runner.pids() == []
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped, not a zombie
    outcome = runner.run(add, (1, 2), {}, context)
    assert isinstance(outcome.error, RuntimeError) and "closed" in str(outcome.error)


def test_close_while_a_child_starts_ends_that_child_and_its_attempt_does_not_run(
        context: JobContext, monkeypatch: Any) -> None:
    # close() did not see a child still starting: it returned, and the child then ran
    # the attempt (a job taken back after its lease lapsed ran beside it).
    from jobcore import isolation_pool
    from jobcore.isolation_process import Child

    runner = ProcessRunner(1, grace=0.5)
    pids: list[int] = []

    def close_once_started(*args: Any, **kwargs: Any) -> Any:
        child = Child(*args, **kwargs)
        pids.append(child.pid)
        closing = threading.Thread(target=runner.close)  # another thread's close, while it starts
        closing.start()
        closing.join(BOUND)
        assert not closing.is_alive()
        return child

    monkeypatch.setattr(isolation_pool, "Child", close_once_started)
    try:
        outcome = runner.run(add, (1, 2), {}, context)
        assert isinstance(outcome.error, RuntimeError) and "closed" in str(outcome.error), outcome
        (pid,) = pids
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # ended and reaped
        assert runner.pids() == [] and runner.stats.running == 0
    finally:
        runner._pool._finalizer()


def test_no_child_is_started_for_an_attempt_after_the_attempt_runner_closed() -> None:
    from jobcore.attempts import AttemptRunner
    from jobcore.clock import SystemClock
    from jobcore.registry import FunctionRegistry, LocalJobs
    from jobcore.repository.base import JobRecord

    registry = FunctionRegistry()
    registry.register("add", add)
    attempts = AttemptRunner(registry, LocalJobs(), SystemClock(), 1)
    record = JobRecord(id="j", function_name="add", name="add", args=(1, 2), isolation="process")
    context = JobContext("j", "add", 1, RecordingSink())
    assert attempts.run(record, context).value == 3
    attempts.close()
    outcome = attempts.run(record, context)
    assert isinstance(outcome.error, RuntimeError) and "closed" in str(outcome.error), outcome
    assert attempts._processes is None  # no runner (nor child) made again


def test_close_ends_a_busy_child_before_it_returns(context: JobContext, sink: RecordingSink,
                                                   in_background: Any) -> None:
    runner = ProcessRunner(1, grace=0.5)
    try:
        future = in_background(runner.run, busy_loop, (), {}, context)
        sink.wait_for_log("running")
        (pid,) = runner.pids()
        runner.close()
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # gone (reaped) once close returns
        outcome = future.result(timeout=BOUND)
        assert isinstance(outcome.error, WorkerProcessDied), outcome.error
        assert "its runner was closed" in str(outcome.error)
        assert runner.pids() == [] and runner.stats.running == 0
    finally:
        runner._pool._finalizer()  # on the old code, the child spun on


# -- what can run isolated -------------------------------------------------------------------------------
def test_module_level_functions_static_and_class_methods_and_builtins_can_run_isolated() -> None:
    for func in (add, Tools.triple, Tools.name, math.factorial, len):
        assert isolation_problem(func) is None, func


@pytest.mark.parametrize("func, words", [
    (lambda: None, "lambda"),
    (functools.partial(add, 1), "partial"),
    (Tools().method, "bound to a Tools instance"),
    (Greeter(), "no __module__ and __qualname__"),
    ([].append, "bound to a list instance"),
])
def test_what_a_child_cannot_find_by_name_is_refused_with_a_reason(func: Any, words: str) -> None:
    problem = isolation_problem(func)
    assert problem is not None and words in problem


def test_a_nested_function_is_refused_and_the_runner_says_why(
        runner: ProcessRunner, context: JobContext) -> None:
    def nested() -> None:
        pass
    assert "defined inside another function" in (isolation_problem(nested) or "")
    outcome = runner.run(nested, (), {}, context)
    assert isinstance(outcome.error, NotIsolatable) and isinstance(outcome.error, TypeError)
    assert not is_transient(outcome.error) and runner.stats.started == 0


# What the scripts below that drive a ProcessRunner start with (before their own code).
_RUNNER = """
from jobcore.context import JobContext
from jobcore.isolation import ProcessRunner

class Sink:
    def report_progress(self, *a): pass
    def report_log(self, *a): pass
"""


def _python(code: str, tmp_path: Any) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    env = {**os.environ, "PYTHONPATH": REPO_ROOT}
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                          timeout=60, cwd=str(tmp_path))


def test_a_function_in_a_scripts_main_module_runs_isolated(tmp_path: Any) -> None:
    done = _python("""
        from jobcore.context import JobContext
        from jobcore.isolation import ProcessRunner, isolation_problem

        def square(x):
            return x * x

        class Sink:
            def report_progress(self, *a): pass
            def report_log(self, *a): pass

        if __name__ == "__main__":
            assert isolation_problem(square) is None
            with ProcessRunner(1) as runner:
                print(runner.run(square, (7,), {}, JobContext("j", "j", 1, Sink())).value)
        """, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "49"


@pytest.mark.skipif(default_start_method() != "forkserver", reason="children come from a fork server only there")
@pytest.mark.parametrize("preloads, expected", [('["__main__", "json"]', ["__main__", "json"]), ("[]", [])])
def test_the_fork_server_imports_jobcore_once_for_every_child_beside_the_applications_own_preloads(
        tmp_path: Any, preloads: str, expected: list[str]) -> None:
    # given an application that has its fork server preload modules of its own (or, [],
    # nothing at all, not even its __main__)
    done = _python("""
        import multiprocessing
        import multiprocessing.forkserver as forkserver

        multiprocessing.get_context("forkserver").set_forkserver_preload(PRELOADS)
        from jobcore import Job, JobManager, MemoryRepository

        def square(x):
            return x * x

        if __name__ == "__main__":
            # when a job runs isolated
            with JobManager(MemoryRepository(), max_workers=1) as manager:
                result = manager.wait(manager.enqueue(Job(square, args=(7,), isolation="process")), timeout=30)
            print(result.result, " ".join(forkserver._forkserver._preload_modules))
        """.replace("PRELOADS", preloads), tmp_path)
    # then it ran in a child of a fork server that imported jobcore (each child imported
    # it afresh: 0.17-0.24 s of CPU before its first job), and preloaded the application's
    # modules, and those only (an empty list came back as ["__main__"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["49", *expected, "jobcore.isolation_child"]


def test_a_slow_child_start_up_does_not_count_against_the_timeout(tmp_path: Any) -> None:
    # The script's top level runs again in each child (as __mp_main__): a start-up of
    # 1 s, longer than the 0.5 s timeout. Once every such attempt timed out, and each
    # timeout killed the child, so its retry had a fresh, slow child too.
    done = _python(_RUNNER + textwrap.dedent("""
        import time

        if __name__ == "__mp_main__":
            time.sleep(1.0)  # a slow import in the child

        def square(x):
            return x * x

        if __name__ == "__main__":
            with ProcessRunner(1) as runner:
                outcome = runner.run(square, (7,), {}, JobContext("j", "j", 1, Sink()), timeout=0.5)
                print(outcome.value, repr(outcome.error))
        """), tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "49 None"


@pytest.mark.parametrize("size", [1, 600_000])
def test_a_child_that_does_not_start_in_time_fails_the_attempt(tmp_path: Any, size: int) -> None:
    # Arguments larger than the pipe holds were sent before the start-up limit counted:
    # the send blocked until the child read them, which it never did.
    done = _python(_RUNNER + textwrap.dedent("""
        import threading

        if __name__ == "__mp_main__":
            threading.Event().wait()  # a start-up that hangs

        if __name__ == "__main__":
            with ProcessRunner(1, start_timeout=0.5, grace=0.1) as runner:
                outcome = runner.run(len, ("x" * SIZE,), {}, JobContext("j", "j", 1, Sink()), timeout=60)
                print(type(outcome.error).__name__, outcome.error)
                print(runner.pids(), runner.stats.terminated)
        """).replace("SIZE", str(size)), tmp_path)
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.strip().splitlines()
    assert first.startswith("WorkerProcessDied ") and "did not start within 0.5s" in first
    assert second == "[] 1"


def test_a_child_killed_by_ctrl_c_while_it_starts_is_replaced_without_failing_the_attempt(
        tmp_path: Any) -> None:
    # Ctrl-C to the process group reaches a child still starting, before it ignores
    # SIGINT; the attempt, which had not reached it, once failed as WorkerProcessDied.
    done = _python(_RUNNER + textwrap.dedent("""
        import os, signal, threading

        if __name__ == "__mp_main__":  # each child's start-up; the first one's hangs
            try:
                fd = os.open("first", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                threading.Event().wait()

        def square(x):
            return x * x

        if __name__ == "__main__":
            with ProcessRunner(1) as runner:
                outcomes = []
                job = threading.Thread(target=lambda: outcomes.append(
                    runner.run(square, (7,), {}, JobContext("j", "j", 1, Sink()))))
                job.start()
                tick = threading.Event()
                for _ in range(1000):
                    if os.path.exists("first") and os.path.getsize("first"):
                        break
                    tick.wait(0.01)
                os.kill(int(open("first").read()), signal.SIGINT)
                job.join(10)
                print(outcomes[0].value, repr(outcomes[0].error), runner.stats.started)
        """), tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "49 None 2"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_children_exit_when_the_engine_is_killed(tmp_path: Any) -> None:
    script = tmp_path / "engine.py"
    script.write_text(textwrap.dedent("""
        import sys
        from jobcore.context import JobContext
        from jobcore.isolation import ProcessRunner

        def spin():
            while True:
                pass

        class Sink:
            def report_progress(self, *a): pass
            def report_log(self, *a): pass

        if __name__ == "__main__":
            runner = ProcessRunner(1)
            runner.run(len, ("warm",), {}, JobContext("j", "j", 1, Sink()))
            print(runner.pids()[0], flush=True)
            runner.run(spin, (), {}, JobContext("j", "j", 1, Sink()))
        """))
    wait_until_exited(_pid_from_killed_engine(script, tmp_path))


def _pid_from_killed_engine(script: Any, tmp_path: Any) -> int:
    """Run `script` as an engine process, read the pid its first line prints, SIGKILL it."""
    engine = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": REPO_ROOT}, cwd=str(tmp_path))
    try:
        return int(engine.stdout.readline())  # type: ignore[union-attr]
    finally:
        engine.kill()
        engine.wait(BOUND)
        close_pipes(engine)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_processes_a_job_started_end_with_its_child_when_the_engine_is_killed(tmp_path: Any) -> None:
    # given an isolated job whose work is a process of its own (in its child's group)
    script = tmp_path / "engine.py"
    script.write_text(textwrap.dedent("""
        import subprocess, sys, time
        from jobcore.context import JobContext
        from jobcore.isolation import ProcessRunner

        def start_worker():
            worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
            print(worker.pid, flush=True)
            time.sleep(60)

        class Sink:
            def report_progress(self, *a): pass
            def report_log(self, *a): pass

        if __name__ == "__main__":
            runner = ProcessRunner(1)
            runner.run(start_worker, (), {}, JobContext("j", "j", 1, Sink()))
        """))
    # when the engine is killed
    worker = _pid_from_killed_engine(script, tmp_path)
    # then that process ends too (it ran on beside the job's retry by another engine)
    try:
        wait_until_exited(worker)
    finally:
        with contextlib.suppress(OSError):
            os.kill(worker, signal.SIGKILL)


def wait_until_exited(pid: int) -> None:
    """Block until `pid` has exited (a zombie waiting for init counts), at most BOUND s."""
    tick = threading.Event()
    for _ in range(int(BOUND / 0.01)):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rpartition(")")[2].split()[0] in ("Z", "X"):
                    return
        except FileNotFoundError:
            return
        tick.wait(0.01)
    raise AssertionError(f"process {pid} still runs {BOUND}s after its engine was killed")


def test_a_function_in_an_interactive_main_is_refused(tmp_path: Any) -> None:
    code = ("from jobcore.isolation import isolation_problem\n"
            "def f(): pass\n"
            "print(isolation_problem(f))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": REPO_ROOT})
    assert done.returncode == 0, done.stderr
    assert "interactive __main__" in done.stdout
