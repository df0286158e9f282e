"""jobcore as the benchmark drives it, through its public API only, and the table of
every engine the benchmark knows (jobcore, peers, floors) with what each does per job.

Completion is what a user sees: `JobManager.wait` returns once the job's final state
is committed. The benchmark calls it only for the last job each worker thread started
(every earlier job of that thread settled before the thread took its next one), so the
waiting costs nothing per job.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Sequence

from harness import BATCH, WORKERS, Engine, Tracker


class Jobcore(Engine):
    """jobcore with a `SQLiteRepository` (durability "normal" or "full") or a
    `MemoryRepository`."""

    bulk = True
    priorities = True

    def __init__(self, durability: Optional[str]) -> None:
        self.durability = durability   # None: MemoryRepository
        self.key = "jobcore-memory" if durability is None else (
            "jobcore-sqlite" if durability == "normal" else f"jobcore-sqlite-{durability}")

    def open(self, workdir: str, tracker: Tracker) -> None:
        from jobcore import Job, JobManager, MemoryRepository, SQLiteRepository
        self._job = Job
        self.tracker = tracker
        if self.durability is None:
            repository: Any = MemoryRepository()
        else:
            repository = SQLiteRepository(os.path.join(workdir, "jobcore.db"), durability=self.durability)
        self.manager = JobManager(repository, max_workers=WORKERS)
        self.manager.register_function("noop", tracker.task)
        self.ids: list[str] = []

    def enqueue(self, x: int, priority: int = 0) -> None:
        self.ids.append(self.manager.enqueue(self._job(function_name="noop", args=(x,), priority=priority)))

    def enqueue_bulk(self, xs: Sequence[int], priorities: Optional[Sequence[int]] = None) -> None:
        levels = priorities or [0] * len(xs)
        jobs = [self._job(function_name="noop", args=(x,), priority=p) for x, p in zip(xs, levels)]
        self.ids.extend(self.manager.enqueue_many(jobs))

    def start(self) -> None:
        self.manager.start()

    def wait_done(self, timeout: float) -> None:
        if not self.tracker.all_started.wait(timeout):
            raise TimeoutError(f"not every job started within {timeout:.0f}s")
        for x in list(self.tracker.last_by_thread.values()):
            self.manager.wait(self.ids[x], timeout=timeout)

    def close(self) -> None:
        self.manager.close()

    def settings(self) -> dict[str, Any]:
        import jobcore
        return {"version": jobcore.__version__, "repository": "memory" if self.durability is None
                else f"sqlite durability={self.durability}"}


def _peer(name: str) -> Callable[[], Engine]:
    def build() -> Engine:
        import peers
        return getattr(peers, name)()
    return build


def _floor(name: str, *args: Any) -> Callable[[], Engine]:
    def build() -> Engine:
        import floors
        return getattr(floors, name)(*args)
    return build


# key -> (factory, group, label)
ENGINES: dict[str, tuple[Callable[[], Engine], str, str]] = {
    "jobcore-sqlite": (lambda: Jobcore("normal"), "jobcore", "jobcore SQLite (normal)"),
    "jobcore-sqlite-full": (lambda: Jobcore("full"), "jobcore", "jobcore SQLite (full)"),
    "jobcore-memory": (lambda: Jobcore(None), "jobcore", "jobcore memory"),
    "huey": (_peer("Huey"), "peer", "Huey (SqliteHuey)"),
    "persist-queue": (_peer("PersistQueue"), "peer", "persist-queue (SQLiteAckQueue)"),
    "litequeue": (_peer("LiteQueue"), "peer", "litequeue"),
    "raw-normal": (_floor("RawSQLite", "NORMAL", 1), "floor", "raw sqlite3, 1 txn/stmt, NORMAL"),
    "raw-full": (_floor("RawSQLite", "FULL", 1), "floor", "raw sqlite3, 1 txn/stmt, FULL"),
    "raw-batch": (_floor("RawSQLite", "NORMAL", BATCH), "floor", f"raw sqlite3, {BATCH}/txn, NORMAL"),
    "heap": (_floor("HeapFloor"), "floor", "stdlib heapq + Condition"),
}

# What each engine writes and does per job that the others may not: docs/performance.md
# prints this beside the table.
PER_JOB = {
    "jobcore-sqlite": "validates the Job; JSON-encodes args into a 37-column row with 9 partial"
                      " indexes; 3 write transactions (insert, claim with RETURNING the whole row,"
                      " complete); stores the result (NULL here); in-process heap of ids; WAL,"
                      " synchronous=NORMAL (no fsync per commit)",
    "jobcore-sqlite-full": "as jobcore SQLite, with synchronous=FULL: an fsync of the WAL on every"
                           " commit, 3 per job",
    "jobcore-memory": "validates the Job; copies a JobRecord into a dict under one lock; claims and"
                      " completes by compare-and-set; arguments kept as Python objects (no JSON)",
    "huey": "pickles the task; insert (1 commit); dequeue = select + delete in an exclusive"
            " transaction (1 commit); deletes the revoke key (1 statement); stores no result for"
            " None; one connection behind one lock for all threads; SQLite default synchronous"
            " (FULL: fsync per commit); idle workers poll (0.1 s, backing off x1.15 to 10 s)",
    "persist-queue": "pickles the item; insert (1 commit); get = select + status update (1"
                     " commit); ack = status update (1 commit); one connection pair behind a lock;"
                     " SQLite default synchronous (FULL); in-process Event wakes getters; no results",
    "litequeue": "stores a string; insert (autocommit); pop = UPDATE ... WHERE rowid = (SELECT ..."
                 " ORDER BY message_id LIMIT 1) in an IMMEDIATE transaction, which sorts the ready"
                 " rows; done = update (autocommit); synchronous=NORMAL; no blocking pop (the"
                 " benchmark's workers poll every 5 ms); no priorities, no results",
    "raw-normal": "3 statements per job (INSERT, UPDATE-claim with RETURNING, UPDATE-complete),"
                  " each its own transaction; WAL, synchronous=NORMAL; workers woken in-process",
    "raw-full": "as raw NORMAL with synchronous=FULL (fsync per commit)",
    "raw-batch": f"the same 3 statements, {BATCH} jobs per transaction each",
    "heap": "heapq.heappush/heappop under one threading.Condition; nothing stored",
}
