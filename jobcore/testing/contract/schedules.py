"""Contract tests for cron schedules: `fire_schedule` (one run per fire time), and an ended
schedule staying ended; no cron arithmetic (that is the scheduler's)."""

from __future__ import annotations

import threading

from ...models import JobStatus
from ...repository.base import JobRecord, JobRepository
from .support import NOW, _add, _get, _ids_of, _total, make_record


class _SchedulesContract:
    """fire_schedule: each fire time of a cron schedule yields at most one run; requeue
    never revives an ended schedule."""

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

    def test_requeue_leaves_an_ended_schedule_ended(self, repository: JobRepository) -> None:
        # given a cron schedule that was cancelled, and a run it fired that was cancelled too
        schedule = _add(repository, cron="* * * * *", status=JobStatus.SCHEDULED, run_at=NOW + 60)
        run = make_record(metadata={"schedule_id": schedule.id})
        assert repository.fire_schedule(schedule.id, NOW + 60, NOW + 120, run, NOW + 61)
        for job_id in (schedule.id, run.id):
            repository.cancel(job_id, NOW + 62, "stop")
        # when both are re-queued (what `retry` does), then the schedule stays ended (to
        # schedule again, enqueue it again): nothing of it is queued or counted as waiting
        assert repository.requeue(schedule.id, NOW + 63) is None
        ended = _get(repository, schedule.id)
        assert (ended.status, ended.run_at) == (JobStatus.CANCELLED, NOW + 120)
        assert repository.scheduled(None, 10) == []
        # and its run, an ordinary job, is PENDING again
        assert _ids_of([repository.requeue(run.id, NOW + 63)]) == [run.id]  # type: ignore[list-item]
        assert _ids_of(repository.ready(None, 10)) == [run.id]

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
