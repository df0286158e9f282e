"""Contract tests for taking back jobs whose leases lapsed: `recover_expired`, `recover`, `expire_worker`."""

from __future__ import annotations

from ...models import JobStatus
from ...repository.base import CANCELLED_ERROR_TYPE, CancelOutcome, JobRepository
from .support import LEASE, NOW, _add, _claim, _get, _ids_of, _status


def _reports_ends(repository: JobRepository) -> bool:
    """True if `recover` is the backend's own: the default reports only the re-queued."""
    return type(repository).recover is not JobRepository.recover


class _RecoveringContract:
    """recover_expired, recover and expire_worker: a dead or frozen worker's jobs come back."""

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

    def test_recovery_ends_a_lapsed_job_cancelled_once_its_cancellation_was_requested(
            self, repository: JobRepository) -> None:
        # given two running jobs with retries left, claimed 10s apart, each with a
        # dependent, whose worker stopped heartbeating, cancel() having returned True for
        # each (REQUESTED)
        jobs = [_add(repository, max_retries=3) for _ in range(2)]
        dependents = [_add(repository, depends_on=(job.id,)) for job in jobs]
        for job, claimed_at in zip(jobs, (NOW, NOW + 10)):
            _claim(repository, job.id, "w1", now=claimed_at)
            assert repository.cancel(job.id, NOW + 11, "stop")[0] is CancelOutcome.REQUESTED
        # when the first lease lapses and recover_expired runs, then the second, and recover
        assert repository.recover_expired(NOW + LEASE + 1) == []
        recovery = repository.recover(NOW + 10 + LEASE + 1)
        # then neither was re-queued: the first ended CANCELLED (a cancel that returned
        # True is never undone), its dependent cancelled; nothing runs them later
        assert recovery.requeued == ()
        first = _get(repository, jobs[0].id)
        assert (first.status, first.error_type, first.completed_at, first.attempts) == (
            JobStatus.CANCELLED, CANCELLED_ERROR_TYPE, NOW + LEASE + 1, 1)
        assert _status(repository, dependents[0].id) is JobStatus.CANCELLED
        # and so did the second, taken back by recover, which says so if it is the backend's own
        assert [_status(repository, j.id) for j in (jobs[1], dependents[1])] == [JobStatus.CANCELLED] * 2
        if _reports_ends(repository):
            assert (recovery.cancelled, recovery.failed) == ((jobs[1].id,), ())
        assert repository.ready(None, 10) == [] and repository.claim(jobs[0].id, "w2", NOW + 99, NOW + 129) is None

    def test_recover_reports_what_it_ended_and_expire_worker_ends_leases_at_once(
            self, repository: JobRepository) -> None:
        # given a dead worker running three jobs (one on its last attempt, one whose cancel
        # was requested, one with retries left), and a live worker running one
        last, asked, plain, theirs = (_add(repository, max_retries=r) for r in (0, 3, 3, 3))
        for job in (last, asked, plain):
            _claim(repository, job.id, "dead")
        _claim(repository, theirs.id, "alive")
        assert repository.cancel(asked.id, NOW + 1, "stop")[0] is CancelOutcome.REQUESTED
        # when its leases are ended well before they would lapse, and recovery runs
        assert repository.expire_worker("dead", NOW + 2) == 3
        recovery = repository.recover(NOW + 2)
        # then each of its jobs is taken back at once, as a lapsed lease would be
        assert _ids_of(recovery.requeued) == [plain.id]
        stored = [_get(repository, j.id) for j in (last, asked, plain)]
        assert [(r.status, r.error_type if r.status is not JobStatus.PENDING else None, r.attempts)
                for r in stored] == [(JobStatus.FAILED, "WorkerLost", 1),
                                     (JobStatus.CANCELLED, CANCELLED_ERROR_TYPE, 1), (JobStatus.PENDING, None, 1)]
        if _reports_ends(repository):
            assert (recovery.failed, recovery.cancelled) == ((last.id,), (asked.id,))
        # and the live worker's job is left alone
        assert _status(repository, theirs.id) is JobStatus.RUNNING
        assert repository.expire_worker("dead", NOW + 3) == 0
