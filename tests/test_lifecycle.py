"""`JobManager.start`, `stop` and `close` racing each other, failing, interrupted, or
called from inside the manager's own jobs and from signal handlers."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from typing import Any, Iterator, Optional

import pytest

from jobcore import (CallbackNotificationChannel, FakeClock, Job, JobManager, JobStatus, MemoryRepository,
                     SQLiteRepository)
from jobcore.errors import RepositoryError
from interrupts import CtrlCOnce
from waiting import wait_until
from watched_leases import WatchedLeases

WAIT = 10.0  # generous bound for waits that normally end in milliseconds
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _jobcore_threads(before: set[threading.Thread]) -> list[str]:
    """The names of the live jobcore threads started since `before` was taken."""
    return sorted(t.name for t in threading.enumerate()
                  if t not in before and t.is_alive() and t.name.startswith("jobcore-"))


class _Blocker:
    """A job function that runs until released: `started` tells it began."""

    def __init__(self) -> None:
        self.started, self.release = threading.Event(), threading.Event()

    def __call__(self) -> str:
        self.started.set()
        assert self.release.wait(WAIT)
        return "done"


@pytest.fixture
def blocker() -> Iterator[_Blocker]:
    job = _Blocker()
    yield job
    job.release.set()  # whatever the test did, the job's thread ends


def _running_one(make_manager: Any, store: Any, blocker: _Blocker, **options: Any) -> tuple[JobManager, str]:
    """A started manager of one worker, running `blocker` as the job whose id it returns."""
    manager = make_manager(store, max_workers=1, **options)
    manager.register_function("block", blocker)
    manager.start()
    job_id = manager.enqueue(Job(function_name="block"))
    assert blocker.started.wait(WAIT)
    return manager, job_id


def _stopping_in_thread(manager: JobManager) -> threading.Thread:
    """A thread inside a graceful `stop()` of `manager`, waiting for its running job."""
    stopper = threading.Thread(target=manager.stop, name="graceful-stop")
    stopper.start()
    wait_until(lambda: not manager.running, WAIT, "the graceful stop to begin")
    return stopper


# -- several stops at once ------------------------------------------------------------------
def test_a_stop_with_a_timeout_returns_in_time_while_a_graceful_stop_waits(
        make_manager: Any, db_path: str, blocker: _Blocker) -> None:
    # given a graceful stop waiting in another thread for a running job (the app's shutdown)
    manager, job_id = _running_one(make_manager, db_path, blocker)
    graceful = _stopping_in_thread(manager)

    # when a supervisor's stop with a timeout comes
    returned = threading.Event()

    def bounded() -> None:
        manager.stop(timeout=0.2)
        returned.set()

    threading.Thread(target=bounded).start()

    # then it returns after its own timeout, not once the graceful one ends (it waited
    # for the manager's lock, held by the graceful stop until the job ended)
    began = time.monotonic()
    assert returned.wait(WAIT - 5), "stop(timeout=0.2) waited for the other stop"
    assert time.monotonic() - began < 5.0
    assert graceful.is_alive() and manager.poll(job_id).status is JobStatus.RUNNING
    # and the graceful stop still lets the job finish, then ends the housekeeper
    blocker.release.set()
    graceful.join(WAIT)
    assert not graceful.is_alive()
    assert manager.poll(job_id).status is JobStatus.COMPLETED
    assert manager.list_workers() == []


def test_a_start_during_a_stop_waits_for_that_stop_then_starts(
        make_manager: Any, db_path: str, blocker: _Blocker) -> None:
    # given a graceful stop waiting for a running job
    manager, job_id = _running_one(make_manager, db_path, blocker)
    graceful = _stopping_in_thread(manager)

    # when another thread starts the manager
    restart = threading.Thread(target=manager.start)
    restart.start()

    # then the start does not race the stop: it waits for it, and starts after it
    restart.join(0.2)
    assert restart.is_alive() and not manager.running
    blocker.release.set()
    graceful.join(WAIT)
    restart.join(WAIT)
    assert not restart.is_alive() and manager.running
    assert manager.poll(job_id).status is JobStatus.COMPLETED
    manager.register_function("two", lambda: 2)
    assert manager.wait(manager.enqueue(Job(function_name="two")), timeout=WAIT).result == 2


def test_ctrl_c_in_a_stop_just_after_it_counted_itself_leaves_close_free_to_return() -> None:
    # given a started manager
    manager = JobManager(MemoryRepository(), max_workers=2)
    manager.register_function("task", lambda: "done")
    manager.start()
    assert manager.wait(manager.enqueue(Job(function_name="task")), timeout=WAIT).result == "done"
    lifecycle = manager._lifecycle
    # when Ctrl-C lands in its stop just after the stop counted itself among those under
    # way (the lifecycle's lock released, the stopping not begun)
    with CtrlCOnce("_stop_threads", lambda: lifecycle._stops == 1 and not lifecycle._lock._is_owned()) as ctrl_c:
        with pytest.raises(KeyboardInterrupt):
            manager.stop()
    assert ctrl_c.fired
    # then the stop is not counted as under way for ever: close() returns (it waited for
    # that stop to end, for ever), and so would a start
    closing = threading.Thread(target=manager.close, daemon=True)
    closing.start()
    closing.join(WAIT)
    assert not closing.is_alive() and lifecycle._stops == 0


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_stop_from_a_signal_handler_inside_a_store_call_does_not_wait_for_itself(
        kind: str, tmp_path: Any, make_manager: Any) -> None:
    # A handler interrupting any store call that holds the store's lock (a keyed enqueue,
    # a cancel, a `poll` of the memory store) made a graceful stop wait for the dispatcher,
    # which waited for that lock: for ever on memory; on SQLite until the outcomes were
    # given up (busy timeout, lease timeout, busy timeout) and the jobs ran again.
    repository = MemoryRepository() if kind == "memory" else SQLiteRepository(str(tmp_path / "jobs.db"))
    held = repository._lock if kind == "memory" else repository._db._write_lock  # what such a call holds
    started, release = threading.Semaphore(0), threading.Event()

    def block() -> None:
        started.release()
        assert release.wait(WAIT)

    manager = make_manager(repository, max_workers=2)
    manager.register_function("block", block)
    manager.start()
    job_ids = [manager.enqueue(Job(function_name="block")) for _ in range(2)]
    assert started.acquire(timeout=WAIT) and started.acquire(timeout=WAIT)
    # when the handler stops the manager inside such a call, as the jobs finish
    with held:
        release.set()
        began = time.monotonic()
        manager.stop(timeout=WAIT)
        took = time.monotonic() - began
    # then the stop returned once the jobs ended, and their outcomes were recorded once
    # the call went on (`close` waits for that)
    assert took < WAIT / 2 and not manager.running
    manager.close()
    reopened = MemoryRepository() if kind == "memory" else SQLiteRepository(str(tmp_path / "jobs.db"))
    store = repository if kind == "memory" else reopened
    for job_id in job_ids:
        record = store.get(job_id)
        assert record is not None and (record.status, record.attempts) == (JobStatus.COMPLETED, 1)
    reopened.close()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_after_a_stop_that_did_not_wait_a_start_runs_no_more_than_max_workers(
        kind: str, tmp_path: Any, make_manager: Any) -> None:
    # given a manager of one worker whose jobs have been instant (the short-job reserve
    # claims more than the workers run), running a job as it stops without waiting
    manager = make_manager(MemoryRepository() if kind == "memory" else str(tmp_path / "jobs.db"), max_workers=1)
    lock, running, peak = threading.Lock(), [0], [0]
    a_started, release_a, b_ran = threading.Event(), threading.Event(), threading.Event()

    def body(name: str) -> str:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            if name == "a":
                a_started.set()
                assert release_a.wait(WAIT)
            else:
                b_ran.set()
            return name
        finally:
            with lock:
                running[0] -= 1

    manager.register_function("body", body)
    manager.register_function("quick", lambda: None)
    manager.start()
    for job_id in manager.enqueue_many([Job(function_name="quick") for _ in range(300)]):
        manager.wait(job_id, timeout=WAIT)
    a = manager.enqueue(Job(function_name="body", args=("a",)))
    assert a_started.wait(WAIT)
    manager.stop(wait=False)
    # when it starts again and a job comes
    manager.start()
    b = manager.enqueue(Job(function_name="body", args=("b",)))
    # then that job waits for the earlier start's job: its thread took one of the slots
    # (the new worker ran the job claimed in reserve beside it)
    assert not b_ran.wait(0.3)
    release_a.set()
    assert [manager.wait(job_id, timeout=WAIT).result for job_id in (a, b)] == ["a", "b"]
    assert peak[0] == 1


def _a_long_job_in_run_pending(manager: JobManager) -> tuple[str, threading.Event, threading.Thread]:
    """A job "a" that runs until released, running in `run_pending` on another thread:
    its id, the event that releases it, and that thread."""
    started, release = threading.Event(), threading.Event()

    def a() -> str:
        started.set()
        assert release.wait(WAIT)
        return "a"

    manager.register_function("a", a)
    job_id = manager.enqueue(Job(function_name="a"))
    pending = threading.Thread(target=manager.run_pending, args=(1,))
    pending.start()
    assert started.wait(WAIT)
    return job_id, release, pending


def test_a_run_pending_attempt_in_another_thread_takes_no_workers_place(make_manager: Any) -> None:
    # given a manager of one worker that learned its jobs are short (the reserve claims
    # ahead for its worker), running a job in run_pending on another thread as it is
    # started again: that attempt counted as a worker's, so the worker left the job
    # claimed for it in the buffer, and nothing woke it once the attempt ended
    manager = make_manager(MemoryRepository(), max_workers=1)

    def short() -> str:
        time.sleep(0.001)
        return "short"

    manager.register_function("short", short)
    manager.start()
    for job_id in [manager.enqueue(Job(function_name="short")) for _ in range(60)]:
        manager.wait(job_id, timeout=WAIT)
    manager.stop()
    first, release_a, pending = _a_long_job_in_run_pending(manager)
    manager.start()
    second = manager.enqueue(Job(function_name="short"))
    wait_until(lambda: manager.poll(second).status is JobStatus.RUNNING, WAIT, "the job claimed in reserve")
    time.sleep(0.05)  # (the worker back asleep, the job in the buffer)
    # then the worker runs it while run_pending's job runs (that one holds no worker)
    assert manager.wait(second, timeout=WAIT).result == "short"
    assert manager.poll(first).status is JobStatus.RUNNING
    release_a.set()
    pending.join(WAIT)
    assert manager.wait(first, timeout=WAIT).result == "a"


def test_run_pendings_attempt_leaves_the_worker_room_to_claim(make_manager: Any) -> None:
    # given a manager of one worker, not started, running a long job in run_pending on
    # another thread as it is started: the attempt counted against the worker's room, so
    # jobs enqueued meanwhile were not claimed until it ended
    manager = make_manager(MemoryRepository(), max_workers=1)
    manager.register_function("quick", lambda: "quick")
    first, release_a, pending = _a_long_job_in_run_pending(manager)
    try:
        manager.start()
        quick = [manager.enqueue(Job(function_name="quick")) for _ in range(3)]
        # then the worker runs them meanwhile
        assert [manager.wait(job_id, timeout=WAIT).result for job_id in quick] == ["quick"] * 3
        assert manager.poll(first).status is JobStatus.RUNNING
    finally:
        release_a.set()
        pending.join(WAIT)
    assert manager.wait(first, timeout=WAIT).result == "a"


def test_a_stop_in_a_signal_handler_that_interrupted_a_stop_returns(tmp_path: Any) -> None:
    # given a graceful stop on the main thread (leaving a `with` block), waiting for a job,
    # when a SIGTERM handler calls stop(timeout=...) on that same thread: it waited for
    # the manager's lock, which the stop it interrupted held, for ever
    script = textwrap.dedent(f"""
        import faulthandler, os, signal, threading
        from jobcore import Job, JobManager
        faulthandler.dump_traceback_later(20, exit=True)
        started, release = threading.Event(), threading.Event()

        def block():
            started.set()
            release.wait(20)
            return "done"

        manager = JobManager({str(tmp_path / "jobs.db")!r}, max_workers=1)
        manager.register_function("block", block)

        def on_term(signum, frame):
            manager.stop(timeout=1)
            print("handler returned", flush=True)
            release.set()

        signal.signal(signal.SIGTERM, on_term)

        def terminate_once_stopping():
            while manager.running:
                threading.Event().wait(0.01)
            os.kill(os.getpid(), signal.SIGTERM)

        with manager:
            job_id = manager.enqueue(Job(function_name="block"))
            started.wait(20)
            threading.Thread(target=terminate_once_stopping).start()
        print("left the block:", manager.poll(job_id).status.value, flush=True)
        manager.close()
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    try:
        done = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("the stop called by the signal handler never returned")
    # then the handler's stop returns at once, and the stop it interrupted goes on
    assert (done.returncode, done.stdout) == (0, "handler returned\nleft the block: completed\n"), done.stderr


