"""Ctrl-C (a signal handler's KeyboardInterrupt, on the main thread) landing as one of
jobcore's locks changes hands leaves it to the thread that holds it, or free:

- in a wait a caller's thread makes on one of the pool's conditions (an enqueue waits
  there for an exchange under way): with a plain lock it could end the wait without the
  lock, and the `with` around it released the lock from under a worker thread, which
  later died of "release unlocked lock" (a few hundred Ctrl-Cs into a loop of enqueues
  left no worker alive);
- just after a write took SQLite's per-process write lock, before the `try` that lets it
  go: every later write of the process waited its busy timeout and failed as a database
  locked.
"""

from __future__ import annotations

import inspect
import signal
import sys
import threading
import time
from typing import Any, Iterator

import pytest

from jobcore import Job, JobManager, RepositoryError, SQLiteRepository, lock_waits
from jobcore.pool_state import PoolState
from interrupts import CtrlCOnce, lock_is_free

WAIT = 10.0
# The line of `Condition.wait` that takes the lock back (in its `finally`).
_WAIT_LINES, _WAIT_FIRST = inspect.getsourcelines(threading.Condition.wait)
RETAKE_LINE = _WAIT_FIRST + next(i for i, line in enumerate(_WAIT_LINES) if "_acquire_restore(" in line)


def _retaking(ident: int) -> bool:
    """Whether thread `ident` is taking a condition's lock back at the end of a wait."""
    frame = sys._current_frames().get(ident)  # noqa: SLF001
    if frame is None:
        return False
    code = frame.f_code
    return code.co_name == "_acquire_restore" or (
        code is threading.Condition.wait.__code__ and frame.f_lineno == RETAKE_LINE)


@pytest.fixture
def ctrl_c_on_sigusr1() -> Iterator[threading.Event]:
    """SIGUSR1 raises KeyboardInterrupt on the main thread (as Ctrl-C's SIGINT does); the
    event is set as the handler runs."""
    handled = threading.Event()

    def interrupt(signum: int, frame: Any) -> None:
        handled.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGUSR1, interrupt)
    try:
        yield handled
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_ctrl_c_as_a_wait_for_an_exchange_takes_the_lock_back_leaves_it_to_its_holder(
        ctrl_c_on_sigusr1: threading.Event) -> None:
    # given an enqueuing thread (this one, the main thread: signals land here) waiting for
    # an exchange under way, and a worker thread that takes the pool's lock meanwhile,
    # ends the wait and holds the lock while the wait takes it back
    state = PoolState(1)
    state.exchanging = True
    main = threading.get_ident()
    released: list[str] = []

    def worker() -> None:
        try:
            with state.lock:
                state.exchange_ended.notify_all()  # (the exchange "ended": its wait ends)
                give_up = time.monotonic() + WAIT
                while not _retaking(main):
                    assert time.monotonic() < give_up, "the wait never took the lock back"
                    threading.Event().wait(0.001)
                # when Ctrl-C comes then
                signal.pthread_kill(main, signal.SIGUSR1)
                # (a plain lock's re-take is interrupted at once; an RLock's is not: its
                # handler runs once the lock is taken, after this thread let it go)
                ctrl_c_on_sigusr1.wait(0.2)
            released.append("released")
        except BaseException as exc:  # noqa: BLE001 (what the worker would have died of)
            released.append(repr(exc))

    thread = threading.Thread(target=worker)
    caught: BaseException | None = None
    try:
        with state.lock:
            thread.start()
            state.await_exchange_locked(WAIT)
    except BaseException as exc:  # noqa: BLE001
        caught = exc
    thread.join(WAIT)
    # then the enqueuing thread got its KeyboardInterrupt (not "release unlocked lock"),
    # the worker let go of the lock it held without an error, and the lock is free
    assert ctrl_c_on_sigusr1.is_set()
    assert isinstance(caught, KeyboardInterrupt), repr(caught)
    assert released == ["released"]
    assert state.awaiting_exchange == 0
    assert lock_is_free(state.lock)


