"""`Checkpointer`: copies one SQLite file's write-ahead log back into the database on a
thread of its own, when asked and once the asking stops.

Opens no connection and counts no commits itself: `Connections` (sqlite_conn), which
owns it, counts them and asks every CHECKPOINT_EVERY, and gives it the checkpoint
thread's connection and the fork gate every call into SQLite passes.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from typing import Callable, Optional

from ..errors import RepositoryError
from .sqlite_gate import ForkGate

logger = logging.getLogger("jobcore.sqlite")

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


class Checkpointer:
    """The background checkpoints of the file at `path`: `want()` wakes the checkpoint
    thread (starting it if none runs) for a PASSIVE checkpoint; IDLE_TRUNCATE_AFTER
    seconds after the last, with no call since, it runs a TRUNCATE one, and once that
    emptied the WAL the thread ends (the next `want()` starts another). `close()` ends it.

    Ending when idle frees what the thread holds: its connection, and through the
    `connection` it was given, the repository's connections. A thread waiting for ever
    kept every repository that had committed CHECKPOINT_EVERY times alive until the
    process exited, with a thread and about eight file descriptors each, though its
    manager was stopped and dropped (a program making a manager per task or per test).

    `connection()` gives the calling thread's connection (opened on first use); each
    checkpoint runs inside `gate`, the fork gate of the connections it is given."""

    def __init__(self, path: str, gate: ForkGate, connection: Callable[[], sqlite3.Connection]) -> None:
        self._path = path
        self._gate = gate
        self._connection = connection
        # _lock guards _thread and _closed: no thread starts once closed, so `close` joins
        # every thread that started. `want` sets _wanted under it, and the thread ends
        # (setting _thread to None) only under it, seeing _wanted clear: a call is never
        # left to a thread that ends without serving it.
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._closed = False
        self._wanted = threading.Event()  # set by `want` (and `close`), cleared by the thread

    @property
    def thread(self) -> Optional[threading.Thread]:
        """The checkpoint thread running (None before the first `want`, and once it
        ended idle)."""
        return self._thread

    def forked(self) -> None:
        """In a forked child: the parent's checkpoint thread is not here (the next `want`
        starts one), and its lock may have been held at the fork."""
        self._lock = threading.Lock()
        self._thread = None
        self._wanted = threading.Event()

    def want(self) -> None:
        """Wake the checkpoint thread (starting it if none runs) for a PASSIVE checkpoint."""
        with self._lock:
            if self._closed:
                return
            if self._thread is None or not self._thread.is_alive():  # also after a fork
                thread = threading.Thread(target=self._loop, daemon=True, name="jobcore-sqlite-checkpoint")
                try:
                    thread.start()
                except RuntimeError as exc:
                    # Python 3.12 refuses new threads while the interpreter exits, and any
                    # version when threads run out. Called after a commit: raising would
                    # fail a write that was made. SQLite checkpoints by itself past
                    # WAL_LIMIT_PAGES, and the last connection to close checkpoints too.
                    logger.debug("no background checkpoint of %s: %s", self._path, exc)
                    return
                self._thread = thread
            self._wanted.set()

    def _loop(self) -> None:
        quiet_for: Optional[float] = None  # how long to wait for a call before emptying the WAL
        while True:
            wanted = self._wanted.wait(quiet_for)
            self._wanted.clear()
            if self._closed:
                return
            query = _CHECKPOINT_PASSIVE if wanted else _CHECKPOINT_TRUNCATE
            try:
                self._gate.enter()  # (see Connections._before_fork)
                try:
                    conn = self._connection()
                    busy = conn.execute(query).fetchone()[0]
                finally:
                    self._gate.leave()
            except (sqlite3.Error, RepositoryError) as exc:  # the next commit's checkpoint may do
                logger.debug("background checkpoint of %s failed (%s): %s", self._path, query, exc)
                busy = 1
            if wanted or busy:  # commits came (or the WAL could not be emptied): empty it once they stop
                quiet_for = IDLE_TRUNCATE_AFTER
                continue
            with self._lock:  # emptied, and quiet: end, unless a call came meanwhile
                if not self._wanted.is_set():
                    self._thread = None  # (this one: `want` starts none while it lives)
                    return
            quiet_for = None

    def close(self) -> None:
        """End the checkpoint thread, waiting for a checkpoint under way (up to 5 s); later
        `want` calls do nothing."""
        with self._lock:
            self._closed = True
            thread = self._thread
        self._wanted.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(5.0)
