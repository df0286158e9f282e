"""A process that stalls past its lease runs no job beside another attempt of it: a job
claimed in reserve does not start if the claim lapsed while the process stalled and
another process took the job (jobcore.claims), and a job taken back during the stall
and claimed here again waits for its first attempt, still running here, to end
(`PoolState.defer_locked`): SPEC's "never run by two live workers at the same time". A
stall is a fake clock moved past the lease while a job blocks a worker; the other
process is a second repository on the same file.

A stall of the whole machine (every worker process stopped past its lease) takes no job
from a live worker: there the stall is real (SIGSTOP of two worker processes), as an
advance of a fake clock is no stall, and a manager on one takes expired leases back at it."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest

from jobcore import FakeClock, Job, JobManager, JobStatus, SQLiteRepository, current_job
from waiting import wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEASE = 10.0


class CountingReads(SQLiteRepository):
    """Counts `get_without_args`, the read a claim check makes."""

    reads = 0

    def get_without_args(self, job_id: str) -> Any:
        self.reads += 1
        return super().get_without_args(job_id)


def stalled_with_a_job_in_reserve(tmp_path: Any, make_manager: Any) -> tuple[JobManager, FakeClock, dict[str, Any]]:
    """A manager with one worker busy on a blocking job and a tiny job claimed in reserve."""
    clock = FakeClock()
    jobs: dict[str, Any] = {"release": threading.Event(), "ran": []}
    manager: JobManager = make_manager(CountingReads(str(tmp_path / "jobs.db")), max_workers=1,
                                       lease_timeout=LEASE, poll_interval=1.0, clock=clock)
    manager.register_function("block", lambda: jobs["release"].wait(10))
    manager.register_function("tiny", lambda: jobs["ran"].append(1))
    jobs["blocker"], jobs["tiny"] = Job(function_name="block", priority=9), Job(function_name="tiny", priority=1)
    manager.enqueue_many([jobs["blocker"], jobs["tiny"]])
    manager._pool._state.pacing.assume_short_jobs()  # one job a worker claimed in reserve
    manager.start()
    state = manager._pool._state
    wait_until(lambda: jobs["blocker"].id in state.running and [r.id for r in state.buffer] == [jobs["tiny"].id], 10)
    return manager, clock, jobs


def test_a_job_in_reserve_that_another_process_took_during_a_stall_does_not_start(
        tmp_path: Any, make_manager: Any) -> None:
    # given a manager holding a tiny job in reserve while its worker is busy
    manager, clock, jobs = stalled_with_a_job_in_reserve(tmp_path, make_manager)
    tiny = jobs["tiny"]
    # when the process stalls past its lease, and meanwhile another process takes its jobs
    # back and claims the tiny one
    other = SQLiteRepository(str(tmp_path / "jobs.db"))
    later = clock.time() + LEASE + 1
    other.recover(later)
    assert other.claim(tiny.id, "elsewhere", later, later + 60) is not None
    clock.advance(LEASE + 1)
    jobs["release"].set()
    # then the stalled manager, done with the blocking job, does not start it: it stays
    # with the other worker
    state = manager._pool._state
    wait_until(lambda: not state.buffer and not state.running, 10, "the worker to let go of both jobs")
    assert jobs["ran"] == []
    row = other.get(tiny.id)
    assert row is not None and row.status == JobStatus.RUNNING and row.worker_id == "elsewhere"
    other.close()


def test_a_job_in_reserve_still_ours_after_a_stall_runs_once(tmp_path: Any, make_manager: Any) -> None:
    # given a manager holding a tiny job in reserve while its worker is busy
    manager, clock, jobs = stalled_with_a_job_in_reserve(tmp_path, make_manager)
    # when the process stalls past its lease, but no other process took anything
    clock.advance(LEASE + 1)
    jobs["release"].set()
    # then the tiny job is checked and runs here, once, as its first attempt
    result = manager.wait(jobs["tiny"].id, timeout=10)
    assert result.status == JobStatus.COMPLETED and result.attempts == 1
    assert jobs["ran"] == [1]
    assert manager.repository.reads >= 1  # checked before it started


def test_without_a_stall_no_claim_is_checked(tmp_path: Any, make_manager: Any) -> None:
    # given tiny jobs drained with a reserve, no clock moved
    repository = CountingReads(str(tmp_path / "jobs.db"))
    manager: JobManager = make_manager(repository, max_workers=2, lease_timeout=LEASE, clock=FakeClock())
    done: list[int] = []
    manager.register_function("tiny", lambda n: done.append(n))
    manager.enqueue_many([Job(function_name="tiny", args=(n,)) for n in range(100)])
    manager._pool._state.pacing.assume_short_jobs()
    manager.start()
    # when they all run
    wait_until(lambda: len(done) == 100, 10)
    # then no job's claim was read back before it started
    assert repository.reads == 0
    assert sorted(done) == list(range(100))


class Attempts:
    """A job function that blocks each attempt until the test releases it, and notes
    which attempts started and how many ran at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # guards started, now_running and most
        self.started: list[int] = []
        self.now_running = 0
        self.most = 0
        self.release = {1: threading.Event(), 2: threading.Event(), 3: threading.Event()}

    def __call__(self) -> int:
        attempt = current_job().attempt
        with self.lock:
            self.started.append(attempt)
            self.now_running += 1
            self.most = max(self.most, self.now_running)
        try:
            self.release[attempt].wait(10)
        finally:
            with self.lock:
                self.now_running -= 1
        return attempt