# -- a start that fails ---------------------------------------------------------------------
class _FailsToRegister:
    """Mixed into a store: it fails to register workers while `failing` is set (a
    database locked past its busy timeout, say)."""

    failing = False

    def register_worker(self, *args: Any, **kwargs: Any) -> Any:
        if self.failing:
            raise RepositoryError("database is locked (simulated)")
        return super().register_worker(*args, **kwargs)  # type: ignore[misc]


class _Unregistrable(_FailsToRegister, MemoryRepository):
    """A memory store that fails to register workers (until `failing` is cleared)."""

    failing = True


def test_a_start_that_fails_to_register_leaves_nothing_running_and_may_be_tried_again(
        make_manager: Any) -> None:
    # given stored jobs, and a store that fails as the manager registers as a worker
    before = set(threading.enumerate())
    repository = _Unregistrable()
    manager = make_manager(repository, max_workers=2)
    manager.register_function("double", lambda x: 2 * x)
    ids = [manager.enqueue(Job(function_name="double", args=(n,))) for n in range(3)]

    # when it starts
    with pytest.raises(RepositoryError, match="locked"):
        manager.start()

    # then it started nothing: no thread runs (its workers ran the jobs, with no
    # housekeeper renewing their leases, and neither stop() nor close() ended them)
    assert _jobcore_threads(before) == []
    assert not manager.running
    assert [manager.poll(job_id).status for job_id in ids] == [JobStatus.PENDING] * 3
    # and once the store works again, a start runs them
    repository.failing = False
    manager.start()
    assert [manager.wait(job_id, timeout=WAIT).result for job_id in ids] == [0, 2, 4]
    assert [w.worker_id for w in manager.list_workers()] == [manager.worker_id]


