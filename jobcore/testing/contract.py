"""The `JobRepository` contract as pytest tests any backend runs; it never looks inside a backend.

Every test drives the public methods of `jobcore.repository.base.JobRepository` and checks
what its docstrings promise. Nothing here knows how a backend stores rows (its own tests
check that: pragmas, indexes, files) and nothing reads a clock: times are fixed numbers.

A backend runs the whole suite by subclassing `RepositoryContract` and providing a
`repository` fixture that yields a fresh, empty repository per test::

    import pytest
    from jobcore.testing.contract import RepositoryContract

    class TestMyBackend(RepositoryContract):
        @pytest.fixture
        def repository(self, tmp_path):
            repo = MyBackend(...)
            yield repo
            repo.close()
"""

from __future__ import annotations

import random
import threading
from typing import Any, Iterable, Sequence

import pytest

from ..errors import DependencyError
from ..models import JobStatus
from ..repository import base
from ..repository.base import Cascade, CancelOutcome, JobRecord, JobRepository, QueueEntry

__all__ = ["RepositoryContract", "make_record", "claim_race"]

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


class _AddingContract:
    """insert: sequence numbers, atomicity, unique keys and dependencies."""

    def test_insert_returns_ids_in_order_and_assigns_increasing_seq(self, repository: JobRepository) -> None:
        # given two batches
        first = [make_record() for _ in range(3)]
        second = [make_record() for _ in range(2)]
        # when they are inserted
        ids = repository.insert(first, NOW) + repository.insert(second, NOW + 1)
        # then ids come back in order and seq grows with insertion, also on the given records
        assert ids == [r.id for r in first + second]
        seqs = [_get(repository, job_id).seq for job_id in ids]
        assert seqs == sorted(seqs) and len(set(seqs)) == 5
        assert [r.seq for r in first + second] == seqs

    def test_insert_stores_every_field_it_is_given(self, repository: JobRepository) -> None:
        # given a record with every optional field set
        record = make_record(
            args=(1, "two", [3]), kwargs={"k": {"n": 1}}, name="report", priority=7,
            status=JobStatus.SCHEDULED, scheduled_at=NOW + 60, run_at=NOW + 60, max_retries=5,
            retry_delay=0.5, retry_backoff=3.0, retry_jitter=False, timeout=9.5,
            tags=frozenset({"a", "b"}), metadata={"m": [1, 2]}, owner="alice", unique_key="u1",
            isolation="process")
        # when it is stored and read back
        repository.insert([record], NOW)
        stored = _get(repository, record.id)
        # then every field survives and the repository's own fields start fresh
        assert (stored.function_name, stored.name, stored.args, stored.kwargs, stored.priority) == (
            "tests.task", "report", (1, "two", [3]), {"k": {"n": 1}}, 7)
        assert (stored.status, stored.scheduled_at, stored.run_at, stored.created_at) == (
            JobStatus.SCHEDULED, NOW + 60, NOW + 60, NOW)
        assert (stored.max_retries, stored.retry_delay, stored.retry_backoff, stored.retry_jitter,
                stored.timeout) == (5, 0.5, 3.0, False, 9.5)
        assert (stored.tags, stored.metadata, stored.owner, stored.unique_key, stored.isolation) == (
            frozenset({"a", "b"}), {"m": [1, 2]}, "alice", "u1", "process")
        assert (stored.attempts, stored.blocked, stored.progress, stored.result, stored.error,
                stored.worker_id, stored.cancel_requested, stored.decode_error) == (
            0, 0, 0.0, None, None, None, False, None)

    def test_a_batch_with_an_unknown_dependency_stores_nothing(self, repository: JobRepository) -> None:
        # given a batch whose last record depends on a job that does not exist
        good = make_record()
        bad = make_record(depends_on=("no-such-job",))
        # when it is inserted, then it is refused as a whole
        with pytest.raises(DependencyError, match="no-such-job"):
            repository.insert([good, bad], NOW)
        assert repository.get(good.id) is None and _total(repository) == 0

    def test_a_duplicate_id_raises_value_error_and_stores_nothing(self, repository: JobRepository) -> None:
        # given a stored job
        existing = _add(repository, name="original")
        newcomer = make_record()
        # when a batch reuses its id, then ValueError and nothing of the batch is stored
        with pytest.raises(ValueError, match=existing.id):
            repository.insert([newcomer, make_record(id=existing.id, name="impostor")], NOW)
        assert repository.get(newcomer.id) is None
        assert _get(repository, existing.id).name == "original" and _total(repository) == 1

    def test_an_id_twice_in_one_batch_raises_value_error(self, repository: JobRepository) -> None:
        twin = make_record()
        with pytest.raises(ValueError):
            repository.insert([twin, make_record(id=twin.id)], NOW)
        assert _total(repository) == 0

    def test_a_persistent_repository_refuses_what_json_cannot_hold(self, repository: JobRepository) -> None:
        if not repository.persistent:
            pytest.skip("only persistent repositories promise JSON payloads")
        # given a batch whose second record carries an object JSON cannot encode
        good, bad = make_record(), make_record(args=(object(),))
        # when inserted, then TypeError/ValueError and nothing stored
        with pytest.raises((TypeError, ValueError)):
            repository.insert([good, bad], NOW)
        assert _total(repository) == 0

    def test_unique_key_returns_the_unfinished_job_instead_of_storing(self, repository: JobRepository) -> None:
        # given an unfinished job with a unique key
        first = _add(repository, unique_key="nightly")
        # when another job with that key is inserted
        second = make_record(unique_key="nightly")
        ids = repository.insert([second], NOW + 1)
        # then the first job's id stands in for it and nothing new is stored
        assert ids == [first.id]
        assert repository.get(second.id) is None and _total(repository) == 1

    @pytest.mark.parametrize("ending", ["complete", "fail", "cancel"])
    def test_unique_key_is_free_again_once_its_job_finished(self, repository: JobRepository, ending: str) -> None:
        # given a job with a unique key that has finished
        first = _add(repository, unique_key="nightly")
        if ending == "complete":
            _complete(repository, first.id)
        elif ending == "fail":
            _fail(repository, first.id)
        else:
            repository.cancel(first.id, NOW, "not needed")
        # when a new job with the key is inserted, then it is stored
        second = make_record(unique_key="nightly")
        assert repository.insert([second], NOW + 1) == [second.id]
        assert _status(repository, second.id) is JobStatus.PENDING

    def test_unique_key_deduplicates_within_one_batch(self, repository: JobRepository) -> None:
        a, b, other = make_record(unique_key="k"), make_record(unique_key="k"), make_record()
        assert repository.insert([a, b, other], NOW) == [a.id, a.id, other.id]
        assert repository.get(b.id) is None and _total(repository) == 2

    def test_blocked_counts_dependencies_not_completed(self, repository: JobRepository) -> None:
        # given two waiting jobs and a completed one
        done = _add(repository)
        _complete(repository, done.id)
        a, b = _add(repository), _add(repository)
        # when a job depends on all three
        dependent = _add(repository, depends_on=(a.id, done.id, b.id))
        # then only the two unfinished ones block it
        stored = _get(repository, dependent.id)
        assert stored.blocked == 2 and stored.depends_on == (a.id, done.id, b.id)
        assert dependent.id not in _ids_of(repository.ready(None, 10))

    def test_a_dependency_cycle_in_a_batch_is_a_dependency_error(self, repository: JobRepository) -> None:
        a, b, c = make_record(), make_record(), make_record()
        a.depends_on, b.depends_on, c.depends_on = (c.id,), (a.id,), (b.id,)
        with pytest.raises(DependencyError):
            repository.insert([a, b, c], NOW)
        with pytest.raises(DependencyError):
            selfish = make_record()
            selfish.depends_on = (selfish.id,)
            repository.insert([selfish], NOW)
        assert _total(repository) == 0

    def test_a_dependency_may_come_later_in_the_same_batch(self, repository: JobRepository) -> None:
        # given a batch whose first record depends on its second
        later = make_record()
        first = make_record(depends_on=(later.id,))
        # when inserted
        assert repository.insert([first, later], NOW) == [first.id, later.id]
        # then the first waits for the second, and is released when it completes
        assert (_get(repository, first.id).blocked, _get(repository, later.id).blocked) == (1, 0)
        assert _ids_of(repository.ready(None, 10)) == [later.id]
        assert _ids_of(_complete(repository, later.id).released) == [first.id]

    @pytest.mark.parametrize("ending", ["fail", "cancel"])
    def test_depending_on_a_dead_job_stores_the_job_cancelled_naming_it(self, repository: JobRepository,
                                                                        ending: str) -> None:
        # given a job that failed or was cancelled
        dead = _add(repository)
        if ending == "fail":
            _fail(repository, dead.id)
        else:
            repository.cancel(dead.id, NOW, "not needed")
        # when a job depending on it is inserted
        dependent = make_record(depends_on=(dead.id,))
        assert repository.insert([dependent], NOW + 1) == [dependent.id]
        # then it is stored CANCELLED with an error naming the dead job
        stored = _get(repository, dependent.id)
        assert stored.status is JobStatus.CANCELLED and dead.id in (stored.error or "")
        assert stored.completed_at == NOW + 1
        assert repository.ready(None, 10) == []

    def test_a_batch_member_cancelled_at_insert_cancels_its_dependents_in_the_batch(
            self, repository: JobRepository) -> None:
        # given a failed job, and a batch: first -> middle -> failed (first listed first)
        dead = _add(repository)
        _fail(repository, dead.id)
        middle = make_record(depends_on=(dead.id,))
        first = make_record(depends_on=(middle.id,))
        # when the batch is inserted
        repository.insert([first, middle], NOW + 1)
        # then both are CANCELLED: neither can ever run
        assert _status(repository, middle.id) is JobStatus.CANCELLED
        stored = _get(repository, first.id)
        assert stored.status is JobStatus.CANCELLED and middle.id in (stored.error or "")

    def test_depending_on_a_deduplicated_batch_member_waits_for_the_job_standing_in(
            self, repository: JobRepository) -> None:
        # given an unfinished job with a unique key (a pipeline submitted before)
        existing = _add(repository, unique_key="fetch")
        # when the pipeline is submitted again: the fetch is deduplicated, its consumer is new
        fetch = make_record(unique_key="fetch")
        consumer = make_record(depends_on=(fetch.id,))
        assert repository.insert([fetch, consumer], NOW + 1) == [existing.id, consumer.id]
        # then the consumer waits for the job that stood in for the fetch
        stored = _get(repository, consumer.id)
        assert stored.depends_on == (existing.id,) and stored.blocked == 1
        assert _ids_of(_complete(repository, existing.id).released) == [consumer.id]


