"""PostgreSQL connections the server ended: a restart, `idle_session_timeout`,
`pg_terminate_backend`. The pool never lends an idle connection the server ended, and a
call whose connection broke under it runs again once, when that cannot apply it twice.
A real server and a schema per test (see `pg_fixtures`); the repository's contract:
test_postgres.py.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from typing import Any, Callable

import pytest

import pg_fixtures
import pg_server
from pg_fixtures import *  # noqa: F401,F403 (the fixtures: server, schema, repo)
from pg_fixtures import WAIT, Schema, psycopg
from jobcore import Job, JobManager, JobStatus, current_job
from jobcore.errors import RepositoryError
from jobcore.testing.contract import NOW, make_record
from waiting import wait_until
from subprocesses import close_pipes

try:
    from jobcore.postgres import PostgresRepository
    from jobcore.postgres.database import Tx
except ImportError:  # the extra is not installed: pg_fixtures.MARKS skips (or fails in CI)
    pass

pytestmark = pg_fixtures.MARKS


def _fill_pool(repository: "PostgresRepository", count: int) -> list[int]:
    """Open `count` pooled connections at once and give them back, idle: their backends' pids."""
    with contextlib.ExitStack() as stack:
        conns = [stack.enter_context(repository._db.pool.connection()) for _ in range(count)]
        return [conn.info.backend_pid for conn in conns]


def _wait_until_ended(server: str, pids: list[int]) -> None:
    """Return once none of the backends `pids` is left: each has sent its client the
    message ending its session, and closed it."""
    with psycopg.connect(server, autocommit=True) as watch:
        def ended() -> bool:
            row = watch.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)).fetchone()
            return row is not None and row[0] == 0
        wait_until(ended, WAIT, "the server to end the pooled sessions")


def _with_options(server: str, options: str) -> str:
    return f"{server}{'&' if '?' in server else '?'}options={options}"


# -- idle connections the server ended are never lent ------------------------------------------------
def test_the_calls_after_the_server_ended_idle_pooled_connections_all_succeed(schema: Schema) -> None:
    # given a producer whose pool holds four idle connections
    repository = schema.repository(pool_size=4)
    try:
        pids = _fill_pool(repository, 4)
        # when an administrator ends their sessions while they sit idle
        with psycopg.connect(schema.server, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::INT[]) AS pid", (pids,))
        _wait_until_ended(schema.server, pids)
        # then every following call works: writes in a transaction, autocommit writes, reads
        jobs = [make_record() for _ in range(6)]
        for job in jobs:
            repository.insert([job], NOW)
        repository.add_log(jobs[0].id, "info", "after the sessions ended", NOW)
        assert repository.count_by_status()[JobStatus.PENDING] == 6
        assert [line[2] for line in repository.logs(jobs[0].id)] == ["after the sessions ended"]
    finally:
        repository.close()


def test_a_producer_whose_idle_sessions_timed_out_polls_and_enqueues(schema: Schema) -> None:
    # given a server that ends sessions idle for half a second (idle_session_timeout), and a
    # producer that enqueued a job and then sat idle longer than that
    dsn = _with_options(schema.server, "-cidle_session_timeout%3D500")
    repository = PostgresRepository(dsn, schema=schema.name, pool_size=3)
    manager = JobManager(repository, producer=True)
    try:
        job_id = manager.enqueue(Job(function_name="tests.noop"))
        pids = _fill_pool(repository, 3)
        _wait_until_ended(schema.server, pids)
        # then its next calls work
        assert manager.poll(job_id).status is JobStatus.PENDING
        assert manager.poll(manager.enqueue(Job(function_name="tests.noop"))).status is JobStatus.PENDING
    finally:
        manager.close()