class _WatchedUnregistrable(_FailsToRegister, WatchedLeases):
    """An SQLite store that tells when a job's lease was renewed, and fails to register
    workers while `failing` is set."""


def test_a_failed_restart_keeps_renewing_the_lease_of_a_job_running_past_the_stop(
        make_manager: Any, db_path: str, blocker: _Blocker) -> None:
    # given a job still running after a stop that did not wait (its lease renewed by the
    # housekeeper meanwhile), and a restart that fails to register the manager
    clock = FakeClock()
    repository = _WatchedUnregistrable(db_path)
    manager, job_id = _running_one(make_manager, repository, blocker, lease_timeout=1.0, poll_interval=0.2,
                                   clock=clock)
    manager.stop(wait=False)
    repository.failing = True
    with pytest.raises(RepositoryError):
        manager.start()

    # when its lease would have lapsed three times over (no step over 1 s: see the
    # housekeeper's jump check)
    for _ in range(6):
        clock.advance(0.5)
        # then it is still renewed: the start superseded the thread renewing it, and none
        # took over
        assert repository.renewed(job_id, clock.time()), "the lease of a job still running was not renewed"
    # and its outcome is recorded once it returns
    blocker.release.set()
    result = manager.wait(job_id, timeout=WAIT)
    assert (result.status, result.attempts) == (JobStatus.COMPLETED, 1)


