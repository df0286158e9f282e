"""Managers and worker processes on PostgreSQL (a real server, a schema per test; see
`pg_fixtures`): what a user sees running jobs there, and processes sharing one database.
The repository's own contract and promises: test_postgres.py.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime, timedelta
from typing import Any, Callable, Iterator

import pytest

import pg_fixtures
from pg_fixtures import *  # noqa: F401,F403 (the fixtures: server, schema, repo)
from pg_fixtures import ROOT, WAIT, Schema, psycopg
from jobcore import Job, JobManager, JobPriority, JobStatus, RetryableError, current_job
from jobcore.claims import ClaimCheck
from jobcore.clock import SystemClock
from recovery_checks import runs_again_with_its_reason, runs_once_through_a_lock
from waiting import wait_until
from subprocesses import close_pipes

pytestmark = pg_fixtures.MARKS


# -- managers on PostgreSQL ----------------------------------------------------------------------
@pytest.fixture
def manager_on(schema: Schema, make_manager: Callable[..., JobManager]) -> Callable[..., JobManager]:
    def make(**options: Any) -> JobManager:
        options.setdefault("poll_interval", 0.2)
        return make_manager(schema.repository(), **options)
    return make


def test_priorities_run_highest_first_and_fifo_among_equals(manager_on: Callable[..., JobManager]) -> None:
    order: list[str] = []
    manager = manager_on(max_workers=1)
    manager.register_function("record", order.append)
    jobs = [Job(function_name="record", args=(name,), priority=priority) for name, priority in
            [("low", JobPriority.LOW), ("n1", JobPriority.NORMAL), ("crit", JobPriority.CRITICAL),
             ("n2", JobPriority.NORMAL), ("high", JobPriority.HIGH), ("n3", JobPriority.NORMAL)]]
    ids = manager.enqueue_many(jobs)
    manager.start()
    for job_id in ids:
        assert manager.wait(job_id, timeout=WAIT).status is JobStatus.COMPLETED
    assert order == ["crit", "high", "n1", "n2", "n3", "low"]


def test_a_store_deeper_than_the_window_runs_every_job_without_a_periodic_read(
        manager_on: Callable[..., JobManager], monkeypatch: Any) -> None:
    # given a manager that reads 40 ready jobs at a time, its periodic reads and looks for
    # changes a minute apart, not started while 300 jobs are stored (so it keeps none)
    import jobcore.loading
    monkeypatch.setattr(jobcore.loading, "READY_LOAD_LIMIT", 40)
    manager = manager_on(max_workers=2, poll_interval=60.0, discovery_interval=60.0)
    ran: list[int] = []
    manager.register_function("task", ran.append)
    ids = manager.enqueue_many([Job(function_name="task", args=(n,), priority=n % 2) for n in range(300)])
    assert len(manager._queue) == 0
    # when it starts, then every job runs once, read from the store window after window
    manager.start()
    assert all(manager.wait(job_id, timeout=WAIT).status is JobStatus.COMPLETED for job_id in ids)
    assert sorted(ran) == list(range(300))
    assert {n % 2 for n in ran[:40]} == {1}  # the best window first


def test_jobs_enqueued_while_the_workers_run_are_stored_alone_not_in_the_enqueues_exchanges(
        schema: Schema, make_manager: Callable[..., JobManager]) -> None:
    # given a started manager on PostgreSQL whose enqueue-made exchanges (`insert_and_apply`:
    # BEGIN, the outcomes, the INSERT, the claims, COMMIT; six round trips) are counted
    from jobcore.postgres import PostgresRepository

    exchanges: list[str] = []

    class Counted(PostgresRepository):
        def insert_and_apply(self, record: Any, *args: Any, **kwargs: Any) -> Any:
            exchanges.append(record.id)
            return super().insert_and_apply(record, *args, **kwargs)

    manager = make_manager(Counted(schema.server, schema=schema.name), max_workers=4, poll_interval=0.2)
    manager.register_function("double", lambda x: 2 * x)
    manager.start()
    # when one thread enqueues jobs in a row while the workers run the ones before
    ids = [manager.enqueue(Job(function_name="double", args=(n,))) for n in range(60)]
    # then each is stored alone (one round trip), and every one runs
    assert [manager.wait(job_id, timeout=WAIT).result for job_id in ids] == [2 * n for n in range(60)]
    assert exchanges == []


def test_results_progress_and_logs_are_stored(manager_on: Callable[..., JobManager]) -> None:
    manager = manager_on().start()

    def report(n: int, progress_callback: Any = None) -> dict[str, Any]:
        progress_callback(0.5, "half way", step=1)
        current_job().log("hello from the job")
        return {"n": n, "items": [1, 2]}

    job_id = manager.enqueue(Job(report, args=(7,)))
    result = manager.wait(job_id, timeout=WAIT)
    assert (result.status, result.result, result.progress) == (JobStatus.COMPLETED, {"n": 7, "items": [1, 2]}, 1.0)
    assert result.progress_message == "half way" and result.progress_details == {"step": 1}
    assert any("hello from the job" in entry.message for entry in manager.get_logs(job_id))


def test_many_waiters_notice_jobs_another_manager_runs_through_batched_reads(
        manager_on: Callable[..., JobManager], schema: Schema) -> None:
    # given a producer that stores jobs it cannot run, its row and batched reads counted,
    # and a thread waiting for each job
    producer = manager_on(producer=True)
    repository = producer.repository
    rows, batches = collections.Counter[str](), []
    read_row, read_statuses = repository.get_without_args, repository.get_statuses
    lock, all_polled = threading.Lock(), threading.Event()  # lock guards rows and batches

    def counted_row(job_id: str) -> Any:
        with lock:
            rows[job_id] += 1
        return read_row(job_id)

    def counted_statuses(job_ids: Any) -> Any:
        with lock:
            batches.append(list(job_ids))
            if {job_id for batch in batches for job_id in batch} == set(ids):
                all_polled.set()  # each waiter read its row, then the poller read its status
        return read_statuses(job_ids)

    repository.get_without_args = counted_row  # type: ignore[method-assign]
    repository.get_statuses = counted_statuses  # type: ignore[method-assign]
    ids = producer.enqueue_many([Job(function_name="square", args=(n,)) for n in range(30)])
    results: dict[str, Any] = {}
    threads = [threading.Thread(target=lambda job_id=job_id: results.__setitem__(
        job_id, producer.wait(job_id, timeout=WAIT))) for job_id in ids]
    for thread in threads:
        thread.start()
    assert all_polled.wait(WAIT)
    # when another manager on the schema runs them
    runner = manager_on(max_workers=2)
    runner.register_function("square", lambda n: n * n)
    runner.start()
    for thread in threads:
        thread.join(WAIT)
    # then every waiter has its result, having read its own row twice (as it began, and
    # once the batched read found the job ended), whatever the polls in between
    assert [results[job_id].result for job_id in ids] == [n * n for n in range(30)]
    assert rows == {job_id: 2 for job_id in ids}
    assert max(len(batch) for batch in batches) > 1


def test_cancelling_a_running_job_stops_it(manager_on: Callable[..., JobManager]) -> None:
    manager = manager_on().start()
    started = threading.Event()

    def spin(progress_callback: Any = None) -> None:
        started.set()
        while True:
            progress_callback(0.1)
            time.sleep(0.01)

    job_id = manager.enqueue(Job(spin))
    assert started.wait(WAIT)
    assert manager.cancel(job_id) is True
    assert manager.wait(job_id, timeout=WAIT).status is JobStatus.CANCELLED


def test_retries_end_in_the_dead_letter_queue(manager_on: Callable[..., JobManager]) -> None:
    manager = manager_on().start()

    def flaky() -> None:
        raise RetryableError("temporarily unavailable", delay=0.05)

    job_id = manager.enqueue(Job(flaky, max_retries=2))
    result = manager.wait(job_id, timeout=WAIT)
    assert (result.status, result.attempts, result.error_type) == (JobStatus.FAILED, 3, "RetryableError")
    assert [job.id for job, _ in manager.get_dead_letter_queue()] == [job_id]
    assert manager.retry(job_id) is True
    assert manager.wait(job_id, timeout=WAIT).status is JobStatus.FAILED


def test_dependencies_run_in_order_and_failures_cascade(manager_on: Callable[..., JobManager]) -> None:
    manager = manager_on().start()
    order: list[str] = []
    lock = threading.Lock()

    def step(name: str) -> None:
        with lock:
            order.append(name)

    def broken() -> None:
        raise ValueError("no")

    first = Job(step, args=("first",))
    second = Job(step, args=("second",), depends_on=[first.id])
    third = Job(step, args=("third",), depends_on=[second.id])
    doomed = Job(broken, max_retries=0)
    after_doomed = Job(step, args=("never",), depends_on=[doomed.id])
    manager.enqueue_many([third, second, first, doomed, after_doomed])
    assert manager.wait(third.id, timeout=WAIT).status is JobStatus.COMPLETED
    assert order == ["first", "second", "third"]
    cancelled = manager.wait(after_doomed.id, timeout=WAIT)
    assert cancelled.status is JobStatus.CANCELLED and doomed.id in (cancelled.error or "")


def test_an_immediate_manager_runs_a_job_whose_dependencies_completed_before_enqueue_returns(
        manager_on: Callable[..., JobManager]) -> None:
    # The store left the record's `blocked` at its count of dependencies, so the job was
    # taken for one still waiting: left PENDING (and, started, picked up ~50 ms later).
    manager = manager_on(immediate=True)
    manager.register_function("echo", lambda value: value)
    first = manager.enqueue(Job(function_name="echo", args=("first",)))
    second = manager.enqueue(Job(function_name="echo", args=("second",), depends_on=[first]))
    [third] = manager.enqueue_many([Job(function_name="echo", args=("third",), depends_on=[first, second])])
    assert [(manager.poll(i).status, manager.poll(i).result) for i in (first, second, third)] == [
        (JobStatus.COMPLETED, "first"), (JobStatus.COMPLETED, "second"), (JobStatus.COMPLETED, "third")]


def test_a_corrupt_row_fails_alone(manager_on: Callable[..., JobManager], schema: Schema) -> None:
    manager = manager_on()
    manager.register_function("echo", lambda x: x)
    broken = manager.enqueue(Job(function_name="echo", args=(1,)))
    fine = manager.enqueue(Job(function_name="echo", args=(2,)))
    with psycopg.connect(schema.server, autocommit=True) as conn:
        conn.execute(f'UPDATE "{schema.name}".jobs SET payload = %s WHERE id = %s', ("not json {", broken))
    manager.start()
    bad = manager.wait(broken, timeout=WAIT)
    assert (bad.status, bad.error_type, bad.attempts) == (JobStatus.FAILED, "CorruptJob", 1)
    assert "cannot be decoded" in (bad.error or "")
    assert manager.wait(fine, timeout=WAIT).result == 2


def _set_time(schema: Schema, job_id: str, column: str, value: str) -> None:
    """Set a time column of one job's row to `value` (as PostgreSQL reads a float8), by hand."""
    with psycopg.connect(schema.server, autocommit=True) as conn:
        conn.execute(f'UPDATE "{schema.name}".jobs SET {column} = %s::float8 WHERE id = %s', (value, job_id))


