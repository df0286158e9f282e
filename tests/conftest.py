"""Shared fixtures: real SQLite files in a temp dir, managers that always stop."""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Iterator

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jobcore import JobManager, MemoryRepository, SQLiteRepository  # noqa: E402
from jobcore.repository.base import JobRepository  # noqa: E402


def pytest_configure(config: Any) -> None:
    config.addinivalue_line("markers", "xdist_group(name): pytest-xdist runs a group's tests in one worker")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    """Run with pytest-xdist (`-n 2 --dist loadgroup`, the README's command), every test on
    the PostgreSQL server goes to one worker, one after another: some restart or stop that
    server, which would break the connections of tests running beside them. That is each
    test using the `server` fixture, and each one parametrized with "postgres", which
    takes its schema (and so the server) only as it runs (`mixed_repositories`).

    First among the hooks: xdist's own reads the marks to group the tests. After it (this
    file is loaded before xdist's worker registers that hook, and hooks registered later
    run first), the marks came too late and the group was split over both workers: a
    test on the server failed when a restart in the other worker ended its connections."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if ("server" in getattr(item, "fixturenames", ())
                or (callspec is not None and "postgres" in callspec.params.values())):
            item.add_marker(pytest.mark.xdist_group("postgres"))


@pytest.fixture
def db_path(tmp_path: Any) -> str:
    """A fresh SQLite file path."""
    return str(tmp_path / "jobs.db")


@pytest.fixture(params=["sqlite", "memory"])
def repository(request: Any, tmp_path: Any) -> Iterator[JobRepository]:
    """Each backend in turn: a real SQLite file, then memory."""
    repo: JobRepository
    if request.param == "sqlite":
        repo = SQLiteRepository(str(tmp_path / "jobs.db"))
    else:
        repo = MemoryRepository()
    yield repo
    repo.close()


@pytest.fixture
def make_manager() -> Iterator[Callable[..., JobManager]]:
    """Build managers that are stopped (and their repositories closed) after the test."""
    managers: list[JobManager] = []

    def make(*args: Any, **kwargs: Any) -> JobManager:
        manager = JobManager(*args, **kwargs)
        managers.append(manager)
        return manager

    yield make
    for manager in managers:
        manager.stop(timeout=10)
        manager.close()
