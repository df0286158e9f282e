"""Group commit: write operations from many threads share one transaction and one sync.

A thread that wants to write submits an operation (a function of the connection). If no
other thread is committing, it becomes the leader: it runs every operation submitted so
far in one transaction, commits once, and hands each its result. Threads that submit
meanwhile wait and are served by the next leader. If any operation of a batch raises,
the batch is rolled back and each operation runs again in a transaction of its own, so
one bad operation fails alone; if opening or committing the transaction fails, every
operation of the batch fails with that error. Knows nothing about jobs or SQL.
"""

from __future__ import annotations

import copy
import threading
from typing import Any, Callable, Generic, Optional, TypeVar

from .. import lock_waits
from ..errors import RepositoryError
from ..lock_waits import waitable_lock

C = TypeVar("C")
T = TypeVar("T")


class _Ticket:
    __slots__ = ("op", "done", "value", "error")

    def __init__(self, op: Callable[[Any], Any]) -> None:
        self.op = op
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None


class GroupCommitter(Generic[C]):
    """Batches operations into shared transactions.

    `transaction(body)` must run `body(connection)` inside an open write transaction and
    return its value once committed, or roll back and raise what it raised. It may run
    `body` again in a transaction of its own (SQLite's does after reading text that is not
    UTF-8): an operation may run more than once, as it does when its batch fails.

    `share_solo=False`: an operation that has a single-statement form (`solo`) always runs
    it, never joining a shared transaction (the store serialises the writers itself). For
    commits that cost no fsync: joining cost each joiner a sleep and a wake-up for nothing
    worth sharing (4 threads enqueueing at once on SQLite with durability "normal": 13,900
    jobs a second in all, 17,100 each committing by itself)."""

    def __init__(self, transaction: Callable[[Callable[[C], Any]], Any],
                 committed: Callable[[C], bool] = lambda conn: False, *, share_solo: bool = True) -> None:
        self._transaction = transaction
        self._share_solo = share_solo
        # After an interrupt (Ctrl-C) escaped `transaction` on this thread, once its body
        # had run on `conn`: whether it committed all the same (it landed after the COMMIT).
        self._committed = committed
        # _lock guards _pending and _leading; followers wait on _cond, a condition on it,
        # for their ticket. (`with self._lock` rather than `with self._cond`: the same
        # lock, without two Python calls to the condition's __enter__ and __exit__.)
        self._lock = waitable_lock()  # (followers on a caller's thread wait on _cond)
        self._cond = threading.Condition(self._lock)
        self._pending: list[_Ticket] = []
        self._leading = False

    def run(self, op: Callable[[C], T], solo: Callable[[], T] | None = None) -> T:
        """Run `op(connection)` in a committed transaction (perhaps shared) and return
        its result, or raise what it raised (or what the commit raised).

        `solo`, if given, does the same work committed on its own without a transaction
        around it (a single statement); it runs instead of `op` when no other operation
        is there to share a transaction with (or always, without `share_solo`)."""
        if solo is not None and not self._share_solo:
            return solo()
        with self._lock:
            alone = not self._leading and not self._pending
            if alone:
                self._leading = True
        if alone:  # nobody to share with: run it now, without a ticket
            try:
                if solo is not None:
                    return solo()
                return self._transaction(op)  # type: ignore[no-any-return]
            finally:
                with self._lock:
                    self._leading = False
                    if self._pending:
                        self._cond.notify_all()  # whoever queued meanwhile leads next
        ticket = _Ticket(op)
        with self._lock:
            self._pending.append(ticket)
            try:
                while not ticket.done and self._leading:
                    lock_waits.wait(self._cond, self._lock)
            except BaseException:
                self._interrupted_waiting(ticket)
                raise
            if not ticket.done:
                self._leading = True
                batch, self._pending = self._pending, []
        if not ticket.done:
            try:
                self._run_batch(batch)
            except BaseException as exc:  # interrupted here (Ctrl-C): the others must not wait,
                # nor lead again with their tickets gone and return None as if their
                # operations had run (whether the transaction committed is not known)
                left = [other for other in batch if not other.done and other is not ticket]
                self._finish(left, [None] * len(left), RepositoryError(
                    f"the transaction shared with another thread was interrupted there ({exc!r});"
                    " this operation may or may not have been committed"))
                raise
            finally:
                with self._lock:
                    self._leading = False  # the next waiter with work leads
                    self._cond.notify_all()
        if ticket.error is not None:
            raise ticket.error
        return ticket.value  # type: ignore[no-any-return]

    def _interrupted_waiting(self, ticket: _Ticket) -> None:
        """Ctrl-C in a thread waiting for its ticket (lock held): one not taken yet is
        withdrawn (never run); one a leader's batch runs is waited for, so that the caller
        finds in the store what it did (an enqueue's hand-off that left before the
        leader committed found nothing, and the job it claimed stayed RUNNING, never run,
        until its lease lapsed). More interrupts meanwhile are dropped (the first goes on)."""
        if ticket in self._pending:
            self._pending.remove(ticket)
            return
        while not ticket.done:
            try:
                lock_waits.wait(self._cond, self._lock)
            except BaseException:  # noqa: S112 (another Ctrl-C: the first is being raised)
                continue

    def _run_batch(self, batch: list[_Ticket]) -> None:
        if len(batch) > 1:
            in_op = False  # whether what raised was an operation, or opening or committing
            ran: Optional[tuple[C, list[Any]]] = None  # every operation's value, and the connection

            def run_all(conn: C) -> list[Any]:
                nonlocal in_op, ran
                values = []
                for ticket in batch:
                    in_op = True
                    values.append(ticket.op(conn))
                    in_op = False
                ran = (conn, values)
                return values

            try:
                values = self._transaction(run_all)
            except BaseException as exc:
                if not isinstance(exc, Exception):  # Ctrl-C, on this (the leading) thread
                    # Most land just after the commit (the call waits there): the others'
                    # operations were committed then, and they get their values.
                    if ran is not None and self._committed(ran[0]):
                        self._finish(batch, ran[1])
                    raise
                if not in_op:
                    # No operation's doing (a lock held past the busy timeout, a full
                    # disk): alone, each would wait for it and fail the same way in turn.
                    for ticket in batch:
                        self._finish([ticket], [None], copy.copy(exc))
                    return
                # else fall through: each alone, so only the bad one fails
            else:
                self._finish(batch, values)
                return
        for ticket in batch:
            try:
                value = self._transaction(ticket.op)
            except BaseException as exc:
                self._finish([ticket], [None], exc)
            else:
                self._finish([ticket], [value])

    def _finish(self, tickets: list[_Ticket], values: list[Any], error: BaseException | None = None) -> None:
        with self._lock:
            for ticket, value in zip(tickets, values):
                ticket.value, ticket.error, ticket.done = value, error, True
            self._cond.notify_all()