def test_the_listening_connection_outlives_idle_session_timeout(schema: Schema,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    # given a server that ends sessions idle for half a second, and a repository listening
    # for new work (its LISTEN connection is idle between notifications, by design)
    dsn = _with_options(schema.server, "-cidle_session_timeout%3D500")
    listener = PostgresRepository(dsn, schema=schema.name, pool_size=1)
    try:
        before = listener.change_token()
        listener.count_queued()  # its pooled connection is idle from now: after the listening one
        # when the server has ended that pooled session
        _wait_until_ended(schema.server, _fill_pool(listener, 1))
        # then the listening one was spared: it hears a commit, without reconnecting
        writer = PostgresRepository(dsn, schema=schema.name)
        try:
            writer.insert([make_record()], NOW)
        finally:
            writer.close()
        wait_until(lambda: listener.change_token() != before, WAIT, "the notification")
        assert listener.change_token() == (before[0] + 1, before[1])  # type: ignore[index]
        assert [record.getMessage() for record in caplog.records if "LISTEN" in record.getMessage()] == []
    finally:
        listener.close()


def test_after_a_server_restart_a_producer_with_idle_connections_carries_on(schema: Schema) -> None:
    if not pg_server.restartable():
        pytest.skip("the server is not one these tests started: it cannot be restarted here")
    # given a producer whose pool holds six idle connections (a web app's request threads)
    repository = schema.repository(pool_size=6)
    manager = JobManager(repository, producer=True)
    try:
        before = manager.enqueue(Job(function_name="tests.noop"))
        _fill_pool(repository, 6)
        # when the server restarts (ending every session) and is back
        pg_server.restart()
        # then each of the next calls works, however many dead connections the pool held
        after = [manager.enqueue(Job(function_name="tests.noop")) for _ in range(8)]
        assert [manager.poll(job_id).status for job_id in [before, *after]] == [JobStatus.PENDING] * 9
    finally:
        manager.close()


def test_a_job_that_logs_after_a_server_restart_completes(schema: Schema,
                                                         make_manager: Callable[..., JobManager]) -> None:
    if not pg_server.restartable():
        pytest.skip("the server is not one these tests started: it cannot be restarted here")
    # given a worker whose pool holds idle connections (its housekeeper looks at the store
    # only every minute), running a job that will log once the server has restarted
    repository = schema.repository()
    _fill_pool(repository, 4)
    manager = make_manager(repository, max_workers=2, poll_interval=60.0).start()
    started, go = threading.Event(), threading.Event()

    def chatty() -> str:
        started.set()
        assert go.wait(WAIT)
        for n in range(5):
            current_job().log(f"line {n}")
        return "done"

    job_id = manager.enqueue(Job(chatty, max_retries=0))
    assert started.wait(WAIT)
    # when the server restarts while the job waits, and the job then logs
    pg_server.restart()
    go.set()
    # then its lines are stored and it completes, first time
    result = manager.wait(job_id, timeout=WAIT)
    assert (result.status, result.result, result.attempts) == (JobStatus.COMPLETED, "done", 1)
    assert [entry.message for entry in manager.get_logs(job_id)][-5:] == [f"line {n}" for n in range(5)]


# -- a call whose connection broke under it ------------------------------------------------------------
def _end_own_session(tx: "Tx") -> None:
    tx.execute("SELECT pg_terminate_backend(pg_backend_pid())")


def test_a_transaction_whose_connection_broke_before_commit_runs_again_once(repo: "PostgresRepository") -> None:
    # given a unit of work whose session is ended under it, before it commits, on its first run
    runs: list[int] = []

    def work(tx: "Tx") -> int:
        runs.append(len(runs) + 1)
        if len(runs) == 1:
            _end_own_session(tx)
        return int(tx.execute("SELECT 42").fetchone()[0])

    # then it runs again on another connection, and its result is returned
    assert repo._db.transaction(work) == 42
    assert runs == [1, 2]
    # and one whose session is ended on every run fails after its second: the server is
    # reachable but something is wrong, and a caller must hear of it at once
    runs.clear()

    def doomed(tx: "Tx") -> None:
        runs.append(len(runs) + 1)
        _end_own_session(tx)

    with pytest.raises(RepositoryError, match="administrator command"):
        repo._db.transaction(doomed)
    assert runs == [1, 2]


def test_a_transaction_whose_connection_broke_during_commit_is_not_run_again(repo: "PostgresRepository") -> None:
    # given a table whose deferred trigger ends the session as the transaction commits: a
    # connection lost during COMMIT, when the transaction may or may not have committed
    table = f'"{repo.schema}".probe'
    repo._db.run(f"CREATE TABLE {table} (x INT)")
    repo._db.run(f"""CREATE FUNCTION "{repo.schema}".end_session() RETURNS trigger LANGUAGE plpgsql AS
                     $$ BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NULL; END $$""")
    repo._db.run(f"""CREATE CONSTRAINT TRIGGER end_session AFTER INSERT ON {table}
                     DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION "{repo.schema}".end_session()""")
    runs: list[int] = []

    def work(tx: "Tx") -> None:
        runs.append(1)
        tx.execute(f"INSERT INTO {table} VALUES (1)")

    # then the transaction runs once: a second run could apply it twice
    with pytest.raises(RepositoryError, match="administrator command"):
        repo._db.transaction(work)
    assert runs == [1]


def test_only_statements_safe_to_repeat_run_again_when_their_connection_broke(repo: "PostgresRepository") -> None:
    # given a statement that counts its runs in a sequence (never rolled back) and then has
    # its session ended, before it can return
    repo._db.run(f'CREATE SEQUENCE "{repo.schema}".runs')
    statement = f"""SELECT nextval('"{repo.schema}".runs'), pg_terminate_backend(pg_backend_pid())"""

    def runs() -> int:
        return int(repo._db.read(f'SELECT last_value FROM "{repo.schema}".runs')[0][0])

    # then a write (not idempotent: it may have committed before the connection broke) runs once
    with pytest.raises(RepositoryError, match="administrator command"):
        repo._db.run(statement)
    assert runs() == 1
    # and an idempotent statement runs once more on another connection, and no more
    with pytest.raises(RepositoryError, match="administrator command"):
        repo._db.run(statement, idempotent=True)
    assert runs() == 3


def test_while_the_server_is_down_calls_fail_at_once_and_work_again_once_it_is_back(schema: Schema) -> None:
    if not pg_server.restartable():
        pytest.skip("the server is not one these tests started: it cannot be stopped here")
    # given a producer whose pool holds idle connections
    repository = schema.repository(pool_size=3, timeout=30)
    try:
        _fill_pool(repository, 3)
        # when the server is down, then each call is a RepositoryError naming the server at
        # once: no wait for the 30 s timeout, no loop of re-runs
        with pg_server.stopped():
            for call in (lambda: repository.insert([make_record()], NOW), repository.count_by_status):
                started = time.monotonic()
                with pytest.raises(RepositoryError, match="cannot be reached"):
                    call()
                assert time.monotonic() - started < 5
        # and once it is back, calls work again
        repository.insert([make_record()], NOW)
        assert repository.count_by_status()[JobStatus.PENDING] == 1
    finally:
        repository.close()


def test_a_hold_on_the_servers_use_in_another_process_keeps_a_restart_waiting(tmp_path: Any) -> None:
    # given the use of a server held, as each test on it holds it, by another process (a
    # test in another pytest-xdist worker); a lock file of this test's own (the server's
    # is held now and then by the tests running in the other worker)
    path = str(tmp_path / "tests.lock")
    use = pg_server.SharedUse(path)
    other = subprocess.Popen([sys.executable, "-c", _HOLDS_IT, path], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, cwd=os.path.dirname(__file__))
    try:
        assert other.stdout is not None and other.stdin is not None
        assert other.stdout.readline() == "holding\n"
        # then a restart here (which holds it alone) would wait for it
        assert use.others_hold()
        # and once it ended, no longer
        other.stdin.write("\n")
        other.stdin.flush()
        assert other.wait(WAIT) == 0
        assert not use.others_hold()
        with use.alone():
            pass  # (taken at once)
    finally:
        other.kill()
        other.wait()
        close_pipes(other)
        use.close()


_HOLDS_IT = """
import sys
import pg_server
with pg_server.SharedUse(sys.argv[1]).in_use():
    print("holding", flush=True)
    sys.stdin.readline()
"""
