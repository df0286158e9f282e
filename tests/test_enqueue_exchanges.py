"""Exchanges made by the enqueuing thread: a plain job is stored in the same transaction
that records the outcomes waiting and claims the next jobs, itself among them when a
worker has room. While enqueues stream in, the dispatcher leaves that work to them."""

from __future__ import annotations

import concurrent.futures
import contextlib
import sqlite3
import sys
import threading
import time
from datetime import datetime
from typing import Any, Callable, Iterator, Optional, Sequence

import pytest

from jobcore import FakeClock, Job, JobManager, JobStatus, MemoryRepository, SQLiteRepository
from jobcore import exchanges, pacing
from jobcore.errors import RepositoryError
from jobcore.clock import real_monotonic
from jobcore.repository.base import JobRepository, Settlement
from interrupts import CtrlCOnce
from waiting import Sleeps, count_wake_ups, wait_until

WAIT = 10.0
STREAMED = 1000


class _NotesRecording:
    """Notes which call recorded each job's outcome: "apply" (an exchange of the
    dispatcher's or a worker's) or "insert_and_apply" (one that stored a new job)."""

    recorded_by: dict[str, str]
    inside = threading.local()  # .inserting: this thread is within insert_and_apply (memory's calls apply)

    def apply(self, settlements: Sequence[Settlement], *args: Any, **kwargs: Any) -> Any:
        result = super().apply(settlements, *args, **kwargs)  # type: ignore[misc]
        if not getattr(self.inside, "inserting", False):
            self._note(settlements, "apply")
        return result

    def insert_and_apply(self, record: Any, settlements: Sequence[Settlement], *args: Any, **kwargs: Any) -> Any:
        self.inside.inserting = True
        try:
            result = super().insert_and_apply(record, settlements, *args, **kwargs)  # type: ignore[misc]
        finally:
            self.inside.inserting = False
        self._note(settlements, "insert_and_apply")
        return result

    def _note(self, settlements: Sequence[Settlement], how: str) -> None:
        for s in settlements:
            assert s.job_id not in self.recorded_by, f"{s.job_id} recorded twice"
            self.recorded_by[s.job_id] = how


class RecordingSQLite(_NotesRecording, SQLiteRepository):
    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.recorded_by = {}


class RecordingMemory(_NotesRecording, MemoryRepository):
    def __init__(self) -> None:
        super().__init__()
        self.recorded_by = {}


@pytest.fixture(params=["sqlite", "memory"])
def recording(request: Any, tmp_path: Any) -> Any:
    return RecordingSQLite(str(tmp_path / "jobs.db")) if request.param == "sqlite" else RecordingMemory()


def _streaming(manager: JobManager, monkeypatch: Any) -> Callable[[], None]:
    """Make the pool act as if enqueues streamed in, with outcomes left to them for a
    minute; returns what ends the stream (the dispatcher then records what waits)."""
    monkeypatch.setattr(pacing, "RECORD_WITHIN", 60.0)
    state = manager._pool._state
    with state.lock:
        state.pacing.stream_for(60.0, real_monotonic())

    def end() -> None:
        with state.lock:
            state.pacing.stream_for(0.0, real_monotonic())
            state.dispatch_needed.notify()
    return end


def test_outcomes_waiting_while_enqueues_stream_in_are_recorded_with_a_later_job(
        recording: JobRepository, make_manager: Callable[..., JobManager], monkeypatch: Any) -> None:
    # given a started manager whose enqueues stream in, outcomes recorded two at a time
    manager = make_manager(recording, max_workers=1)
    manager.register_function("task", lambda n: n * 10)
    manager.start()
    end_stream = _streaming(manager, monkeypatch)
    monkeypatch.setattr(pacing, "STREAM_BATCH", 2)
    settling = manager._pool._state.settling
    first = manager.enqueue(Job(function_name="task", args=(1,)))
    wait_until(lambda: first in settling, 5, "the first job to finish", pause=0.002)
    # when the next job is enqueued with one outcome waiting, then another with two
    second = manager.enqueue(Job(function_name="task", args=(2,)))
    wait_until(lambda: second in settling, 5, "the second job to finish", pause=0.002)
    assert recording.recorded_by == {}  # type: ignore[attr-defined]
    third = manager.enqueue(Job(function_name="task", args=(3,)))
    # then both outcomes were recorded in the call that stored the third job
    assert recording.recorded_by == {first: "insert_and_apply", second: "insert_and_apply"}  # type: ignore[attr-defined]
    assert [manager.wait(i, timeout=WAIT).result for i in (first, second)] == [10, 20]
    # and once the stream ends, the dispatcher records what is left
    end_stream()
    assert manager.wait(third, timeout=WAIT).result == 30
    assert recording.recorded_by[third] == "apply"  # type: ignore[attr-defined]


