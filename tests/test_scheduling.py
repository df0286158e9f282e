"""Order and time: dependencies, scheduled_at, and cron schedules."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from pg_fixtures import *  # noqa: F401,F403 (the fixtures: server, schema)
from jobcore import cron, dispatcher, scheduler
from jobcore import (CallbackNotificationChannel, DependencyError, FakeClock, InvalidCronExpression, InvalidJobType, Job, JobManager, JobPriority,
                     JobStatus, MemoryRepository, SQLiteRepository)
from mixed_repositories import BACKENDS, AsIs, repository_with
from waiting import wait_until

WAIT = 10.0


def test_dependencies_run_in_order(make_manager: Any, db_path: str) -> None:
    order: list[str] = []
    manager = make_manager(db_path, max_workers=4)
    manager.register_function("step", order.append)
    fetch = manager.enqueue(Job(function_name="step", args=("fetch",)))
    process = manager.enqueue(Job(function_name="step", args=("process",), depends_on=[fetch]))
    report = manager.enqueue(Job(function_name="step", args=("report",), depends_on=[process, fetch],
                                 priority=100))
    assert manager.poll(report).status is JobStatus.PENDING

    manager.start()
    assert manager.wait(report, timeout=WAIT).status is JobStatus.COMPLETED
    assert order == ["fetch", "process", "report"]


@pytest.mark.parametrize("backend", ["sqlite", "memory"])
def test_a_dependent_released_by_a_completion_runs_before_lower_priority_jobs_waiting(
        make_manager: Any, db_path: str, backend: str) -> None:
    # given one worker running a gate job, NORMAL jobs waiting, and a CRITICAL job that
    # depends on the gate (the NORMAL ones are next in the queue until the gate completes)
    order: list[str] = []
    gate_started, open_gate = threading.Event(), threading.Event()

    def step(label: str) -> None:
        order.append(label)
        if label == "gate":
            gate_started.set()
            assert open_gate.wait(WAIT)

    repository = SQLiteRepository(db_path) if backend == "sqlite" else MemoryRepository()
    manager = make_manager(repository, max_workers=1)
    manager.register_function("step", step)
    gate = Job(function_name="step", args=("gate",), priority=JobPriority.HIGH)
    ids = manager.enqueue_many([gate] + [Job(function_name="step", args=(f"normal{i}",)) for i in range(3)]
                               + [Job(function_name="step", args=("critical",), priority=JobPriority.CRITICAL,
                                      depends_on=[gate.id])])
    manager.start()
    assert gate_started.wait(WAIT)

    # when the gate completes (the exchange recording it had chosen a NORMAL job to claim)
    open_gate.set()
    for job_id in ids:
        assert manager.wait(job_id, timeout=WAIT).status is JobStatus.COMPLETED

    # then the released CRITICAL job runs next, as one enqueued then would, and the NORMAL
    # job handed back for it runs after it, with its attempt not counted
    assert order == ["gate", "critical", "normal0", "normal1", "normal2"]
    assert [manager.poll(job_id).attempts for job_id in ids] == [1, 1, 1, 1, 1]


def test_failed_dependency_cancels_dependents_transitively(make_manager: Any, db_path: str) -> None:
    def explode() -> None:
        raise ValueError("no data")

    manager = make_manager(db_path)
    fetch = manager.enqueue(Job(function=explode, name="fetch"))
    process = manager.enqueue(Job(function=lambda: 1, depends_on=[fetch]))
    report = manager.enqueue(Job(function=lambda: 2, depends_on=[process]))
    manager.start()

    assert manager.wait(fetch, timeout=WAIT).status is JobStatus.FAILED
    for dependent in (process, report):
        result = manager.wait(dependent, timeout=WAIT)
        assert result.status is JobStatus.CANCELLED
        assert fetch in result.error and "fetch" in result.error
    late = manager.enqueue(Job(function=lambda: 3, depends_on=[fetch]))
    assert manager.poll(late).status is JobStatus.CANCELLED


def test_cancelled_dependency_cancels_dependents(make_manager: Any, db_path: str) -> None:
    manager = make_manager(db_path)
    first = manager.enqueue(Job(function=lambda: 1))
    second = manager.enqueue(Job(function=lambda: 2, depends_on=[first]))
    assert manager.cancel(first)
    assert manager.poll(second).status is JobStatus.CANCELLED
    assert first in manager.poll(second).error


def test_batch_dependencies_and_rejected_cycle(make_manager: Any, db_path: str) -> None:
    manager = make_manager(db_path)
    a = Job(function=lambda: "a")
    b = Job(function=lambda: "b", depends_on=[a.id])
    ids = manager.enqueue_many([b, a])
    assert ids == [b.id, a.id]

    x = Job(function=lambda: 1, id="x", depends_on=["y"])
    y = Job(function=lambda: 2, id="y", depends_on=["x"])
    with pytest.raises(DependencyError, match="cycle"):
        manager.enqueue_many([x, y])
    with pytest.raises(ValueError):
        manager.enqueue(Job(function=lambda: 1, depends_on=["nobody"]))
    assert manager.get_stats()["total"] == 2

    manager.start()
    assert manager.wait(b.id, timeout=WAIT).result == "b"


def test_dependents_are_released_after_a_restart(make_manager: Any, db_path: str) -> None:
    first = make_manager(db_path)
    first.register_function("value", lambda x: x)
    parent = first.enqueue(Job(function_name="value", args=(1,)))
    child = first.enqueue(Job(function_name="value", args=(2,), depends_on=[parent]))
    first.close()

    second = make_manager(db_path)
    second.register_function("value", lambda x: x)
    second.start()
    assert second.wait(child, timeout=WAIT).result == 2


def test_scheduled_job_waits_then_starts_on_time(make_manager: Any, db_path: str) -> None:
    started: list[float] = []
    manager = make_manager(db_path).start()
    due = datetime.now() + timedelta(seconds=0.7)
    job_id = manager.enqueue(Job(function=lambda: started.append(time.time()), scheduled_at=due))

    early = manager.poll(job_id)
    assert early.status is JobStatus.SCHEDULED
    assert early.scheduled_at == due.replace(microsecond=due.microsecond)
    manager.wait(job_id, timeout=WAIT)
    assert due.timestamp() <= started[0] <= due.timestamp() + 0.1


def test_aware_and_past_scheduled_times(make_manager: Any, db_path: str) -> None:
    manager = make_manager(db_path).start()
    past = manager.enqueue(Job(function=lambda: "now", scheduled_at=datetime.now() - timedelta(hours=1)))
    assert manager.wait(past, timeout=WAIT).result == "now"
    aware = datetime.now(timezone.utc) + timedelta(hours=2)
    later = manager.enqueue(Job(function=lambda: "later", scheduled_at=aware))
    result = manager.poll(later)
    assert result.status is JobStatus.SCHEDULED
    assert abs(result.scheduled_at.timestamp() - aware.timestamp()) < 0.001


@pytest.mark.parametrize("backend", ["sqlite", "memory"])
def test_scheduled_jobs_follow_an_injected_clock(make_manager: Any, db_path: str, backend: str) -> None:
    clock = FakeClock()
    repo = SQLiteRepository(db_path) if backend == "sqlite" else MemoryRepository()
    manager = make_manager(repo, clock=clock).start()
    due = datetime.fromtimestamp(clock.time() + 3600)
    job_id = manager.enqueue(Job(function=lambda: "ran", scheduled_at=due))

    clock.advance(3599)
    with pytest.raises(TimeoutError):
        manager.wait(job_id, timeout=0.1)
    clock.advance(1)
    assert manager.wait(job_id, timeout=WAIT).result == "ran"


def test_invalid_cron_is_rejected_naming_the_field(make_manager: Any, db_path: str) -> None:
    manager = make_manager(db_path)
    with pytest.raises(InvalidCronExpression, match="minute"):
        manager.enqueue(Job(function=lambda: 1, cron="61 * * * *"))
    with pytest.raises(ValueError, match="timezone"):
        Job(function=lambda: 1, cron="* * * * *", cron_timezone="Mars/Olympus")
    assert manager.get_stats()["total"] == 0


def test_a_cron_timezone_of_the_wrong_type_is_named(make_manager: Any, db_path: str) -> None:
    # (checked before the expression is parsed, whose parses are kept: an unhashable zone
    # would have failed in the cache instead of naming the field)
    for zone in (["UTC"], 5):
        with pytest.raises(InvalidJobType, match="cron_timezone"):
            Job(function=lambda: 1, cron="* * * * *", cron_timezone=zone)  # type: ignore[arg-type]


def test_a_cron_jobs_expression_is_parsed_once_for_its_validation_and_its_fires(
        make_manager: Any, db_path: str, monkeypatch: Any) -> None:
    # given every parse of a cron expression counted
    parses: list[str] = []
    real_init = cron.CronExpression.__init__

    def counted(self: Any, expr: str, timezone: Any = None) -> None:
        parses.append(expr)
        real_init(self, expr, timezone)

    monkeypatch.setattr(cron.CronExpression, "__init__", counted)
    cron.parsed.cache_clear()  # (the process's parses kept so far: this test's own too, when run again)
    expression = "7 3 * * *"
    # when a schedule with it is enqueued into a manager, and enqueued again
    manager = make_manager(db_path)
    first = manager.enqueue(Job(function=lambda: 1, cron=expression, cron_timezone="Asia/Tokyo"))
    second = manager.enqueue(Job(function=lambda: 1, cron=expression, cron_timezone="Asia/Tokyo"))
    # then both are scheduled, and the expression was parsed once
    assert {manager.poll(first).status, manager.poll(second).status} == {JobStatus.SCHEDULED}
    assert parses == [expression]


def test_every_second_schedule_fires_and_stops_when_cancelled(make_manager: Any, db_path: str) -> None:
    clock = FakeClock(start=1_900_000_000.0)
    fired = threading.Semaphore(0)

    def tick() -> None:
        fired.release()

    manager = make_manager(db_path, clock=clock).start()
    schedule_id = manager.enqueue(Job(function=tick, cron="* * * * * *", name="tick"))
    assert manager.poll(schedule_id).status is JobStatus.SCHEDULED
    assert manager.poll(schedule_id).cron == "* * * * * *"

    for _ in range(3):
        clock.advance(1)
        assert fired.acquire(timeout=WAIT)
    assert manager.cancel(schedule_id)
    clock.advance(5)
    assert not fired.acquire(timeout=0.3)

    runs = [r for r in manager.list_jobs(limit=None) if r.job_id != schedule_id]
    assert len(runs) == 3
    assert all(r.metadata["schedule_id"] == schedule_id for r in runs)
    fire_times = sorted(datetime.fromisoformat(r.metadata["fire_at"]).timestamp() for r in runs)
    assert fire_times == [1_900_000_001.0, 1_900_000_002.0, 1_900_000_003.0]
    assert manager.poll(schedule_id).status is JobStatus.CANCELLED


@pytest.mark.parametrize("zone", [None, "UTC"])
def test_a_cron_schedule_fires_first_at_a_scheduled_at_that_is_a_fire_time(zone: Any) -> None:
    # SPEC: scheduled_at means "do not start before it", so a fire at that moment counts.
    manager = JobManager(MemoryRepository(), clock=FakeClock(start=1_900_000_000.0))
    manager.register_function("tick", lambda: None)
    start = datetime.fromtimestamp(1_900_000_000.0 + 86_400 * 3).replace(minute=0, second=0, microsecond=0)
    if zone:
        start = start.astimezone(timezone.utc)
    for at, first in ((start, start), (start + timedelta(microseconds=1), start + timedelta(hours=1))):
        schedule_id = manager.enqueue(Job(function_name="tick", cron="0 * * * *", cron_timezone=zone,
                                          scheduled_at=at))
        assert manager.poll(schedule_id).scheduled_at.timestamp() == first.timestamp()


def test_missed_fires_coalesce_into_one_run(make_manager: Any, db_path: str) -> None:
    clock = FakeClock(start=1_900_000_000.0)
    manager = make_manager(db_path, clock=clock)
    manager.register_function("tick", lambda: None)
    schedule_id = manager.enqueue(Job(function_name="tick", cron="* * * * *"))
    clock.advance(3600)  # an hour passes with nothing running: 60 fires missed
    manager.start()
    deadline = time.monotonic() + WAIT
    while manager.get_stats()["completed"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    manager.stop()
    runs = [r for r in manager.list_jobs(limit=None) if r.job_id != schedule_id]
    assert len(runs) == 1
    assert manager.poll(schedule_id).scheduled_at.timestamp() > clock.time()


def _ticking(make_manager: Any, repository: Any, clock: FakeClock,
             **options: Any) -> tuple[JobManager, threading.Semaphore, str]:
    """A started manager on `repository` with a schedule firing every second, fired once
    (at 1_900_000_001); the semaphore is released at each run."""
    fired = threading.Semaphore(0)
    manager = make_manager(repository, clock=clock, **options).start()
    manager.register_function("tick", fired.release)
    schedule_id = manager.enqueue(Job(function_name="tick", cron="* * * * * *"))
    clock.advance(1)
    assert fired.acquire(timeout=WAIT)
    return manager, fired, schedule_id


def _fire_times(manager: JobManager, schedule_id: str) -> list[float]:
    """The fire times of the schedule's runs, in order."""
    runs = [r for r in manager.list_jobs(limit=None) if r.job_id != schedule_id]
    return sorted(datetime.fromisoformat(r.metadata["fire_at"]).timestamp() for r in runs)