# -- from inside a job ----------------------------------------------------------------------
def test_a_job_may_stop_its_manager_without_waiting_but_not_close_it(make_manager: Any, db_path: str) -> None:
    # given jobs that stop their own manager without waiting, and that close it
    manager = make_manager(db_path, max_workers=2, poll_interval=0.05).start()
    closing: dict[str, str] = {}

    def shutdown() -> str:
        manager.stop(wait=False)
        return "asked to stop"

    def closer() -> None:
        try:
            manager.close()
        except RuntimeError as exc:
            closing["error"] = str(exc)

    manager.register_function("closer", closer)
    manager.register_function("shutdown", shutdown)
    # when each runs
    closed = manager.wait(manager.enqueue(Job(function_name="closer")), timeout=WAIT)
    stopped = manager.wait(manager.enqueue(Job(function_name="shutdown", max_retries=0)), timeout=WAIT)

    # then close() is refused (it would wait for the job itself), naming itself, and
    # changes nothing...
    assert closed.status is JobStatus.COMPLETED
    assert "close() called from inside one of this manager's jobs" in closing["error"]
    assert "stop(wait=False)" in closing["error"]
    # ...while stop(wait=False) stops the manager, and the job's outcome is recorded
    assert (stopped.status, stopped.result) == (JobStatus.COMPLETED, "asked to stop")
    assert not manager.running
    housekeeper = manager._housekeeper._thread
    assert housekeeper is not None
    housekeeper.join(WAIT)  # it renewed the job's lease until the job ended, then left
    assert not housekeeper.is_alive()
    assert manager.list_workers() == []