@pytest.mark.parametrize("value, shown", [("Infinity", "inf"), ("NaN", "nan"), ("1e300", "1e+300")])
def test_a_due_time_that_is_not_a_time_fails_its_job_alone(manager_on: Callable[..., JobManager], schema: Schema,
                                                           value: str, shown: str) -> None:
    # given a scheduled job whose due time was edited to no usable time (`run_at <= now`
    # is never true of those: it stayed SCHEDULED for ever)
    manager = manager_on()
    manager.register_function("echo", lambda x: x)
    later = manager.enqueue(Job(function_name="echo", args=(1,), scheduled_at=datetime.now() + timedelta(hours=1)))
    _set_time(schema, later, "run_at", value)

    # when the manager starts, then that job fails alone as corrupt, naming the column
    manager.start()
    bad = manager.wait(later, timeout=WAIT)
    assert (bad.status, bad.error_type, bad.attempts) == (JobStatus.FAILED, "CorruptJob", 1)
    assert f"run_at holds {shown}, not a time" in (bad.error or "")
    assert manager.wait(manager.enqueue(Job(function_name="echo", args=(2,))), timeout=WAIT).result == 2


def test_a_running_job_whose_lease_is_not_a_time_is_taken_back(schema: Schema,
                                                                make_manager: Callable[..., JobManager]) -> None:
    # given a job claimed by a worker that died, its lease edited to infinity
    repo = schema.repository()
    job_id = make_manager(repo, producer=True).enqueue(Job(function_name="echo", args=(1,)))
    now = time.time()
    assert repo.claim(job_id, "dead-worker", now, now + 3600) is not None
    _set_time(schema, job_id, "lease_expires_at", "Infinity")

    # when a manager runs on the store, recovering leases often
    # then the job is taken back and runs again, and its log tells why
    runs_again_with_its_reason(make_manager, schema.repository(), job_id, "lease_expires_at held inf, not a time")


