"""The command line as a user runs it: `python -m jobcore` in real subprocesses on a real SQLite file."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import pytest

from jobcore import FakeClock, Job, JobManager, JobStatus, current_job
from jobcore.cli import main
from dashboard_cli import serve_dashboard
from dead_letter_order import fail_out_of_order
from waiting import wait_until
from raw_db import raw_db
from progress_jobs import report_progress_for
from subprocesses import close_pipes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAIT = 10.0  # bound for waits that normally end in well under a second


@dataclass
class Jobs:
    """A database holding one job of each interesting kind."""

    db: str
    completed: str
    failed: str
    pending: str


def fail_loudly() -> None:
    raise ValueError("disk says no")


def add_one(x: int) -> int:
    current_job().log("adding one")
    current_job().progress(0.5, "halfway")
    return x + 1


@pytest.fixture
def jobs(db_path: str) -> Iterator[Jobs]:
    """Given a database with a completed job (logs, owner alice, tag report), a failed job
    with a traceback (owner bob, tag email) and a pending job no worker here can run."""
    manager = JobManager(db_path, max_workers=1)
    manager.register_function("add_one", add_one)
    manager.register_function("fail_loudly", fail_loudly)
    with manager:
        completed = manager.enqueue(Job(function_name="add_one", args=(41,), name="add", owner="alice",
                                        tags={"report"}))
        failed = manager.enqueue(Job(function_name="fail_loudly", name="explode", owner="bob", tags={"email"},
                                     max_retries=0))
        manager.wait(completed, timeout=WAIT)
        manager.wait(failed, timeout=WAIT)
    manager.close()
    producer = JobManager(db_path, producer=True)
    pending = producer.enqueue(Job(function_name="elsewhere.task", name="later", owner="alice"))
    producer.close()
    yield Jobs(db_path, completed, failed, pending)


def cli_env(*paths: str, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "JOBCORE_DB"}
    env["PYTHONPATH"] = os.pathsep.join([ROOT, *paths])
    env.update(extra)
    return env


def run(*args: str, db: str | None = None, env: dict[str, str] | None = None,
        cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m jobcore [--db DB] ARGS` and capture its output."""
    command = [sys.executable, "-m", "jobcore", *(["--db", db] if db else []), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=30, env=env or cli_env(), cwd=cwd)


def run_here(capsys: Any, *args: str, db: str | None = None) -> subprocess.CompletedProcess[str]:
    """`main()` in this process: `run`'s code path without an interpreter's start-up, for the
    wide matrices of cases (a subprocess each would triple this file's time)."""
    argv = [*(["--db", db] if db else []), *args]
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's usage errors
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, out, err)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert proc.returncode == 1, proc
    assert proc.stderr.startswith("jobcore: error: ")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr


def status_of(db: str, job_id: str) -> JobStatus:
    manager = JobManager(db, producer=True)
    try:
        result = manager.poll(job_id)
        assert result is not None
        return result.status
    finally:
        manager.close()


# -- reading ---------------------------------------------------------------------------------
def test_stats_counts_jobs_by_lower_case_status(jobs: Jobs) -> None:
    text = run("stats", db=jobs.db)
    as_json = run("stats", "--json", db=jobs.db)

    assert text.returncode == 0 and text.stderr == ""
    lines = dict(line.rsplit(None, 1) for line in text.stdout.splitlines())
    assert lines == {"total": "3", "pending": "1", "scheduled": "0", "running": "0", "completed": "1",
                     "failed": "1", "cancelled": "0", "queue size": "1", "workers": "0"}
    assert json.loads(as_json.stdout) == {"total": 3, "pending": 1, "scheduled": 0, "running": 0,
                                          "completed": 1, "failed": 1, "cancelled": 0, "queue_size": 1,
                                          "workers": 0}


def test_stats_gives_a_queue_size_of_the_same_counts_while_jobs_come_in(jobs: Jobs, capsys: Any,
                                                                        monkeypatch: Any) -> None:
    # given a job stored just after the command read the counts (a producer beside it)
    counts = JobManager.get_stats

    def count_then_a_job_comes(manager: JobManager) -> dict[str, int]:
        stats = counts(manager)
        monkeypatch.setattr(JobManager, "get_stats", counts)
        manager.enqueue(Job(function_name="elsewhere.task"))
        return stats

    monkeypatch.setattr(JobManager, "get_stats", count_then_a_job_comes)
    # when `stats` prints them
    stats = json.loads(run_here(capsys, "stats", "--json", db=jobs.db).stdout)
    # then its queue size is those counts' pending + scheduled (a second read gave 2)
    assert stats["pending"] == 1 and stats["queue_size"] == stats["pending"] + stats["scheduled"]


def test_list_shows_every_job_newest_first(jobs: Jobs) -> None:
    proc = run("list", db=jobs.db)

    assert proc.returncode == 0
    header, *rows = proc.stdout.splitlines()
    assert header.split() == ["ID", "STATUS", "PROGRESS", "ATTEMPTS", "CREATED", "OWNER", "NAME"]
    assert [row.split()[:2] for row in rows] == [[jobs.pending, "pending"], [jobs.failed, "failed"],
                                                 [jobs.completed, "completed"]]


@pytest.mark.parametrize("filters, expected", [
    (["--status", "failed"], ["failed"]),
    (["--status", "FAILED"], ["failed"]),  # any case, as list_jobs takes it (argparse refused it)
    (["--owner", "alice"], ["pending", "completed"]),
    (["--tag", "report"], ["completed"]),
    (["--owner", "alice", "--status", "pending"], ["pending"]),
    (["--owner", "nobody"], []),
])
def test_list_filters_by_status_owner_and_tag(jobs: Jobs, capsys: Any, filters: list[str],
                                              expected: list[str]) -> None:
    proc = run_here(capsys, "list", "--json", *filters, db=jobs.db)

    assert proc.returncode == 0
    listed = json.loads(proc.stdout)
    assert [job["id"] for job in listed] == [getattr(jobs, name) for name in expected]
    assert all(job["status"] == name for job, name in zip(listed, expected))


