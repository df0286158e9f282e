"""This process's connections to one SQLite file: one per thread, one writer at a time.
Their background checkpoints of the write-ahead log are sqlite_checkpoint's.

Knows nothing about jobs: `SQLiteRepository` runs its SQL through `write()`,
`transaction()` and `read()`. A connection reads text with sqlite3's own decoder until it
meets stored text that is not UTF-8, then tolerantly (see sqlite_rows.tolerant_text).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import random
import sqlite3
import threading
import urllib.parse
import weakref
from typing import Any, Callable, Iterator, Optional, Sequence, TypeVar

from ..clock import real_monotonic, real_sleep
from ..errors import RepositoryError
from ..forks import on_fork
from .sqlite_checkpoint import CHECKPOINT_EVERY, FOREGROUND_WAL_LIMIT_PAGES, WAL_LIMIT_PAGES, Checkpointer
from .sqlite_gate import ForkGate
from .sqlite_rows import TextNotUtf8, is_not_utf8, tolerant_text, translate

logger = logging.getLogger("jobcore.sqlite")

SYNCHRONOUS = {"normal": "NORMAL", "full": "FULL"}

T = TypeVar("T")


# Connections a forked child inherited from its parent. The child never uses them (SQLite
# forbids using a connection across fork: its locks are per process) and never closes
# them (closing one may make SQLite believe the file's last connection went, and
# checkpoint or remove the WAL under the parent): kept here so no garbage collection
# closes them either.
_INHERITED: list[sqlite3.Connection] = []
# Seconds `close` waits for the calls under way on the connections it closes.
CLOSE_WAIT = 5.0
# Seconds: a wait for another process's lock longer than this is an outage, not
# contention (a write transaction here lasts about a millisecond); tries then come
# every OUTAGE_PAUSE seconds (with jitter) instead of every millisecond at most.
LONG_LOCK = 0.1
OUTAGE_PAUSE = 0.01


class _ThreadEnd:
    """Kept in a thread's local storage beside its connection: freed as the thread ends."""

    __slots__ = ("__weakref__",)