def test_an_outcome_waiting_past_half_its_time_is_recorded_by_the_next_enqueue(
        recording: JobRepository, make_manager: Callable[..., JobManager], monkeypatch: Any) -> None:
    # given a stream of enqueues and one outcome waiting, fewer than STREAM_BATCH
    manager = make_manager(recording, max_workers=1)
    manager.register_function("task", lambda n: n * 10)
    manager.start()
    _streaming(manager, monkeypatch)
    first = manager.enqueue(Job(function_name="task", args=(1,)))
    wait_until(lambda: first in manager._pool._state.settling, 5, "the first job to finish", pause=0.002)
    # when half the time it may wait has passed (as if RECORD_WITHIN were 60 s from then)
    state = manager._pool._state
    with state.lock:
        state.pacing.record_due = real_monotonic() + 30.0
    manager.enqueue(Job(function_name="task", args=(2,)))
    # then the next enqueue records it, before the dispatcher would
    assert recording.recorded_by == {first: "insert_and_apply"}  # type: ignore[attr-defined]
    assert manager.wait(first, timeout=WAIT).result == 10


def test_an_enqueue_the_store_refuses_leaves_the_waiting_outcomes_recorded(
        recording: JobRepository, make_manager: Callable[..., JobManager], monkeypatch: Any) -> None:
    # given a stream of enqueues and a job whose outcome waits to be recorded
    manager = make_manager(recording, max_workers=1)
    manager.register_function("task", lambda value: value)
    manager.start()
    end_stream = _streaming(manager, monkeypatch)
    monkeypatch.setattr(pacing, "STREAM_BATCH", 1)  # the next enqueue takes it along
    first = manager.enqueue(Job(function_name="task", args=("kept",)))
    wait_until(lambda: first in manager._pool._state.settling, 5, "the first job to finish", pause=0.002)
    # when an enqueue fails in the exchange that would have recorded it (a taken id)
    with pytest.raises(ValueError, match=first):
        manager.enqueue(Job(function_name="task", args=("again",), id=first))
    # then the outcome is recorded all the same, by the dispatcher, while the stream lasts
    assert manager.wait(first, timeout=WAIT).result == "kept"
    assert recording.recorded_by[first] == "apply"  # type: ignore[attr-defined]
    # and the worker takes the next job, recorded once the stream ends
    later = manager.enqueue(Job(function_name="task", args=("later",)))
    end_stream()
    assert manager.wait(later, timeout=WAIT).result == "later"


class _InterruptedOnce(SQLiteRepository):
    """An SQLite store whose next `insert_and_apply` (the enqueuing thread's exchange) is
    interrupted, as Ctrl-C or a signal handler raising would interrupt it."""

    interrupt = False

    def insert_and_apply(self, *args: Any, **kwargs: Any) -> Any:
        if self.interrupt:
            self.interrupt = False
            raise KeyboardInterrupt
        return super().insert_and_apply(*args, **kwargs)


def _started_on(store: JobRepository, make_manager: Callable[..., JobManager]) -> JobManager:
    """A started manager on `store` with two workers and "task" (returns its argument),
    past its first job, and idle: its enqueues store jobs in exchanges of their own."""
    manager = make_manager(store, max_workers=2)
    manager.register_function("task", lambda value: value)
    manager.start()
    assert manager.wait(manager.enqueue(Job(function_name="task", args=(1,))), timeout=WAIT).result == 1
    state = manager._pool._state

    def idle() -> bool:
        # (`wait` returned once the outcome was stored: a worker's exchange may still be
        # claiming, and an enqueue then hands no job to a worker; on a loaded machine,
        # 1 run in 20 of a test that waits for that hand-off)
        with state.lock:
            return not (state.exchanging or state.finished or state.settling or state.running or state.buffer)

    wait_until(idle, WAIT, "the pool to be idle")
    return manager


def test_an_enqueue_interrupted_in_its_exchange_leaves_the_pool_running(
        db_path: str, make_manager: Callable[..., JobManager]) -> None:
    # given a started manager whose enqueues store jobs in exchanges of their own
    store = _InterruptedOnce(db_path)
    manager = _started_on(store, make_manager)
    # when Ctrl-C interrupts an enqueue inside that exchange
    store.interrupt = True
    with pytest.raises(KeyboardInterrupt):
        manager.enqueue(Job(function_name="task", args=(2,)))
    # then the exchange ended all the same: jobs enqueued next run (a hunt saw none run
    # again, and stop() wait for ever on the dispatcher, which waited for that exchange)
    assert manager.wait(manager.enqueue(Job(function_name="task", args=(3,))), timeout=WAIT).result == 3
    began = real_monotonic()
    manager.stop(timeout=WAIT)
    assert real_monotonic() - began < WAIT / 2 and not manager.running


