"""A small connection pool for `PostgresRepository`, and psycopg errors turned into jobcore's.

Connections are autocommit (a transaction is opened explicitly where a method needs
one), lent to one thread at a time and returned after each repository call, so a
manager with four workers needs a handful of connections whatever its thread count. It
is not a general-purpose pool: no health checks in the background, no resizing, no
statistics. An idle connection is checked as it is lent (one `poll` that never waits,
see `is_alive`), so one the server ended while it sat idle (a restart,
`idle_session_timeout`, `pg_terminate_backend`) is dropped rather than handed out; a
connection that broke under a caller is dropped when it comes back; and a forked child
starts a pool of its own without touching (or closing) its parent's connections.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
from typing import Iterator, Optional

import psycopg
from psycopg import conninfo

from .. import lock_waits
from ..clock import SYSTEM_CLOCK
from ..errors import RepositoryError
from ..lock_waits import waitable_lock

logger = logging.getLogger("jobcore.postgres")

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
    state = getattr(exc, "sqlstate", None)
    if isinstance(exc, psycopg.OperationalError) and (state is None or state[:2] == "08" or state[:3] == "57P"):
        # (other operational errors are the server's answers: a statement timeout, a
        # value too big for an index, a lock not available: named as they are below)
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


def is_alive(conn: psycopg.Connection) -> bool:
    """Whether an idle pooled connection may be lent: open, outside any transaction, and
    with nothing from the server waiting on its socket.

    A pooled session LISTENs for nothing and is asked nothing while idle, so whatever
    arrives on it meanwhile is the server ending it: the `FATAL` message and end of stream
    of a restart or shutdown (`terminating connection due to administrator command`),
    of `idle_session_timeout`, or of `pg_terminate_backend`. libpq reads those only when
    the next statement is sent, and fails that statement with them; checking first costs
    one `poll` that never waits (about a microsecond). A connection a network device
    dropped silently still looks alive: see docs/postgres.md on keepalives."""
    if conn.closed or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        return False
    try:
        return not _readable(conn.fileno())
    except (psycopg.Error, OSError, ValueError):
        return False


def _readable(fd: int) -> bool:
    """Whether `fd` has input (or an error or hang-up) pending; never waits."""
    if hasattr(select, "poll"):  # poll has no FD_SETSIZE limit: a busy process may hold > 1024 fds
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([fd], [], [], 0)[0])  # Windows


class ConnectionPool:
    """Up to `max_size` autocommit connections to `dsn`, lent one thread at a time.

    `timeout` (seconds) bounds both connecting and waiting for a free connection."""

    def __init__(self, dsn: str, max_size: int, timeout: float) -> None:
        self.dsn = dsn
        self.where = describe(dsn)
        self.max_size = max_size
        self.timeout = timeout
        # _cond guards _idle, _size, _pid, _closed and the process ids below; borrowers wait on
        # it for a free slot.
        self._lock = waitable_lock()  # (a caller's thread waits on _cond for a connection)
        self._cond = threading.Condition(self._lock)
        self._idle: list[psycopg.Connection] = []
        self._size = 0  # connections open or being opened, lent or idle
        # The server's process id of each open connection (by the connection's `id`), and
        # their set, replaced whole: read without the lock by `ChangeListener`, to tell
        # this pool's NOTIFYs apart.
        self._backend_pid: dict[int, int] = {}
        self.backend_pids: frozenset[int] = frozenset()
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
        """An idle connection that `is_alive`, else a new one; waits up to `timeout`
        for a free slot. Dead idle connections are dropped on the way."""
        deadline = SYSTEM_CLOCK.monotonic() + self.timeout
        while True:
            conn = self._take_idle_or_reserve(deadline)
            if conn is None:  # a slot was reserved for a new connection
                return self._open_reserved()
            if is_alive(conn):  # checked outside the lock: it is a system call
                return conn
            logger.debug("dropping an idle connection to %s the server ended", self.where)
            self._discard(conn)

    def _take_idle_or_reserve(self, deadline: float) -> Optional[psycopg.Connection]:
        """Pop an idle connection, or reserve a slot (count it in `_size`) and return None."""
        with self._cond:
            self._check_fork_locked()
            while True:
                if self._closed:
                    raise RepositoryError(f"PostgreSQL at {self.where}: the repository is closed")
                if self._idle:
                    return self._idle.pop()
                if self._size < self.max_size:
                    self._size += 1
                    return None
                remaining = deadline - SYSTEM_CLOCK.monotonic()
                if remaining <= 0:
                    raise RepositoryError(
                        f"PostgreSQL at {self.where}: no free connection within {self.timeout:g}s"
                        f" (all {self.max_size} in use; raise pool_size)")
                lock_waits.wait(self._cond, self._lock, remaining)

    def _open_reserved(self) -> psycopg.Connection:
        """Open a connection in a slot `_take_idle_or_reserve` reserved (freed on failure)."""
        try:
            conn = self.connect()
        except BaseException:
            with self._cond:
                self._size -= 1
                self._cond.notify()
            raise
        with self._cond:
            self._backend_pid[id(conn)] = conn.info.backend_pid
            self.backend_pids = frozenset(self._backend_pid.values())
        return conn

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
        self._discard(conn)

    def _discard(self, conn: psycopg.Connection) -> None:
        """Free the slot of a connection of this pool that will not be lent again, and close it."""
        with self._cond:
            if os.getpid() != self._pid:  # lent before a fork: the parent's, not ours
                return
            self._size -= 1
            self._forget_pid_locked(conn)
            self._cond.notify()
        with contextlib.suppress(psycopg.Error):
            conn.close()

    def _forget_pid_locked(self, conn: psycopg.Connection) -> None:
        """`conn` leaves the pool: its server process id is no longer this pool's."""
        if self._backend_pid.pop(id(conn), None) is not None:
            self.backend_pids = frozenset(self._backend_pid.values())

    def _check_fork_locked(self) -> None:
        """In a forked child, forget the parent's connections without closing them:
        closing would end the parent's sessions, which share the sockets."""
        pid = os.getpid()
        if pid != self._pid:
            self._inherited.extend(self._idle)
            self._idle = []
            self._size = 0
            self._backend_pid, self.backend_pids = {}, frozenset()
            self._pid = pid

    def close(self) -> None:
        """Close the idle connections; lent ones are closed when they come back."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._size -= len(idle)
            for conn in idle:
                self._forget_pid_locked(conn)
            mine = os.getpid() == self._pid
            self._cond.notify_all()
        if mine:
            for conn in idle:
                with contextlib.suppress(psycopg.Error):
                    conn.close()