@pytest.mark.parametrize("backend", ["sqlite", "memory"])
def test_a_running_manager_that_falls_behind_fires_every_fire_time(make_manager: Any, db_path: str,
                                                                   backend: str) -> None:
    # given a started manager with a schedule firing every second, fired once
    clock = FakeClock(start=1_900_000_000.0)
    manager, fired, schedule_id = _ticking(make_manager, db_path if backend == "sqlite" else MemoryRepository(),
                                           clock)
    # when it falls 4 s behind while it runs (a machine under load: firing a thousand
    # schedules took longer than their period)
    clock.advance(4)
    # then each fire time passed meanwhile gets its run (the next fire was the first
    # after now: fire times 2, 3 and 4 were skipped), in order
    for _ in range(4):
        assert fired.acquire(timeout=WAIT)
    assert manager.cancel(schedule_id)
    assert not fired.acquire(timeout=0.3)
    assert _fire_times(manager, schedule_id) == [1_900_000_000.0 + n for n in range(1, 6)]


@pytest.mark.parametrize("lease, behind", [(60.0, 40), (5.0, 8)])
def test_a_running_manager_far_behind_coalesces_the_fires_it_missed(make_manager: Any, db_path: str,
                                                                    lease: float, behind: int) -> None:
    # given a started manager with a schedule firing every second, fired once
    clock = FakeClock(start=1_900_000_000.0)
    manager, fired, schedule_id = _ticking(make_manager, db_path, clock, lease_timeout=lease)
    # when it falls further behind than 10 s, or than its lease (its wall clock stepped
    # forward: NTP, an operator; its process suspended, or frozen past its lease)
    clock.advance(behind)
    # then the fire times it missed make one run (the first of them), not one each back
    # to back (a 40 s step fired a per-second schedule 41 times), then it is on time again
    assert fired.acquire(timeout=WAIT)
    assert not fired.acquire(timeout=0.3)
    assert _fire_times(manager, schedule_id) == [1_900_000_001.0, 1_900_000_002.0]
    assert manager.poll(schedule_id).scheduled_at.timestamp() == 1_900_000_001.0 + behind + 1


