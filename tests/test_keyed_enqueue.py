"""A job with a `unique_key` enqueued alone on SQLite: one INSERT that stores nothing if the
key is held, then a read of the holder, and a write transaction only when neither settles
it (its id taken, or the holder finished in between). It took a transaction every time,
half the rate of a keyed enqueue. On the memory store, no batch is planned for it."""

from __future__ import annotations

from typing import Any

import pytest

from jobcore import Job, JobStatus, MemoryRepository, SQLiteRepository
from jobcore.errors import InvalidJob
from jobcore.repository import memory_adding, sqlite_adding, sqlite_conn


@pytest.fixture
def counted(make_manager: Any, db_path: str, monkeypatch: Any) -> tuple[Any, list[int]]:
    """A manager on SQLite, not started, and the write transactions its store opens."""
    transactions: list[int] = []
    opened = sqlite_conn.Connections.transaction

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        transactions.append(1)
        return opened(self, *args, **kwargs)

    # (before the store is made: its group committer keeps the method it is given)
    monkeypatch.setattr(sqlite_conn.Connections, "transaction", counting)
    manager = make_manager(SQLiteRepository(db_path))
    manager.register_function("noop", lambda *args: None)
    del transactions[:]  # (opening the file: its schema)
    return manager, transactions


def test_a_free_key_and_a_held_one_take_no_write_transaction(counted: tuple[Any, list[int]]) -> None:
    manager, transactions = counted
    first = manager.enqueue(Job(function_name="noop", unique_key="k"))
    again = manager.enqueue(Job(function_name="noop", unique_key="k"))
    other = manager.enqueue(Job(function_name="noop", unique_key="other"))
    assert again == first != other
    assert transactions == []
    assert [manager.poll(job_id).status for job_id in (first, other)] == [JobStatus.PENDING] * 2
    assert manager.get_stats()["total"] == 2


def test_a_taken_id_with_a_free_key_is_refused_as_before(counted: tuple[Any, list[int]]) -> None:
    manager, _ = counted
    job = Job(function_name="noop", unique_key="k")
    assert manager.enqueue(job) == job.id
    manager.cancel(job.id)  # the key is free again; the id is not
    with pytest.raises(InvalidJob, match="already exists"):
        manager.enqueue(Job(function_name="noop", unique_key="k", id=job.id))
    assert manager.get_stats()["total"] == 1


def test_a_key_whose_holder_seems_to_finish_meanwhile_is_settled_by_a_transaction(
        counted: tuple[Any, list[int]], monkeypatch: Any) -> None:
    manager, transactions = counted
    holder = manager.enqueue(Job(function_name="noop", unique_key="k"))
    # The read after the refused INSERT finds no holder, as when it finished in between
    # (here it did not: the transaction finds it, and its id is the answer)
    unfinished = sqlite_adding.SQLiteAdding._unfinished_with_key
    reads: list[str] = []

    def first_read_finds_none(conn: Any, key: str) -> Any:
        reads.append(key)
        return None if len(reads) == 1 else unfinished(conn, key)

    monkeypatch.setattr(sqlite_adding.SQLiteAdding, "_unfinished_with_key", staticmethod(first_read_finds_none))
    assert manager.enqueue(Job(function_name="noop", unique_key="k")) == holder
    assert (reads, transactions) == (["k", "k"], [1])
    assert manager.get_stats()["total"] == 1


def test_a_lone_keyed_job_on_the_memory_store_is_stored_without_planning_a_batch(make_manager: Any,
                                                                                 monkeypatch: Any) -> None:
    # (planning a batch of one cost a keyed enqueue half its rate there)
    def no_planning(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a lone keyed job was planned as a batch")

    monkeypatch.setattr(memory_adding, "plan_batch", no_planning)
    manager = make_manager(MemoryRepository())
    manager.register_function("noop", lambda *args: None)
    first = manager.enqueue(Job(function_name="noop", unique_key="k"))
    assert manager.enqueue(Job(function_name="noop", unique_key="k")) == first  # held: the holder's id
    with pytest.raises(InvalidJob, match="already exists"):
        manager.enqueue(Job(function_name="noop", unique_key="free", id=first))
    assert manager.cancel(first)  # the key is free again
    second = manager.enqueue(Job(function_name="noop", unique_key="k"))
    assert second != first and manager.poll(second).status is JobStatus.PENDING
    assert manager.get_stats()["total"] == 2