class _ReadingContract:
    """get, ready, scheduled, list, count_by_status and logs."""

    def test_get_of_an_unknown_id_is_none(self, repository: JobRepository) -> None:
        assert repository.get("no-such-job") is None

    def test_records_handed_out_are_copies(self, repository: JobRepository) -> None:
        # given a stored job, inserted from a record the caller keeps
        given = make_record(metadata={"k": 1}, kwargs={"n": 1})
        repository.insert([given], NOW)
        # when the caller changes the given record and the records it reads back
        given.name, given.metadata["k"] = "renamed", 2
        read = _get(repository, given.id)
        read.status, read.attempts, read.metadata["k"], read.kwargs["n"] = JobStatus.FAILED, 9, 3, 3
        listed = repository.list()[0]
        listed.owner, listed.metadata["k"] = "mallory", 4
        claimed = _claim(repository, given.id)
        claimed.worker_id, claimed.progress_details["x"] = "w9", 1
        # then the store is unchanged
        stored = _get(repository, given.id)
        assert (stored.name, stored.status, stored.attempts, stored.owner, stored.worker_id) == (
            "task", JobStatus.RUNNING, 1, None, "w1")
        assert (stored.metadata, stored.kwargs, stored.progress_details) == ({"k": 1}, {"n": 1}, {})

    def test_ready_orders_by_priority_then_insertion(self, repository: JobRepository) -> None:
        # given jobs of mixed priorities, inserted in two batches
        priorities = [5, 10, 5, 0, 10, -3, 5]
        records = [make_record(priority=p) for p in priorities]
        repository.insert(records[:4], NOW)
        repository.insert(records[4:], NOW)
        # when the ready queue is read, then highest priority first, FIFO among equals
        order = sorted(range(len(records)), key=lambda i: (-priorities[i], i))
        expected = [records[i].id for i in order]
        assert _ids_of(repository.ready(None, 10)) == expected
        assert _ids_of(repository.ready(None, 3)) == expected[:3]
        top = repository.ready(None, 1)[0]
        assert (top.priority, top.seq, top.function_name, top.is_schedule) == (
            10, records[1].seq, "tests.task", False)

    def test_ready_filters_by_function_name(self, repository: JobRepository) -> None:
        mail1 = _add(repository, function_name="mail.send")
        report = _add(repository, function_name="report.build")
        mail2 = _add(repository, function_name="mail.send")
        assert _ids_of(repository.ready(["mail.send"], 10)) == [mail1.id, mail2.id]
        assert _ids_of(repository.ready({"report.build", "other"}, 10)) == [report.id]
        assert repository.ready([], 10) == []
        assert _ids_of(repository.ready(None, 10)) == [mail1.id, report.id, mail2.id]

    def test_ready_excludes_blocked_scheduled_running_and_finished_jobs(self, repository: JobRepository) -> None:
        # given one job in each situation
        waiting = _add(repository)
        _add(repository, depends_on=(waiting.id,))                                 # blocked
        _add(repository, status=JobStatus.SCHEDULED, run_at=NOW - 1)               # scheduled, due
        _claim(repository, _add(repository).id)                                    # running
        _complete(repository, _add(repository).id)                                 # completed
        repository.cancel(_add(repository).id, NOW, "no")                          # cancelled
        # then only the plain pending job is ready
        assert _ids_of(repository.ready(None, 50)) == [waiting.id]

    def test_scheduled_orders_by_run_at_and_filters_by_function_name(self, repository: JobRepository) -> None:
        # given scheduled jobs due at various times, one blocked, one for another function
        late = _add(repository, status=JobStatus.SCHEDULED, run_at=NOW + 30)
        soon = _add(repository, status=JobStatus.SCHEDULED, run_at=NOW + 10)
        mid = _add(repository, status=JobStatus.SCHEDULED, run_at=NOW + 20)
        other = _add(repository, status=JobStatus.SCHEDULED, run_at=NOW + 5, function_name="other")
        _add(repository, status=JobStatus.SCHEDULED, run_at=NOW + 1, depends_on=(late.id,))
        _add(repository)                                                           # pending
        # then earliest first, blocked and pending left out, filtered by name
        assert _ids_of(repository.scheduled(None, 10)) == [other.id, soon.id, mid.id, late.id]
        assert _ids_of(repository.scheduled(["tests.task"], 2)) == [soon.id, mid.id]
        assert repository.scheduled(None, 1)[0].run_at == NOW + 5

    def test_scheduled_always_includes_schedules(self, repository: JobRepository) -> None:
        schedule = _add(repository, function_name="cron.fn", cron="*/5 * * * *",
                        status=JobStatus.SCHEDULED, run_at=NOW + 300)
        entries = repository.scheduled(["tests.task"], 10)
        assert _ids_of(entries) == [schedule.id] and entries[0].is_schedule

    def test_list_is_newest_first_with_limit_and_offset(self, repository: JobRepository) -> None:
        records = [make_record() for _ in range(5)]
        repository.insert(records[:2], NOW)
        repository.insert(records[2:], NOW + 1)
        newest_first = [r.id for r in reversed(records)]
        assert [r.id for r in repository.list()] == newest_first
        assert [r.id for r in repository.list(limit=2)] == newest_first[:2]
        assert [r.id for r in repository.list(limit=2, offset=2)] == newest_first[2:4]
        assert [r.id for r in repository.list(limit=None, offset=1)] == newest_first[1:]
        assert repository.list(offset=5) == []

    def test_list_filters_by_status_owner_and_every_tag(self, repository: JobRepository) -> None:
        a = _add(repository, owner="alice", tags=frozenset({"x", "y"}))
        b = _add(repository, owner="bob", tags=frozenset({"x"}))
        c = _add(repository, owner="alice")
        _complete(repository, c.id)
        d = _add(repository, owner="alice", tags=frozenset({"y"}))

        def ids(**filters: Any) -> list[str]:
            return [r.id for r in repository.list(**filters)]

        assert ids(owner="alice") == [d.id, c.id, a.id]
        assert ids(tags=["x"]) == [b.id, a.id]
        assert ids(tags={"x", "y"}) == [a.id]
        assert ids(status=JobStatus.COMPLETED) == [c.id]
        assert ids(status=JobStatus.PENDING, owner="alice", tags=["y"]) == [d.id, a.id]
        assert ids(tags=["nope"]) == [] and ids(owner="carol") == []

    def test_count_by_status_has_every_status(self, repository: JobRepository) -> None:
        assert repository.count_by_status() == {status: 0 for status in JobStatus}
        _add(repository)
        _add(repository)
        _add(repository, status=JobStatus.SCHEDULED, run_at=NOW + 60)
        _claim(repository, _add(repository).id)
        _complete(repository, _add(repository).id)
        _fail(repository, _add(repository).id)
        repository.cancel(_add(repository).id, NOW, "no")
        assert repository.count_by_status() == {
            JobStatus.PENDING: 2, JobStatus.SCHEDULED: 1, JobStatus.RUNNING: 1,
            JobStatus.COMPLETED: 1, JobStatus.FAILED: 1, JobStatus.CANCELLED: 1}

    def test_logs_are_kept_per_job_oldest_first(self, repository: JobRepository) -> None:
        a, b = _add(repository), _add(repository)
        repository.add_log(a.id, "info", "first", NOW)
        repository.add_log(b.id, "info", "other job", NOW)
        repository.add_log(a.id, "warning", "second, same time", NOW)
        repository.add_log(a.id, "error", "third", NOW + 1)
        assert repository.logs(a.id) == [(NOW, "info", "first"), (NOW, "warning", "second, same time"),
                                         (NOW + 1, "error", "third")]
        assert repository.logs(b.id) == [(NOW, "info", "other job")]
        assert repository.logs("no-such-job") == []