@pytest.mark.parametrize("held_by", ["recovery", "own heartbeat", None])
def test_a_claim_check_does_not_take_a_skipped_renewal_for_its_own(schema: Schema, make_manager: Callable[..., JobManager],
                                                                   held_by: Any) -> None:
    # given a job claimed in reserve by a worker that stalled, its lease about to lapse,
    # and its row locked by another transaction for a moment: another process's recovery
    # taking the job back, or the worker's own heartbeat renewing it
    repo = schema.repository()
    job_id = make_manager(repo, producer=True).enqueue(Job(function_name="echo", args=(1,), max_retries=0))
    now = time.time()
    record = repo.claim(job_id, "stalled", now - 20, now + 1)
    assert record is not None
    check = ClaimCheck(repo, "stalled", SystemClock(), 10.0)
    locked = threading.Event()

    def hold_the_row() -> None:
        with psycopg.connect(schema.server) as other:
            other.execute(f'SELECT 1 FROM "{schema.name}".jobs WHERE id = %s FOR UPDATE', (job_id,))
            locked.set()
            time.sleep(0.3)
            change = ("status = 'pending', worker_id = NULL" if held_by == "recovery"
                      else "lease_expires_at = extract(epoch from now()) + 60")
            other.execute(f'UPDATE "{schema.name}".jobs SET {change} WHERE id = %s', (job_id,))
            other.commit()

    holder = threading.Thread(target=hold_the_row)
    if held_by is not None:
        holder.start()
        assert locked.wait(WAIT)

    # when the worker checks its claim before starting the job
    ours = check.still_ours(record, renew=True)
    if held_by is not None:
        holder.join(WAIT)

    # then it does not start it while the row is held (its renewal skipped the row, and
    # the read still showed the job its own: two live workers ran it), nor leaves it
    # RUNNING here unrun (its lease lapsed, and it failed as WorkerLost, never run): it
    # is PENDING, to run once; unheld, the renewal lands and it starts
    row = repo.get(job_id)
    assert row is not None
    if held_by is None:
        assert ours and row.status is JobStatus.RUNNING and row.lease_expires_at > now + 5
    else:
        assert not ours
        assert (row.status, row.worker_id) == (JobStatus.PENDING, None)