# -- an interrupted stop --------------------------------------------------------------------
class _CtrlC(BaseException):
    """What a Ctrl-C's KeyboardInterrupt does to the code it lands in."""


def test_a_stop_after_one_interrupted_while_it_waited_finishes_it(
        make_manager: Any, db_path: str, blocker: _Blocker) -> None:
    # given a graceful stop on the main thread, interrupted (Ctrl-C) while it waits for a job
    manager, job_id = _running_one(make_manager, db_path, blocker)

    def interrupt(signum: int, frame: Any) -> None:
        raise _CtrlC()

    def interrupt_once_stopping() -> None:
        wait_until(lambda: not manager.running, WAIT, "the stop to begin")
        os.kill(os.getpid(), signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, interrupt)
    try:
        threading.Thread(target=interrupt_once_stopping).start()
        with pytest.raises(_CtrlC):
            manager.stop()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert not manager.running

    # when the job ends, and stop() is called again
    blocker.release.set()
    manager.stop()

    # then that stop finishes what the first began: the job's outcome is recorded, the
    # housekeeper has ended and the manager left the worker registry (the second stop
    # did nothing: the manager was listed, its housekeeper running, until close())
    assert manager.poll(job_id).status is JobStatus.COMPLETED
    housekeeper = manager._housekeeper._thread
    assert housekeeper is not None and not housekeeper.is_alive()
    assert manager.list_workers() == []
    # and it starts again as after any stop
    manager.start()
    assert manager.wait(manager.enqueue(Job(function_name="block")), timeout=WAIT).result == "done"


def test_close_stops_through_the_managers_own_stop() -> None:
    # A subclass extending stop() (to flush something of its own, say) had it run on
    # close() until the lifecycle moved out of the manager, which then stopped directly.
    calls: list[tuple[bool, object]] = []

    class Extended(JobManager):
        def stop(self, wait: bool = True, timeout: Optional[float] = None) -> None:
            calls.append((wait, timeout))
            super().stop(wait, timeout)

    manager = Extended(MemoryRepository()).start()
    manager.close()
    assert calls == [(True, None)]
    assert not manager.running


