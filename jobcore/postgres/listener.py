"""`ChangeListener`: LISTEN/NOTIFY turned into the repository's cheap `change_token`, and
into a prompt wake-up of the managers that watch for other processes' work.

One dedicated connection LISTENs on `jobcore_jobs`; notifications naming our schema are
counted, and the count is the token: a manager's housekeeper reads it every
`discovery_interval` (without blocking: whatever arrived is read then). A started manager
also `watch`es: a thread of the listener's then waits on that connection's socket and
calls each watcher as soon as another process's notification arrives, so that a job
stored by another machine starts within milliseconds rather than at the next look (about
half a `discovery_interval` later on average). Notifications sent by this process's own
pool wake no one: its managers hear of their own work without a round trip. It does not
say what changed; managers then look.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import threading
from typing import Callable, Optional

import psycopg

from ..clock import SYSTEM_CLOCK
from ..errors import RepositoryError
from ..forks import on_fork_in_child
from .pool import ConnectionPool
from .schema import CHANNEL

logger = logging.getLogger("jobcore.postgres")

# Seconds between attempts to re-open a lost listening connection: the first after
# FIRST_RECONNECT_DELAY, each next one twice as long after the last, up to RECONNECT_DELAY
# (a server restarting comes back in about a second: work stored as it did was heard up
# to a whole RECONNECT_DELAY late).
FIRST_RECONNECT_DELAY = 0.05
RECONNECT_DELAY = 1.0
# Seconds the watching thread waits, after reading only this process's own notifications,
# before it reads again. This process's enqueues notify too (other processes must hear
# of them), and each woke the thread: 10,000 jobs enqueued in a stream while the workers
# ran woke it 17,188 times (150 ms of CPU, turns at the GIL with the enqueuing thread);
# paced, 2,498 (30 ms). Another process's job waits at most this much longer to be heard
# while this process notifies (while its own workers are busy, mostly).
OWN_PAUSE = 0.005


class ChangeListener:
    """Counts NOTIFYs on `jobcore_jobs` whose payload is `payload` (the schema name), and
    wakes the watchers (`watch`) when one comes from another process.

    The connection opens on the first `token()` or `watch`, so producers that never ask
    pay nothing. When it is lost, the count moves on (notifications may have been missed)
    and the watchers are woken; it is re-opened (at pauses from FIRST_RECONNECT_DELAY,
    doubling up to RECONNECT_DELAY, until a connection lasts), and the watchers are woken
    again once it is; meanwhile the token stays put and managers fall back to looking every
    `poll_interval`.

    The watching thread runs while there are watchers (one per started manager on this
    repository) and the listener is open; it ends when the last one leaves or at `close`,
    told through a socket pair of its own (it never waits on a connection that `close`
    is closing under it without that).
    """

    def __init__(self, pool: ConnectionPool, payload: str) -> None:
        self._pool = pool
        self._payload = payload.encode("utf-8")
        # _lock guards every attribute below; token() runs on any manager's housekeeper,
        # watch() and its undoing on a manager's start and stop, the drain on the thread.
        self._lock = threading.Lock()
        self._conn: Optional[psycopg.Connection] = None
        self._pid = os.getpid()
        self._count = 0
        self._retry_at = 0.0
        # The next pause after an attempt to open (doubling at each, up to RECONNECT_DELAY),
        # and when the open connection was made: the pause starts again from
        # FIRST_RECONNECT_DELAY only once a connection lasted RECONNECT_DELAY (one the
        # server ends as soon as it is made, by a short idle_session_timeout or a proxy,
        # was made again every 50 ms, each time a warning and a look of every manager).
        self._retry_delay = FIRST_RECONNECT_DELAY
        self._opened_at = 0.0
        # The connection was lost, and the watchers not yet woken since it was made again
        # (by the watching thread, or by a `token()`).
        self._lost = False
        self._closed = False
        self._warned = False
        self._watchers: tuple[Callable[[], None], ...] = ()
        self._thread: Optional[threading.Thread] = None
        # The thread's socket pair: (what it waits on, what `_interrupt_locked` writes to).
        self._bell: Optional[tuple[socket.socket, socket.socket]] = None
        # A child forked while the watching thread (or a housekeeper) held _lock must not
        # wait for it for ever: it gets a lock of its own, and starts afresh.
        on_fork_in_child(self, "_forked")

    def token(self) -> int:
        """The number of relevant notifications received (plus one per reconnect).

        Never waits for a connection to be made while a watching thread runs: that thread
        makes it, holding the lock meanwhile (as long as a server that accepts no new
        connection keeps it waiting), and the count as it stands is answered. A
        housekeeper asking here at every look waited that long: its heartbeats stopped
        while its pool's connections worked, and another manager took back a job it was
        running (a postmaster stopped 10 s, 4 runs in 4)."""
        if not self._lock.acquire(blocking=False):
            if self._thread is not None:
                return self._count  # (read without the lock: the next look reads it again)
            self._lock.acquire()
        try:
            self._check_fork_locked()
            if self._closed:
                return self._count
            if self._conn is None and (self._thread is not None or not self._open_locked()):
                return self._count  # (the watching thread makes it again)
            self._drain_locked()
            return self._count
        finally:
            self._lock.release()

    def watch(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call `wake()` (on the listener's thread) whenever a notification for this schema
        arrives from another process, until the function returned is called; the LISTEN
        connection is made before it returns (if it can be). `wake` must be quick and must
        not raise (it is the housekeeper's `look_soon`)."""
        with self._lock:
            self._check_fork_locked()
            created = False
            try:
                if self._conn is None and not self._closed:
                    # LISTEN before returning: a manager's start watches before it reads the
                    # store, and what another process commits after that read must be heard
                    # (made on the thread, a job committed before it listened waited for the
                    # manager's first look, a discovery_interval on).
                    self._open_locked()
                if self._thread is None and not self._closed:
                    created = True
                    self._bell = socket.socketpair()
                    self._thread = threading.Thread(target=self._listen, args=(self._bell[0],), daemon=True,
                                                    name="jobcore-pg-listener")
                    self._thread.start()
            except BaseException:
                # (Ctrl-C in the connect or the thread's start: a start that raises leaves
                # nothing behind) The watcher is not added, and a thread made here, if it
                # runs at all, ends (a watcher added first stayed for ever, and so did the
                # thread and its connection, waking a manager long stopped).
                if created:
                    self._interrupt_locked()
                raise
            self._watchers = (*self._watchers, wake)  # (last: the thread waits for this lock)

        def unwatch() -> None:
            with self._lock:
                self._watchers = tuple(w for w in self._watchers if w is not wake)
                if not self._watchers:
                    self._interrupt_locked()  # the thread ends

        return unwatch

    def _forked(self) -> None:
        """In a forked child: a lock of its own (see `_check_fork_locked` for the rest)."""
        self._lock = threading.Lock()
        self._check_fork_locked()

    def _check_fork_locked(self) -> None:
        """In a forked child the socket and the thread are the parent's: leave them be,
        and start afresh (the count moves on: notifications may have been missed)."""
        if os.getpid() != self._pid:
            self._conn, self._pid = None, os.getpid()
            self._thread, self._bell, self._watchers = None, None, ()
            self._count += 1

    def _drain_locked(self) -> bool:
        """Read, without blocking, the notifications that arrived and count ours; True if
        one of them came from another process than this pool's. A lost connection is
        dropped (to be re-opened) and counts as a change."""
        assert self._conn is not None
        pgconn = self._conn.pgconn
        own = self._pool.backend_pids
        foreign = False
        try:
            pgconn.consume_input()  # reads what has arrived; never blocks
            while (notify := pgconn.notifies()) is not None:
                if notify.extra == self._payload:
                    self._count += 1
                    foreign = foreign or notify.be_pid not in own
        except psycopg.Error as exc:
            logger.warning("lost the LISTEN connection to %s, reconnecting: %s", self._pool.where, exc)
            self._lost_locked()
            return True
        return foreign

    def _listen(self, bell: socket.socket) -> None:
        """The watching thread: waits for the LISTEN connection's socket (or the bell) and
        wakes the watchers when another process's notification was read."""
        try:
            while True:
                with self._lock:
                    if self._closed or not self._watchers or self._thread is not threading.current_thread():
                        return
                    if self._conn is None:
                        self._open_locked()
                    if self._conn is None:
                        fd, wait = None, max(0.0, self._retry_at - SYSTEM_CLOCK.monotonic())
                    else:
                        fd, wait = self._conn.pgconn.socket, None
                    reopened, watchers = self._conn is not None and self._lost, self._watchers
                    if reopened:
                        self._lost = False
                if reopened:
                    # Whatever was committed while nobody listened is looked for now: left
                    # to the managers' next looks, a job stored as the server came back
                    # waited a discovery_interval (30 s for managers given that).
                    self._wake(watchers)
                readable = _wait_readable(bell, fd, wait)
                if readable is False:
                    continue  # the bell rang (or a pause ended): look again
                with self._lock:
                    if self._conn is None or self._closed or self._thread is not threading.current_thread():
                        continue
                    if readable is None:  # (not expected) the connection is made again, in a while
                        logger.warning("waiting on the LISTEN connection to %s failed; reconnecting",
                                       self._pool.where)
                        self._lost_locked()
                        heard = True
                    else:
                        heard = self._drain_locked()
                    watchers = self._watchers
                if not heard:
                    _wait_readable(bell, None, OWN_PAUSE)  # see OWN_PAUSE
                    continue
                self._wake(watchers)
        except Exception:  # (not expected) managers fall back to their periodic looks
            logger.exception("the thread listening for new jobs on %s failed; managers will look"
                             " every discovery_interval", self._pool.where)
        finally:
            with self._lock:
                if self._thread is threading.current_thread():
                    self._thread = None
                    self._bell = None
            bell.close()

    def _wake(self, watchers: tuple[Callable[[], None], ...]) -> None:
        """Wake `watchers` (on the watching thread, no lock held)."""
        for wake in watchers:
            try:
                wake()
            except Exception:  # (not expected) the others are woken all the same
                logger.exception("waking a manager for new jobs on %s failed", self._pool.where)

    def _interrupt_locked(self) -> None:
        """Ring the watching thread's bell: it looks at what it is to do (end, most often)."""
        if self._bell is not None:
            with contextlib.suppress(OSError):
                self._bell[1].send(b"x")
                self._bell[1].close()
            self._bell = None
            self._thread = None  # (the thread sees it is no longer the one, and ends)

    def _open_locked(self) -> bool:
        now = SYSTEM_CLOCK.monotonic()
        if now < self._retry_at:
            return False
        self._retry_at = now + min(self._retry_delay, RECONNECT_DELAY)
        self._retry_delay = min(2 * self._retry_delay, RECONNECT_DELAY)
        conn = None
        try:
            conn = self._pool.connect()
            if conn.info.server_version >= 140000:  # the setting is new in PostgreSQL 14
                # This session is idle by design: a server-wide idle_session_timeout (meant
                # for forgotten sessions) would end it every time, each time a warning and
                # a reconnection that makes every manager re-read the store.
                conn.execute("SET idle_session_timeout = 0")
            conn.execute(f"LISTEN {CHANNEL}")
        except (RepositoryError, psycopg.Error) as exc:
            if conn is not None:  # connected, then SET or LISTEN failed: not kept, so closed
                with contextlib.suppress(psycopg.Error):
                    conn.close()
            if not self._warned:
                logger.warning("cannot LISTEN for new jobs on %s (managers will poll): %s",
                               self._pool.where, exc)
                self._warned = True
            return False
        self._conn, self._warned, self._opened_at = conn, False, SYSTEM_CLOCK.monotonic()
        self._count += 1  # whatever was committed while nobody listened
        return True

    def _lost_locked(self) -> None:
        """The connection was lost: dropped, to be made again, and counted as a change
        (notifications may have been missed); the watchers are woken once it is."""
        if SYSTEM_CLOCK.monotonic() - self._opened_at >= RECONNECT_DELAY:
            self._retry_delay = FIRST_RECONNECT_DELAY
        self._drop_locked()
        self._count += 1
        self._lost = True

    def _drop_locked(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def close(self) -> None:
        """Stop listening and close the connection (in this process only); the watching
        thread ends."""
        with self._lock:
            self._closed = True
            if os.getpid() == self._pid:
                self._interrupt_locked()
                self._drop_locked()
            self._conn = None


def _wait_readable(bell: socket.socket, fd: Optional[int], seconds: Optional[float]) -> Optional[bool]:
    """Wait until `fd` (None: none) or `bell` can be read, or `seconds` (None: no limit)
    passed: True if `fd` can (or was closed, or failed: reading it tells), False if the
    bell rang or the time ran out, None if the wait itself failed. The bell's byte is left
    unread: a bell rings once, as its thread is to end."""
    try:
        if hasattr(select, "poll"):  # no FD_SETSIZE limit: a busy process may hold > 1024 fds
            poller = select.poll()
            poller.register(bell, select.POLLIN)
            if fd is not None:
                poller.register(fd, select.POLLIN)
            ready = {ready_fd for ready_fd, _ in poller.poll(None if seconds is None else seconds * 1000)}
        else:  # Windows: sockets only, which both are
            watched = [bell.fileno()] if fd is None else [bell.fileno(), fd]
            ready = set(select.select(watched, [], [], seconds)[0])
    except (OSError, ValueError):
        return None
    if bell.fileno() in ready:
        return False
    return fd is not None and fd in ready
