"""A small connection pool for `PostgresRepository`, and psycopg errors turned into jobcore's.

Connections are autocommit (a transaction is opened explicitly where a method needs
one), lent to one thread at a time and returned after each repository call, so a
manager with four workers needs a handful of connections whatever its thread count. It
is not a general-purpose pool: no health checks in the background, no resizing, no
statistics; a connection that broke is dropped when it comes back, and a forked child
starts a pool of its own without touching (or closing) its parent's connections.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Iterator

import psycopg
from psycopg import conninfo

from ..clock import SYSTEM_CLOCK
from ..errors import RepositoryError

APPLICATION_NAME = "jobcore"


def describe(dsn: str) -> str:
    """The DSN without its password, for messages: `host:port/dbname`."""
    try:
        params = conninfo.conninfo_to_dict(dsn)
    except psycopg.Error:
        return "<unparsable DSN>"
    host = params.get("host") or params.get("hostaddr") or "localhost"
    port = params.get("port") or "5432"
    return f"{host}:{port}/{params.get('dbname') or params.get('user') or ''}"


def translate(exc: BaseException, where: str) -> RepositoryError:
    """A `RepositoryError` naming the server and what went wrong."""
    if isinstance(exc, psycopg.OperationalError):
        problem = "the server cannot be reached or the connection broke"
    elif isinstance(exc, psycopg.errors.ReadOnlySqlTransaction):
        problem = "the server is read-only (a standby?)"
    elif isinstance(exc, psycopg.errors.DiskFull):
        problem = "the server's disk is full"
    elif isinstance(exc, psycopg.errors.InsufficientPrivilege):
        problem = "the role lacks a privilege jobcore needs"
    elif isinstance(exc, (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn)):
        problem = "the jobcore tables are missing or not this version's"
    else:
        problem = type(exc).__name__
    text = " ".join(str(exc).split())
    return RepositoryError(f"PostgreSQL at {where}: {problem} ({text})")


class ConnectionPool:
    """Up to `max_size` autocommit connections to `dsn`, lent one thread at a time.

    `timeout` (seconds) bounds both connecting and waiting for a free connection."""

    def __init__(self, dsn: str, max_size: int, timeout: float) -> None:
        self.dsn = dsn
        self.where = describe(dsn)
        self.max_size = max_size
        self.timeout = timeout
        # _cond guards _idle, _size, _pid and _closed; borrowers wait on it for a free slot.
        self._cond = threading.Condition(threading.Lock())
        self._idle: list[psycopg.Connection] = []
        self._size = 0  # connections open or being opened, lent or idle
        self._pid = os.getpid()
        self._closed = False
        self._inherited: list[psycopg.Connection] = []  # a parent's, kept from the GC

    def connect(self, *, autocommit: bool = True) -> psycopg.Connection:
        """A new connection outside the pool (the caller closes it)."""
        try:
            return psycopg.connect(self.dsn, autocommit=autocommit,
                                   connect_timeout=max(1, int(self.timeout)),
                                   application_name=APPLICATION_NAME)
        except psycopg.Error as exc:
            raise translate(exc, self.where) from None

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """Lend a connection for one call; it comes back to the pool afterwards."""
        conn = self._acquire()
        try:
            yield conn
        finally:
            self._release(conn)

    def _acquire(self) -> psycopg.Connection:
        deadline = SYSTEM_CLOCK.monotonic() + self.timeout
        with self._cond:
            self._check_fork_locked()
            while True:
                if self._closed:
                    raise RepositoryError(f"PostgreSQL at {self.where}: the repository is closed")
                if self._idle:
                    return self._idle.pop()
                if self._size < self.max_size:
                    self._size += 1
                    break
                remaining = deadline - SYSTEM_CLOCK.monotonic()
                if remaining <= 0:
                    raise RepositoryError(
                        f"PostgreSQL at {self.where}: no free connection within {self.timeout:g}s"
                        f" (all {self.max_size} in use; raise pool_size)")
                self._cond.wait(remaining)
        try:
            return self.connect()
        except BaseException:
            with self._cond:
                self._size -= 1
                self._cond.notify()
            raise

    def _release(self, conn: psycopg.Connection) -> None:
        usable = not conn.closed and not conn.broken and (
            conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE)
        with self._cond:
            if os.getpid() != self._pid:  # lent before a fork: the parent's, not ours
                return
            if usable and not self._closed:
                self._idle.append(conn)
                self._cond.notify()
                return
            self._size -= 1
            self._cond.notify()
        with contextlib.suppress(psycopg.Error):
            conn.close()

    def _check_fork_locked(self) -> None:
        """In a forked child, forget the parent's connections without closing them:
        closing would end the parent's sessions, which share the sockets."""
        pid = os.getpid()
        if pid != self._pid:
            self._inherited.extend(self._idle)
            self._idle = []
            self._size = 0
            self._pid = pid

    def close(self) -> None:
        """Close the idle connections; lent ones are closed when they come back."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._size -= len(idle)
            mine = os.getpid() == self._pid
            self._cond.notify_all()
        if mine:
            for conn in idle:
                with contextlib.suppress(psycopg.Error):
                    conn.close()
