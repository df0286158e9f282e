"""Contract tests for a job's progress across attempts: each starts from none; an ended job keeps its last."""

from __future__ import annotations

import pytest

from ...models import JobStatus
from ...repository import base
from ...repository.base import CancelOutcome, JobRepository
from .support import LEASE, NOW, _add, _claim, _get, _ids_of

# The progress, message and details of a job no attempt of which has reported yet.
NONE: tuple[float, str, dict[str, object]] = (0.0, "", {})


def _progress(repository: JobRepository, job_id: str) -> tuple[float, str, dict[str, object]]:
    stored = _get(repository, job_id)
    return stored.progress, stored.progress_message, stored.progress_details


class _ProgressContract:
    """Progress when a job waits for its next attempt (retry, recovery, requeue), and when it ends."""

    def test_a_retry_starts_from_no_progress_and_a_final_failure_keeps_its_own(
            self, repository: JobRepository) -> None:
        # given a running job whose attempt reported progress
        job = _add(repository, max_retries=3)
        _claim(repository, job.id, "w1")
        assert repository.update_progress(job.id, "w1", 1, 0.8, "almost", {"step": 8}, NOW + 1)
        # when the attempt fails with a retry time
        assert repository.fail(job.id, "w1", 1, error="reset", error_type="ConnectionError", traceback=None,
                               now=NOW + 2, retry_at=NOW + 10) is not None
        # then the job waits for its next attempt with no progress, and starts it so
        assert _get(repository, job.id).status is JobStatus.SCHEDULED
        assert _progress(repository, job.id) == NONE
        claimed = _claim(repository, job.id, "w1", now=NOW + 10)
        assert (claimed.attempts, claimed.progress, claimed.progress_message, claimed.progress_details) == (2, *NONE)
        # and when that attempt reports, then fails for good, the FAILED job keeps its report
        assert repository.update_progress(job.id, "w1", 2, 0.3, "stuck", {"step": 3}, NOW + 11)
        assert repository.fail(job.id, "w1", 2, error="bad", error_type="ValueError", traceback=None,
                               now=NOW + 12, retry_at=None) is not None
        assert _get(repository, job.id).status is JobStatus.FAILED
        assert _progress(repository, job.id) == (0.3, "stuck", {"step": 3})

    def test_a_retry_ended_cancelled_instead_keeps_its_progress(self, repository: JobRepository) -> None:
        # given a running job that reported progress, then was asked to cancel
        job = _add(repository, max_retries=3)
        _claim(repository, job.id, "w1")
        assert repository.update_progress(job.id, "w1", 1, 0.6, "most", {"rows": 6}, NOW + 1)
        assert repository.cancel(job.id, NOW + 2, "stop")[0] is CancelOutcome.REQUESTED
        # when its attempt fails with a retry time: CANCELLED instead, an ended job keeping its report
        cascade = repository.fail(job.id, "w1", 1, error="reset", error_type="ConnectionError", traceback=None,
                                  now=NOW + 3, retry_at=NOW + 10)
        assert cascade is not None and cascade.cancelled_instead
        assert _get(repository, job.id).status is JobStatus.CANCELLED
        assert _progress(repository, job.id) == (0.6, "most", {"rows": 6})

    def test_apply_starts_a_retry_from_no_progress_whatever_report_it_carries(
            self, repository: JobRepository) -> None:
        if not repository.stores_settlement_progress:
            pytest.skip("this backend stores progress through update_progress only")
        # given two running jobs, the second asked to cancel
        retried, cancelled = _add(repository, max_retries=3), _add(repository, max_retries=3)
        for job in (retried, cancelled):
            _claim(repository, job.id, "w1")
        assert repository.cancel(cancelled.id, NOW + 1, "stop")[0] is CancelOutcome.REQUESTED
        # when both attempts fail with a retry time, each settlement carrying its last report
        last = base.LastProgress(0.8, "almost", {"step": 8})
        cascades, _ = repository.apply([
            base.Settlement("retry", job.id, 1, error="reset", error_type="ConnectionError", retry_at=NOW + 60,
                            seq=job.seq, progress=last) for job in (retried, cancelled)], [], "w1", NOW + 2, NOW + 32)
        # then the retried job waits with no progress; the one ended CANCELLED instead keeps the report
        assert cascades[0] is not None and cascades[1] is not None and cascades[1].cancelled_instead
        assert (_get(repository, retried.id).status, _progress(repository, retried.id)) == (
            JobStatus.SCHEDULED, NONE)
        assert (_get(repository, cancelled.id).status, _progress(repository, cancelled.id)) == (
            JobStatus.CANCELLED, (0.8, "almost", {"step": 8}))

    def test_a_job_taken_back_from_a_lost_worker_starts_from_no_progress(
            self, repository: JobRepository) -> None:
        # given three running jobs whose worker reported progress on each, then died: one
        # with retries left, one on its last attempt, one asked to cancel
        again, last, cancelled = (_add(repository, max_retries=3), _add(repository, max_retries=0),
                                  _add(repository, max_retries=3))
        for job, progress in ((again, 0.6), (last, 0.7), (cancelled, 0.4)):
            _claim(repository, job.id, "w1")
            assert repository.update_progress(job.id, "w1", 1, progress, "working", {"at": progress}, NOW + 1)
        assert repository.cancel(cancelled.id, NOW + 2, "stop")[0] is CancelOutcome.REQUESTED
        # when recovery takes their leases back
        assert _ids_of(repository.recover_expired(NOW + LEASE + 1)) == [again.id]
        # then the job to run again waits with no progress; those that ended keep their last report
        assert (_get(repository, again.id).status, _progress(repository, again.id)) == (JobStatus.PENDING, NONE)
        assert (_get(repository, last.id).status, _progress(repository, last.id)) == (
            JobStatus.FAILED, (0.7, "working", {"at": 0.7}))
        assert (_get(repository, cancelled.id).status, _progress(repository, cancelled.id)) == (
            JobStatus.CANCELLED, (0.4, "working", {"at": 0.4}))
        claimed = _claim(repository, again.id, "w2", now=NOW + LEASE + 2)
        assert (claimed.attempts, claimed.progress, claimed.progress_message, claimed.progress_details) == (2, *NONE)

    def test_requeue_starts_a_failed_or_cancelled_job_from_no_progress(self, repository: JobRepository) -> None:
        # given a job that failed and one cancelled while running, each after reporting progress
        failed, cancelled = _add(repository, max_retries=0), _add(repository)
        for job in (failed, cancelled):
            _claim(repository, job.id, "w1")
            assert repository.update_progress(job.id, "w1", 1, 0.9, "nearly", {"left": 1}, NOW + 1)
        assert repository.fail(failed.id, "w1", 1, error="bad", error_type="ValueError", traceback=None,
                               now=NOW + 2, retry_at=None) is not None
        assert repository.cancel(cancelled.id, NOW + 2, "stop")[0] is CancelOutcome.REQUESTED
        assert repository.finish_cancelled(cancelled.id, "w1", 1, NOW + 3) is not None
        assert _progress(repository, failed.id) == _progress(repository, cancelled.id) == (0.9, "nearly", {"left": 1})
        # when they are re-queued, then they wait with no progress, and start so
        for job in (failed, cancelled):
            assert repository.requeue(job.id, NOW + 4) is not None
            assert _progress(repository, job.id) == NONE
            claimed = _claim(repository, job.id, "w1", now=NOW + 5)
            assert (claimed.attempts, claimed.progress, claimed.progress_message, claimed.progress_details) == (
                1, *NONE)
