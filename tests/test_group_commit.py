"""GroupCommitter's solo path, and single-statement writes on SQLite (no transaction of
their own when no other writer is there to share one with)."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from typing import Any, Iterator

import pytest

from jobcore import SQLiteRepository
from jobcore.repository.group_commit import GroupCommitter
from jobcore.testing.contract import NOW, make_record


class _Transactions:
    """A fake transaction source that counts its transactions and can hold one open."""

    def __init__(self) -> None:
        self.opened = 0
        self.hold = threading.Event()
        self.held = threading.Event()
        self.hold.set()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[list[str]]:
        self.opened += 1
        log: list[str] = []
        self.held.set()
        assert self.hold.wait(10)
        yield log


def test_an_operation_alone_runs_solo_without_a_transaction() -> None:
    # given a committer and nobody else writing
    source = _Transactions()
    group: GroupCommitter[list[str]] = GroupCommitter(source.transaction)
    # when an operation with a solo form runs
    value = group.run(lambda conn: "in a transaction", lambda: "solo")
    # then the solo form ran and no transaction was opened
    assert value == "solo" and source.opened == 0
    # and an operation without one still gets its transaction
    assert group.run(lambda conn: "in a transaction") == "in a transaction" and source.opened == 1


def test_an_operation_queued_behind_a_leader_shares_a_transaction_instead_of_going_solo() -> None:
    # given a leader holding its transaction open
    source = _Transactions()
    group: GroupCommitter[list[str]] = GroupCommitter(source.transaction)
    source.hold.clear()
    leader = threading.Thread(target=group.run, args=(lambda conn: "first",))
    leader.start()
    assert source.held.wait(10)
    # when two operations with solo forms arrive meanwhile
    values: list[str] = []
    solos: list[int] = []

    def submit(n: int) -> None:
        values.append(group.run(lambda conn: f"shared {n}", lambda: solos.append(n) or f"solo {n}"))

    followers = [threading.Thread(target=submit, args=(n,)) for n in (1, 2)]
    for thread in followers:
        thread.start()
    while len(group._pending) < 2:  # both queued behind the leader
        threading.Event().wait(0.001)
    source.hold.set()
    for thread in [leader, *followers]:
        thread.join(10)
    # then both ran in one shared transaction after the leader's, and neither went solo
    assert sorted(values) == ["shared 1", "shared 2"] and solos == []
    assert source.opened == 2


def test_a_single_insert_commits_by_itself_and_is_seen_by_another_connection(tmp_path: Any) -> None:
    # given a SQLite repository
    path = str(tmp_path / "jobs.db")
    repo = SQLiteRepository(path)
    record = make_record()
    # when one job is inserted
    assert repo.insert([record], NOW) == [record.id]
    # then it is committed (no transaction left open: another connection may write at
    # once) and gets its rowid
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    other.execute("ROLLBACK")
    assert other.execute("SELECT seq FROM jobs WHERE id = ?", (record.id,)).fetchone() == (record.seq,)
    assert record.seq > 0
    other.close()
    repo.close()


def test_a_single_insert_of_a_taken_id_names_it_and_leaves_the_connection_usable(tmp_path: Any) -> None:
    # given a stored job
    repo = SQLiteRepository(str(tmp_path / "jobs.db"))
    record = make_record()
    repo.insert([record], NOW)
    # when a job with the same id is inserted alone
    with pytest.raises(ValueError, match=record.id):
        repo.insert([make_record(id=record.id)], NOW)
    # then nothing was left half done: the next insert goes through
    other = make_record()
    assert repo.insert([other], NOW) == [other.id]
    repo.close()