def test_list_json_carries_the_job_fields(jobs: Jobs) -> None:
    [job] = json.loads(run("list", "--json", "--tag", "report", db=jobs.db).stdout)

    assert job["name"] == "add" and job["owner"] == "alice" and job["tags"] == ["report"]
    assert job["progress"] == 1.0 and job["attempts"] == 1 and job["completed_at"]


def test_show_of_a_failed_job_prints_its_error_type_and_traceback(jobs: Jobs) -> None:
    proc = run("show", jobs.failed, db=jobs.db)

    assert proc.returncode == 0 and proc.stderr == ""
    assert "status:     failed" in proc.stdout
    assert "error type: ValueError" in proc.stdout
    assert "error:      disk says no" in proc.stdout
    traceback = proc.stdout.split("traceback:\n", 1)[1]
    assert traceback.startswith("Traceback (most recent call last):")
    assert "in fail_loudly" in traceback and traceback.rstrip().endswith("ValueError: disk says no")


def test_show_of_a_job_whose_traceback_is_a_blob_prints_it(jobs: Jobs) -> None:
    # (a hand edit's BLOB: `show` raised "a bytes-like object is required")
    import sqlite3
    raw = sqlite3.connect(jobs.db)
    raw.execute("UPDATE jobs SET traceback = X'54726163656261636b0a' WHERE id = ?", (jobs.failed,))
    raw.commit()
    raw.close()
    proc = run("show", jobs.failed, db=jobs.db)
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.split("traceback:\n", 1)[1].startswith("b'Traceback")


def test_show_prints_a_schedules_cron_and_a_jobs_progress_details(db_path: str) -> None:
    # given a cron schedule, and a job whose progress carries details (show printed neither)
    manager = JobManager(db_path, producer=True)
    schedule = manager.enqueue(Job(function_name="tasks.tick", cron="*/5 * * * *"))
    job_id = manager.enqueue(Job(function_name="tasks.step"))
    manager.repository.claim(job_id, "w1", 1.0, 1e12)
    manager.repository.update_progress(job_id, "w1", 1, 0.5, "half", {"rows": 3}, 2.0)
    manager.close()
    # then show prints them
    assert "cron:       */5 * * * * (a schedule" in run("show", schedule, db=db_path).stdout
    shown = run("show", job_id, db=db_path).stdout
    assert 'details:    {"rows": 3}' in shown and "progress:   50% half" in shown


def test_show_json_includes_traceback_and_logs(jobs: Jobs) -> None:
    failed = json.loads(run("show", "--json", jobs.failed, db=jobs.db).stdout)
    completed = json.loads(run("show", jobs.completed, "--json", db=jobs.db).stdout)

    assert failed["status"] == "failed" and failed["error_type"] == "ValueError"
    assert "Traceback (most recent call last)" in failed["traceback"]
    assert completed["result"] == 42
    assert [entry["message"] for entry in completed["logs"]] == ["adding one"]


def test_logs_prints_the_jobs_lines(jobs: Jobs) -> None:
    proc = run("logs", jobs.completed, db=jobs.db)
    as_json = json.loads(run("logs", "--json", jobs.completed, db=jobs.db).stdout)

    assert proc.returncode == 0
    assert proc.stdout.splitlines()[0].endswith("INFO     adding one")
    assert as_json[0]["level"] == "info" and as_json[0]["message"] == "adding one"


def test_dlq_lists_failed_jobs_and_retry_all_requeues_them(jobs: Jobs) -> None:
    listed = run("dlq", db=jobs.db)
    retried = run("dlq", "--retry-all", db=jobs.db)
    after = run("dlq", db=jobs.db)

    assert listed.returncode == 0
    assert jobs.failed in listed.stdout and "ValueError: disk says no" in listed.stdout
    assert jobs.completed not in listed.stdout
    assert retried.returncode == 0 and "re-queued 1 failed job(s)" in retried.stdout
    assert after.stdout.strip() == "the dead-letter queue is empty"
    assert status_of(jobs.db, jobs.failed) is JobStatus.PENDING


def test_dlq_lists_the_most_recently_failed_first(db_path: str) -> None:
    # given failed jobs whose failure order is not their enqueue order (see fail_out_of_order)
    clock = FakeClock()
    manager = JobManager(db_path, clock=clock)
    order = fail_out_of_order(manager, clock)
    manager.close()

    as_json = run("dlq", "--json", db=db_path)
    table = run("dlq", "--limit", "2", db=db_path)
    listed = run("list", "--status", "failed", "--json", db=db_path)

    # then the queue is by failure time (the oldest job failed last); `list` is not
    assert [job["id"] for job in json.loads(as_json.stdout)] == order.by_failure
    assert [line.split()[0] for line in table.stdout.splitlines()[1:]] == order.by_failure[:2]
    assert [job["id"] for job in json.loads(listed.stdout)] == order.by_enqueue


def test_dlq_retry_all_json_prints_what_it_re_queued_as_json(jobs: Jobs) -> None:
    retried = run("dlq", "--retry-all", "--json", db=jobs.db)  # it printed "re-queued 1 failed job(s)"

    assert retried.returncode == 0 and retried.stderr == ""
    assert json.loads(retried.stdout) == {"retried": [jobs.failed], "count": 1, "skipped": []}
    assert status_of(jobs.db, jobs.failed) is JobStatus.PENDING