def test_ctrl_c_just_before_a_wait_takes_the_lock_back_leaves_it_held_by_the_waiter() -> None:
    # given an enqueuing thread waiting for an exchange under way (10 ms)
    state = PoolState(1)
    state.exchanging = True

    # when Ctrl-C lands in the wait just before it takes the pool's lock back
    def trace(frame: Any, event: str, arg: Any) -> Any:
        if frame.f_code is not threading.Condition.wait.__code__:
            return None

        def line(frame: Any, event: str, arg: Any) -> Any:
            if event == "line" and frame.f_lineno == RETAKE_LINE:
                sys.settrace(None)
                raise KeyboardInterrupt
            return line
        return line

    caught: BaseException | None = None
    sys.settrace(trace)
    try:
        with state.lock:
            state.await_exchange_locked(0.01)
    except BaseException as exc:  # noqa: BLE001
        caught = exc
    finally:
        sys.settrace(None)
    # then it got its KeyboardInterrupt (not a RuntimeError from releasing a lock it did
    # not hold), and the lock is free for the other threads
    assert isinstance(caught, KeyboardInterrupt), repr(caught)
    assert state.awaiting_exchange == 0
    assert lock_is_free(state.lock)


def test_a_wait_for_returns_the_last_value_of_its_predicate() -> None:
    # given a condition on a waitable lock, and a thread that sets a flag and notifies
    lock = lock_waits.waitable_lock()
    cond = threading.Condition(lock)
    flag: list[bool] = []

    def setter() -> None:
        with lock:
            flag.append(True)
            cond.notify_all()

    # when a thread waits for the flag, and then for something never true (briefly)
    with lock:
        threading.Thread(target=setter).start()
        seen = lock_waits.wait_for(cond, lock, lambda: bool(flag), WAIT)
        never = lock_waits.wait_for(cond, lock, lambda: False, 0.01)
    # then the first wait saw it, the second timed out
    assert seen is True and never is False


def test_ctrl_c_just_after_a_write_took_the_write_lock_lets_it_go(db_path: str) -> None:
    # given a manager on a file (not started: its enqueues write the job themselves)
    manager = JobManager(SQLiteRepository(db_path, busy_timeout=0.5), producer=True)
    try:
        # when Ctrl-C lands in an enqueue just after its write took the process's write
        # lock (its second line: the lock was free, taken at once)
        lines = iter(range(100))
        with CtrlCOnce("_take_write_lock", armed=lambda: next(lines) == 1):
            with pytest.raises(KeyboardInterrupt):
                manager.enqueue(Job(function_name="task"))
        # then the next write (from another thread too) takes it: it does not wait out its
        # busy timeout and fail as a locked database
        stored: list[object] = []

        def enqueue() -> None:
            try:
                stored.append(manager.enqueue(Job(function_name="task")))
            except RepositoryError as exc:
                stored.append(exc)

        other = threading.Thread(target=enqueue)
        other.start()
        other.join(WAIT)
        assert len(stored) == 1 and isinstance(stored[0], str), stored
        assert manager.get_stats()["pending"] == 1
    finally:
        manager.close()


def test_a_write_begun_inside_another_on_the_same_thread_is_refused_at_once(db_path: str) -> None:
    # given a write transaction open on this thread
    repository = SQLiteRepository(db_path, busy_timeout=5.0)
    began = time.monotonic()
    try:
        with repository._db.write():  # noqa: SLF001
            # when another write begins inside it, then it is refused at once (it waited
            # for itself its whole busy timeout)
            with pytest.raises(RepositoryError, match="inside another write"):
                with repository._db.write():  # noqa: SLF001
                    pass  # pragma: no cover
        assert time.monotonic() - began < 4.0
        # and the outer write's lock is let go: the next write goes through
        with repository._db.write() as conn:  # noqa: SLF001
            conn.execute("SELECT 1")
    finally:
        repository.close()
