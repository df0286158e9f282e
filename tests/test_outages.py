"""Store outages: every call to the store fails (a server stopped, a database locked past
its busy timeout), for longer than `lease_timeout`, then works again. No live worker
runs another's job meanwhile (SPEC: "a job is never run by two live workers at the same
time"), and `stop()` does not wait for the store to come back. The store is SQLite behind
a wrapper that fails on demand; each manager is one process, time is a `FakeClock`."""

from __future__ import annotations

import functools
import logging
import threading
import time
from typing import Any, Callable, Iterator

import pytest

from jobcore import FakeClock, Job, JobManager, JobStatus, RepositoryError, SQLiteRepository
from jobcore.clock import SYSTEM_CLOCK, Clock
from waiting import wait_until

WAIT = 10.0
LEASE = 10.0
POLL = 1.0  # lease recovery every LEASE / 4 = 2.5 s


class Unreachable(SQLiteRepository):
    """An SQLite repository whose every call fails while `down` is set, as one on a
    stopped server would; it notes the clock time of each call it is asked for, by name
    (`tried`), and counts those that failed (`failed`)."""

    def __init__(self, path: str, clock: Clock) -> None:
        self.down = threading.Event()
        self.clock = clock
        self.seen = threading.Condition()  # guards tried and failed; notified at each call
        self.tried: dict[str, float] = {}
        self.failed: dict[str, int] = {}
        super().__init__(path)

    def __getattribute__(self, name: str) -> Any:
        attr = super().__getattribute__(name)
        if name.startswith("_") or name in _OWN or not callable(attr):
            return attr
        note = object.__getattribute__(self, "_note")

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            note(name)
            return attr(*args, **kwargs)
        return call

    def _note(self, name: str) -> None:
        down = self.down.is_set()
        with self.seen:
            self.tried[name] = self.clock.time()
            if down:
                self.failed[name] = self.failed.get(name, 0) + 1
            self.seen.notify_all()
        if down:
            raise RepositoryError(f"{name}: server unreachable (injected)")

    def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        with self.seen:
            assert self.seen.wait_for(condition, WAIT), f"timed out waiting for {what}"

    def beat_tried(self, at: float) -> None:
        """Wait for a heartbeat (its job leases or its registry entry) tried at `at` or later."""
        self.wait_for(lambda: max(self.tried.get("heartbeat", 0.0), self.tried.get("beat_worker", 0.0)) >= at,
                      f"a heartbeat at {at}")

    def failures(self, name: str) -> int:
        with self.seen:
            return self.failed.get(name, 0)


# Called as they are: the test's own, closing, and `held_here` (which asks this thread's
# lock, no server).
_OWN = {"close", "held_here", *vars(Unreachable)}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def release() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()  # a job still blocking when a test fails must not hold the teardown's stop


@pytest.fixture
def make_store(make_manager: Any, db_path: str) -> Iterator[Callable[[Clock], Unreachable]]:
    """Build `Unreachable` stores on `db_path`, working again before the managers stop."""
    stores: list[Unreachable] = []

    def make(clock: Clock) -> Unreachable:
        stores.append(Unreachable(db_path, clock))
        return stores[-1]

    yield make
    for store in stores:
        store.down.clear()


def step(clock: FakeClock, *beating: Unreachable) -> float:
    """Move time on by one poll_interval and wait for each manager to have beaten (or
    tried to) since: its upkeep has acted on the time before (lease recovery included)."""
    clock.advance(POLL)
    for repository in beating:
        repository.beat_tried(clock.time())
    return clock.monotonic()


def running_in(make_manager: Any, make_store: Any, clock: FakeClock, release: threading.Event,
               runs: list[str]) -> tuple[JobManager, Unreachable, str]:
    """A started manager running one job (blocking until `release`) that notes its runs."""
    repository = make_store(clock)
    manager = make_manager(repository, max_workers=1, lease_timeout=LEASE, poll_interval=POLL, clock=clock)
    started = threading.Event()

    def long_job() -> str:
        runs.append("first")
        started.set()
        assert release.wait(WAIT)
        return "first"

    manager.register_function("long", long_job)
    manager.start()
    job_id = manager.enqueue(Job(function_name="long"))
    assert started.wait(WAIT)
    return manager, repository, job_id


