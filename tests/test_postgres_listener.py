"""PostgreSQL: a started manager hears another process's new work through LISTEN/NOTIFY at
once (the listener's thread wakes its housekeeper), not at its next look; notifications
of its own pool wake no one; the thread ends with the last watcher and at close, and
outlives a lost LISTEN connection. A real server and a schema per test (see
`pg_fixtures`); the listener's token: test_postgres.py.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from typing import Any, Callable

import pytest

import pg_fixtures
from pg_fixtures import *  # noqa: F401,F403 (the fixtures: server, schema, repo)
from pg_fixtures import WAIT, Schema, psycopg
from jobcore import Job, JobManager, JobStatus
from jobcore.testing.contract import NOW, make_record
from waiting import wait_until

try:
    from jobcore.postgres import listener as listener_module
except ImportError:  # the extra is not installed: pg_fixtures.MARKS skips (or fails in CI)
    pass

pytestmark = pg_fixtures.MARKS

THREAD = "jobcore-pg-listener"
# Another process's script: store a job of "task" in the schema, print its id.
PRODUCER = (
    "import sys\n"
    "from jobcore import Job, JobManager\n"
    "from jobcore.postgres import PostgresRepository\n"
    "with JobManager(PostgresRepository(sys.argv[1], schema=sys.argv[2]), producer=True) as m:\n"
    "    print(m.enqueue(Job(function_name='task')))\n")


def _notify_from_elsewhere(schema: Schema) -> None:
    """What another process's commit of new work sends (`schema.NOTIFY`), from a session
    of no pool of this process."""
    with psycopg.connect(schema.server, autocommit=True) as conn:
        conn.execute("SELECT pg_notify('jobcore_jobs', %s)", (schema.name,))


def test_a_job_another_process_stores_starts_without_waiting_for_a_look(
        schema: Schema, make_manager: Callable[..., JobManager]) -> None:
    # given a started manager that looks at the store for other processes' work only once
    # a minute (after its first look, as it starts)
    manager = make_manager(schema.repository(), poll_interval=60.0, discovery_interval=60.0)
    ran = threading.Event()
    manager.register_function("task", lambda: ran.set())
    manager.start()
    # when another process stores a job for it
    stored = subprocess.run([sys.executable, "-c", PRODUCER, schema.server, schema.name],
                            capture_output=True, text=True, timeout=WAIT, check=True)
    job_id = stored.stdout.strip()
    # then the manager runs it at once, told by the store's notification
    assert ran.wait(WAIT), "the job another process stored did not start"
    assert manager.wait(job_id, timeout=WAIT).status is JobStatus.COMPLETED


def test_a_job_another_process_stores_while_the_manager_starts_runs_at_once(
        schema: Schema, make_manager: Callable[..., JobManager], monkeypatch: Any) -> None:
    # given a manager that looks at the store for other processes' work once a minute,
    # whose start, once it has read the store, lets another process store a job
    manager = make_manager(schema.repository(), poll_interval=60.0, discovery_interval=60.0)
    manager.register_function("task", lambda: "done")
    start_housekeeper = manager._housekeeper.start
    stored: list[str] = []

    def start_after_another_process_stored(*args: Any) -> None:
        stored.append(subprocess.run([sys.executable, "-c", PRODUCER, schema.server, schema.name],
                                     capture_output=True, text=True, timeout=WAIT, check=True).stdout.strip())
        start_housekeeper(*args)

    monkeypatch.setattr(manager._housekeeper, "start", start_after_another_process_stored)
    # when it starts
    manager.start()
    # then the job runs now (its notification came before anyone listened: it waited for
    # the first look, a minute on)
    assert len(stored) == 1
    assert manager.wait(stored[0], timeout=WAIT).status is JobStatus.COMPLETED


def test_notifications_of_the_own_pool_wake_no_watcher_and_others_do(schema: Schema) -> None:
    # given a repository whose listener a watcher watches, wake-ups counted
    repository = schema.repository()
    try:
        listener = repository._db._listener
        woken: list[int] = []
        unwatch = repository.watch_changes(lambda: woken.append(1))
        wait_until(lambda: listener._conn is not None, WAIT, "the listener to connect")
        # when this repository stores jobs one at a time (each notifies), each heard
        for n in range(1, 21):
            before = listener._count
            repository.insert([make_record()], NOW)
            wait_until(lambda: listener._count > before, WAIT, f"notification {n} to be heard")
        # then none woke the watcher; and a notification from another session does, once
        assert woken == []
        _notify_from_elsewhere(schema)
        wait_until(lambda: woken, WAIT, "the watcher to be woken")
        assert woken == [1]
        unwatch()
    finally:
        repository.close()


def test_the_thread_ends_with_the_last_watcher_and_at_close(schema: Schema) -> None:
    repository = schema.repository()
    listener = repository._db._listener
    try:
        # given two watchers (two managers started on one repository): one thread
        first, second = repository.watch_changes(lambda: None), repository.watch_changes(lambda: None)
        thread = listener._thread
        assert thread is not None and thread.name == THREAD and thread.is_alive()
        # when one leaves, the thread stays; when the other does, it ends
        first()
        assert listener._thread is thread and thread.is_alive()
        second()
        thread.join(WAIT)
        assert not thread.is_alive() and listener._thread is None
        # and a thread started again ends when the repository closes
        repository.watch_changes(lambda: None)
        again = listener._thread
        assert again is not None and again is not thread and again.is_alive()
    finally:
        repository.close()
    again.join(WAIT)
    assert not again.is_alive()


def test_a_lost_listen_connection_wakes_the_watchers_and_is_made_again(
        schema: Schema, monkeypatch: Any) -> None:
    # given a watched listener that reconnects 50 ms after a loss
    monkeypatch.setattr(listener_module, "RECONNECT_DELAY", 0.05)
    repository = schema.repository()
    try:
        listener = repository._db._listener
        woken: list[int] = []
        repository.watch_changes(lambda: woken.append(1))
        thread = listener._thread
        wait_until(lambda: listener._conn is not None, WAIT, "the listener to connect")
        lost_pid = listener._conn.info.backend_pid
        # when the server ends the LISTEN session
        with psycopg.connect(schema.server, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (lost_pid,))
        # then the watchers are woken (notifications may have been missed), the listener
        # listens again on a new session, and hears the next notification
        wait_until(lambda: woken, WAIT, "the watchers to be woken by the loss")
        wait_until(lambda: listener._conn is not None and listener._conn.info.backend_pid != lost_pid,
                   WAIT, "the listener to connect again")
        heard = len(woken)
        _notify_from_elsewhere(schema)
        wait_until(lambda: len(woken) > heard, WAIT, "the watcher to be woken after the reconnection")
        assert listener._thread is thread and thread.is_alive()  # the same thread all along
    finally:
        repository.close()


def test_the_token_does_not_wait_for_a_reconnection_that_hangs(schema: Schema, monkeypatch: Any) -> None:
    # given a watched listener whose LISTEN session the server ended, and whose new
    # connections hang (a postmaster stopped: the pool's sessions still work)
    monkeypatch.setattr(listener_module, "RECONNECT_DELAY", 0.05)
    repository = schema.repository()
    listener = repository._db._listener
    connect, hanging, let_go = listener._pool.connect, threading.Event(), threading.Event()

    def hung_connect(*args: Any, **kwargs: Any) -> Any:
        hanging.set()
        let_go.wait(WAIT)
        return connect(*args, **kwargs)

    try:
        repository.watch_changes(lambda: None)
        wait_until(lambda: listener._conn is not None, WAIT, "the listener to connect")
        before = listener.token()
        monkeypatch.setattr(listener._pool, "connect", hung_connect)
        with psycopg.connect(schema.server, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (listener._conn.info.backend_pid,))
        assert hanging.wait(WAIT)  # the watching thread reconnects, and hangs
        # when a housekeeper asks for the change token meanwhile
        answers: list[int] = []
        asking = threading.Thread(target=lambda: answers.append(listener.token()))
        asking.start()
        asking.join(WAIT)
        # then it is answered while the connection still hangs, the loss counted (it waited
        # for the connection: a housekeeper's heartbeats stopped, and its jobs were taken back)
        assert answers and answers[0] > before and not let_go.is_set()
    finally:
        let_go.set()
        repository.close()


def test_a_child_forked_while_the_listener_is_busy_reads_its_token_at_once(schema: Schema) -> None:
    # given a listener whose lock another thread holds (the watching thread reading, or
    # connecting, as the process forks)
    from test_forks import _in_forked_child

    repository = schema.repository()
    listener = repository._db._listener
    holding, done = threading.Event(), threading.Event()

    def holder() -> None:
        with listener._lock:
            holding.set()
            done.wait(WAIT)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert holding.wait(WAIT)
        # when the process forks and the child asks for the change token
        report = _in_forked_child(lambda: str(listener.token()), timeout=5.0)
    finally:
        done.set()
        thread.join(WAIT)
        repository.close()
    # then the child did not wait for the parent's lock (it connected and read a count)
    assert report is not None, "the child hung"
    assert report.isdigit(), report


def test_a_listen_connection_made_again_wakes_the_watchers(schema: Schema) -> None:
    # given a watched listener, connected
    repository = schema.repository()
    try:
        listener = repository._db._listener
        woken: list[int] = []
        repository.watch_changes(lambda: woken.append(1))
        wait_until(lambda: listener._conn is not None, WAIT, "the listener to connect")
        lost_pid = listener._conn.info.backend_pid
        # when the server ends the LISTEN session, and the listener connects again
        with psycopg.connect(schema.server, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (lost_pid,))
        wait_until(lambda: listener._conn is not None and listener._conn.info.backend_pid != lost_pid,
                   WAIT, "the listener to connect again")
        # then the watchers were woken at the loss and again once it listened again (what
        # was stored while nobody listened is looked for then: a manager given a long
        # discovery_interval waited that long for it), with no notification since
        wait_until(lambda: len(woken) >= 2, WAIT, "the watchers to be woken by the new connection")
    finally:
        repository.close()


@pytest.mark.parametrize("where", ["connect", "thread"])
def test_ctrl_c_in_a_watch_leaves_no_watcher_and_no_thread(
        schema: Schema, make_manager: Callable[..., JobManager], monkeypatch: Any, where: str) -> None:
    # given a manager whose start's watch is interrupted by Ctrl-C, as the LISTEN connection
    # is made or as the listener's thread starts
    manager = make_manager(schema.repository())
    manager.register_function("task", lambda: "done")
    listener = manager.repository._db._listener
    if where == "connect":
        def interrupted_open() -> bool:
            raise KeyboardInterrupt
        monkeypatch.setattr(listener, "_open_locked", interrupted_open)
    else:
        start_thread = threading.Thread.start

        def interrupted_start(thread: threading.Thread) -> None:
            if thread.name != THREAD:
                return start_thread(thread)
            start_thread(thread)
            raise KeyboardInterrupt
        monkeypatch.setattr(threading.Thread, "start", interrupted_start)
    # when it starts
    with pytest.raises(KeyboardInterrupt):
        manager.start()
    monkeypatch.undo()
    # then no watcher is left, nor a thread (a watcher added first stayed for ever: the
    # thread and its connection outlived every manager, waking one long stopped)
    assert listener._watchers == ()
    wait_until(lambda: not [t for t in threading.enumerate() if t.name == THREAD], WAIT,
               "the listener's thread to end")
    # and a start then works, its stop leaving nothing either
    manager.start()
    assert manager.wait(manager.enqueue(Job(function_name="task")), timeout=WAIT).result == "done"
    manager.stop()
    assert listener._watchers == ()
    wait_until(lambda: not [t for t in threading.enumerate() if t.name == THREAD], WAIT,
               "the listener's thread to end")
