"""A process forked while its repository and manager are busy: the child's writes, waits
and locks.

Real `os.fork()`, real SQLite files and threads. What a parent thread is doing at the
moment of the fork is made certain with events: a hook registered after the objects
under test runs before theirs (Python runs `before` hooks last registered first), so it
can let a parent thread go on exactly as the fork begins. Each child reports through a
pipe and leaves with `os._exit`; one that hangs is killed.
"""

from __future__ import annotations

import gc
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any, Callable, Iterator, Optional

import pytest

from jobcore import Job, JobManager, JobStatus, MemoryRepository, SQLiteRepository
from jobcore.errors import RepositoryError
from waiting import wait_until

CHILD_WAIT = 20.0  # seconds a child has to report; it does in well under one
WAIT = 10.0


def _in_forked_child(body: Callable[[], str], timeout: float = CHILD_WAIT) -> Optional[str]:
    """Fork; the child runs `body()` and reports what it returned (or the error it
    raised). The report, or None if the child did not report within `timeout` seconds
    (it hangs, and is killed: no process is left behind)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            try:
                report = body()
            except BaseException as exc:  # reported, not raised: pytest must not go on in the child
                report = f"{type(exc).__name__}: {exc}"
            os.write(write, report.encode())
        finally:
            os._exit(0)
    os.close(write)
    try:
        ready, _, _ = select.select([read], [], [], timeout)
        report = os.read(read, 4000).decode() if ready else None
    finally:
        os.close(read)
        if report is None:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    return report


class _AtFork:
    """`os.fork()` hooks: `before(action)` has the next fork run `action` in the forking
    thread before the `before` hooks of the objects built until now; `in_parent(action)`,
    in the parent once it has forked."""

    def __init__(self) -> None:
        self._before: list[Callable[[], None]] = []
        self._in_parent: list[Callable[[], None]] = []
        # (They stay registered: they do nothing once run.)
        os.register_at_fork(before=lambda: self._run(self._before),
                            after_in_parent=lambda: self._run(self._in_parent))

    def before(self, action: Callable[[], None]) -> None:
        self._before.append(action)

    def in_parent(self, action: Callable[[], None]) -> None:
        self._in_parent.append(action)

    @staticmethod
    def _run(actions: list[Callable[[], None]]) -> None:
        while actions:
            actions.pop(0)()


@pytest.fixture
def threads() -> Iterator[list[threading.Thread]]:
    """Threads a test starts, joined (bounded) when it ends."""
    started: list[threading.Thread] = []
    yield started
    for thread in started:
        thread.join(WAIT)


def test_a_child_forked_while_a_write_transaction_is_open_writes_at_once(
        tmp_path: Any, threads: list[threading.Thread]) -> None:
    # given a producer whose process has written, with a short busy timeout
    path = str(tmp_path / "jobs.db")
    producer = JobManager(SQLiteRepository(path, busy_timeout=1.0), producer=True)
    first = producer.enqueue(Job(function_name="noop", priority=0))
    inside, done = threading.Event(), threading.Event()

    # and a thread of it inside a write transaction that lasts half a second (the thread
    # stays on: as it ends, SQLite closes its connection, which a fork must not meet)
    def writer() -> None:
        with producer.repository._db.write() as conn:
            conn.execute("UPDATE jobs SET priority = 7 WHERE id = ?", (first,))
            inside.set()
            threading.Event().wait(0.5)
        done.wait(WAIT)

    threads.append(threading.Thread(target=writer))
    threads[-1].start()
    assert inside.wait(WAIT)

    # when the process forks at once, and the child enqueues through the producer it
    # inherited and through a new one on the same file

    def child() -> str:
        priority = producer.repository.get(first).priority
        began = time.monotonic()
        inherited = producer.enqueue(Job(function_name="noop"))
        own = JobManager(SQLiteRepository(path, busy_timeout=1.0), producer=True)
        fresh = own.enqueue(Job(function_name="noop"))
        return f"{priority} {time.monotonic() - began:.3f} {inherited} {fresh}"

    try:
        report = _in_forked_child(child)
    finally:
        done.set()
    # then the fork waited for the transaction to end (the child sees what it wrote), and
    # the child writes at once. Before, the child inherited the transaction open: SQLite
    # there counted the write lock as held for ever by a connection of the child's own
    # (every write of the child found the database locked), unless closing the inherited
    # connection in the child, as its thread's storage went, rolled it back there.
    assert report is not None and not report.startswith("RepositoryError"), report
    priority, took, *ids = report.split()
    assert priority == "7" and float(took) < 1.0, report
    assert [producer.poll(job_id).status for job_id in ids] == [JobStatus.PENDING] * 2
    producer.repository.close()


def test_a_fork_while_a_thread_holds_the_connections_lock_neither_hangs_nor_breaks_the_child(
        tmp_path: Any, threads: list[threading.Thread]) -> None:
    # given a repository with a connection on a thread that is alive at the fork (its
    # thread-local storage is dropped in the child, inside os.fork()), and another thread
    # holding the lock that guards the connections (as one opening its connection does)
    path = str(tmp_path / "jobs.db")
    producer = JobManager(path, producer=True)
    db = producer.repository._db
    opened, holding, done = threading.Event(), threading.Event(), threading.Event()

    def reader() -> None:
        producer.get_queue_size()  # opens this thread's connection
        opened.set()
        done.wait(WAIT)

    def holder() -> None:
        with db._lock:
            holding.set()
            done.wait(WAIT)

    threads.extend([threading.Thread(target=reader), threading.Thread(target=holder)])
    threads[0].start()
    assert opened.wait(WAIT)
    threads[1].start()
    assert holding.wait(WAIT)

    # when the process forks, and the child enqueues
    try:
        report = _in_forked_child(lambda: producer.enqueue(Job(function_name="noop")), timeout=5.0)
    finally:
        done.set()
    # then the child did not hang inside os.fork() (closing the reader's connection there
    # took the held lock) and stored its job
    assert report is not None, "the child hung"
    assert producer.poll(report).status is JobStatus.PENDING, report
    producer.repository.close()


def test_a_child_waits_for_a_job_its_parent_was_running_at_the_fork(tmp_path: Any) -> None:
    # given a started manager running a job that goes on until told
    started, release = threading.Event(), threading.Event()

    def held() -> str:
        started.set()
        release.wait(WAIT)
        return "done"

    manager = JobManager(str(tmp_path / "jobs.db"), max_workers=2)
    manager.register_function("held", held)
    manager.start()
    try:
        job_id = manager.enqueue(Job(function_name="held"))
        assert started.wait(WAIT)

        # when the process forks while it runs, the parent lets it finish, and the child
        # waits for it
        def child() -> str:
            result = manager.wait(job_id, timeout=5.0)
            return f"{result.status.value} {result.result}"

        hook = _AtFork()
        hook.in_parent(release.set)
        report = _in_forked_child(child)
        # then the child's wait returns once the parent recorded the outcome (before, the
        # pool's state copied from the parent said the job settled in the child, which
        # waited for a settlement that never came there, until its timeout)
        assert report == "completed done", report
    finally:
        release.set()
        manager.stop()


def test_locks_parent_threads_hold_at_the_fork_do_not_hang_the_child(
        threads: list[threading.Thread]) -> None:
    # given a started manager on the memory store, a thread inside the store's lock
    # (let go as the fork begins) and one holding the pool's lock through the fork (as an
    # enqueuing thread or a worker does for moments)
    repository = MemoryRepository()
    manager = JobManager(repository, max_workers=1)
    manager.register_function("noop", lambda: None)
    manager.start()
    hook = _AtFork()
    in_store, in_pool, go_on, done = (threading.Event() for _ in range(4))

    def store_user() -> None:
        with repository._lock:
            in_store.set()
            go_on.wait(WAIT)

    def pool_user() -> None:
        with manager._pool._state.lock:
            in_pool.set()
            done.wait(WAIT)

    threads.extend([threading.Thread(target=store_user), threading.Thread(target=pool_user)])
    for thread in threads:
        thread.start()
    try:
        assert in_store.wait(WAIT) and in_pool.wait(WAIT)
        hook.before(go_on.set)

        # when the process forks, and the child enqueues, polls, cancels and waits
        def child() -> str:
            job_id = manager.enqueue(Job(function_name="noop"))
            before = manager.poll(job_id)
            cancelled = manager.cancel(job_id)
            result = manager.wait(job_id, timeout=5.0)
            return f"{before is not None} {cancelled} {result.status.value}"

        report = _in_forked_child(child, timeout=5.0)
    finally:
        go_on.set()
        done.set()
    # then none of it waited for a lock a parent thread held at the fork
    assert report == "True True cancelled", report
    manager.stop()


@pytest.mark.parametrize("how", ["write_one", "write"])
def test_an_interrupt_between_a_write_and_its_end_leaves_no_write_gate_held(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    # Ctrl-C (or any exception) landing after the statement and before the gate that
    # forks wait on was let go left it held for good: every later write hung; landing
    # right after BEGIN, it left the transaction open, holding SQLite's write lock.
    repository = SQLiteRepository(str(tmp_path / "gate.db"))
    connections = repository._db
    until_free = connections._until_free

    def interrupted(deadline: Any, attempt: Any, *args: Any) -> Any:
        until_free(deadline, attempt, *args)  # the write began (or was made), and then
        raise KeyboardInterrupt

    monkeypatch.setattr(connections, "_until_free", interrupted)
    with pytest.raises(KeyboardInterrupt):
        if how == "write_one":
            connections.write_one("INSERT INTO jobcore_meta (key, value) VALUES ('a', 'b')", ())
        else:
            with connections.write() as conn:
                conn.execute("INSERT INTO jobcore_meta (key, value) VALUES ('a', 'b')")
    monkeypatch.setattr(connections, "_until_free", until_free)
    assert connections._gate._inside == []  # no call counted as still under way: a fork waits for none
    assert connections._gate.before_fork(0.0)
    connections._gate.after_fork_in_parent()
    done = threading.Event()
    threading.Thread(target=lambda: (connections.write_one("DELETE FROM jobcore_meta WHERE key = 'a'", ()),
                                     done.set()), daemon=True).start()
    assert done.wait(10)
    repository.close()



# Some 0.1 s of work inside SQLite (a read that holds SQLite's mutexes now and then).
_SLOW_READ = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 500000)"
              " SELECT count(*) FROM c")


def test_a_fork_waits_for_a_read_under_way_and_the_child_reads_at_once(
        tmp_path: Any, threads: list[threading.Thread]) -> None:
    # given a store, and a thread inside a read, held there until the fork begins
    producer = JobManager(str(tmp_path / "jobs.db"), producer=True)
    job_id = producer.enqueue(Job(function_name="noop"))
    db = producer.repository._db
    inside, go_on = threading.Event(), threading.Event()
    read_done: list[int] = []

    def slow(conn: Any) -> None:
        inside.set()
        go_on.wait(WAIT)
        # then a read that takes a while, inside SQLite (where it holds SQLite's own
        # mutexes now and then), noted as done as its last step inside the call
        read_done.append(conn.execute(_SLOW_READ).fetchone()[0])

    threads.append(threading.Thread(target=lambda: db.reading(slow)))
    threads[-1].start()
    assert inside.wait(WAIT)
    hook = _AtFork()
    hook.before(go_on.set)  # (runs before the repository's own hook)

    # when the process forks, and the child polls the job at once
    def child() -> str:
        began = time.monotonic()
        status = producer.poll(job_id).status.value
        return f"{read_done} {status} {time.monotonic() - began < 1.0}"

    try:
        report = _in_forked_child(child, timeout=5.0)
    finally:
        go_on.set()
    # then the fork waited for the read to end (the child's copy of memory has it done),
    # and the child read at once. Before, the fork went on while the read ran inside
    # SQLite: a mutex of SQLite's it held then stayed locked in the child, whose first
    # connection could wait on it for ever.
    assert report == "[500000] pending True", report
    producer.repository.close()


def test_children_forked_from_a_process_whose_threads_poll_read_at_once(
        tmp_path: Any, threads: list[threading.Thread]) -> None:
    # given a store, three threads polling it in a loop (as a web app's request threads
    # do) and one whose short-lived threads each open and close a connection
    producer = JobManager(str(tmp_path / "jobs.db"), producer=True)
    job_id = producer.enqueue(Job(function_name="noop"))
    stop = threading.Event()
    # (First, the garbage earlier tests left: an unreferenced sqlite3 connection is closed
    # by the collector, in whichever thread runs it, a call into SQLite that no fork gate
    # of jobcore's sees. Suspected in the one hang seen in a full run; this test is about
    # jobcore's own calls.)
    gc.collect()

    def poll() -> None:
        while not stop.is_set():
            producer.poll(job_id)

    def churn() -> None:
        while not stop.is_set():
            opener = threading.Thread(target=poll_once)
            opener.start()
            opener.join(WAIT)

    def poll_once() -> None:
        producer.poll(job_id)

    threads.extend(threading.Thread(target=poll) for _ in range(3))
    threads.append(threading.Thread(target=churn))
    for thread in threads:
        thread.start()
    # when the process forks 20 times, and each child polls once
    try:
        reports = []
        for _ in range(20):
            report = _in_forked_child(lambda: producer.poll(job_id).status.value, timeout=5.0)
            reports.append(report)
            if report is None:
                break  # one hung: no need to wait for more
    finally:
        stop.set()
    # then every child read at once. Before, about 1 in 5 hung for ever inside
    # sqlite3.connect (or setting the journal mode): forked while a parent thread was
    # inside SQLite, it found a mutex of SQLite's locked, with no thread to let it go.
    assert reports == ["pending"] * 20, reports
    for thread in threads:
        thread.join(WAIT)
    producer.repository.close()


def test_a_fork_from_inside_a_read_does_not_wait_for_itself(tmp_path: Any) -> None:
    # given a store whose calls wait up to 5 s for the database
    producer = JobManager(SQLiteRepository(str(tmp_path / "jobs.db"), busy_timeout=5.0), producer=True)
    job_id = producer.enqueue(Job(function_name="noop"))
    took: list[float] = []

    # when a thread forks from inside a read (as a signal handler may), and the child polls
    def fork_inside(conn: Any) -> Optional[str]:
        began = time.monotonic()
        report = _in_forked_child(lambda: producer.poll(job_id).status.value, timeout=5.0)
        took.append(time.monotonic() - began)
        return report

    report = producer.repository._db.reading(fork_inside)
    # then the fork did not wait for the read it was made from (its bound, 5 s), and
    # the child read at once
    assert report == "pending" and took[0] < 2.0, (report, took)
    producer.repository.close()

class _Channel:
    """A notification channel noting each event with the pid of the process it came in."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # guards events
        self.events: list[tuple[int, str, str]] = []
        self.got = threading.Condition(self.lock)

    def send(self, event: dict[str, Any]) -> None:
        with self.lock:
            self.events.append((os.getpid(), event["event"], event["job_id"]))
            self.got.notify_all()

    def of_this_process(self) -> list[tuple[str, str]]:
        with self.lock:
            return [(name, job_id) for pid, name, job_id in self.events if pid == os.getpid()]


