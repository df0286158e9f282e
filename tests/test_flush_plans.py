"""Progress reports (and log lines) and the housekeeper's sleep: a report wakes the
housekeeper only if it comes due before the housekeeper's next planned look
(`ProgressWriter.plan`, `LogBuffer.plan`; a short job's report woke it every other job: a
third of the drain's rate), and a report due sooner than that, or made once the
housekeeper is gone, is still stored in time."""

from __future__ import annotations

import threading
import time
from typing import Any

from jobcore import Job, JobManager, JobStatus, SQLiteRepository, current_job
from jobcore.progress import PROGRESS_INTERVAL

from waiting import wait_until

WAIT = 10.0
# Intervals that keep the housekeeper asleep far longer than any wait here: only a wake-up
# makes it store a report during a test.
_QUIET = dict(poll_interval=60.0, discovery_interval=60.0, lease_timeout=600.0)
# The housekeeper's looks in the short-job tests (the default): each ends the writer's plan,
# so a report or line made during or after one may wake it once, however slow the host.
LOOK = 0.05


def _report_half(x: int) -> int:
    current_job().progress(0.5, "half")
    return x


def _count_wakes(manager: JobManager) -> list[int]:
    """The housekeeper's wake-ups for reports and log lines from now on, one entry each."""
    pool = manager._pool
    woken, wake = [], pool.on_progress_waiting

    def counting_wake() -> bool:
        woken.append(1)
        return wake()

    pool.on_progress_waiting = counting_wake
    return woken


def test_short_jobs_reporting_progress_do_not_wake_the_housekeeper_each(make_manager: Any,
                                                                        db_path: str) -> None:
    # (The default intervals: the housekeeper looks for work every 50 ms, sooner than a
    # report of an attempt comes due, so only one made while it looks wakes it again.)
    manager = make_manager(SQLiteRepository(db_path), max_workers=2, discovery_interval=LOOK).start()
    manager.register_function("report", _report_half)
    woken = _count_wakes(manager)
    began = time.monotonic()
    ids = [manager.enqueue(Job(function_name="report", args=(i,))) for i in range(200)]
    results = [manager.wait(job_id, timeout=WAIT) for job_id in ids]
    looks = (time.monotonic() - began) / LOOK + 2  # at most one wake per housekeeper look
    assert {(r.status, r.progress, r.progress_message) for r in results} == {(JobStatus.COMPLETED, 1.0, "half")}
    assert len(woken) < len(ids) // 10 + looks, (len(woken), looks)  # (one every two jobs before)


def test_short_jobs_that_log_do_not_wake_the_housekeeper_each(make_manager: Any, db_path: str) -> None:
    # likewise a log line (log_buffer), waiting at most log_interval
    manager = make_manager(SQLiteRepository(db_path), max_workers=2, discovery_interval=LOOK).start()
    manager.register_function("job", lambda n: current_job().log(f"job {n}"))
    woken = _count_wakes(manager)
    began = time.monotonic()
    ids = [manager.enqueue(Job(function_name="job", args=(n,))) for n in range(300)]
    for job_id in ids:
        manager.wait(job_id, timeout=WAIT)
    looks = (time.monotonic() - began) / LOOK + 2
    assert len(woken) < len(ids) // 10 + looks, (len(woken), looks)
    assert [entry.message for entry in manager.get_logs(ids[-1])] == ["job 299"]


def _report_twice() -> None:
    """Report, then report again once the attempt's interval has passed (real time: the
    interval is real seconds), so that the second report is due as it is made."""
    context = current_job()
    context.progress(0.1, "first")
    threading.Event().wait(PROGRESS_INTERVAL * 1.5)
    context.progress(0.5, "second")


def test_a_running_jobs_report_reaches_its_row_in_time_with_the_housekeeper_asleep(
        make_manager: Any, db_path: str) -> None:
    reported, release = threading.Event(), threading.Event()
    manager = make_manager(SQLiteRepository(db_path), max_workers=1, **_QUIET).start()
    other = make_manager(SQLiteRepository(db_path), producer=True)  # reads the row, as another process would
    try:
        def two_reports() -> None:
            _report_twice()
            reported.set()
            assert release.wait(WAIT)

        job_id = manager.enqueue(Job(function=two_reports))
        assert reported.wait(WAIT)
        # not at the housekeeper's next planned look, a minute away
        wait_until(lambda: other.poll(job_id).progress == 0.5, timeout=WAIT)
        assert other.poll(job_id).progress_message == "second"
    finally:
        release.set()
    assert manager.wait(job_id, timeout=WAIT).status is JobStatus.COMPLETED


def test_a_report_made_after_the_housekeeper_left_is_stored_by_the_jobs_thread(db_path: str) -> None:
    # Given a manager started, then stopped: its housekeeper planned looks, and is gone
    manager = JobManager(SQLiteRepository(db_path))
    other = JobManager(SQLiteRepository(db_path), producer=True)
    try:
        manager.start()
        manager.stop()
        seen: list[Any] = []

        # When a job run by `run_pending` reports progress due, then looks at its row
        def report_then_look() -> None:
            _report_twice()
            seen.append(other.poll(current_job().id))

        job_id = manager.enqueue(Job(function=report_then_look))
        assert manager.run_pending() == 1

        # Then the row showed the report while the job ran (its thread wrote it)
        assert (seen[0].progress, seen[0].progress_message) == (0.5, "second")
        assert manager.poll(job_id).status is JobStatus.COMPLETED
    finally:
        manager.close()
        other.close()

