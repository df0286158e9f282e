"""`Checkpointer`: copies one SQLite file's write-ahead log back into the database on a
thread of its own, when asked and once the asking stops.

Opens no connection and counts no commits itself: `Connections` (sqlite_conn), which
owns it, counts them and asks every CHECKPOINT_EVERY, and gives it the checkpoint
thread's connection and the fork gate every call into SQLite passes.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import threading
import time
from typing import Callable, Optional

from ..clock import real_monotonic
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
# But SQLite starts the WAL over only at a moment when it is wholly copied back and no
# reader uses it: one reader after another, each slow (`get_stats` on a million rows, a
# dashboard filtering on a tag), kept one reading at every moment, and the WAL grew by
# every commit without end (a gigabyte in 40 s beside a drain). Once it holds OVERGROWN
# times its limit, the thread has it started over: RESTART checkpoints, tried every
# RETRY_PAUSE for up to OVERGROWN_WAIT (and half the busy timeout) while this process's
# writers wait, until the readers of older snapshots are done (once it is wholly copied
# back, new readers read the database file, and do not hold it up). SQLite's own busy
# handler waits in steps of 25-100 ms, and a reader beginning again at once kept its place
# in the log for ever; a TRUNCATE would wait for the new readers too. The next commit
# starts the WAL over, and cuts the file down to the limit (`journal_size_limit`).
# Other processes' writers would keep it from finishing: so every process tries at the
# same moments, whole multiples of the wall clock's OVERGROWN_SPACING seconds, each
# holding its own writers then. After a try that fails (a reader holding a snapshot for
# ever, say) the spacing doubles, up to OVERGROWN_SPACING_MAX (multiples of a power of
# two: a process whose spacing is shorter tries at the other's moments too); writers
# wait that half second seldom.
OVERGROWN = 2
OVERGROWN_WAIT = 0.5
RETRY_PAUSE = 0.0002
OVERGROWN_SPACING = 1.0
OVERGROWN_SPACING_MAX = 256.0
MIN_RESTART_WAIT = 0.01  # seconds: a shorter wait (a tiny busy timeout) makes no try
LOGGED_SPACING = 16.0  # a failed try is logged as a warning once the spacing reaches this
# With durability "full" (no background checkpoints) the committing thread looks at the
# WAL's size every this many commits, and calls for that checkpoint if it is overgrown.
SIZE_CHECK_EVERY = 1_024
_CHECKPOINT_PASSIVE = "PRAGMA wal_checkpoint(PASSIVE)"
_CHECKPOINT_RESTART = "PRAGMA wal_checkpoint(RESTART)"
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
    checkpoint runs inside `gate`, the fork gate of the connections it is given.
    `wal_limit`: SQLite's own checkpoint threshold (pages), of which a WAL OVERGROWN times
    as long is started over however long readers keep it in use (see OVERGROWN)."""

    def __init__(self, path: str, gate: ForkGate, connection: Callable[[], sqlite3.Connection],
                 wal_limit: int, write_lock: threading.RLock, busy_timeout: float) -> None:
        self._path = path
        self._gate = gate
        self._connection = connection
        # The lock this process's writers queue on (`Connections`'): held while an
        # overgrown WAL is started over, so that they wait behind it rather than take SQLite's
        # write lock back between its tries (SQLite's busy handler sleeps 25-100 ms
        # between them, and a writer committing back to back never left it a turn).
        self._write_lock = write_lock
        # How long this process's writers may wait behind a restart: half their busy
        # timeout at most (a write waiting longer fails as a database locked).
        self._restart_wait = min(OVERGROWN_WAIT, busy_timeout / 2)
        self._overgrown_frames = OVERGROWN * wal_limit
        self.page_size = 4096  # the database's (set as a connection opens)
        # Set by `want(overgrown=True)`, read and cleared by the thread (a bool: a lost
        # race only moves the emptying to the next call).
        self._overgrown = False
        # The wall-clock time of the next try to start an overgrown WAL over (None: none
        # planned), and the spacing of the tries (see OVERGROWN_SPACING); the thread's alone.
        self._restart_at: Optional[float] = None
        self._overgrown_spacing = OVERGROWN_SPACING
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

    def forked(self, write_lock: threading.RLock) -> None:
        """In a forked child: the parent's checkpoint thread is not here (the next `want`
        starts one), and its lock may have been held at the fork; `write_lock` is the
        child's writers' own."""
        self._lock = threading.Lock()
        self._write_lock = write_lock
        self._thread = None
        self._wanted = threading.Event()

    def overgrown(self) -> bool:
        """True if the WAL file holds OVERGROWN times its limit or more (a stat of the
        file: with durability "full", and when a checkpoint could not tell)."""
        try:
            size = os.stat(self._path + "-wal").st_size
        except OSError:
            return False
        return size >= self._overgrown_frames * (self.page_size + 24)  # (a frame's header: 24 bytes)

    def want(self, overgrown: bool = False) -> None:
        """Wake the checkpoint thread (starting it if none runs) for a PASSIVE checkpoint,
        or (`overgrown`) to empty an overgrown WAL (see OVERGROWN)."""
        with self._lock:
            if self._closed:
                return
            if overgrown:
                self._overgrown = True
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
            timeout = quiet_for
            if self._restart_at is not None:  # (woken for it, at its moment)
                if self._restart_at - time.time() > self._overgrown_spacing:  # the clock stepped back
                    self._restart_at = None
                left = max(0.0, self._plan_restart() - time.time())
                timeout = left if timeout is None else min(timeout, left)
            wanted = self._wanted.wait(timeout)
            self._wanted.clear()
            if self._closed:
                return
            if self._overgrown:
                self._overgrown = False
                self._plan_restart()
            if self._restart_at is not None and time.time() >= self._restart_at:
                busy = self._restart_overgrown()
            elif wanted:
                busy, frames = self._checkpoint(_CHECKPOINT_PASSIVE)
                # (-1 frames: another connection's checkpoint was under way, a writer's own
                # past SQLite's threshold, as after every commit while the WAL is overgrown)
                if frames >= self._overgrown_frames or (frames < 0 and self.overgrown()):
                    self._plan_restart()
            elif self._restart_at is not None and quiet_for is None:
                continue  # (a wait for the restart's moment that ended a little early)
            else:
                busy, _ = self._checkpoint(_CHECKPOINT_TRUNCATE)
                if not busy:  # emptied: no restart is owed
                    self._restart_at, self._overgrown_spacing = None, OVERGROWN_SPACING
            busy = busy or self._restart_at is not None
            if wanted or busy:  # commits came (or the WAL could not be emptied): empty it once they stop
                quiet_for = IDLE_TRUNCATE_AFTER
                continue
            with self._lock:  # emptied, and quiet: end, unless a call came meanwhile
                if not self._wanted.is_set():
                    self._thread = None  # (this one: `want` starts none while it lives)
                    return
            quiet_for = None

    def _checkpoint(self, query: str, wait: float = 0.0) -> tuple[int, int]:
        """Run the checkpoint `query` (1 if it could not finish, else 0; the frames in the
        WAL, -1 if not known). With `wait` (seconds), this process's writers wait behind it
        meanwhile, and it is tried again every RETRY_PAUSE until it finishes, or the WAL is
        no longer overgrown (another process started it over), or that time passes (see
        `_restart_overgrown`)."""
        busy, frames = 1, -1
        try:
            self._gate.enter()  # (see Connections._before_fork; before the write lock, as writers)
            try:
                deadline = real_monotonic() + wait
                if wait and not self._write_lock.acquire(timeout=wait):
                    return 1, -1
                try:
                    conn = self._connection()
                    while True:
                        busy, frames, _ = conn.execute(query).fetchone()
                        if wait and busy and 0 <= frames < self._overgrown_frames:
                            # Started over by another process (whose writers write again,
                            # and its readers read that): done. Tried on, this one held its
                            # writers in vain, then tried alone, out of step with the others.
                            return 0, int(frames)
                        if not busy or real_monotonic() >= deadline:
                            break
                        threading.Event().wait(RETRY_PAUSE)
                finally:
                    if wait:
                        self._write_lock.release()
            finally:
                self._gate.leave()
        except (sqlite3.Error, RepositoryError) as exc:  # the next commit's checkpoint may do
            logger.debug("background checkpoint of %s failed (%s): %s", self._path, query, exc)
            return 1, -1
        return int(busy), int(frames)

    def _plan_restart(self) -> float:
        """Plan a try to start the overgrown WAL over at the next whole multiple of the
        wall clock's spacing (see OVERGROWN), unless one is planned; when it is planned."""
        if self._restart_at is None:
            spacing = self._overgrown_spacing
            self._restart_at = (math.floor(time.time() / spacing) + 1) * spacing
        return self._restart_at

    def _restart_overgrown(self) -> int:
        """Try to start an overgrown WAL over (see OVERGROWN); 1 if it failed (the next try
        is planned)."""
        self._restart_at = None
        if self._restart_wait < MIN_RESTART_WAIT or not self.overgrown():
            # (a busy timeout too short to wait in; or started over and cut down already,
            # by another process)
            self._overgrown_spacing = OVERGROWN_SPACING
            return 0
        busy, frames = self._checkpoint(_CHECKPOINT_RESTART, wait=self._restart_wait)
        if not busy:
            self._overgrown_spacing = OVERGROWN_SPACING
            return 0
        spacing = self._overgrown_spacing = min(self._overgrown_spacing * 2, OVERGROWN_SPACING_MAX)
        self._plan_restart()
        (logger.warning if spacing >= LOGGED_SPACING else logger.debug)(
            "the write-ahead log of %s holds %s pages, and readers of older snapshots, or other"
            " processes' writers, kept it from being started over for %.1f s (this process's"
            " writers waited); trying again in %.0f s at most", self._path,
            frames if frames >= 0 else "many", self._restart_wait, spacing)
        return 1

    def close(self) -> None:
        """End the checkpoint thread, waiting for a checkpoint under way (up to 5 s); later
        `want` calls do nothing."""
        with self._lock:
            self._closed = True
            thread = self._thread
        self._wanted.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(5.0)