def _started_with_two_workers(repository: JobRepository,
                              make_manager: Callable[..., JobManager]) -> tuple[JobManager, list[int]]:
    """A started manager with two workers and "task", which notes its argument in the list."""
    manager = make_manager(repository, max_workers=2)
    runs: list[int] = []
    manager.register_function("task", runs.append)
    manager.start()
    return manager, runs


def test_jobs_enqueued_while_others_run_each_run_once_and_are_recorded_once(
        recording: JobRepository, make_manager: Callable[..., JobManager]) -> None:
    # given a started manager with two workers
    manager, runs = _started_with_two_workers(recording, make_manager)
    # when a producer enqueues jobs one by one as fast as it can, some of higher priority
    ids = [manager.enqueue(Job(function_name="task", args=(n,), priority=n % 3)) for n in range(300)]
    # then every job completed after one attempt, and each outcome was recorded once
    results = [manager.wait(job_id, timeout=WAIT) for job_id in ids]
    assert [(r.status, r.attempts) for r in results] == [(JobStatus.COMPLETED, 1)] * 300
    assert sorted(runs) == list(range(300))
    assert sorted(recording.recorded_by) == sorted(ids)  # type: ignore[attr-defined]


def test_jobs_enqueued_in_a_stream_all_run_without_a_dispatcher_wake_up_each(
        repository: JobRepository, make_manager: Callable[..., JobManager]) -> None:
    # given a started pool whose dispatcher's wake-ups by notification are counted
    manager, ran = _started_with_two_workers(repository, make_manager)
    state = manager._pool._state
    notified = count_wake_ups(state.dispatch_needed)
    # when enqueues stream in (held as a stream throughout, with the dispatcher's own
    # RECORD_WITHIN: `_streaming` stretches it), then the stream ends
    with state.lock:
        state.pacing.stream_for(60.0, real_monotonic())
    ids = [manager.enqueue(Job(function_name="task", args=(n,))) for n in range(STREAMED)]
    with state.lock:
        state.pacing.stream_for(0.0, real_monotonic())
    # then every job runs once, those left queued at the end of the stream included
    results = [manager.wait(job_id, timeout=WAIT) for job_id in ids]
    assert sorted(ran) == list(range(STREAMED))
    assert {r.status.value for r in results} == {"completed"}
    # and the dispatcher was woken by notification for a few of them only
    assert notified[0] < STREAMED // 20, notified[0]


class _StoredApart(MemoryRepository):
    """A store that makes no exchange on enqueue (as PostgreSQL's): each job is stored by
    itself and handed to an idle worker or queued."""

    exchanges_on_enqueue = False


def test_an_enqueue_stored_apart_from_exchanges_counts_towards_a_stream(
        make_manager: Callable[..., JobManager]) -> None:
    # given a started pool on a store that makes no exchange on enqueue
    manager, ran = _started_with_two_workers(_StoredApart(), make_manager)
    pacing = manager._pool._state.pacing
    before, _ = pacing._last_offer
    # when a job is enqueued (stored apart, then handed to a worker or queued)
    job_id = manager.enqueue(Job(function_name="task", args=(1,)))
    # then it was offered to the stream by this thread, as an enqueue made in an exchange
    # is: a stream of them spares the dispatcher a notification each (on PostgreSQL it
    # was woken 2.1-2.8 times a job by them)
    at, producer = pacing._last_offer
    assert at > before and producer == threading.get_ident()
    assert manager.wait(job_id, timeout=WAIT).status is JobStatus.COMPLETED and ran == [1]


class _Gated(_NotesRecording):
    """Also notes how each new job was stored ("insert": on its own; "insert_and_apply":
    in an enqueue's exchange), and, once `hold()` was called, holds the next exchange
    that records outcomes (`apply`) until `release()`."""

    stored_by: dict[str, str]

    def hold(self) -> None:
        self.held, self.entered, self.gate = True, threading.Event(), threading.Event()

    def release(self) -> None:
        self.gate.set()

    def apply(self, settlements: Sequence[Settlement], *args: Any, **kwargs: Any) -> Any:
        if settlements and getattr(self, "held", False) and not getattr(self.inside, "inserting", False):
            self.held = False
            self.entered.set()
            assert self.gate.wait(WAIT)
        return super().apply(settlements, *args, **kwargs)

    def insert(self, records: Sequence[Any], *args: Any, **kwargs: Any) -> Any:
        for record in records:
            self.stored_by.setdefault(record.id, "insert")
        return super().insert(records, *args, **kwargs)  # type: ignore[misc]

    def insert_and_apply(self, record: Any, *args: Any, **kwargs: Any) -> Any:
        self.stored_by[record.id] = "insert_and_apply"
        return super().insert_and_apply(record, *args, **kwargs)