def other_worker(make_manager: Any, make_store: Any, clock: FakeClock,
                 runs: list[str]) -> tuple[JobManager, Unreachable]:
    """A second started manager on the same store (another process), idle, for the job too."""
    repository = make_store(clock)
    manager = make_manager(repository, max_workers=1, lease_timeout=LEASE, poll_interval=POLL, clock=clock)
    manager.register_function("long", lambda: runs.append("second") or "second")
    return manager.start(), repository


def down_past_the_lease(clock: FakeClock, *stores: Unreachable,
                        meanwhile: Callable[[], None] = lambda: None) -> None:
    """Make every call of `stores` fail for longer than a lease (calling `meanwhile` a few
    polls in), each manager beating (in vain) all along."""
    for store in stores:
        store.down.set()
    for n in range(int(LEASE) + 2):
        step(clock, *stores)
        if n == 5:
            meanwhile()


@pytest.mark.parametrize("ends", ["after", "during"], ids=["job-ends-after-the-outage", "job-ends-during-it"])
def test_after_an_outage_longer_than_the_lease_no_live_worker_runs_anothers_job(
        make_manager: Any, make_store: Any, clock: FakeClock, release: threading.Event, ends: str) -> None:
    # given a long job running in one manager, and another manager idle on the same store
    runs: list[str] = []
    first, first_store, job_id = running_in(make_manager, make_store, clock, release, runs)
    second, second_store = other_worker(make_manager, make_store, clock, runs)

    # when the store fails both for longer than the job's lease (the job may end meanwhile:
    # its outcome then waits to be recorded)
    def job_ends() -> None:
        if ends == "during":
            release.set()
            wait_until(lambda: not first._pool._state.running, WAIT, "the job to end")

    down_past_the_lease(clock, first_store, second_store, meanwhile=job_ends)
    assert first_store.failures("heartbeat") > 0 and second_store.failures("beat_worker") > 0
    # and works again for the idle manager first, past its next lease recovery round...
    second_store.down.clear()
    back = step(clock, first_store, second_store)
    for _ in range(3):
        step(clock, first_store, second_store)
    # ...then for the manager running the job
    first_store.down.clear()

    # then the idle manager took nothing back while the other renewed its leases, and its
    # recovery rounds resumed once a lease had passed (the round may come a step after the
    # beat that step waits for)
    while clock.monotonic() < back + LEASE + 4 * POLL and second_store.tried.get("recover", 0.0) < back + LEASE:
        step(clock, first_store, second_store)
    record = second.repository.get(job_id)
    assert record is not None and record.worker_id == first.worker_id
    assert second_store.tried["recover"] >= back + LEASE
    # and the job ran once, its outcome recorded by the manager that ran it
    release.set()
    result = first.wait(job_id, timeout=WAIT)
    assert (result.status, result.attempts, result.result) == (JobStatus.COMPLETED, 1, "first")
    assert runs == ["first"]


def test_a_worker_still_unreachable_a_lease_after_the_store_came_back_loses_its_job(
        make_manager: Any, make_store: Any, clock: FakeClock, release: threading.Event) -> None:
    # given a long job running in one manager, and another manager idle on the same store
    runs: list[str] = []
    first, first_store, job_id = running_in(make_manager, make_store, clock, release, runs)
    second, second_store = other_worker(make_manager, make_store, clock, runs)
    # when the store fails both for longer than the lease, then works again for the idle
    # one only (the other cut off from it, as by a network partition)
    down_past_the_lease(clock, first_store, second_store)
    second_store.down.clear()
    back = step(clock, second_store)
    # then once a lease has passed since the store came back, the job is taken back and
    # runs again there: recovery is held off, not stopped
    while clock.monotonic() < back + LEASE + POLL:
        step(clock, second_store)
    result = second.wait(job_id, timeout=WAIT)
    assert (result.status, result.attempts, result.result) == (JobStatus.COMPLETED, 2, "second")
    first_store.down.clear()


