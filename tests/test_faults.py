"""Faults: corrupt rows, clock jumps, an unwritable database."""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import datetime, timedelta
from typing import Any, Callable

import pytest

from jobcore import FakeClock, Job, JobManager, JobStatus, RepositoryError, SQLiteRepository, current_job
from recovery_checks import runs_again_with_its_reason

WAIT = 10.0


def test_a_corrupt_row_fails_alone(make_manager: Any, db_path: str) -> None:
    manager = make_manager(db_path)
    manager.register_function("echo", lambda x: x)
    broken = manager.enqueue(Job(function_name="echo", args=(1,)))
    fine = manager.enqueue(Job(function_name="echo", args=(2,)))
    raw = sqlite3.connect(db_path)
    raw.execute("UPDATE jobs SET payload = 'not json {' WHERE id = ?", (broken,))
    raw.commit()
    raw.close()

    manager.start()
    bad = manager.wait(broken, timeout=WAIT)
    assert (bad.status, bad.error_type, bad.attempts) == (JobStatus.FAILED, "CorruptJob", 1)
    assert "cannot be decoded" in bad.error
    assert manager.wait(fine, timeout=WAIT).result == 2


@pytest.mark.parametrize("column", ["tags", "metadata", "depends_on", "progress_details", "result"])
def test_a_column_that_is_not_json_is_named_by_the_error(make_manager: Any, db_path: str, column: str) -> None:
    # given a job whose column was edited into text that is not JSON
    manager = make_manager(db_path)
    manager.register_function("echo", lambda x: x)
    job_id = manager.enqueue(Job(function_name="echo", args=(1,)))
    _corrupt(db_path, job_id, column, "'{bad'")

    # then poll tells which column holds it (it said only "Expecting property name ...")
    assert f"cannot be decoded: {column} holds text that is not JSON (Expecting" in (manager.poll(job_id).error or "")


def test_a_payload_that_is_not_json_is_named_by_its_run(make_manager: Any, db_path: str) -> None:
    manager = make_manager(db_path)
    manager.register_function("echo", lambda x: x)
    broken = manager.enqueue(Job(function_name="echo", args=(1,)))
    _corrupt(db_path, broken, "payload", "'[[1],{'")

    manager.start()
    bad = manager.wait(broken, timeout=WAIT)
    assert (bad.status, bad.error_type) == (JobStatus.FAILED, "CorruptJob")
    assert "cannot be decoded: payload holds text that is not JSON (Expecting" in (bad.error or "")


@pytest.mark.parametrize("column", ["payload", "result", "metadata"])
def test_a_value_nested_too_deeply_to_decode_fails_its_job_alone(make_manager: Any, db_path: str,
                                                                 column: str) -> None:
    # given a job whose stored JSON nests deeper than the worker's stack can decode (one
    # `enqueue` encoded from a shallower stack: its check depends on the caller's depth)
    manager = make_manager(db_path, max_workers=2)
    manager.register_function("echo", lambda x: x)
    ids = [manager.enqueue(Job(function_name="echo", args=(n,), max_retries=0)) for n in range(3)]
    deep = "[" * 100_000 + "]" * 100_000  # (past the C recursion limit too: Python 3.13 decodes 5,000)
    stored = {"payload": f"[[{deep}],{{}}]", "result": deep, "metadata": f'{{"k":{deep}}}'}[column]
    raw = sqlite3.connect(db_path)
    raw.execute(f"UPDATE jobs SET {column} = ? WHERE id = ?", (stored, ids[1]))
    raw.commit()
    raw.close()
    # when a manager runs them, then that job fails alone as corrupt, at once (its
    # RecursionError escaped the claim: the whole exchange's jobs stayed RUNNING until their
    # leases lapsed, then failed as WorkerLost)
    manager.start()
    bad = manager.wait(ids[1], timeout=WAIT)
    assert (bad.status, bad.error_type) == (JobStatus.FAILED, "CorruptJob"), bad.error
    assert f"cannot be decoded: {column} holds JSON nested deeper than" in (bad.error or "")
    assert [manager.wait(job_id, timeout=WAIT).result for job_id in (ids[0], ids[2])] == [0, 2]


def test_an_isolation_jobcore_never_writes_fails_its_job_as_corrupt(make_manager: Any, db_path: str) -> None:
    # given a row whose isolation was edited by hand to a value jobcore never writes
    manager = make_manager(db_path)
    ran: list[int] = []
    manager.register_function("echo", lambda x: ran.append(x) or x)
    broken = manager.enqueue(Job(function_name="echo", args=(1,)))
    fine = manager.enqueue(Job(function_name="echo", args=(2,)))
    _corrupt(db_path, broken, "isolation", "'banana'")

    # when the manager runs them
    manager.start()
    bad = manager.wait(broken, timeout=WAIT)

    # then that job fails alone as corrupt, without running (not on a thread by default)
    assert (bad.status, bad.error_type, bad.attempts) == (JobStatus.FAILED, "CorruptJob", 1)
    assert "isolation holds 'banana'" in bad.error
    assert manager.wait(fine, timeout=WAIT).result == 2
    assert ran == [2]


