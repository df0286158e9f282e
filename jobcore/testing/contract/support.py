"""Records, fixed times and helpers the contract tests share; no tests here, and no pytest.

`NOW` and `LEASE` are the fixed times every test uses (nothing reads a clock);
`make_record` and `claim_race` are public, for backends' own tests too.
"""

from __future__ import annotations

import random
import threading
from typing import Any, Iterable, Sequence

from ...models import JobStatus
from ...repository.base import Cascade, JobRecord, JobRepository, QueueEntry

NOW = 1_000_000.0   # every test's "now", in epoch seconds; later moments are NOW + n
LEASE = 30.0        # seconds a claim's lease lasts in these tests

# Seeded so ids look random (a backend that orders by id is caught) yet repeat run to run.
# _ids_lock guards _ids: make_record may be called from several threads.
_ids = random.Random(20240601)
_ids_lock = threading.Lock()


def make_record(**overrides: Any) -> JobRecord:
    """A `JobRecord` ready to insert: a fresh 32-hex-digit id, function `tests.task`,
    name `task`, and the `JobRecord` defaults for every field not in `overrides`."""
    with _ids_lock:
        job_id = f"{_ids.getrandbits(128):032x}"
    fields: dict[str, Any] = {"id": job_id, "function_name": "tests.task", "name": "task"}
    fields.update(overrides)
    return JobRecord(**fields)


def claim_race(insert_into: JobRepository, claim_from: Sequence[JobRepository], *,
               inserters: int = 8, per_inserter: int = 100,
               claimers: int = 4, timeout: float = 60.0) -> tuple[list[str], list[str]]:
    """Insert jobs from `inserters` threads (one record per call) while `claimers` threads
    claim whatever `ready` shows; claimer i uses `claim_from[i % len(claim_from)]`.

    Returns the ids inserted and the ids claimed, one entry per successful claim (so a job
    claimed twice appears twice). Raises the first exception any thread hit, or
    `AssertionError` if a thread outlived `timeout`."""
    batches = [[make_record() for _ in range(per_inserter)] for _ in range(inserters)]
    start = threading.Barrier(inserters + claimers)
    inserting_done = threading.Event()
    claimed: list[list[str]] = [[] for _ in range(claimers)]
    errors: list[BaseException] = []

    def insert(batch: list[JobRecord]) -> None:
        start.wait(timeout)
        for record in batch:
            insert_into.insert([record], NOW)

    def claim(index: int) -> None:
        repo = claim_from[index % len(claim_from)]
        start.wait(timeout)
        while not errors:
            finished = inserting_done.is_set()   # read before ready(): no insert can follow
            entries = repo.ready(None, 20)
            if not entries and finished:
                return
            for entry in entries:
                record = repo.claim(entry.job_id, f"worker-{index}", NOW, NOW + LEASE)
                if record is not None:
                    claimed[index].append(record.id)

    def guarded(target: Any, arg: Any) -> None:
        try:
            target(arg)
        except BaseException as exc:  # reported to the test thread below
            errors.append(exc)

    insert_threads = [threading.Thread(target=guarded, args=(insert, batch), name=f"contract-insert-{i}")
                      for i, batch in enumerate(batches)]
    claim_threads = [threading.Thread(target=guarded, args=(claim, i), name=f"contract-claim-{i}")
                     for i in range(claimers)]
    for thread in insert_threads + claim_threads:
        thread.start()
    for thread in insert_threads:
        thread.join(timeout)
    inserting_done.set()
    for thread in claim_threads:
        thread.join(timeout)
    if errors:
        raise errors[0]
    assert not any(t.is_alive() for t in insert_threads + claim_threads), "a race thread hung"
    return [r.id for batch in batches for r in batch], [i for ids in claimed for i in ids]


# -- helpers the tests share ------------------------------------------------------------
def _add(repo: JobRepository, now: float = NOW, **overrides: Any) -> JobRecord:
    record = make_record(**overrides)
    assert repo.insert([record], now) == [record.id]
    return record


def _get(repo: JobRepository, job_id: str) -> JobRecord:
    record = repo.get(job_id)
    assert record is not None, f"job {job_id} should be stored"
    return record


def _claim(repo: JobRepository, job_id: str, worker: str = "w1", now: float = NOW) -> JobRecord:
    record = repo.claim(job_id, worker, now, now + LEASE)
    assert record is not None, f"job {job_id} should be claimable"
    return record


def _complete(repo: JobRepository, job_id: str, now: float = NOW, result: Any = None) -> Cascade:
    record = _claim(repo, job_id, now=now)
    cascade = repo.complete(job_id, "w1", record.attempts, result, now)
    assert cascade is not None
    return cascade


def _fail(repo: JobRepository, job_id: str, now: float = NOW) -> Cascade:
    record = _claim(repo, job_id, now=now)
    cascade = repo.fail(job_id, "w1", record.attempts, error="boom", error_type="ValueError",
                        traceback=None, now=now, retry_at=None)
    assert cascade is not None
    return cascade


def _ids_of(entries: Iterable[QueueEntry]) -> list[str]:
    return [entry.job_id for entry in entries]


def _status(repo: JobRepository, job_id: str) -> JobStatus:
    return _get(repo, job_id).status


def _total(repo: JobRepository) -> int:
    return sum(repo.count_by_status().values())
