"""jobcore as the benchmark drives it, through its public API only, and the table of
every engine the benchmark knows (jobcore, peers, floors) with what each does per job.

Completion is what a user sees: `JobManager.wait` returns once the job's final state
is committed. The benchmark calls it only for the last job each worker thread started
(every earlier job of that thread settled before the thread took its next one), so the
waiting costs nothing per job.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Optional, Sequence

from harness import BATCH, WORKERS, Engine, Tracker

# The server the "jobcore-postgres" engine runs on (a libpq DSN); without it that engine is left out.
PG_DSN_ENV = "JOBCORE_BENCH_PG_DSN"


class Jobcore(Engine):
    """jobcore with a `SQLiteRepository` (durability "normal" or "full"), a
    `MemoryRepository`, or (durability "postgres") a `PostgresRepository` on the server
    `$JOBCORE_BENCH_PG_DSN` names, in a schema of its own dropped at `close`."""

    bulk = True
    priorities = True
    wait_each = False  # True: completion is seen by a `wait` on every id (harness.waited)
    poll_each = False  # True: by a `poll` of every id until it is done, no pause (harness.polled)

    def __init__(self, durability: Optional[str]) -> None:
        self.durability = durability   # None: MemoryRepository
        self.key = "jobcore-memory" if durability is None else "jobcore-postgres" if durability == "postgres" else (
            "jobcore-sqlite" if durability == "normal" else f"jobcore-sqlite-{durability}")
        self._drop: Optional[Callable[[], None]] = None

    def open(self, workdir: str, tracker: Tracker) -> None:
        from jobcore import Job, JobManager, MemoryRepository, SQLiteRepository
        self._job = Job
        self.tracker = tracker
        if self.durability is None:
            repository: Any = MemoryRepository()
        elif self.durability == "postgres":
            repository = self._postgres()
        else:
            repository = SQLiteRepository(os.path.join(workdir, "jobcore.db"), durability=self.durability)
        self.manager = JobManager(repository, max_workers=WORKERS)
        self.manager.register_function("noop", tracker.task)
        self.ids: list[str] = []
        self._kinds_registered = False

    def _postgres(self) -> Any:
        dsn = os.environ.get(PG_DSN_ENV)
        if not dsn:
            raise NotImplementedError(f"no PostgreSQL server: set ${PG_DSN_ENV}")
        import uuid
        import psycopg
        from jobcore.postgres import PostgresRepository
        schema = f"bench_{uuid.uuid4().hex[:12]}"

        def drop() -> None:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        self._drop = drop
        return PostgresRepository(dsn, schema=schema)

    def _register_kinds(self) -> None:
        """The job bodies of the kinds in `harness.KINDS` beyond a plain call."""
        from jobcore import current_job
        task = self.tracker.task

        async def run_async(x: int) -> None:
            task(x)

        def report_progress(x: int) -> None:
            context = current_job()
            assert context is not None  # (inside a job)
            context.progress(0.5, "half")
            task(x)

        def log_a_line(x: int) -> None:
            context = current_job()
            assert context is not None  # (inside a job)
            context.log("a line")
            task(x)

        def fail(x: int) -> None:
            task(x)
            raise ValueError("this job fails")

        for name, body in (("noop-async", run_async), ("noop-progress", report_progress),
                           ("noop-logging", log_a_line), ("noop-failing", fail)):
            self.manager.register_function(name, body)
        self._kinds_registered = True

    def enqueue_kind(self, kind: str, x: int) -> None:
        """Enqueue one job of `kind`, one of `harness.KINDS` (harness.kinds)."""
        if not self._kinds_registered:
            self._register_kinds()
        job = self._job
        if kind in ("async", "progress", "logging"):
            made = job(function_name=f"noop-{kind}", args=(x,))
        elif kind == "failing":
            made = job(function_name="noop-failing", args=(x,), max_retries=0)
        elif kind == "timeout":
            made = job(function_name="noop", args=(x,), timeout=60.0)
        elif kind == "keyed":
            made = job(function_name="noop", args=(x,), unique_key=f"key-{x}")
        else:
            made = job(function_name="noop", args=(x,))
        self.ids.append(self.manager.enqueue(made))

    def enqueue(self, x: int, priority: int = 0) -> None:
        self.ids.append(self.manager.enqueue(self._job(function_name="noop", args=(x,), priority=priority)))

    def enqueue_bulk(self, xs: Sequence[int], priorities: Optional[Sequence[int]] = None) -> None:
        levels = priorities or [0] * len(xs)
        jobs = [self._job(function_name="noop", args=(x,), priority=p) for x, p in zip(xs, levels)]
        self.ids.extend(self.manager.enqueue_many(jobs))

    def enqueue_chain(self, xs: Sequence[int]) -> None:
        """Enqueue one job per x in one `enqueue_many`, each depending on the job enqueued
        just before it (harness.chain)."""
        jobs: list[Any] = []
        for x in xs:
            before = jobs[-1].id if jobs else (self.ids[-1] if self.ids else None)
            jobs.append(self._job(function_name="noop", args=(x,), depends_on=[before] if before else []))
        self.ids.extend(self.manager.enqueue_many(jobs))

    def enqueue_gather(self, x: int) -> str:
        """Enqueue one job depending on every job enqueued so far (harness.fanin); its id."""
        self.ids.append(self.manager.enqueue(self._job(function_name="noop", args=(x,), depends_on=list(self.ids))))
        return self.ids[-1]

    def start(self) -> None:
        self.manager.start()

    def wait_for(self, job_id: str, timeout: float) -> None:
        """`wait` for one job (harness.roundtrip)."""
        self.manager.wait(job_id, timeout=timeout)

    def wait_done(self, timeout: float) -> None:
        if self.poll_each:
            deadline = time.monotonic() + timeout
            for job_id in self.ids:
                while not self.manager.poll(job_id).status.is_terminal:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"job {job_id} not done within {timeout:.0f}s")
            return
        if self.wait_each:
            deadline = time.monotonic() + timeout
            for job_id in self.ids:
                self.manager.wait(job_id, timeout=max(0.0, deadline - time.monotonic()))
            return
        if not self.tracker.all_started.wait(timeout):
            raise TimeoutError(f"not every job started within {timeout:.0f}s")
        for x in list(self.tracker.last_by_thread.values()):
            self.manager.wait(self.ids[x], timeout=timeout)

    def close(self) -> None:
        self.manager.close()
        if self._drop is not None:
            self._drop()

    def settings(self) -> dict[str, Any]:
        import jobcore
        return {"version": jobcore.__version__, "repository": "memory" if self.durability is None
                else "postgres" if self.durability == "postgres" else f"sqlite durability={self.durability}"}


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
    "jobcore-postgres": (lambda: Jobcore("postgres"), "jobcore", "jobcore PostgreSQL"),
    "huey": (_peer("Huey"), "peer", "Huey (SqliteHuey)"),
    "persist-queue": (_peer("PersistQueue"), "peer", "persist-queue (SQLiteAckQueue)"),
    "litequeue": (_peer("LiteQueue"), "peer", "litequeue"),
    "raw-normal": (_floor("RawSQLite", "NORMAL", 1), "floor", "raw sqlite3, 1 txn/stmt, NORMAL"),
    "raw-full": (_floor("RawSQLite", "FULL", 1), "floor", "raw sqlite3, 1 txn/stmt, FULL"),
    "raw-batch": (_floor("RawSQLite", "NORMAL", BATCH), "floor", f"raw sqlite3, {BATCH}/txn, NORMAL"),
    "heap": (_floor("HeapFloor"), "floor", "stdlib heapq + Condition"),
}

# What each engine writes and does per job that the others may not; the report prints it
# under the tables. jobcore's entries describe the engine as of this benchmark's writing.
PER_JOB = {
    "jobcore-sqlite": "validates the Job; JSON-encodes args, tags, metadata and dependencies into a"
                      " ~38-column row (7 indexes on the table, 2 of them holding a plain pending job); one INSERT committed by itself per"
                      " `enqueue` call (concurrent callers take turns); ready ids are claimed in"
                      " batches (UPDATE ... RETURNING the row) in the same transaction that records"
                      " finished outcomes (and the dependents they release), made by a worker thread"
                      " that ran out of claimed jobs (or by the dispatcher thread when workers are idle); an enqueue on a started manager makes"
                      " that exchange itself: the new row (claimed, handed straight to a worker with room),"
                      " the outcomes waiting (a few at a time while enqueues stream in) and the claims in one"
                      " transaction; stores status, timestamps and"
                      " the result (JSON, \"null\" here); an in-process heap of ids wakes workers at once;"
                      " WAL, synchronous=NORMAL: no fsync per commit, checkpoints on a background thread",
    "jobcore-sqlite-full": "as jobcore SQLite with synchronous=FULL: the WAL is fsynced on every"
                           " commit (each enqueue call, each batch of outcomes and claims); concurrent enqueue"
                           " calls share one transaction and its fsync (group commit); SQLite's own checkpoints",
    "jobcore-postgres": "as jobcore SQLite, on a PostgreSQL server (psycopg 3, a pool of connections): each"
                        " statement a round trip; an enqueue one INSERT that also NOTIFYs (or, handed"
                        " straight to an idle worker, stored claimed); claims FOR NO KEY UPDATE SKIP LOCKED;"
                        " the server's own durability settings",
    "jobcore-memory": "validates the Job; keeps a copy of the record in a dict under one lock;"
                      " claims and completes by compare-and-set in the same batches; arguments"
                      " kept as Python objects (no JSON); nothing persisted",
    "huey": "pickles the task; INSERT (1 commit); dequeue = SELECT + DELETE in an exclusive"
            " transaction (1 commit); reads the revoke keys, then clears the task's in another"
            " exclusive transaction (nothing written when there is none); stores no result for"
            " None; one connection behind one lock for all threads; SQLite's default synchronous=FULL"
            " (fsync per commit); idle workers poll every 0.1 s, backing off x1.15 up to 10 s",
    "persist-queue": "pickles the item; INSERT (1 commit); get = SELECT + status UPDATE (1 commit);"
                     " ack = status UPDATE (1 commit); one writer connection behind a lock; SQLite's"
                     " default synchronous=FULL; an in-process Event wakes getters; no results",
    "litequeue": "stores a string; INSERT (autocommit); pop = UPDATE ... WHERE rowid = (SELECT ..."
                 " ORDER BY message_id LIMIT 1) in an IMMEDIATE transaction, which sorts the ready"
                 " rows on every pop; done = UPDATE (autocommit); synchronous=NORMAL; no blocking"
                 " pop (the benchmark's workers poll every 5 ms); no priorities, no results",
    "raw-normal": "3 statements per job (INSERT, UPDATE-claim with RETURNING, UPDATE-complete),"
                  " each its own transaction, on a 4-column table with one partial index; WAL,"
                  " synchronous=NORMAL; workers woken in-process",
    "raw-full": "as raw NORMAL with synchronous=FULL: an fsync per commit, 3 per job",
    "raw-batch": f"the same 3 statements, {BATCH} jobs per transaction each",
    "heap": "heapq.heappush/heappop under one threading.Condition; nothing stored",
}
