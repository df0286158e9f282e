"""This process's connections to one SQLite file: one per thread, one writer at a time.
Their background checkpoints of the write-ahead log are sqlite_checkpoint's.

Knows nothing about jobs: `SQLiteRepository` runs its SQL through `write()`,
`transaction()` and `read()`. A connection reads text with sqlite3's own decoder until it
meets stored text that is not UTF-8, then tolerantly (see sqlite_rows.tolerant_text).
Opening, setting up and closing the connections, and forks, are sqlite_lifetime's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sqlite3
import threading
import urllib.parse
from typing import Any, Callable, Iterator, Optional, Sequence, TypeVar

from ..clock import real_monotonic, real_sleep
from ..errors import RepositoryError
from ..forks import PerForkStack, on_fork
from ..lock_waits import holds
from .sqlite_checkpoint import (CHECKPOINT_EVERY, FOREGROUND_WAL_LIMIT_PAGES, SIZE_CHECK_EVERY, WAL_LIMIT_PAGES,
                                Checkpointer)
from .sqlite_gate import ForkGate
from .sqlite_lifetime import _OPEN, ConnectionLifetime
from .sqlite_rows import TextNotUtf8, is_not_utf8, tolerant_text, translate

logger = logging.getLogger("jobcore.sqlite")

SYNCHRONOUS = {"normal": "NORMAL", "full": "FULL"}

T = TypeVar("T")


# Seconds: a wait for another process's lock longer than this is an outage, not
# contention (a write transaction here lasts about a millisecond); tries then come
# every OUTAGE_PAUSE seconds (with jitter) instead of every CONTENDED_PAUSE at most.
LONG_LOCK = 0.1
OUTAGE_PAUSE = 0.01
# Seconds: the longest pause between tries while the lock is contended (a wait that got
# this far has already lasted about twice as long). Four worker processes draining one
# file on two vCPUs ran 1.02-1.07x as fast as one process with 3 ms, 0.99-1.03x with 1 ms
# (their tries took the CPU the lock's holder needed) and 0.95-0.97x with 0.2 ms.
CONTENDED_PAUSE = 0.003


def file_uri(path: str, mode: str, paths: Any = os.path) -> str:
    """An SQLite URI naming the file at `path` (made absolute by `paths`, os.path or
    ntpath, its symbolic links followed as the file system follows them: `link/../jobs.db`
    is the jobs.db beside the link's target, where `abspath` took the `..` as text and named
    another file; any character URIs reserve quoted), opened in `mode` ("rw": the file must
    exist, SQLite never creates it). What is quoted is the bytes the file system names
    the file by (`os.fsencode`): a name that is not UTF-8 (a Latin-1 one, which
    `os.listdir` and the command line give with lone surrogates, 'caf\\udce9.db') reaches
    SQLite as those bytes, where the str itself cannot be quoted (UnicodeEncodeError)."""
    absolute = paths.realpath(path)
    if paths.sep != "/":  # Windows: C:\data\jobs.db -> /C:/data/jobs.db
        absolute = absolute.replace(paths.sep, "/")
    if not absolute.startswith("/"):
        absolute = "/" + absolute
    # "file://" and an empty authority, then the path: one starting "//" (a Windows
    # share, \\server\share) stays a path.
    return f"file://{urllib.parse.quote(os.fsencode(absolute), safe='/:')}?mode={mode}"


def locked_error(path: str) -> RepositoryError:
    """What a call raises once it has waited `busy_timeout` for the write lock."""
    return translate(sqlite3.OperationalError("database is locked"), path)


def _in_transaction(conn: sqlite3.Connection) -> bool:
    """Whether `conn` is inside a transaction; False once closed (by a fork: see
    `ReopenedByFork`)."""
    try:
        return conn.in_transaction
    except sqlite3.ProgrammingError:
        return False


class ReopenedByFork(Exception):
    """A fork closed this thread's connection while it waited between tries for another
    process's lock (see `ConnectionLifetime._before_fork`): its call is made again on a
    new connection, waiting until the same `deadline` (each fork gave it a whole busy
    timeout more: a process forking more often than that waited for ever). Raised and
    caught inside `Connections` only."""

    def __init__(self, deadline: float) -> None:
        super().__init__(deadline)
        self.deadline = deadline


class Connections(ConnectionLifetime):
    """Per-thread connections to the file at `path`, write transactions one at a time
    (`write`), and WAL checkpoints on a thread of their own (a `Checkpointer`, woken
    every CHECKPOINT_EVERY commits).

    `busy_timeout` (seconds) is how long a call waits, in all, for the database to be
    free: for this process's other writers ahead of it and for another process's lock.
    `check(connection)`, if given, runs on the first connection before anything is
    written (the journal mode among it), and may refuse the file by raising.

    Only the first connection may create the file, and only if it did not exist when
    this object was made: the others open it with `mode=rw`, so a file removed or moved
    while in use is an error rather than a new empty database in its place."""

    def __init__(self, path: str, *, busy_timeout: float, durability: str,
                 check: Optional[Callable[[sqlite3.Connection], None]] = None) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._check = check
        self._uri = file_uri(path, "rw")
        self._create_uri = file_uri(path, "rwc")  # (the first connection's, if the file is new)
        # Whether the next connection may create the file (cleared by the first that opens).
        self._may_create = not os.path.exists(path)
        self._checked = False  # whether `check` accepted the file
        # Whether a connection met stored text that is not UTF-8: those opened after it read
        # text tolerantly from the start (the others switch as each meets it).
        self._tolerant = False
        self._warned = False  # whether that was logged
        self.synchronous = SYNCHRONOUS[durability]
        self.background_checkpoints = durability == "normal"
        self._wal_limit = WAL_LIMIT_PAGES if self.background_checkpoints else FOREGROUND_WAL_LIMIT_PAGES
        self._local = threading.local()
        # _lock guards _connections (thread -> its connection) and _closed.
        self._lock = threading.Lock()
        self._connections: dict[threading.Thread, sqlite3.Connection] = {}
        self._closed = False
        # _write_lock serialises this process's write transactions and guards _commits. An
        # RLock, for its owner check: a write releases it in a `finally` if it holds it
        # (Ctrl-C landing just after it was taken, before the `try`, left it held for ever,
        # and every later write failed as a database locked past its busy timeout).
        self._write_lock = threading.RLock()
        self._commits = 0
        self._fork_closes = 0
        # Every call into SQLite on these connections (reads, writes from BEGIN to COMMIT
        # or ROLLBACK, opening and closing one, checkpoints) passes through _gate, which a
        # fork closes and waits at: see sqlite_gate and `_before_fork` (sqlite_lifetime).
        self._gate = ForkGate()
        # _fork_lock serialises this process's forks and `close` on these connections: held
        # from `_before_fork` to `_after_fork_in_parent` (whether each fork took it: in
        # _forking), and around close's closes, so that no fork runs while another
        # thread's fork or close still closes a connection (sqlite_lifetime). Reentrant: a
        # signal handler may fork inside either.
        self._fork_lock = threading.RLock()
        self._forking: PerForkStack[bool] = PerForkStack()
        self._pid = os.getpid()  # the process whose connections these are
        self._checkpoints = Checkpointer(path, self._gate, self.get, self._wal_limit, self._write_lock,
                                         busy_timeout)
        _OPEN.add(self)
        on_fork(self, before="_before_fork", after_in_parent="_after_fork_in_parent")

    def get(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use)."""
        conn: Optional[sqlite3.Connection] = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        self._gate.enter()  # (see `_before_fork`)
        try:
            return self._first_connection()
        finally:
            self._gate.leave()

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A `BEGIN IMMEDIATE` transaction: committed on success, rolled back on error."""
        self._gate.enter()  # the whole of it, body included (see `_before_fork`)
        try:
            self._refuse_nested_write()
            conn: Optional[sqlite3.Connection] = None
            try:
                deadline = self._take_write_lock()
                conn = self.get()
                while True:
                    try:
                        self._until_free(deadline, conn.execute, "BEGIN IMMEDIATE")
                        break
                    except ReopenedByFork as reopened:
                        conn, deadline = self.get(), reopened.deadline
                self._local.rolled_back = False  # (see `committed_after_interrupt`)
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException as exc:
                    if conn.in_transaction:
                        self._local.rolled_back = True
                        conn.execute("ROLLBACK")
                    if is_not_utf8(exc):
                        self._read_tolerantly(conn)
                        raise TextNotUtf8(self.path, str(exc)) from None
                    if isinstance(exc, sqlite3.Error):
                        raise translate(exc, self.path) from None
                    raise
                self._committed()
            except BaseException:
                # Begun, and interrupted before the body (Ctrl-C, say). Not if a fork closed it
                # as it waited between tries (no transaction on it): read, it raised
                # `ProgrammingError` in place of the interrupt.
                if conn is not None and _in_transaction(conn):
                    self._local.rolled_back = True
                    conn.execute("ROLLBACK")
                raise
            finally:
                self._release_write_lock()
        finally:
            self._gate.leave()

    def committed_after_interrupt(self, conn: sqlite3.Connection) -> bool:
        """After an interrupt (Ctrl-C) escaped a `write()` on this thread whose body had
        run to its end on `conn`: whether its COMMIT ran (the interrupt landed after it).
        Not if it was rolled back, nor if it is still open (the interrupt came before the
        COMMIT, outside `write()`: the transaction ends as its generator is closed)."""
        try:
            return not conn.in_transaction and getattr(self._local, "rolled_back", None) is False
        except sqlite3.ProgrammingError:  # closed meanwhile by a fork (see `_close_for_fork`): unknown
            return False

    def transaction(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """`op(connection)` inside `write()`: its value, once committed. If it read stored
        text that is not UTF-8 (`TextNotUtf8`), it runs once more, in a transaction of its
        own, on the connection that now reads such text tolerantly: the job rows holding it
        then fail alone, as corrupt, where every statement reading one failed."""
        try:
            with self.write() as conn:
                return op(conn)
        except TextNotUtf8 as error:  # `write()` made the connection read tolerantly
            self._warn_once(error)
            with self.write() as conn:
                return op(conn)

    def _read_tolerantly(self, conn: sqlite3.Connection) -> None:
        """Make `conn`, and every connection opened from now on, read text that is not
        UTF-8 tolerantly."""
        self._tolerant = True
        conn.text_factory = tolerant_text

    def _warn_once(self, error: TextNotUtf8) -> None:
        if not self._warned:
            self._warned = True
            logger.warning("%s: reading text tolerantly from now on; a job whose row holds such text"
                           " fails as CorruptJob", error)

    def write_one(self, query: str, params: Sequence[Any]) -> sqlite3.Cursor:
        """One statement committed on its own (SQLite's autocommit). Its effect is that
        of `write()` around it in one call instead of three, and every call gives up
        the GIL and must win it back, which costs most when other threads are busy.
        A constraint violation raises `sqlite3.IntegrityError` for the caller to name."""
        gate = self._gate
        gate.enter()  # (see `_before_fork`)
        try:
            self._refuse_nested_write()
            try:
                deadline = self._take_write_lock()
                conn = self.get()
                while True:
                    try:
                        cursor: sqlite3.Cursor = self._until_free(deadline, conn.execute, query, params)
                        break
                    except ReopenedByFork as reopened:
                        conn, deadline = self.get(), reopened.deadline
                self._committed()
            finally:
                self._release_write_lock()
        finally:
            gate.leave()
        return cursor

    def _take_write_lock(self) -> Optional[float]:
        """Take _write_lock, waiting at most `busy_timeout` (else raise as a busy database
        does), and return when this call's wait for the database ends: None if the lock
        was free (the wait starts at the first busy answer, as the call starts now).

        One writer per process at a time: threads queue on a Python lock instead of
        SQLite's busy handler, which sleeps in growing steps and wrecks throughput. A
        thread queued behind one that waits for another process's lock waits only what is
        left of its own `busy_timeout` after that: not a full one more per thread ahead."""
        if self._write_lock.acquire(False):
            return None
        deadline = real_monotonic() + self.busy_timeout
        if not self._write_lock.acquire(timeout=self.busy_timeout):
            raise locked_error(self.path)
        return deadline

    def _refuse_nested_write(self) -> None:
        """A write begun inside another on this thread (its transaction open) would wait
        for itself: raise at once, before it takes the write lock."""
        if holds(self._write_lock):
            raise RepositoryError(f"SQLite at {self.path!r}: a write was begun inside another write on"
                                  " the same thread")

    def held_here(self) -> bool:
        """Whether the calling thread holds the write lock (inside a write)."""
        return holds(self._write_lock)

    def _release_write_lock(self) -> None:
        """Release _write_lock if this thread took it (see `_refuse_nested_write`: it then
        holds it once), wherever between its call and its `try` an interrupt landed."""
        if holds(self._write_lock):
            self._write_lock.release()

    def _committed(self) -> None:
        """Count a commit (under _write_lock); every CHECKPOINT_EVERY, wake the checkpointer
        (with durability "full", every SIZE_CHECK_EVERY, if the WAL is overgrown)."""
        self._commits += 1
        if self.background_checkpoints:
            if self._commits >= CHECKPOINT_EVERY:
                self._commits = 0
                self._checkpoints.want()
        elif self._commits >= SIZE_CHECK_EVERY:
            self._commits = 0
            if self._checkpoints.overgrown():
                self._checkpoints.want(overgrown=True)

    def read(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Every row of one query on this thread's connection."""
        return self.reading(lambda conn: conn.execute(query, params).fetchall())

    def reading(self, read: Callable[[sqlite3.Connection], T]) -> T:
        """`read(connection)` on this thread's connection, outside any write transaction,
        tried again as `read` is while another process holds a lock it needs, and once more
        if it read stored text that is not UTF-8 (see `transaction`)."""
        gate = self._gate
        gate.enter()  # (see `_before_fork`)
        try:
            deadline: Optional[float] = None
            while True:
                conn = self.get()
                try:
                    try:
                        return self._until_free(deadline, read, conn)
                    except TextNotUtf8 as error:
                        self._read_tolerantly(conn)
                        self._warn_once(error)
                        return self._until_free(deadline, read, conn)
                except ReopenedByFork as reopened:
                    deadline = reopened.deadline
        finally:
            gate.leave()

    def _until_free(self, deadline: Optional[float], attempt: Callable[..., T], *args: Any,
                    fork_closes: bool = True) -> T:
        """`attempt(*args)`, tried again while another process holds the lock it needs,
        until `deadline` (`real_monotonic()` time; None: `busy_timeout` seconds after the
        first busy answer); then (or on any other error) a `RepositoryError`.

        SQLite's own busy handler sleeps 1, 2, 5, 10, 15, 20, 25... ms between tries: a
        process waiting on another's half-millisecond transaction would sleep most of the
        time. Here the pause starts at 20 µs and doubles to at most CONTENDED_PAUSE (with
        jitter, so waiting processes do not retry in step). A lock held past LONG_LOCK is
        no contention but an outage (another program's long transaction): the pause then
        grows to OUTAGE_PAUSE, not a thousand tries a second for the whole busy timeout.

        Between tries the thread is out of the fork gate; a fork then closes its connection
        with the others, and this raises `ReopenedByFork` for the caller to make its call
        again on a new one (unless not `fork_closes`: a connection not yet handed out)."""
        pause, longest, waited_from = 0.00002, CONTENDED_PAUSE, None
        while True:
            try:
                return attempt(*args)
            except sqlite3.OperationalError as exc:
                text = str(exc)
                if is_not_utf8(exc):  # first: the text it quotes may hold "locked"
                    raise TextNotUtf8(self.path, text) from None
                if "locked" not in text and "busy" not in text:
                    raise translate(exc, self.path) from None
                now = real_monotonic()
                if deadline is None:
                    deadline = now + self.busy_timeout
                if now >= deadline:
                    raise translate(exc, self.path) from None
                if waited_from is None:
                    waited_from = now
                elif now - waited_from >= LONG_LOCK:
                    longest = OUTAGE_PAUSE
                # No call into SQLite while it sleeps: a fork need not wait for another
                # process (unless this thread is inside twice, in a callback, say).
                closes = self._fork_closes
                stepped_out = self._gate.step_out()
                try:
                    real_sleep(min(pause * (0.5 + random.random()), deadline - now))
                finally:
                    if stepped_out:
                        self._gate.step_in()
                if fork_closes and self._fork_closes != closes:
                    raise ReopenedByFork(deadline)
                pause = min(pause * 2, longest)
            except sqlite3.IntegrityError:
                raise  # a constraint the caller's statement broke: the caller names it
            except sqlite3.Error as exc:
                raise translate(exc, self.path) from None