class _RunningContract:
    """claim, complete, fail, finish_cancelled, cancel, requeue, progress, heartbeats, recovery."""

    def test_claim_makes_a_pending_job_running(self, repository: JobRepository) -> None:
        job = _add(repository)
        claimed = repository.claim(job.id, "w1", NOW + 5, NOW + 35)
        assert claimed is not None
        for record in (claimed, _get(repository, job.id)):
            assert (record.status, record.attempts, record.started_at, record.worker_id,
                    record.lease_expires_at, record.cancel_requested) == (
                JobStatus.RUNNING, 1, NOW + 5, "w1", NOW + 35, False)

    def test_a_claimed_job_cannot_be_claimed_again(self, repository: JobRepository) -> None:
        job = _add(repository)
        _claim(repository, job.id, "w1")
        assert repository.claim(job.id, "w2", NOW + 1, NOW + 31) is None
        assert repository.claim(job.id, "w1", NOW + 1, NOW + 31) is None
        stored = _get(repository, job.id)
        assert (stored.worker_id, stored.attempts, stored.lease_expires_at) == ("w1", 1, NOW + LEASE)

    def test_a_scheduled_job_is_claimable_only_once_due(self, repository: JobRepository) -> None:
        job = _add(repository, status=JobStatus.SCHEDULED, run_at=NOW + 10)
        assert repository.claim(job.id, "w1", NOW + 9.5, NOW + 40) is None
        assert _status(repository, job.id) is JobStatus.SCHEDULED
        assert _get(repository, job.id).attempts == 0
        assert _claim(repository, job.id, now=NOW + 10).attempts == 1

    def test_blocked_finished_schedule_and_unknown_jobs_are_not_claimable(self, repository: JobRepository) -> None:
        dependency = _add(repository)
        blocked = _add(repository, depends_on=(dependency.id,))
        cancelled = _add(repository)
        repository.cancel(cancelled.id, NOW, "no")
        completed, failed = _add(repository), _add(repository)
        _complete(repository, completed.id)
        _fail(repository, failed.id)
        schedule = _add(repository, cron="* * * * *", status=JobStatus.SCHEDULED, run_at=NOW - 1)
        for job in (blocked, cancelled, completed, failed, schedule):
            before = _get(repository, job.id)
            assert repository.claim(job.id, "w2", NOW + 1, NOW + 31) is None, job
            after = _get(repository, job.id)
            assert (after.status, after.attempts, after.worker_id) == (before.status, before.attempts,
                                                                      before.worker_id)
        assert repository.claim("no-such-job", "w2", NOW, NOW + LEASE) is None

    def test_complete_applies_only_for_the_holding_worker_and_attempt(self, repository: JobRepository) -> None:
        # given a running job held by w1 on attempt 1
        job = _add(repository)
        _claim(repository, job.id, "w1")
        # when another worker, or the wrong attempt, completes it: nothing happens
        assert repository.complete(job.id, "w2", 1, "theirs", NOW + 1) is None
        assert repository.complete(job.id, "w1", 2, "future", NOW + 1) is None
        stored = _get(repository, job.id)
        assert (stored.status, stored.result, stored.completed_at) == (JobStatus.RUNNING, None, None)
        # when the holder completes it: done, with result and full progress
        cascade = repository.complete(job.id, "w1", 1, {"rows": 3}, NOW + 2)
        assert isinstance(cascade, Cascade) and not cascade.released and not cascade.cancelled
        stored = _get(repository, job.id)
        assert (stored.status, stored.result, stored.progress, stored.completed_at,
                stored.lease_expires_at) == (JobStatus.COMPLETED, {"rows": 3}, 1.0, NOW + 2, None)
        # and completing it again is refused
        assert repository.complete(job.id, "w1", 1, "again", NOW + 3) is None
        assert _get(repository, job.id).result == {"rows": 3}

    def test_fail_applies_only_for_the_holding_worker_and_attempt(self, repository: JobRepository) -> None:
        job = _add(repository)
        _claim(repository, job.id, "w1")
        for worker, attempt in (("w2", 1), ("w1", 2)):
            assert repository.fail(job.id, worker, attempt, error="x", error_type="E", traceback=None,
                                   now=NOW + 1, retry_at=None, note="should not be logged") is None
        stored = _get(repository, job.id)
        assert (stored.status, stored.error, stored.completed_at) == (JobStatus.RUNNING, None, None)
        assert repository.logs(job.id) == []

    def test_a_stale_attempt_cannot_touch_the_job_once_it_was_taken_back(self, repository: JobRepository) -> None:
        # given a job whose first attempt lost its lease and was claimed again by the same worker
        job = _add(repository)
        _claim(repository, job.id, "w1")
        assert _ids_of(repository.recover_expired(NOW + LEASE + 1)) == [job.id]
        assert _claim(repository, job.id, "w1", now=NOW + LEASE + 2).attempts == 2
        # when the first attempt reports in, then every report is refused
        later = NOW + LEASE + 3
        assert repository.update_progress(job.id, "w1", 1, 0.5, "old", {}, later) is False
        assert repository.complete(job.id, "w1", 1, "old", later) is None
        assert repository.fail(job.id, "w1", 1, error="old", error_type="E", traceback=None,
                               now=later, retry_at=None) is None
        assert repository.finish_cancelled(job.id, "w1", 1, later) is None
        stored = _get(repository, job.id)
        assert (stored.status, stored.attempts, stored.progress, stored.result) == (
            JobStatus.RUNNING, 2, 0.0, None)

    def test_complete_and_fail_log_their_notes(self, repository: JobRepository) -> None:
        done, failed = _add(repository), _add(repository)
        _claim(repository, done.id)
        _claim(repository, failed.id)
        repository.complete(done.id, "w1", 1, None, NOW + 1, note="attempt 1 completed")
        repository.fail(failed.id, "w1", 1, error="boom", error_type="ValueError", traceback=None,
                        now=NOW + 2, retry_at=None, note="attempt 1 failed: boom")
        assert repository.logs(done.id) == [(NOW + 1, "info", "attempt 1 completed")]
        assert repository.logs(failed.id) == [(NOW + 2, "error", "attempt 1 failed: boom")]

    def test_fail_with_retry_at_schedules_the_next_attempt(self, repository: JobRepository) -> None:
        # given a running job with a dependent
        job = _add(repository, max_retries=3)
        dependent = _add(repository, depends_on=(job.id,))
        _claim(repository, job.id)
        # when its attempt fails with a retry time
        cascade = repository.fail(job.id, "w1", 1, error="reset", error_type="ConnectionError",
                                  traceback="Traceback ...", now=NOW + 1, retry_at=NOW + 10)
        # then it is SCHEDULED for then, the error is recorded, and the dependent still waits
        assert cascade is not None and not cascade.cancelled and not cascade.released
        stored = _get(repository, job.id)
        assert (stored.status, stored.run_at, stored.error, stored.error_type, stored.traceback,
                stored.attempts, stored.completed_at, stored.lease_expires_at) == (
            JobStatus.SCHEDULED, NOW + 10, "reset", "ConnectionError", "Traceback ...", 1, None, None)
        assert _ids_of(repository.scheduled(None, 10)) == [job.id] and repository.ready(None, 10) == []
        assert _status(repository, dependent.id) is JobStatus.PENDING
        # and the next attempt can be claimed once due, counted as attempt 2
        assert repository.claim(job.id, "w1", NOW + 9, NOW + 39) is None
        assert _claim(repository, job.id, now=NOW + 10).attempts == 2

    def test_fail_without_retry_is_final(self, repository: JobRepository) -> None:
        job = _add(repository)
        _claim(repository, job.id)
        cascade = repository.fail(job.id, "w1", 1, error="bad input", error_type="ValueError",
                                  traceback="Traceback ...", now=NOW + 1, retry_at=None)
        assert cascade is not None and not cascade.cancelled
        stored = _get(repository, job.id)
        assert (stored.status, stored.error, stored.error_type, stored.traceback, stored.completed_at,
                stored.lease_expires_at) == (JobStatus.FAILED, "bad input", "ValueError", "Traceback ...",
                                             NOW + 1, None)

    def test_complete_releases_a_dependent_only_when_its_last_dependency_completes(
            self, repository: JobRepository) -> None:
        # given c waiting on a and b, and d waiting on a only
        a, b = _add(repository), _add(repository)
        c = _add(repository, depends_on=(a.id, b.id))
        d = _add(repository, depends_on=(a.id,))
        # when a completes, then only d is released
        assert _ids_of(_complete(repository, a.id).released) == [d.id]
        assert _get(repository, c.id).blocked == 1 and _get(repository, d.id).blocked == 0
        assert _ids_of(repository.ready(None, 10)) == [b.id, d.id]
        # when b completes, then c is released too
        released = _complete(repository, b.id, now=NOW + 1).released
        assert _ids_of(released) == [c.id] and released[0].seq == _get(repository, c.id).seq
        assert _ids_of(repository.ready(None, 10)) == [c.id, d.id]

    def test_fail_cancels_dependents_transitively_naming_the_failed_job(self, repository: JobRepository) -> None:
        # given root <- child (scheduled) <- grandchild, root <- sibling, and an unrelated job
        root, unrelated = _add(repository), _add(repository)
        child = _add(repository, depends_on=(root.id,), status=JobStatus.SCHEDULED, run_at=NOW + 60)
        grandchild = _add(repository, depends_on=(child.id,))
        sibling = _add(repository, depends_on=(root.id, unrelated.id))
        # when root fails for good
        cascade = _fail(repository, root.id, now=NOW + 1)
        # then every dependent, transitively, is CANCELLED naming root; the unrelated job runs on
        assert sorted(cascade.cancelled) == sorted([child.id, grandchild.id, sibling.id])
        for job in (child, grandchild, sibling):
            stored = _get(repository, job.id)
            assert stored.status is JobStatus.CANCELLED and root.id in (stored.error or "")
            assert stored.completed_at == NOW + 1
        assert _status(repository, unrelated.id) is JobStatus.PENDING

    def test_finish_cancelled_ends_a_running_job_and_its_dependents(self, repository: JobRepository) -> None:
        job = _add(repository)
        dependent = _add(repository, depends_on=(job.id,))
        _claim(repository, job.id, "w1")
        assert repository.cancel(job.id, NOW + 1, "user")[0] is CancelOutcome.REQUESTED
        assert repository.finish_cancelled(job.id, "w2", 1, NOW + 2) is None
        assert _status(repository, job.id) is JobStatus.RUNNING
        cascade = repository.finish_cancelled(job.id, "w1", 1, NOW + 2)
        assert cascade is not None and list(cascade.cancelled) == [dependent.id]
        stored = _get(repository, job.id)
        assert (stored.status, stored.completed_at, stored.lease_expires_at) == (
            JobStatus.CANCELLED, NOW + 2, None)
        assert job.id in (_get(repository, dependent.id).error or "")

    def test_cancel_reports_what_it_did(self, repository: JobRepository) -> None:
        pending = _add(repository)
        scheduled = _add(repository, status=JobStatus.SCHEDULED, run_at=NOW + 60)
        schedule = _add(repository, cron="@daily", status=JobStatus.SCHEDULED, run_at=NOW + 60)
        running, completed = _add(repository), _add(repository)
        _claim(repository, running.id)
        _complete(repository, completed.id)
        for job in (pending, scheduled, schedule):
            outcome, cascade = repository.cancel(job.id, NOW + 1, "changed my mind")
            assert outcome is CancelOutcome.CANCELLED and not cascade.cancelled
            stored = _get(repository, job.id)
            assert (stored.status, stored.error, stored.completed_at) == (
                JobStatus.CANCELLED, "changed my mind", NOW + 1)
        assert repository.cancel(running.id, NOW + 1, "stop")[0] is CancelOutcome.REQUESTED
        stored = _get(repository, running.id)
        assert stored.status is JobStatus.RUNNING and stored.cancel_requested
        assert repository.cancel(completed.id, NOW + 1, "late")[0] is CancelOutcome.FINISHED
        assert _status(repository, completed.id) is JobStatus.COMPLETED
        assert repository.cancel(pending.id, NOW + 2, "again")[0] is CancelOutcome.FINISHED
        assert _get(repository, pending.id).error == "changed my mind"
        assert repository.cancel("no-such-job", NOW, "x")[0] is CancelOutcome.NOT_FOUND

    def test_cancel_of_a_pending_job_cascades_to_its_dependents(self, repository: JobRepository) -> None:
        root = _add(repository)
        child = _add(repository, depends_on=(root.id,))
        grandchild = _add(repository, depends_on=(child.id,))
        outcome, cascade = repository.cancel(root.id, NOW + 1, "not needed")
        assert outcome is CancelOutcome.CANCELLED
        assert sorted(cascade.cancelled) == sorted([child.id, grandchild.id])
        assert all(_status(repository, j.id) is JobStatus.CANCELLED for j in (child, grandchild))
        assert root.id in (_get(repository, grandchild.id).error or "")

    def test_requeue_makes_failed_and_cancelled_jobs_pending_again(self, repository: JobRepository) -> None:
        failed, cancelled = _add(repository, priority=3), _add(repository)
        _fail(repository, failed.id)
        repository.cancel(cancelled.id, NOW, "no")
        for job in (failed, cancelled):
            entry = repository.requeue(job.id, NOW + 1)
            assert entry is not None and entry.job_id == job.id
            stored = _get(repository, job.id)
            assert (stored.status, stored.attempts, stored.error, stored.error_type, stored.completed_at,
                    stored.blocked) == (JobStatus.PENDING, 0, None, None, None, 0)
        assert repository.requeue(failed.id, NOW + 1) is None   # now pending: left alone
        assert _ids_of(repository.ready(None, 10)) == [cancelled.id, failed.id]  # priority 5, then 3
        assert _claim(repository, failed.id, now=NOW + 2).attempts == 1

    def test_requeue_leaves_unfinished_completed_and_unknown_jobs_alone(self, repository: JobRepository) -> None:
        pending = _add(repository)
        scheduled = _add(repository, status=JobStatus.SCHEDULED, run_at=NOW + 60)
        running, completed = _add(repository), _add(repository)
        _claim(repository, running.id)
        _complete(repository, completed.id)
        for job in (pending, scheduled, running, completed):
            before = _get(repository, job.id)
            assert repository.requeue(job.id, NOW + 1) is None
            after = _get(repository, job.id)
            assert (after.status, after.attempts) == (before.status, before.attempts)
        assert repository.requeue("no-such-job", NOW) is None

    def test_requeue_counts_the_dependencies_still_unfinished(self, repository: JobRepository) -> None:
        waiting_on = _add(repository)
        dependent = _add(repository, depends_on=(waiting_on.id,))
        repository.cancel(dependent.id, NOW, "no")
        assert repository.requeue(dependent.id, NOW + 1) is not None
        assert _get(repository, dependent.id).blocked == 1
        assert _ids_of(repository.ready(None, 10)) == [waiting_on.id]
        assert _ids_of(_complete(repository, waiting_on.id, now=NOW + 2).released) == [dependent.id]

    def test_requeue_never_makes_two_unfinished_jobs_share_a_unique_key(self, repository: JobRepository) -> None:
        old = _add(repository, unique_key="nightly")
        _fail(repository, old.id)
        new = _add(repository, unique_key="nightly")
        assert repository.requeue(old.id, NOW + 1) is None
        assert (_status(repository, old.id), _status(repository, new.id)) == (JobStatus.FAILED, JobStatus.PENDING)

    def test_update_progress_applies_only_for_the_holding_worker_and_attempt(
            self, repository: JobRepository) -> None:
        job, idle = _add(repository), _add(repository)
        _claim(repository, job.id, "w1")
        assert repository.update_progress(job.id, "w1", 1, 0.5, "half", {"rows": 5}, NOW + 1) is True
        assert repository.update_progress(job.id, "w2", 1, 0.9, "theirs", {}, NOW + 2) is False
        assert repository.update_progress(job.id, "w1", 2, 0.9, "future", {}, NOW + 2) is False
        assert repository.update_progress(idle.id, "w1", 0, 0.9, "idle", {}, NOW + 2) is False
        stored = _get(repository, job.id)
        assert (stored.progress, stored.progress_message, stored.progress_details) == (0.5, "half", {"rows": 5})
        assert _get(repository, idle.id).progress == 0.0

    def test_heartbeat_extends_only_the_given_leases_the_worker_holds(self, repository: JobRepository) -> None:
        # given w1 running a and b, w2 running c, and d pending
        a, b, c, d = (_add(repository) for _ in range(4))
        _claim(repository, a.id, "w1")
        _claim(repository, b.id, "w1")
        _claim(repository, c.id, "w2")
        # when w1 heartbeats a, c and d
        assert repository.heartbeat("w1", [a.id, c.id, d.id], NOW + 100, NOW + 5) == []
        # then only a's lease moves
        leases = [_get(repository, j.id).lease_expires_at for j in (a, b, c, d)]
        assert leases == [NOW + 100, NOW + LEASE, NOW + LEASE, None]
        assert _status(repository, d.id) is JobStatus.PENDING
        # and a requested cancellation is reported to the holder only
        repository.cancel(a.id, NOW + 6, "stop")
        assert repository.heartbeat("w1", [a.id, b.id], NOW + 110, NOW + 7) == [a.id]
        assert repository.heartbeat("w2", [a.id, c.id], NOW + 110, NOW + 7) == []
        assert repository.heartbeat("w1", [], NOW + 110, NOW + 7) == []

    def test_recover_expired_requeues_jobs_whose_lease_ran_out(self, repository: JobRepository) -> None:
        # given a running job whose worker stopped heartbeating, and one whose worker still does
        lost, alive = _add(repository, max_retries=3), _add(repository)
        _claim(repository, lost.id, "w1")
        _claim(repository, alive.id, "w2")
        repository.heartbeat("w2", [alive.id], NOW + 90, NOW + 20)
        # when recovery runs before and after the lost lease's end
        assert repository.recover_expired(NOW + LEASE - 1) == []
        recovered = repository.recover_expired(NOW + LEASE + 1)
        # then only the lost job is back, PENDING, its attempt still counted
        assert _ids_of(recovered) == [lost.id]
        stored = _get(repository, lost.id)
        assert (stored.status, stored.attempts, stored.lease_expires_at) == (JobStatus.PENDING, 1, None)
        assert _ids_of(repository.ready(None, 10)) == [lost.id]
        assert _status(repository, alive.id) is JobStatus.RUNNING
        assert _claim(repository, lost.id, "w3", now=NOW + LEASE + 2).attempts == 2

    def test_recover_expired_fails_a_job_whose_last_attempt_was_lost(self, repository: JobRepository) -> None:
        # given a job allowed one retry, with a dependent
        job = _add(repository, max_retries=1)
        dependent = _add(repository, depends_on=(job.id,))
        # when both of its attempts lose their lease
        _claim(repository, job.id, now=NOW)
        assert _ids_of(repository.recover_expired(NOW + LEASE + 1)) == [job.id]
        _claim(repository, job.id, now=NOW + 100)
        assert repository.recover_expired(NOW + 100 + LEASE + 1) == []
        # then it is FAILED as WorkerLost, and its dependent is cancelled
        stored = _get(repository, job.id)
        assert (stored.status, stored.error_type, stored.attempts, stored.completed_at) == (
            JobStatus.FAILED, "WorkerLost", 2, NOW + 100 + LEASE + 1)
        assert _status(repository, dependent.id) is JobStatus.CANCELLED


