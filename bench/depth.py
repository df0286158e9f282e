"""jobcore-only figures: cost against queue depth (10 k to 1 M queued) and several
worker processes sharing one SQLite file. Each function runs in its own child process
(`run.py --child ...`) and returns a dict for the report; public jobcore API only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

from harness import WORKERS, read_rss_mb

FILL_BATCH = 5000


def _noop_counter(target: int) -> tuple[Any, threading.Event, list[int]]:
    import itertools
    counter = itertools.count(1)
    reached = threading.Event()
    last: list[int] = [0]

    def noop(x: int) -> None:
        last[0] = x
        if next(counter) == target:
            reached.set()
    return noop, reached, last


def depth_fill(db: str, depth: int) -> dict[str, Any]:
    """Queue `depth` no-op jobs with `enqueue_many` (batches of 5,000) in a manager that
    has the function registered and is not started: the process a producer would be (on a
    file it keeps nothing per job it queued; before cbad7c4 it kept an entry for each)."""
    from jobcore import Job, JobManager
    manager = JobManager(db, max_workers=WORKERS)
    manager.register_function("noop", lambda x: None)
    t0 = time.perf_counter()
    for start in range(0, depth, FILL_BATCH):
        manager.enqueue_many([Job(function_name="noop", args=(x,)) for x in range(start, min(depth, start + FILL_BATCH))])
    elapsed = time.perf_counter() - t0
    rss = read_rss_mb()
    manager.close()
    return {"fill_per_s": depth / elapsed, "fill_rss_mb": rss["rss_mb"], "db_mb": os.path.getsize(db) / 2**20}


def depth_measure(db: str, ops: int, timeout: float) -> dict[str, Any]:
    """On a file already `depth` deep: time `ops` single enqueues, then start a manager
    (4 workers) and time the first `ops` jobs run to completion."""
    from jobcore import JobManager
    noop, reached, _ = _noop_counter(ops)
    manager = JobManager(db, max_workers=WORKERS)
    manager.register_function("noop", noop)
    figures = _enqueue_start_claim(manager, reached, ops, timeout)
    figures["rss_mb"] = figures.pop("started_rss_mb")
    figures["queued_after"] = manager.get_queue_size()
    manager.close()
    return figures


def _enqueue_start_claim(manager: Any, reached: threading.Event, ops: int, timeout: float) -> dict[str, Any]:
    """Time `ops` single enqueues on `manager` (not started), its `start()`, the first
    `ops` jobs run to completion (`reached` is set then) and a graceful `stop()`."""
    from jobcore import Job
    base = 10**9
    t0 = time.perf_counter()
    for x in range(ops):
        manager.enqueue(Job(function_name="noop", args=(base + x,)))
    t1 = time.perf_counter()
    manager.start()
    t2 = time.perf_counter()
    started = read_rss_mb()
    if not reached.wait(timeout):
        manager.close()
        raise TimeoutError(f"{ops} jobs did not run within {timeout:.0f}s")
    t3 = time.perf_counter()
    manager.stop()   # graceful: the jobs in hand settle first
    t4 = time.perf_counter()
    return {"enqueue_us": (t1 - t0) / ops * 1e6, "claim_us": (t3 - t2) / ops * 1e6,
            "start_s": t2 - t1, "stop_s": t4 - t3, "started_rss_mb": started["rss_mb"]}


def depth_memory(depth: int, ops: int, timeout: float) -> dict[str, Any]:
    """The same figures on a memory repository, in one process (it has no file): queue
    `depth` jobs with `enqueue_many`, then time `ops` single enqueues, `start()`, and the
    first `ops` jobs run to completion."""
    from jobcore import Job, JobManager, MemoryRepository
    noop, reached, _ = _noop_counter(ops)
    manager = JobManager(MemoryRepository(), max_workers=WORKERS)
    manager.register_function("noop", noop)
    t0 = time.perf_counter()
    for start in range(0, depth, FILL_BATCH):
        manager.enqueue_many([Job(function_name="noop", args=(x,)) for x in range(start, min(depth, start + FILL_BATCH))])
    fill_elapsed = time.perf_counter() - t0
    filled = read_rss_mb()
    figures = _enqueue_start_claim(manager, reached, ops, timeout)
    del figures["started_rss_mb"]
    figures.update(fill_per_s=depth / fill_elapsed, fill_rss_mb=filled["rss_mb"], rss_mb=read_rss_mb()["rss_mb"])
    manager.close()
    return figures


# -- several processes on one file ------------------------------------------------------------
def procs_worker(db: str, workers: int) -> None:
    """A worker process: say ready, start on "go", stop on "stop", report what it ran."""
    from jobcore import JobManager
    ran = [0]
    lock = threading.Lock()

    def noop(x: int) -> None:
        with lock:
            ran[0] += 1
    manager = JobManager(db, max_workers=workers)
    manager.register_function("noop", noop)
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    manager.start()
    sys.stdin.readline()   # "stop"
    manager.stop()
    manager.close()
    print(json.dumps({"ran": ran[0]}), flush=True)


def procs(db: str, n: int, processes: int, timeout: float, run_py: str) -> dict[str, Any]:
    """Queue n jobs, then let `processes` worker processes (4 threads each) drain them;
    the clock runs from "go" until the file says every job is completed."""
    from jobcore import Job, JobManager
    producer = JobManager(db, producer=True)
    for start in range(0, n, FILL_BATCH):
        producer.enqueue_many([Job(function_name="noop", args=(x,)) for x in range(start, min(n, start + FILL_BATCH))])
    children = [subprocess.Popen([sys.executable, run_py, "--child", "procs-worker", "--db", db,
                                  "--workers", str(WORKERS)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                for _ in range(processes)]
    try:
        for child in children:
            assert child.stdout is not None
            if child.stdout.readline().strip() != "ready":
                raise RuntimeError("a worker process failed to start")
        t0 = time.perf_counter()
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        deadline = time.monotonic() + timeout
        # Every 20 ms: each look counts every row (about 1.7 ms of CPU at 20,000 jobs), and
        # looking every 5 ms took about a quarter of a vCPU from the processes measured
        # (both figures ran 10-25% faster with 20 ms). 20 ms is under 1% of a drain here.
        while producer.get_stats()["completed"] < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{processes} processes did not finish {n} jobs in {timeout:.0f}s")
            time.sleep(0.02)
        elapsed = time.perf_counter() - t0
        ran = 0
        for child in children:
            assert child.stdin is not None and child.stdout is not None
            child.stdin.write("stop\n")
            child.stdin.flush()
            line = child.stdout.readline()
            ran += json.loads(line)["ran"] if line.strip() else 0
            child.wait(30)
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
        producer.close()
    return {"procs_per_s": n / elapsed, "runs": ran, "jobs": n}


def isolated_noop(x: int) -> int:
    """The job the isolation figure runs: importable by child processes (bench/ is on
    their sys.path as on the parent's)."""
    return x


def isolation(n: int, timeout: float) -> dict[str, Any]:
    """Run `n` tiny jobs on a 4-worker manager (memory repository) on threads, then in
    child processes (`isolation="process"`, the pool reused), and give the cost per job."""
    from jobcore import Job, JobManager, MemoryRepository
    out: dict[str, Any] = {"n": n}
    for mode in ("thread", "process"):
        with JobManager(MemoryRepository(), max_workers=WORKERS) as manager:
            if mode == "process":  # warm the children up: their start is not a per-job cost
                warm = [manager.enqueue(Job(function=isolated_noop, args=(x,), isolation=mode))
                        for x in range(WORKERS)]
                for job_id in warm:
                    manager.wait(job_id, timeout=timeout)
            t0 = time.perf_counter()
            ids = manager.enqueue_many([Job(function=isolated_noop, args=(x,), isolation=mode) for x in range(n)])
            for job_id in ids:
                manager.wait(job_id, timeout=timeout)
            out[f"{mode}_ms_per_job"] = (time.perf_counter() - t0) / n * 1000
    out["process_over_thread"] = out["process_ms_per_job"] / out["thread_ms_per_job"]
    return out
