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
from typing import Any, Callable, Generic, TypeVar

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
    UTF-8): an operation may run more than once, as it does when its batch fails."""

    def __init__(self, transaction: Callable[[Callable[[C], Any]], Any]) -> None:
        self._transaction = transaction
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
        is there to share a transaction with."""
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
            while not ticket.done and self._leading:
                lock_waits.wait(self._cond, self._lock)
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

    def _run_batch(self, batch: list[_Ticket]) -> None:
        if len(batch) > 1:
            in_op = False  # whether what raised was an operation, or opening or committing

            def run_all(conn: C) -> list[Any]:
                nonlocal in_op
                values = []
                for ticket in batch:
                    in_op = True
                    values.append(ticket.op(conn))
                    in_op = False
                return values

            try:
                values = self._transaction(run_all)
            except Exception as exc:
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