def taken_back_and_claimed_here_again(tmp_path: Any, make_manager: Any
                                      ) -> tuple[JobManager, Attempts, str, SQLiteRepository]:
    """A manager whose first attempt of a job still runs after a stall past its lease in
    which another process took the job back (a second repository on the same file),
    and which has then claimed the job again itself, as its second attempt."""
    clock = FakeClock()
    attempts = Attempts()
    manager: JobManager = make_manager(str(tmp_path / "jobs.db"), max_workers=2, lease_timeout=LEASE,
                                       poll_interval=1.0, clock=clock)
    manager.register_function("long", attempts)
    job_id = manager.enqueue(Job(function_name="long", max_retries=3))
    manager.start()
    wait_until(lambda: attempts.started == [1], 10, "the first attempt to start")
    other = SQLiteRepository(str(tmp_path / "jobs.db"))
    later = clock.time() + LEASE + 1
    assert [entry.job_id for entry in other.recover(later).requeued] == [job_id]
    clock.advance(LEASE + 1)  # the manager wakes, finds the job pending again, and claims it
    state = manager._pool._state

    def claimed_again_and_taken_by_a_worker() -> bool:
        row = other.get_without_args(job_id)
        with state.lock:
            taken = not state.buffer and not state.exchanging
        return (row is not None and row.status == JobStatus.RUNNING and row.attempts == 2
                and row.worker_id == manager._pool.worker_id and taken)

    wait_until(claimed_again_and_taken_by_a_worker, 10, "the job to be claimed here again")
    return manager, attempts, job_id, other


def test_a_job_claimed_again_while_its_first_attempt_still_runs_here_waits_for_it(
        tmp_path: Any, make_manager: Any) -> None:
    # given a manager that stalled past its lease while running a job's first attempt,
    # lost the job to recovery and claimed it again itself
    manager, attempts, job_id, other = taken_back_and_claimed_here_again(tmp_path, make_manager)
    state = manager._pool._state
    # then the second attempt does not start beside the first (it is held: its lease renewed)
    with state.lock:
        assert state.running[job_id].record.attempts == 1
    assert job_id in manager._pool.held_ids()
    # when the first attempt returns (its outcome is discarded)
    attempts.release[2].set()
    attempts.release[1].set()
    # then the second one runs, is recorded, and the job completes: run twice, never at once
    result = manager.wait(job_id, timeout=10)
    assert result.status == JobStatus.COMPLETED and result.attempts == 2 and result.result == 2
    assert attempts.started == [1, 2] and attempts.most == 1
    # and no worker thread died on the way
    wait_until(lambda: not state.running and not state.finished and not state.settling, 10)
    assert len(manager.workers) == 2
    other.close()