@pytest.fixture
def blocked_dead_letter(jobs: Jobs) -> tuple[Jobs, str]:
    """Given, beside the failed job of `jobs`, a failed job whose unique_key a pending job
    enqueued since holds: `retry` refuses it."""
    manager = JobManager(jobs.db, max_workers=1)
    manager.register_function("fail_loudly", fail_loudly)
    blocked = manager.enqueue(Job(function_name="fail_loudly", name="nightly", unique_key="nightly-1",
                                  max_retries=0))
    manager.run_pending()
    manager.enqueue(Job(function_name="fail_loudly", unique_key="nightly-1"))
    manager.close()
    assert status_of(jobs.db, blocked) is JobStatus.FAILED
    return jobs, blocked


def test_dlq_retry_all_names_the_jobs_it_could_not_re_queue_and_exits_1(
        blocked_dead_letter: tuple[Jobs, str]) -> None:
    jobs, blocked = blocked_dead_letter

    retried = run("dlq", "--retry-all", db=jobs.db)  # it printed "re-queued 1", exit 0

    assert retried.stdout.splitlines() == [
        "re-queued 1 failed job(s)",
        f"not re-queued: {blocked} (nightly): another unfinished job holds its unique_key 'nightly-1'"]
    assert_one_line_error(retried, "1 failed job(s) could not be re-queued and stay in the dead-letter queue")
    assert status_of(jobs.db, jobs.failed) is JobStatus.PENDING
    assert status_of(jobs.db, blocked) is JobStatus.FAILED


def test_dlq_retry_all_json_names_the_skipped_jobs_too(blocked_dead_letter: tuple[Jobs, str]) -> None:
    jobs, blocked = blocked_dead_letter

    retried = run("dlq", "--retry-all", "--json", db=jobs.db)

    assert json.loads(retried.stdout) == {
        "retried": [jobs.failed], "count": 1,
        "skipped": [{"id": blocked, "name": "nightly",
                     "reason": "another unfinished job holds its unique_key 'nightly-1'"}]}
    assert_one_line_error(retried, "1 failed job(s) could not be re-queued")