def test_a_schedule_queued_again_while_behind_keeps_its_place_by_fire_time(make_manager: Any) -> None:
    # given two schedules come due, the first 5 s ago and the second 1 s ago, queued
    clock = FakeClock(start=1_900_000_000.0)
    manager = make_manager(MemoryRepository(), clock=clock)
    manager.register_function("tick", lambda: None)
    first = manager.enqueue(Job(function_name="tick", cron="* * * * * *"))
    second = manager.enqueue(Job(function_name="tick", cron="*/5 * * * * *",
                                 scheduled_at=datetime.fromtimestamp(1_900_000_004.0)))
    clock.advance(5.5)
    entries = {e.job_id: e for e in manager.repository.scheduled(None, 10)}
    # when a look queues the first again (it is read among the jobs scheduled first)
    manager._pool.enqueue_entries([entries[first]])  # noqa: SLF001
    # then it still comes first, by its fire time (queued as due now, each look put it
    # behind every other schedule due: with thousands, some fired seconds late)
    assert [e.job_id for e in manager._queue.pop_due_schedules()] == [first, second]  # noqa: SLF001


def test_a_run_another_process_fired_first_starts_here_at_its_time_not_at_the_next_look(
        make_manager: Any, db_path: str) -> None:
    # given a manager that runs a per-second schedule's function and looks at the store
    # only every 30 s, its timer set for the schedule's next fire
    clock = FakeClock(start=1_900_000_000.5)
    manager = make_manager(db_path, clock=clock, poll_interval=30, discovery_interval=30)
    ran = threading.Event()
    manager.register_function("tick", ran.set)
    schedule_id = manager.enqueue(Job(function_name="tick", cron="* * * * * *"))
    manager.start()
    # when another process (its own connection, no bell of this one's) fires it first
    other = SQLiteRepository(db_path)
    try:
        schedule = other.get(schedule_id)
        assert schedule is not None and schedule.run_at == 1_900_000_001.0
        run = scheduler.run_for(schedule, schedule.run_at)
        assert other.fire_schedules([(schedule_id, schedule.run_at, schedule.run_at + 1, run)], clock.time()) == [True]
    finally:
        other.close()
    clock.advance(1)  # (this manager's timer comes due, to find the fire made)
    # then the run that process stored starts here now: told by nothing else on SQLite,
    # it waited for the next look, 30 s on
    assert ran.wait(10)
    assert manager.wait(run.id, timeout=10).status is JobStatus.COMPLETED