def test_a_job_claimed_again_while_its_first_attempt_runs_is_handed_back_at_a_stop(
        tmp_path: Any, make_manager: Any) -> None:
    # given a manager whose second attempt of a job waits for its first to end
    manager, attempts, job_id, other = taken_back_and_claimed_here_again(tmp_path, make_manager)
    # when the manager stops, and the first attempt returns meanwhile
    stopping = threading.Thread(target=manager.stop, kwargs={"timeout": 10})
    stopping.start()
    attempts.release[1].set()
    stopping.join(10)
    assert not stopping.is_alive()
    # then the second attempt never started: handed back, pending, its attempt uncounted
    row = other.get_without_args(job_id)
    assert row is not None and row.status == JobStatus.PENDING and row.attempts == 1
    assert attempts.started == [1]
    other.close()


class Watched(SQLiteRepository):
    """Tells when its manager's housekeeper has begun its loop (`looping`: it takes a
    change token first, after reading the clock its timers start from) and the time of
    its latest beat in the worker registry (`beaten`)."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.looping = threading.Event()
        self.beats = threading.Condition()  # guards `beaten`
        self.beaten = float("-inf")

    def change_token(self) -> Any:
        self.looping.set()
        return super().change_token()

    def beat_worker(self, worker_id: str, running: Any, now: float) -> Any:
        beaten = super().beat_worker(worker_id, running, now)
        with self.beats:
            self.beaten = max(self.beaten, now)
            self.beats.notify_all()
        return beaten

    def beat_at(self, at: float) -> bool:
        with self.beats:
            return self.beats.wait_for(lambda: self.beaten >= at, 10)


def test_a_started_manager_takes_back_a_dead_workers_lease_after_one_advance_of_its_fake_clock(
        tmp_path: Any, make_manager: Any) -> None:
    # given a job claimed by a worker that died (elsewhere: no process of this host to check),
    # and a started manager on a fake clock, its housekeeper past its first beat
    clock = FakeClock()
    repository = Watched(str(tmp_path / "jobs.db"))
    manager: JobManager = make_manager(repository, lease_timeout=60.0, poll_interval=1.0, clock=clock)
    manager.register_function("work", lambda: "done")
    job_id = manager.enqueue(Job(function_name="work", max_retries=3))
    assert repository.claim(job_id, "otherhost:1:dead", clock.time(), clock.time() + 60) is not None
    manager.start()
    assert repository.looping.wait(10)
    # (an advance while the housekeeper sets its timers up looks like a wall clock jump to
    # it, unless it is 1 s at most)
    clock.advance(1.0)
    assert repository.beat_at(clock.time())
    # when the test moves the clock past that lease in one step (no process stalled: a
    # fake clock's advance is not one, however big)
    clock.advance(61.0)
    # then the manager takes the job back and runs it, with no second advance
    result = manager.wait(job_id, timeout=5)
    assert result.status == JobStatus.COMPLETED and result.attempts == 2 and result.result == "done"


class RecoveryWatched(Watched):
    """`Watched`, and the wall times its recoveries took back leases by (`walls`)."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.walls: list[float] = []
        self.recovered = threading.Event()

    def recover(self, now: float) -> Any:
        recovery = super().recover(now)
        self.walls.append(now)
        self.recovered.set()
        return recovery


LIVE = "elsewhere:1:live"  # a worker of another process, live (stopped with this one at most)


def a_job_a_live_worker_elsewhere_runs(tmp_path: Any, make_manager: Any,
                                       clock: FakeClock) -> tuple[RecoveryWatched, JobManager, str, list[int]]:
    """A manager on `clock` (not started) and a job that LIVE claimed for a lease: the
    repository, the manager, the job's id, and the runs of the job here (none, if all goes well)."""
    repository = RecoveryWatched(str(tmp_path / "jobs.db"))
    manager: JobManager = make_manager(repository, lease_timeout=LEASE, poll_interval=1.0, clock=clock)
    ran: list[int] = []
    manager.register_function("work", lambda: ran.append(1))
    job_id = manager.enqueue(Job(function_name="work", max_retries=3))
    assert repository.claim(job_id, LIVE, clock.time(), clock.time() + LEASE) is not None
    return repository, manager, job_id, ran


def renewed_second_by_second(repository: RecoveryWatched, clock: FakeClock, job_id: str, seconds: int) -> None:
    """LIVE renews its lease, then the clock moves a second on and the started manager
    beats, `seconds` times. (An advance over 1 s while the housekeeper sets its timers up
    reads as a jump to it.)"""
    for _ in range(seconds):
        assert repository.heartbeat(LIVE, [job_id], clock.time() + LEASE, clock.time()) == []
        clock.advance(1.0)
        assert repository.beat_at(clock.time())


