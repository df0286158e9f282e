"""SQLite finds the rows an exchange claims and settles by their seq (the table's own key)
rather than through the index on ids: the engine passes each claimed id's seq and each
settlement's, and the repository checks the id on the row it finds. A wrong seq must never
claim or settle another job, nor lose an outcome.

(Why: with several processes on one file, each transaction starts on a page cache that the
others' commits made stale, and every id looked up read pages of that index again.)
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import pytest

from jobcore import Job, JobManager, JobStatus
from jobcore.repository import SQLiteRepository
from jobcore.repository.base import JobRecord, Settlement
from jobcore.testing.contract import LEASE, NOW, make_record


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[SQLiteRepository]:
    repository = SQLiteRepository(tmp_path / "jobs.db")
    yield repository
    repository.close()


def _stored(repo: SQLiteRepository) -> JobRecord:
    record = make_record()
    repo.insert([record], NOW)
    assert record.seq > 0
    return record


def _status(repo: SQLiteRepository, record: JobRecord) -> tuple[JobStatus, Optional[str]]:
    row = repo.get(record.id)
    assert row is not None
    return row.status, row.worker_id


def test_claims_given_seqs_take_the_named_jobs(repo: SQLiteRepository) -> None:
    first, second, other = _stored(repo), _stored(repo), _stored(repo)
    _, claimed = repo.apply([], [second.id, first.id], "w1", NOW, NOW + LEASE, claim_seqs=[second.seq, first.seq])
    assert sorted(r.id for r in claimed) == sorted([first.id, second.id])
    assert all(r.worker_id == "w1" and r.attempts == 1 for r in claimed)
    assert _status(repo, other) == (JobStatus.PENDING, None)


def test_a_claim_whose_seq_names_another_job_claims_neither_and_loses_nothing(repo: SQLiteRepository) -> None:
    # given two pending jobs, and a claim naming the first by id but the second by seq
    named, bystander = _stored(repo), _stored(repo)
    _, claimed = repo.apply([], [named.id], "w1", NOW, NOW + LEASE, claim_seqs=[bystander.seq])
    # then the job the seq points at is not taken (its id was not named), nor the named one
    assert claimed == []
    assert _status(repo, bystander) == (JobStatus.PENDING, None)
    assert _status(repo, named) == (JobStatus.PENDING, None)
    # and both are still there to be claimed, by id or by number
    _, claimed = repo.apply([], [named.id], "w1", NOW, NOW + LEASE)
    assert [r.id for r in claimed] == [named.id]
    _, claimed = repo.apply([], [], "w1", NOW, NOW + LEASE, top_up=[bystander.function_name], up_to=1)
    assert [r.id for r in claimed] == [bystander.id]


@pytest.mark.parametrize("kind", ["complete", "fail", "retry", "cancel", "release"])
def test_a_settlement_with_a_wrong_seq_applies_to_the_job_it_names(repo: SQLiteRepository, kind: str) -> None:
    # given two jobs held by w1, and a settlement of the first carrying the second's seq
    first, second = _stored(repo), _stored(repo)
    repo.apply([], [first.id, second.id], "w1", NOW, NOW + LEASE)
    settlement = Settlement(kind, first.id, 1, result="r", error="e", error_type="E",
                            retry_at=NOW + 60 if kind == "retry" else None, seq=second.seq)
    cascades, _ = repo.apply([settlement], [], "w1", NOW + 1, NOW + 1 + LEASE)
    # then the first job is settled (found by its id after the seq found another job),
    # and the second is still held, untouched
    assert cascades[0] is not None
    expected = {"complete": JobStatus.COMPLETED, "fail": JobStatus.FAILED, "retry": JobStatus.SCHEDULED,
                "cancel": JobStatus.CANCELLED, "release": JobStatus.PENDING}[kind]
    assert _status(repo, first)[0] == expected
    assert _status(repo, second) == (JobStatus.RUNNING, "w1")


def test_a_settlement_with_its_own_seq_is_still_a_compare_and_set(repo: SQLiteRepository) -> None:
    job = _stored(repo)
    repo.apply([], [job.id], "w1", NOW, NOW + LEASE)
    stale = Settlement("complete", job.id, 2, result="late", seq=job.seq)  # attempt 2 never ran
    theirs = Settlement("complete", job.id, 1, result="theirs", seq=job.seq)
    assert repo.apply([stale], [], "w1", NOW + 1, NOW + LEASE)[0] == [None]
    assert repo.apply([theirs], [], "w2", NOW + 1, NOW + LEASE)[0] == [None]
    assert _status(repo, job) == (JobStatus.RUNNING, "w1")
    done = Settlement("complete", job.id, 1, result="mine", seq=job.seq)
    assert repo.apply([done], [], "w1", NOW + 1, NOW + LEASE)[0] != [None]
    stored = repo.get(job.id)
    assert stored is not None and (stored.status, stored.result) == (JobStatus.COMPLETED, "mine")


class Recording(SQLiteRepository):
    """Records what the engine hands `apply` and `insert_and_apply`: each call's claimed
    ids with their seqs, and each settlement's job id with its seq."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._calls_lock = threading.Lock()
        self.claims: list[tuple[list[str], Optional[list[int]]]] = []
        self.settled: list[tuple[str, Optional[int]]] = []

    def _note(self, settlements: Sequence[Settlement], claim_ids: Sequence[str],
              claim_seqs: Optional[Sequence[int]]) -> None:
        with self._calls_lock:
            if claim_ids:
                self.claims.append((list(claim_ids), None if claim_seqs is None else list(claim_seqs)))
            self.settled += [(s.job_id, s.seq) for s in settlements]

    def apply(self, settlements: Sequence[Settlement], claim_ids: Sequence[str], *args: Any, **kwargs: Any) -> Any:
        self._note(settlements, claim_ids, kwargs.get("claim_seqs"))
        return super().apply(settlements, claim_ids, *args, **kwargs)

    def insert_and_apply(self, record: JobRecord, settlements: Sequence[Settlement], claim_ids: Sequence[str],
                         *args: Any, **kwargs: Any) -> Any:
        self._note(settlements, claim_ids, kwargs.get("claim_seqs"))
        return super().insert_and_apply(record, settlements, claim_ids, *args, **kwargs)


@pytest.mark.parametrize("started_first", [False, True], ids=["queued-then-drained", "streamed"])
def test_the_engine_gives_the_store_the_seq_of_every_job_it_claims_and_settles(
        tmp_path: Path, make_manager: Any, started_first: bool) -> None:
    # given a manager on SQLite running 60 jobs, queued before it starts or while it runs
    repository = Recording(tmp_path / "jobs.db")
    manager: JobManager = make_manager(repository, max_workers=4)
    manager.register_function("task", lambda n: n)
    if started_first:
        manager.start()
    ids = [manager.enqueue(Job(function_name="task", args=(n,))) for n in range(60)]
    manager.start()
    assert all(manager.wait(job_id, timeout=10).status == JobStatus.COMPLETED for job_id in ids)
    manager.stop()
    seqs = {job_id: record.seq for job_id in ids if (record := repository.get(job_id)) is not None}
    # then every settlement carried its job's seq
    settled = dict(repository.settled)
    assert sorted(settled) == sorted(ids)
    assert settled == seqs
    # and every claim by id came with the seqs of those ids, in order (jobs streamed in
    # may all have been stored claimed by their enqueue, with no claim by id at all)
    assert repository.claims or started_first
    for claim_ids, claim_seqs in repository.claims:
        assert claim_seqs == [seqs[job_id] for job_id in claim_ids]