def test_schedules_due_together_are_fired_in_batches(make_manager: Any, db_path: str,
                                                     monkeypatch: Any) -> None:
    # given 120 schedules that fire at the same time, on a started manager
    clock = FakeClock(start=1_900_000_000.5)
    repository = SQLiteRepository(db_path)
    batches: list[int] = []
    fire = repository.fire_schedules

    def counted(fires: Any, now: float) -> Any:
        batches.append(len(fires))
        return fire(fires, now)

    repository.fire_schedules = counted  # type: ignore[method-assign]
    read_one, read_many = repository.get, repository.get_many
    reads: list[int] = []  # how many schedules each read of the firing dispatcher read

    def counted_get(job_id: str) -> Any:
        if job_id in schedules:
            reads.append(1)
        return read_one(job_id)

    def counted_get_many(job_ids: Any) -> Any:
        reads.append(len(job_ids))
        return read_many(job_ids)

    repository.get, repository.get_many = counted_get, counted_get_many  # type: ignore[method-assign]
    ran = threading.Semaphore(0)
    manager = make_manager(repository, clock=clock, max_workers=8)
    manager.register_function("tick", ran.release)
    schedules = set(manager.enqueue_many([Job(function_name="tick", cron="* * * * * *") for _ in range(120)]))
    manager.start()
    # when they come due
    clock.advance(1)
    for _ in range(120):
        assert ran.acquire(timeout=WAIT)
    # then they were stored FIRE_AT_ONCE at a time, a transaction each (each schedule
    # fired in a transaction of its own: 0.7 ms each on SQLite, and 1,000 sharing a
    # fire time started their runs 0.8-1.2 s late)
    assert sum(batches) == 120 and max(batches) == dispatcher.FIRE_AT_ONCE and len(batches) == 3
    # and each batch's schedules were read in one call (read one at a time, 35 µs each on
    # SQLite: a third of the time firing them took)
    assert 1 not in reads and sum(reads) >= 120
    runs = [r.job_id for r in manager.list_jobs(limit=None) if "schedule_id" in r.metadata]
    assert len(runs) == 120
    assert all(manager.wait(job_id, timeout=WAIT).status is JobStatus.COMPLETED for job_id in runs)