def _notifying_manager(tmp_path: Any) -> tuple[JobManager, _Channel]:
    """A manager, stopped, whose channel's delivery thread (started by an event it
    delivered) goes on in this process, waiting for the next."""
    manager = JobManager(str(tmp_path / "jobs.db"), max_workers=1)
    channel = _Channel()
    manager.add_notification_channel(channel)
    manager.register_function("noop", lambda: "done")
    manager.start()
    first = manager.enqueue(Job(function_name="noop"))
    with channel.got:
        assert channel.got.wait_for(lambda: channel.events, WAIT)
    assert channel.of_this_process() == [("job.completed", first)]
    manager.stop()
    return manager, channel


def _notify_in_child(manager: JobManager, channel: _Channel) -> str:
    """In a forked child: run a job (its event is published here), wait for its
    delivery, close; report what the channel got here and how long close took."""
    job_id = manager.enqueue(Job(function_name="noop"))
    manager.run_pending()
    flushed = manager._notifier.flush(timeout=5.0)
    began = time.monotonic()
    manager.close()
    took = time.monotonic() - began
    return f"{flushed} {channel.of_this_process() == [('job.completed', job_id)]} {took < 1.0}"


def test_a_child_forked_from_a_manager_with_a_notification_channel_delivers_its_own_events(
        tmp_path: Any) -> None:
    # given a manager whose channel's delivery thread runs in this process
    manager, channel = _notifying_manager(tmp_path)
    try:
        # when the process forks, and the child runs a job and closes the manager
        report = _in_forked_child(lambda: _notify_in_child(manager, channel))
        # then the child delivered the job's event on a thread of its own, and closed at
        # once (before, it counted the parent's thread as its channel's: the event waited
        # in a queue no thread of its read, and close waited 5 s for that thread)
        assert report == "True True True", report
    finally:
        manager.close()


