"""Many jobs of every plain kind, from two producers and in batches, while the workers run:
the shortcuts that batch claims and outcomes (enqueue exchanges, reserves, hand-offs)
keep SPEC's promises together. Every job ends; a completed job ran once; a dependent
ran after its dependency completed; a failed dependency cancels its dependents; retries
run again; and no more than 2 x max_workers jobs ever ran with their outcome unrecorded.

Randomised with fixed seeds; what is checked does not depend on how threads interleave."""

from __future__ import annotations

import random
import threading
from collections import Counter
from typing import Any, Optional, Sequence

import pytest

from pg_fixtures import *  # noqa: F401,F403 (the fixtures: server, schema)
from jobcore import Job, JobManager, JobStatus, RetryableError, current_job
from jobcore.repository.base import JobRepository, Settlement
from mixed_repositories import BACKENDS, repository_with

WORKERS = 3
PER_PRODUCER = 150
WAIT = 30.0


class Counting:
    """Counts the attempts recorded (every settlement but a release), counted as the call
    starts: a job that starts meanwhile finds them recorded already, so the count of
    attempts run and not yet recorded can only come out too low, never too high."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        self.lock = threading.Lock()
        self.recorded = 0

    def _count(self, settlements: Sequence[Settlement]) -> None:
        with self.lock:
            self.recorded += sum(1 for s in settlements if s.kind != "release")

    def apply(self, settlements: Sequence[Settlement], *args: Any, **kwargs: Any) -> Any:
        self._count(settlements)
        return super().apply(settlements, *args, **kwargs)  # type: ignore[misc]

    def insert_and_apply(self, record: Any, settlements: Sequence[Settlement], *args: Any,
                         **kwargs: Any) -> Any:
        self._count(settlements)
        return super().insert_and_apply(record, settlements, *args, **kwargs)  # type: ignore[misc]


@pytest.fixture(params=BACKENDS)
def counting_repository(request: Any, tmp_path: Any) -> JobRepository:
    return repository_with(Counting, request, tmp_path)


class Runs:
    """What the job bodies saw: per job id, how many times it started and when it ended
    (a step counter), and the most attempts run and not yet recorded at any start."""

    def __init__(self, repository: Any) -> None:
        self._repository = repository
        self.lock = threading.Lock()
        self.started: Counter[str] = Counter()
        self.ended_at: dict[str, int] = {}
        self.started_at: dict[str, int] = {}
        self.steps = 0
        self.attempts = 0
        self.most_unrecorded = 0

    def start(self, job_id: str) -> None:
        with self.lock, self._repository.lock:
            self.attempts += 1
            self.most_unrecorded = max(self.most_unrecorded, self.attempts - self._repository.recorded)
            self.started[job_id] += 1
            self.steps += 1
            self.started_at.setdefault(job_id, self.steps)

    def end(self, job_id: str) -> None:
        with self.lock:
            self.steps += 1
            self.ended_at[job_id] = self.steps


@pytest.mark.parametrize("seed", [1, 2])
def test_jobs_of_every_plain_kind_keep_spec_s_promises_together(
        counting_repository: Any, make_manager: Any, seed: int) -> None:
    # given a started manager of short jobs: plain ones, ones that fail for good, ones
    # that fail once and are retried at once, and ones that wait on an earlier job
    repository = counting_repository
    manager: JobManager = make_manager(repository, max_workers=WORKERS)
    runs = Runs(repository)

    def ok(n: int) -> int:
        job_id = current_job().id
        runs.start(job_id)
        runs.end(job_id)
        return n

    def broken() -> None:
        job_id = current_job().id
        runs.start(job_id)
        runs.end(job_id)
        raise ValueError("broken for good")

    def flaky() -> str:
        job = current_job()
        runs.start(job.id)
        runs.end(job.id)
        if runs.started[job.id] == 1:
            raise RetryableError("first attempt fails")
        return "second"

    for name, func in (("ok", ok), ("broken", broken), ("flaky", flaky)):
        manager.register_function(name, func)
    manager._pool._state.pacing.assume_short_jobs()  # tiny jobs: claims in reserve too
    manager.start()

    kinds: dict[str, str] = {}
    parents: dict[str, str] = {}
    kinds_lock = threading.Lock()

    def produce(rng: random.Random) -> None:
        made: list[str] = []
        batch: list[Job] = []
        for i in range(PER_PRODUCER):
            roll = rng.random()
            parent: Optional[str] = rng.choice(made) if made and roll < 0.15 else None
            if roll < 0.07 + (0.15 if parent else 0):
                kind, job = "broken", Job(function_name="broken", max_retries=0)
            elif roll < 0.30:
                kind, job = "flaky", Job(function_name="flaky", max_retries=1, retry_delay=0.0)
            else:
                kind, job = "ok", Job(function_name="ok", args=(i,))
            job.priority = rng.randint(0, 9)
            if parent is not None:
                job.depends_on = [parent]
            with kinds_lock:
                kinds[job.id] = kind
                if parent is not None:
                    parents[job.id] = parent
            if rng.random() < 0.2:
                batch.append(job)
                if len(batch) == 5:
                    made += manager.enqueue_many(batch)
                    batch = []
            else:
                made.append(manager.enqueue(job))
        if batch:
            made += manager.enqueue_many(batch)

    # when two producers enqueue them while the workers run
    producers = [threading.Thread(target=produce, args=(random.Random(seed * 10 + p),))
                 for p in range(2)]
    for thread in producers:
        thread.start()
    for thread in producers:
        thread.join(WAIT)
    assert len(kinds) == 2 * PER_PRODUCER
    results = {job_id: manager.wait(job_id, timeout=WAIT) for job_id in kinds}

    # then every job ended as its kind and its dependency say
    def expected(job_id: str) -> JobStatus:
        parent = parents.get(job_id)
        if parent is not None and expected(parent) is not JobStatus.COMPLETED:
            return JobStatus.CANCELLED
        return JobStatus.FAILED if kinds[job_id] == "broken" else JobStatus.COMPLETED

    for job_id, result in results.items():
        status = expected(job_id)
        assert result.status is status, (job_id, kinds[job_id], parents.get(job_id), result)
        runs_of_it = runs.started[job_id]
        if status is JobStatus.CANCELLED:
            assert runs_of_it == 0
        elif kinds[job_id] == "flaky":
            assert runs_of_it == 2 and result.attempts == 2 and result.result == "second"
        else:
            assert runs_of_it == 1 and result.attempts == 1
        parent = parents.get(job_id)
        if runs_of_it and parent is not None:
            assert runs.started_at[job_id] > runs.ended_at[parent]
    # and no more attempts ran unrecorded than SPEC's bound allows after a crash
    assert 1 <= runs.most_unrecorded <= 2 * WORKERS
    assert sum(runs.started.values()) == runs.attempts