def test_a_schedule_taken_to_fire_when_the_dispatcher_fails_is_fired_once_read_again(
        make_manager: Any, db_path: str) -> None:
    # given a per-second schedule on a started manager whose dispatcher fails once, just
    # after it took the schedule to fire
    clock = FakeClock(start=1_900_000_000.5)
    ran = threading.Semaphore(0)
    manager = make_manager(SQLiteRepository(db_path), clock=clock, poll_interval=60.0)
    manager.register_function("tick", ran.release)
    manager.enqueue(Job(function_name="tick", cron="* * * * * *"))
    manager.start()
    exchange_due = manager._pool._dispatcher._exchange_due_locked  # noqa: SLF001
    failed = []

    def fail_once() -> Any:
        if not failed and manager._queue._firing:  # noqa: SLF001
            failed.append(1)
            raise RuntimeError("a fault of the engine's")
        return exchange_due()

    manager._pool._dispatcher._exchange_due_locked = fail_once  # noqa: SLF001
    clock.advance(1)
    wait_until(lambda: failed, WAIT, "the dispatcher's fault")
    # (and its fault handled: a read before it ended the firing skips the schedule still
    # being fired, which only a later read then queues)
    wait_until(lambda: not manager._queue._firing, WAIT, "the fault handled")  # noqa: SLF001
    # when the store is read again (the schedule, lost with the fault, is due there)
    manager._load_queue(spaced=True)  # noqa: SLF001
    # then it fires (kept out of the queue for ever, as being fired still)
    assert ran.acquire(timeout=WAIT)


def test_two_managers_never_fire_the_same_time_twice(tmp_path: Any) -> None:
    path = str(tmp_path / "shared.db")
    clock = FakeClock(start=1_900_000_000.0)
    calls: list[str] = []
    lock = threading.Lock()

    def tick() -> None:
        with lock:
            calls.append("x")

    managers = [JobManager(path, clock=clock, max_workers=2, worker_id=f"m{i}") for i in range(2)]
    for manager in managers:
        manager.register_function("tick", tick)
    schedule_id = managers[0].enqueue(Job(function_name="tick", cron="* * * * * *"))
    for manager in managers:
        manager.start()
    try:
        for second in range(1, 6):
            clock.advance(1)
            deadline = time.monotonic() + WAIT
            while time.monotonic() < deadline:
                runs = [r for r in managers[0].list_jobs(limit=None) if r.job_id != schedule_id]
                if len(runs) >= second and all(r.status is JobStatus.COMPLETED for r in runs):
                    break
                time.sleep(0.005)
    finally:
        for manager in managers:
            manager.stop()
            manager.close()
    check = JobManager(path)
    runs = [r for r in check.list_jobs(limit=None) if r.job_id != schedule_id]
    fire_times = [r.metadata["fire_at"] for r in runs]
    assert len(fire_times) == 5
    assert len(set(fire_times)) == 5
    assert len(calls) == 5
    check.close()


def test_periodic_decorator_keeps_one_schedule_across_restarts(tmp_path: Any) -> None:
    path = str(tmp_path / "periodic.db")
    first = JobManager(path)

    @first.periodic("*/15 * * * *", name="reminders")
    def reminders() -> str:
        return "sent"

    first.close()
    second = JobManager(path)
    second.periodic("*/15 * * * *", name="reminders")(reminders)
    schedules = [r for r in second.list_jobs(limit=None) if r.cron]
    assert [(r.cron, r.status) for r in schedules] == [("*/15 * * * *", JobStatus.SCHEDULED)]

    second.periodic("0 * * * *", name="reminders")(reminders)  # expression changed: replaced
    live = [r.cron for r in second.list_jobs(status="scheduled", limit=None)]
    assert live == ["0 * * * *"]
    second.close()


