"""The command line on a PostgreSQL database (`--db postgresql://...`): the commands read
the schema the DSN selects, and the dashboard serves it (against the server of
`pg_fixtures`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pg_fixtures
from dashboard_cli import serve_dashboard
from pg_fixtures import *  # noqa: F401,F403 (the fixtures: server, schema, repo)
from pg_fixtures import ROOT, WAIT, Schema
from jobcore import Job, JobManager, JobStatus
from progress_jobs import report_progress_for
from subprocesses import close_pipes

pytestmark = pg_fixtures.MARKS


def _env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "JOBCORE_DB"}
    env["PYTHONPATH"] = ROOT
    return env


def _jobs(schema: Schema, n: int) -> list[str]:
    """`n` jobs queued in the schema by a producer (nothing runs them)."""
    repository = schema.repository()
    try:
        producer = JobManager(repository, producer=True)
        return [producer.enqueue(Job(function_name="elsewhere.task", args=(x,))) for x in range(n)]
    finally:
        repository.close()


def test_stats_and_show_read_the_schema_the_dsn_selects(schema: Schema) -> None:
    ids = _jobs(schema, 3)

    stats = subprocess.run([sys.executable, "-m", "jobcore", "--db", schema.dsn, "stats", "--json"],
                           capture_output=True, text=True, env=_env(), timeout=WAIT)
    show = subprocess.run([sys.executable, "-m", "jobcore", "--db", schema.dsn, "show", ids[0]],
                          capture_output=True, text=True, env=_env(), timeout=WAIT)

    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["pending"] == 3
    assert show.returncode == 0, show.stderr
    assert ids[0] in show.stdout and "pending" in show.stdout


def test_the_dashboard_serves_a_postgresql_database_until_ctrl_c(schema: Schema) -> None:
    _jobs(schema, 2)
    banner, _, stats = serve_dashboard(schema.dsn, _env(), WAIT)

    assert f"schema='{schema.name}'" in banner  # where the jobs are, without a password
    assert stats["total"] == 2 and stats["pending"] == 2


WORKER_MODULE = '''
import jobcore


@jobcore.register_job_function("pg_cli_tasks.double")
def double(x):
    return 2 * x
'''


def test_a_worker_runs_the_jobs_of_a_postgresql_database_and_never_prints_its_password(
        schema: Schema, tmp_path: Any) -> None:
    (tmp_path / "pg_cli_tasks.py").write_text(WORKER_MODULE)
    assert "@" in schema.dsn and ":" not in schema.dsn.split("://", 1)[1].split("@", 1)[0]
    with_password = schema.dsn.replace("@", ":s3cret-word@", 1)  # the test server trusts local users
    env = {**_env(), "PYTHONPATH": os.pathsep.join([ROOT, str(tmp_path)])}
    proc = subprocess.Popen([sys.executable, "-m", "jobcore", "--db", with_password, "worker", "--import",
                             "pg_cli_tasks"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    repository = schema.repository()
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        producer = JobManager(repository, producer=True)
        ids = [producer.enqueue(Job(function_name="pg_cli_tasks.double", args=(x,))) for x in range(3)]
        results = [producer.wait(job_id, timeout=WAIT).result for job_id in ids]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
        rest = proc.stdout.read() + (proc.stderr.read() if proc.stderr else "")
    finally:
        repository.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)
        close_pipes(proc)

    assert results == [0, 2, 4]
    assert f"schema='{schema.name}'" in banner
    assert "s3cret-word" not in banner + rest


# Each example that starts `python -m jobcore worker` processes, and a line it prints at its end.
WORKER_EXAMPLES = {
    "long_job.py": "poller: result {'title': 'holiday-2024', 'frames': 1200",
    "worker_pool.py": "jobcore worker: stopped",
}


def test_the_examples_that_start_workers_run_on_the_dsn_in_jobcore_db(schema: Schema, tmp_path: Any) -> None:
    # docs/index.md: each example runs on `$JOBCORE_DB` if set, which may be a DSN (not a path
    # to make absolute: "postgresql://h/db" would become "/cwd/postgresql:/h/db").
    env = {**_env(), "JOBCORE_DB": schema.dsn}
    outputs = {}
    for name, expected in WORKER_EXAMPLES.items():
        cwd = tmp_path / name.removesuffix(".py")
        cwd.mkdir()
        run = subprocess.run([sys.executable, os.path.join(ROOT, "examples", name)], cwd=cwd, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=4 * WAIT)
        outputs[name] = (run.returncode, run.stdout)

    for name, (code, out) in outputs.items():
        assert code == 0, f"{name} exited with {code}:\n{out[-3000:]}"
        assert f"database: {schema.dsn}\n" in out, f"{name}:\n{out[-3000:]}"
        assert WORKER_EXAMPLES[name] in out, f"{name}:\n{out[-3000:]}"
        assert "Traceback" not in out, f"{name}:\n{out[-3000:]}"


def test_a_cancel_from_the_command_line_reaches_a_job_running_in_another_process_at_once(schema: Schema) -> None:
    # given a job reporting progress for 15 s in a worker whose heartbeats are 20 s apart
    # (poll_interval=30)
    repository = schema.repository()
    manager = JobManager(repository, max_workers=1, poll_interval=30)
    try:
        manager.register_function("report", report_progress_for)
        job_id = manager.enqueue(Job(function_name="report", args=(15.0,)))
        manager.start()
        deadline = time.monotonic() + WAIT
        while manager.poll(job_id).status is not JobStatus.RUNNING:  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.01)
        # when the command line cancels it
        cancelled = subprocess.run([sys.executable, "-m", "jobcore", "--db", schema.dsn, "cancel", job_id],
                                   capture_output=True, text=True, env=_env(), timeout=WAIT)
        # then the worker hears of it from the cancel's NOTIFY (it ran to its end, COMPLETED,
        # hearing it only at its heartbeat after)
        assert cancelled.returncode == 0, cancelled.stderr
        assert manager.wait(job_id, timeout=30).status is JobStatus.CANCELLED
    finally:
        manager.close()
