"""`poll` in the loops applications write: a job completed here lately is answered without
reading its row (as `wait` answers), and a loop polling an unfinished job without a pause
sleeps for `inspection.SPIN_PAUSE` (or until that job ends, if this process holds it)
instead of reading its row and handing the GIL over at every turn; `get_stats` and
`get_queue_size` asked in a loop pause too."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta
from typing import Any

import pytest

from jobcore import Job, JobStatus, MemoryRepository, SQLiteRepository
from jobcore import inspection

from test_wait import _CountingGets, _noted, pair


@pytest.mark.parametrize("backend", ["sqlite", "memory"])
def test_a_job_completed_here_is_polled_without_reading_its_row(make_manager: Any, db_path: str,
                                                               backend: str) -> None:
    repository = SQLiteRepository(db_path) if backend == "sqlite" else MemoryRepository()
    manager = make_manager(repository, max_workers=2)
    manager.register_function("pair", pair)
    manager.start()
    job_id = manager.enqueue(Job(function_name="pair", args=(3,), tags={"t"}, metadata={"m": 1}))
    waited = manager.wait(job_id, timeout=10)
    _noted(manager, [job_id])  # (wait may return from the row before the settlement is noted here)
    reads = _CountingGets(manager.repository)
    polled = manager.poll(job_id)
    assert reads.reads == 0
    assert polled == waited
    manager._settlements.forget_all()  # read from the row now: the same answer
    assert manager.poll(job_id) == polled and reads.reads > 0


def _gated(make_manager: Any, db_path: str) -> tuple[Any, str, threading.Event, threading.Event]:
    """A started manager running one job that waits for a gate: (manager, its id, the
    event set once it runs, the gate)."""
    running, gate = threading.Event(), threading.Event()
    manager = make_manager(db_path, max_workers=1)
    manager.register_function("gated", lambda: running.set() or gate.wait(30))
    manager.start()
    job_id = manager.enqueue(Job(function_name="gated"))
    assert running.wait(10)
    return manager, job_id, running, gate


def test_a_loop_polling_a_job_running_here_sleeps_between_reads(make_manager: Any, db_path: str,
                                                                monkeypatch: Any) -> None:
    monkeypatch.setattr(inspection, "SPIN_PAUSE", 0.2, raising=False)
    monkeypatch.setattr(inspection, "SPIN_GAP", 10.0, raising=False)  # however slow this machine's turns
    manager, job_id, _, gate = _gated(make_manager, db_path)
    try:
        reads = _CountingGets(manager.repository)
        began = time.monotonic()
        statuses = [manager.poll(job_id).status for _ in range(3)]
        took = time.monotonic() - began
        # the first read at once; the next two after a pause each (nothing ended to wake them)
        assert statuses == [JobStatus.RUNNING] * 3
        assert took >= 0.4 and reads.reads == 3
    finally:
        gate.set()


def test_a_loop_polling_a_job_running_here_sees_it_end_at_once(make_manager: Any, db_path: str,
                                                               monkeypatch: Any) -> None:
    monkeypatch.setattr(inspection, "SPIN_PAUSE", 30.0, raising=False)
    monkeypatch.setattr(inspection, "SPIN_GAP", 10.0, raising=False)
    manager, job_id, _, gate = _gated(make_manager, db_path)
    assert manager.poll(job_id).status is JobStatus.RUNNING  # the first poll: no pause
    threading.Timer(0.1, gate.set).start()
    began = time.monotonic()
    assert manager.poll(job_id).status is JobStatus.COMPLETED  # the loop's next turn: woken as it ends
    assert time.monotonic() - began < 20


def test_a_loop_polling_a_job_not_held_here_sleeps_between_reads(make_manager: Any, db_path: str,
                                                                 monkeypatch: Any) -> None:
    # given a started manager and a job it holds not (scheduled for later: queued as a timer)
    monkeypatch.setattr(inspection, "SPIN_PAUSE", 0.2, raising=False)
    monkeypatch.setattr(inspection, "SPIN_GAP", 10.0, raising=False)
    manager = make_manager(db_path, max_workers=1)
    manager.register_function("pair", pair)
    manager.start()
    later = manager.enqueue(Job(function_name="pair", args=(1,), scheduled_at=datetime.now() + timedelta(hours=1)))
    reads = _CountingGets(manager.repository)
    began = time.monotonic()
    statuses = [manager.poll(later).status for _ in range(3)]
    # then the first read comes at once, the next two after a pause each
    assert statuses == [JobStatus.SCHEDULED] * 3
    assert time.monotonic() - began >= 0.4 and reads.reads == 3


def test_polling_another_job_in_between_is_no_spin(make_manager: Any, db_path: str, monkeypatch: Any) -> None:
    monkeypatch.setattr(inspection, "SPIN_PAUSE", 30.0, raising=False)
    monkeypatch.setattr(inspection, "SPIN_GAP", 10.0, raising=False)
    manager, job_id, _, gate = _gated(make_manager, db_path)
    try:
        manager.register_function("pair", pair)
        queued = manager.enqueue(Job(function_name="pair", args=(1,)))  # behind the gated one
        began = time.monotonic()
        for _ in range(3):
            assert manager.poll(job_id).status is JobStatus.RUNNING
            assert not manager.poll(queued).status.is_terminal
        assert time.monotonic() - began < 20
    finally:
        gate.set()


@pytest.mark.parametrize("read", ["get_stats", "get_queue_size"])
def test_counts_asked_in_a_loop_pause_between_answers(make_manager: Any, db_path: str, monkeypatch: Any,
                                                      read: str) -> None:
    monkeypatch.setattr(inspection, "SPIN_PAUSE", 0.2, raising=False)
    monkeypatch.setattr(inspection, "SPIN_GAP", 10.0, raising=False)
    manager, _, _, gate = _gated(make_manager, db_path)
    try:
        began = time.monotonic()
        for _ in range(3):
            getattr(manager, read)()
        assert time.monotonic() - began >= 0.4  # the first at once, the next two after a pause each
    finally:
        gate.set()


@pytest.mark.parametrize("read", ["get_stats", "get_queue_size"])
def test_counts_asked_now_and_then_or_of_a_manager_not_started_do_not_pause(
        make_manager: Any, db_path: str, monkeypatch: Any, read: str) -> None:
    monkeypatch.setattr(inspection, "SPIN_PAUSE", 5.0, raising=False)
    monkeypatch.setattr(inspection, "SPIN_GAP", 0.05, raising=False)
    idle = make_manager(db_path, max_workers=1)
    began = time.monotonic()
    for _ in range(3):
        getattr(idle, read)()  # not started: nothing to give way to
    assert time.monotonic() - began < 4.0
    idle.start()
    getattr(idle, read)()
    time.sleep(0.1)  # longer than SPIN_GAP: no loop
    began = time.monotonic()
    getattr(idle, read)()
    assert time.monotonic() - began < 4.0
