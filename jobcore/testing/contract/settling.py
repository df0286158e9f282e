"""Contract tests for `release` and `apply`, a worker's batch; single-job settling is tested in `running`."""

from __future__ import annotations

import pytest

from ...models import JobStatus
from ...repository import base
from ...repository.base import CancelOutcome, JobRepository
from .support import NOW, _add, _claim, _get, _ids_of, _status, make_record


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

    def test_a_claimed_job_whose_cancellation_was_requested_is_handed_back_cancelled(
            self, repository: JobRepository) -> None:
        # given w1 holding three unstarted jobs, each with a dependent, two asked to cancel
        # (cancel() returned True: they were RUNNING, claimed, when asked)
        asked, plain, alone = jobs = [_add(repository, unique_key=f"key-{i}") for i in range(3)]
        dependents = [_add(repository, depends_on=(job.id,)) for job in jobs]
        for job in jobs:
            _claim(repository, job.id, "w1")
        for job in (asked, alone):
            assert repository.cancel(job.id, NOW + 1, base.CANCELLED_BY_REQUEST)[0] is CancelOutcome.REQUESTED
        # when w1 hands them back unstarted (at stop): two through apply, one found by its seq
        cascades, claimed = repository.apply([base.Settlement("release", asked.id, 1, seq=asked.seq),
                                              base.Settlement("release", plain.id, 1)], [], "w1", NOW + 2, NOW + 2)
        # and the third alone
        assert repository.release(alone.id, "w1", 1, NOW + 2) is True
        # then the jobs asked to cancel ended CANCELLED, as a cancel of a pending job ends
        # one, the attempt not counted, and their dependents cancelled naming them
        assert claimed == []
        assert cascades[0] is not None and cascades[0].cancelled_instead
        assert list(cascades[0].cancelled) == [dependents[0].id]
        for job, dependent in ((asked, dependents[0]), (alone, dependents[2])):
            stored = _get(repository, job.id)
            assert (stored.status, stored.error, stored.error_type, stored.completed_at, stored.attempts,
                    stored.worker_id, stored.lease_expires_at) == (
                JobStatus.CANCELLED, base.CANCELLED_BY_REQUEST, base.CANCELLED_ERROR_TYPE, NOW + 2, 0, None, None)
            stored_dependent = _get(repository, dependent.id)
            assert stored_dependent.status is JobStatus.CANCELLED and job.id in (stored_dependent.error or "")
            # and nothing runs them later: not claimable, not ready, their unique keys free
            assert repository.claim(job.id, "w2", NOW + 3, NOW + 33) is None
            assert repository.cancel(job.id, NOW + 3, "again")[0] is CancelOutcome.FINISHED
        assert _ids_of(repository.ready(None, 10)) == [plain.id]
        again = make_record(unique_key="key-0")
        assert repository.insert([again], NOW + 3) == [again.id]
        # and the job nobody cancelled is PENDING again, as before, its dependent waiting
        assert cascades[1] is not None and not cascades[1].cancelled_instead and not cascades[1].cancelled
        stored = _get(repository, plain.id)
        assert (stored.status, stored.attempts, stored.worker_id, stored.error) == (JobStatus.PENDING, 0, None, None)
        assert _status(repository, dependents[1].id) is JobStatus.PENDING

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

    def test_apply_claims_the_dependents_it_releases_up_to_a_number_best_first(
            self, repository: JobRepository) -> None:
        if not repository.claims_released:
            pytest.skip("this backend's apply leaves released dependents for a later claim")
        # given w1 holding two jobs; dependents of the first: a low and a high priority one,
        # one of a function not run here, one due later, one waiting on another job too;
        # a dependent of the second; and a job ready meanwhile
        first, second, other = _add(repository), _add(repository), _add(repository)
        for job in (first, second):
            _claim(repository, job.id, "w1")
        low = _add(repository, depends_on=(first.id,), priority=1)
        high = _add(repository, depends_on=(first.id,), priority=9)
        foreign = _add(repository, depends_on=(first.id,), function_name="tests.elsewhere", priority=9)
        due_later = _add(repository, depends_on=(first.id,), status=JobStatus.SCHEDULED,
                         scheduled_at=NOW + 60, run_at=NOW + 60)
        both = _add(repository, depends_on=(first.id, other.id))
        of_second = _add(repository, depends_on=(second.id,), priority=5)
        ready = _add(repository)
        settlements = [base.Settlement("complete", first.id, 1), base.Settlement("complete", second.id, 1)]
        # when w1 records both, claiming the ready job and up to two of the released ones
        cascades, claimed = repository.apply(settlements, [ready.id], "w1", NOW + 1, NOW + 31,  # type: ignore[call-arg]
                                             claim_released=2, released_functions={"tests.task"})
        # then the best two released ones it runs are claimed with the ready job, in the same step
        assert sorted(r.id for r in claimed) == sorted([ready.id, high.id, of_second.id])
        for record in claimed:
            assert (record.status, record.worker_id, record.attempts, record.lease_expires_at) == (
                JobStatus.RUNNING, "w1", 1, NOW + 31)
        # and the cascades report every release as before; the rest wait to be claimed
        assert sorted(_ids_of(cascades[0].released)) == sorted([low.id, high.id, foreign.id, due_later.id])  # type: ignore[union-attr]
        assert _ids_of(cascades[1].released) == [of_second.id]  # type: ignore[union-attr]
        assert [_status(repository, job.id) for job in (low, foreign, both)] == [JobStatus.PENDING] * 3
        assert _status(repository, due_later.id) is JobStatus.SCHEDULED
        assert _get(repository, both.id).blocked == 1
        # and with no number given, none is claimed
        third = _add(repository)
        _claim(repository, third.id, "w1")
        after_third = _add(repository, depends_on=(third.id,))
        _, none = repository.apply([base.Settlement("complete", third.id, 1)], [], "w1", NOW + 2, NOW + 32)
        assert none == [] and _status(repository, after_third.id) is JobStatus.PENDING

    def test_apply_ends_a_retry_or_failure_cancelled_once_its_cancellation_was_requested(
            self, repository: JobRepository) -> None:
        # given w1 holding four jobs, each with a dependent, three of them asked to cancel
        retried, failed, done, plain = jobs = [_add(repository) for _ in range(4)]
        dependents = [_add(repository, depends_on=(job.id,)) for job in jobs]
        for job in jobs:
            _claim(repository, job.id, "w1")
        for job in (retried, failed, done):
            assert repository.cancel(job.id, NOW + 1, "stop")[0] is CancelOutcome.REQUESTED
        # when w1 records the attempts, which ended before it heard of the cancels: a retry
        # (found by its seq) and a failure, a completion, and a retry of the fourth job
        settlements = [
            base.Settlement("retry", retried.id, 1, error="reset", error_type="ConnectionError",
                            traceback="Traceback ...", retry_at=NOW + 10, note="attempt 1 failed; retry 1 of 3",
                            seq=retried.seq),
            base.Settlement("fail", failed.id, 1, error="bad", error_type="ValueError", traceback="Traceback ...",
                            note="attempt 1 failed; permanent error"),
            base.Settlement("complete", done.id, 1, result="ok"),
            base.Settlement("retry", plain.id, 1, error="reset", error_type="ConnectionError", retry_at=NOW + 10),
        ]
        cascades, _ = repository.apply(settlements, [], "w1", NOW + 2, NOW + 32)
        # then the retry and the failure ended CANCELLED, as finish_cancelled ends a job,
        # their dependents cancelled naming them, and the cascades say so
        for job, dependent, cascade, note in zip((retried, failed), dependents, cascades, (
                "attempt 1 failed; retry 1 of 3", "attempt 1 failed; permanent error")):
            assert cascade is not None and cascade.cancelled_instead and list(cascade.cancelled) == [dependent.id]
            stored = _get(repository, job.id)
            assert (stored.status, stored.error, stored.error_type, stored.completed_at, stored.lease_expires_at,
                    stored.attempts) == (JobStatus.CANCELLED, base.CANCELLED_WHILE_RUNNING,
                                         base.CANCELLED_ERROR_TYPE, NOW + 2, None, 1)
            assert repository.logs(job.id) == [(NOW + 2, "error", base.cancelled_instead_note(note))]
            stored_dependent = _get(repository, dependent.id)
            assert stored_dependent.status is JobStatus.CANCELLED and job.id in (stored_dependent.error or "")
        # and nothing brings the cancelled retry back
        assert repository.claim(retried.id, "w2", NOW + 10, NOW + 40) is None
        assert _ids_of(repository.scheduled(None, 10)) == [plain.id]
        # and a completion stays a completion; a retry nobody cancelled is a retry
        assert cascades[2] is not None and not cascades[2].cancelled_instead
        assert _ids_of(cascades[2].released) == [dependents[2].id]
        assert (_status(repository, done.id), _get(repository, done.id).result) == (JobStatus.COMPLETED, "ok")
        assert cascades[3] is not None and not cascades[3].cancelled_instead and not cascades[3].cancelled
        assert (_status(repository, plain.id), _status(repository, dependents[3].id)) == (
            JobStatus.SCHEDULED, JobStatus.PENDING)

    def test_apply_tops_up_stale_claims_with_the_best_ready_jobs_up_to_a_number(
            self, repository: JobRepository) -> None:
        # given ready jobs of two functions, one claimed, one scheduled, one blocked
        low, first, second, urgent = (_add(repository, priority=p) for p in (1, 5, 5, 9))
        other = _add(repository, function_name="tests.other", priority=9)
        later = _add(repository, status=JobStatus.SCHEDULED, run_at=NOW + 60, priority=9)
        blocked = _add(repository, depends_on=(low.id,), priority=9)
        _claim(repository, low.id, "w0")
        # when a claim asks for a number without naming a function to top up from: nothing
        assert repository.apply([], [], "w9", NOW, NOW + 30, up_to=4)[1] == []
        # when w1 claims one good id and one stale one, topped up to three by its function
        _, taken = repository.apply([], [second.id, "gone-1"], "w1", NOW, NOW + 30,
                                    top_up=["tests.task"], up_to=3)
        # then it holds that id and the best two others of its function, nothing else
        assert sorted(r.id for r in taken) == sorted([second.id, urgent.id, first.id])
        assert all((r.status, r.worker_id, r.attempts) == (JobStatus.RUNNING, "w1", 1) for r in taken)
        # when w2 names no id at all and asks for five of either function: the one left
        _, rest = repository.apply([], [], "w2", NOW, NOW + 30, top_up=["tests.task", "tests.other"], up_to=5)
        assert [r.id for r in rest] == [other.id]
        assert [_status(repository, j.id) for j in (later, blocked)] == [JobStatus.SCHEDULED, JobStatus.PENDING]
        assert repository.apply([], ["gone-2"], "w3", NOW, NOW + 30, top_up=["tests.task"], up_to=2)[1] == []

    def test_claims_by_number_take_the_best_of_several_functions(self, repository: JobRepository) -> None:
        # given ready jobs of three functions, priorities interleaved
        plan = [("f.a", 1), ("f.b", 5), ("f.c", 9), ("f.a", 5), ("f.b", 9), ("f.c", 7), ("f.a", 9), ("f.b", 1)]
        records = [_add(repository, function_name=name, priority=priority) for name, priority in plan]
        # when a manager running two of them asks for three by number, then four more
        _, first = repository.apply([], [], "w1", NOW, NOW + 30, top_up=["f.b", "f.a"], up_to=3)
        _, rest = repository.apply([], [], "w1", NOW, NOW + 30, top_up=["f.b", "f.a"], up_to=4)
        # then the best three of those functions, then the rest of them, and no other job
        wanted = sorted((r for r in records if r.function_name != "f.c"), key=lambda r: (-r.priority, r.seq))
        assert sorted(r.id for r in first) == sorted(r.id for r in wanted[:3])
        assert sorted(r.id for r in rest) == sorted(r.id for r in wanted[3:])
        assert [_status(repository, r.id) for r in records if r.function_name == "f.c"] == [JobStatus.PENDING] * 2

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

    def test_apply_appends_the_log_lines_a_settlement_carries(self, repository: JobRepository) -> None:
        if not repository.stores_settlement_logs:
            pytest.skip("this backend stores log lines through add_logs only")
        # given w1 holding three jobs, one of which logged a line already
        done, failed, quiet = jobs = [_add(repository, max_retries=0) for _ in range(3)]
        for job in jobs:
            _claim(repository, job.id, "w1")
        repository.add_log(done.id, "info", "stored before", NOW)
        # when their outcomes are recorded, two carrying the lines their attempts logged since
        repository.apply([
            base.Settlement("complete", done.id, 1, result="ok",
                            logs=((NOW + 1, "info", "a"), (NOW + 2, "warning", "b"))),
            base.Settlement("fail", failed.id, 1, error="boom", error_type="ValueError",
                            logs=((NOW + 1, "error", "about to fail"),)),
            base.Settlement("complete", quiet.id, 1, result="ok"),
        ], [], "w1", NOW + 3, NOW + 33)
        # then each job's log has them, after what it had, in order
        assert repository.logs(done.id) == [(NOW, "info", "stored before"), (NOW + 1, "info", "a"),
                                            (NOW + 2, "warning", "b")]
        assert [line for line in repository.logs(failed.id) if line[2] == "about to fail"] == [
            (NOW + 1, "error", "about to fail")]
        assert repository.logs(quiet.id) == []

    def test_apply_stores_the_last_progress_report_a_settlement_carries_with_its_outcome(
            self, repository: JobRepository) -> None:
        if not repository.stores_settlement_progress:
            pytest.skip("this backend stores progress through update_progress only")
        # given w1 holding four jobs, one of them on another attempt than the settlement says
        done, failed, retried, stale = jobs = [_add(repository, max_retries=3) for _ in range(4)]
        for job in jobs:
            _claim(repository, job.id, "w1")
        half = base.LastProgress(0.5, "half", {"rows": 5})
        # when their outcomes are recorded, each carrying the attempt's last report (one
        # with its details already encoded, one found by its seq)
        cascades, _ = repository.apply([
            base.Settlement("complete", done.id, 1, result="ok", progress=half),
            base.Settlement("fail", failed.id, 1, error="boom", error_type="ValueError",
                            progress=base.LastProgress(0.25, "quarter", {"rows": 2}, '{"rows": 2}')),
            base.Settlement("retry", retried.id, 1, error="reset", error_type="ConnectionError",
                            retry_at=NOW + 60, seq=retried.seq, progress=half),
            base.Settlement("complete", stale.id, 2, result="late", progress=base.LastProgress(0.9, "stale", {})),
        ], [], "w1", NOW + 1, NOW + 31)
        # then each row ends with its report (a completion at 1.0, keeping the message and
        # details) but the retry's, which waits for its next attempt with none (see
        # `progress`); the settlement that did not apply wrote nothing either
        assert cascades[3] is None
        stored = [_get(repository, job.id) for job in jobs]
        assert [(r.status, r.progress, r.progress_message, r.progress_details) for r in stored] == [
            (JobStatus.COMPLETED, 1.0, "half", {"rows": 5}),
            (JobStatus.FAILED, 0.25, "quarter", {"rows": 2}),
            (JobStatus.SCHEDULED, 0.0, "", {}),
            (JobStatus.RUNNING, 0.0, "", {}),
        ]

    def test_insert_and_apply_stores_the_last_progress_report_a_settlement_carries(
            self, repository: JobRepository) -> None:
        if not (repository.inserts_in_exchanges and repository.stores_settlement_progress):
            pytest.skip("this backend stores jobs and makes exchanges apart, or progress through update_progress")
        held = _add(repository)
        _claim(repository, held.id, "w1")
        settlement = base.Settlement("complete", held.id, 1, result="ok", progress=base.LastProgress(0.4, "most", {}))
        repository.insert_and_apply(make_record(), [settlement], [], "w1", NOW + 1, NOW + 31, claim_new=False)
        stored = _get(repository, held.id)
        assert (stored.status, stored.progress, stored.progress_message) == (JobStatus.COMPLETED, 1.0, "most")

    def test_a_completion_changes_only_status_result_completion_time_progress_and_lease(
            self, repository: JobRepository) -> None:
        # The manager relies on this: `wait` answers for a job it completed from the record
        # as claimed plus these changes, without reading the row back.
        # given a job with every optional field set, claimed by w1
        job = _add(repository, args=(1,), kwargs={"k": "v"}, priority=7, tags=frozenset({"t"}),
                   metadata={"m": 1}, owner="ann", timeout=5.0, max_retries=1)
        claimed = _claim(repository, job.id, "w1")
        # when w1 records its completion
        repository.apply([base.Settlement("complete", job.id, 1, result=[1, "two"])], [], "w1",
                         NOW + 1, NOW + 31)
        # then the stored job is the claimed one with exactly these fields changed
        stored = _get(repository, job.id)
        changed = {"status": JobStatus.COMPLETED, "result": [1, "two"], "completed_at": NOW + 1,
                   "progress": 1.0, "lease_expires_at": None, "error": None, "error_type": None,
                   "traceback": None}
        for name, value in changed.items():
            assert getattr(stored, name) == value, name
        for name in base.JobRecord.__dataclass_fields__:
            if name not in changed:
                assert getattr(stored, name) == getattr(claimed, name), name

    def test_insert_and_apply_stores_a_new_job_with_the_settlements_and_claims(
            self, repository: JobRepository) -> None:
        if not repository.inserts_in_exchanges:
            pytest.skip("this backend stores jobs and makes exchanges apart")
        # given w1 holding a job with a dependent, and a job waiting to be claimed
        done, waiting = _add(repository), _add(repository)
        _claim(repository, done.id, "w1")
        dependent = _add(repository, depends_on=(done.id,))
        new, later = make_record(args=(1, "two"), priority=3), make_record()
        # when w1 stores a new job claimed, with its outcome and a claim, in one step
        cascades, claimed = repository.insert_and_apply(
            new, [base.Settlement("complete", done.id, 1, result="ok")], [waiting.id, dependent.id],
            "w1", NOW + 1, NOW + 31, claim_new=True)
        # then the outcome is recorded (releasing the dependent, claimed too), and the new
        # job is stored running for w1, first among the claimed, as insert_claimed stores it
        assert len(cascades) == 1 and cascades[0] is not None
        assert _ids_of(cascades[0].released) == [dependent.id]
        assert (_status(repository, done.id), _get(repository, done.id).result) == (JobStatus.COMPLETED, "ok")
        assert [r.id for r in claimed[:1]] == [new.id]
        assert sorted(r.id for r in claimed[1:]) == sorted([waiting.id, dependent.id])
        for seen in (claimed[0], _get(repository, new.id)):
            assert (seen.status, seen.worker_id, seen.attempts, seen.started_at, seen.lease_expires_at,
                    seen.created_at, tuple(seen.args), seen.priority) == (
                JobStatus.RUNNING, "w1", 1, NOW + 1, NOW + 31, NOW + 1, (1, "two"), 3)
        assert new.seq == _get(repository, new.id).seq > _get(repository, dependent.id).seq
        # and without claim_new, a new job is stored pending, after the others
        assert repository.insert_and_apply(later, [], [], "w1", NOW + 2, NOW + 32, claim_new=False) == ([], [])
        assert _status(repository, later.id) is JobStatus.PENDING
        assert _ids_of(repository.ready(None, 10)) == [later.id] and later.seq > new.seq

    def test_insert_and_apply_is_all_or_nothing(self, repository: JobRepository) -> None:
        if not repository.inserts_in_exchanges:
            pytest.skip("this backend stores jobs and makes exchanges apart")
        # given w1 holding a job, and a new record whose id is taken
        held, waiting = _add(repository), _add(repository)
        _claim(repository, held.id, "w1")
        taken = make_record(id=waiting.id)
        outcome = [base.Settlement("complete", held.id, 1, result="ok")]
        # when it is stored with the outcome and a claim, it is refused
        with pytest.raises(ValueError, match=waiting.id):
            repository.insert_and_apply(taken, outcome, [waiting.id], "w1", NOW + 1, NOW + 31, claim_new=True)
        # then nothing was recorded or claimed
        assert [_status(repository, j.id) for j in (held, waiting)] == [JobStatus.RUNNING, JobStatus.PENDING]
        # and a job that needs checks against other rows is refused before anything is done
        for record in (make_record(unique_key="k"), make_record(depends_on=(held.id,)),
                       make_record(status=JobStatus.SCHEDULED, run_at=NOW + 60)):
            with pytest.raises(ValueError):
                repository.insert_and_apply(record, outcome, [], "w1", NOW + 1, NOW + 31, claim_new=False)
            assert repository.get(record.id) is None
        assert _status(repository, held.id) is JobStatus.RUNNING
