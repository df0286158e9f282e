"""Contract tests for `delete_finished` and the order of jobs stored after it; nothing else deletes."""

from __future__ import annotations

from ...models import JobStatus
from ...repository.base import JobRepository
from .support import NOW, _add, _claim, _complete, _fail, _get, _ids_of


class _HousekeepingContract:
    """delete_finished, and the order of jobs stored after it."""

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

    def test_lines_logged_for_a_deleted_job_are_not_stored(self, repository: JobRepository) -> None:
        # given a finished job deleted by cleanup while the thread of an attempt of it that
        # timed out (its outcome recorded) still logs, and a job never stored
        gone, kept = _add(repository), _add(repository)
        _complete(repository, gone.id, now=NOW + 1)
        repository.add_log(gone.id, "info", "before the cleanup", NOW + 1)
        assert repository.delete_finished(NOW + 2) == 1
        # when lines come for them, alone and several at once, and for a stored job
        for job_id in (gone.id, "no-such-job"):
            repository.add_log(job_id, "info", "late", NOW + 3)
            repository.add_logs(job_id, [(NOW + 3, "info", "one")])
            repository.add_logs(job_id, [(NOW + 3, "info", "two"), (NOW + 4, "error", "three")])
        repository.add_logs(kept.id, [(NOW + 3, "info", "one"), (NOW + 4, "info", "two")])
        # then nothing of the deleted job (or of no job) is left, the stored job has its lines
        assert repository.logs(gone.id) == [] and repository.count_logs(gone.id) == 0
        assert repository.logs("no-such-job") == []
        assert repository.logs(kept.id) == [(NOW + 3, "info", "one"), (NOW + 4, "info", "two")]

    def test_a_job_stored_after_a_delete_comes_after_every_job_still_stored(
            self, repository: JobRepository) -> None:
        # The seq of a newest job since deleted may be given again (SQLite's rowid), never
        # one below a stored job's: FIFO among equals holds across purges.
        older, middle, newest = _add(repository), _add(repository), _add(repository)
        _complete(repository, middle.id)
        _complete(repository, newest.id)
        repository.delete_finished(None)
        later = _add(repository)
        assert _get(repository, later.id).seq > _get(repository, older.id).seq
        assert _ids_of(repository.ready(None, 10)) == [older.id, later.id]
        again = _add(repository)
        assert _get(repository, again.id).seq > _get(repository, later.id).seq
        assert _ids_of(repository.ready(None, 10)) == [older.id, later.id, again.id]

    def test_a_new_job_given_a_deleted_dependents_id_is_not_that_dependent(
            self, repository: JobRepository) -> None:
        # given a dependent cancelled and deleted while its dependency waits, and a new
        # job given its id, depending on nothing (and one depending on another job)
        parent, gate = _add(repository), _add(repository)
        child = _add(repository, depends_on=(parent.id,))
        waiter = _add(repository, depends_on=(parent.id,))
        repository.cancel(child.id, NOW + 1, "no")
        repository.cancel(waiter.id, NOW + 1, "no")
        assert repository.delete_finished(None) == 2
        _add(repository, id=child.id)
        _add(repository, id=waiter.id, depends_on=(gate.id,))
        # when the old dependency completes, or is cancelled
        _complete(repository, parent.id, now=NOW + 2)
        # then neither new job is released or cancelled by it
        assert _get(repository, child.id).status is JobStatus.PENDING
        assert _get(repository, waiter.id).blocked == 1
        ready = _ids_of(repository.ready(None, 10))
        assert child.id in ready and waiter.id not in ready