def test_a_parent_thread_holding_the_notification_lock_at_the_fork_does_not_hang_the_child(
        tmp_path: Any, threads: list[threading.Thread]) -> None:
    # given a manager with a notification channel, and a thread holding its notification
    # lock through the fork (as a publishing thread does for moments)
    manager, channel = _notifying_manager(tmp_path)
    inside, done = threading.Event(), threading.Event()

    def holder() -> None:
        with manager._notifier._lock:
            inside.set()
            done.wait(WAIT)

    threads.append(threading.Thread(target=holder))
    threads[-1].start()
    try:
        assert inside.wait(WAIT)
        # when the process forks, and the child runs a job and closes the manager
        report = _in_forked_child(lambda: _notify_in_child(manager, channel), timeout=10.0)
    finally:
        done.set()
        manager.close()
    # then the child published, delivered and closed with a lock of its own
    assert report == "True True True", report


def test_a_child_forked_inside_a_job_may_stop_and_close_its_copy_of_the_manager(tmp_path: Any) -> None:
    # The forking thread keeps the job bound in the child, where nothing runs it: stop()
    # and close() there refused, "called from inside one of this manager's jobs".
    manager = JobManager(str(tmp_path / "jobs.db"), max_workers=1)

    def child() -> str:
        manager.stop()
        manager.close()
        return f"stopped and closed; running={manager.running}"

    manager.register_function("forks", lambda: _in_forked_child(child))
    manager.register_function("stops", manager.stop)
    with manager:
        job_id = manager.enqueue(Job(function_name="forks"))
        result = manager.wait(job_id, timeout=WAIT)
        # in this process, a job's stop() that waits is still refused: it would wait for itself
        refused = manager.wait(manager.enqueue(Job(function_name="stops")), timeout=WAIT)
    assert (result.status, result.result) == (JobStatus.COMPLETED, "stopped and closed; running=False")
    assert refused.status is JobStatus.FAILED and "inside one of this manager's jobs" in (refused.error or "")
    manager.close()


