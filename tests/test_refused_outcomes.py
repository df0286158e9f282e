"""Outcomes a backend refuses: one outcome its store cannot take fails its own job, and
every other outcome and claim goes on (it once stalled the whole manager for ever)."""

from __future__ import annotations

import threading
from typing import Any, Sequence

import pytest

from jobcore import (CallbackNotificationChannel, Job, JobManager, JobStatus, MemoryRepository, RepositoryError,
                     SQLiteRepository)
from jobcore.repository.base import JobRepository, Settlement
from waiting import wait_until

WAIT = 10.0
LIMIT = 1000  # characters the stores below hold in a result


class RefusesLongResults:
    """A backend mixin whose store holds results of up to LIMIT characters, and says so
    only when asked to store a longer one (it sets no `max_payload_bytes`): `apply` raises
    `error` before writing anything, as `JobRepository.apply` allows."""

    error: type[Exception] = ValueError
    refused = 0  # how many calls it refused

    def apply(self, settlements: Sequence[Settlement], *args: Any, **kwargs: Any) -> Any:
        self._check(settlements)
        return super().apply(settlements, *args, **kwargs)  # type: ignore[misc]

    def insert_and_apply(self, record: Any, settlements: Sequence[Settlement], *args: Any, **kwargs: Any) -> Any:
        self._check(settlements)
        return super().insert_and_apply(record, settlements, *args, **kwargs)  # type: ignore[misc]

    def _check(self, settlements: Sequence[Settlement]) -> None:
        if any(s.kind == "complete" and len(str(s.result)) > LIMIT for s in settlements):
            self.refused += 1
            raise self.error(f"the result column holds at most {LIMIT} characters")


class SQLiteRefusing(RefusesLongResults, SQLiteRepository):
    pass


class MemoryRefusing(RefusesLongResults, MemoryRepository):
    pass


@pytest.mark.parametrize("error", [ValueError, TypeError])
@pytest.mark.parametrize("backend", ["sqlite", "memory"])
def test_an_outcome_the_store_refuses_fails_its_job_and_the_others_run(make_manager: Any, tmp_path: Any,
                                                                       backend: str, error: type) -> None:
    # given a store refusing results over LIMIT characters with a ValueError or a TypeError
    # (it cannot hold it: see JobRepository.apply; a RepositoryError is trouble that may
    # pass, retried), and 20 jobs of which the first returns a longer one, all run on two
    # workers
    repository: JobRepository = (SQLiteRefusing(str(tmp_path / "jobs.db")) if backend == "sqlite"
                                 else MemoryRefusing())
    repository.error = error  # type: ignore[attr-defined]
    manager: JobManager = make_manager(repository, max_workers=2, poll_interval=0.2)
    dead: list[str] = []
    told = threading.Event()
    manager.add_notification_channel(CallbackNotificationChannel(
        lambda event: (dead.append(event["job_id"]), told.set()) if event["event"] == "job.dead_lettered" else None))
    manager.register_function("work", lambda n: "x" * (5 * LIMIT) if n == 0 else n)
    ids = manager.enqueue_many([Job(function_name="work", args=(n,), max_retries=0) for n in range(20)])
    # when they run
    manager.start()
    results = [manager.wait(job_id, timeout=WAIT) for job_id in ids]
    # then every other job completed, once
    assert [(r.status, r.result, r.attempts) for r in results[1:]] == [
        (JobStatus.COMPLETED, n, 1) for n in range(1, 20)]
    # and the refused one failed, saying why, and was dead-lettered like any failure
    refused = results[0]
    assert (refused.status, refused.error_type, refused.attempts) == (JobStatus.FAILED, error.__name__, 1)
    assert "its outcome could not be recorded" in (refused.error or "")
    assert f"at most {LIMIT} characters" in (refused.error or "")
    assert told.wait(WAIT) and dead == [ids[0]]
    assert repository.refused >= 1  # type: ignore[attr-defined]


class Unwritable(MemoryRepository):
    """Every write of an outcome fails, and every lease renewal too (a store that is down)
    unless `renews` (a disk full for a while: a lease's write in place goes through where
    a result's does not)."""

    def __init__(self, renews: bool = False, error: type[Exception] = RepositoryError) -> None:
        super().__init__()
        self.down = threading.Event()
        self.down.set()
        self.attempts = 0
        self.renews = renews
        self.error = error

    def apply(self, settlements: Sequence[Settlement], *args: Any, **kwargs: Any) -> Any:
        if settlements and self.down.is_set():
            self.attempts += 1
            raise self.error("disk I/O error (injected)")
        return super().apply(settlements, *args, **kwargs)

    def heartbeat(self, *args: Any, **kwargs: Any) -> Any:
        if self.down.is_set() and not self.renews:
            raise RepositoryError("disk I/O error (injected)")
        return super().heartbeat(*args, **kwargs)


@pytest.mark.parametrize("error", [RepositoryError, ConnectionError])
@pytest.mark.parametrize("renews", [False, True], ids=["down", "renewing leases"])
def test_a_store_that_fails_outcomes_for_a_while_fails_no_job_for_it(make_manager: Any, renews: bool,
                                                                     error: type[Exception]) -> None:
    # given a store that refuses every outcome with a RepositoryError (or a driver's error
    # it did not translate), renewing leases or not (a disk full for a moment failed every
    # job finishing then: the renewal was taken for proof that the store worked and the
    # outcome was at fault; an untranslated error failed the job at once), and three
    # finished jobs with no retry left
    repository = Unwritable(renews, error)
    manager: JobManager = make_manager(repository, max_workers=3, poll_interval=0.2)
    manager.register_function("work", lambda n: n)
    ids = manager.enqueue_many([Job(function_name="work", args=(n,), max_retries=0) for n in range(3)])
    manager.start()
    # when the manager has tried to record them many times, alone and together
    wait_until(lambda: repository.attempts >= 12, WAIT, "retries")
    # then none was failed for it: once the store is back, each completes
    repository.down.clear()
    assert [manager.wait(job_id, timeout=WAIT).status for job_id in ids] == [JobStatus.COMPLETED] * 3


def test_an_outcome_a_working_store_refuses_for_a_whole_lease_is_given_up_and_the_rest_go_on(
        make_manager: Any) -> None:
    # given a store that refuses one job's outcome with a RepositoryError every time (a
    # statement timeout that one write always hits, say) while it renews leases and takes
    # every other write: kept for retry for ever, it held every later claim back
    repository = MemoryRefusing()
    repository.error = RepositoryError  # type: ignore[attr-defined]
    manager: JobManager = make_manager(repository, max_workers=2, poll_interval=0.2, lease_timeout=1.0)
    manager.register_function("work", lambda n: "x" * (5 * LIMIT) if n == 0 else n)
    stuck = manager.enqueue(Job(function_name="work", args=(0,), max_retries=0))
    manager.start()
    wait_until(lambda: repository.refused >= 3, WAIT, "the refused outcome retried")
    # when more jobs come after it
    later = [manager.enqueue(Job(function_name="work", args=(n,))) for n in range(1, 4)]
    # then they run, once the refused outcome has been given up (after a lease)
    assert [manager.wait(job_id, timeout=WAIT).status for job_id in later] == [JobStatus.COMPLETED] * 3
    # and the refused job was never failed for the store's trouble: taken back once its
    # lease lapsed, it ends as a lost attempt (no retry left), not with the refusal
    result = manager.wait(stuck, timeout=WAIT)
    assert result.status is JobStatus.FAILED and result.error_type == "WorkerLost"
