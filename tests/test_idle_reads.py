"""An idle manager reads the store again only when something was written to it.

Its housekeeper looks for work every `discovery_interval` and, as a safety net, reloads
its queue every `poll_interval`. On a backend whose change token moves at every write
(SQLite's data_version, the memory store's count of writes), an unchanged token means
there is nothing new to load: 100,000 jobs scheduled for later used to cost an idle
manager 8-13% of a core, re-read every second (or every 50 ms in memory).
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from typing import Any, Callable

from jobcore import FakeClock, Job, JobManager, JobRepository, MemoryRepository, SQLiteRepository

WAIT = 10.0


def noop() -> None:
    return None


class Watched:
    """Counts the store's reloads (`scheduled` reads) and lets the test wait for each
    housekeeping look (each `change_token` read)."""

    def __init__(self, repository: JobRepository) -> None:
        self.reloads = 0
        self._looks = threading.Semaphore(0)
        token, scheduled = repository.change_token, repository.scheduled

        def change_token() -> Any:
            value = token()
            self._looks.release()
            return value

        def counted_scheduled(*args: Any) -> Any:
            self.reloads += 1
            return scheduled(*args)

        repository.change_token = change_token  # type: ignore[method-assign]
        repository.scheduled = counted_scheduled  # type: ignore[method-assign]

    def started(self) -> None:
        """Wait for the housekeeper's first token read, made as its thread starts."""
        assert self._looks.acquire(timeout=WAIT)

    def pass_time(self, clock: FakeClock, seconds: float) -> None:
        """Move past `seconds` and let the housekeeper finish the look made then (the next
        look, 0.06 s later, starts only after it)."""
        clock.advance(seconds)
        assert self._looks.acquire(timeout=WAIT)
        clock.advance(0.06)
        assert self._looks.acquire(timeout=WAIT)


def _manager(make_manager: Callable[..., JobManager], repository: JobRepository,
             clock: FakeClock) -> JobManager:
    manager = make_manager(repository, clock=clock, poll_interval=1.0, discovery_interval=0.05)
    manager.register_function("noop", noop)
    return manager


def _later(clock: FakeClock) -> datetime:
    return datetime.fromtimestamp(clock.time()) + timedelta(hours=1)


def test_an_idle_manager_does_not_reload_an_unchanged_store(repository: JobRepository,
                                                            make_manager: Callable[..., JobManager]) -> None:
    # given an idle manager with a job scheduled for later, past its first looks
    clock = FakeClock()
    watched = Watched(repository)
    manager = _manager(make_manager, repository, clock)
    manager.enqueue(Job(function_name="noop", scheduled_at=_later(clock)))
    manager.start()
    watched.started()
    for _ in range(2):
        watched.pass_time(clock, 1.5)
    before = watched.reloads

    # when several poll intervals pass with nothing written
    for _ in range(5):
        watched.pass_time(clock, 1.5)

    # then it never read the store's jobs again
    assert watched.reloads == before


def test_an_idle_manager_reloads_after_another_writer_adds_a_job(tmp_path: Any,
                                                                 make_manager: Callable[..., JobManager]) -> None:
    # given an idle manager on a SQLite file, past its first looks
    clock = FakeClock()
    path = str(tmp_path / "jobs.db")
    repository = SQLiteRepository(path)
    watched = Watched(repository)
    manager = _manager(make_manager, repository, clock)
    manager.start()
    watched.started()
    for _ in range(2):
        watched.pass_time(clock, 1.5)
    before = watched.reloads

    # when another process's manager (another connection) stores a job
    producer = make_manager(SQLiteRepository(path), clock=clock, producer=True)
    job_id = producer.enqueue(Job(function_name="noop"))
    watched.pass_time(clock, 0.06)

    # then the idle manager read the store again and ran it
    assert watched.reloads > before
    assert manager.wait(job_id, timeout=WAIT).status.value == "completed"


def test_an_idle_manager_reloads_after_another_manager_adds_to_a_shared_memory_store(
        make_manager: Callable[..., JobManager]) -> None:
    clock = FakeClock()
    repository = MemoryRepository()
    watched = Watched(repository)
    manager = _manager(make_manager, repository, clock)
    manager.start()
    watched.started()
    for _ in range(2):
        watched.pass_time(clock, 1.5)
    before = watched.reloads

    producer = make_manager(repository, clock=clock, producer=True)
    job_id = producer.enqueue(Job(function_name="noop"))
    watched.pass_time(clock, 0.06)

    assert watched.reloads > before
    assert manager.wait(job_id, timeout=WAIT).status.value == "completed"