def test_a_parent_closing_its_store_after_a_fork_leaves_the_childs_commits_in_it(tmp_path: Any) -> None:
    # gunicorn --preload: the app used its store before the fork, the child writes on, and
    # the parent closes its store (at `close()`, or at exit). A child that inherited the
    # record of the parent's open connections took no lock on `-shm`; the parent's close
    # found no other holder and removed `-wal` and `-shm` under it: the child's later
    # commits went to removed files, and its jobs were lost.
    path = str(tmp_path / "jobs.db")
    parent = JobManager(path, producer=True)
    parent.enqueue(Job(function_name="work", name="parent"))
    to_parent, from_child = os.pipe()
    to_child, from_parent = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            signal.alarm(int(CHILD_WAIT))
            child = JobManager(path, producer=True)
            child.enqueue(Job(function_name="work", name="child"))
            os.write(from_child, b"1")
            os.read(to_child, 1)  # the parent has closed its store
            for _ in range(20):
                child.enqueue(Job(function_name="work", name="child"))
            os.write(from_child, b"2")
        finally:
            os._exit(0)
    try:
        assert select.select([to_parent], [], [], CHILD_WAIT)[0] and os.read(to_parent, 1) == b"1"
        parent.close()
        left = sorted(name for name in os.listdir(tmp_path) if name.startswith("jobs.db"))
        os.write(from_parent, b"go")
        assert select.select([to_parent], [], [], CHILD_WAIT)[0] and os.read(to_parent, 1) == b"2"
    finally:
        os.waitpid(pid, 0)
        for fd in (to_parent, from_child, to_child, from_parent):
            os.close(fd)
    assert left == ["jobs.db", "jobs.db-shm", "jobs.db-wal"]  # the child had them open
    with JobManager(path, producer=True) as after:
        names = [result.name for result in after.list_jobs(limit=100)]
    assert sorted(names) == ["child"] * 21 + ["parent"]