class _SettlingContract:
    """release, and apply: a worker's settlements and next claims in one step."""

    def test_release_hands_a_claimed_job_back_without_counting_the_attempt(
            self, repository: JobRepository) -> None:
        # given a job claimed by w1
        job = _add(repository)
        _claim(repository, job.id, "w1")
        # when another worker or another attempt releases it: refused
        assert repository.release(job.id, "w2", 1, NOW + 1) is False
        assert repository.release(job.id, "w1", 2, NOW + 1) is False
        assert _status(repository, job.id) is JobStatus.RUNNING
        # when its holder releases it: PENDING again, as if never claimed
        assert repository.release(job.id, "w1", 1, NOW + 1) is True
        stored = _get(repository, job.id)
        assert (stored.status, stored.attempts, stored.worker_id, stored.lease_expires_at) == (
            JobStatus.PENDING, 0, None, None)
        assert _ids_of(repository.ready(None, 10)) == [job.id]
        assert _claim(repository, job.id, "w2", now=NOW + 2).attempts == 1

    def test_apply_settles_in_order_then_claims(self, repository: JobRepository) -> None:
        # given w1 holding four jobs, w2 holding one, and jobs waiting to be claimed
        done, retried, failed, released, theirs = (_add(repository) for _ in range(5))
        for job in (done, retried, failed, released):
            _claim(repository, job.id, "w1")
        _claim(repository, theirs.id, "w2")
        after_done = _add(repository, depends_on=(done.id,))
        first, second = _add(repository), _add(repository)
        later = _add(repository, status=JobStatus.SCHEDULED, run_at=NOW + 60)
        settlements = [
            base.Settlement("complete", done.id, 1, result={"n": 1}, note="attempt 1 completed"),
            base.Settlement("retry", retried.id, 1, error="reset", error_type="ConnectionError",
                            retry_at=NOW + 10),
            base.Settlement("fail", failed.id, 1, error="bad", error_type="ValueError"),
            base.Settlement("release", released.id, 1),
            base.Settlement("complete", theirs.id, 1, result="not mine"),
        ]
        # when w1 applies them and asks for more work
        cascades, claimed = repository.apply(settlements, [first.id, after_done.id, later.id, second.id,
                                                           "no-such-job"], "w1", NOW + 1, NOW + 31)
        # then each settlement reports like its single-job method
        assert len(cascades) == 5 and cascades[4] is None
        assert cascades[0] is not None and _ids_of(cascades[0].released) == [after_done.id]
        assert all(c is not None and not c.cancelled and not c.released for c in cascades[1:4])
        assert (_get(repository, done.id).status, _get(repository, done.id).result) == (
            JobStatus.COMPLETED, {"n": 1})
        assert repository.logs(done.id) == [(NOW + 1, "info", "attempt 1 completed")]
        assert (_status(repository, retried.id), _get(repository, retried.id).run_at) == (
            JobStatus.SCHEDULED, NOW + 10)
        assert _status(repository, failed.id) is JobStatus.FAILED
        assert (_status(repository, released.id), _get(repository, released.id).attempts) == (
            JobStatus.PENDING, 0)
        assert (_status(repository, theirs.id), _get(repository, theirs.id).result) == (JobStatus.RUNNING, None)
        # and the claims came after them: the job released by `done` is claimed too
        assert sorted(r.id for r in claimed) == sorted([first.id, after_done.id, second.id])
        for record in claimed:
            assert (record.status, record.worker_id, record.attempts, record.lease_expires_at) == (
                JobStatus.RUNNING, "w1", 1, NOW + 31)
        assert _status(repository, later.id) is JobStatus.SCHEDULED

    def test_apply_refuses_an_unstorable_result_before_writing(self, repository: JobRepository) -> None:
        if not repository.persistent:
            pytest.skip("only persistent repositories promise JSON results")
        ok, bad, waiting = _add(repository), _add(repository), _add(repository)
        _claim(repository, ok.id, "w1")
        _claim(repository, bad.id, "w1")
        with pytest.raises((TypeError, ValueError)):
            repository.apply([base.Settlement("complete", ok.id, 1, result="fine"),
                              base.Settlement("complete", bad.id, 1, result=object())],
                             [waiting.id], "w1", NOW + 1, NOW + 31)
        assert [_status(repository, j.id) for j in (ok, bad, waiting)] == [
            JobStatus.RUNNING, JobStatus.RUNNING, JobStatus.PENDING]