def test_watch_of_a_completed_job_prints_a_full_bar_and_exits_0(jobs: Jobs) -> None:
    proc = run("watch", jobs.completed, db=jobs.db)

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[" + "#" * 30 + "] 100%  completed  halfway"


def test_watch_of_a_failed_job_exits_1_with_its_error(jobs: Jobs) -> None:
    proc = run("watch", jobs.failed, db=jobs.db)

    assert proc.stdout.startswith("[" + "." * 30 + "]   0%  failed")
    assert_one_line_error(proc, "ended failed: ValueError: disk says no")


def test_watch_follows_a_running_job_until_it_completes(jobs: Jobs, make_manager: Any) -> None:
    release = threading.Event()
    reported = threading.Event()

    def slow(progress_callback: Any) -> None:
        progress_callback(0.5, "half")
        reported.set()
        assert release.wait(WAIT)

    manager = make_manager(jobs.db, poll_interval=0.1).start()
    job_id = manager.enqueue(Job(function=slow))
    assert reported.wait(WAIT)
    watcher = subprocess.Popen(
        [sys.executable, "-m", "jobcore", "--db", jobs.db, "watch", job_id, "--interval", "0.05"],
        stdout=subprocess.PIPE, text=True, env=cli_env())
    assert watcher.stdout is not None
    first = watcher.stdout.readline()
    release.set()
    rest = watcher.stdout.read()
    assert watcher.wait(WAIT) == 0
    close_pipes(watcher)

    assert first.strip() == "[" + "#" * 15 + "." * 15 + "]  50%  running  half"
    assert rest.strip().endswith("100%  completed  half")


# -- changing --------------------------------------------------------------------------------
def test_cancel_of_a_pending_job_cancels_it_and_a_second_cancel_fails(jobs: Jobs) -> None:
    first = run("cancel", jobs.pending, db=jobs.db)
    second = run("cancel", jobs.pending, db=jobs.db)

    assert first.returncode == 0 and first.stdout.strip() == f"cancelled {jobs.pending}"
    assert_one_line_error(second, "already cancelled")
    assert status_of(jobs.db, jobs.pending) is JobStatus.CANCELLED


def _sleep_long() -> None:
    time.sleep(60)


@pytest.mark.parametrize("isolation", ["thread", "process"])
def test_cancel_of_a_running_job_says_how_it_will_stop(db_path: str, make_manager: Any, capsys: Any,
                                                      isolation: str) -> None:
    # given a job running in a worker, in a thread of its or a process of its own
    manager = make_manager(db_path, max_workers=1)
    began = threading.Event()

    def wait_for_cancel(progress_callback: Any) -> None:
        began.set()
        while True:
            progress_callback(0.5)
            time.sleep(0.01)

    manager.register_function("wait_for_cancel", wait_for_cancel)
    if isolation == "process":
        job_id = manager.enqueue(Job(_sleep_long, isolation="process"))
    else:
        job_id = manager.enqueue(Job(function_name="wait_for_cancel"))
    manager.start()
    if isolation == "thread":
        assert began.wait(WAIT)
    wait_until(lambda: manager.poll(job_id).status is JobStatus.RUNNING, WAIT, "the job running")
    # when it is cancelled from the command line
    cancelled = run_here(capsys, "cancel", job_id, db=db_path)
    # then the command says how it stops (it said "at its next progress report" of a job
    # whose process was to be ended), and it ends cancelled
    assert cancelled.returncode == 0, cancelled
    expected = ("its process is ended" if isolation == "process" else "it stops at its next progress report")
    assert f"cancellation requested: job {job_id} is running; {expected}" in cancelled.stdout
    assert manager.wait(job_id, timeout=WAIT).status is JobStatus.CANCELLED


def test_a_cancel_from_another_process_reaches_the_running_job_before_its_next_heartbeat(
        db_path: str, make_manager: Any) -> None:
    # given a job reporting progress for 15 s in a worker whose heartbeats are 20 s apart
    # (poll_interval=30; it looks at the store every 50 ms)
    manager = make_manager(db_path, max_workers=1, poll_interval=30)
    manager.register_function("report", report_progress_for)
    job_id = manager.enqueue(Job(function_name="report", args=(15.0,)))
    manager.start()
    wait_until(lambda: manager.poll(job_id).status is JobStatus.RUNNING, WAIT, "the job running")
    # when the command line, another process, cancels it
    cancelled = run("cancel", job_id, db=db_path)
    # then the job hears of it at a look (it ran to its end, COMPLETED, hearing it only at
    # the heartbeat after)
    assert cancelled.returncode == 0, cancelled
    result = manager.wait(job_id, timeout=30)
    assert result.status is JobStatus.CANCELLED, result


def test_retry_requeues_a_failed_job_but_not_a_completed_one(jobs: Jobs) -> None:
    retried = run("retry", jobs.failed, db=jobs.db)
    refused = run("retry", jobs.completed, db=jobs.db)

    assert retried.returncode == 0 and jobs.failed in retried.stdout
    assert status_of(jobs.db, jobs.failed) is JobStatus.PENDING
    assert_one_line_error(refused, "(completed) was not re-queued: only a failed or cancelled job can be re-queued")


def test_cleanup_deletes_finished_jobs_older_than_the_retention(jobs: Jobs) -> None:
    kept = run("cleanup", "--retention-days", "7", db=jobs.db)
    deleted = run("cleanup", "--retention-days", "0", db=jobs.db)

    assert kept.returncode == 0 and "deleted 0 job(s)" in kept.stdout
    assert deleted.returncode == 0 and "deleted 2 job(s)" in deleted.stdout
    assert [job["id"] for job in json.loads(run("list", "--json", db=jobs.db).stdout)] == [jobs.pending]


# -- mistakes ----------------------------------------------------------------------------------
def test_an_unknown_id_is_one_line_and_exit_1(jobs: Jobs) -> None:
    proc = run("show", "no-such-job", db=jobs.db)

    assert_one_line_error(proc, "no job with id 'no-such-job'")
    assert proc.stdout == ""


@pytest.mark.parametrize("command", ["logs", "cancel", "retry", "watch"])
def test_every_command_taking_an_id_refuses_an_unknown_one(jobs: Jobs, capsys: Any, command: str) -> None:
    proc = run_here(capsys, command, "no-such-job", db=jobs.db)

    assert_one_line_error(proc, "no job with id 'no-such-job'")
    assert proc.stdout == ""


def test_a_garbage_file_is_refused_in_one_line_and_left_alone(tmp_path: Any) -> None:
    garbage = tmp_path / "notes.txt"
    garbage.write_text("this is not a database\n" * 100)

    proc = run("stats", db=str(garbage))

    assert_one_line_error(proc, "is not a jobcore database")
    assert garbage.read_text() == "this is not a database\n" * 100


def test_another_applications_sqlite_database_is_refused_and_not_changed(tmp_path: Any) -> None:
    other = str(tmp_path / "app.db")
    with raw_db(other) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
    conn.close()

    proc = run("list", db=other)
    worker = run("worker", "--import", "json", db=other)

    assert_one_line_error(proc, "not a jobcore one")
    assert_one_line_error(worker, "not a jobcore one")
    with raw_db(other) as conn:
        assert [row[0] for row in conn.execute("SELECT name FROM sqlite_master")] == ["users"]
    conn.close()


def test_a_missing_database_is_refused_and_not_created(tmp_path: Any) -> None:
    missing = tmp_path / "typo.db"

    proc = run("stats", db=str(missing))

    assert_one_line_error(proc, "no jobcore database at", "typo.db")
    assert not missing.exists()


def test_a_usage_error_exits_2_with_the_usage(jobs: Jobs) -> None:
    proc = run("list", "--status", "bogus", db=jobs.db)

    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("usage: jobcore list")
    assert "invalid choice: 'bogus'" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("args", [
    [], ["frobnicate"], ["cleanup", "--retention-days", "-1"], ["cleanup", "--retention-days", "nan"],
    ["show"], ["watch", "x", "--interval", "0"], ["worker"], ["worker", "--import", "x", "--workers", "0"],
    ["dashboard", "--port", "http"],
])
def test_usage_errors_exit_2(jobs: Jobs, capsys: Any, args: list[str]) -> None:
    proc = run_here(capsys, *args, db=jobs.db)

    assert proc.returncode == 2
    assert "usage: jobcore" in proc.stderr and "Traceback" not in proc.stderr


BEYOND = "99999999999999999999"  # more than SQLite's (and PostgreSQL's) 64-bit integers hold


@pytest.mark.parametrize("args, complaint", [
    (["dashboard", "--host", "0.0.0.0", "--token", ""], "argument --token: the access token must not be empty"),
    (["dashboard", "--token="], "argument --token: the access token must not be empty"),
    (["dashboard", "--token", "ключ"],
     "argument --token: the access token must be printable ASCII characters without spaces"),
    (["dashboard", "--token", "two words"],
     "argument --token: the access token must be printable ASCII characters without spaces"),
    (["dashboard", "--port", "70000"], "argument --port: must be <= 65535, got 70000"),
    (["dashboard", "--port", "-1"], "argument --port: must be >= 0, got -1"),
    (["list", "--offset", BEYOND], f"argument --offset: must be <= {2**63 - 1}, got {BEYOND}"),
    (["list", "--limit", BEYOND], f"argument --limit: must be <= {2**63 - 1}, got {BEYOND}"),
    (["dlq", "--limit", BEYOND], f"argument --limit: must be <= {2**63 - 1}, got {BEYOND}"),
    # Taken, a lease ending past the times a store keeps was read back by every other
    # worker's recovery as corrupt: ended at once, logged into the running job every second.
    (["worker", "--import", "x", "--lease-timeout", "1e11"],
     "argument --lease-timeout: must be <= 3155760000, got 1e11"),
    (["worker", "--import", "x", "--poll-interval", "3155760001"],
     "argument --poll-interval: must be <= 3155760000, got 3155760001"),
    (["worker", "--import", "x", "--discovery-interval", "0"],
     "argument --discovery-interval: must be > 0, got 0"),
])
def test_bad_values_are_usage_errors_before_the_database_is_opened(tmp_path: Any, capsys: Any, args: list[str],
                                                                    complaint: str) -> None:
    missing = tmp_path / "never.db"  # reached only if the value were let through: that would exit 1

    proc = run_here(capsys, *args, db=str(missing))

    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(f"usage: jobcore {args[0]}") and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1] == f"jobcore {args[0]}: error: {complaint}"
    assert not missing.exists()


