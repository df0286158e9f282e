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
        if _on_the_server(item):
            item.add_marker(pytest.mark.xdist_group("postgres"))


def _on_the_server(item: Any) -> bool:
    """True for a test on the PostgreSQL server (see `pytest_collection_modifyitems`)."""
    callspec = getattr(item, "callspec", None)
    return ("server" in getattr(item, "fixturenames", ())
            or (callspec is not None and "postgres" in callspec.params.values()))


@pytest.fixture(autouse=True)
def _server_in_use(request: Any) -> Iterator[None]:
    """A test on the PostgreSQL server holds its use (shared) while it runs: a restart or a
    stop by a test in another pytest-xdist worker waits for it to end, and it for them
    (see `pg_server.in_use`). Needed where the xdist group is split: under pytest 9.2."""
    if not _on_the_server(request.node):
        yield
        return
    import pg_server
    with pg_server.in_use():
        yield


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