@pytest.mark.skipif(not os.path.exists("/proc/locks"), reason="reads /proc/locks (Linux)")
def test_a_fork_while_a_thread_waits_for_another_connections_lock_leaves_its_write_whole(
        tmp_path: Any, threads: list[threading.Thread]) -> None:
    # A fork closes the parent's connections (see the test above), the one a thread holds
    # while it waits between tries for a lock another connection holds too: the thread
    # makes its call again on a new one after the fork, and the child's connections take
    # their own locks (left open, the child inherited SQLite's record of its locks, took
    # none on -shm, and lost commits or read a "malformed" file once the parent closed it).
    import sqlite3

    path = str(tmp_path / "jobs.db")
    manager = JobManager(path, producer=True)
    manager.enqueue(Job(function_name="work"))
    # (the lock held by another process: a connection of this one open at the fork would
    # leave the child no lock of its own whatever jobcore does)
    other = _write_lock_held_elsewhere(path)
    outcome: list[Any] = []

    def enqueue() -> None:
        try:
            outcome.append(manager.enqueue(Job(function_name="work", name="waited")))
        except Exception as exc:
            outcome.append(exc)

    threads.append(threading.Thread(target=enqueue))
    threads[-1].start()
    gate = manager.repository._db._gate  # type: ignore[attr-defined]
    deadline = time.monotonic() + WAIT
    while not gate.anyone_stepped_out() and time.monotonic() < deadline:
        time.sleep(0.001)  # (until the enqueue waits for the lock)
    assert gate.anyone_stepped_out()

    def child() -> str:
        conn = sqlite3.connect(path)
        conn.execute("SELECT COUNT(*) FROM jobs").fetchone()
        return "locked" if _holds_a_lock_on(path + "-shm") else "no lock of its own"

    try:
        assert _in_forked_child(child) == "locked"
    finally:
        other.communicate("commit\n", timeout=WAIT)
    threads[-1].join(WAIT)
    assert len(outcome) == 1 and isinstance(outcome[0], str), outcome
    assert manager.poll(outcome[0]) is not None
    manager.close()


def _write_lock_held_elsewhere(path: str) -> subprocess.Popen[str]:
    """Another process holding the write lock on `path` until a line comes on its stdin
    (`communicate("commit\\n")`)."""
    other = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sqlite3, sys
        conn = sqlite3.connect({path!r}, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        print("held", flush=True)
        sys.stdin.readline()
        conn.execute("COMMIT")
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert other.stdout.readline().strip() == "held"  # type: ignore[union-attr]
    return other


@pytest.mark.parametrize("call", ["enqueue", "cancel"])
def test_forks_while_a_call_waits_for_another_process_give_it_no_more_than_its_busy_timeout(
        tmp_path: Any, threads: list[threading.Thread], call: str) -> None:
    # given a call waiting for another process's lock (a write alone, a write transaction),
    # with a busy timeout of 0.5 s, and this process forking every 0.1 s meanwhile
    path = str(tmp_path / "jobs.db")
    manager = JobManager(SQLiteRepository(path, busy_timeout=0.5), producer=True)
    job_id = manager.enqueue(Job(function_name="work"))
    other = _write_lock_held_elsewhere(path)
    stop = threading.Event()

    def keep_forking() -> None:
        while not stop.wait(0.1):
            assert _in_forked_child(lambda: "forked") == "forked"

    threads.append(threading.Thread(target=keep_forking))
    threads[-1].start()
    released = threading.Timer(5.0, other.communicate, ("commit\n",), {"timeout": WAIT})
    released.start()
    try:
        # when the lock stays held past it
        # then the call raises as the busy timeout says (each fork gave it a whole one more:
        # it waited until the lock was let go, 5 s later)
        with pytest.raises(RepositoryError, match="locked"):
            if call == "enqueue":
                manager.enqueue(Job(function_name="work"))
            else:
                manager.cancel(job_id)
        assert released.is_alive()  # (raised before the lock was let go)
    finally:
        stop.set()
        threads[-1].join(WAIT)
        released.cancel()
        released.join(WAIT)
        if other.returncode is None:
            other.communicate("commit\n", timeout=WAIT)
    manager.close()


def test_ctrl_c_in_a_write_whose_connection_a_fork_closed_as_it_waited_is_a_ctrl_c(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch, threads: list[threading.Thread]) -> None:
    # given a write (a cancel) waiting between tries for another process's lock, its pauses
    # made long, and a fork from another thread closing its connection meanwhile
    from jobcore.repository import sqlite_conn
    monkeypatch.setattr(sqlite_conn, "real_sleep", lambda seconds: time.sleep(max(seconds, 0.5)))
    path = str(tmp_path / "jobs.db")
    manager = JobManager(path, producer=True)
    job_id = manager.enqueue(Job(function_name="work"))
    other = _write_lock_held_elsewhere(path)
    gate = manager.repository._db._gate  # type: ignore[attr-defined]

    def fork_then_ctrl_c() -> None:
        wait_until(gate.anyone_stepped_out, WAIT, "the cancel to wait for the other process")
        assert _in_forked_child(lambda: "forked") == "forked"
        os.kill(os.getpid(), signal.SIGINT)

    threads.append(threading.Thread(target=fork_then_ctrl_c))
    threads[-1].start()
    try:
        # when Ctrl-C lands in its pause
        # then the call raises KeyboardInterrupt (it raised sqlite3.ProgrammingError, reading
        # whether the closed connection was in a transaction)
        with pytest.raises(KeyboardInterrupt):
            manager.cancel(job_id)
    finally:
        other.communicate("commit\n", timeout=WAIT)
        threads[-1].join(WAIT)
    assert manager.poll(job_id).status is JobStatus.PENDING  # type: ignore[union-attr]
    manager.close()


def test_ctrl_c_while_a_thread_steps_back_in_during_a_fork_leaves_the_gate_balanced(
        threads: list[threading.Thread]) -> None:
    # given this thread stepped out of a call (between tries), and another thread's fork
    # under way as it steps back in
    from jobcore.repository.sqlite_gate import ForkGate
    gate = ForkGate()
    gate.enter()
    assert gate.step_out()
    # when Ctrl-C lands while it waits for that fork
    _interrupted_during_a_fork(gate, gate.step_in, threads)
    # then the call's way out balances its way in (it raised ValueError: no entry to take)
    gate.leave()
    assert gate.others_inside() == set() and not gate.inside_here() and not gate.anyone_stepped_out()


def test_ctrl_c_while_a_call_waits_to_come_in_during_a_fork_leaves_it_out(
        threads: list[threading.Thread]) -> None:
    # given another thread's fork under way as this thread begins a call
    from jobcore.repository.sqlite_gate import ForkGate
    gate = ForkGate()
    # when Ctrl-C lands while it waits for that fork to come in
    _interrupted_during_a_fork(gate, gate.enter, threads)
    # then it is not counted inside (its callers leave only once `enter` returned: counted,
    # every later fork waited its whole time for it, and closed no connection)
    assert not gate.inside_here()
    assert gate.before_fork(0.0)
    gate.after_fork_in_parent()


def _interrupted_during_a_fork(gate: Any, call: Callable[[], None], threads: list[threading.Thread]) -> None:
    """Run `call` (a way into `gate`) on this thread while another thread's fork holds the
    gate closed, and Ctrl-C it as it waits there: it raises KeyboardInterrupt; the fork ends."""
    forking, done = threading.Event(), threading.Event()

    def fork() -> None:
        assert gate.before_fork(WAIT)
        forking.set()
        done.wait(WAIT)
        gate.after_fork_in_parent()

    threads.append(threading.Thread(target=fork))
    threads[-1].start()
    assert forking.wait(WAIT)
    threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT)).start()
    try:
        with pytest.raises(KeyboardInterrupt):
            call()
    finally:
        done.set()
        threads[-1].join(WAIT)


