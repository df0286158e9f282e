"""`ConnectionLifetime`: the life of `Connections`' per-thread SQLite connections, from
opening and setting one up to closing it (as its thread ends, at `close`, at interpreter
exit), and across a fork. It runs no transaction and no job's SQL, and waits out no busy
database on its own: those are sqlite_conn's.

`Connections` (sqlite_conn) is made of it, and makes every lock and attribute used
here in its `__init__`, where what each lock guards is said.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sqlite3
import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar

from ..errors import RepositoryError
from .sqlite_checkpoint import Checkpointer
from ..forks import PerForkStack
from .sqlite_gate import ForkGate
from .sqlite_rows import tolerant_text, translate

logger = logging.getLogger("jobcore.sqlite")

T = TypeVar("T")

# Connections a forked child inherited from its parent. The child never uses them (SQLite
# forbids using a connection across fork: its locks are per process) and never closes
# them (closing one may make SQLite believe the file's last connection went, and
# checkpoint or remove the WAL under the parent): kept here so no garbage collection
# closes them either.
_INHERITED: list[sqlite3.Connection] = []
# Seconds `close` waits for the calls under way on the connections it closes.
CLOSE_WAIT = 5.0


class _ThreadEnd:
    """Kept in a thread's local storage beside its connection: freed as the thread ends."""

    __slots__ = ("__weakref__",)


def _thread_ended(connections: "weakref.ref[ConnectionLifetime]", thread: threading.Thread,
                  conn: sqlite3.Connection, pid: int) -> None:
    # Not in a forked child (`pid` opened `conn`): there the parent's threads' local storage
    # is dropped inside os.fork(), before any after-fork hook has replaced the locks a
    # parent thread may have held as it forked (`_forget` takes one), and the connection
    # is one the child must leave alone (see _INHERITED).
    if os.getpid() != pid:
        return
    owner = connections()
    if owner is not None:
        owner._forget(thread, conn)
        return
    # The repository was dropped without `close()` (its local storage went with it): no
    # one else can use `conn`. Closed here, not left to the collector, which freed it
    # only at a later pass (it refers to itself through its statement cache) and warned
    # of it as unclosed.
    with contextlib.suppress(sqlite3.Error):
        conn.close()

# Every `Connections` of this process not yet closed, for `_close_at_exit`.
_OPEN: "weakref.WeakSet[ConnectionLifetime]" = weakref.WeakSet()


def _close_at_exit() -> None:
    """At interpreter exit, close the connections of repositories nobody closed (a producer
    script that enqueued and ended, a `with JobManager(...)` block): SQLite checkpoints the
    write-ahead log into the database file as a process's last connection to it closes,
    and removes `-wal` and `-shm` when no other process has the file open. Otherwise
    recent commits would stay in `-wal` only, and a copy of the database file alone
    would lack them."""
    for connections in list(_OPEN):
        connections.close_unless_in_use()


# Registered at import, so it runs after the handlers registered later (atexit runs the
# last registered first): the default manager's graceful stop among them (`api`).
# sqlite_conn imports this module, so importing sqlite_conn registers it (polling imports
# sqlite_conn first for that, to register its own hook after this one).
atexit.register(_close_at_exit)


def _close_all(connections: list[sqlite3.Connection]) -> None:
    """Close every connection of `connections`, all of them even if an interrupt (Ctrl-C)
    lands in one close: it is raised after the last."""
    interrupted: Optional[BaseException] = None
    for conn in connections:
        try:
            conn.close()
        except sqlite3.Error:
            pass
        except BaseException as exc:  # (a signal handler's): the rest are closed first
            interrupted = interrupted or exc
    if interrupted is not None:
        raise interrupted