def finished_during_an_outage(make_manager: Any, make_store: Any, clock: FakeClock,
                              release: threading.Event) -> tuple[JobManager, Unreachable, str]:
    """A manager whose job ended after the store went down: its outcome waits to be recorded."""
    manager, repository, job_id = running_in(make_manager, make_store, clock, release, [])
    repository.down.set()
    release.set()
    repository.wait_for(lambda: repository.failed.get("apply", 0) > 0, "an outcome failing to be recorded")
    return manager, repository, job_id


def stopping(manager: JobManager, **stop_args: Any) -> threading.Thread:
    thread = threading.Thread(target=manager.stop, kwargs=stop_args, name="test-stop")
    thread.start()
    return thread


def test_a_stop_during_an_outage_records_the_outcomes_once_the_store_is_back(
        make_manager: Any, make_store: Any, clock: FakeClock, release: threading.Event) -> None:
    # given a manager whose finished job's outcome the store fails to record
    manager, repository, job_id = finished_during_an_outage(make_manager, make_store, clock, release)
    # when it is stopped, and the outage lasts less than a lease
    stopper = stopping(manager)
    for _ in range(int(LEASE / 2)):
        step(clock, repository)
    tries = repository.failures("apply")
    repository.wait_for(lambda: repository.failed["apply"] >= tries + 2, "the outcome to be tried again")
    # then the stop goes on trying to record it (its lease may yet be valid)...
    assert stopper.is_alive()
    # ...and records it once the store works again, then returns: the job ran once
    repository.down.clear()
    stopper.join(WAIT)
    assert not stopper.is_alive()
    result = manager.poll(job_id)
    assert result is not None and (result.status, result.attempts) == (JobStatus.COMPLETED, 1)


def through_a_lease(clock: FakeClock, repository: Unreachable, *ending: threading.Thread) -> None:
    """Step through a lease of failing calls, and while any of `ending` is still alive, up
    to 3 steps more: a stop gives up counting from its first failure, which may come a
    step after the stop began (it runs in a thread of its own)."""
    for _ in range(int(LEASE)):
        step(clock, repository)
    for _ in range(3):
        for thread in ending:
            thread.join(1.0)  # real time to act on the time given
        if not any(thread.is_alive() for thread in ending):
            return
        step(clock, repository)


def test_a_stop_during_an_outage_longer_than_the_lease_gives_the_outcomes_up(
        make_manager: Any, make_store: Any, db_path: str, clock: FakeClock, release: threading.Event,
        caplog: pytest.LogCaptureFixture) -> None:
    # given a manager whose finished job's outcome the store fails to record
    manager, repository, job_id = finished_during_an_outage(make_manager, make_store, clock, release)
    # when it is stopped, and the store fails for a lease
    stopper = stopping(manager)
    through_a_lease(clock, repository, stopper)
    # then the stop returns without the store, naming the job whose outcome is given up
    stopper.join(WAIT)
    assert not stopper.is_alive(), "stop() waited for the store to come back"
    given_up = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and "given up" in r.getMessage()]
    assert len(given_up) == 1 and job_id in given_up[0]
    # and once the store is back, the job (still leased to the stopped manager, the
    # lease expired) is taken back and runs again elsewhere: at least once, not lost
    repository.down.clear()
    record = repository.get(job_id)
    assert record is not None and (record.status, record.worker_id) == (JobStatus.RUNNING, manager.worker_id)
    clock.advance(POLL)
    other_store = make_store(clock)
    other = make_manager(other_store, max_workers=1, lease_timeout=LEASE, poll_interval=POLL, clock=clock)
    other.register_function("long", lambda: "again")
    other.start()
    for _ in range(int(LEASE / POLL) + 3):  # a started manager takes leases back a lease after its first beat
        step(clock, other_store)
    result = other.wait(job_id, timeout=WAIT)
    assert (result.status, result.attempts, result.result) == (JobStatus.COMPLETED, 2, "again")


class SlowToFail(Unreachable):
    """`Unreachable` whose first failing `apply` (an outcome recorded) takes `blocked_for`
    seconds of its fake clock to fail, as a write to a database locked by another program
    waits its busy timeout."""

    blocked_for = 0.0

    def _note(self, name: str) -> None:
        if name == "apply" and self.down.is_set() and not self.failures("apply"):
            assert isinstance(self.clock, FakeClock)
            self.clock.advance(self.blocked_for)
        super()._note(name)