def test_a_job_runs_once_through_a_table_lock_longer_than_its_lease(schema: Schema,
                                                                   make_manager: Callable[..., JobManager]) -> None:
    # given two managers on one schema, one running a job, and another program that
    # locks the jobs table (as LOCK TABLE or VACUUM FULL do) for longer than the lease
    @contextlib.contextmanager
    def locked() -> Iterator[None]:
        with psycopg.connect(schema.server) as conn:
            conn.execute(f'LOCK TABLE "{schema.name}".jobs IN ACCESS EXCLUSIVE MODE')
            yield
            conn.rollback()

    # then the job is not taken back: it runs once
    runs_once_through_a_lock(schema.repository, make_manager, locked)


def test_a_cron_schedule_fires_once_per_second_across_two_managers(
        schema: Schema, make_manager: Callable[..., JobManager]) -> None:
    runs: list[str] = []
    lock = threading.Lock()

    def tick() -> None:
        with lock:
            runs.append(current_job().id)

    managers = [make_manager(schema.repository(), poll_interval=0.2) for _ in range(2)]
    for manager in managers:
        manager.periodic("* * * * * *", name="tick")(tick)
    for manager in managers:
        manager.start()
    time.sleep(3.5)
    for manager in managers:
        manager.stop()
    repository = managers[0].repository
    fired = [r for r in repository.list(limit=None) if r.cron is None]
    fire_times = [r.metadata["fire_at"] for r in fired]
    assert len(fire_times) == len(set(fire_times)), fire_times     # each second fired once
    assert 2 <= len(fire_times) <= 5, fire_times
    assert len(runs) == len(set(runs))                              # and each run ran once
    assert len([r for r in repository.list(limit=None) if r.cron is not None]) == 1