def _thread_ended(connections: "weakref.ref[Connections]", thread: threading.Thread,
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

# Every `Connections` of this process not yet closed, for `_close_at_exit`.
_OPEN: "weakref.WeakSet[Connections]" = weakref.WeakSet()


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
atexit.register(_close_at_exit)


def file_uri(path: str, mode: str, paths: Any = os.path) -> str:
    """An SQLite URI naming the file at `path` (made absolute by `paths`, os.path or
    ntpath; any character URIs reserve quoted), opened in `mode` ("rw": the file must
    exist, SQLite never creates it). What is quoted is the bytes the file system names
    the file by (`os.fsencode`): a name that is not UTF-8 (a Latin-1 one, which
    `os.listdir` and the command line give with lone surrogates, 'caf\\udce9.db') reaches
    SQLite as those bytes, where the str itself cannot be quoted (UnicodeEncodeError)."""
    absolute = paths.abspath(path)
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


class Connections:
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
        # _write_lock serialises this process's write transactions and guards _commits.
        self._write_lock = threading.Lock()
        self._commits = 0
        # Every call into SQLite on these connections (reads, writes from BEGIN to COMMIT
        # or ROLLBACK, opening and closing one, checkpoints) passes through _gate, which a
        # fork closes and waits at: see sqlite_gate and `_before_fork`.
        self._gate = ForkGate()
        self._pid = os.getpid()  # the process whose connections these are
        self._checkpoints = Checkpointer(path, self._gate, self.get)
        _OPEN.add(self)
        on_fork(self, before="_before_fork", after_in_parent="_after_fork_in_parent")

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
        meanwhile (no fork waits for another process); a call may still last past
        `busy_timeout` (a write stuck on a slow disk), and the forking thread may be
        inside one itself (a signal handler forks): then the fork goes on, logged, and
        the child may find the database locked, or hang on its first connection."""
        if not self._gate.before_fork(max(self.busy_timeout, 1.0)):
            logger.warning("forking while a call into SQLite on %s is under way: the child may hang"
                           " on its first connection, or find the database locked", self.path)

    def _after_fork_in_parent(self) -> None:
        """The fork is done: calls into SQLite go on (see `_before_fork`)."""
        self._gate.after_fork_in_parent()

    def forked(self) -> None:
        """In a forked child (where no other thread runs yet): forget the parent's
        connections, locks and checkpointer; this process opens connections of its own."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._gate.forked()
        _INHERITED.extend(self._connections.values())
        self._connections = {}
        self._local = threading.local()  # (its finalizers do nothing in this process: `_thread_ended`)
        self._commits = 0
        self._checkpoints.forked()

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
        with self._lock:
            if self._connections.get(thread) is not conn:
                return
            del self._connections[thread]
        self._gate.enter()  # (see `_before_fork`; never waits in the forking thread)
        try:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        finally:
            self._gate.leave()

    def _open(self) -> sqlite3.Connection:
        """A new connection, set up: WAL, this repository's durability, no busy handler."""
        may_create = self._may_create
        # timeout=0: a busy database is retried by _until_free, not by SQLite's busy
        # handler (see there).
        try:
            if may_create:
                conn = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=False)
            else:
                conn = sqlite3.connect(self._uri, timeout=0, uri=True, isolation_level=None,
                                       check_same_thread=False)
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
            self._until_free(None, self._set_up, conn)
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
        if str(mode).lower() == "memory":  # an in-memory database ("file::memory:"): never WAL
            raise RepositoryError(
                f"SQLite at {self.path!r}: an in-memory SQLite database cannot be used (it has no"
                " write-ahead log, and each connection would see a database of its own); give a"
                " file path, or \":memory:\" for jobcore's MemoryRepository")
        if str(mode).lower() != "wal":  # another process held the file: try again
            raise sqlite3.OperationalError(f"database is locked (the journal mode stayed {mode!r})")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        conn.execute("PRAGMA foreign_keys = OFF")
        conn.execute(f"PRAGMA wal_autocheckpoint = {self._wal_limit}")

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A `BEGIN IMMEDIATE` transaction: committed on success, rolled back on error."""
        self._gate.enter()  # the whole of it, body included (see `_before_fork`)
        try:
            conn = self.get()
            deadline = self._take_write_lock()
            try:
                self._until_free(deadline, conn.execute, "BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException as exc:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    if is_not_utf8(exc):
                        self._read_tolerantly(conn)
                        raise TextNotUtf8(self.path, str(exc)) from None
                    if isinstance(exc, sqlite3.Error):
                        raise translate(exc, self.path) from None
                    raise
                self._committed()
            except BaseException:
                if conn.in_transaction:  # begun, and interrupted before the body (Ctrl-C, say)
                    conn.execute("ROLLBACK")
                raise
            finally:
                self._write_lock.release()
        finally:
            self._gate.leave()

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
            conn = self.get()
            deadline = self._take_write_lock()
            try:
                cursor: sqlite3.Cursor = self._until_free(deadline, conn.execute, query, params)
                self._committed()
            finally:
                self._write_lock.release()
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

    def _committed(self) -> None:
        """Count a commit (under _write_lock); every CHECKPOINT_EVERY, wake the checkpointer."""
        self._commits += 1
        if self._commits >= CHECKPOINT_EVERY and self.background_checkpoints:
            self._commits = 0
            self._checkpoints.want()

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
            conn = self.get()
            try:
                return self._until_free(None, read, conn)
            except TextNotUtf8 as error:
                self._read_tolerantly(conn)
                self._warn_once(error)
                return self._until_free(None, read, conn)
        finally:
            gate.leave()

    def _until_free(self, deadline: Optional[float], attempt: Callable[..., T], *args: Any) -> T:
        """`attempt(*args)`, tried again while another process holds the lock it needs,
        until `deadline` (`real_monotonic()` time; None: `busy_timeout` seconds after the
        first busy answer); then (or on any other error) a `RepositoryError`.

        SQLite's own busy handler sleeps 1, 2, 5, 10, 15, 20, 25... ms between tries: a
        process waiting on another's half-millisecond transaction would sleep most of the
        time. Here the pause starts at 20 µs and doubles to at most 1 ms (with jitter, so
        waiting processes do not retry in step). A lock held past LONG_LOCK is no
        contention but an outage (another program's long transaction): the pause then
        grows to OUTAGE_PAUSE, not a thousand tries a second for the whole busy timeout."""
        pause, longest, waited_from = 0.00002, 0.001, None
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
                stepped_out = self._gate.step_out()
                try:
                    real_sleep(min(pause * (0.5 + random.random()), deadline - now))
                finally:
                    if stepped_out:
                        self._gate.step_in()
                pause = min(pause * 2, longest)
            except sqlite3.IntegrityError:
                raise  # a constraint the caller's statement broke: the caller names it
            except sqlite3.Error as exc:
                raise translate(exc, self.path) from None

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
        self._local = threading.local()