class _SchedulesContract:
    """fire_schedule: each fire time of a cron schedule yields at most one run."""

    def test_fire_schedule_stores_the_run_and_moves_the_schedule_on(self, repository: JobRepository) -> None:
        # given a schedule due at NOW + 60
        schedule = _add(repository, cron="* * * * *", status=JobStatus.SCHEDULED, run_at=NOW + 60)
        run = make_record(metadata={"schedule_id": schedule.id})
        # when it fires
        assert repository.fire_schedule(schedule.id, NOW + 60, NOW + 120, run, NOW + 61) is True
        # then the run is a PENDING job queued after it, and the schedule waits for its next fire
        stored = _get(repository, run.id)
        assert (stored.status, stored.created_at, stored.metadata) == (
            JobStatus.PENDING, NOW + 61, {"schedule_id": schedule.id})
        assert run.seq == stored.seq > _get(repository, schedule.id).seq
        assert _ids_of(repository.ready(None, 10)) == [run.id]
        moved = _get(repository, schedule.id)
        assert (moved.status, moved.run_at) == (JobStatus.SCHEDULED, NOW + 120)

    def test_fire_schedule_fires_each_time_once(self, repository: JobRepository) -> None:
        schedule = _add(repository, cron="* * * * *", status=JobStatus.SCHEDULED, run_at=NOW + 60)
        assert repository.fire_schedule(schedule.id, NOW + 60, NOW + 120, make_record(), NOW + 61)
        late = make_record()
        assert repository.fire_schedule(schedule.id, NOW + 60, NOW + 180, late, NOW + 62) is False
        assert repository.get(late.id) is None and _total(repository) == 2
        assert _get(repository, schedule.id).run_at == NOW + 120

    def test_fire_schedule_refuses_ended_or_ordinary_jobs(self, repository: JobRepository) -> None:
        ended = _add(repository, cron="@hourly", status=JobStatus.SCHEDULED, run_at=NOW)
        repository.cancel(ended.id, NOW, "stop")
        ordinary = _add(repository, status=JobStatus.SCHEDULED, run_at=NOW)
        for job_id in (ended.id, ordinary.id, "no-such-job"):
            assert repository.fire_schedule(job_id, NOW, NOW + 3600, make_record(), NOW + 1) is False
        assert _total(repository) == 2 and _get(repository, ordinary.id).run_at == NOW

    def test_concurrent_fires_of_one_time_store_one_run(self, repository: JobRepository) -> None:
        schedule = _add(repository, cron="* * * * *", status=JobStatus.SCHEDULED, run_at=NOW + 60)
        runs = [make_record() for _ in range(4)]
        start = threading.Barrier(len(runs))
        outcomes: list[bool] = []

        def fire(run: JobRecord) -> None:
            start.wait(10)
            outcomes.append(repository.fire_schedule(schedule.id, NOW + 60, NOW + 120, run, NOW + 61))

        threads = [threading.Thread(target=fire, args=(run,), name=f"contract-fire-{i}")
                   for i, run in enumerate(runs)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert sorted(outcomes) == [False, False, False, True]
        assert _total(repository) == 2


class _WorkersContract:
    """The worker registry and change detection."""

    def test_worker_registry_records_beats_reaps_and_forgets(self, repository: JobRepository) -> None:
        # given two registered workers
        repository.register_worker("w1", "host-a", 101, NOW)
        repository.register_worker("w2", "host-b", 202, NOW + 1)
        first, second = repository.list_workers()
        assert (first.worker_id, first.host, first.pid, first.started_at, first.heartbeat_at,
                tuple(first.running)) == ("w1", "host-a", 101, NOW, NOW, ())
        assert second.worker_id == "w2"
        # when w1 beats with its running jobs, and an unknown worker beats
        repository.beat_worker("w1", ["job-b", "job-a"], NOW + 5)
        repository.beat_worker("ghost", ["job-c"], NOW + 5)
        # then w1 is refreshed and the ghost is not registered
        beaten = repository.list_workers()[0]
        assert (beaten.heartbeat_at, sorted(beaten.running), beaten.started_at) == (
            NOW + 5, ["job-a", "job-b"], NOW)
        assert [w.worker_id for w in repository.list_workers()] == ["w1", "w2"]
        # when workers silent since before NOW + 3 are reaped, then only w2 goes
        assert repository.reap_workers(NOW + 3) == ["w2"]
        assert [w.worker_id for w in repository.list_workers()] == ["w1"]
        # and unregistering forgets w1; unregistering again is harmless
        repository.unregister_worker("w1")
        repository.unregister_worker("w1")
        assert repository.list_workers() == []

    def test_registering_a_worker_again_replaces_it(self, repository: JobRepository) -> None:
        repository.register_worker("w1", "host-a", 101, NOW)
        repository.beat_worker("w1", ["job-a"], NOW + 1)
        repository.register_worker("w1", "host-a", 102, NOW + 10)
        (worker,) = repository.list_workers()
        assert (worker.pid, worker.started_at, worker.heartbeat_at, tuple(worker.running)) == (
            102, NOW + 10, NOW + 10, ())

    def test_change_token_moves_when_another_thread_commits(self, repository: JobRepository) -> None:
        before = repository.change_token()
        if before is None:
            pytest.skip("this backend cannot tell when the store changed")
        assert repository.change_token() == before          # nothing happened: same token
        writer = threading.Thread(target=repository.insert, args=([make_record()], NOW),
                                  name="contract-change-writer")
        writer.start()
        writer.join(10)
        assert repository.change_token() != before


class _HousekeepingContract:
    """delete_finished, and the sequence numbers that must survive it."""

    def test_delete_finished_deletes_terminal_jobs_finished_before_the_cutoff(
            self, repository: JobRepository) -> None:
        # given old terminal jobs (with logs), a recent one, and unfinished jobs created long ago
        old_done, old_failed, old_cancelled, at_cutoff, recent = (_add(repository) for _ in range(5))
        _complete(repository, old_done.id, now=NOW + 1)
        repository.add_log(old_done.id, "info", "hello", NOW + 1)
        _fail(repository, old_failed.id, now=NOW + 2)
        repository.cancel(old_cancelled.id, NOW + 3, "no")
        _complete(repository, at_cutoff.id, now=NOW + 10)
        _complete(repository, recent.id, now=NOW + 20)
        pending, running = _add(repository), _add(repository)
        _claim(repository, running.id)
        # when jobs finished before NOW + 10 are deleted
        assert repository.delete_finished(NOW + 10) == 3
        # then exactly those are gone, logs included
        for job in (old_done, old_failed, old_cancelled):
            assert repository.get(job.id) is None
        assert repository.logs(old_done.id) == []
        for job in (at_cutoff, recent, pending, running):
            assert repository.get(job.id) is not None
        # and None deletes every terminal job, never an unfinished one
        assert repository.delete_finished(None) == 2
        assert [r.id for r in repository.list()] == [running.id, pending.id]

    def test_seq_is_never_reused_after_a_delete(self, repository: JobRepository) -> None:
        older, newest = _add(repository), _add(repository)
        _complete(repository, newest.id)
        repository.delete_finished(None)
        later = _add(repository)
        assert _get(repository, later.id).seq > newest.seq > _get(repository, older.id).seq
        assert _ids_of(repository.ready(None, 10)) == [older.id, later.id]


class _ConcurrencyContract:
    """Many threads at once on one repository."""

    def test_concurrent_inserts_and_claims_claim_every_job_exactly_once(self, repository: JobRepository) -> None:
        # given 8 threads inserting 100 jobs each while 4 threads claim what is ready
        inserted, claimed = claim_race(repository, [repository])
        # then every job was claimed, and none twice
        assert len(claimed) == len(set(claimed)) == len(inserted) == 800
        assert set(claimed) == set(inserted)
        assert repository.count_by_status()[JobStatus.RUNNING] == 800
        seqs = {r.seq for r in repository.list(limit=None)}
        assert len(seqs) == 800


class RepositoryContract(_AddingContract, _ReadingContract, _RunningContract, _SettlingContract,
                         _SchedulesContract, _WorkersContract, _HousekeepingContract, _ConcurrencyContract):
    """Every promise of `JobRepository`, as pytest tests.

    Subclass it in a `Test...` class and provide a `repository` fixture yielding a fresh,
    empty repository per test (and closing it afterwards)."""