# -- processes sharing one database -----------------------------------------------------------
WORKER = textwrap.dedent("""
    import os, sys, time
    from jobcore import JobManager
    from jobcore.postgres import PostgresRepository

    dsn, schema, log, go = sys.argv[1:5]
    lease, poll = float(sys.argv[5]), float(sys.argv[6])

    def record(n):
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, f"{n} {os.getpid()} {time.time():.6f}\\n".encode())
        finally:
            os.close(fd)

    def work(n, pause=0.0):
        record(n)
        time.sleep(pause)
        return n

    def once_then_hang(n):
        with open(log) as f:
            earlier = sum(1 for line in f if line.split()[0] == str(n))
        record(n)
        if not earlier:
            time.sleep(3600)      # the first run hangs until its process is killed
        return n

    manager = JobManager(PostgresRepository(dsn, schema=schema), max_workers=4, lease_timeout=lease,
                         poll_interval=poll)
    manager.register_function("work", work)
    manager.register_function("once_then_hang", once_then_hang)
    while not os.path.exists(go):
        time.sleep(0.01)
    manager.start()
    print("started", flush=True)
    sys.stdin.read()              # until the test closes stdin
    manager.stop(timeout=10)
    manager.close()
""")


class Workers:
    """Worker processes, each a JobManager on the test's schema, and their run log."""

    def __init__(self, schema: Schema, tmp_path: Any) -> None:
        self.schema = schema
        self.script = str(tmp_path / "pg_worker.py")
        self.log = str(tmp_path / "runs.log")
        self.go = str(tmp_path / "go")
        with open(self.script, "w") as f:
            f.write(WORKER)
        open(self.log, "w").close()
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
        self.processes: list[subprocess.Popen[str]] = []

    def spawn(self, lease: float = 30.0, poll: float = 0.2) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, self.script, self.schema.server, self.schema.name, self.log, self.go,
             str(lease), str(poll)], env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.processes.append(process)
        return process

    def go_and_wait_started(self) -> None:
        open(self.go, "w").close()
        for process in self.processes:
            assert process.stdout is not None and process.stdout.readline().strip() == "started"

    def runs(self) -> list[tuple[int, int, float]]:
        with open(self.log) as f:
            return [(int(n), int(pid), float(at)) for n, pid, at in (line.split() for line in f if line.strip())]

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                try:
                    process.communicate(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5)
            close_pipes(process)