@pytest.mark.parametrize("store", ["sqlite", "memory"])
@pytest.mark.parametrize("immediate", [False, True])
def test_a_closed_manager_cannot_be_started_again(db_path: str, store: str, immediate: bool) -> None:
    # given a closed manager: on SQLite start() met the closed store, but on memory it
    # started again and ran jobs whose events its released channels never heard
    events: list[dict[str, Any]] = []
    manager = JobManager(db_path if store == "sqlite" else MemoryRepository(), immediate=immediate)
    manager.register_function("ok", lambda: 1)
    manager.add_notification_channel(CallbackNotificationChannel(events.append))
    manager.close()

    with pytest.raises(RuntimeError, match="closed manager"):
        manager.start()
    assert not manager.running
    assert events == []


def test_a_manager_stopped_by_its_with_block_and_dropped_leaves_no_thread(monkeypatch: Any) -> None:
    # given a manager with a notification channel, stopped by its `with` block (not closed)
    # after its jobs ran, its idle delivery thread looking every 50 ms whether its
    # dispatcher still exists
    from jobcore import notify_dispatch
    monkeypatch.setattr(notify_dispatch, "GONE_CHECK_EVERY", 0.05)
    before = set(threading.enumerate())
    heard: list[dict[str, Any]] = []
    with JobManager(MemoryRepository()) as manager:
        manager.add_notification_channel(CallbackNotificationChannel(heard.append))
        manager.register_function("fails", _fails)
        failed = manager.enqueue(Job(function_name="fails", max_retries=0))
        assert manager.wait(failed, timeout=WAIT).status is JobStatus.FAILED
        wait_until(lambda: len(heard) == 1, WAIT, "the dead letter to be heard")
    # when it is dropped, then it is freed and no thread of its stays (its notification
    # thread held it, and the channel, until the process exited)
    dropped = weakref.ref(manager)
    del manager
    wait_until(lambda: gc.collect() is not None and dropped() is None, WAIT, "the manager to be freed")
    wait_until(lambda: not _jobcore_threads(before), WAIT, "jobcore's threads to end")


def _fails() -> None:
    raise ValueError("a permanent failure")


def _open_files_on(path: str) -> int:
    """How many of this process's file descriptors are open on `path` or its -wal/-shm."""
    names = {path, path + "-wal", path + "-shm"}
    found = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            found += os.readlink(f"/proc/self/fd/{fd}") in names
        except OSError:  # (the listing's own descriptor, closed since)
            pass
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_clock_that_outlives_its_managers_keeps_none_of_them_nor_their_files(db_path: str) -> None:
    # given a fake clock shared by the tests of a session, and a manager on it that ran a
    # job, stopped by its `with` block (not closed)
    clock = FakeClock()
    with JobManager(db_path, clock=clock) as manager:
        manager.register_function("add", lambda x, y: x + y)
        assert manager.wait(manager.enqueue(Job(function_name="add", args=(1, 2))), timeout=WAIT).result == 3
    assert _open_files_on(db_path) > 0
    # when it is dropped
    dropped = weakref.ref(manager)
    del manager
    # then it is freed, and its connections to the file closed (the clock's subscribers
    # held it, and two descriptors, for as long as the clock lived), and the clock goes on
    wait_until(lambda: gc.collect() is not None and dropped() is None, WAIT, "the manager to be freed")
    # (`wait`'s poller thread, lingering a second, may hold the repository that long)
    wait_until(lambda: gc.collect() is not None and _open_files_on(db_path) == 0, WAIT, "its files to close")
    clock.advance(1.0)