@pytest.mark.parametrize("value, complaint", [("abc", "not a number: 'abc'"), ("0", "must be >= 1, got 0")])
def test_a_bad_jobcore_workers_is_a_usage_error_naming_the_variable(tmp_path: Any, capsys: Any,
                                                                    monkeypatch: Any, value: str,
                                                                    complaint: str) -> None:
    # given no --workers, so the count comes from $JOBCORE_WORKERS (it was blamed on --workers)
    monkeypatch.setenv("JOBCORE_WORKERS", value)
    missing = tmp_path / "never.db"

    proc = run_here(capsys, "worker", "--import", "x", db=str(missing))

    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("usage: jobcore worker") and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1] == f"jobcore worker: error: $JOBCORE_WORKERS: {complaint}"
    assert not missing.exists()


@pytest.mark.parametrize("args", [["dashboard", "--port", "70000"], ["list", "--offset", BEYOND],
                                  ["dlq", "--limit", BEYOND]])
def test_out_of_range_numbers_on_a_real_database_are_usage_errors_not_tracebacks(jobs: Jobs,
                                                                                  args: list[str]) -> None:
    proc = run(*args, db=jobs.db)

    assert proc.returncode == 2 and proc.stdout == ""
    assert "Traceback" not in proc.stderr and "Error" not in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith(f"jobcore {args[0]}: error: argument {args[1]}: must be <= ")


def test_the_largest_limit_and_offset_are_taken(jobs: Jobs, capsys: Any) -> None:
    largest = str(2**63 - 1)

    listed = run_here(capsys, "list", "--json", "--limit", largest, db=jobs.db)
    skipped = run_here(capsys, "list", "--json", "--offset", largest, db=jobs.db)
    dead = run_here(capsys, "dlq", "--json", "--limit", largest, db=jobs.db)

    assert listed.returncode == 0 and len(json.loads(listed.stdout)) == 3
    assert skipped.returncode == 0 and json.loads(skipped.stdout) == []
    assert dead.returncode == 0 and [job["id"] for job in json.loads(dead.stdout)] == [jobs.failed]


def test_help_names_every_command_and_the_exit_codes() -> None:
    proc = run("--help")
    worker_help = run("worker", "--help")

    assert proc.returncode == 0
    for command in ["stats", "list", "show", "logs", "cancel", "retry", "dlq", "cleanup", "watch", "worker",
                    "dashboard"]:
        assert command in proc.stdout
    assert "exit status: 0 ok, 1 not found or failed, 2 usage error" in proc.stdout
    assert "register_job_function" in worker_help.stdout and "--workers" in worker_help.stdout


def test_db_defaults_to_jobcore_db_then_the_current_directory(jobs: Jobs, tmp_path: Any) -> None:
    from_env = run("stats", "--json", env=cli_env(JOBCORE_DB=jobs.db))
    from_cwd = run("stats", cwd=str(tmp_path))

    assert json.loads(from_env.stdout)["total"] == 3
    assert_one_line_error(from_cwd, os.path.join(str(tmp_path), "jobcore.db"))


def test_the_db_option_may_follow_the_command(jobs: Jobs) -> None:
    proc = run("stats", "--json", "--db", jobs.db)

    assert proc.returncode == 0 and json.loads(proc.stdout)["total"] == 3


def test_terminal_control_characters_in_job_data_are_shown_escaped(db_path: str) -> None:
    producer = JobManager(db_path, producer=True)
    job_id = producer.enqueue(Job(function_name="x", name="evil\x1b]0;pwned\x07\nname"))
    producer.close()

    proc = run("list", db=db_path)

    assert "\x1b" not in proc.stdout and "\x07" not in proc.stdout
    assert "evil\\x1b]0;pwned\\x07\\nname" in proc.stdout and job_id in proc.stdout


def test_a_newline_in_a_log_line_is_escaped_so_it_cannot_fake_an_entry(db_path: str, capsys: Any) -> None:
    # given a job that logs one line holding a newline and what looks like another entry
    manager = JobManager(db_path)
    manager.register_function("j", lambda: current_job().log("step 1\n2026-01-01 00:00:00  INFO     paid OK"))
    job_id = manager.enqueue(Job(function_name="j"))
    manager.run_pending()
    manager.close()

    proc = run_here(capsys, "logs", job_id, db=db_path)

    assert proc.returncode == 0
    assert proc.stdout.count("\n") == 1  # one entry, one line
    assert proc.stdout.rstrip("\n").endswith("INFO     step 1\\n2026-01-01 00:00:00  INFO     paid OK")