@pytest.fixture
def workers(schema: Schema, tmp_path: Any) -> Iterator[Workers]:
    pool = Workers(schema, tmp_path)
    yield pool
    pool.stop()


def _deadlocks(server: str) -> int:
    with psycopg.connect(server) as conn:
        row = conn.execute("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()").fetchone()
    return int(row[0]) if row else 0


def test_two_processes_drain_every_job_exactly_once(workers: Workers, schema: Schema,
                                                   make_manager: Callable[..., JobManager]) -> None:
    # given two worker processes with short leases, and jobs arriving in bursts while they run
    deadlocks = _deadlocks(schema.server)
    producer = make_manager(schema.repository(), producer=True)
    workers.spawn(lease=1.0)
    workers.spawn(lease=1.0)
    workers.go_and_wait_started()
    for start in range(0, 500, 100):
        producer.enqueue_many([Job(function_name="work", args=(n,), kwargs={"pause": 0.002})
                               for n in range(start, start + 100)])
    wait_until(lambda: producer.get_stats()["completed"] == 500, WAIT)
    workers.stop()
    # then every job ran exactly once, both processes took work, and no lease was lost
    runs = workers.runs()
    counts = collections.Counter(n for n, _, _ in runs)
    assert sorted(counts) == list(range(500)) and set(counts.values()) == {1}
    by_process = collections.Counter(pid for _, pid, _ in runs)
    assert len(by_process) == 2, by_process
    assert all(r.attempts == 1 for r in producer.repository.list(limit=None))
    assert _deadlocks(schema.server) == deadlocks  # stats arrive when the workers' sessions end
    print(f"\njobs per process: {sorted(by_process.values())}", file=sys.stderr)


def test_a_job_of_a_sigkilled_worker_completes_on_another_after_its_lease(
        workers: Workers, schema: Schema, make_manager: Callable[..., JobManager]) -> None:
    producer = make_manager(schema.repository(), producer=True)
    victim = workers.spawn(lease=1.0)
    workers.go_and_wait_started()
    job_id = producer.enqueue(Job(function_name="once_then_hang", args=(1,)))
    wait_until(lambda: len(workers.runs()) == 1, WAIT)
    assert workers.runs()[0][1] == victim.pid
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    survivor = workers.spawn(lease=1.0)
    assert survivor.stdout is not None and survivor.stdout.readline().strip() == "started"
    result = producer.wait(job_id, timeout=WAIT)
    assert result.status is JobStatus.COMPLETED and result.attempts >= 2
    assert [pid for _, pid, _ in workers.runs()] == [victim.pid, survivor.pid]


def test_notify_wakes_an_idle_worker_in_another_process(workers: Workers, schema: Schema,
                                                       make_manager: Callable[..., JobManager]) -> None:
    # given an idle worker that, without notifications, would look only every 30 s
    workers.spawn(poll=30.0)
    workers.go_and_wait_started()
    producer = make_manager(schema.repository(), producer=True)
    latencies = []
    for n in range(5):
        time.sleep(0.2)                                  # the worker is idle again
        enqueued_at = time.time()
        job_id = producer.enqueue(Job(function_name="work", args=(n,)))
        assert producer.wait(job_id, timeout=WAIT).status is JobStatus.COMPLETED
        started_at = [at for m, _, at in workers.runs() if m == n][0]
        latencies.append(started_at - enqueued_at)
    print(f"\nNOTIFY pickup latency: median {statistics.median(latencies) * 1000:.0f} ms,"
          f" max {max(latencies) * 1000:.0f} ms", file=sys.stderr)
    assert max(latencies) < 2.0, latencies