class GatedSQLite(_Gated, SQLiteRepository):
    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.recorded_by, self.stored_by = {}, {}


class GatedMemory(_Gated, MemoryRepository):
    def __init__(self) -> None:
        super().__init__()
        self.recorded_by, self.stored_by = {}, {}


@pytest.fixture(params=["sqlite", "memory"])
def gated(request: Any, tmp_path: Any) -> Iterator[Any]:
    repository = GatedSQLite(str(tmp_path / "jobs.db")) if request.param == "sqlite" else GatedMemory()
    yield repository
    if hasattr(repository, "gate"):
        repository.release()  # a test that failed holding it: let the manager stop


class _Producer:
    """One thread that makes every enqueue of a test, each in the background."""

    def __init__(self, manager: JobManager) -> None:
        self._manager = manager
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)

    def enqueue(self, job: Job) -> "concurrent.futures.Future[str]":
        return self._executor.submit(self._manager.enqueue, job)

    def close(self) -> None:
        self._executor.shutdown(wait=False)


@pytest.fixture
def held_exchange(gated: Any, make_manager: Callable[..., JobManager]) -> Iterator[tuple[JobManager, _Producer]]:
    """A started manager (one worker) whose dispatcher is in an exchange, held, recording
    the outcome of a job `_Producer` enqueued; with that producer."""
    manager = make_manager(gated, max_workers=1)
    manager.register_function("task", lambda n: n * 10)
    manager.start()
    producer = _Producer(manager)
    gated.hold()
    producer.enqueue(Job(function_name="task", args=(1,))).result(WAIT)
    assert gated.entered.wait(WAIT), "the outcome was never recorded"
    yield manager, producer
    producer.close()


def test_an_enqueue_waits_for_the_exchange_under_way_and_stores_its_job_in_its_own(
        gated: Any, held_exchange: tuple[JobManager, _Producer], monkeypatch: Any) -> None:
    # given an exchange under way, held (and an enqueue's wait for it that would not end)
    manager, producer = held_exchange
    monkeypatch.setattr(exchanges, "EXCHANGE_WAIT", 60.0)
    # when the thread that enqueues jobs enqueues another meanwhile
    job = Job(function_name="task", args=(2,))
    enqueued = producer.enqueue(job)
    # then the enqueue waits for that exchange, storing nothing yet
    with pytest.raises(concurrent.futures.TimeoutError):
        enqueued.result(0.1)
    assert job.id not in gated.stored_by
    # and once it ends, the job is stored in an exchange of the enqueue's, and runs
    gated.release()
    assert enqueued.result(WAIT) == job.id
    assert gated.stored_by[job.id] == "insert_and_apply"
    assert manager.wait(job.id, timeout=WAIT).result == 20


def test_an_enqueue_waits_for_an_exchange_under_way_only_so_long(
        gated: Any, held_exchange: tuple[JobManager, _Producer], monkeypatch: Any) -> None:
    # given an exchange under way, held, and a short wait for it
    manager, producer = held_exchange
    monkeypatch.setattr(exchanges, "EXCHANGE_WAIT", 0.05)
    # when another job is enqueued meanwhile
    job = Job(function_name="task", args=(2,))
    # then the enqueue stores it the usual way while that exchange is still held
    assert producer.enqueue(job).result(WAIT) == job.id
    assert gated.stored_by[job.id] == "insert"
    # and the job runs once the exchange ends
    gated.release()
    assert manager.wait(job.id, timeout=WAIT).result == 20


def test_while_several_threads_enqueue_none_waits_for_an_exchange_under_way(
        gated: Any, held_exchange: tuple[JobManager, _Producer], monkeypatch: Any) -> None:
    # given an exchange under way, held, and a wait for it that would not end
    manager, producer = held_exchange
    monkeypatch.setattr(exchanges, "EXCHANGE_WAIT", 60.0)
    # when another thread enqueues just before the producer (within a stream's gap)
    monkeypatch.setattr(pacing, "STREAM_GAP", 60.0)
    state = manager._pool._state
    with state.lock:
        state.pacing.offered(real_monotonic(), threading.get_ident())
    job = Job(function_name="task", args=(2,))
    # then the producer's enqueue stores its job the usual way, without waiting
    assert producer.enqueue(job).result(WAIT) == job.id
    assert gated.stored_by[job.id] == "insert"
    # and it runs once the exchange and the stream end
    gated.release()
    with state.lock:
        state.pacing.stream_for(0.0, real_monotonic())
        state.dispatch_needed.notify()
    assert manager.wait(job.id, timeout=WAIT).result == 20


