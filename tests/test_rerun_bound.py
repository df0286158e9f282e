"""SPEC: after a worker process dies, at most 2 x its max_workers jobs run a second time.
So a pool never has more than that many jobs started whose outcome is not recorded yet,
even while recording stalls with claimed jobs in reserve, or while outcomes wait for the
next of a stream of enqueues to record them: claims and outcomes go in one transaction,
and the jobs held (claimed, running, finished unrecorded) are capped."""

from __future__ import annotations

import threading
import time
from typing import Any, Sequence

import pytest

from pg_fixtures import *  # noqa: F401,F403 (the fixtures: server, schema)
from jobcore import Job, JobManager, pacing
from jobcore.clock import real_monotonic
from waiting import wait_until
from jobcore.repository.base import JobRepository, Settlement
from mixed_repositories import BACKENDS, repository_with

WORKERS = 2
LIMIT = 2 * WORKERS


class SlowRecording:
    """Counts recorded outcomes; the first `apply` that records any waits for `resume` (not
    `release`, which would hide the repository method of that name).
    Mixed into a repository class (below)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        self.lock = threading.Lock()
        self.recorded = 0
        self.blocked = threading.Event()
        self.resume = threading.Event()

    def apply(self, settlements: Sequence[Settlement], *args: Any, **kwargs: Any) -> Any:
        if settlements and not self.blocked.is_set():
            self.blocked.set()
            assert self.resume.wait(10)
        outcome = super().apply(settlements, *args, **kwargs)  # type: ignore[misc]
        with self.lock:
            self.recorded += sum(1 for s in settlements if s.kind == "complete")
        return outcome

    def insert_and_apply(self, record: Any, settlements: Sequence[Settlement], *args: Any,
                         **kwargs: Any) -> Any:
        """An enqueue's exchange records outcomes too (it never stalls here)."""
        outcome = super().insert_and_apply(record, settlements, *args, **kwargs)  # type: ignore[misc]
        with self.lock:
            self.recorded += sum(1 for s in settlements if s.kind == "complete")
        return outcome


@pytest.fixture(params=BACKENDS)
def slow_repository(request: Any, tmp_path: Any) -> JobRepository:
    """A repository of each backend whose first recording stalls. Set up before the
    managers (the test names it first), so a PostgreSQL schema outlives them."""
    return repository_with(SlowRecording, request, tmp_path)


def _noting_manager(repository: Any, make_manager: Any) -> tuple[JobManager, list[int]]:
    """A manager of WORKERS workers on `repository` (a `SlowRecording`) whose function
    "task" notes, as each job starts, how many started jobs have no recorded outcome yet
    (itself included), in the list returned with it."""
    manager: JobManager = make_manager(repository, max_workers=WORKERS)
    started = [0]
    unrecorded_at_start: list[int] = []

    def task() -> None:
        with repository.lock:
            started[0] += 1
            unrecorded_at_start.append(started[0] - repository.recorded)

    manager.register_function("task", task)
    return manager, unrecorded_at_start


def test_no_more_than_twice_max_workers_jobs_start_unrecorded(slow_repository: Any,
                                                              make_manager: Any) -> None:
    # given a manager whose recording stalls once, and jobs that note, as they start, how
    # many started jobs have no recorded outcome yet (themselves included)
    repository = slow_repository
    manager, unrecorded_at_start = _noting_manager(repository, make_manager)
    manager.enqueue_many([Job(function_name="task") for _ in range(60)])
    manager._pool._state.pacing.assume_short_jobs()  # short jobs: claimed jobs are held in reserve from the start
    # when the workers run while the first recording is stalled
    manager.start()
    assert repository.blocked.wait(10)
    pool = manager._pool
    deadline = time.monotonic() + 10
    while (pool._state.buffer or pool._state.running) and time.monotonic() < deadline:
        time.sleep(0.005)  # until the workers ran every job they held
    with repository.lock:
        stalled_at = len(unrecorded_at_start) - repository.recorded  # (one entry a start)
    repository.resume.set()
    for job_id in [r.job_id for r in manager.list_jobs(limit=1)]:
        manager.wait(job_id, timeout=10)
    # then the workers stopped at the limit while recording stalled, and never went past it
    assert stalled_at == LIMIT
    assert max(unrecorded_at_start) == LIMIT and len(unrecorded_at_start) == 60


