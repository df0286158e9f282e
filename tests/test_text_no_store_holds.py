"""Text no job can hold (a NUL, refused in ids, tags and function names on every store,
and by PostgreSQL in any field), on each backend: a lookup by it finds nothing, a filter
by it matches nothing, and storing it is refused naming the field; and a listing by more
tags than SQLite's expression depth."""

from __future__ import annotations

from typing import Any

import pytest

from jobcore import InvalidJob, Job, JobStatus
from jobcore.repository.base import JobRepository
from mixed_repositories import BACKENDS, AsIs, repository_with
from pg_fixtures import *  # noqa: F401,F403 (the fixtures: server, schema)


@pytest.fixture(params=BACKENDS)
def any_repository(request: Any, tmp_path: Any) -> JobRepository:
    return repository_with(AsIs, request, tmp_path)


@pytest.mark.parametrize("odd", ["a\x00b", "ab\udcff"])
def test_an_id_or_a_filter_no_job_can_hold_is_unknown_on_every_store(any_repository: Any, make_manager: Any,
                                                                     odd: str) -> None:
    # given a manager with a job owned by "a", and text holding a NUL (PostgreSQL raised
    # ValueError for each call) or a lone surrogate (an id from a non-UTF-8 command line:
    # SQLite and PostgreSQL raised a bare UnicodeEncodeError)
    manager = make_manager(any_repository, producer=True)
    manager.enqueue(Job(function_name="echo", owner="a", tags={"t"}))
    # then a lookup by such an id finds nothing, as for any unknown id
    assert manager.poll(odd) is None and manager.cancel(odd) is False and manager.retry(odd) is False
    assert manager.get_logs(odd) == [] and manager.count_logs(odd) == 0
    with pytest.raises(LookupError):
        manager.wait(odd, timeout=0)
    # and a filter by such an owner or tag matches nothing
    assert manager.list_jobs(owner=odd) == [] and manager.list_jobs(tags=[odd]) == []
    assert manager.list_jobs(tags=["t", odd]) == [] and len(manager.list_jobs(tags=["t"])) == 1


def test_a_function_name_holding_a_nul_is_refused_where_it_is_given(any_repository: Any,
                                                                    make_manager: Any) -> None:
    # given a manager (registering such a name stopped every run on PostgreSQL: each
    # claim query sent it, and failed)
    manager = make_manager(any_repository)
    manager.register_function("echo", lambda x: x)
    # when a NUL is in a name registered or a job's function name, then it is refused
    with pytest.raises(InvalidJob, match="Job.function_name: must not contain a NUL"):
        manager.register_function("echo\x00two", lambda x: x)
    with pytest.raises(InvalidJob, match="Job.function_name: must not contain a NUL"):
        Job(function_name="echo\x00two")
    # and the manager runs jobs as before
    job_id = manager.enqueue(Job(function_name="echo", args=(1,)))
    assert manager.run_pending() == 1 and manager.poll(job_id).result == 1


@pytest.mark.parametrize("field", ["name", "owner", "unique_key"])
def test_a_nul_in_a_text_field_is_refused_naming_it_where_the_store_cannot_hold_it(
        any_repository: Any, make_manager: Any, field: str) -> None:
    manager = make_manager(any_repository)
    manager.register_function("echo", lambda x: x)
    job = Job(function_name="echo", args=(1,), **{field: "a\x00b"})
    if "Postgres" not in type(any_repository).__name__:
        # SQLite and memory hold it, and find the job by it
        job_id = manager.enqueue(job)
        assert manager.run_pending() == 1 and manager.poll(job_id).status is JobStatus.COMPLETED
        if field == "owner":
            assert [r.job_id for r in manager.list_jobs(owner="a\x00b")] == [job_id]
        return
    # PostgreSQL cannot: refused at enqueue naming the field (was a ValueError naming none)
    with pytest.raises(InvalidJob, match=f"Job.{field}: must not contain a NUL character"):
        manager.enqueue(job)
    assert manager.list_jobs() == []


def test_listing_by_more_tags_than_sqlite_nests_expressions(any_repository: Any, make_manager: Any) -> None:
    # given a job with 1,200 tags and one with 1,199 of them (one EXISTS per tag made SQLite
    # refuse a listing by 996 or more: "Expression tree is too large")
    manager = make_manager(any_repository, producer=True)
    tags = [f"tag{i}" for i in range(1200)]
    every = manager.enqueue(Job(function_name="echo", tags=set(tags)))
    manager.enqueue(Job(function_name="echo", tags=set(tags[1:])))
    # then a listing by all of them finds the one that carries all, by the rest both
    assert [r.job_id for r in manager.list_jobs(tags=tags)] == [every]
    assert len(manager.list_jobs(tags=tags[1:])) == 2
    assert len(manager.list_jobs(tags=tags[1:] + tags[1:])) == 2  # a tag given twice counts once
