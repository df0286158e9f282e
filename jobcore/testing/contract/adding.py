"""Contract tests for `insert`: seq numbers, atomicity, unique keys, dependencies; other methods only set up."""

from __future__ import annotations

from typing import Any

import pytest

from ...errors import DependencyError
from ...models import JobStatus
from ...repository.base import JobRecord, JobRepository
from .support import LEASE, NOW, _add, _complete, _fail, _get, _ids_of, _status, _total, make_record


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

    def test_a_dependency_id_no_job_can_hold_is_an_unknown_one(self, repository: JobRepository) -> None:
        # Ids hold no NUL and no lone surrogate (`Job` refuses them): such a dependency is
        # unknown, not an encoding error or a database's refusal of the text.
        for dep in ("a\x00b", "ab\udcff"):
            with pytest.raises(DependencyError, match="unknown"):
                repository.insert([make_record(), make_record(depends_on=(dep,))], NOW)
        assert _total(repository) == 0

    def test_a_job_depending_on_a_cron_schedule_is_refused(self, repository: JobRepository) -> None:
        # A schedule stays SCHEDULED for as long as it lives: a dependent would never run.
        def schedule(**fields: Any) -> JobRecord:
            return make_record(cron="* * * * *", status=JobStatus.SCHEDULED, run_at=NOW + 60, **fields)

        stored = schedule(unique_key="nightly")
        repository.insert([stored], NOW)
        in_batch, stand_in = schedule(), schedule(unique_key="nightly")  # stand_in resolves to `stored`
        for batch in ([make_record(depends_on=(stored.id,))],
                      [make_record(), in_batch, make_record(depends_on=(in_batch.id,))],
                      [stand_in, make_record(depends_on=(stand_in.id,))]):
            with pytest.raises(DependencyError, match="cron schedule"):
                repository.insert(batch, NOW)
        assert _total(repository) == 1  # nothing of the refused batches was stored

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

    def test_insert_sets_blocked_and_status_on_the_records_it_is_given(self, repository: JobRepository) -> None:
        # (the engine runs or queues a job by them: one left blocked waited for a re-read)
        done, dead, waiting = _add(repository), _add(repository), _add(repository)
        _complete(repository, done.id)
        _fail(repository, dead.id)
        ready = make_record(depends_on=(done.id,))
        blocked = make_record(depends_on=(done.id, waiting.id))
        cancelled = make_record(depends_on=(dead.id,))
        in_batch = make_record(depends_on=(ready.id,))
        repository.insert([ready, blocked, cancelled, in_batch], NOW)
        assert [(r.blocked, r.status) for r in (ready, blocked, in_batch)] == [
            (0, JobStatus.PENDING), (1, JobStatus.PENDING), (1, JobStatus.PENDING)]
        assert cancelled.status is JobStatus.CANCELLED
        for record in (ready, blocked, in_batch, cancelled):
            stored = _get(repository, record.id)
            assert (stored.status, stored.seq) == (record.status, record.seq)
        for record in (ready, blocked, in_batch):
            assert _get(repository, record.id).blocked == record.blocked

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
        # then both are CANCELLED: neither can ever run; each names the job that failed, as
        # a cascade at run time names it (SPEC), not the member of the batch between them
        for job in (middle, first):
            stored = _get(repository, job.id)
            assert stored.status is JobStatus.CANCELLED and dead.id in (stored.error or "")
            assert middle.id not in (stored.error or "") and "ended failed" in (stored.error or "")

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

    def test_a_batch_member_cancelled_at_insert_holds_no_unique_key(self, repository: JobRepository) -> None:
        # given a failed job, and a batch of jobs sharing key "k": the first depends on the
        # failed job, the second on the first, the third on nothing
        dead = _add(repository)
        _fail(repository, dead.id)
        doomed = make_record(unique_key="k", depends_on=(dead.id,))
        also_doomed = make_record(unique_key="k", depends_on=(doomed.id,))
        free = make_record(unique_key="k")
        late = make_record(unique_key="k")
        # when the batch is inserted
        ids = repository.insert([doomed, also_doomed, free, late], NOW + 1)
        # then the two that can never run are stored cancelled and hold no key (as if each
        # had been inserted in turn), so the third is stored to run and holds it
        assert ids == [doomed.id, also_doomed.id, free.id, free.id]
        assert (_status(repository, doomed.id), _status(repository, also_doomed.id)) == (
            JobStatus.CANCELLED, JobStatus.CANCELLED)
        assert _status(repository, free.id) is JobStatus.PENDING
        assert repository.get(late.id) is None and _ids_of(repository.ready(None, 10)) == [free.id]

    def test_a_member_cancelled_by_a_later_member_of_its_batch_holds_no_unique_key(
            self, repository: JobRepository) -> None:
        # given a failed job, and a batch: a job with key "k" depending on the last member,
        # a job with key "k", and the last member, depending on the failed job
        dead = _add(repository)
        _fail(repository, dead.id)
        last = make_record(depends_on=(dead.id,))
        waits_for_last = make_record(unique_key="k", depends_on=(last.id,))
        free = make_record(unique_key="k")
        # when inserted: the first never runs, so the second is stored in its own right
        assert repository.insert([waits_for_last, free, last], NOW + 1) == [waits_for_last.id, free.id, last.id]
        stored = _get(repository, waits_for_last.id)
        assert stored.status is JobStatus.CANCELLED and dead.id in (stored.error or "")  # the job that failed
        assert _status(repository, last.id) is JobStatus.CANCELLED
        assert _ids_of(repository.ready(None, 10)) == [free.id]

    def test_a_key_held_in_the_batch_stands_in_for_a_later_member_that_would_be_cancelled(
            self, repository: JobRepository) -> None:
        # given a failed job, and a batch: a job with key "k", then one with that key
        # depending on the failed job, and a job depending on that one
        dead = _add(repository)
        _fail(repository, dead.id)
        holder = make_record(unique_key="k")
        duplicate = make_record(unique_key="k", depends_on=(dead.id,))
        consumer = make_record(depends_on=(duplicate.id,))
        # when inserted: the duplicate resolves to the holder, unfinished, before its
        # dependencies count; the consumer waits for the holder
        assert repository.insert([holder, duplicate, consumer], NOW + 1) == [holder.id, holder.id, consumer.id]
        stored = _get(repository, consumer.id)
        assert stored.status is JobStatus.PENDING and stored.depends_on == (holder.id,)
        assert repository.get(duplicate.id) is None

    def test_a_long_chain_of_keyed_jobs_in_one_batch_is_planned(self, repository: JobRepository) -> None:
        # a chain deeper than Python's recursion limit, each job with its own key
        chain = [make_record(unique_key="link-0")]
        for n in range(1, 3000):
            chain.append(make_record(unique_key=f"link-{n}", depends_on=(chain[-1].id,)))
        assert repository.insert(chain, NOW) == [r.id for r in chain]
        assert _ids_of(repository.ready(None, 10)) == [chain[0].id]

    def test_insert_claimed_stores_a_ready_job_already_claimed(self, repository: JobRepository) -> None:
        # given a ready job with arguments
        record = make_record(args=(1, "two"), kwargs={"k": [3]}, priority=4)
        # when it is inserted and claimed in one step
        job_id, claimed = repository.insert_claimed(record, "w1", NOW, NOW + LEASE)
        # then it is stored running for that worker, on its first attempt, and nobody else gets it
        assert job_id == record.id and claimed is not None
        for seen in (claimed, _get(repository, job_id)):
            assert (seen.id, seen.status, seen.attempts, seen.worker_id, seen.started_at,
                    seen.lease_expires_at, seen.priority) == (
                record.id, JobStatus.RUNNING, 1, "w1", NOW, NOW + LEASE, 4)
            assert (tuple(seen.args), seen.kwargs, seen.created_at) == ((1, "two"), {"k": [3]}, NOW)
        assert claimed.seq > 0 and claimed.seq == _get(repository, job_id).seq
        assert repository.claim(job_id, "w2", NOW, NOW + LEASE) is None
        assert _ids_of(repository.ready(None, 10)) == []
        # and it completes like any claimed job
        assert repository.complete(job_id, "w1", 1, "done", NOW + 1) is not None

    def test_insert_claimed_leaves_a_job_that_must_wait_unclaimed(self, repository: JobRepository) -> None:
        # given a job due later, one waiting on a dependency, and one whose unique_key is held
        holder = _add(repository, unique_key="only-one")
        dependency = _add(repository)
        later = make_record(status=JobStatus.SCHEDULED, scheduled_at=NOW + 60, run_at=NOW + 60)
        waiting = make_record(depends_on=(dependency.id,))
        duplicate = make_record(unique_key="only-one")
        # when each is inserted through insert_claimed
        results = [repository.insert_claimed(r, "w1", NOW, NOW + LEASE) for r in (later, waiting, duplicate)]
        # then each is stored as insert would store it and none is claimed
        assert results == [(later.id, None), (waiting.id, None), (holder.id, None)]
        assert _status(repository, later.id) is JobStatus.SCHEDULED
        assert _status(repository, waiting.id) is JobStatus.PENDING and _get(repository, waiting.id).blocked == 1
        assert repository.get(duplicate.id) is None and _total(repository) == 4