@pytest.fixture
def new_york_local_time(monkeypatch: Any) -> Any:
    """The process's local zone is America/New_York for the test (restored after)."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_a_local_time_schedule_fires_once_when_the_clocks_go_back(new_york_local_time: Any, tmp_path: Any) -> None:
    # No cron_timezone: local wall time. Down from 01:20 EDT on 2026-11-01, the process
    # comes back at 01:05 EST, in the second pass of the repeated hour: the 01:30 fire it
    # missed (EDT) is one run, and the schedule moves on to the next day. It used to find
    # 01:30 (read as EDT, already past) again and again: endless runs of one fire time.
    db = str(tmp_path / "jobs.db")
    clock = FakeClock(start=datetime(2026, 11, 1, 5, 20, tzinfo=timezone.utc).timestamp())
    first = JobManager(db, clock=clock)
    first.register_function("nightly", lambda: "done")
    schedule_id = first.enqueue(Job(function_name="nightly", cron="30 1 * * *"))
    first.close()
    clock.advance(45 * 60)
    again = JobManager(db, clock=clock)
    again.register_function("nightly", lambda: "done")
    try:
        assert again.run_pending(limit=10) == 1
        runs = [r for r in again.list_jobs(limit=None) if r.job_id != schedule_id]
        assert [r.metadata["fire_at"] for r in runs] == ["2026-11-01T01:30:00-04:00"]
        assert again.poll(schedule_id).scheduled_at == datetime(2026, 11, 2, 1, 30)
    finally:
        again.close()


def test_local_time_schedules_follow_the_daylight_saving_rules_of_a_zone(new_york_local_time: Any) -> None:
    # The same rules as with cron_timezone (docs/cron.md): a skipped wall time is skipped,
    # and a repeated one fires at its first pass only.
    from jobcore.scheduler import next_fire_epoch

    def local(*wall: int) -> float:
        return datetime(*wall).timestamp()  # naive: local time, first pass

    for zone in (None, "America/New_York"):
        # 2026-03-08: 02:00-03:00 does not exist. 02:30 is skipped, not moved to 03:30.
        assert next_fire_epoch("30 2 * * *", zone, local(2026, 3, 8, 1, 0)) == local(2026, 3, 9, 2, 30)
        assert next_fire_epoch("*/30 * * * *", zone, local(2026, 3, 8, 1, 30)) == local(2026, 3, 8, 3, 0)
        # 2026-11-01: 01:00-02:00 happens twice. From the second pass's 01:10 (06:10 UTC)
        # nothing fires until 02:00 EST; from the first pass's, 01:15 EDT is next.
        second_pass = datetime(2026, 11, 1, 6, 10, tzinfo=timezone.utc).timestamp()
        assert next_fire_epoch("*/5 * * * *", zone, second_pass) == local(2026, 11, 1, 2, 0)
        assert next_fire_epoch("*/5 * * * *", zone, second_pass - 3600) == second_pass - 3600 + 300


@pytest.mark.parametrize("zone", [None, "UTC"])
def test_a_fire_time_less_than_a_microsecond_ahead_is_the_next_one(zone: Any) -> None:
    # Fires are whole seconds; `after` rounded to the microsecond landed on the fire
    # itself, and the next fire was the one after it (a day late for a daily schedule).
    from jobcore.scheduler import next_fire_epoch

    nine = datetime(2030, 5, 1, 9, 0, tzinfo=timezone.utc).timestamp() if zone else datetime(2030, 5, 1, 9).timestamp()
    hour = "0 9 * * *"
    assert next_fire_epoch(hour, zone, nine - 4e-7) == nine
    assert next_fire_epoch(hour, zone, nine - 0.5) == nine
    assert next_fire_epoch(hour, zone, nine) == nine + 86400  # strictly after
    assert next_fire_epoch(hour, zone, nine + 4e-7) == nine + 86400


def test_a_schedule_enqueued_just_before_a_fire_or_far_ahead_fires_at_the_first_match(
        make_manager: Any, db_path: str) -> None:
    # given a schedule enqueued less than a microsecond before its first fire
    nine = datetime(2030, 5, 1, 9).timestamp()
    clock = FakeClock(nine - 4e-7)
    manager = make_manager(db_path, clock=clock)
    manager.register_function("report", lambda: "done")
    soon = manager.enqueue(Job(function_name="report", cron="0 9 * * *"))
    # and one whose `scheduled_at` is a fire time after 2514, where a float's step is
    # wider than the microsecond the first fire was looked for from
    far = datetime(2600, 1, 5, 9)
    later = manager.enqueue(Job(function_name="report", cron="0 9 * * *", scheduled_at=far))
    # then each fires first at that very time (at or after `scheduled_at`, after now)
    assert manager.poll(soon).scheduled_at == datetime(2030, 5, 1, 9)
    assert manager.poll(later).scheduled_at == far


@pytest.mark.parametrize("store", ["sqlite", "memory"])
def test_a_schedule_whose_fires_lie_forty_years_apart_moves_on_to_the_next(tmp_path: Any, store: str) -> None:
    # February 29 on a Sunday: 2088, then 2128 (2100 is no leap year). Only 28 years were
    # looked ahead, so the enqueue after 2088 was refused, and the schedule that fired in
    # 2088 failed as corrupt instead of moving on.
    leap_sunday = "0 0 29 2 */7"
    clock = FakeClock(start=datetime(2088, 2, 28, tzinfo=timezone.utc).timestamp())
    manager = JobManager(SQLiteRepository(str(tmp_path / "jobs.db")) if store == "sqlite" else MemoryRepository(),
                         clock=clock)
    manager.register_function("leap", lambda: "done")
    try:
        schedule_id = manager.enqueue(Job(function_name="leap", cron=leap_sunday, cron_timezone="UTC"))
        leap_days = [datetime(year, 2, 29, tzinfo=timezone.utc).timestamp() for year in (2088, 2128)]
        assert manager.poll(schedule_id).scheduled_at.timestamp() == leap_days[0]
        clock.advance(2 * 86_400)
        assert manager.run_pending(limit=10) == 1
        schedule = manager.poll(schedule_id)
        assert schedule.status is JobStatus.SCHEDULED, schedule.error
        assert schedule.scheduled_at.timestamp() == leap_days[1]
        later = manager.enqueue(Job(function_name="leap", cron=leap_sunday, cron_timezone="UTC"))
        assert manager.poll(later).scheduled_at.timestamp() == leap_days[1]
    finally:
        manager.close()


@pytest.fixture(params=BACKENDS)
def any_repository(request: Any, tmp_path: Any) -> Any:
    return repository_with(AsIs, request, tmp_path)


def test_priorities_across_the_whole_64_bit_range_run_in_order(any_repository: Any) -> None:
    # given jobs whose priorities reach both ends of what a store's integer keeps
    priorities = [5, -(2**63), 2**63 - 1, -(2**40), 2**40, 2**63 - 2]
    ran: list[int] = []
    manager = JobManager(any_repository)
    manager.register_function("note", ran.append)
    try:
        ids = manager.enqueue_many([Job(function_name="note", args=(p,), priority=p) for p in priorities[:3]])
        ids += [manager.enqueue(Job(function_name="note", args=(p,), priority=p)) for p in priorities[3:]]
        # when they run one at a time, then the higher runs first, each kept as given
        while manager.run_pending(limit=1):
            pass
        assert ran == sorted(priorities, reverse=True)
        assert [manager.poll(job_id).priority for job_id in ids] == priorities
    finally:
        manager.close()


def test_a_schedule_whose_next_fire_is_past_the_last_time_a_store_keeps_fails_after_its_last_run(
        any_repository: Any) -> None:
    # Daily at midnight UTC: 29 April 3871 fires, the 30th is past 3871-04-29 10:40 UTC
    # (6e10 s, the last time a store keeps). SQLite and PostgreSQL stored that next fire
    # and read it back as corrupt (FAILED at the next look); the memory store kept it.
    clock = FakeClock(start=datetime(3871, 4, 28, 12, tzinfo=timezone.utc).timestamp())
    manager = JobManager(any_repository, clock=clock)
    manager.register_function("daily", lambda: "done")
    events: list[dict[str, Any]] = []
    manager.add_notification_channel(CallbackNotificationChannel(events.append))
    try:
        schedule_id = manager.enqueue(Job(function_name="daily", cron="0 0 * * *", cron_timezone="UTC"))
        clock.advance(12 * 3600)
        assert manager.run_pending(limit=10) == 1
        # then its last run ran, and the schedule ended FAILED, naming why, on every store
        [run] = [r for r in manager.list_jobs() if r.job_id != schedule_id]
        assert (run.status, run.result, run.metadata["fire_at"]) == (
            JobStatus.COMPLETED, "done", "3871-04-29T00:00:00+00:00")
        schedule = manager.poll(schedule_id)
        assert schedule.status is JobStatus.FAILED
        assert "3871-04-30T00:00:00+00:00" in schedule.error and "29 April 3871" in schedule.error
        # and it entered the dead-letter queue as any job does: channels heard of it
        wait_until(lambda: any(e["job_id"] == schedule_id for e in events), WAIT, "the schedule's event")
        [event] = [e for e in events if e["job_id"] == schedule_id]
        assert (event["event"], event["error_type"]) == ("job.dead_lettered", "CorruptJob")
        clock.advance(2 * 86_400)
        assert manager.run_pending(limit=10) == 0
    finally:
        manager.close()


@pytest.mark.parametrize("store", ["sqlite", "memory"])
def test_a_job_scheduled_centuries_ahead_leaves_the_workers_running(make_manager: Any, db_path: str,
                                                                   store: str) -> None:
    # The dispatcher slept until its time: past the platform's limit, Condition.wait raised
    # OverflowError, the dispatcher thread died, and no outcome was recorded again.
    from jobcore import MemoryRepository
    manager = make_manager(db_path if store == "sqlite" else MemoryRepository(), max_workers=1).start()
    far = manager.enqueue(Job(function=len, args=("x",), scheduled_at=datetime(3800, 1, 1)))
    for _ in range(3):
        assert manager.wait(manager.enqueue(Job(function=len, args=("ok",))), timeout=10).result == 2
    assert manager.poll(far).status is JobStatus.SCHEDULED
    assert manager.poll(far).scheduled_at == datetime(3800, 1, 1)


def test_a_job_retried_by_another_process_runs_now_not_at_its_old_time(tmp_path: Any) -> None:
    # given a worker holding the timer of a job scheduled an hour ahead
    path = str(tmp_path / "shared.db")
    clock = FakeClock(start=1_900_000_000.0)
    worker = JobManager(path, clock=clock, max_workers=1)
    worker.register_function("ok", lambda: "ran")
    other = JobManager(path, clock=clock, producer=True)  # the CLI or the dashboard
    job_id = other.enqueue(Job(function_name="ok", scheduled_at=datetime.fromtimestamp(clock.time() + 3600)))
    worker.start()
    try:
        # when another process cancels and retries it (ready now, says docs/api.md)
        assert other.cancel(job_id) and other.retry(job_id)
        clock.advance(5.0)  # the worker looks at the store again (a fake clock's seconds)
        # then the worker runs it without the clock reaching the old time: its timer
        # kept the job's id queued, so the ready job was not queued
        assert worker.wait(job_id, timeout=WAIT).result == "ran"
    finally:
        worker.close()
        other.close()


def _past_a_discovery_interval(clock: FakeClock) -> None:
    """A little more than a discovery interval (50 ms), in steps the housekeeper follows."""
    for _ in range(3):
        clock.advance(0.03)


@pytest.mark.parametrize("holding", ["timer", "schedule"])
def test_a_manager_holding_a_timer_notices_another_processs_job_at_once(tmp_path: Any, holding: str) -> None:
    # given a started manager whose queue holds only a job due in an hour (or a cron
    # schedule): it counted as busy, so it read the store for another process's jobs only
    # every poll_interval (a second) instead of every discovery_interval (50 ms)
    path = str(tmp_path / "shared.db")
    clock = FakeClock(start=1_900_000_000.0)
    worker = JobManager(path, clock=clock, max_workers=1)
    worker.register_function("ok", lambda: "ran")
    other = JobManager(path, clock=clock, producer=True)
    if holding == "timer":
        other.enqueue(Job(function_name="ok", scheduled_at=datetime.fromtimestamp(clock.time() + 3600)))
    else:
        other.enqueue(Job(function_name="ok", cron="0 * * * *"))
    worker.start()
    try:
        # when another process enqueues a job, and a little more than a discovery interval passes
        job_id = other.enqueue(Job(function_name="ok"))
        _past_a_discovery_interval(clock)
        # then the worker runs it (the fake clock never reaches a poll_interval)
        assert worker.wait(job_id, timeout=WAIT).result == "ran"
    finally:
        worker.close()
        other.close()


@pytest.mark.parametrize("producer", ["same process", "other process"])
def test_a_manager_with_a_free_worker_notices_another_producers_job_at_once(tmp_path: Any, producer: str) -> None:
    # given a started manager of two workers, one of them running a long job: it counted
    # as busy, so it read the store for jobs stored elsewhere only every poll_interval
    # (SPEC: a scheduled job starts within 100 ms of its due time when a worker is free)
    path = str(tmp_path / "shared.db")
    clock = FakeClock(start=time.time())
    worker = JobManager(path, clock=clock, max_workers=2, poll_interval=3600.0)
    started, release = threading.Event(), threading.Event()

    def long() -> None:
        started.set()
        assert release.wait(WAIT)

    worker.register_function("long", long)
    worker.register_function("ok", lambda: "ran")
    worker.start()
    try:
        worker.enqueue(Job(function_name="long"))
        assert started.wait(WAIT)
        # when another manager of this process, or another process, stores a job due an
        # hour ago, and a little more than a discovery interval passes
        due = datetime.fromtimestamp(clock.time() - 3600)
        if producer == "same process":
            other = JobManager(path, producer=True)
            job_id = other.enqueue(Job(function_name="ok", scheduled_at=due))
            other.close()
        else:
            script = ("import sys, datetime; from jobcore import Job, JobManager;"
                      " m = JobManager(sys.argv[1], producer=True);"
                      " print(m.enqueue(Job(function_name='ok', scheduled_at=datetime.datetime.fromtimestamp("
                      f"{due.timestamp()!r}))))")
            job_id = subprocess.run([sys.executable, "-c", script, path], capture_output=True, text=True,
                                    check=True, timeout=60).stdout.strip()
        _past_a_discovery_interval(clock)
        # then the free worker runs it (the fake clock never reaches a poll_interval)
        assert worker.wait(job_id, timeout=WAIT).result == "ran"
    finally:
        release.set()
        worker.close()


class _SteppedClock:
    """The system clock, whose wall time can be stepped as the OS steps it (NTP, a
    resume from suspend): nothing is told, as with the real clock."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, delay: float) -> None:
        time.sleep(max(0.0, delay))

    def subscribe(self, listener: Any) -> None:
        pass


@pytest.mark.parametrize("backend", ["sqlite", "memory"])
def test_a_wall_clock_step_forward_brings_a_timer_forward(backend: str, db_path: str) -> None:
    # The dispatcher slept real seconds until the old due time: a job due 20 s ahead,
    # brought to 0.3 s ahead by a step, started 20 s later.
    clock, started = _SteppedClock(), threading.Event()
    manager = JobManager(db_path if backend == "sqlite" else MemoryRepository(), clock=clock)  # type: ignore[arg-type]
    manager.register_function("job", started.set)
    with manager:
        manager.enqueue(Job(function_name="job", scheduled_at=datetime.fromtimestamp(clock.time() + 20)))
        time.sleep(0.2)  # the dispatcher is asleep on the timer
        clock.offset += 19.7
        assert started.wait(10)