def _holds_a_lock_on(path: str) -> bool:
    """Whether this process holds a POSIX lock on `path` (Linux's /proc/locks)."""
    inode, me = os.stat(path).st_ino, str(os.getpid())
    with open("/proc/locks") as locks:
        return any(fields[4] == me and fields[5].split(":")[-1] == str(inode)
                   for fields in (line.split() for line in locks) if len(fields) > 5 and fields[1] == "POSIX")


class _HeldClose:
    """Stands for a connection in `Connections._connections`: its `close()` tells that it
    began, waits for `go` (at most `wait` seconds), then closes the real one."""

    def __init__(self, conn: Any, began: threading.Event, go: threading.Event, wait: float) -> None:
        self._conn, self._began, self._go, self._wait = conn, began, go, wait

    def close(self) -> None:
        self._began.set()
        self._go.wait(self._wait)
        self._conn.close()


def _closes_held(path: str) -> tuple[JobManager, Callable[[], str], threading.Event, threading.Event]:
    """A producer on `path` whose connections' closes wait (see `_HeldClose`: `began` is
    set as one begins, which then waits for `forked`, 1 s at most), and a forked child's
    body that tells whether its own connection holds a lock on `-shm`."""
    manager = JobManager(path, producer=True)
    manager.enqueue(Job(function_name="work"))
    connections = manager.repository._db  # type: ignore[attr-defined]
    began, forked = threading.Event(), threading.Event()
    with connections._lock:
        connections._connections = {thread: _HeldClose(conn, began, forked, 1.0)
                                    for thread, conn in connections._connections.items()}

    def child() -> str:
        import sqlite3
        conn = sqlite3.connect(path)
        conn.execute("SELECT COUNT(*) FROM jobs").fetchone()
        return "locked" if _holds_a_lock_on(path + "-shm") else "no lock of its own"

    return manager, child, began, forked


@pytest.mark.skipif(not os.path.exists("/proc/locks"), reason="reads /proc/locks (Linux)")
def test_a_fork_while_another_threads_fork_closes_the_connections_waits_for_the_closes(
        tmp_path: Any, threads: list[threading.Thread]) -> None:
    # Two threads fork at once: the first closes the connections (see the tests above);
    # the second found none left to close and forked while the first still closed one,
    # and its child inherited SQLite's record of it: its connections took no lock on
    # `-shm` (the state in which a parent's close removes the log under the child).
    manager, child, began, forked = _closes_held(str(tmp_path / "jobs.db"))
    reports: list[Optional[str]] = []
    threads.append(threading.Thread(target=lambda: reports.append(_in_forked_child(lambda: "first"))))
    threads[-1].start()
    assert began.wait(WAIT)  # the first fork closes a connection
    reports.append(_in_forked_child(child))
    forked.set()
    threads[-1].join(WAIT)
    assert sorted(reports, key=str) == ["first", "locked"]
    assert manager.poll(manager.enqueue(Job(function_name="work"))) is not None
    manager.close()


