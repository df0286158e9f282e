"""GroupCommitter: its solo path, shared transactions (one bad operation failing alone,
each of many threads getting its own result), and single-statement writes on SQLite (no
transaction of their own when no other writer is there to share one with)."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import threading
from typing import Any, Callable

import pytest

from jobcore import SQLiteRepository
from jobcore.errors import RepositoryError
from jobcore.repository import sqlite_conn
from jobcore.repository.group_commit import GroupCommitter, _Ticket
from jobcore.testing.contract import NOW, make_record
from interrupts import CtrlCOnce


class _Transactions:
    """A fake transaction source that counts its transactions, can hold one open, and
    keeps what the operations of each committed transaction wrote to its log."""

    def __init__(self) -> None:
        self.opened = 0
        self.hold = threading.Event()
        self.held = threading.Event()
        self.hold.set()
        self.committed: list[list[str]] = []

    def transaction(self, body: Callable[[list[str]], Any]) -> Any:
        self.opened += 1
        log: list[str] = []
        self.held.set()
        assert self.hold.wait(10)
        value = body(log)
        self.committed.append(log)
        return value


def _writes(entry: str) -> Callable[[list[str]], str]:
    def op(log: list[str]) -> str:
        log.append(entry)
        return entry
    return op


def _queued_behind_a_held_leader(group: GroupCommitter[list[str]], source: _Transactions,
                                 ops: list[Callable[[list[str]], str]]) -> tuple[threading.Thread, list[Any]]:
    """A leader holding its transaction open, then a thread per op queued behind it, in
    order; returns the leader and, per op, what its run returned or raised (filled in as
    they end)."""
    source.hold.clear()
    leader = threading.Thread(target=group.run, args=(_writes("leader"),))
    leader.start()
    assert source.held.wait(10)
    outcomes: list[Any] = [None] * len(ops)

    def submit(n: int) -> None:
        try:
            outcomes[n] = group.run(ops[n])
        except BaseException as exc:  # (KeyboardInterrupt too: see the interrupted leader)
            outcomes[n] = exc

    for n in range(len(ops)):
        thread = threading.Thread(target=submit, args=(n,))
        thread.start()
        outcomes[n] = thread
        while len(group._pending) < n + 1:  # queued in this order
            threading.Event().wait(0.001)
    return leader, outcomes


def _shared_transaction_through(group: GroupCommitter[list[str]], source: _Transactions,
                                transaction: Callable[[Callable[[list[str]], Any]], Any]) -> list[Any]:
    """Queue "a", "b" and "c" behind a held leader, make every transaction opened from then
    on go through `transaction`, release the leader, and return each one's outcome once
    every thread ended."""
    leader, outcomes = _queued_behind_a_held_leader(group, source, [_writes("a"), _writes("b"), _writes("c")])
    threads = list(outcomes)
    group._transaction = transaction
    source.hold.set()
    for thread in [leader, *threads]:
        thread.join(10)
    assert not any(thread.is_alive() for thread in threads)
    return outcomes


def _shared_transaction_raising(group: GroupCommitter[list[str]], source: _Transactions,
                                error: BaseException) -> list[Any]:
    """`_shared_transaction_through` transactions that raise `error` as they open."""
    def raising(body: Callable[[list[str]], Any]) -> Any:
        source.opened += 1
        raise error

    return _shared_transaction_through(group, source, raising)


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


def test_one_bad_operation_of_a_shared_transaction_fails_alone() -> None:
    # given three operations queued behind a leader, the middle one raising
    source = _Transactions()
    group: GroupCommitter[list[str]] = GroupCommitter(source.transaction)

    def bad(log: list[str]) -> str:
        log.append("bad")
        raise ValueError("bad operation")

    leader, outcomes = _queued_behind_a_held_leader(group, source, [_writes("a"), bad, _writes("c")])
    threads = list(outcomes)
    # when the leader commits
    source.hold.set()
    for thread in [leader, *threads]:
        thread.join(10)
    # then the shared transaction was undone and each ran alone: only the bad one failed
    assert outcomes[0] == "a" and outcomes[2] == "c"
    assert isinstance(outcomes[1], ValueError) and str(outcomes[1]) == "bad operation"
    assert source.committed == [["leader"], ["a"], ["c"]]
    assert source.opened == 5  # the leader's, the shared one undone, then a, bad and c alone


def test_a_shared_transaction_that_cannot_begin_fails_every_operation_once() -> None:
    # given three operations queued behind a leader, and a database that stays locked:
    # opening a transaction waits out the busy timeout, then raises
    source = _Transactions()
    group: GroupCommitter[list[str]] = GroupCommitter(source.transaction)
    locked = RuntimeError("the database stayed locked past the busy timeout")
    # when the leader's transaction ends and the shared one cannot begin
    outcomes = _shared_transaction_raising(group, source, locked)
    # then each operation fails with that error after one wait, not a wait of its own
    # each (one caller of eight waited nine busy timeouts)
    assert all(isinstance(o, RuntimeError) and str(o) == str(locked) for o in outcomes)
    assert source.opened == 2  # the leader's, then the shared one


def test_a_shared_transaction_interrupted_in_its_leader_fails_the_others_rather_than_dropping_them() -> None:
    # given three operations queued behind a leader, and the shared transaction that the
    # first of them to lead opens interrupted there (Ctrl-C in that thread)
    source = _Transactions()
    group: GroupCommitter[list[str]] = GroupCommitter(source.transaction)
    # when the leader's transaction ends and the shared one is interrupted
    outcomes = _shared_transaction_raising(group, source, KeyboardInterrupt())
    # then the thread leading it gets the interrupt, and each other one an error saying
    # its operation may not have run (each returned None as if it had, its ticket gone)
    assert sum(isinstance(o, KeyboardInterrupt) for o in outcomes) == 1
    others = [o for o in outcomes if not isinstance(o, KeyboardInterrupt)]
    assert len(others) == 2 and all(isinstance(o, RepositoryError) and "interrupted" in str(o) for o in others)
    assert source.opened == 2  # the leader's, then the shared one


def test_a_shared_transaction_interrupted_after_its_commit_gives_the_others_their_values() -> None:
    # given three operations queued behind a leader, and the shared transaction that the
    # first of them to lead opens committed, then interrupted (Ctrl-C landing just after
    # the commit, where most land: the call waits there); the source tells it committed
    source = _Transactions()
    committed_logs: list[int] = []

    def committed(log: list[str]) -> bool:
        return id(log) in committed_logs

    group: GroupCommitter[list[str]] = GroupCommitter(source.transaction, committed)

    def committing_then_interrupted(body: Callable[[list[str]], Any]) -> Any:
        log: list[str] = []
        body(log)
        source.committed.append(log)
        committed_logs.append(id(log))
        raise KeyboardInterrupt

    outcomes = _shared_transaction_through(group, source, committing_then_interrupted)
    # then the thread leading it gets the interrupt, and each other one its own value:
    # their operations were committed (they got an error saying they may not have been,
    # and a worker's exchange left the jobs it claimed there RUNNING until their leases
    # lapsed)
    assert sum(isinstance(o, KeyboardInterrupt) for o in outcomes) == 1
    others = sorted(o for o in outcomes if not isinstance(o, KeyboardInterrupt))
    assert len(others) == 2 and set(others) < {"a", "b", "c"}
    assert sorted(source.committed[-1]) == ["a", "b", "c"]


def test_sqlite_tells_whether_a_write_interrupted_after_its_body_committed(tmp_path: Any) -> None:
    # given a SQLite file and a write whose body inserts a row
    repository = SQLiteRepository(str(tmp_path / "jobs.db"))
    db = repository._db
    with db.write() as conn:
        conn.execute("CREATE TABLE scratch (x INTEGER)")
    try:
        for after_commit in (True, False):
            ran: list[sqlite3.Connection] = []

            def body(conn: sqlite3.Connection) -> None:
                conn.execute("INSERT INTO scratch VALUES (1)")
                ran.append(conn)

            # when Ctrl-C lands in the write once its body ran: after its COMMIT, or
            # just before it
            def armed() -> bool:
                return bool(ran) and (not ran[0].in_transaction if after_commit else True)

            with CtrlCOnce("write", armed) as ctrl_c:
                with pytest.raises(KeyboardInterrupt):
                    db.transaction(body)
            assert ctrl_c.fired
            # then it tells that it committed (its row is there) or not (only the first
            # write's row is there)
            rows = db.read("SELECT count(*) FROM scratch")[0][0]
            assert (db.committed_after_interrupt(ran[0]), rows) == (after_commit, 1)
    finally:
        repository.close()


def test_on_sqlite_a_shared_transaction_interrupted_after_its_commit_gives_the_others_their_values(
        tmp_path: Any) -> None:
    # given a SQLite repository's committer, and a batch this (the main) thread leads: its
    # own operation and another thread's, which writes a row
    repository = SQLiteRepository(str(tmp_path / "jobs.db"))
    path = str(tmp_path / "jobs.db")
    with repository._db.write() as conn:
        conn.execute("CREATE TABLE scratch (x INTEGER)")

    def rows() -> int:
        with contextlib.closing(sqlite3.connect(path)) as other:  # sees what is committed
            return int(other.execute("SELECT count(*) FROM scratch").fetchone()[0])

    mine = _Ticket(lambda conn: "mine")
    theirs = _Ticket(lambda conn: conn.execute("INSERT INTO scratch VALUES (2)") and "theirs")
    try:
        # when Ctrl-C lands in the write just after its COMMIT
        with CtrlCOnce("write", lambda: rows() == 1) as ctrl_c:
            with pytest.raises(KeyboardInterrupt):
                repository._group._run_batch([mine, theirs])
        assert ctrl_c.fired
        # then the other thread's operation has its value, not an error saying it may not
        # have been committed (a worker's exchange then left the jobs it claimed RUNNING,
        # never run, until their leases lapsed)
        assert (theirs.done, theirs.error, theirs.value) == (True, None, "theirs")
    finally:
        repository.close()


def test_ctrl_c_while_waiting_behind_a_leader_withdraws_the_operation() -> None:
    # given this (the main) thread's operation queued behind a leader holding its
    # transaction open, and SIGUSR1 raising KeyboardInterrupt here (as Ctrl-C's SIGINT does)
    source = _Transactions()
    group: GroupCommitter[list[str]] = GroupCommitter(source.transaction)
    source.hold.clear()
    leader = threading.Thread(target=group.run, args=(_writes("leader"),))
    leader.start()
    assert source.held.wait(10)
    main = threading.get_ident()

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    def ctrl_c_once_queued() -> None:
        while not group._pending:
            threading.Event().wait(0.001)
        signal.pthread_kill(main, signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, interrupt)
    try:
        sender = threading.Thread(target=ctrl_c_once_queued)
        sender.start()
        # when Ctrl-C comes while it waits
        with pytest.raises(KeyboardInterrupt):
            group.run(_writes("mine"))
    finally:
        signal.signal(signal.SIGUSR1, previous)
    sender.join(10)
    source.hold.set()
    leader.join(10)
    # then its operation was withdrawn: it never runs (it ran in the next leader's batch
    # while its caller had been told it was interrupted), and the committer is free
    assert group.run(_writes("next")) == "next"
    assert all("mine" not in log for log in source.committed) and not group._pending


def test_each_of_many_threads_gets_its_own_result_once() -> None:
    # given 16 threads each running 100 operations through one committer
    source = _Transactions()
    group: GroupCommitter[list[str]] = GroupCommitter(source.transaction)
    results: dict[int, list[str]] = {}

    def submit(n: int) -> None:
        results[n] = [group.run(_writes(f"{n}.{i}")) for i in range(100)]

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    # then each got back what its own operations returned, and each committed once
    assert all(results[n] == [f"{n}.{i}" for i in range(100)] for n in range(16))
    written = [entry for log in source.committed for entry in log]
    assert sorted(written) == sorted(f"{n}.{i}" for n in range(16) for i in range(100))
    assert group._pending == [] and not group._leading


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


@pytest.mark.parametrize("durability,shares", [("normal", False), ("full", True)])
def test_a_single_insert_behind_another_writer_shares_its_transaction_only_when_commits_fsync(
        tmp_path: Any, monkeypatch: Any, durability: str, shares: bool) -> None:
    # given a SQLite repository whose committer is leading another thread's write, held open
    transactions: list[int] = []
    opened = sqlite_conn.Connections.transaction

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        transactions.append(1)
        return opened(self, *args, **kwargs)

    monkeypatch.setattr(sqlite_conn.Connections, "transaction", counting)  # (before the store keeps it)
    repo = SQLiteRepository(str(tmp_path / "jobs.db"), durability=durability)
    inside, release = threading.Event(), threading.Event()

    def held(conn: Any) -> None:
        inside.set()
        assert release.wait(10)

    leader = threading.Thread(target=repo._group.run, args=(held,))
    leader.start()
    assert inside.wait(10)
    del transactions[:]
    # when this thread inserts one job meanwhile (from another thread, which waits)
    record = make_record()
    written: list[list[str]] = []
    waiting_to_write = threading.Event()
    write_one = repo._db.write_one

    def noting_write_one(*args: Any) -> Any:
        waiting_to_write.set()  # (then waits for the write lock, which the leader holds)
        return write_one(*args)

    monkeypatch.setattr(repo._db, "write_one", noting_write_one)
    inserter = threading.Thread(target=lambda: written.append(repo.insert([record], NOW)))
    inserter.start()
    for _ in range(1000):  # until it queued behind the leader, or waits to write by itself
        if repo._group._pending or waiting_to_write.is_set():
            break
        inside.wait(0.01)
    release.set()
    leader.join(10)
    inserter.join(10)
    # then it is stored either way: with "full" in a transaction shared with the next
    # writers (one fsync for all), with "normal" committed by itself once the leader's
    # transaction ended (joining cost each joiner a sleep and a wake-up, and a commit
    # without an fsync has nothing worth sharing)
    assert written == [[record.id]]
    assert transactions == ([1] if shares else []), transactions
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


@pytest.mark.parametrize("durability", ["full", "normal"])
def test_log_lines_written_at_once_share_a_transaction_only_when_commits_fsync_and_each_is_kept(
        tmp_path: Any, durability: str) -> None:
    # given a repository whose group committer's leader holds its transaction open
    repo = SQLiteRepository(str(tmp_path / "jobs.db"), durability=durability)
    record = make_record()
    repo.insert([record], NOW)
    release, held = threading.Event(), threading.Event()

    def hold(conn: sqlite3.Connection) -> None:
        held.set()
        assert release.wait(10)

    leader = threading.Thread(target=repo._group.run, args=(hold,))
    leader.start()
    assert held.wait(10)
    commits = repo._db._commits
    # when three jobs' threads log meanwhile
    loggers = [threading.Thread(target=repo.add_log, args=(record.id, "info", f"line {n}", NOW + n))
               for n in range(3)]
    for thread in loggers:
        thread.start()
    queued = False
    for _ in range(5000 if durability == "full" else 100):
        queued = len(repo._group._pending) == 3
        if queued:
            break
        threading.Event().wait(0.001)
    release.set()
    for thread in loggers + [leader]:
        thread.join(10)
    # then with "full" the leader's transaction and one shared by the three lines were
    # committed, not four (one fsync for the three); with "normal" none joined it (no
    # fsync to share: each commits by itself, taking its turn); every line is there
    assert queued is (durability == "full"), "the log lines did not queue behind the leader"
    assert repo._db._commits == commits + (2 if durability == "full" else 4)
    assert sorted(entry[2] for entry in repo.logs(record.id)) == ["line 0", "line 1", "line 2"]
    # and a line logged alone is one statement committed by itself
    before = repo._db._commits
    repo.add_log(record.id, "warning", "alone", NOW + 5)
    assert repo._db._commits == before + 1
    assert repo.logs(record.id)[-1][1:] == ("warning", "alone")
    repo.close()