def test_a_stall_at_the_top_of_a_housekeeping_pass_takes_no_lease_the_stall_let_lapse(
        tmp_path: Any, make_manager: Any, monkeypatch: Any, caplog: Any) -> None:
    # given a started manager on a fake clock, its housekeeper's real time faked too (a
    # stall moves both), past the hold-off of its start, and a job a worker of another
    # process runs, renewing its lease until the stall below stops both processes
    from jobcore import lease_timing
    real = [1000.0]
    monkeypatch.setattr(lease_timing, "real_monotonic", lambda: real[0])
    clock = FakeClock()
    repository, manager, job_id, ran = a_job_a_live_worker_elsewhere_runs(tmp_path, make_manager, clock)
    start = clock.monotonic()
    pool = manager._pool
    time_out_overdue = pool.time_out_overdue

    def stalled_at_the_top(now: float) -> Any:
        # when the whole machine stalls for twice the lease at the top of the pass that
        # finds recovery due, after its time was read (both processes stopped: the
        # worker's lease lapses with no fault of its own)
        if now >= start + LEASE and not caplog.records:
            clock.advance(2 * LEASE)
            real[0] += 2 * LEASE
        return time_out_overdue(now)

    pool.time_out_overdue = stalled_at_the_top  # type: ignore[method-assign]
    caplog.set_level(logging.WARNING, logger="jobcore.housekeeper")
    manager.start()
    assert repository.looping.wait(10)
    renewed_second_by_second(repository, clock, job_id, int(LEASE))
    # then the manager found its pass long, and took back no lease that lapsed in it
    assert repository.recovered.wait(10)
    assert [r for r in caplog.records if "housekeeping took" in r.getMessage()], caplog.records
    row = repository.get_without_args(job_id)
    assert row is not None and (row.status, row.worker_id, row.attempts) == (JobStatus.RUNNING, LIVE, 1)
    assert repository.walls and max(repository.walls) < clock.time() - LEASE and not ran


@pytest.mark.parametrize("where", ["right after its real time", "after its timeouts"])
def test_a_second_stall_inside_a_pass_before_the_others_beat_takes_no_lease_the_first_let_lapse(
        tmp_path: Any, make_manager: Any, monkeypatch: Any, caplog: Any, where: str) -> None:
    # given a started manager on a fake clock, its housekeeper's real time faked too (a
    # stall moves both), past the hold-off of its start, and a job a worker of another
    # process runs, its lease renewed until the stalls below stop both processes
    from jobcore import lease_timing
    real = [1000.0]
    second: list[float] = []  # [0.0]: the second stall armed; then the wall time it began at

    def stall_again() -> None:
        second[0] = clock.time()
        clock.advance(1.5 * LEASE)
        real[0] += 1.5 * LEASE

    def real_time() -> float:
        read = real[0]
        if where == "right after its real time" and second == [0.0]:  # (the top of the next pass)
            stall_again()
        return read

    monkeypatch.setattr(lease_timing, "real_monotonic", real_time)
    clock = FakeClock()
    repository, manager, job_id, ran = a_job_a_live_worker_elsewhere_runs(tmp_path, make_manager, clock)
    pool = manager._pool
    time_out_overdue = pool.time_out_overdue

    def stalled_at_the_top(now: float) -> Any:
        if where == "after its timeouts" and second == [0.0]:  # (the top of the next pass)
            stall_again()
        return time_out_overdue(now)

    pool.time_out_overdue = stalled_at_the_top  # type: ignore[method-assign]
    housekeeper = manager._housekeeper
    sleep, asleep = housekeeper._sleep, threading.Event()

    def watched_sleep(*args: Any) -> bool:  # (between passes: a stall then makes the next beat late)
        asleep.set()
        try:
            return sleep(*args)
        finally:
            asleep.clear()

    housekeeper._sleep = watched_sleep  # type: ignore[method-assign]
    caplog.set_level(logging.WARNING, logger="jobcore.housekeeper")
    manager.start()
    assert repository.looping.wait(10)
    renewed_second_by_second(repository, clock, job_id, int(LEASE) + 1)
    # when the whole machine stalls for 1.5 leases while the housekeeper sleeps (the
    # worker's lease lapses; the manager finds its beat late and holds recovery off)
    wait_until(asleep.is_set, 10, "the housekeeper to sleep")
    clock.advance(1.5 * LEASE)
    real[0] += 1.5 * LEASE
    wait_until(lambda: any("stalled" in r.getMessage() for r in caplog.records), 10, f"the stall to be noted")
    # and again, for as long, at the top of its next pass, before the worker has beaten
    # (the hold-off runs out meanwhile)
    wait_until(asleep.is_set, 10, "the housekeeper to sleep")
    second.append(0.0)
    clock.advance(1.0)
    wait_until(lambda: second[0] > 0, 10, "the second stall")
    walls = len(repository.walls)
    for _ in range(3):  # (a few passes, recoveries among them)
        clock.advance(1.0)
        assert repository.beat_at(clock.time())
    wait_until(lambda: len(repository.walls) > walls, 10, "a recovery after the second stall")
    # then the manager took back no lease that lapsed in the first stall: the worker
    # still has its job (it was taken back and run again here)
    row = repository.get_without_args(job_id)
    assert row is not None and (row.status, row.worker_id, row.attempts) == (JobStatus.RUNNING, LIVE, 1)
    assert not ran and max(repository.walls) < second[0]