def test_text_the_output_encoding_lacks_is_escaped_never_a_traceback(db_path: str) -> None:
    # Given a job whose name cp1252 (a Windows redirect's encoding) cannot encode: every
    # command showing it died half way through its output with a UnicodeEncodeError traceback.
    producer = JobManager(db_path, producer=True)
    job_id = producer.enqueue(Job(function_name="reports.build", name="月次レポート", owner="zoë"))
    producer.close()
    env = cli_env(PYTHONIOENCODING="cp1252")

    def run_cp1252(*args: str) -> tuple[int, str, str]:
        proc = subprocess.run([sys.executable, "-m", "jobcore", "--db", db_path, *args], capture_output=True,
                              timeout=30, env=env)
        return proc.returncode, proc.stdout.decode("cp1252"), proc.stderr.decode("cp1252")

    listed, as_json, shown, unknown = (run_cp1252("list"), run_cp1252("list", "--json"), run_cp1252("show", job_id),
                                       run_cp1252("show", "月"))

    escaped = "\\u6708\\u6b21\\u30ec\\u30dd\\u30fc\\u30c8"
    assert listed[0] == 0 and listed[2] == ""
    assert listed[1].splitlines()[1].endswith(f"zoë    {escaped}")
    assert as_json[0] == 0 and as_json[2] == ""
    assert json.loads(as_json[1])[0]["name"] == "月次レポート"  # still valid JSON, meaning the same
    assert json.loads(as_json[1])[0]["owner"] == "zoë"
    assert shown[0] == 0 and f"name:       {escaped}\n" in shown[1] and "owner:      zoë\n" in shown[1]
    assert unknown[0] == 1 and unknown[1] == ""
    assert unknown[2] == "jobcore: error: no job with id '\\u6708'\n"


def test_json_is_written_as_is_where_the_encoding_can_show_it(db_path: str) -> None:
    producer = JobManager(db_path, producer=True)
    producer.enqueue(Job(function_name="reports.build", name="月次レポート"))
    producer.close()

    listed = subprocess.run([sys.executable, "-m", "jobcore", "--db", db_path, "list", "--json"], capture_output=True,
                            timeout=30, env=cli_env(PYTHONIOENCODING="utf-8"))

    assert listed.returncode == 0 and '"name": "月次レポート"' in listed.stdout.decode("utf-8")


def test_main_is_the_console_script_entry_point(jobs: Jobs, capsys: Any) -> None:
    assert main(["--db", jobs.db, "show", jobs.failed]) == 0
    assert "error type: ValueError" in capsys.readouterr().out
    assert main(["--db", jobs.db, "show", "nope"]) == 1
    assert capsys.readouterr().err == "jobcore: error: no job with id 'nope'\n"


# -- the dashboard -------------------------------------------------------------------------------
def test_dashboard_serves_the_database_until_ctrl_c(jobs: Jobs) -> None:
    banner, url, stats = serve_dashboard(jobs.db, cli_env(), WAIT)

    assert url.startswith("http://127.0.0.1:") and os.path.abspath(jobs.db) in banner
    assert stats["total"] == 3 and stats["failed"] == 1


def test_dashboard_refuses_a_missing_database(tmp_path: Any) -> None:
    proc = run("dashboard", "--port", "0", db=str(tmp_path / "typo.db"))

    assert_one_line_error(proc, "no jobcore database")


# -- the worker --------------------------------------------------------------------------------
WORKER_MODULE = """
import os
import time
import urllib.request

import jobcore


@jobcore.register_job_function("cli_tasks.double")
def double(x, progress_callback=None):
    progress_callback(0.5, "halfway")
    jobcore.current_job().log("doubling")
    manager = jobcore.get_job_manager()
    return {"value": 2 * x, "db": os.environ["JOBCORE_DB"], "max_workers": manager.max_workers}


@jobcore.register_job_function("cli_tasks.intervals")
def intervals():
    # The intervals of the manager the worker runs (its options reach it).
    manager = jobcore.get_job_manager()
    return [manager._options["discovery_interval"], manager._options["poll_interval"]]


@jobcore.register_job_function("cli_tasks.hold")
def hold(started_path, release_path):
    # Says it started, then runs until the test creates `release_path`: lets the test stop
    # the worker mid-job (a job merely claimed would be handed back at stop instead).
    open(started_path, "w").close()
    while not os.path.exists(release_path):
        time.sleep(0.01)
    return "released"
"""


