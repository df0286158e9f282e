"""A job claimed in reserve does not start if the claim lapsed while the process stalled
and another process took the job: SPEC's "never run by two live workers at the same
time" (jobcore.claims). A stall is a fake clock moved past the lease while a job blocks
the only worker; the other process is a second repository on the same file."""

from __future__ import annotations

import threading
from typing import Any

from jobcore import FakeClock, Job, JobManager, JobStatus, SQLiteRepository
from waiting import wait_until

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