@pytest.mark.parametrize("column, sql_value, shown", [
    ("cron", "'99 99 * * *'", "minute field"),
    ("cron_timezone", "'Nowhere/Atlantis'", "Nowhere/Atlantis"),
    ("payload", "'not json {'", "cannot be decoded"),
])
def test_a_corrupt_schedule_fails_alone(make_manager: Any, db_path: str, column: str, sql_value: str,
                                        shown: str) -> None:
    # given a due schedule whose row was edited into one that cannot fire: it logged an
    # exception (or "will not fire") and stayed SCHEDULED for ever
    manager = make_manager(db_path)
    manager.register_function("echo", lambda x=0: x)
    schedule = manager.enqueue(Job(function_name="echo", cron="0 0 1 1 *"))
    fine = manager.enqueue(Job(function_name="echo", args=(2,)))
    _corrupt(db_path, schedule, column, sql_value)
    _corrupt(db_path, schedule, "run_at", repr(time.time() - 1))  # due now

    manager.start()
    bad = manager.wait(schedule, timeout=WAIT)
    assert (bad.status, bad.error_type) == (JobStatus.FAILED, "CorruptJob")
    assert shown in (bad.error or "")
    assert manager.wait(fine, timeout=WAIT).result == 2
    assert manager.get_stats()["total"] == 2  # no run was made of it


def test_a_wall_clock_jump_does_not_steal_running_jobs(make_manager: Any, db_path: str) -> None:
    clock = FakeClock()
    started = threading.Event()
    release = threading.Event()

    def long_job() -> str:
        started.set()
        assert release.wait(WAIT)
        return "done once"

    manager = make_manager(db_path, clock=clock, lease_timeout=60).start()
    job_id = manager.enqueue(Job(function=long_job))
    assert started.wait(WAIT)

    clock.jump(3600)      # someone sets the system clock an hour ahead...
    clock.advance(16)     # ...and a recovery round comes due
    deadline = time.monotonic() + WAIT
    repo = manager.repository
    while repo.get(job_id).lease_expires_at < clock.time() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert repo.get(job_id).lease_expires_at > clock.time()  # renewed, not taken back
    release.set()

    result = manager.wait(job_id, timeout=WAIT)
    assert (result.status, result.attempts, result.result) == (JobStatus.COMPLETED, 1, "done once")


class _StepsDuringHeartbeat(SQLiteRepository):
    """Steps the wall clock while the lease renewal armed for it is under way (as NTP
    may, while that write waits on a busy database): it is written with the time before."""

    def __init__(self, path: str, clock: FakeClock) -> None:
        super().__init__(path)
        self.clock = clock
        self.armed = threading.Event()
        self.stepped = threading.Event()

    def heartbeat(self, worker_id: str, job_ids: Any, lease_expires_at: float, now: float) -> list[str]:
        renewed = super().heartbeat(worker_id, job_ids, lease_expires_at, now)
        if self.armed.is_set() and not self.stepped.is_set():
            self.clock.jump(3600)
            self.stepped.set()
        return renewed


def _counted_long_job() -> tuple[list[int], threading.Event, Callable[[], str]]:
    """A job that counts its starts and returns "done once" when `release` is set."""
    starts: list[int] = []
    release = threading.Event()

    def long_job() -> str:
        starts.append(1)
        assert release.wait(WAIT)
        return "done once"
    return starts, release, long_job


def test_a_wall_clock_step_during_a_lease_renewal_does_not_take_back_our_own_jobs(
        make_manager: Any, db_path: str) -> None:
    # Given a long job running on a started manager
    clock = FakeClock()
    starts, release, long_job = _counted_long_job()

    repo = _StepsDuringHeartbeat(db_path, clock)
    manager = make_manager(repo, clock=clock, lease_timeout=60).start()
    job_id = manager.enqueue(Job(function=long_job, max_retries=5))
    deadline = time.monotonic() + WAIT
    while not starts and time.monotonic() < deadline:
        time.sleep(0.01)
    assert starts

    # When a heartbeat and a recovery round come due in one housekeeping pass, and the
    # wall clock steps an hour ahead after the heartbeat read the time, before recovery
    repo.armed.set()
    clock.advance(16)
    assert repo.stepped.wait(WAIT)

    # Then the lease is renewed with the new time and the job is not taken back
    while repo.get(job_id).lease_expires_at < clock.time() and time.monotonic() < deadline:
        time.sleep(0.01)
    record = repo.get(job_id)
    assert record.lease_expires_at > clock.time()
    assert (record.status, record.attempts) == (JobStatus.RUNNING, 1)
    release.set()
    result = manager.wait(job_id, timeout=WAIT)
    assert (result.status, result.attempts, result.result, len(starts)) == (JobStatus.COMPLETED, 1, "done once", 1)


