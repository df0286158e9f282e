"""`Pause` and `paused_store`: a store of each backend whose recording of one job's
outcome (or hand-back) the test holds up until it has done what it must do meanwhile: a
window made wide and exact, with no sleeps and no timing assumptions. A test module
imports `paused_store` together with the PostgreSQL fixtures it asks for
(`from pg_fixtures import schema, server`)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Iterator, Sequence

import pytest

import pg_fixtures
from jobcore import MemoryRepository, SQLiteRepository
from jobcore.repository.base import JobRepository, Settlement

WAIT = 30.0


class Pause:
    """Holds up each store call that records an outcome of job `job_id` (or hands it
    back) until `proceed` is set; `reached` tells that one is waiting."""

    def __init__(self) -> None:
        self.job_id = ""
        self.reached = threading.Event()
        self.proceed = threading.Event()

    def __call__(self, settlements: Sequence[Settlement]) -> None:
        if any(s.job_id == self.job_id for s in settlements):
            self.reached.set()
            self.proceed.wait(WAIT)  # bounded: a broken test fails on its own asserts


def pausing(base: type[JobRepository], pause: Pause) -> type[JobRepository]:
    """`base` with every call that records outcomes (`apply`, and `insert_and_apply` where
    the backend has one) first going through `pause`."""

    class Pausing(base):  # type: ignore[valid-type,misc]
        def apply(self, settlements: Sequence[Settlement], *args: Any, **kwargs: Any) -> Any:
            pause(settlements)
            return super().apply(settlements, *args, **kwargs)

        if base.insert_and_apply is not JobRepository.insert_and_apply:
            def insert_and_apply(self, record: Any, settlements: Sequence[Settlement], *args: Any,
                                 **kwargs: Any) -> Any:
                pause(settlements)
                return super().insert_and_apply(record, settlements, *args, **kwargs)

    return Pausing


@pytest.fixture(params=["sqlite", "memory", pytest.param("postgres", marks=pg_fixtures.MARKS)])
def paused_store(request: Any, tmp_path: Path) -> Iterator[tuple[JobRepository, Pause]]:
    """A fresh store of each backend whose recording of one job's outcome the test holds up."""
    pause = Pause()
    store: JobRepository
    if request.param == "sqlite":
        store = pausing(SQLiteRepository, pause)(tmp_path / "jobs.db")
    elif request.param == "memory":
        store = pausing(MemoryRepository, pause)()
    else:
        fresh = request.getfixturevalue("schema")
        store = pausing(pg_fixtures.PostgresRepository, pause)(fresh.server, schema=fresh.name)
    yield store, pause
    pause.proceed.set()
    store.close()
