"""This process's connections to one SQLite file: one per thread, one writer at a time, and
a background thread that checkpoints the write-ahead log.

Knows nothing about jobs: `SQLiteRepository` runs its SQL through `write()` and `read()`.
"""

from __future__ import annotations

import contextlib
import logging
import random
import sqlite3
import threading
from typing import Any, Callable, Iterator, Optional, Sequence, TypeVar

from ..clock import real_monotonic, real_sleep
from ..errors import RepositoryError
from .sqlite_rows import translate

logger = logging.getLogger("jobcore.sqlite")

SYNCHRONOUS = {"normal": "NORMAL", "full": "FULL"}

T = TypeVar("T")

# A checkpoint copies the WAL back into the database file and syncs both: milliseconds of
# work that SQLite would otherwise do inside whichever commit crossed its threshold (1,000
# pages by default), adding about as much again to every commit on average. Here a thread
# of the repository's own runs it after every CHECKPOINT_EVERY commits instead, while
# writers go on (a PASSIVE checkpoint never blocks them). SQLite's own threshold stays as
# a safety net, raised to WAL_LIMIT_PAGES, in case that thread falls behind.
# With durability "full" every commit waits for the disk anyway, and a checkpoint's own
# syncs running beside the commits' slowed them down (measured): there SQLite checkpoints
# in the foreground, at its default threshold.
CHECKPOINT_EVERY = 64
WAL_LIMIT_PAGES = 20_000
FOREGROUND_WAL_LIMIT_PAGES = 1_000
# Under steady writes the WAL is seldom wholly copied back at the moment a writer starts,
# so SQLite seldom starts it over, and the file grows towards WAL_LIMIT_PAGES (about 80 MB)
# and keeps that size. Once the background checkpoints stop being called for (fewer than
# CHECKPOINT_EVERY commits in this many seconds), the thread empties it: a TRUNCATE
# checkpoint, which gives up at once (to be tried after the next quiet spell) while any
# connection, in any process, writes or reads an older snapshot.
IDLE_TRUNCATE_AFTER = 2.0
_CHECKPOINT_PASSIVE = "PRAGMA wal_checkpoint(PASSIVE)"
_CHECKPOINT_TRUNCATE = "PRAGMA wal_checkpoint(TRUNCATE)"


# Connections a forked child inherited from its parent. The child never uses them (SQLite
# forbids using a connection across fork: its locks are per process) and never closes
# them (closing one may make SQLite believe the file's last connection went, and
# checkpoint or remove the WAL under the parent): kept here so no garbage collection
# closes them either.
_INHERITED: list[sqlite3.Connection] = []