class _WatchedClock:
    """Delegates to a clock; tells when a housekeeper thread first read the wall clock
    (the reading a housekeeper measures jumps from)."""

    def __init__(self, clock: FakeClock) -> None:
        self._clock = clock
        self.read_by_housekeeper = threading.Event()

    def time(self) -> float:
        if threading.current_thread().name == "jobcore-housekeeper":
            self.read_by_housekeeper.set()
        return self._clock.time()

    def monotonic(self) -> float:
        return self._clock.monotonic()

    def sleep(self, delay: float) -> None:
        self._clock.sleep(delay)

    def subscribe(self, listener: Any) -> None:
        self._clock.subscribe(listener)


def test_a_sub_second_step_counts_as_a_jump_under_a_short_lease(make_manager: Any, db_path: str) -> None:
    # Given a job running on one manager (lease 1.2 s, a heartbeat every 0.4 s) and a
    # second manager on the same database, whose recovery comes due every 0.3 s
    clock = FakeClock()
    starts, release, long_job = _counted_long_job()

    runner = make_manager(db_path, clock=clock, lease_timeout=1.2, poll_interval=0.4).start()
    job_id = runner.enqueue(Job(function=long_job, max_retries=5))
    watched = _WatchedClock(clock)
    other = make_manager(db_path, clock=watched, lease_timeout=1.2, poll_interval=0.3).start()
    assert watched.read_by_housekeeper.wait(WAIT)
    deadline = time.monotonic() + WAIT
    while not starts and time.monotonic() < deadline:
        time.sleep(0.01)
    assert starts

    # When the wall clock steps 0.9 s ahead (under a second), then the other manager's
    # recovery comes due before the runner's next heartbeat: the lease taken at the
    # claim has lapsed on the wall clock by then
    clock.jump(0.9)
    clock.advance(0.35)

    # Then the runner renews at once, and the other manager takes nothing back
    repo = runner.repository
    while (repo.get(job_id).lease_expires_at or 0.0) < clock.time() and time.monotonic() < deadline:
        time.sleep(0.01)
    record = repo.get(job_id)
    assert (record.lease_expires_at or 0.0) > clock.time()
    assert (record.status, record.attempts) == (JobStatus.RUNNING, 1)
    release.set()
    result = runner.wait(job_id, timeout=WAIT)
    assert (result.status, result.attempts, len(starts)) == (JobStatus.COMPLETED, 1, 1)
    assert other.poll(job_id).attempts == 1


def test_scheduled_jobs_survive_a_backward_jump(make_manager: Any, db_path: str) -> None:
    clock = FakeClock()
    manager = make_manager(db_path, clock=clock).start()
    job_id = manager.enqueue(Job(function=lambda: "ran", scheduled_at=None))
    assert manager.wait(job_id, timeout=WAIT).result == "ran"
    clock.jump(-3600)
    again = manager.enqueue(Job(function=lambda: "still runs"))
    assert manager.wait(again, timeout=WAIT).result == "still runs"


