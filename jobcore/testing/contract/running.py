"""Contract tests for one job's life: claim, complete, fail, cancel, requeue, leases; no batches
(`settling`), no recovery of lapsed leases (`recovering`)."""

from __future__ import annotations

import time

from ...models import JobStatus
from ...repository.base import CancelOutcome, Cascade, JobRepository
from .support import LEASE, NOW, _add, _claim, _complete, _fail, _get, _ids_of, _status


class _RunningContract:
    """claim, complete, fail, finish_cancelled, cancel, requeue, progress, heartbeats."""

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

    def test_fail_ends_a_job_cancelled_once_its_cancellation_was_requested(self, repository: JobRepository) -> None:
        for retry_at in (NOW + 10, None):
            # given a running job with a dependent, asked to cancel while its attempt ended
            job = _add(repository, max_retries=3)
            dependent = _add(repository, depends_on=(job.id,))
            _claim(repository, job.id, "w1")
            assert repository.cancel(job.id, NOW + 1, "stop")[0] is CancelOutcome.REQUESTED
            # when another worker reports a failure, nothing changes
            assert repository.fail(job.id, "w2", 1, error="x", error_type="E", traceback=None, now=NOW + 2,
                                   retry_at=retry_at) is None
            # when its holder records the failure, retry or not: CANCELLED, its dependent too
            cascade = repository.fail(job.id, "w1", 1, error="reset", error_type="ConnectionError",
                                      traceback=None, now=NOW + 2, retry_at=retry_at)
            assert cascade is not None and cascade.cancelled_instead and list(cascade.cancelled) == [dependent.id]
            stored = _get(repository, job.id)
            assert (stored.status, stored.error_type, stored.completed_at) == (
                JobStatus.CANCELLED, "JobCancelled", NOW + 2), retry_at
            assert _status(repository, dependent.id) is JobStatus.CANCELLED
        # and a failure of a job nobody asked to cancel says it was not cancelled instead
        assert not _fail(repository, _add(repository).id).cancelled_instead

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

    def test_requeue_refuses_a_job_whose_dependency_will_never_complete(self, repository: JobRepository) -> None:
        parent = _add(repository)
        child = _add(repository, depends_on=(parent.id,))
        _fail(repository, parent.id)
        assert _status(repository, child.id) is JobStatus.CANCELLED
        assert repository.requeue(child.id, NOW + 1) is None  # it would wait forever
        assert _status(repository, child.id) is JobStatus.CANCELLED
        assert repository.requeue(parent.id, NOW + 2) is not None
        assert repository.requeue(child.id, NOW + 3) is not None  # the parent may complete now
        assert _get(repository, child.id).blocked == 1

    def test_requeue_refuses_a_job_that_never_ran_whose_dependency_was_deleted(
            self, repository: JobRepository) -> None:
        # given a job cancelled while it waited for its dependency, which failed and was
        # deleted since (cleaned up); and a job that ran after its dependency completed,
        # failed, and whose dependency was deleted too
        parent = _add(repository)
        child = _add(repository, depends_on=(parent.id,))
        repository.cancel(child.id, NOW + 10, "not needed")
        _fail(repository, parent.id, now=NOW + 1)
        done = _add(repository)
        _complete(repository, done.id, now=NOW + 1)
        ran = _add(repository, depends_on=(done.id,))
        _fail(repository, ran.id, now=NOW + 10)
        assert repository.delete_finished(NOW + 5) == 2
        assert repository.get(parent.id) is None and repository.get(done.id) is None
        # then the first is not re-queued: whether its dependency completed is unknown (it
        # failed), and the dependent would run without it; the second, which ran, is
        assert repository.requeue(child.id, NOW + 1) is None
        assert repository.requeue(ran.id, NOW + 1) is not None

    def test_requeue_takes_a_job_its_deleted_dependency_had_released(self, repository: JobRepository) -> None:
        # given a job that ran after its dependency completed, was re-queued (which clears
        # its started_at) and cancelled before it ran again; and a job cancelled, before it
        # ran, after its dependency completed; both dependencies deleted since
        done = _add(repository)
        _complete(repository, done.id, now=NOW + 1)
        ran = _add(repository, depends_on=(done.id,))
        _fail(repository, ran.id, now=NOW + 2)
        assert repository.requeue(ran.id, NOW + 3) is not None
        repository.cancel(ran.id, NOW + 4, "not now")
        released = _add(repository)
        waited = _add(repository, depends_on=(released.id,))
        _complete(repository, released.id, now=NOW + 1)
        repository.cancel(waited.id, NOW + 4, "not needed")
        assert repository.delete_finished(NOW + 2) == 2
        # then both are re-queued, ready at once: each dependency was known to have completed
        for job in (ran, waited):
            assert repository.requeue(job.id, NOW + 5) is not None
            assert _get(repository, job.id).blocked == 0
        assert _ids_of(repository.ready(None, 10)) == [ran.id, waited.id]

    def test_requeue_ignores_a_new_job_given_a_deleted_dependencys_id(self, repository: JobRepository) -> None:
        # given a job that ran after its dependency completed and failed; the dependency
        # deleted since (cleaned up), and its id given to a new job, which fails
        done = _add(repository)
        _complete(repository, done.id, now=NOW + 1)
        ran = _add(repository, depends_on=(done.id,))
        _fail(repository, ran.id, now=NOW + 10)
        assert repository.delete_finished(NOW + 5) == 1
        _fail(repository, _add(repository, id=done.id).id, now=NOW + 11)
        # then the new job is none of its dependencies: it is re-queued, ready at once
        entry = repository.requeue(ran.id, NOW + 12)
        assert entry is not None and _get(repository, ran.id).blocked == 0
        assert ran.id in _ids_of(repository.ready(None, 10))

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
        asked = time.monotonic()
        assert repository.heartbeat("w1", [a.id, c.id, d.id], NOW + 100, NOW + 5) == []
        took = time.monotonic() - asked
        # then only a's lease moves: to the time given, plus at most the time the call
        # took (a store may count the lease from when it writes it)
        leases = [_get(repository, j.id).lease_expires_at for j in (a, b, c, d)]
        assert NOW + 100 <= leases[0] <= NOW + 100 + took  # type: ignore[operator]
        assert leases[1:] == [NOW + LEASE, NOW + LEASE, None]
        assert _status(repository, d.id) is JobStatus.PENDING
        # and a requested cancellation is reported to the holder only
        repository.cancel(a.id, NOW + 6, "stop")
        assert repository.heartbeat("w1", [a.id, b.id], NOW + 110, NOW + 7) == [a.id]
        assert repository.heartbeat("w2", [a.id, c.id], NOW + 110, NOW + 7) == []
        assert repository.heartbeat("w1", [], NOW + 110, NOW + 7) == []

    def test_cancels_requested_reads_the_holders_cancelled_jobs_leaving_leases_alone(
            self, repository: JobRepository) -> None:
        # given w1 running a and b, w2 running c, d pending, and cancels asked of a, c and d
        a, b, c, d = (_add(repository) for _ in range(4))
        for job, worker in ((a, "w1"), (b, "w1"), (c, "w2")):
            _claim(repository, job.id, worker)
        for job in (a, c, d):
            repository.cancel(job.id, NOW + 6, "stop")
        # when each worker reads the cancel requests of what it holds
        # then each hears of its own running jobs' only, and no lease moves
        assert repository.cancels_requested("w1", [a.id, b.id, c.id, d.id]) == [a.id]
        assert repository.cancels_requested("w2", [a.id, c.id]) == [c.id]
        assert repository.cancels_requested("w1", []) == []
        assert [_get(repository, j.id).lease_expires_at for j in (a, b, c)] == [NOW + LEASE] * 3