class Connections:
    """Per-thread connections to the file at `path`, write transactions one at a time
    (`write`), and WAL checkpoints on a thread of their own.

    `busy_timeout` (seconds) is how long a write waits for another process's lock."""

    def __init__(self, path: str, *, busy_timeout: float, durability: str) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self.synchronous = SYNCHRONOUS[durability]
        self.background_checkpoints = durability == "normal"
        self._wal_limit = WAL_LIMIT_PAGES if self.background_checkpoints else FOREGROUND_WAL_LIMIT_PAGES
        self._local = threading.local()
        # _lock guards _connections (thread -> its connection), _closed and _checkpointer.
        self._lock = threading.Lock()
        self._connections: dict[threading.Thread, sqlite3.Connection] = {}
        self._closed = False
        self._checkpointer: Optional[threading.Thread] = None
        # _write_lock serialises this process's write transactions and guards _commits.
        self._write_lock = threading.Lock()
        self._commits = 0
        self._checkpoint_wanted = threading.Event()

    def forked(self) -> None:
        """In a forked child (where no other thread runs yet): forget the parent's
        connections, locks and checkpointer; this process opens connections of its own."""
        _INHERITED.extend(self._connections.values())
        self._connections = {}
        self._local = threading.local()
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._commits = 0
        self._checkpointer = None
        self._checkpoint_wanted = threading.Event()

    def get(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use)."""
        conn: Optional[sqlite3.Connection] = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        with self._lock:
            if self._closed:
                raise RepositoryError(f"SQLite at {self.path!r}: the repository is closed")
            # Close the connections of threads that ended. Not the main thread's: once
            # the interpreter begins to exit it reads as ended while it still runs the
            # atexit handlers (a manager's stop among them), its connection in hand.
            main = threading.main_thread()
            for thread in [t for t in self._connections if not t.is_alive() and t is not main]:
                self._connections.pop(thread).close()
        try:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            conn.execute("PRAGMA foreign_keys = OFF")
            conn.execute(f"PRAGMA wal_autocheckpoint = {self._wal_limit}")
            # From here on a busy database is retried by _until_free, not by SQLite's
            # busy handler (see there).
            conn.execute("PRAGMA busy_timeout = 0")
        except sqlite3.Error as exc:
            raise translate(exc, self.path) from None
        with self._lock:
            self._connections[threading.current_thread()] = conn
        self._local.conn = conn
        return conn

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A `BEGIN IMMEDIATE` transaction: committed on success, rolled back on error."""
        conn = self.get()
        # One writer per process at a time: threads queue on a fair Python lock instead of
        # SQLite's busy handler, which sleeps in growing steps and wrecks throughput.
        with self._write_lock:
            self._until_free(conn.execute, "BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise translate(exc, self.path) from None
                raise
            self._committed()

    def write_one(self, query: str, params: Sequence[Any]) -> sqlite3.Cursor:
        """One statement committed on its own (SQLite's autocommit). Its effect is that
        of `write()` around it in one call instead of three, and every call gives up
        the GIL and must win it back, which costs most when other threads are busy.
        A constraint violation raises `sqlite3.IntegrityError` for the caller to name."""
        conn = self.get()
        with self._write_lock:
            cursor = self._until_free(conn.execute, query, params)
            self._committed()
        return cursor

    def _committed(self) -> None:
        """Count a commit (under _write_lock); every CHECKPOINT_EVERY, wake the checkpointer."""
        self._commits += 1
        if self._commits >= CHECKPOINT_EVERY and self.background_checkpoints:
            self._commits = 0
            self._want_checkpoint()

    def read(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Every row of one query on this thread's connection."""
        return self.reading(lambda conn: conn.execute(query, params).fetchall())

    def reading(self, read: Callable[[sqlite3.Connection], T]) -> T:
        """`read(connection)` on this thread's connection, outside any write transaction,
        tried again as `read` is while another process holds a lock it needs."""
        conn = self.get()
        return self._until_free(lambda: read(conn))

    def _until_free(self, attempt: Callable[..., T], *args: Any) -> T:
        """`attempt(*args)`, tried again while another process holds the lock it needs, for
        up to `busy_timeout` seconds; then (or on any other error) a `RepositoryError`.

        SQLite's own busy handler sleeps 1, 2, 5, 10, 15, 20, 25... ms between tries: a
        process waiting on another's half-millisecond transaction would sleep most of the
        time. Here the pause starts at 20 µs and doubles to at most 1 ms (with jitter, so
        waiting processes do not retry in step)."""
        pause, deadline = 0.00002, None
        while True:
            try:
                return attempt(*args)
            except sqlite3.OperationalError as exc:
                text = str(exc)
                if "locked" not in text and "busy" not in text:
                    raise translate(exc, self.path) from None
                now = real_monotonic()
                if deadline is None:
                    deadline = now + self.busy_timeout
                if now >= deadline:
                    raise translate(exc, self.path) from None
                real_sleep(min(pause * (0.5 + random.random()), deadline - now))
                pause = min(pause * 2, 0.001)
            except sqlite3.IntegrityError:
                raise  # a constraint the caller's statement broke: the caller names it
            except sqlite3.Error as exc:
                raise translate(exc, self.path) from None

    # -- checkpoints ---------------------------------------------------------------------
    def _want_checkpoint(self) -> None:
        with self._lock:
            if self._closed:
                return
            if self._checkpointer is None or not self._checkpointer.is_alive():  # also after a fork
                self._checkpointer = threading.Thread(target=self._checkpoint_loop, daemon=True,
                                                      name="jobcore-sqlite-checkpoint")
                self._checkpointer.start()
        self._checkpoint_wanted.set()

    def _checkpoint_loop(self) -> None:
        quiet_for: Optional[float] = None  # how long to wait for a call before emptying the WAL
        while True:
            wanted = self._checkpoint_wanted.wait(quiet_for)
            self._checkpoint_wanted.clear()
            if self._closed:
                return
            query = _CHECKPOINT_PASSIVE if wanted else _CHECKPOINT_TRUNCATE
            try:
                busy = self.get().execute(query).fetchone()[0]
            except (sqlite3.Error, RepositoryError) as exc:  # the next commit's checkpoint may do
                logger.debug("background checkpoint of %s failed (%s): %s", self.path, query, exc)
                busy = 1
            # Commits came (or the WAL could not be emptied): empty it once they stop.
            quiet_for = IDLE_TRUNCATE_AFTER if wanted or busy else None

    def close(self) -> None:
        """Close every connection and stop the checkpointer; later use raises."""
        with self._lock:
            self._closed = True
            checkpointer = self._checkpointer
        self._checkpoint_wanted.set()
        if checkpointer is not None and checkpointer is not threading.current_thread():
            checkpointer.join(5.0)
        with self._lock:
            connections = list(self._connections.values())
            self._connections.clear()
        for conn in connections:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._local = threading.local()
