"""`ChangeListener`: LISTEN/NOTIFY turned into the repository's cheap `change_token`.

One dedicated connection LISTENs on `jobcore_jobs`; each call drains, without blocking,
whatever notifications arrived and counts those naming our schema. The count is the
token: it changes within one housekeeping tick of another process committing new work.
No thread of its own and no blocking wait: the manager's housekeeper already polls the
token every `discovery_interval`. It does not say what changed; managers then look.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import Optional

import psycopg

from ..clock import SYSTEM_CLOCK
from ..errors import RepositoryError
from .pool import ConnectionPool
from .schema import CHANNEL

logger = logging.getLogger("jobcore.postgres")

RECONNECT_DELAY = 1.0  # seconds between attempts to re-open a lost listening connection


class ChangeListener:
    """Counts NOTIFYs on `jobcore_jobs` whose payload is `payload` (the schema name).

    The connection opens on the first `token()`, so producers that never ask pay nothing.
    When it is lost, the count moves on (notifications may have been missed) and it is
    re-opened at most every `RECONNECT_DELAY` seconds; meanwhile the token stays put and
    managers fall back to looking every `poll_interval`.
    """

    def __init__(self, pool: ConnectionPool, payload: str) -> None:
        self._pool = pool
        self._payload = payload.encode("utf-8")
        # _lock guards every attribute below; token() runs on any manager's housekeeper.
        self._lock = threading.Lock()
        self._conn: Optional[psycopg.Connection] = None
        self._pid = os.getpid()
        self._count = 0
        self._retry_at = 0.0
        self._closed = False
        self._warned = False

    def token(self) -> int:
        """The number of relevant notifications received (plus one per reconnect)."""
        with self._lock:
            if os.getpid() != self._pid:  # forked: the socket is the parent's; leave it be
                self._conn, self._pid = None, os.getpid()
                self._count += 1
            if self._closed:
                return self._count
            if self._conn is None and not self._open_locked():
                return self._count
            assert self._conn is not None
            pgconn = self._conn.pgconn
            try:
                pgconn.consume_input()  # reads what has arrived; never blocks
                while (notify := pgconn.notifies()) is not None:
                    if notify.extra == self._payload:
                        self._count += 1
            except psycopg.Error as exc:
                logger.warning("lost the LISTEN connection to %s, reconnecting: %s", self._pool.where, exc)
                self._drop_locked()
                self._count += 1
            return self._count

    def _open_locked(self) -> bool:
        now = SYSTEM_CLOCK.monotonic()
        if now < self._retry_at:
            return False
        self._retry_at = now + RECONNECT_DELAY
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
        self._conn, self._warned = conn, False
        self._count += 1  # whatever was committed while nobody listened
        return True

    def _drop_locked(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def close(self) -> None:
        """Stop listening and close the connection (in this process only)."""
        with self._lock:
            self._closed = True
            if os.getpid() == self._pid:
                self._drop_locked()
            self._conn = None
