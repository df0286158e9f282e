"""A running job's log lines: each is committed before `log` returns (docs/api.md), so any
reader of the store sees it then, in order; none is lost when the attempt ends."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from jobcore import Job, JobManager, JobStatus, current_job
from jobcore.repository.base import JobRepository
from mixed_repositories import BACKENDS, AsIs, repository_with
from pg_fixtures import *  # noqa: F401,F403 (the fixtures: server, schema)

WAIT = 10.0


@pytest.fixture(params=BACKENDS)
def any_repository(request: Any, tmp_path: Any) -> JobRepository:
    return repository_with(AsIs, request, tmp_path)


def test_a_line_is_stored_when_log_returns_and_lines_keep_their_order(any_repository: Any,
                                                                     make_manager: Any) -> None:
    repository = any_repository
    logged, read = threading.Event(), threading.Event()

    def job(fail: bool) -> None:
        context = current_job()
        assert context is not None
        context.log("one")
        logged.set()  # the line is in the store now, before the job goes on
        assert read.wait(WAIT)
        context.log("two", "warning")
        context.log("three")
        if fail:
            raise ValueError("after three lines")

    manager: JobManager = make_manager(repository, max_workers=1)
    manager.register_function("job", job)
    manager.start()
    for fail in (False, True):
        logged.clear()
        read.clear()
        job_id = manager.enqueue(Job(function_name="job", args=(fail,), max_retries=0))
        try:
            assert logged.wait(WAIT)
            # read from this thread: another connection than the job's (a pooled one on PostgreSQL)
            assert [message for _, _, message in repository.logs(job_id)] == ["one"]
        finally:
            read.set()
        result = manager.wait(job_id, timeout=WAIT)
        assert result.status is (JobStatus.FAILED if fail else JobStatus.COMPLETED)
        lines = [(line.level, line.message) for line in manager.get_logs(job_id)]
        assert lines[:3] == [("info", "one"), ("warning", "two"), ("info", "three")]
        assert len(lines) == (4 if fail else 3)  # and the engine's line for the failed attempt, last
