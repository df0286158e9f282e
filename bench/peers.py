"""The peer engines as a user would run them: Huey (SqliteHuey with an in-process
consumer of 4 worker threads), persist-queue (SQLiteAckQueue with 4 consumer threads) and
litequeue (LiteQueue with pop/done from 4 threads).

These packages live only in the benchmark's own venv (`bench/.venv`); an import error
here makes that peer "n/a" in the report. Each peer keeps its defaults unless a comment
says why not.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from typing import Any, Optional, Sequence

from harness import WORKERS, Engine, Tracker


def _synchronous(conn: Any) -> str:
    level = conn.execute("PRAGMA synchronous").fetchone()[0]
    return {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(level, str(level))


def _version(dist: str) -> str:
    from importlib import metadata
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


class Huey(Engine):
    """SqliteHuey with its defaults (results on, fsync left to SQLite's default, which is
    synchronous=FULL), run by `huey.consumer.Consumer` with 4 thread workers in this
    process. A job is complete when Huey emits SIGNAL_COMPLETE: after the task ran and
    its result (none for a task returning None) and revoke-key cleanup are written."""

    key = "huey"
    priorities = True

    def open(self, workdir: str, tracker: Tracker) -> None:
        from huey import SqliteHuey
        from huey.signals import SIGNAL_COMPLETE
        self.tracker = tracker
        self.huey = SqliteHuey("bench", filename=os.path.join(workdir, "huey.db"))
        task = tracker.task

        def noop(x: int) -> None:
            task(x)

        self.task = self.huey.task()(noop)

        @self.huey.signal(SIGNAL_COMPLETE)
        def completed(signal: str, task: Any, *args: Any) -> None:
            tracker.done()

        self.consumer: Any = None

    def enqueue(self, x: int, priority: int = 0) -> None:
        if priority:
            self.huey.enqueue(self.task.s(x, priority=priority))
        else:
            self.task(x)

    def start(self) -> None:
        self.consumer = self.huey.create_consumer(workers=WORKERS, worker_type="thread", periodic=False)
        self.consumer.start()

    def wait_done(self, timeout: float) -> None:
        if not self.tracker.all_done.wait(timeout):
            raise TimeoutError(f"not every job completed within {timeout:.0f}s")

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.stop(graceful=True)
        self.huey.storage.close()

    def settings(self) -> dict[str, Any]:
        return {"version": _version("huey"), "synchronous": _synchronous(self.huey.storage.conn)}


class PersistQueue(Engine):
    """`persistqueue.SQLiteAckQueue(multithreading=True)`, its defaults otherwise; 4
    threads loop get -> run -> ack. Complete when `ack` has committed."""

    key = "persist-queue"
    thread_prefix = "pq"

    def open(self, workdir: str, tracker: Tracker) -> None:
        from persistqueue import SQLiteAckQueue
        from persistqueue.exceptions import Empty
        self._empty = Empty
        self.tracker = tracker
        self.queue = SQLiteAckQueue(os.path.join(workdir, "pq"), multithreading=True)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def enqueue(self, x: int, priority: int = 0) -> None:
        self.queue.put(x)

    def _work(self) -> None:
        task, done, queue = self.tracker.task, self.tracker.done, self.queue
        while not self._stop.is_set():
            try:
                # A bounded wait so the thread can stop; the queue wakes it on put.
                item = queue.get(block=True, timeout=0.2, raw=True)
            except self._empty:
                continue
            task(item["data"])
            queue.ack(id=item["pqid"])
            done()


    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5.0)
        self.queue.close()

    def settings(self) -> dict[str, Any]:
        return {"version": _version("persist-queue"), "synchronous": _synchronous(self.queue._putter)}


class LiteQueue(Engine):
    """`litequeue.LiteQueue` on one file, one instance (connection) per thread, as its
    connection is not for sharing between threads. It has no blocking pop, so an idle
    worker sleeps 5 ms between polls. Complete when `done` has committed."""

    key = "litequeue"
    thread_prefix = "litequeue"
    bulk = True                 # put() inside LiteQueue.transaction()
    deep_drain_cap = 300        # every pop sorts the ready rows: a deep drain takes minutes
    POLL = 0.005

    def open(self, workdir: str, tracker: Tracker) -> None:
        from litequeue import LiteQueue as _LiteQueue
        self._cls = _LiteQueue
        self.path = os.path.join(workdir, "litequeue.db")
        self.tracker = tracker
        self.queue = _LiteQueue(self.path)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def enqueue(self, x: int, priority: int = 0) -> None:
        self.queue.put(str(x))

    def enqueue_bulk(self, xs: Sequence[int], priorities: Optional[Sequence[int]] = None) -> None:
        with self.queue.transaction():
            for x in xs:
                self.queue.put(str(x))

    def _work(self) -> None:
        queue = self._cls(self.path)
        task, done = self.tracker.task, self.tracker.done
        try:
            while not self._stop.is_set():
                message = self._unlocked(queue.pop)
                if message is None:
                    time.sleep(self.POLL)
                    continue
                task(int(message.data))
                self._unlocked(lambda: queue.done(message.message_id))
                done()
        finally:
            queue.close()

    def _unlocked(self, call: Any) -> Any:
        """`call()`, tried again after a pause while the database is locked: litequeue's
        connections keep sqlite3's 5 s busy timeout, which four threads contending on a
        deep queue exceed. Uncaught, the error ended the worker thread unseen (3 of 4 in
        each run), and the drain ran on one worker, or never counted a job popped."""
        while True:
            try:
                return call()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                time.sleep(self.POLL)


    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30.0)
        self.queue.close()

    def settings(self) -> dict[str, Any]:
        return {"version": _version("litequeue"), "synchronous": _synchronous(self.queue.conn)}