@pytest.mark.parametrize("backend", ["sqlite", "memory"])
def test_a_start_that_fails_halfway_runs_no_job(make_manager: Any, db_path: str, monkeypatch: Any,
                                                backend: str) -> None:
    # given jobs stored, and a process that can start one worker thread but not the second
    manager = make_manager(db_path if backend == "sqlite" else MemoryRepository(), max_workers=2)
    ran: list[int] = []
    manager.register_function("task", ran.append)
    ids = manager.enqueue_many([Job(function_name="task", args=(n,)) for n in range(4)])
    real_start, real_stop = threading.Thread.start, type(manager._pool).stop

    def start(thread: threading.Thread) -> None:
        if thread.name == "jobcore-worker-1":
            raise RuntimeError("can't start new thread")
        real_start(thread)

    def slow_stop(pool: Any, *args: Any, **kwargs: Any) -> Any:
        time.sleep(0.2)  # the worker that started has the pool's lock first
        return real_stop(pool, *args, **kwargs)

    monkeypatch.setattr(threading.Thread, "start", start)
    monkeypatch.setattr(type(manager._pool), "stop", slow_stop)
    # when start() raises
    with pytest.raises(RuntimeError, match="can't start new thread"):
        manager.start()
    # then no job was claimed nor run (the worker that started claimed and ran them, and
    # they stayed RUNNING: no dispatcher had started to record them)
    assert ran == []
    assert [manager.poll(job_id).status for job_id in ids] == [JobStatus.PENDING] * 4  # type: ignore[union-attr]


@pytest.mark.parametrize("store", ["sqlite", "memory"])
def test_a_job_stored_while_the_manager_starts_runs(make_manager: Any, db_path: str, store: str,
                                                    monkeypatch: Any) -> None:
    # given a manager on a fake clock (no periodic read of the store comes: its
    # housekeeper's first look, too, waits for the clock) whose start, once it has read
    # the store, lets another thread enqueue a job before it goes on
    manager: JobManager = make_manager(db_path if store == "sqlite" else MemoryRepository(), clock=FakeClock())
    manager.register_function("task", lambda: "done")
    start_housekeeper = manager._housekeeper.start
    stored: list[str] = []

    def start_after_an_enqueue(*args: Any) -> None:
        enqueuing = threading.Thread(target=lambda: stored.append(manager.enqueue(Job(function_name="task"))))
        enqueuing.start()
        enqueuing.join(WAIT)
        start_housekeeper(*args)

    monkeypatch.setattr(manager._housekeeper, "start", start_after_an_enqueue)
    # when it starts
    manager.start()
    # then the job runs (on SQLite, stored after the start's read of the store, it was in
    # no queue: it stayed PENDING beside idle workers until a periodic read; a manager on
    # the memory store queues every job, started or not)
    assert len(stored) == 1
    assert manager.wait(stored[0], timeout=WAIT).status is JobStatus.COMPLETED


@pytest.mark.parametrize("launched", [True, False])
def test_ctrl_c_as_the_housekeepers_thread_starts_leaves_nothing_running(
        make_manager: Any, db_path: str, monkeypatch: Any, launched: bool) -> None:
    # given a manager on a file, and Ctrl-C landing as its housekeeper's thread is started
    # (`Thread.start` waits for the new thread to begin: there, once it was launched, or
    # before it was)
    from jobcore import doorbell
    before = set(threading.enumerate())
    manager = make_manager(db_path)
    manager.register_function("task", lambda: "done")
    start_thread = threading.Thread.start

    def interrupted_start(thread: threading.Thread) -> None:
        if thread.name != "jobcore-housekeeper":
            return start_thread(thread)
        monkeypatch.setattr(threading.Thread, "start", start_thread)  # (once)
        if launched:
            start_thread(thread)
        raise KeyboardInterrupt

    monkeypatch.setattr(threading.Thread, "start", interrupted_start)
    # when it starts
    with pytest.raises(KeyboardInterrupt):
        manager.start()
    # then nothing runs (the thread heartbeated and heard other managers' rings for a
    # manager not started, and stop() had nothing to stop), nothing hears the doorbell,
    # and a start then works
    assert not manager.running
    wait_until(lambda: _jobcore_threads(before) == [], WAIT, "the housekeeper's thread to end")
    assert manager._housekeeper._doorbell.key not in doorbell._rings
    manager.start()
    assert manager.wait(manager.enqueue(Job(function_name="task")), timeout=WAIT).result == "done"
    manager.stop()
    assert "jobcore-housekeeper" not in _jobcore_threads(before)
    assert manager._housekeeper._doorbell.key not in doorbell._rings