class Worker:
    """A `jobcore worker` subprocess whose stdout lines arrive on a queue."""

    def __init__(self, db: str, module_dir: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jobcore", "--db", db, "worker", "--import", "cli_tasks", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(module_dir))
        self.lines: queue.Queue[str] = queue.Queue()
        self.errors: list[str] = []  # its stderr, read as it comes: a full pipe would block it
        self.errors_done = threading.Event()
        self.lines_done = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_errors, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines_done.set()

    def _read_errors(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.errors.append(line)
        self.errors_done.set()

    def stderr(self) -> str:
        """All it wrote to stderr, once it has exited."""
        assert self.errors_done.wait(WAIT)
        return "".join(self.errors)

    def next_line(self) -> str:
        return self.lines.get(timeout=WAIT)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(WAIT)


@pytest.fixture
def start_worker(tmp_path: Any) -> Iterator[Callable[..., Worker]]:
    (tmp_path / "modules").mkdir()
    (tmp_path / "modules" / "cli_tasks.py").write_text(textwrap.dedent(WORKER_MODULE))
    workers: list[Worker] = []

    def start(db: str, *args: str) -> Worker:
        worker = Worker(db, str(tmp_path / "modules"), *args)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        if worker.proc.poll() is None:
            worker.proc.kill()
            worker.proc.wait(WAIT)
        if worker.lines_done.wait(WAIT) and worker.errors_done.wait(WAIT):  # (read to the end)
            close_pipes(worker.proc)
        if worker.errors:  # shown with a failing test's output
            print(f"stderr of worker {worker.proc.pid}:", "".join(worker.errors), sep="\n")


def test_the_worker_takes_its_discovery_interval(start_worker: Callable[..., Worker], db_path: str,
                                                make_manager: Any) -> None:
    # given a worker started with a discovery interval of its own (a web process's jobs
    # waited about half of the default 50 ms for a worker process to look)
    producer = make_manager(db_path, producer=True)
    job_id = producer.enqueue(Job(function_name="cli_tasks.intervals"))
    worker = start_worker(db_path, "--discovery-interval", "0.01", "--poll-interval", "2")
    assert "thread(s)" in worker.next_line()
    # then its manager looks at that interval
    assert producer.wait(job_id, timeout=WAIT).result == [0.01, 2.0]
    assert worker.stop() == 0


def test_worker_runs_the_jobs_its_module_registers_then_stops_on_sigterm(
        start_worker: Callable[..., Worker], db_path: str, make_manager: Any) -> None:
    producer = make_manager(db_path, producer=True)
    job_id = producer.enqueue(Job(function_name="cli_tasks.double", args=(21,)))

    worker = start_worker(db_path, "--workers", "3")
    assert "3 thread(s)" in worker.next_line()
    result = producer.wait(job_id, timeout=WAIT)
    later_id = producer.enqueue(Job(function_name="cli_tasks.double", args=(5,)))  # while it runs
    later = producer.wait(later_id, timeout=WAIT)
    exit_code = worker.stop()

    assert result.status is JobStatus.COMPLETED
    assert result.result == {"value": 42, "db": os.path.abspath(db_path), "max_workers": 3}
    assert later.result["value"] == 10
    assert [entry.message for entry in producer.get_logs(job_id)] == ["doubling"]
    assert exit_code == 0
    assert worker.next_line().startswith("jobcore worker: stopping")
    assert worker.next_line().strip() == "jobcore worker: stopped"


def test_worker_stop_lets_a_running_job_finish(start_worker: Callable[..., Worker], db_path: str,
                                               make_manager: Any, tmp_path: Any) -> None:
    release = tmp_path / "release"
    producer = make_manager(db_path, producer=True)
    started = tmp_path / "started"
    job_id = producer.enqueue(Job(function_name="cli_tasks.hold", args=(str(started), str(release))))
    worker = start_worker(db_path)
    worker.next_line()
    wait_until(started.exists, WAIT, "the job to start")

    worker.proc.send_signal(signal.SIGTERM)
    assert worker.next_line().startswith("jobcore worker: stopping")
    assert worker.proc.poll() is None  # still waiting for the running job
    release.touch()

    assert worker.proc.wait(WAIT) == 0
    assert producer.poll(job_id).status is JobStatus.COMPLETED
    assert producer.poll(job_id).result == "released"


def test_a_second_signal_quits_the_worker_at_once(start_worker: Callable[..., Worker], db_path: str,
                                                  make_manager: Any, tmp_path: Any) -> None:
    producer = make_manager(db_path, producer=True)
    started, never = tmp_path / "started", tmp_path / "never"
    job_id = producer.enqueue(Job(function_name="cli_tasks.hold", args=(str(started), str(never))))
    worker = start_worker(db_path)
    worker.next_line()
    wait_until(started.exists, WAIT, "the job to start")

    worker.proc.send_signal(signal.SIGTERM)
    assert worker.next_line().startswith("jobcore worker: stopping")
    worker.proc.send_signal(signal.SIGTERM)

    assert worker.proc.wait(WAIT) == 1
    assert "Traceback" not in worker.stderr()
    assert producer.poll(job_id).status is JobStatus.RUNNING  # taken back once its lease expires


def test_a_job_outlasting_the_grace_period_makes_the_worker_exit_1(
        start_worker: Callable[..., Worker], db_path: str, make_manager: Any, tmp_path: Any) -> None:
    producer = make_manager(db_path, producer=True)
    started, never = tmp_path / "started", tmp_path / "never"
    producer.enqueue(Job(function_name="cli_tasks.hold", args=(str(started), str(never))))
    worker = start_worker(db_path, "--grace", "0.2")
    worker.next_line()
    wait_until(started.exists, WAIT, "the job to start")

    worker.proc.send_signal(signal.SIGTERM)

    assert worker.proc.wait(WAIT) == 1
    assert worker.proc.stderr is not None
    assert worker.stderr() == ("jobcore: error: 1 job(s) still running after --grace 0.2s;"
                                         " they run again elsewhere once their leases expire\n")


def test_worker_that_cannot_import_its_module_says_why_in_one_line(db_path: str, tmp_path: Any) -> None:
    (tmp_path / "broken_tasks.py").write_text("import jobcore\n\nraise RuntimeError('config missing')\n")

    missing = run("worker", "--import", "no_such_module_here", db=db_path)
    broken = run("worker", "--import", "broken_tasks", db=db_path, env=cli_env(str(tmp_path)))

    assert_one_line_error(missing, "cannot import 'no_such_module_here': ModuleNotFoundError")
    assert_one_line_error(broken, "RuntimeError: config missing", "broken_tasks.py:3")


def test_an_import_failure_never_names_the_import_machinery_as_its_place(db_path: str, tmp_path: Any) -> None:
    # They named importlib/__init__.py, where the import machinery raised or re-raised them.
    (tmp_path / "syntax_tasks.py").write_text("import jobcore\ndef f(:\n    pass\n")
    (tmp_path / "needy_tasks.py").write_text("import jobcore\nimport no_such_dependency\n")
    env = cli_env(str(tmp_path))

    missing = run("worker", "--import", "taskz", db=db_path, env=env)
    syntax = run("worker", "--import", "syntax_tasks", db=db_path, env=env)
    needy = run("worker", "--import", "needy_tasks", db=db_path, env=env)

    assert missing.stderr == ("jobcore: error: cannot import 'taskz': ModuleNotFoundError:"
                              " No module named 'taskz'\n")  # no place: none is the user's
    assert_one_line_error(syntax, "cannot import 'syntax_tasks': SyntaxError: ")
    assert syntax.stderr.endswith(f" ({tmp_path / 'syntax_tasks.py'}:2)\n") and "importlib" not in syntax.stderr
    assert needy.stderr == ("jobcore: error: cannot import 'needy_tasks': ModuleNotFoundError: No module named"
                            f" 'no_such_dependency' ({tmp_path / 'needy_tasks.py'}:2)\n")


def test_an_import_failure_raised_inside_a_library_is_placed_at_the_users_line(db_path: str, tmp_path: Any) -> None:
    # It named the library's file (json/decoder.py, jobcore/registry.py), not the module's.
    (tmp_path / "json_tasks.py").write_text("import json\n\nSETTINGS = json.loads('{bad')\n")
    (tmp_path / "job_tasks.py").write_text("import jobcore\n\n\njobcore.register_job_function('x', 5)\n")
    env = cli_env(str(tmp_path))
    (tmp_path / "exit_tasks.py").write_text("import sys\n\nsys.exit(0)\n")  # (it exited 0, silent)
    for module, line, error in (("json_tasks", 3, "JSONDecodeError"), ("job_tasks", 4, "InvalidJobType"),
                                ("exit_tasks", 3, "SystemExit")):
        failed = run("worker", "--import", module, db=db_path, env=env)
        assert_one_line_error(failed, f"cannot import '{module}': {error}")
        assert failed.stderr.endswith(f" ({tmp_path / (module + '.py')}:{line})\n"), failed.stderr


def test_an_app_installed_in_site_packages_is_the_users_code(monkeypatch: Any) -> None:
    # A virtualenv's platstdlib (venv/lib/python3.X/) holds its site-packages: the app
    # installed there was taken for the standard library, and an import failure placed in
    # json's decoder instead of the app's line.
    from jobcore.cli import processes
    assert [len(folder) for folder in processes._LIBRARY_DIRS] == sorted(
        (len(folder) for folder in processes._LIBRARY_DIRS), reverse=True)  # the most specific first
    venv = os.path.join(os.sep, "srv", "venv", "lib", "python3.11", "")
    site = os.path.join(venv, "site-packages", "")
    monkeypatch.setattr(processes, "_LIBRARY_DIRS", (site, venv))
    assert not processes._in_a_library(os.path.join(site, "myapp", "tasks.py"), "myapp")
    assert not processes._in_a_library(os.path.join(site, "myapp.py"), "myapp")
    assert processes._in_a_library(os.path.join(site, "yaml", "loader.py"), "myapp")
    assert processes._in_a_library(os.path.join(venv, "json", "decoder.py"), "myapp")
    assert not processes._in_a_library(os.path.join(os.sep, "srv", "app", "tasks.py"), "tasks")
    # jobcore's own files are never the app's, even for an app module named as one of them
    assert processes._in_a_library(os.path.join(processes._JOBCORE_DIR, "manager.py"), "manager")


def test_worker_threads_the_system_will_not_start_are_one_line(db_path: str, tmp_path: Any) -> None:
    # A pids limit (a container, systemd's TasksMax), here an address-space limit no 10,000
    # thread stacks fit in: a traceback ("can't start new thread"). Past 10,000: a usage error.
    resource = pytest.importorskip("resource")
    (tmp_path / "no_tasks.py").write_text("")

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    command = [sys.executable, "-m", "jobcore", "--db", db_path, "worker", "--import", "no_tasks", "--workers", "10000"]
    failed = subprocess.run(command, capture_output=True, text=True, timeout=60, env=cli_env(str(tmp_path)),
                            preexec_fn=limited)
    assert_one_line_error(failed, "cannot start 10000 worker threads: ")
    too_many = run("worker", "--import", "no_tasks", "--workers", "10001", db=db_path, env=cli_env(str(tmp_path)))
    assert too_many.returncode == 2 and "must be <= 10000" in too_many.stderr


def test_a_grace_period_too_long_for_the_platform_waits_as_none_would(
        start_worker: Callable[..., Worker], db_path: str) -> None:
    worker = start_worker(db_path, "--grace", "1e300")  # stop() raised OverflowError on a thread
    worker.next_line()

    assert worker.stop() == 0
    assert worker.next_line().startswith("jobcore worker: stopping")
    assert worker.next_line().strip() == "jobcore worker: stopped"
    assert worker.stderr() == ""


def test_a_malformed_postgres_dsn_is_one_line_that_never_shows_the_password() -> None:
    pytest.importorskip("psycopg")
    from jobcore import JobManager
    for bad in ("postgresql://user:topsecret@[bad", "postgresql://user:top secret@127.0.0.1/db",
                "postgresql://user:top%ZZsecret@127.0.0.1/db"):  # the whole string, or a piece, was quoted
        with pytest.raises(ValueError, match="not a valid PostgreSQL connection string") as error:
            JobManager(bad)
        assert "secret" not in str(error.value), str(error.value)
    dsn = "postgresql://user:topsecret@[bad"
    # it printed a traceback ending in that ValueError, quoting the whole DSN
    done = run("stats", db=dsn)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("jobcore: error: dsn is not a valid") and done.stderr.count("\n") == 1
    assert "topsecret" not in done.stderr and "Traceback" not in done.stderr