def test_a_stop_counts_the_outage_from_when_the_first_failed_recording_began(
        make_manager: Any, db_path: str, clock: FakeClock, release: threading.Event,
        caplog: pytest.LogCaptureFixture) -> None:
    # given a manager (a long lease: on the real clock too, the stop would wait it out)
    # whose finished job's outcome the store fails to record, the first try failing only
    # once a whole lease had passed
    lease = 30.0
    repository = SlowToFail(db_path, clock)
    repository.blocked_for = lease
    manager = make_manager(repository, max_workers=1, lease_timeout=lease, poll_interval=POLL, clock=clock)
    manager.register_function("nap", lambda: release.wait(WAIT) and "done")
    manager.start()
    job_id = manager.enqueue(Job(function_name="nap"))
    wait_until(lambda: manager._pool.held_ids() == [job_id], WAIT, "the job to run")
    repository.down.set()
    release.set()
    repository.wait_for(lambda: repository.failed.get("apply", 0) > 0, "an outcome failing to be recorded")
    # when it is stopped, the clock standing still
    stopper = stopping(manager)
    # then its next failed try gives the outcome up: the store has failed for a lease
    # since that first try began (counted from when it returned, the stop waited a lease
    # more, here as long in real seconds)
    stopper.join(WAIT)
    assert not stopper.is_alive(), "stop() counted the outage from the end of the first failed try"
    given_up = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and "given up" in r.getMessage()]
    assert len(given_up) == 1 and job_id in given_up[0]
    repository.down.clear()


def test_a_stop_with_a_timeout_during_an_outage_returns_at_its_timeout_and_its_threads_end_after_the_lease(
        make_manager: Any, make_store: Any, clock: FakeClock, release: threading.Event) -> None:
    # given a manager whose finished job's outcome the store fails to record
    manager, repository, job_id = finished_during_an_outage(make_manager, make_store, clock, release)
    dispatcher, housekeeper = manager._pool._dispatcher.thread, manager._housekeeper._thread
    assert dispatcher is not None and housekeeper is not None
    # when it is stopped with a timeout (on a fake clock that stands still: 0.2 s real)
    stopper = stopping(manager, timeout=0.2)
    # then the stop returns at it, leaving the outcome to be recorded...
    stopper.join(WAIT)
    assert not stopper.is_alive()
    assert dispatcher.is_alive() and manager._pool.held_ids() == [job_id]
    # ...and once the store has failed for a lease, the threads still trying give it up and end
    through_a_lease(clock, repository, dispatcher, housekeeper)
    for thread in (dispatcher, housekeeper):
        thread.join(WAIT)
        assert not thread.is_alive()
    assert manager._pool.held_ids() == []
    repository.down.clear()


def test_stop_on_the_system_clock_returns_about_a_lease_into_an_outage(
        make_manager: Any, make_store: Any, release: threading.Event) -> None:
    # given a manager on the real clock, with a short lease, whose finished job's outcome
    # the store fails to record (the interpreter's exit stops the default manager so)
    repository = make_store(SYSTEM_CLOCK)
    manager = make_manager(repository, max_workers=1, lease_timeout=0.5, poll_interval=0.05)
    started = threading.Event()
    manager.register_function("nap", lambda: started.set() or release.wait(WAIT))
    manager.start()
    job_id = manager.enqueue(Job(function_name="nap"))
    assert started.wait(WAIT)
    repository.down.set()
    began = time.monotonic()
    release.set()
    # when it is stopped with no timeout, then it returns (it once waited for the store)
    stopper = stopping(manager)
    stopper.join(WAIT)
    assert not stopper.is_alive(), "stop() waited for the store to come back"
    assert time.monotonic() - began >= 0.5  # after trying for the lease
    assert manager._pool.held_ids() == []
    repository.down.clear()
    record = repository.get(job_id)
    assert record is not None and record.status is JobStatus.RUNNING  # left to be taken back, its lease expired