STALL_JOBS = textwrap.dedent("""
    import os, time
    import jobcore

    def hold(log, release):
        # Note each start (pid, attempt), then run until the test releases the job.
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, f"{os.getpid()} {jobcore.current_job().attempt}\\n".encode())
        finally:
            os.close(fd)
        deadline = time.monotonic() + 30
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.02)
        return "held"

    jobcore.register_job_function("stalljobs.hold", hold)
""")
# Long enough that a worker process slowed by a loaded machine (the whole suite running
# beside it) renews its lease in time, and in time after the stall, where the other
# holds recovery off for a lease from its own resume: with 1 s, 1 run in 2 of the
# suite once found the job taken back (attempts 2).
STALL_LEASE = 2.0


def starts(log: Any) -> list[tuple[int, int]]:
    """The (pid, attempt) of each start the job noted."""
    if not log.exists():
        return []
    return [(int(pid), int(attempt)) for pid, attempt in (line.split() for line in log.read_text().splitlines())]


def test_workers_stalled_together_past_their_lease_take_no_job_from_each_other(tmp_path: Any) -> None:
    # given two worker processes on one file (one machine), one of them running a job
    (tmp_path / "stalljobs.py").write_text(STALL_JOBS)
    db, log, release = str(tmp_path / "jobs.db"), tmp_path / "starts.log", tmp_path / "release"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), ROOT, os.environ.get("PYTHONPATH", "")])}
    producer = JobManager(db, producer=True)
    # Their logs (-v: each stall, hold-off and lease taken back noted) explain a failure.
    outputs = [tmp_path / f"worker{n}.log" for n in range(2)]
    processes = []
    for output in outputs:
        with open(output, "wb") as sink:
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "jobcore", "--db", db, "-v", "worker", "--import", "stalljobs",
                 "--workers", "1", "--lease-timeout", str(STALL_LEASE), "--poll-interval", "0.1"],
                env=env, cwd=str(tmp_path), stdout=sink, stderr=subprocess.STDOUT))

    def logs() -> str:
        return "".join(f"\n--- worker {process.pid}:\n{output.read_text(errors='replace')}"
                       for process, output in zip(processes, outputs))
    try:
        wait_until(lambda: len(producer.list_workers()) == 2, 30, "both workers to start")
        job_id = producer.enqueue(Job(function_name="stalljobs.hold", args=(str(log), str(release)),
                                      max_retries=3))
        wait_until(lambda: starts(log), 30, "the job to start")
        [(holder_pid, _)] = starts(log)
        holder, = [p for p in processes if p.pid == holder_pid]
        other, = [p for p in processes if p.pid != holder_pid]
        # when the whole machine stalls for twice the lease (both processes stopped: their
        # clocks move on, the holder's lease lapses), and the one not running the job
        # resumes first, running its housekeeping for a while before the holder resumes
        for process in processes:
            process.send_signal(signal.SIGSTOP)
        time.sleep(2 * STALL_LEASE)  # the stall itself
        other.send_signal(signal.SIGCONT)
        time.sleep(0.4)  # ample for its first beat and the recovery round that came with it
        holder.send_signal(signal.SIGCONT)
        release.touch()
        # then the other did not take the job back: it ran once, and completes as attempt 1
        result = producer.wait(job_id, timeout=30)
        assert (result.status, result.attempts, result.result) == (JobStatus.COMPLETED, 1, "held")
        assert starts(log) == [(holder_pid, 1)]
    finally:
        for process in processes:
            process.kill()  # stopped or not
            process.wait(10)
        print(logs())  # (pytest shows it when the test failed)
        producer.close()