@pytest.mark.skipif(not os.path.exists("/proc/locks"), reason="reads /proc/locks (Linux)")
def test_a_fork_while_another_thread_closes_the_store_waits_for_the_closes(
        tmp_path: Any, threads: list[threading.Thread]) -> None:
    # `close()` in one thread while another forks: the fork found no connection left to
    # close (close had taken them) and forked while they were still open.
    manager, child, began, forked = _closes_held(str(tmp_path / "jobs.db"))
    threads.append(threading.Thread(target=manager.close))
    threads[-1].start()
    assert began.wait(WAIT)  # close() closes a connection
    report = _in_forked_child(child)
    forked.set()
    threads[-1].join(WAIT)
    assert report == "locked"


def test_a_fork_from_a_signal_handler_while_its_thread_closes_the_store_does_not_hang(tmp_path: Any) -> None:
    # The handler's fork waited for the connections' lock its own thread held in close():
    # for ever. (In a process of its own: a hang must not hang the suite.)
    script = textwrap.dedent(f"""
        import os, signal, sys
        from jobcore import Job, JobManager
        manager = JobManager({str(tmp_path / "jobs.db")!r}, producer=True)
        manager.enqueue(Job(function_name="work"))
        connections = manager.repository._db
        with connections._lock:  # as close() holds it when the signal lands
            pid = os.fork()
            if pid == 0:
                os._exit(0)
        os.waitpid(pid, 0)
        manager.close()
        print("forked and closed")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "forked and closed", done.stderr


def test_a_thread_ending_while_a_fork_waits_has_its_connection_closed_before_the_fork(
        tmp_path: Any, threads: list[threading.Thread]) -> None:
    # A thread that ended while a fork waited at the gate (for a read under way) took its
    # connection out of the connections kept, then waited at the gate to close it: the
    # fork found it gone, forked with it open, and the child took no lock on `-shm`.
    path = str(tmp_path / "jobs.db")
    producer = JobManager(path, producer=True)
    producer.enqueue(Job(function_name="noop"))
    db = producer.repository._db  # type: ignore[attr-defined]
    reading, finish_read, end = threading.Event(), threading.Event(), threading.Event()

    def held_read(conn: Any) -> None:
        reading.set()
        finish_read.wait(WAIT)

    def ending() -> None:
        producer.poll("0" * 32)  # (a connection of its own)
        end.wait(WAIT)

    threads.append(threading.Thread(target=lambda: db.reading(held_read)))
    threads[-1].start()
    ender = threading.Thread(target=ending)
    ender.start()
    assert reading.wait(WAIT)

    def child() -> str:
        import sqlite3
        conn = sqlite3.connect(path)
        conn.execute("SELECT COUNT(*) FROM jobs").fetchone()
        return "locked" if _holds_a_lock_on(path + "-shm") else "no lock of its own"

    reports: list[Optional[str]] = []
    threads.append(threading.Thread(target=lambda: reports.append(_in_forked_child(child))))
    threads[-1].start()  # the fork waits for the held read
    deadline = time.monotonic() + WAIT
    while not db._gate._forkers and time.monotonic() < deadline:
        time.sleep(0.001)
    end.set()  # the thread ends: its connection's finalizer waits at the gate
    while time.monotonic() < deadline and "_wait_for_forks" not in _stack_of(ender):
        time.sleep(0.001)
    assert "_wait_for_forks" in _stack_of(ender)
    finish_read.set()
    threads[-1].join(WAIT)
    ender.join(WAIT)
    assert reports == ["locked"]
    producer.close()


def _stack_of(thread: threading.Thread) -> str:
    """The names of the functions `thread` is in now."""
    frame = sys._current_frames().get(thread.ident or 0)
    names = []
    while frame is not None:
        names.append(frame.f_code.co_name)
        frame = frame.f_back
    return " ".join(names)


def test_a_fork_inside_a_forks_hooks_leaves_the_outer_forks_gate_closed(tmp_path: Any) -> None:
    # A fork made inside another fork's hooks (a signal handler's) reopened the gate as
    # it ended, while the outer fork was still to happen: reads went in, and the outer
    # fork closed connections under them.
    from jobcore.forks import on_fork

    class Nested:
        seen: list[bool] = []

        def before(self) -> None:  # (registered before the store: runs after its hook)
            if self.seen or getattr(self, "forking", False):
                return  # (the inner fork runs the hooks too)
            self.forking = True
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
            self.seen.append(bool(db._gate._forkers))

    nested = Nested()
    on_fork(nested, before="before")
    producer = JobManager(str(tmp_path / "jobs.db"), producer=True)
    producer.enqueue(Job(function_name="noop"))
    db = producer.repository._db  # type: ignore[attr-defined]
    assert _in_forked_child(lambda: "forked") == "forked"
    assert Nested.seen[-1] is True  # still closed for the outer fork after the inner one
    assert not db._gate._forkers  # and open once it is done
    producer.close()


@pytest.mark.skipif(not os.path.exists("/proc/locks"), reason="reads /proc/locks (Linux)")
def test_close_waits_for_a_fork_that_waits_for_a_long_call(
        tmp_path: Any, threads: list[threading.Thread], monkeypatch: pytest.MonkeyPatch) -> None:
    # A fork waits up to the busy timeout for a call under way; close() waited CLOSE_WAIT
    # for it, then closed the connections beside it: the fork found none to close and
    # forked while close() still closed them.
    import jobcore.repository.sqlite_lifetime as lifetime

    monkeypatch.setattr(lifetime, "CLOSE_WAIT", 0.05)
    path = str(tmp_path / "jobs.db")
    producer = JobManager(path, producer=True)
    producer.enqueue(Job(function_name="noop"))
    db = producer.repository._db  # type: ignore[attr-defined]
    reading, finish_read = threading.Event(), threading.Event()

    def held_read(conn: Any) -> None:
        reading.set()
        finish_read.wait(WAIT)

    def child() -> str:
        import sqlite3
        conn = sqlite3.connect(path)
        conn.execute("SELECT COUNT(*) FROM jobs").fetchone()
        return "locked" if _holds_a_lock_on(path + "-shm") else "no lock of its own"

    threads.append(threading.Thread(target=lambda: db.reading(held_read)))
    threads[-1].start()
    assert reading.wait(WAIT)
    reports: list[Optional[str]] = []
    forker = threading.Thread(target=lambda: reports.append(_in_forked_child(child)))
    forker.start()  # the fork waits for the held read
    deadline = time.monotonic() + WAIT
    while not db._gate._forkers and time.monotonic() < deadline:
        time.sleep(0.001)
    closer = threading.Thread(target=producer.close)
    closer.start()
    closer.join(0.3)  # (past CLOSE_WAIT: close() went on here)
    finish_read.set()
    forker.join(WAIT)
    closer.join(WAIT)
    assert reports == ["locked"]


def test_a_fork_inside_a_forks_hooks_leaves_the_memory_stores_lock_free_after(tmp_path: Any) -> None:
    # The store kept one flag for its lock held across a fork: a fork inside another's
    # hooks (a signal handler's) cleared it, and the outer fork left the lock held for good.
    from jobcore.forks import on_fork

    class Nested:
        forked = False

        def before(self) -> None:  # (registered before the store: runs after its hook)
            if not Nested.forked:
                Nested.forked = True
                pid = os.fork()
                if pid == 0:
                    os._exit(0)
                os.waitpid(pid, 0)

    nested = Nested()
    on_fork(nested, before="before")
    store = MemoryRepository()
    assert _in_forked_child(lambda: "forked") == "forked"
    taken: list[bool] = []
    other = threading.Thread(target=lambda: taken.append(store._lock.acquire(timeout=2.0)))
    other.start()
    other.join(WAIT)
    assert taken == [True]


class _CloseThenInterrupt:
    """Stands for a connection: its `close()` closes the real one, then raises as Ctrl-C
    landing just after would."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def close(self) -> None:
        self._conn.close()
        raise KeyboardInterrupt


def test_ctrl_c_in_a_forks_closes_leaves_every_connection_closed_and_every_thread_able_to_read(
        tmp_path: Any, threads: list[threading.Thread]) -> None:
    # Ctrl-C in the fork's closes (the fork hooks log it and the fork goes on) had left
    # the connections after it open and no longer kept, and the threads whose connection
    # was closed failing every call on it.
    repository = SQLiteRepository(str(tmp_path / "jobs.db"))
    repository.list(limit=1)
    db = repository._db
    go, results = threading.Event(), []

    def worker() -> None:
        repository.list(limit=1)  # (a connection of its own)
        go.wait(WAIT)
        results.append(len(repository.list(limit=1)))

    threads.append(threading.Thread(target=worker))
    threads[-1].start()
    deadline = time.monotonic() + WAIT
    while len(db._connections) < 2 and time.monotonic() < deadline:
        time.sleep(0.001)
    me = threading.current_thread()
    with db._lock:  # the main thread's connection closed first
        db._connections = dict(sorted(((thread, _CloseThenInterrupt(conn) if thread is me else conn)
                                       for thread, conn in db._connections.items()),
                                      key=lambda item: item[0] is not me))
        others = [conn for thread, conn in db._connections.items() if thread is not me]
    assert _in_forked_child(lambda: "forked") == "forked"
    go.set()
    threads[-1].join(WAIT)
    assert results == [0] and repository.list(limit=1) == []  # both threads read on
    for conn in others:  # and the other connection was closed too
        with pytest.raises(Exception, match="closed"):
            conn.execute("SELECT 1")
    repository.close()


def test_ctrl_c_as_a_fork_ends_leaves_the_next_fork_and_close_free_to_go(tmp_path: Any) -> None:
    # Ctrl-C as the gate reopened after a fork left the turn of forks and closes held for
    # good: every later fork from another thread, and close(), waited out the busy timeout.
    repository = SQLiteRepository(str(tmp_path / "jobs.db"))
    repository.list(limit=1)
    db = repository._db
    reopen = db._gate.after_fork_in_parent

    def reopen_then_interrupt() -> None:
        reopen()
        db._gate.after_fork_in_parent = reopen
        raise KeyboardInterrupt

    db._gate.after_fork_in_parent = reopen_then_interrupt
    assert _in_forked_child(lambda: "forked") == "forked"
    taken: list[bool] = []

    def take() -> None:
        taken.append(db._fork_lock.acquire(timeout=2.0))
        if taken[-1]:
            db._fork_lock.release()

    other = threading.Thread(target=take)
    other.start()
    other.join(WAIT)
    assert taken == [True]
    repository.close()
