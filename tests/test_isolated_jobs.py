"""Isolated jobs through the manager: hard timeouts and cancels of code that never yields."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from jobcore import FakeClock, Job, JobStatus, SQLiteRepository

WAIT = 15.0


@pytest.fixture
def busy_module(tmp_path: Any) -> Iterator[Any]:
    (tmp_path / "busyjobs.py").write_text(textwrap.dedent("""
        def spin():
            while True:
                pass

        def quick(x):
            return x + 1

        def spin_and_tell(pid_file):
            import os
            with open(pid_file + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.replace(pid_file + ".tmp", pid_file)
            while True:
                pass

        def grab(megabytes):
            return len(bytearray(megabytes * 1024 * 1024))

        def _until(path):
            import os, time
            deadline = time.monotonic() + 15
            while not os.path.exists(path):
                if time.monotonic() > deadline:
                    raise TimeoutError(path)
                time.sleep(0.005)

        def leave_reporter(folder):
            # A thread that outlives the job and reports once the next job has started.
            import threading
            from jobcore import current_job
            context = current_job()
            def late():
                from jobcore import JobCancelled
                _until(folder + "/next-started")
                context.log("late line of the first job")
                try:
                    context.progress(0.99, "late progress of the first job")
                except JobCancelled:  # the attempt is over (it raised nothing before that was told)
                    pass
                open(folder + "/reported", "w").close()
            threading.Thread(target=late).start()
            return "first"

        def leave_watcher(folder):
            # A thread that outlives the job and writes down what its context tells then.
            import json, threading
            from jobcore import JobCancelled, current_job
            context = current_job()
            def later():
                _until(folder + "/job-returned")
                told = {"cancelled": context.cancelled}
                for name, call in (("progress", lambda: context.progress(0.9)),
                                   ("check_cancelled", context.check_cancelled)):
                    try:
                        call()
                        told[name] = "went on"
                    except JobCancelled:
                        told[name] = "JobCancelled"
                with open(folder + "/told.tmp", "w") as f:
                    json.dump(told, f)
                os.replace(folder + "/told.tmp", folder + "/told")
            import os
            threading.Thread(target=later).start()
            return "returned"

        def start_and_wait_for_report(folder):
            open(folder + "/next-started", "w").close()
            _until(folder + "/reported")
            return "second"

        def start_a_process_and_hang(pid_file):
            import subprocess, time
            process = subprocess.Popen(["sleep", "60"])
            with open(pid_file + ".tmp", "w") as f:
                f.write(str(process.pid))
            import os
            os.replace(pid_file + ".tmp", pid_file)
            time.sleep(60)

        def start_a_process_and_crash(pid_file):
            import os, subprocess
            process = subprocess.Popen(["sleep", "60"])
            with open(pid_file + ".tmp", "w") as f:
                f.write(str(process.pid))
            os.replace(pid_file + ".tmp", pid_file)
            os._exit(3)  # the child dies on its own: no timeout, no cancel

        def open_connection(path):
            import sqlite3
            return sqlite3.connect(path)  # does not pickle; its type name says "Connection"

        def start_managers(db):
            # What a job's module may do at import: start a manager of its own, or call
            # register_job_function, which builds the default one on $JOBCORE_DB.
            import os
            import jobcore
            os.environ["JOBCORE_DB"] = db
            own = jobcore.JobManager(jobcore.MemoryRepository()).start()
            jobcore.register_job_function("busyjobs.quick", quick)
            return [own.running, jobcore.get_job_manager().running]

        def bad_details():
            from jobcore import current_job
            current_job().progress(0.5, "half", when=object())
            return "reached"

        def report_steps(fail):
            from jobcore import current_job
            for step in (1, 2, 3):
                current_job().progress(step / 4, f"step {step}", step=step)
            if fail:
                raise ValueError("failed after step 3")
            return "reported"

        def say_at_length(characters):
            from jobcore import current_job
            current_job().log("<" + "x" * characters + ">")
            current_job().progress(0.5, "<" + "y" * characters + ">")
            return "said"
    """))
    sys.path.insert(0, str(tmp_path))
    import busyjobs  # noqa: F401
    yield busyjobs
    sys.path.remove(str(tmp_path))
    sys.modules.pop("busyjobs", None)


def test_busy_loop_times_out_and_the_worker_goes_on(make_manager: Any, db_path: str, busy_module: Any) -> None:
    manager = make_manager(db_path, max_workers=1).start()
    spinning = manager.enqueue(Job(function=busy_module.spin, timeout=0.5, isolation="process", max_retries=0))
    after = manager.enqueue(Job(function=busy_module.quick, args=(1,)))

    failed = manager.wait(spinning, timeout=WAIT)
    assert (failed.status, failed.error_type) == (JobStatus.FAILED, "JobTimeout")
    assert manager.wait(after, timeout=WAIT).result == 2
    assert manager.abandoned_threads == 0  # the child was killed, no thread left behind


def test_run_pending_ends_a_process_isolated_job_at_its_timeout(make_manager: Any, db_path: str,
                                                                busy_module: Any) -> None:
    # given a manager that is not started, with a busy loop isolated in a child process
    # (run_pending enforces no timeout of a job in the caller's thread; docs/testing.md)
    manager = make_manager(db_path, max_workers=1)
    spinning = manager.enqueue(Job(function=busy_module.spin, timeout=0.5, isolation="process", max_retries=0))
    after = manager.enqueue(Job(function=busy_module.quick, args=(1,)))
    # when run_pending runs them
    assert manager.run_pending() == 2
    # then the child was ended at its timeout, and the next job ran
    failed = manager.poll(spinning)
    assert (failed.status, failed.error_type) == (JobStatus.FAILED, "JobTimeout")
    assert manager.poll(after).result == 2


def test_cancel_ends_a_running_busy_loop(make_manager: Any, db_path: str, busy_module: Any) -> None:
    manager = make_manager(db_path, max_workers=1).start()
    job_id = manager.enqueue(Job(function=busy_module.spin, isolation="process"))
    deadline = time.monotonic() + WAIT
    while manager.poll(job_id).status is not JobStatus.RUNNING and time.monotonic() < deadline:
        time.sleep(0.01)
    assert manager.cancel(job_id)
    # it spins for ever, never checking for cancellation: ended only by killing its child
    result = manager.wait(job_id, timeout=WAIT)
    assert result.status is JobStatus.CANCELLED


def test_isolated_results_and_memory_limit(make_manager: Any, db_path: str, busy_module: Any) -> None:
    manager = make_manager(db_path, max_workers=2).start()
    ok = manager.enqueue(Job(function=busy_module.quick, args=(41,), isolation="process"))
    assert manager.wait(ok, timeout=WAIT).result == 42
    if sys.platform.startswith("linux"):
        hog = manager.enqueue(Job(function=busy_module.grab, args=(2048,), isolation="process",
                                  memory_limit=512 * 1024 * 1024, max_retries=0))
        result = manager.wait(hog, timeout=WAIT)
        assert (result.status, result.error_type) == (JobStatus.FAILED, "MemoryError")


def test_what_cannot_run_isolated_is_rejected_at_enqueue(make_manager: Any, db_path: str) -> None:
    manager = make_manager(db_path)
    with pytest.raises(ValueError, match="isolation"):
        manager.enqueue(Job(function=lambda: 1, isolation="process"))
    with pytest.raises(ValueError, match="memory_limit"):
        Job(function=print, memory_limit=1024)
    assert manager.get_stats()["total"] == 0


def test_a_script_ending_while_an_isolated_job_runs_on_the_default_manager_lets_it_finish(
        tmp_path: Any) -> None:
    # given a script that leaves an isolated job running on the default manager, which
    # stops gracefully at exit (running jobs finish) as it does for thread jobs
    (tmp_path / "napjobs.py").write_text(textwrap.dedent("""
        import pathlib, threading

        def nap():
            pathlib.Path("started").write_text("yes")
            threading.Event().wait(0.5)
            return "rested"
    """))
    # The script ends once the job's body runs in its child: a job shown RUNNING may
    # still be claimed but unstarted, which a graceful stop rightly hands back (1 run in
    # about 20 under load ended that way, the job left PENDING).
    script = textwrap.dedent("""
        import os, threading
        import jobcore, napjobs

        if __name__ == "__main__":
            jobcore.register_job_function("nap", napjobs.nap)
            job_id = jobcore.enqueue(jobcore.Job(function_name="nap", isolation="process", max_retries=0))
            while not os.path.exists("started"):
                threading.Event().wait(0.01)
            print("OK", job_id)
    """)
    (tmp_path / "leave.py").write_text(script)
    db = tmp_path / "default.db"
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "JOBCORE_DB": str(db),
           "PYTHONPATH": os.pathsep.join([root, str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "leave.py"], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("OK "), done.stderr
    # then the job ran to its end: its child was not killed first by multiprocessing's
    # exit handler (it was, and the job was dead-lettered as WorkerProcessDied)
    repo = SQLiteRepository(str(db))
    try:
        record = repo.get(done.stdout.split()[1])
    finally:
        repo.close()
    assert record is not None and record.status is JobStatus.COMPLETED, (record, done.stderr)
    assert record.result == "rested" and record.attempts == 1


def test_a_report_left_behind_by_one_job_never_reaches_the_next(make_manager: Any, db_path: str, busy_module: Any,
                                                                 tmp_path: Path) -> None:
    # One child runs both jobs in turn: a thread the first job left running reports while
    # the second one runs. The report belonged to the first job's attempt, which was over.
    folder = str(tmp_path)
    manager = make_manager(db_path, max_workers=1).start()
    first = manager.enqueue(Job(function=busy_module.leave_reporter, args=(folder,), isolation="process"))
    assert manager.wait(first, timeout=WAIT).result == "first"
    second = manager.enqueue(Job(function=busy_module.start_and_wait_for_report, args=(folder,),
                                 isolation="process"))
    result = manager.wait(second, timeout=WAIT)
    assert result.result == "second"
    assert (result.progress, result.progress_message) == (1.0, "")
    assert [line.message for line in manager.get_logs(second)] == []


def test_code_an_isolated_job_left_running_sees_its_attempt_over(make_manager: Any, db_path: str, busy_module: Any,
                                                                  tmp_path: Path) -> None:
    # As in a worker thread (docs/api.md, JobContext): the child never marked the context
    # over, so a thread looping `while not current_job().cancelled` ran on beside the
    # child's next jobs.
    folder = str(tmp_path)
    manager = make_manager(db_path, max_workers=1).start()
    job_id = manager.enqueue(Job(function=busy_module.leave_watcher, args=(folder,), isolation="process"))
    assert manager.wait(job_id, timeout=WAIT).result == "returned"
    (tmp_path / "job-returned").touch()
    told = tmp_path / "told"
    deadline = time.monotonic() + WAIT
    while not told.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert json.loads(told.read_text()) == {"cancelled": True, "progress": "JobCancelled",
                                            "check_cancelled": "JobCancelled"}


@pytest.mark.parametrize("fail", [False, True])
def test_an_isolated_attempts_last_report_is_in_its_row_once_its_outcome_is(
        make_manager: Any, db_path: str, busy_module: Any, fail: bool) -> None:
    # The child's reports reach the parent's context, whose last one the outcome records.
    manager = make_manager(db_path, max_workers=1).start()
    job_id = manager.enqueue(Job(function=busy_module.report_steps, args=(fail,), isolation="process",
                                 max_retries=0))
    result = manager.wait(job_id, timeout=WAIT)
    other = SQLiteRepository(db_path)  # the row itself, as another process reads it
    try:
        row = other.get(job_id)
    finally:
        other.close()
    assert row is not None and row.status is result.status
    assert result.status is (JobStatus.FAILED if fail else JobStatus.COMPLETED)
    assert (row.progress, row.progress_message, row.progress_details) == (
        0.75 if fail else 1.0, "step 3", {"step": 3})


def _gone(pid: int) -> bool:
    """True once `pid` no longer runs (gone, or a zombie waiting to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_timeout_ends_the_processes_the_job_started(make_manager: Any, db_path: str, busy_module: Any,
                                                       tmp_path: Path) -> None:
    pid_file = str(tmp_path / "pid")
    clock = FakeClock()  # the timeout passes once the job has started its process, not before
    manager = make_manager(db_path, max_workers=1, clock=clock).start()
    job_id = manager.enqueue(Job(function=busy_module.start_a_process_and_hang, args=(pid_file,),
                                 isolation="process", timeout=1.0, max_retries=0))
    deadline = time.monotonic() + WAIT
    while not os.path.exists(pid_file) and time.monotonic() < deadline:
        time.sleep(0.01)
    grandchild = int(Path(pid_file).read_text())
    clock.advance(2.0)
    result = manager.wait(job_id, timeout=WAIT)
    assert (result.status, result.error_type) == (JobStatus.FAILED, "JobTimeout"), result.error
    _assert_ends(grandchild, "the process the job started outlived its timeout")


def _assert_ends(pid: int, message: str) -> None:
    """Assert that process `pid` ends within WAIT (its signal is sent before the outcome
    is recorded, and takes a moment); kill it either way."""
    try:
        deadline = time.monotonic() + WAIT
        while not _gone(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _gone(pid), message
    finally:
        if not _gone(pid):
            os.kill(pid, 9)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_child_that_dies_on_its_own_takes_the_processes_its_job_started_with_it(
        make_manager: Any, db_path: str, busy_module: Any, tmp_path: Path) -> None:
    # WorkerProcessDied is retried: the retry ran beside the `sleep` the crashed attempt
    # started, as only a timeout or a cancel ended the child's process group.
    pid_file = str(tmp_path / "pid")
    manager = make_manager(db_path, max_workers=1).start()
    job_id = manager.enqueue(Job(function=busy_module.start_a_process_and_crash, args=(pid_file,),
                                 isolation="process", max_retries=0))
    result = manager.wait(job_id, timeout=WAIT)
    assert (result.status, result.error_type) == (JobStatus.FAILED, "WorkerProcessDied"), result.error
    _assert_ends(int(Path(pid_file).read_text()), "the process the job started outlived its child")


@pytest.mark.parametrize("isolation", ["thread", "process"])
def test_bad_progress_details_raise_in_the_job_either_way(make_manager: Any, db_path: str, busy_module: Any,
                                                         isolation: str) -> None:
    manager = make_manager(db_path, max_workers=1).start()
    job_id = manager.enqueue(Job(function=busy_module.bad_details, isolation=isolation, max_retries=0))
    result = manager.wait(job_id, timeout=WAIT)
    assert (result.status, result.error_type) == (JobStatus.FAILED, "InvalidJobType")
    assert "progress details" in result.error


def test_a_result_that_cannot_come_back_from_the_child_fails_once_whatever_its_name(
        make_manager: Any, db_path: str, busy_module: Any, tmp_path: Any) -> None:
    # given an isolated job returning a sqlite3.Connection: the error said "Connection",
    # which the default classifier took for a transient error, so it ran 4 times
    manager = make_manager(db_path, max_workers=1).start()
    job_id = manager.enqueue(Job(function=busy_module.open_connection, args=(str(tmp_path / "x.db"),),
                                 isolation="process", retry_delay=0.0))
    result = manager.wait(job_id, timeout=WAIT)
    assert (result.status, result.error_type, result.attempts) == (JobStatus.FAILED, "UnpicklableResult", 1)
    assert "cannot be sent back" in (result.error or "")


def test_no_manager_runs_workers_in_the_child_process_of_an_isolated_job(
        make_manager: Any, db_path: str, busy_module: Any) -> None:
    # given a job module whose import registers functions on the default manager (as the
    # CLI's worker docs show): in the child it built and started a manager on the same
    # file, which claimed other jobs there; a cancel of the isolated job killed them too
    manager = make_manager(db_path, max_workers=1).start()
    job_id = manager.enqueue(Job(function=busy_module.start_managers, args=(db_path,), isolation="process"))
    assert manager.wait(job_id, timeout=WAIT).result == [False, False]
    assert [worker.worker_id for worker in manager.list_workers()] == [manager.worker_id]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_close_ends_a_busy_child_and_records_nothing_of_its_attempt(
        make_manager: Any, db_path: str, busy_module: Any, tmp_path: Path) -> None:
    # close() once left a busy child running: another manager took the job back after
    # the lease and ran it beside that child.
    pid_file = str(tmp_path / "pid")
    manager = make_manager(db_path, max_workers=1, lease_timeout=60).start()
    job_id = manager.enqueue(Job(function=busy_module.spin_and_tell, args=(pid_file,), isolation="process"))
    deadline = time.monotonic() + WAIT
    while not os.path.exists(pid_file) and time.monotonic() < deadline:
        time.sleep(0.01)
    child = int(Path(pid_file).read_text())
    manager.stop(timeout=0)  # the job runs on, its lease renewed
    try:
        manager.close()
        assert _gone(child), "close() returned while the isolated job's child still ran"
    finally:
        if not _gone(child):
            os.kill(child, 9)
    row = make_manager(db_path).poll(job_id)
    # Not recorded: the lease lapses and the job is taken back, its old child gone.
    assert (row.status, row.attempts, row.error_type) == (JobStatus.RUNNING, 1, None)


def test_a_long_log_line_and_progress_message_of_an_isolated_job_are_cut_once(
        make_manager: Any, db_path: str, busy_module: Any) -> None:
    # Cut in the child, then again in the parent: the second cut had cut the first marker
    # out, and told of 33 characters cut where 134,464 were.
    from jobcore.serialization import ERROR_TEXT_LIMIT

    manager = make_manager(db_path, max_workers=1).start()
    job_id = manager.enqueue(Job(function=busy_module.say_at_length, args=(200_000,), isolation="process"))
    result = manager.wait(job_id, timeout=WAIT)
    assert result.status is JobStatus.COMPLETED
    line = manager.get_logs(job_id)[-1].message
    for text in (line, result.progress_message):
        assert text.startswith("<") and text.endswith(">") and len(text) <= ERROR_TEXT_LIMIT
        cut = int(text.split("... [")[1].split(" characters cut]")[0])
        assert cut == 200_002 - (len(text) - len(f"\n... [{cut} characters cut] ...\n"))