class HeldCheck(CountingReads):
    """A worker's claim check (`get_without_args`) of the job `held` waits until `go` is
    set (the housekeeper's reads, which time attempts out, go on)."""

    held: Any = None

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.checking, self.go = threading.Event(), threading.Event()

    def get_without_args(self, job_id: str) -> Any:
        if job_id == self.held and threading.current_thread().name.startswith("jobcore-worker"):
            self.checking.set()
            assert self.go.wait(10)
        return super().get_without_args(job_id)


@pytest.mark.parametrize("taken", [False, True])
def test_a_job_whose_timeout_passes_while_its_claim_is_checked_never_runs_and_its_thread_ends(
        tmp_path: Any, make_manager: Any, taken: bool) -> None:
    # given a tiny job with a 5 s timeout in reserve whose claim is checked before it
    # starts (as after a stall past the lease), which another process may have taken
    clock = FakeClock()
    repository = HeldCheck(str(tmp_path / "jobs.db"))
    manager: JobManager = make_manager(repository, max_workers=1, lease_timeout=LEASE, poll_interval=1.0,
                                       clock=clock)
    release, ran = threading.Event(), []
    manager.register_function("block", lambda: release.wait(10))
    manager.register_function("tiny", lambda n: ran.append(n))
    blocker = Job(function_name="block", priority=9)
    tiny = Job(function_name="tiny", args=(0,), priority=1, timeout=5, max_retries=1 if taken else 0)
    repository.held = tiny.id
    manager.enqueue_many([blocker, tiny])
    manager._pool._state.pacing.assume_short_jobs()
    manager.start()
    state = manager._pool._state
    wait_until(lambda: blocker.id in state.running and [r.id for r in state.buffer] == [tiny.id], 10)
    claims = manager._pool._claims
    suspect = claims.suspect  # (a stall itself would let the housekeeper renew the claim first)
    claims.suspect = lambda record, renewed_until, now: record.id == tiny.id or suspect(  # type: ignore[method-assign]
        record, renewed_until, now)
    other = SQLiteRepository(str(tmp_path / "jobs.db"))
    if taken:
        later = clock.time() + LEASE + 1
        other.recover(later)
        assert other.claim(tiny.id, "elsewhere", later, later + 60) is not None
    release.set()
    # when its timeout passes while the check waits (a store locked by another program)
    assert repository.checking.wait(10)
    clock.advance(6)
    wait_until(lambda: manager.abandoned_threads == 1, 10, "the attempt to be given up")
    repository.go.set()
    # then it never runs, and the thread given up ends (it went on as a worker too many,
    # and the first job it ran was discarded as 'returned after its timeout', RUNNING for ever)
    wait_until(lambda: manager.abandoned_threads == 0, 10, "the thread given up to end")
    later_jobs = manager.enqueue_many([Job(function_name="tiny", args=(n,)) for n in (1, 2, 3)])
    assert [manager.wait(job_id, timeout=10).status for job_id in later_jobs] == [JobStatus.COMPLETED] * 3
    assert sorted(ran) == [1, 2, 3]
    row = other.get(tiny.id)
    assert row is not None
    if taken:
        assert (row.status, row.worker_id) == (JobStatus.RUNNING, "elsewhere")
    else:
        assert (row.status, row.error_type) == (JobStatus.FAILED, "JobTimeout")
    assert len([t for t in manager.workers if t.is_alive()]) == 1
    other.close()
