"""The floors: what the hardware and the standard library allow, with no engine around.

`RawSQLite` is raw `sqlite3` doing three statements per job (INSERT, UPDATE-claim with
RETURNING, UPDATE-complete) on a WAL file, each statement its own transaction, or (with
`batch` > 1) the same SQL `batch` jobs per transaction. `HeapFloor` is `heapq` under one
`threading.Condition`, nothing stored. Both wake their 4 worker threads in-process, as
an engine in one process can.
"""

from __future__ import annotations

import heapq
import itertools
import os
import sqlite3
import threading
from typing import Any, Optional, Sequence

from harness import Engine, Tracker

_SCHEMA = (
    "CREATE TABLE jobs (id INTEGER PRIMARY KEY, priority INTEGER NOT NULL,"
    " status INTEGER NOT NULL, payload TEXT NOT NULL)",
    "CREATE INDEX jobs_ready ON jobs (priority DESC, id) WHERE status = 0",
)
_INSERT = "INSERT INTO jobs (priority, status, payload) VALUES (?, 0, ?)"
_CLAIM = """
UPDATE jobs SET status = 1
WHERE id IN (SELECT id FROM jobs WHERE status = 0 ORDER BY priority DESC, id LIMIT ?)
RETURNING id, payload
"""
_COMPLETE = "UPDATE jobs SET status = 2 WHERE id = ?"


class RawSQLite(Engine):
    """The raw sqlite3 floor; `synchronous` is "NORMAL" or "FULL"."""

    bulk = True
    priorities = True
    thread_prefix = "raw"

    def __init__(self, synchronous: str, batch: int) -> None:
        self.synchronous = synchronous
        self.batch_size = batch
        self.key = f"raw-{synchronous.lower()}" if batch == 1 else "raw-batch"

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        return conn

    def open(self, workdir: str, tracker: Tracker) -> None:
        self.path = os.path.join(workdir, "raw.db")
        self.tracker = tracker
        self.conn = self._connect()
        for statement in _SCHEMA:
            self.conn.execute(statement)
        # _cond guards _pending (rows inserted and not yet claimed) and _stopping.
        self._cond = threading.Condition(threading.Lock())
        self._pending = 0
        self._stopping = False
        self._threads: list[threading.Thread] = []

    def _added(self, count: int) -> None:
        with self._cond:
            self._pending += count
            self._cond.notify(count)

    def enqueue(self, x: int, priority: int = 0) -> None:
        self.conn.execute(_INSERT, (priority, str(x)))
        self._added(1)

    def enqueue_bulk(self, xs: Sequence[int], priorities: Optional[Sequence[int]] = None) -> None:
        levels = priorities or [0] * len(xs)
        self.conn.execute("BEGIN")
        self.conn.executemany(_INSERT, zip(levels, map(str, xs)))
        self.conn.execute("COMMIT")
        self._added(len(xs))

    def _work(self) -> None:
        conn = self._connect()
        task, done, batch = self.tracker.task, self.tracker.done, self.batch_size
        try:
            while True:
                with self._cond:
                    while not self._pending and not self._stopping:
                        self._cond.wait()
                    if self._stopping:
                        return
                    take = min(self._pending, batch)
                    self._pending -= take
                rows = conn.execute(_CLAIM, (take,)).fetchall()   # fetchall: the statement ends, so it commits
                for _, payload in rows:
                    task(int(payload))
                if batch == 1:
                    for job_id, _ in rows:
                        conn.execute(_COMPLETE, (job_id,))
                else:
                    conn.execute("BEGIN")
                    conn.executemany(_COMPLETE, ((job_id,) for job_id, _ in rows))
                    conn.execute("COMMIT")
                for _ in rows:
                    done()
        finally:
            conn.close()


    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(30.0)
        self.conn.close()

    def settings(self) -> dict[str, Any]:
        return {"sqlite": sqlite3.sqlite_version, "synchronous": self.synchronous, "batch": self.batch_size}


class HeapFloor(Engine):
    """`heapq` + `threading.Condition` with 4 consumer threads: the in-memory floor."""

    key = "heap"
    thread_prefix = "heap"
    bulk = True
    priorities = True

    def open(self, workdir: str, tracker: Tracker) -> None:
        self.tracker = tracker
        # _cond guards _heap and _stopping.
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[int, int, int]] = []
        self._seq = itertools.count()
        self._stopping = False
        self._threads: list[threading.Thread] = []

    def enqueue(self, x: int, priority: int = 0) -> None:
        with self._cond:
            heapq.heappush(self._heap, (-priority, next(self._seq), x))
            self._cond.notify()

    def enqueue_bulk(self, xs: Sequence[int], priorities: Optional[Sequence[int]] = None) -> None:
        levels = priorities or [0] * len(xs)
        with self._cond:
            for x, priority in zip(xs, levels):
                heapq.heappush(self._heap, (-priority, next(self._seq), x))
            self._cond.notify(len(xs))

    def _work(self) -> None:
        task, done = self.tracker.task, self.tracker.done
        heap, cond = self._heap, self._cond
        while True:
            with cond:
                while not heap and not self._stopping:
                    cond.wait()
                if self._stopping:
                    return
                x = heapq.heappop(heap)[2]
            task(x)
            done()


    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(5.0)