def test_unwritable_database_raises_clearly_and_keeps_what_was_accepted(make_manager: Any,
                                                                        tmp_path: Any) -> None:
    path = str(tmp_path / "jobs.db")
    manager = make_manager(path)
    manager.register_function("echo", lambda x: x)
    accepted = manager.enqueue(Job(function_name="echo", args=(7,)))
    holder = sqlite3.connect(path, timeout=0, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        blocked = make_manager(SQLiteRepository(path, busy_timeout=0.1), producer=True)
        with pytest.raises(RepositoryError, match="locked"):
            blocked.enqueue(Job(function_name="echo", args=(8,)))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert manager.get_stats()["total"] == 1
    manager.start()
    assert manager.wait(accepted, timeout=WAIT).result == 7


def test_a_database_in_a_directory_that_does_not_exist_is_refused_naming_it(tmp_path: Any) -> None:
    missing = tmp_path / "no-such-dir"
    with pytest.raises(RepositoryError, match=f"its directory '{missing}' does not exist"):
        SQLiteRepository(str(missing / "jobs.db"))
    assert not missing.exists()  # nothing created on the way


def test_a_path_that_is_a_directory_is_refused_saying_so(tmp_path: Any) -> None:
    # (it said "cannot open or create the file (check its permissions ...)")
    with pytest.raises(RepositoryError, match="it is a directory, not a database file"):
        SQLiteRepository(str(tmp_path))


def test_a_job_whose_last_attempt_was_lost_is_dead_lettered_with_a_notification(
        make_manager: Any, db_path: str) -> None:
    from jobcore import CallbackNotificationChannel

    events: list[dict[str, Any]] = []
    repo = SQLiteRepository(db_path)
    producer = make_manager(repo, producer=True)
    job_id = producer.enqueue(Job(function_name="echo", args=(1,), max_retries=0))
    now = time.time()
    assert repo.claim(job_id, "dead-worker", now - 120, now - 60) is not None  # lease long gone

    manager = make_manager(db_path, lease_timeout=1.0, poll_interval=0.1)  # (recovery: a lease after start)
    manager.register_function("echo", lambda x: x)
    manager.add_notification_channel(CallbackNotificationChannel(events.append))
    manager.start()
    result = manager.wait(job_id, timeout=WAIT)
    manager.stop()

    assert (result.status, result.error_type) == (JobStatus.FAILED, "WorkerLost")
    assert [(e["event"], e["job_id"], e["error_type"]) for e in events] == [
        ("job.dead_lettered", job_id, "WorkerLost")]


def test_a_version_1_database_is_migrated(tmp_path: Any) -> None:
    path = str(tmp_path / "old.db")
    SQLiteRepository(path).close()
    raw = sqlite3.connect(path)
    raw.execute("ALTER TABLE jobs DROP COLUMN memory_limit")  # as version 1 created it
    raw.execute("UPDATE jobcore_meta SET value = '1' WHERE key = 'schema_version'")
    raw.commit()
    raw.close()

    repo = SQLiteRepository(path)
    from jobcore import JobManager
    from jobcore.repository.sqlite_schema import SCHEMA_VERSION
    manager = JobManager(repo)
    manager.register_function("echo", lambda x: x)
    job_id = manager.enqueue(Job(function_name="echo", args=(5,)))
    assert manager.run_pending() == 1
    assert manager.poll(job_id).result == 5
    check = sqlite3.connect(path)
    assert check.execute("SELECT value FROM jobcore_meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    check.close()
    manager.close()


def _corrupt(db_path: str, job_id: str, column: str, sql_value: str) -> None:
    """Set `column` of one job's row to the SQL literal `sql_value`, as a hand edit would."""
    raw = sqlite3.connect(db_path)
    raw.execute(f"UPDATE jobs SET {column} = {sql_value} WHERE id = ?", (job_id,))
    raw.commit()
    raw.close()


@pytest.mark.parametrize("functions", [1, 2])
def test_a_text_priority_fails_its_job_alone_and_the_manager_starts(make_manager: Any, db_path: str,
                                                                     functions: int) -> None:
    # (with two functions the queue is read per function and merged: its sort failed too)
    manager = make_manager(db_path)
    manager.register_function("echo", lambda x: x)
    if functions == 2:
        manager.register_function("other", lambda x: x)
        manager.enqueue(Job(function_name="other", args=(0,), scheduled_at=datetime.now() + timedelta(hours=1)))
    fine = [manager.enqueue(Job(function_name="echo", args=(n,))) for n in range(3)]
    broken = manager.enqueue(Job(function_name="echo", args=(9,)))
    _corrupt(db_path, broken, "priority", "'abc'")

    manager.start()  # the ready heap once failed here on -'abc'
    bad = manager.wait(broken, timeout=WAIT)
    assert (bad.status, bad.error_type, bad.attempts) == (JobStatus.FAILED, "CorruptJob", 1)
    assert "cannot be decoded" in bad.error and "priority holds 'abc'" in bad.error
    assert [manager.wait(job_id, timeout=WAIT).result for job_id in fine] == [0, 1, 2]


@pytest.mark.parametrize("functions", [1, 2])
@pytest.mark.parametrize("sql_value, shown", [("'soon'", "'soon'"), ("x'00'", "b'\\x00'"), ("1e999", "inf")])
def test_a_due_time_that_is_not_a_time_fails_its_job_alone_once_started(
        make_manager: Any, db_path: str, functions: int, sql_value: str, shown: str) -> None:
    # given a scheduled job whose due time was edited to text, bytes or infinity (SQLite's
    # `run_at <= now` is never true for those: the job stayed SCHEDULED for ever)
    manager = make_manager(db_path)
    manager.register_function("echo", lambda x: x)
    if functions == 2:
        manager.register_function("other", lambda x: x)
        manager.enqueue(Job(function_name="other", args=(0,), scheduled_at=datetime.now() + timedelta(hours=2)))
    in_an_hour = datetime.now() + timedelta(hours=1)
    later = manager.enqueue(Job(function_name="echo", args=(1,), scheduled_at=in_an_hour))
    _corrupt(db_path, later, "run_at", sql_value)
    told = f"run_at holds {shown}, not a time"
    before = manager.poll(later)
    assert before.status is JobStatus.SCHEDULED and told in before.error

    # when the manager starts (the timers once failed here on 'soon' > now)
    manager.start()

    # then that job fails alone as corrupt, naming the column, and the others run
    bad = manager.wait(later, timeout=WAIT)
    assert (bad.status, bad.error_type, bad.attempts) == (JobStatus.FAILED, "CorruptJob", 1)
    assert told in bad.error
    assert manager.wait(manager.enqueue(Job(function_name="echo", args=(2,))), timeout=WAIT).result == 2
    assert [job.id for job, _ in manager.get_dead_letter_queue()] == [later]


def test_a_due_time_that_is_not_a_time_fails_its_job_in_run_pending(db_path: str) -> None:
    # given a manager that is not started, and a scheduled job whose due time is text
    manager = JobManager(db_path)
    try:
        manager.register_function("echo", lambda x: x)
        later = manager.enqueue(Job(function_name="echo", args=(1,),
                                    scheduled_at=datetime.now() + timedelta(hours=1)))
        fine = manager.enqueue(Job(function_name="echo", args=(2,)))
        _corrupt(db_path, later, "run_at", "'garbage'")
        # when it runs what is ready, then the corrupt job is failed with the rest
        assert manager.run_pending() == 2
        bad = manager.poll(later)
        assert (bad.status, bad.error_type) == (JobStatus.FAILED, "CorruptJob")
        assert "run_at holds 'garbage', not a time" in bad.error
        assert manager.poll(fine).result == 2
    finally:
        manager.close()


def test_a_running_job_whose_lease_is_not_a_time_is_taken_back(make_manager: Any, db_path: str) -> None:
    # given a job claimed by a worker that died, its lease edited to text (SQLite's
    # `lease_expires_at < now` is never true for text: it stayed RUNNING for ever)
    repo = SQLiteRepository(db_path)
    producer = make_manager(repo, producer=True)
    job_id = producer.enqueue(Job(function_name="echo", args=(1,)))
    now = time.time()
    assert repo.claim(job_id, "dead-worker", now, now + 3600) is not None
    _corrupt(db_path, job_id, "lease_expires_at", "'garbage'")

    # when a manager runs on the store (recovering leases often)
    # then the job is taken back and runs again, and its log tells why
    messages = runs_again_with_its_reason(make_manager, db_path, job_id,
                                          "lease_expires_at held 'garbage', not a time")
    assert any("dead-worker lost its lease on attempt 1" in m for m in messages), messages


def test_recovery_gives_a_lease_that_is_not_a_time_one_round_to_be_renewed(db_path: str) -> None:
    # given a running job whose lease is text: its worker may be alive (it renews its leases
    # at each heartbeat), so recovery must not take the job from it at once
    repo = SQLiteRepository(db_path)
    try:
        from jobcore.records import record_for
        now = time.time()
        (job_id,) = repo.insert([record_for(Job(function_name="echo", args=(1,)), now)], now)
        assert repo.claim(job_id, "worker", now, now + 60) is not None
        _corrupt(db_path, job_id, "lease_expires_at", "'garbage'")

        # when recovery runs, the lease is made to end now, and the job stays with its worker
        first = repo.recover(now)
        assert (first.requeued, first.failed, first.cancelled) == ((), (), ())
        stored = repo.get(job_id)
        assert (stored.status, stored.lease_expires_at, stored.decode_error) == (JobStatus.RUNNING, now, None)
        # and a worker that renews it keeps it
        assert repo.heartbeat("worker", [job_id], now + 60, now) == []
        assert repo.recover(now + 1).requeued == ()
        # but one that does not loses it at the next round
        _corrupt(db_path, job_id, "lease_expires_at", "'garbage'")
        assert repo.recover(now + 2).requeued == ()
        assert [entry.job_id for entry in repo.recover(now + 3).requeued] == [job_id]
        assert repo.get(job_id).status is JobStatus.PENDING
    finally:
        repo.close()


def test_a_text_timeout_fails_its_job_and_the_worker_thread_survives(make_manager: Any,
                                                                      db_path: str) -> None:
    manager = make_manager(db_path, max_workers=1)
    manager.register_function("echo", lambda x: x)
    broken = manager.enqueue(Job(function_name="echo", args=(1,), timeout=5.0, priority=100))
    _corrupt(db_path, broken, "timeout", "'t'")

    manager.start()
    bad = manager.wait(broken, timeout=WAIT)
    assert (bad.status, bad.error_type, bad.attempts) == (JobStatus.FAILED, "CorruptJob", 1)
    assert "timeout holds 't', not a number" in bad.error
    # The one worker thread lived on (it once died on now + 't', and the job went back to
    # pending to kill the next thread that claimed it).
    after = [manager.enqueue(Job(function_name="echo", args=(n,))) for n in range(3)]
    assert [manager.wait(job_id, timeout=WAIT).result for job_id in after] == [0, 1, 2]
    assert manager.poll(broken).attempts == 1


@pytest.mark.parametrize("stored", ["0", "-1.5"])
def test_a_timeout_enqueue_would_refuse_fails_its_job_as_corrupt_unrun(make_manager: Any, db_path: str,
                                                                       stored: str) -> None:
    # A timeout of 0 or less (a hand edit) ran the function on every attempt, each timed
    # out as it began and retried: its side effects four times over.
    ran: list[int] = []
    manager = make_manager(db_path, max_workers=1)
    manager.register_function("echo", lambda x: ran.append(x))
    broken = manager.enqueue(Job(function_name="echo", args=(1,), timeout=5.0))
    _corrupt(db_path, broken, "timeout", stored)
    manager.start()
    bad = manager.wait(broken, timeout=WAIT)
    assert (bad.status, bad.error_type, bad.attempts) == (JobStatus.FAILED, "CorruptJob", 1)
    assert "not a number > 0" in bad.error and ran == []


def test_a_log_row_jobcore_never_wrote_leaves_the_log_readable(make_manager: Any, db_path: str) -> None:
    # A time of text or past the times jobcore keeps, or a BLOB, in a log row (a hand edit)
    # made get_logs raise: the job's log, its dashboard page and `jobcore logs` failed.
    manager = make_manager(db_path, log_interval=0)

    def logs() -> None:
        for line in ("first", "second", "third"):
            current_job().log(line)  # type: ignore[union-attr]

    manager.register_function("logs", logs)
    job_id = manager.enqueue(Job(function_name="logs"))
    manager.run_pending()
    raw = sqlite3.connect(db_path)
    ids = [row[0] for row in raw.execute("SELECT id FROM job_logs WHERE job_id = ? AND message IN"
                                         " ('first', 'second', 'third') ORDER BY id", (job_id,))]
    raw.execute("UPDATE job_logs SET at = 'noon' WHERE id = ?", (ids[0],))
    raw.execute("UPDATE job_logs SET at = 1e300, level = X'6869' WHERE id = ?", (ids[1],))
    raw.execute("UPDATE job_logs SET message = X'74686972642c206279746573' WHERE id = ?", (ids[2],))
    raw.commit()
    raw.close()
    lines = [(entry.timestamp, entry.level, entry.message) for entry in manager.get_logs(job_id)]
    unknown = datetime.fromtimestamp(0)  # (an unusable time reads as 0)
    assert lines[:2] == [(unknown, "info", "first"), (unknown, "hi", "second")]
    assert lines[2][0] > unknown and lines[2][1:] == ("info", "third, bytes")
    assert [entry.message for entry in manager.get_logs(job_id, offset=1, limit=1)] == ["second"]


def test_claims_give_a_row_with_a_number_of_the_wrong_kind_a_decode_error(db_path: str) -> None:
    from jobcore.records import record_for

    repo = SQLiteRepository(db_path)
    try:
        jobs = [Job(function_name="echo", args=(n,)) for n in range(3)]
        jobs[1].tags = {"with-tags"}  # not plain: claimed with its whole row
        now = time.time()
        ids = repo.insert([record_for(job, now) for job in jobs], now)
        _corrupt(db_path, ids[0], "retry_delay", "'soon'")  # plain: the claimed-row fast path
        _corrupt(db_path, ids[1], "created_at", "'x'")

        _, claimed = repo.apply([], ids, "worker", now, now + 60)
        by_id = {record.id: record for record in claimed}
        assert set(by_id) == set(ids)
        assert "retry_delay holds 'soon', not a number" in (by_id[ids[0]].decode_error or "")
        assert by_id[ids[0]].retry_delay == 1.0  # a harmless default
        assert "created_at holds 'x', not a time" in (by_id[ids[1]].decode_error or "")
        assert by_id[ids[1]].created_at == 0.0
        assert by_id[ids[2]].decode_error is None and by_id[ids[2]].args == (2,)
    finally:
        repo.close()


def test_tags_that_are_not_json_leave_tag_filters_working(make_manager: Any, db_path: str) -> None:
    manager = make_manager(db_path)
    manager.register_function("echo", lambda x: x)
    good = manager.enqueue(Job(function_name="echo", args=(1,), tags={"nightly"}))
    broken = manager.enqueue(Job(function_name="echo", args=(2,), tags={"other"}))
    _corrupt(db_path, broken, "tags", "'{not json'")

    assert [r.job_id for r in manager.list_jobs(tags="nightly")] == [good]
    assert manager.list_jobs(tags="other") == []  # the corrupt row reads as tagless
    listed = {r.job_id: r for r in manager.list_jobs()}
    assert set(listed) == {good, broken}
    assert listed[good].error is None
    assert "cannot be decoded" in (listed[broken].error or "")
    assert "cannot be decoded" in (manager.poll(broken).error or "")

    manager.start()
    bad = manager.wait(broken, timeout=WAIT)
    assert (bad.status, bad.error_type) == (JobStatus.FAILED, "CorruptJob")
    assert manager.wait(good, timeout=WAIT).result == 1


@pytest.mark.parametrize("column, sql_value, told", [
    ("metadata", "'[1]'", "metadata holds [1], not a JSON object"),
    ("tags", """'{"a": 1}'""", "tags holds {'a': 1}, not a list of strings"),
    ("tags", "'[1, 2]'", "tags holds [1, 2], not a list of strings"),
    ("depends_on", """'"x"'""", "depends_on holds 'x', not a list of strings"),
    ("progress_details", "'[1]'", "progress_details holds [1], not a JSON object"),
    ("created_at", "'x'", "created_at holds 'x', not a time"),
    ("created_at", "1e300", "created_at holds 1e+300, not a time"),
    ("max_retries", "'z'", "max_retries holds 'z', not an integer"),
    ("progress", "'p'", "progress holds 'p', not a number"),
    ("run_at", "'soon'", "run_at holds 'soon', not a time"),  # a pending job's due time
    ("scheduled_at", "'x'", "scheduled_at holds 'x', not a time"),
])
def test_a_field_of_the_wrong_shape_fails_its_job_alone(make_manager: Any, db_path: str, column: str,
                                                         sql_value: str, told: str) -> None:
    manager = make_manager(db_path)
    manager.register_function("echo", lambda x: x)
    fine = [manager.enqueue(Job(function_name="echo", args=(n,), metadata={"n": n})) for n in range(3)]
    broken = manager.enqueue(Job(function_name="echo", args=(9,)))
    _corrupt(db_path, broken, column, sql_value)

    # Listing and polling show every job; only the corrupt one carries an error.
    listed = {r.job_id: r for r in manager.list_jobs()}
    assert set(listed) == {*fine, broken}
    assert [listed[job_id].error for job_id in fine] == [None, None, None]
    shown = manager.poll(broken)
    assert shown.status is JobStatus.PENDING and shown.error_type == "CorruptJob"
    assert "cannot be decoded" in shown.error and told in shown.error
    assert manager.poll(fine[0]).metadata == {"n": 0}

    manager.start()
    bad = manager.wait(broken, timeout=WAIT)
    assert (bad.status, bad.error_type) == (JobStatus.FAILED, "CorruptJob")
    assert told in bad.error
    assert [manager.wait(job_id, timeout=WAIT).result for job_id in fine] == [0, 1, 2]
    assert [job.id for job, _ in manager.get_dead_letter_queue()] == [broken]
    assert len(manager.list_jobs()) == 4


def _stored(db_path: str, seq: int) -> tuple[Any, ...]:
    """(status, error_type, error) of the row `seq`, read as another tool would."""
    raw = sqlite3.connect(db_path)
    try:
        return raw.execute("SELECT status, error_type, error FROM jobs WHERE seq = ?", (seq,)).fetchone()
    finally:
        raw.close()


def test_a_row_whose_id_is_bytes_fails_alone_and_the_others_run(make_manager: Any, db_path: str) -> None:
    # given five jobs, one whose id was edited to bytes (it once went into the ready queue,
    # every claim failed on it and the manager retried them for ever with its outcomes:
    # two jobs stayed RUNNING and nothing else ran)
    producer = make_manager(db_path, producer=True)
    ids = [producer.enqueue(Job(function_name="work", args=(n,))) for n in range(5)]
    seq = producer.repository.get(ids[2]).seq
    _corrupt(db_path, ids[2], "id", "CAST(id AS BLOB)")

    # when a manager runs them (recovering often)
    manager = make_manager(db_path, max_workers=2, lease_timeout=0.4, poll_interval=0.05)
    manager.register_function("work", lambda x: x)
    manager.start()

    # then the others complete
    fine = ids[:2] + ids[3:]
    assert [manager.wait(job_id, timeout=WAIT).result for job_id in fine] == [0, 1, 3, 4]
    # and the corrupt one is failed by the next recovery round, naming its id
    deadline = time.monotonic() + WAIT
    while _stored(db_path, seq)[0] == "pending" and time.monotonic() < deadline:
        assert manager.wait(manager.enqueue(Job(function_name="work", args=(9,))), timeout=WAIT).result == 9
    status, error_type, error = _stored(db_path, seq)
    assert (status, error_type) == ("failed", "CorruptJob")
    assert f"stored job {ids[2]} cannot be decoded: id holds b'" in error and "not text" in error
    # and listing shows it, its id as text, with that error
    shown = {r.job_id: r for r in manager.list_jobs(limit=None)}[ids[2]]
    assert (shown.status, shown.error_type) == (JobStatus.FAILED, "CorruptJob")


def test_reading_the_queue_never_gives_out_an_id_that_is_not_text(db_path: str) -> None:
    from jobcore.records import record_for

    repo = SQLiteRepository(db_path)
    try:
        now = time.time()
        jobs = [Job(function_name="work", args=(0,)),
                Job(function_name="work", args=(1,), scheduled_at=datetime.now() + timedelta(hours=1)),
                Job(function_name="work", args=(2,))]
        ids = repo.insert([record_for(job, now) for job in jobs], now)
        seqs = [repo.get(job_id).seq for job_id in ids]
        for job_id in ids[:2]:
            _corrupt(db_path, job_id, "id", "CAST(id AS BLOB)")
        # the queue reads skip them, and claims by number do not take them
        assert [e.job_id for e in repo.ready(["work"], 10)] == [ids[2]]
        assert repo.scheduled(["work"], 10) == []
        _, claimed = repo.apply([], [], "worker", now, now + 60, top_up={"work"}, up_to=5)
        assert [r.id for r in claimed] == [ids[2]]
        # and the next recovery fails them (they cannot be named: not reported)
        assert repo.recover(now).failed == ()
        for seq, job_id in zip(seqs[:2], ids[:2]):
            status, error_type, error = _stored(db_path, seq)
            assert (status, error_type) == ("failed", "CorruptJob")
            assert f"stored job {job_id} cannot be decoded: id holds b'" in error and "not text" in error
    finally:
        repo.close()


def test_an_exchange_whose_claims_fail_with_a_bug_records_its_outcomes_alone(db_path: str) -> None:
    # given a job claimed and run, its outcome to be recorded with a claim the repository
    # cannot make (an id that is not text: json.dumps raised TypeError)
    from jobcore.context import JobContext
    from jobcore.execution import Outcome
    from jobcore.recorder import Finished

    manager = JobManager(db_path)
    try:
        manager.register_function("work", lambda x: x)
        job_id = manager.enqueue(Job(function_name="work", args=(1,)))
        recorder = manager._pool._recorder
        (record,) = recorder.exchange([], [job_id])
        finished = Finished(record, JobContext(record.id, record.name, record.attempts, manager._pool),
                            Outcome(value=1), 0.0)
        # when the exchange is made
        claimed = recorder.exchange([finished], [b"poison"])  # type: ignore[list-item]
        # then the claim is dropped and the outcome recorded (it was retried for ever)
        assert claimed == []
        assert (manager.poll(job_id).status, manager.poll(job_id).result) == (JobStatus.COMPLETED, 1)
        # and with no outcome, the claim is dropped too (not retried as storage trouble)
        assert recorder.exchange([], [b"poison"]) == []  # type: ignore[list-item]
    finally:
        manager.close()


def test_a_status_jobcore_never_writes_reads_as_a_corrupt_failure(db_path: str) -> None:
    # given a row whose status was edited to one jobcore never writes
    manager = JobManager(db_path, producer=True)
    try:
        job_id = manager.enqueue(Job(function_name="work", args=(1,)))
        other = manager.enqueue(Job(function_name="work", args=(2,)))
        _corrupt(db_path, job_id, "status", "'PENDING'")
        # then poll and listing show it failed, as corrupt, naming the status
        shown = manager.poll(job_id)
        assert (shown.status, shown.error_type) == (JobStatus.FAILED, "CorruptJob")
        assert "status holds 'PENDING', not one jobcore writes" in shown.error
        assert {r.job_id: r.status for r in manager.list_jobs()}[job_id] is JobStatus.FAILED
        # and the counts give it as failed, not completed
        stats = manager.get_stats()
        assert (stats["total"], stats["pending"], stats["failed"], stats["completed"]) == (2, 1, 1, 0)
        # and cleanup of every finished job deletes it (it once never did), and only it
        assert manager.cleanup_old_results(0) == 1
        assert manager.poll(job_id) is None and manager.poll(other).status is JobStatus.PENDING
    finally:
        manager.close()


def test_a_status_jobcore_never_writes_can_be_retried_or_cleaned_up_by_age(db_path: str) -> None:
    clock = FakeClock()
    manager = JobManager(db_path, clock=clock)
    try:
        manager.register_function("work", lambda x: x)
        retried = manager.enqueue(Job(function_name="work", args=(1,)))
        old = manager.enqueue(Job(function_name="work", args=(2,)))
        for job_id in (retried, old):
            _corrupt(db_path, job_id, "status", "'weird'")
        # retry() puts it back to pending (it once returned False), and it runs
        assert manager.retry(retried)
        assert manager.run_pending() == 1 and manager.poll(retried).result == 1
        # cleanup by age takes one never finished by when it was created
        assert manager.cleanup_old_results(1) == 0
        clock.advance(2 * 86400)
        assert manager.cleanup_old_results(1) == 2  # it, and the job completed then
        assert manager.poll(old) is None
    finally:
        manager.close()


@pytest.mark.parametrize("sql_value, shown", [("'x'", "'x'"), ("-1", "-1")])
def test_a_pending_job_whose_blocked_count_is_unusable_fails_alone(make_manager: Any, db_path: str,
                                                                    sql_value: str, shown: str) -> None:
    # given a job without dependencies whose count of unfinished ones was edited to
    # something that never reaches 0 (it stayed PENDING for ever, with no error)
    producer = make_manager(db_path, producer=True)
    ids = [producer.enqueue(Job(function_name="work", args=(n,))) for n in range(3)]
    _corrupt(db_path, ids[1], "blocked", sql_value)
    told = f"blocked holds {shown}, not an integer >= 0"
    before = producer.poll(ids[1])
    assert before.status is JobStatus.PENDING and before.error_type == "CorruptJob" and told in before.error

    # when a manager starts (and recovers, a lease later)
    manager = make_manager(db_path, max_workers=2, lease_timeout=1.0, poll_interval=0.1)
    manager.register_function("work", lambda x: x)
    manager.start()

    # then it fails alone as corrupt, named in the dead-letter queue, and the others run
    bad = manager.wait(ids[1], timeout=WAIT)
    assert (bad.status, bad.error_type, bad.attempts) == (JobStatus.FAILED, "CorruptJob", 0)
    assert told in bad.error
    assert [manager.wait(job_id, timeout=WAIT).result for job_id in (ids[0], ids[2])] == [0, 2]
    assert [job.id for job, _ in manager.get_dead_letter_queue()] == [ids[1]]