class ConnectionLifetime:
    """The opening, closing and forking half of `Connections`, which sets the attributes
    below in its `__init__` (and says there what its locks guard: `_lock` guards
    `_connections` and `_closed`; `_write_lock` serialises this process's write
    transactions and guards `_commits`)."""

    path: str
    busy_timeout: float
    synchronous: str
    _check: Optional[Callable[[sqlite3.Connection], None]]
    _uri: str
    _create_uri: str
    _may_create: bool
    _checked: bool
    _tolerant: bool
    _wal_limit: int
    _local: threading.local
    _lock: threading.Lock
    _connections: dict[threading.Thread, sqlite3.Connection]
    _closed: bool
    _write_lock: threading.RLock
    _commits: int
    _gate: ForkGate
    _fork_lock: threading.RLock
    _forking: PerForkStack[bool]
    _pid: int
    _checkpoints: Checkpointer
    # How many times a fork closed this process's connections (`_close_for_fork`), under
    # _lock: a thread that waited between tries meanwhile finds its own closed, and makes
    # its call again on a new one (`Connections._until_free`, `ReopenedByFork`).
    _fork_closes: int

    if TYPE_CHECKING:  # Connections' (declared here for the type checker only)
        def _until_free(self, deadline: Optional[float], attempt: Callable[..., T], *args: Any,
                        fork_closes: bool = True) -> T: ...

    def _before_fork(self) -> None:
        """Just before this process forks: wait for the calls into SQLite under way on its
        connections (reads, writes, a connection opening or closing, a checkpoint), if
        any, to end, and start no other until it has forked.

        SQLite guards its own process-wide state with mutexes (see sqlite_gate): one a
        thread of the parent held at the fork stays locked in the child, whose first
        connection then waits on it for ever (measured: 1 child in 5 forked from a
        process whose threads poll).

        SQLite keeps the locks a process holds in that process's memory, and a forked
        child inherits that bookkeeping with its parent's connections, which it never
        closes (see _INHERITED). Had one of them been inside a write transaction at the
        fork, SQLite in the child would count the write lock as held for ever by a
        connection of its own, and every write of the child would find the database
        locked, for good (measured: about 1 child in 6 forked from a busy manager).

        The wait is bounded: a call of this process lasts well under a second, and a
        thread waiting between tries for another process's lock is outside the gate
        meanwhile (no fork waits for another process): its connection, between tries,
        is in no statement and no transaction, and is closed with the others; the thread
        makes its call again on a new one (`ReopenedByFork`). Left open, the child
        inherited SQLite's record of its locks, with the loss of commits described in
        `_close_for_fork`, and errors reading "database disk image is malformed" (a
        preloaded app whose threads waited for its workers' writes: 7 runs in 12). A call
        may still last past `busy_timeout` (a write stuck on a slow disk), and the forking
        thread may be inside one itself (a signal handler forks): then the fork goes on,
        logged, and the child may find the database locked, or hang on its first
        connection."""
        wait = max(self.busy_timeout, 1.0)
        held = self._fork_lock.acquire(timeout=wait)  # (another thread's fork or close first)
        self._forking.push(held)
        if not held:
            logger.warning("forking while another thread's fork or close of SQLite on %s still runs:"
                           " the child may lose its commits when this process closes its connections",
                           self.path)
        if not self._gate.before_fork(wait):
            logger.warning("forking while a call into SQLite on %s is under way: the child may hang"
                           " on its first connection, find the database locked, or lose its commits"
                           " when this process closes that connection", self.path)
        elif self._gate.inside_here():
            logger.warning("forking from inside a call into SQLite on %s: the child may lose its"
                           " commits when this process closes that call's connection", self.path)
        else:
            self._close_for_fork()

    def _close_for_fork(self) -> None:
        """Before a fork, with the gate closed and no call under way: close this process's
        connections; each thread opens a new one at its next call.

        SQLite's record of the file locks a process holds on a database (one a file, shared
        by all its connections) lives in process memory; the locks are the kernel's, and a
        child does not inherit them. A child that inherited the record of an open
        connection believed its own new connections held the shared lock on `-shm` that
        every live connection holds, and never took it. When the parent's last connection
        then closed (at exit, or at `close()`), SQLite found no other holder, took the log
        for its own, and removed `-wal` and `-shm` while the child (and any other process)
        wrote to them: their later commits were lost, and the file left was corrupt
        (measured: 4 runs in 4 of a preloaded app whose parent exited while its child and
        another process enqueued). With no connection open at the fork, the record is gone
        before it, and the child's connections take their locks as any process's do."""
        # (Bounded: a signal handler may fork while its thread holds _lock, in `close`.)
        if not self._lock.acquire(timeout=1.0):
            logger.warning("forking while this thread holds the connections of SQLite on %s: the child"
                           " may lose its commits when this process closes them", self.path)
            return
        try:
            connections = list(self._connections.values())
            self._connections = {}
            self._fork_closes += 1
        finally:
            self._lock.release()
        # First, so that no thread keeps a connection closed below, whatever interrupts the
        # closes (Ctrl-C there left threads failing every call on a closed connection).
        # (The local storage dropped frees each thread's `_ThreadEnd`: its `_thread_ended`
        # finds the connection gone from _connections and does nothing.)
        self._local = threading.local()
        self._gate.enter()  # (as every call into SQLite; the forking thread never waits there)
        try:
            _close_all(connections)
        finally:
            self._gate.leave()

    def _after_fork_in_parent(self) -> None:
        """The fork is done: calls into SQLite go on (see `_before_fork`)."""
        try:
            self._gate.after_fork_in_parent()
        finally:  # (Ctrl-C in the gate's reopening left _fork_lock held for good)
            if self._forking.pop():
                self._fork_lock.release()

    def forked(self) -> None:
        """In a forked child (where no other thread runs yet): forget the parent's
        connections, locks and checkpointer; this process opens connections of its own."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._write_lock = threading.RLock()
        self._gate.forked()
        self._fork_lock = threading.RLock()
        self._forking = PerForkStack()
        _INHERITED.extend(self._connections.values())
        self._connections = {}
        self._local = threading.local()  # (its finalizers do nothing in this process: `_thread_ended`)
        self._commits = 0
        self._checkpoints.forked(self._write_lock)

    def _first_connection(self) -> sqlite3.Connection:
        """This thread's connection, opened (inside the fork gate), and the connections of
        threads that ended closed."""
        with self._lock:
            if self._closed:
                raise RepositoryError(f"SQLite at {self.path!r}: the repository is closed")
            # Close the connections of threads that ended. Not the main thread's: once
            # the interpreter begins to exit it reads as ended while it still runs the
            # atexit handlers (a manager's stop among them), its connection in hand.
            main = threading.main_thread()
            for thread in [t for t in self._connections if not t.is_alive() and t is not main]:
                self._connections.pop(thread).close()
        conn = self._open()
        with self._lock:
            if self._closed:  # closed while this one opened (at interpreter exit, say)
                conn.close()
                raise RepositoryError(f"SQLite at {self.path!r}: the repository is closed")
            thread = threading.current_thread()
            self._connections[thread] = conn
        self._local.conn = conn
        # Closed when this thread's local storage goes, as the thread ends: a thread not
        # started by `threading` (by C code, or `_thread`) reads as alive for ever, so the
        # sweep above never closed its connection (a file descriptor each).
        self._local.owner = owner = _ThreadEnd()
        weakref.finalize(owner, _thread_ended, weakref.ref(self), thread, conn, self._pid).atexit = False
        return conn

    def _forget(self, thread: threading.Thread, conn: sqlite3.Connection) -> None:
        """Close `thread`'s connection `conn` (the thread ended) unless it was replaced."""
        # Inside the gate from before it is taken out of _connections: a fork meanwhile
        # (which waits for the gate) found it gone and forked while it was still open, and
        # the child took no lock on `-shm` (see `_close_for_fork`).
        self._gate.enter()  # (see `_before_fork`; never waits in the forking thread)
        try:
            with self._lock:
                if self._connections.get(thread) is not conn:
                    return
                del self._connections[thread]
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        finally:
            self._gate.leave()

    def _open(self) -> sqlite3.Connection:
        """A new connection, set up: WAL, this repository's durability, no busy handler."""
        may_create = self._may_create
        # timeout=0: a busy database is retried by _until_free, not by SQLite's busy
        # handler (see there).
        if _names_memory(self.path):
            raise _in_memory_refused(self.path)
        try:
            # Both by URI, naming the file of `path`'s bytes: the path itself, read by an
            # SQLite that takes URIs for names, made a first connection to "file:jobs.db"
            # create jobs.db, and every other connection then found "file:jobs.db" gone.
            conn = sqlite3.connect(self._create_uri if may_create else self._uri, timeout=0, uri=True,
                                   isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            if not may_create and not os.path.exists(self.path):
                raise RepositoryError(
                    f"SQLite at {self.path!r}: the file is gone (removed or moved while in use);"
                    f" jobcore does not create an empty database in its place ({exc})") from None
            raise translate(exc, self.path) from None
        try:
            # The set-up too: `journal_mode = WAL` on a new file that another process is
            # setting up answers "database is locked" at once, whatever the busy timeout
            # (measured: 1 process in 800, 8 opening a new file at once).
            # (Not yet among _connections, it is not closed at a fork meanwhile.)
            self._until_free(None, self._set_up, conn, fork_closes=False)
        except BaseException:
            conn.close()
            raise
        self._may_create = False
        if self._tolerant:
            conn.text_factory = tolerant_text
        return conn

    def _set_up(self, conn: sqlite3.Connection) -> None:
        if not self._checked and self._check is not None:
            self._check(conn)  # before the journal mode: a refused file is left as it was
            self._checked = True
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() == "memory":  # (not expected: such names are refused before)
            raise _in_memory_refused(self.path)
        if str(mode).lower() != "wal":  # another process held the file: try again
            raise sqlite3.OperationalError(f"database is locked (the journal mode stayed {mode!r})")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        conn.execute("PRAGMA foreign_keys = OFF")
        conn.execute(f"PRAGMA wal_autocheckpoint = {self._wal_limit}")
        # A WAL started over after it grew past its limit (see sqlite_checkpoint.OVERGROWN)
        # is cut down to it (bytes: a frame is a page and a 24-byte header).
        page_size = self._checkpoints.page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        conn.execute(f"PRAGMA journal_size_limit = {self._wal_limit * (page_size + 24)}")

    def close_unless_in_use(self) -> None:
        """`close()`, unless a thread other than this one and the checkpointer is alive
        with a connection (a manager left running at interpreter exit, say: its daemon
        threads may be inside a statement) or a write is under way."""
        if not self._write_lock.acquire(timeout=0.5):
            return
        try:
            with self._lock:
                # (Read outside the checkpointer's lock: only a commit, counted under
                # _write_lock, which this holds, starts a checkpoint thread.)
                current, checkpointer = threading.current_thread(), self._checkpoints.thread
                if any(thread.is_alive() and thread is not current and thread is not checkpointer
                       for thread in self._connections):
                    return
            self.close()
        finally:
            self._write_lock.release()

    def close(self) -> None:
        """Close every connection and stop the checkpointer; later use raises."""
        _OPEN.discard(self)
        # The checkpointer first: closed, it starts no thread, so none outlives the join,
        # and the one it joins has ended before its connection is closed below.
        self._checkpoints.close()
        # No fork of another thread while these close (see `_fork_lock`): one that took
        # none to close forked while they were open, or inside SQLite's close.
        # (As long as a fork may hold it: it waits up to the busy timeout for a call.)
        held = self._fork_lock.acquire(timeout=max(self.busy_timeout, 1.0) + CLOSE_WAIT)
        if not held:
            logger.warning("SQLite at %r: closing while a fork of another thread still waits; its"
                           " child may lose its commits", self.path)
        try:
            self._close_connections()
        finally:
            if held:
                self._fork_lock.release()
        self._local = threading.local()

    def _close_connections(self) -> None:
        """`close`'s closing of every connection (under `_fork_lock`)."""
        with self._lock:
            self._closed = True
            connections = list(self._connections.items())
            self._connections.clear()
        # As before a fork: no call starts meanwhile, and the calls under way end first. A
        # connection closed under another thread's statement (a dashboard request still
        # reading as its manager closed) crashed the process (a segfault in SQLite).
        # (After the join: the checkpointer may wait here.) One still in a call after
        # CLOSE_WAIT (a write waiting out its busy timeout) is left open, not closed under it.
        self._gate.before_fork(CLOSE_WAIT)
        try:
            busy = self._gate.others_inside()
            for thread, conn in connections:
                if thread.ident in busy:
                    logger.warning("SQLite at %r: a connection still in use by thread %s is left open"
                                   " at close", self.path, thread.name)
                    continue
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
        finally:
            self._gate.after_fork_in_parent()


def _names_memory(path: str) -> bool:
    """True for SQLite's names of an in-memory database (":memory:", a "file:" URI naming
    ":memory:" or with `mode=memory` among its query's parameters): refused rather than
    opened as a file of that name, whether or not one exists."""
    if path == ":memory:" or path.startswith("file::memory:"):
        return True
    if not path.startswith("file:") or "?" not in path:
        return False
    query = path.partition("?")[2].partition("#")[0]
    return "mode=memory" in query.split("&")


def _in_memory_refused(path: str) -> RepositoryError:
    return RepositoryError(
        f"SQLite at {path!r}: an in-memory SQLite database cannot be used (it has no"
        " write-ahead log, and each connection would see a database of its own); give a"
        " file path, or \":memory:\" for jobcore's MemoryRepository")