class _InsertGated:
    """Once `hold()` was called, holds the next exchange that stores a new job
    (`insert_and_apply`) until `release()`."""

    def hold(self) -> None:
        self.held, self.entered, self.gate = True, threading.Event(), threading.Event()

    def release(self, refuse: bool = False) -> None:
        """Let the held exchange go on, or (`refuse`) fail as a store refusing it would."""
        self.refuse = refuse
        self.gate.set()

    def insert_and_apply(self, record: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(self, "held", False):
            self.held = False
            self.entered.set()
            assert self.gate.wait(WAIT)
            if self.refuse:
                raise RepositoryError("refused")
        return super().insert_and_apply(record, *args, **kwargs)  # type: ignore[misc]


class InsertGatedSQLite(_InsertGated, SQLiteRepository):
    pass


class InsertGatedMemory(_InsertGated, MemoryRepository):
    pass


@pytest.fixture(params=["sqlite", "memory"])
def insert_gated(request: Any, tmp_path: Any) -> Iterator[Any]:
    repository = (InsertGatedSQLite(str(tmp_path / "jobs.db")) if request.param == "sqlite"
                  else InsertGatedMemory())
    yield repository
    if hasattr(repository, "gate"):
        repository.release()  # a test that failed holding it: let the manager stop


def _start_running_a_blocker(manager: JobManager) -> tuple[str, threading.Event]:
    """Register "blocker" (blocks until the event returned is set) and "task" (n -> 10 n),
    start the manager and wait until a worker runs a blocker; its id, and that event."""
    started, go = threading.Event(), threading.Event()
    manager.register_function("blocker", lambda: (started.set(), go.wait(WAIT)) and None)
    manager.register_function("task", lambda n: n * 10)
    manager.start()
    blocker = manager.enqueue(Job(function_name="blocker"))
    assert started.wait(WAIT)
    return blocker, go


@pytest.fixture
def held_with_blocker(insert_gated: Any, make_manager: Callable[..., JobManager]
                      ) -> Iterator[tuple[JobManager, "concurrent.futures.Future[str]", str, threading.Event]]:
    """A started pool of two workers, one running a job that blocks (its id) until the
    event given is set, and an enqueue's exchange held under way (as a write waits for
    another manager's on the same file): the manager, the enqueue's future, the blocking
    job's id, the event."""
    manager = make_manager(insert_gated, max_workers=2)
    blocker, go = _start_running_a_blocker(manager)
    producer = _Producer(manager)
    insert_gated.hold()
    enqueued = producer.enqueue(Job(function_name="task", args=(2,)))
    assert insert_gated.entered.wait(WAIT), "no exchange stored the job"
    yield manager, enqueued, blocker, go
    go.set()
    producer.close()


def test_the_dispatcher_sleeps_while_outcomes_wait_for_an_exchange_under_way(
        insert_gated: Any, held_with_blocker: Any) -> None:
    # given an enqueue's exchange held under way, beside a job that blocks
    manager, enqueued, blocker, go = held_with_blocker
    # and the dispatcher's waits counted
    state = manager._pool._state
    condition, waits, spinning = state.dispatch_needed, [0], threading.Event()
    wait = condition.wait

    def counted_wait(timeout: Any = None) -> bool:
        waits[0] += 1
        if waits[0] >= 200:
            spinning.set()
        return wait(timeout)

    condition.wait = counted_wait  # type: ignore[method-assign]
    # when the blocked job finishes meanwhile (its outcome waits: the exchange under way
    # cannot take it) and the dispatcher is woken
    go.set()
    wait_until(lambda: bool(state.finished), timeout=WAIT, what="the outcome handed in")
    with state.lock:
        state.dispatch_needed.notify()
    # then the dispatcher sleeps until that exchange ends: it does not wake again and
    # again while the outcome is past its time (it did, with a zero timeout)
    assert not spinning.wait(0.5), f"{waits[0]} waits while the exchange was held"
    # and once the exchange ends, both outcomes are recorded
    insert_gated.release()
    job_id = enqueued.result(WAIT)
    assert manager.wait(job_id, timeout=WAIT).result == 20
    assert manager.wait(blocker, timeout=WAIT).status is JobStatus.COMPLETED


def test_an_outcome_handed_in_during_an_enqueue_exchange_that_fails_is_recorded(
        insert_gated: Any, held_with_blocker: Any) -> None:
    # given an enqueue's exchange held under way, beside a job that blocks
    manager, enqueued, blocker, go = held_with_blocker
    # when that job finishes meanwhile (its outcome waits for the exchange to end)
    go.set()
    state = manager._pool._state
    wait_until(lambda: bool(state.finished), timeout=WAIT, what="the outcome handed in")
    # and the exchange fails (the store refused the new job)
    insert_gated.release(refuse=True)
    with pytest.raises(RepositoryError):
        enqueued.result(WAIT)
    # then the outcome is recorded all the same: the dispatcher was told
    assert manager.wait(blocker, timeout=WAIT).status is JobStatus.COMPLETED


class _StoppedInside(SQLiteRepository):
    """An SQLite store whose next `insert_and_apply` (the enqueuing thread's exchange)
    calls `stop` on its manager from inside, as a SIGTERM handler that interrupted the
    enqueue there would; `took` is how long that stop took (real seconds)."""

    manager: Optional[JobManager] = None
    took = -1.0
    slow = 0.0  # seconds each `apply` takes more once that stop returned

    def insert_and_apply(self, *args: Any, **kwargs: Any) -> Any:
        manager, self.manager = self.manager, None
        if manager is not None:
            began = real_monotonic()
            manager.stop(timeout=WAIT)
            self.took = real_monotonic() - began
        return super().insert_and_apply(*args, **kwargs)

    def apply(self, *args: Any, **kwargs: Any) -> Any:
        if self.took >= 0 and self.slow:
            time.sleep(self.slow)  # the dispatcher's last recording, slow: it ends after close began
        return super().apply(*args, **kwargs)


def test_a_stop_from_a_signal_handler_inside_an_enqueues_exchange_returns(
        db_path: str, make_manager: Callable[..., JobManager]) -> None:
    # given a started manager whose enqueues store jobs in exchanges of their own
    store = _StoppedInside(db_path)
    manager = _started_on(store, make_manager)
    # when a signal handler stops the manager on the enqueuing thread, inside that exchange
    store.manager = manager
    job_id = manager.enqueue(Job(function_name="task", args=(2,)))
    # then the stop returned at once: it did not wait for the dispatcher, which waits for
    # that exchange to end before its last recording (without a timeout, for ever); the
    # job was stored, and runs once the manager starts again
    assert 0 <= store.took < WAIT / 2 and not manager.running
    manager.start()
    assert manager.wait(job_id, timeout=WAIT).result == 2


def test_close_after_a_stop_from_a_signal_handler_inside_an_exchange_waits_for_the_last_recording(
        db_path: str, make_manager: Callable[..., JobManager]) -> None:
    # given a manager stopped by a signal handler inside an enqueue's exchange (the stop
    # returned without waiting for the dispatcher), whose last recording is slow
    store = _StoppedInside(db_path)
    manager = _started_on(store, make_manager)
    store.manager, store.slow = manager, 0.2
    job_id = manager.enqueue(Job(function_name="task", args=(2,)))
    # when the program closes the manager once the enqueue returned
    manager.close()
    # then close waited for the dispatcher, which handed the new job (claimed in that
    # exchange, never started) back: it did not wait, and the job stayed RUNNING, never
    # run, until its lease lapsed
    reopened = SQLiteRepository(db_path)
    try:
        record = reopened.get(job_id)
        assert record is not None and (record.status, record.attempts) == (JobStatus.PENDING, 0)
    finally:
        reopened.close()


def test_ctrl_c_anywhere_in_an_enqueues_exchange_leaves_the_pool_running(
        db_path: str, make_manager: Callable[..., JobManager]) -> None:
    # given a started manager whose enqueues store jobs in exchanges of their own
    manager = _started_on(SQLiteRepository(db_path), make_manager)
    state = manager._pool._state
    # when Ctrl-C lands in an enqueue just after its exchange began (before the call that
    # stores the job), and in another just after that call committed
    # (not while this thread holds the pool's lock: tracing stops at a `with` line before
    # its exit releases the lock, where no signal lands)
    with CtrlCOnce("inserting", lambda: state.exchanging and not state.lock._is_owned()) as began:
        with pytest.raises(KeyboardInterrupt):
            manager.enqueue(Job(function_name="task", args=(2,)))
    committed = [result.job_id for result in manager.list_jobs(limit=None)]
    with CtrlCOnce("inserting", lambda: (not state.lock._is_owned()
                                          and len(manager.list_jobs(limit=None)) > len(committed))) as stored:
        with pytest.raises(KeyboardInterrupt):
            manager.enqueue(Job(function_name="task", args=(3,)))
    assert began.fired and stored.fired
    # then no exchange was left begun (every later one was refused: no job ran again),
    # and the job stored before the interrupt ran, not left RUNNING until its lease lapsed
    assert not state.exchanging
    [late] = [result for result in manager.list_jobs(limit=None) if result.job_id not in committed]
    assert manager.wait(late.job_id, timeout=WAIT).result == 3
    assert manager.wait(manager.enqueue(Job(function_name="task", args=(4,))), timeout=WAIT).result == 4


@pytest.mark.parametrize("where", ["write_one", "exchange_inserting"])
def test_ctrl_c_just_after_an_enqueues_exchange_committed_leaves_no_claim_unrun(
        where: str, db_path: str, make_manager: Callable[..., JobManager]) -> None:
    # given a started manager, idle, whose enqueues store and claim jobs in exchanges of
    # their own (the new job among the claimed)
    manager = _started_on(SQLiteRepository(db_path), make_manager)
    # when Ctrl-C lands just after such an exchange's write committed: still in the store's
    # write (where most land: the call waits for the commit), or in the recorder once the
    # store's call returned
    def rows() -> int:
        with contextlib.closing(sqlite3.connect(db_path)) as other:  # sees what is committed
            return int(other.execute("SELECT count(*) FROM jobs").fetchone()[0])

    before = rows()
    with CtrlCOnce(where, lambda: rows() > before) as ctrl_c:
        with pytest.raises(KeyboardInterrupt):
            manager.enqueue(Job(function_name="task", args=(2,)))
    assert ctrl_c.fired
    # then the job it stored and claimed runs now: it was left RUNNING, never run, until
    # its lease lapsed (a minute): a hunt left some 300 so in 400 Ctrl-Cs
    [late] = [r for r in manager.list_jobs(limit=None) if r.result != 1]
    assert manager.wait(late.job_id, timeout=WAIT).result == 2
    assert manager.wait(manager.enqueue(Job(function_name="task", args=(3,))), timeout=WAIT).result == 3


def test_a_second_ctrl_c_in_the_read_after_an_interrupted_commit_reads_again(
        db_path: str, make_manager: Callable[..., JobManager]) -> None:
    # given a started manager, idle, whose enqueues store and claim jobs in exchanges of
    # their own, and a store whose next read of a job is interrupted (a second Ctrl-C)
    store = SQLiteRepository(db_path)
    manager = _started_on(store, make_manager)
    get, interrupted = store.get, []

    def get_once_interrupted(job_id: str) -> Any:
        if not interrupted:
            interrupted.append(job_id)
            raise KeyboardInterrupt
        return get(job_id)

    # when Ctrl-C lands just after an exchange's write committed, and again in the read
    # made to see what it did
    before = len(manager.list_jobs(limit=None))
    with CtrlCOnce("exchange_inserting", lambda: len(manager.list_jobs(limit=None)) > before) as ctrl_c:
        with pytest.raises(KeyboardInterrupt):
            store.get = get_once_interrupted  # type: ignore[method-assign]
            manager.enqueue(Job(function_name="task", args=(2,)))
    store.get = get  # type: ignore[method-assign]
    assert ctrl_c.fired and interrupted
    # then it read again, and the job it claimed runs now (not once its lease lapsed)
    [late] = [r for r in manager.list_jobs(limit=None) if r.result != 1]
    assert manager.wait(late.job_id, timeout=WAIT).result == 2


def test_a_second_ctrl_c_while_an_interrupted_exchange_ends_still_ends_it(
        db_path: str, make_manager: Callable[..., JobManager], monkeypatch: pytest.MonkeyPatch) -> None:
    # given a started manager whose enqueues store jobs in exchanges of their own
    manager = _started_on(SQLiteRepository(db_path), make_manager)
    state = manager._pool._state
    # when Ctrl-C lands in an enqueue's exchange as it calls the store, and a second one
    # as that exchange is ended, once the store was read to see what the call did (a
    # signal that came during the read lands as it returned)
    second = CtrlCOnce("_end_interrupted", lambda: True)
    read = exchanges.claims_if_committed

    def read_then_ctrl_c(*args: Any) -> Any:
        try:
            return read(*args)
        finally:
            sys.settrace(second._global)

    monkeypatch.setattr(exchanges, "claims_if_committed", read_then_ctrl_c)
    # (The recorder's `exchange_inserting`, the exchange this thread's: the pool's, of the
    # same name, runs before it, while another thread may be making an exchange.)
    with CtrlCOnce("exchange_inserting", state.exchanging_here_locked) as first:
        with pytest.raises(KeyboardInterrupt):
            manager.enqueue(Job(function_name="task", args=(2,)))
    assert first.fired and second.fired
    # then the exchange ended all the same (left begun, no exchange was made again and no
    # job ran: a hunt on PostgreSQL, whose reads take longest, wedged so), and the jobs
    # enqueued next run
    assert not state.exchanging
    assert manager.wait(manager.enqueue(Job(function_name="task", args=(3,))), timeout=WAIT).result == 3


def test_ctrl_c_just_after_a_hand_off_committed_leaves_no_claim_unrun(
        db_path: str, make_manager: Callable[..., JobManager]) -> None:
    # given a started manager, idle, whose enqueue of a job with a unique key stores it
    # claimed and hands it straight to an idle worker
    manager = _started_on(SQLiteRepository(db_path), make_manager)

    def running() -> int:
        with contextlib.closing(sqlite3.connect(db_path)) as other:  # sees what is committed
            return int(other.execute("SELECT count(*) FROM jobs WHERE status = ?",
                                     (JobStatus.RUNNING.value,)).fetchone()[0])

    # when Ctrl-C lands just after the write that claimed it committed
    with CtrlCOnce("write", lambda: running() > 0) as ctrl_c:
        with pytest.raises(KeyboardInterrupt):
            manager.enqueue(Job(function_name="task", args=(2,), unique_key="once"))
    assert ctrl_c.fired
    # then a worker runs it now: it was left RUNNING, never run, until its lease lapsed
    [late] = [r for r in manager.list_jobs(limit=None) if r.result != 1]
    assert manager.wait(late.job_id, timeout=WAIT).result == 2


@pytest.mark.parametrize("store", ["sqlite", "memory"])
def test_an_enqueue_in_a_stream_that_no_exchange_can_take_needs_no_lock_of_the_pool(
        store: str, tmp_path: Any, make_manager: Callable[..., JobManager], monkeypatch: Any) -> None:
    # Threads enqueueing at once took the pool's lock twice a job (to offer an exchange,
    # then to tell the dispatcher) and handed it, and the GIL, to each other at every turn:
    # four enqueued at a third of one's rate on the memory store.
    # given a started pool of one worker running a job that blocks (no room to claim more),
    # enqueues streaming in, and the dispatcher asleep for no longer than the stream's window
    repository = SQLiteRepository(str(tmp_path / "jobs.db")) if store == "sqlite" else MemoryRepository()
    manager = make_manager(repository, max_workers=1)
    blocker, go = _start_running_a_blocker(manager)
    end_stream = _streaming(manager, monkeypatch)
    state = manager._pool._state
    with state.lock:
        state.dispatch_needed.notify()
    wait_until(lambda: state.pacing.dispatcher_wakes_at is not None, WAIT, "the dispatcher to sleep in the stream")
    # when another thread holds the pool's lock while a job is enqueued
    holding, let_go = threading.Event(), threading.Event()

    def hold() -> None:
        with state.lock:
            holding.set()
            let_go.wait(WAIT)

    holder = threading.Thread(target=hold)
    holder.start()
    producer = _Producer(manager)
    try:
        assert holding.wait(WAIT)
        job = Job(function_name="task", args=(3,))
        # then the enqueue returns without waiting for that lock, its job queued
        assert producer.enqueue(job).result(WAIT) == job.id
        assert holder.is_alive()
    finally:
        let_go.set()
        holder.join(WAIT)
        producer.close()
    # and it runs once the blocking job and the stream end
    go.set()
    end_stream()
    assert manager.wait(job.id, timeout=WAIT).result == 30
    assert manager.wait(blocker, timeout=WAIT).status is JobStatus.COMPLETED


@pytest.mark.parametrize("store", ["sqlite", "memory"])
def test_a_timer_that_comes_due_as_an_enqueue_reads_the_queue_is_claimed_or_left_queued(
        store: str, tmp_path: Any, make_manager: Callable[..., JobManager], monkeypatch: Any) -> None:
    # given a started manager on a fake clock (its reads of the store a minute apart), two
    # idle workers, and a job scheduled a second ahead (queued as a timer), the dispatcher
    # asleep until then; the clock moves past it (unannounced) just after an enqueue read
    # the time, as the enqueue asks for an exchange of its own
    clock = FakeClock()
    repository = SQLiteRepository(str(tmp_path / "jobs.db")) if store == "sqlite" else MemoryRepository()
    manager = make_manager(repository, max_workers=2, clock=clock, poll_interval=60, discovery_interval=60)
    manager.register_function("task", lambda: "done")
    scheduled = manager.enqueue(Job(function_name="task", scheduled_at=datetime.fromtimestamp(clock.time() + 1)))
    sleeps = Sleeps(manager._pool._state.dispatch_needed)
    manager.start()
    wait_until(sleeps.asleep, WAIT, "the dispatcher to sleep until the timer")
    exchanges_ = manager._pool._exchanges
    refused_at_once = exchanges_._refused_at_once

    def refused_later(now: float) -> bool:
        with clock._lock:
            clock._now += 2.0  # (no subscriber told: the dispatcher still sleeps a second)
        monkeypatch.setattr(exchanges_, "_refused_at_once", refused_at_once)
        return refused_at_once(now)

    monkeypatch.setattr(exchanges_, "_refused_at_once", refused_later)
    # when that enqueue stores its job in an exchange, which takes the timer come due
    new = manager.enqueue(Job(function_name="task"))
    # then both jobs run (the exchange claimed the timer's job at the enqueue's time, before
    # it was due: refused, it was in no queue any more, and waited for a periodic read)
    assert manager.wait(new, timeout=WAIT).status is JobStatus.COMPLETED
    assert manager.wait(scheduled, timeout=WAIT).status is JobStatus.COMPLETED