def test_an_enqueue_claims_no_job_past_the_bound_while_outcomes_wait(
        slow_repository: Any, make_manager: Any, monkeypatch: Any) -> None:
    # given a started manager whose finished outcomes wait for the next enqueue to record
    # them (enqueues stream in, and they are not due for a minute): LIMIT - 1 of them
    monkeypatch.setattr(pacing, "RECORD_WITHIN", 60.0)
    repository = slow_repository
    # (PostgreSQL's managers store new jobs alone, `exchanges_on_enqueue`: the rule holds
    # for any backend whose managers make such exchanges, and this one can)
    monkeypatch.setattr(type(repository), "exchanges_on_enqueue", True)
    repository.resume.set()  # no stall: outcomes wait on the pacing alone
    manager: JobManager = make_manager(repository, max_workers=WORKERS)
    started = [0]
    unrecorded_at_start: list[int] = []
    gate = threading.Event()

    def note() -> None:
        with repository.lock:
            started[0] += 1
            unrecorded_at_start.append(started[0] - repository.recorded)

    def blocker() -> None:
        note()
        assert gate.wait(10)

    manager.register_function("quick", note)
    manager.register_function("blocker", blocker)
    state = manager._pool._state
    state.pacing.assume_short_jobs()
    manager.start()
    state.pacing.stream_for(60.0, real_monotonic())
    quick = [manager.enqueue(Job(function_name="quick")) for _ in range(LIMIT - 1)]
    wait_until(lambda: len(state.finished) == LIMIT - 1, 10, "the quick jobs' outcomes to wait")
    assert repository.recorded == 0
    # when more jobs are enqueued while those outcomes still wait
    blockers = [manager.enqueue(Job(function_name="blocker")) for _ in range(LIMIT)]
    wait_until(lambda: len(state.running) == WORKERS, 10, "both workers to run a blocker")
    # then no job started past the bound: a claim made without recording those outcomes
    # took no more than the room they leave
    with repository.lock:
        assert max(unrecorded_at_start) <= LIMIT, unrecorded_at_start
    # and once the stream ends and the blockers go on, every job completes
    state.pacing.stream_for(0, real_monotonic())
    manager._pool.wake_dispatcher()
    gate.set()
    for job_id in quick + blockers:
        assert manager.wait(job_id, timeout=10).status.value == "completed"
    assert max(unrecorded_at_start) <= LIMIT and len(unrecorded_at_start) == 2 * LIMIT - 1


@pytest.mark.parametrize("from_store", [False, True])
def test_claims_stay_within_the_bound_while_outcomes_release_dependents(
        slow_repository: Any, make_manager: Any, from_store: bool) -> None:
    # given jobs each with a dependent, and plain jobs, for a manager that claims the ids it
    # knows (or from the store: by number, to its whole room, as when other processes take
    # the ids it knows), with jobs that note, as they start, how many started jobs have no
    # recorded outcome
    repository = slow_repository
    if from_store and not repository.persistent:
        pytest.skip("claims from the store are a persistent store's (other processes take jobs there)")
    repository.resume.set()  # no stall
    manager, unrecorded_at_start = _noting_manager(repository, make_manager)
    parents = [Job(function_name="task") for _ in range(30)]
    jobs = [*parents, *(Job(function_name="task", depends_on=[p.id]) for p in parents),
            *(Job(function_name="task") for _ in range(60))]
    manager.enqueue_many(jobs)
    state = manager._pool._state
    state.pacing.assume_short_jobs()
    state.from_store = from_store
    # when they run
    manager.start()
    for job in jobs:
        assert manager.wait(job.id, timeout=10).status.value == "completed"
    # then no exchange claimed past its room: the dependents its outcomes released came
    # within it, never on top of it
    assert len(unrecorded_at_start) == len(jobs)
    assert max(unrecorded_at_start) <= LIMIT, max(unrecorded_at_start)
