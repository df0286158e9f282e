"""The measuring side of the benchmark: the no-op job body, the engine interface, and the
scenarios every engine runs the same way. No engine code and no reporting here.

Every scenario runs in a fresh child process with a fresh temporary directory (see
`run.py`), so one engine's threads, heap and page cache state never leak into another's.
"""

from __future__ import annotations

import os
import random
import threading
import time
from typing import Any, Optional, Sequence

WORKERS = 4            # worker threads per engine, everywhere
BATCH = 500            # rows per transaction for every "batched" figure
PRIORITY_LEVELS = 10   # priorities drawn from 0..9 in the priority scenario


def read_rss_mb() -> dict[str, float]:
    """VmRSS and VmHWM (peak) of this process in MB, from /proc/self/status."""
    found: dict[str, float] = {}
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    found[key.lower()] = int(value.split()[0]) / 1024.0
    except OSError:
        pass
    return {"rss_mb": found.get("vmrss", float("nan")), "hwm_mb": found.get("vmhwm", float("nan"))}


class Tracker:
    """The no-op job body and what it records.

    `task(x)` is what every engine runs: it does no work beyond bookkeeping of a few
    hundred nanoseconds. `done()` is called by engine loops that this benchmark writes
    (peers, floors) once a job's completion is recorded in the store; jobcore and Huey
    report completion their own way (see their adapters).
    """

    def __init__(self, n: int, mode: str = "count") -> None:
        self.n = n
        # list.append and len are atomic under the GIL; a shared int += is not.
        self._started: list[None] = []
        self._done: list[None] = []
        self.all_started = threading.Event()
        self.all_done = threading.Event()
        self.last_by_thread: dict[int, int] = {}
        self.order: list[int] = []
        self.stamps: dict[int, float] = {}
        self.stamped = threading.Event()
        self.task = {"count": self._count_task, "order": self._order_task,
                     "stamp": self._stamp_task}[mode]

    def _count_task(self, x: int) -> None:
        self.last_by_thread[threading.get_ident()] = x
        self._started.append(None)
        if len(self._started) >= self.n:
            self.all_started.set()

    def _order_task(self, x: int) -> None:
        self.order.append(x)
        self._count_task(x)

    def _stamp_task(self, x: int) -> None:
        self.stamps[x] = time.perf_counter()
        self.stamped.set()
        self._count_task(x)

    def done(self) -> None:
        self._done.append(None)
        if len(self._done) >= self.n:
            self.all_done.set()

    def completed(self) -> int:
        """Jobs whose completion is recorded, or (for engines that report completion
        only by waiting) jobs started, which is at most `WORKERS` more."""
        return len(self._done) or len(self._started)


class Engine:
    """What each engine adapter provides; one instance per measurement.

    `open` builds the store in `workdir` with `WORKERS` workers ready but not started;
    `enqueue` adds one job running `tracker.task(x)`; `enqueue_bulk` adds many in
    batches the engine's batch API allows (only when `bulk`); `start` starts the workers;
    `wait_done` blocks until every job the tracker counts has its completion recorded;
    `close` stops workers and releases the store.
    """

    key = "engine"
    bulk = False          # has a batch enqueue API
    priorities = False    # honours job priorities
    batch_size = 1        # >1: the engine's defining mode is batching (the batched floor)
    deep_drain_cap: Optional[int] = None  # jobs to drain in the deep scenario, if capped

    def open(self, workdir: str, tracker: Tracker) -> None:
        raise NotImplementedError

    def enqueue(self, x: int, priority: int = 0) -> None:
        raise NotImplementedError

    def enqueue_bulk(self, xs: Sequence[int], priorities: Optional[Sequence[int]] = None) -> None:
        raise NotImplementedError

    thread_prefix = ""    # set by engines whose workers are threads running `_work`

    def start(self) -> None:
        """Start `WORKERS` threads running `self._work` (engines with their own workers override)."""
        self._threads = [threading.Thread(target=self._work, name=f"{self.thread_prefix}-worker-{i}", daemon=True)
                         for i in range(WORKERS)]
        for thread in self._threads:
            thread.start()

    def _work(self) -> None:
        raise NotImplementedError

    def wait_done(self, timeout: float) -> None:
        """Block until the tracker saw every job complete."""
        if not self.tracker.all_done.wait(timeout):
            raise TimeoutError(f"not every job completed within {timeout:.0f}s")

    def close(self) -> None:
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """What this engine was configured with (synchronous pragma, versions...)."""
        return {}


def _wait(event: threading.Event, timeout: float, what: str) -> None:
    if not event.wait(timeout):
        raise TimeoutError(f"{what} not reached within {timeout:.0f}s")


def _enqueue_all(engine: Engine, xs: Sequence[int], priorities: Optional[Sequence[int]] = None) -> None:
    """One call per job, except for the batched floor whose point is batching."""
    if engine.batch_size > 1:
        for start in range(0, len(xs), engine.batch_size):
            chunk = xs[start:start + engine.batch_size]
            engine.enqueue_bulk(chunk, None if priorities is None else priorities[start:start + len(chunk)])
        return
    if priorities is None:
        for x in xs:
            engine.enqueue(x)
    else:
        for x, priority in zip(xs, priorities):
            engine.enqueue(x, priority)


def _drain(engine: Engine, tracker: Tracker, budget: float) -> tuple[int, Optional[dict[str, float]]]:
    """Wait for every completion, or for `budget` seconds: a drain that slow is reported
    as a partial rate (jobs completed so far over the time spent) instead of holding up
    the run for many minutes."""
    try:
        engine.wait_done(budget)
        return tracker.n, None
    except TimeoutError:
        done = min(tracker.n, tracker.completed())
        return done, {"done": done, "of": tracker.n, "budget": budget}


# -- scenarios --------------------------------------------------------------------------------
def e2e(engine: Engine, workdir: str, n: int, budget: float) -> dict[str, Any]:
    """Enqueue n jobs (one call each), then start the workers and drain them all."""
    tracker = Tracker(n)
    engine.open(workdir, tracker)
    settings = engine.settings()
    try:
        xs = list(range(n))
        t0 = time.perf_counter()
        _enqueue_all(engine, xs)
        t1 = time.perf_counter()
        engine.start()
        done, partial = _drain(engine, tracker, budget)
        t2 = time.perf_counter()
    finally:
        engine.close()
    per_job = (t1 - t0) / n + (t2 - t1) / max(1, done)   # seconds per job, enqueue + drain
    result = {"enqueue_per_s": n / (t1 - t0), "drain_per_s": done / (t2 - t1), "e2e_per_s": 1.0 / per_job,
              "settings": settings}
    if partial:
        result["partial"] = partial
    return result


def waited(engine: Engine, workdir: str, n: int, budget: float) -> dict[str, Any]:
    """As `e2e`, but the drain ends when a `wait` on every job id, one after the other,
    has returned: how an application using only the public API sees a queue drained."""
    if not hasattr(engine, "wait_each"):
        raise NotImplementedError("only jobcore waits per job id here")
    engine.wait_each = True
    return e2e(engine, workdir, n, budget)


def polled(engine: Engine, workdir: str, n: int, budget: float) -> dict[str, Any]:
    """As `e2e`, but the drain ends when a loop that polls every job id in turn, without
    pausing, until it is done has seen them all: the busy loop an application may write."""
    if not hasattr(engine, "poll_each"):
        raise NotImplementedError("only jobcore is polled per job id here")
    engine.poll_each = True
    return e2e(engine, workdir, n, budget)


def roundtrip(engine: Engine, workdir: str, n: int, budget: float) -> dict[str, Any]:
    """With the workers started and idle, enqueue one job and `wait` for it, n times in a
    row (or for `budget` seconds): a caller that needs each job's result before it goes
    on. Turns per second, and each turn's time (enqueue call start to `wait` returning)."""
    if not hasattr(engine, "wait_for"):
        raise NotImplementedError("only jobcore is waited for per job here")
    tracker = Tracker(n)
    engine.open(workdir, tracker)
    turns: list[float] = []
    try:
        engine.start()
        time.sleep(0.05)  # let the workers reach their idle wait
        deadline = time.monotonic() + budget
        t0 = time.perf_counter()
        for x in range(n):
            start = time.perf_counter()
            engine.enqueue(x)
            engine.wait_for(engine.ids[-1], budget)
            turns.append((time.perf_counter() - start) * 1000.0)
            if time.monotonic() > deadline:
                break
        t1 = time.perf_counter()
    finally:
        engine.close()
    turns.sort()
    return {"roundtrip_per_s": len(turns) / (t1 - t0), "p50_ms": turns[len(turns) // 2],
            "p99_ms": turns[min(len(turns) - 1, int(len(turns) * 0.99))], "turns": len(turns)}


def fanin(engine: Engine, workdir: str, n: int, budget: float) -> dict[str, Any]:
    """n jobs enqueued in batches, drained; then, in a fresh store, the same n and one job
    depending on all of them, drained until that one completes: what a reduce step over a
    map costs beside the map alone (jobcore only)."""
    if not hasattr(engine, "enqueue_gather"):
        raise NotImplementedError("only jobcore's jobs depend on others here")
    rates = []
    for gather in (False, True):
        tracker = Tracker(n + 1 if gather else n)
        store = os.path.join(workdir, "with-gather" if gather else "alone")
        os.makedirs(store)
        engine.open(store, tracker)
        try:
            xs = list(range(n))
            for start in range(0, n, BATCH):
                engine.enqueue_bulk(xs[start:start + BATCH])
            last = engine.enqueue_gather(n) if gather else engine.ids[-1]
            t0 = time.perf_counter()
            engine.start()
            if not gather:
                engine.wait_done(budget)
            engine.wait_for(last, budget)
            rates.append(n / (time.perf_counter() - t0))
        finally:
            engine.close()
    return {"drain_per_s": rates[0], "fanin_drain_per_s": rates[1], "ratio": rates[1] / rates[0]}


def chain(engine: Engine, workdir: str, n: int, budget: float) -> dict[str, Any]:
    """n jobs, each depending on the one before, enqueued in batches before the workers
    start, drained until the last completes: what a dependency costs per link, where no
    two jobs can run at once (jobcore only)."""
    if not hasattr(engine, "enqueue_chain"):
        raise NotImplementedError("only jobcore's jobs depend on others here")
    engine.open(workdir, Tracker(n))
    try:
        xs = list(range(n))
        for start in range(0, n, BATCH):
            engine.enqueue_chain(xs[start:start + BATCH])
        t0 = time.perf_counter()
        engine.start()
        engine.wait_for(engine.ids[-1], budget)
        return {"links_per_s": n / (time.perf_counter() - t0)}
    finally:
        engine.close()


# What a job may carry beyond a plain call (jobcore only): a coroutine function, a timeout,
# a progress report, a unique key, and a body that raises (no retries: failed at once).
KINDS = ("plain", "async", "timeout", "progress", "logging", "keyed", "failing")


def kinds(engine: Engine, workdir: str, n: int, budget: float) -> dict[str, Any]:
    """n jobs of each kind in `KINDS`, each kind in a fresh store: enqueued one call each,
    then drained; what each feature costs a job beside a plain one (jobcore only)."""
    if not hasattr(engine, "enqueue_kind"):
        raise NotImplementedError("only jobcore's jobs come in these kinds here")
    result: dict[str, Any] = {}
    for kind in KINDS:
        tracker = Tracker(n)
        store = os.path.join(workdir, kind)
        os.makedirs(store)
        engine.open(store, tracker)
        try:
            t0 = time.perf_counter()
            for x in range(n):
                engine.enqueue_kind(kind, x)
            t1 = time.perf_counter()
            engine.start()
            done, partial = _drain(engine, tracker, budget)  # (past the budget: the jobs done so far)
            t2 = time.perf_counter()
        finally:
            engine.close()
        result[f"{kind}_enqueue_per_s"] = n / (t1 - t0)
        result[f"{kind}_drain_per_s"] = done / (t2 - t1)
        if partial:  # (marked † as the others' are; it was dropped, and shown as a full rate)
            result[f"{kind}_partial"] = partial
    return result


def bulk(engine: Engine, workdir: str, n: int, timeout: float) -> dict[str, Any]:
    """Enqueue n jobs through the batch API, `BATCH` per call (the enqueue rate only)."""
    if not engine.bulk:
        raise NotImplementedError("no batch enqueue API")
    tracker = Tracker(n)
    engine.open(workdir, tracker)
    try:
        t0 = time.perf_counter()
        for start in range(0, n, BATCH):
            engine.enqueue_bulk(range(start, min(n, start + BATCH)))
        t1 = time.perf_counter()
    finally:
        engine.close()
    return {"enqueue_many_per_s": n / (t1 - t0)}


def producers(engine: Engine, workdir: str, n: int, threads: int) -> dict[str, Any]:
    """n jobs enqueued one call at a time by `threads` producer threads at once (the
    workers not started): what concurrent callers share, such as a commit's fsync."""
    tracker = Tracker(n)
    engine.open(workdir, tracker)
    shares = [list(range(k, n, threads)) for k in range(threads)]
    gate = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def produce(xs: list[int]) -> None:
        gate.wait()
        try:
            for x in xs:
                engine.enqueue(x)
        except BaseException as exc:  # told below: the figure would be wrong
            errors.append(exc)

    pool = [threading.Thread(target=produce, args=(xs,)) for xs in shares]
    try:
        for thread in pool:
            thread.start()
        gate.wait()
        t0 = time.perf_counter()
        for thread in pool:
            thread.join()
        t1 = time.perf_counter()
    finally:
        engine.close()
    if errors:
        raise errors[0]
    return {"enqueue_per_s": n / (t1 - t0), "threads": threads}


def concurrent(engine: Engine, workdir: str, n: int, budget: float) -> dict[str, Any]:
    """Workers running while one producer thread enqueues n jobs one call at a time."""
    tracker = Tracker(n)
    engine.open(workdir, tracker)
    try:
        engine.start()
        time.sleep(0.05)  # let the workers reach their idle wait
        t0 = time.perf_counter()
        _enqueue_all(engine, list(range(n)))
        t1 = time.perf_counter()
        done, partial = _drain(engine, tracker, budget)
        t2 = time.perf_counter()
    finally:
        engine.close()
    result = {"concurrent_per_s": done / (t2 - t0), "enqueue_under_load_per_s": n / (t1 - t0)}
    if partial:
        result["partial"] = partial
    return result


def priority(engine: Engine, workdir: str, n: int, timeout: float) -> dict[str, Any]:
    """n jobs with seeded random priorities queued before the workers start; the order
    in which the workers start them, against the order the priorities ask for."""
    if not engine.priorities:
        raise NotImplementedError("no job priorities (FIFO only)")
    rng = random.Random(6)
    levels = [rng.randrange(PRIORITY_LEVELS) for _ in range(n)]
    tracker = Tracker(n, mode="order")
    engine.open(workdir, tracker)
    try:
        xs = list(range(n))
        if engine.bulk:
            for start in range(0, n, BATCH):
                engine.enqueue_bulk(xs[start:start + BATCH], levels[start:start + BATCH])
        else:
            _enqueue_all(engine, xs, levels)
        t0 = time.perf_counter()
        engine.start()
        engine.wait_done(timeout)
        t1 = time.perf_counter()
    finally:
        engine.close()
    started = [levels[x] for x in tracker.order]
    adjacent = sum(1 for a, b in zip(started, started[1:]) if b > a)
    # A job started "late" if a lower-priority job had started more than a window of
    # 2 x workers earlier: workers racing over the heap top can swap neighbours, no more.
    window = 2 * WORKERS
    late, lowest = 0, None
    for i, level in enumerate(started):
        if i >= window:
            earlier = started[i - window]
            lowest = earlier if lowest is None else min(lowest, earlier)
            if level > lowest:
                late += 1
    # FIFO among equals, by rank within the level: overtaken by an equal queued more
    # than a window of equals later.
    rank: dict[int, int] = {}
    seen_per_level: dict[int, int] = {}
    for x in xs:
        rank[x] = seen_per_level.get(levels[x], 0)
        seen_per_level[levels[x]] = rank[x] + 1
    fifo_breaks = 0
    highest: dict[int, int] = {}
    for x in tracker.order:
        if highest.get(levels[x], -1) > rank[x] + window:
            fifo_breaks += 1
        highest[levels[x]] = max(highest.get(levels[x], -1), rank[x])
    return {"drain_per_s": n / (t1 - t0), "adjacent_inversions": adjacent / max(1, n - 1),
            "late_beyond_window": late / n, "fifo_breaks_beyond_window": fifo_breaks / n,
            "started": len(tracker.order)}


def pickup(engine: Engine, workdir: str, samples: int, timeout: float, budget: float,
           pause: bool = True) -> dict[str, Any]:
    """With idle workers, enqueue one job at a time and measure from the start of the
    enqueue call to the job's body starting; a pause of 2-8 ms between samples lets the
    previous job finish and the workers go idle again. Without `pause`, back to back:
    the next enqueue as soon as the job's body started (what a caller that hands jobs
    over one at a time sees; enqueues so close together look like a stream)."""
    tracker = Tracker(samples, mode="stamp")
    engine.open(workdir, tracker)
    rng = random.Random(7)
    latencies: list[float] = []
    missed = 0
    try:
        engine.start()
        time.sleep(0.2)
        deadline = time.monotonic() + budget
        for x in range(samples):
            if time.monotonic() > deadline:
                break
            if pause:
                time.sleep(rng.uniform(0.002, 0.008))
            tracker.stamped.clear()
            t0 = time.perf_counter()
            engine.enqueue(x)
            if not tracker.stamped.wait(min(timeout, 20.0)) or x not in tracker.stamps:
                missed += 1
                continue
            latencies.append((tracker.stamps[x] - t0) * 1000.0)
    finally:
        engine.close()
    return {"latencies_ms": latencies, "missed": missed}


def deep(engine: Engine, workdir: str, depth: int, drain: int, timeout: float) -> dict[str, Any]:
    """Queue `depth` jobs (batch API), start the workers, read RSS, and time the first
    `drain` jobs (the engine's cap if it has one) while the rest stay queued."""
    if not engine.bulk:
        raise NotImplementedError("no batch enqueue API to fill the queue")
    if engine.deep_drain_cap is not None:
        drain = min(drain, engine.deep_drain_cap)
    tracker = Tracker(drain)
    engine.open(workdir, tracker)
    try:
        t0 = time.perf_counter()
        for start in range(0, depth, 5000):
            engine.enqueue_bulk(range(start, min(depth, start + 5000)))
        t1 = time.perf_counter()
        before = read_rss_mb()
        engine.start()
        engine.wait_done(timeout)
        t2 = time.perf_counter()
        after = read_rss_mb()
    finally:
        engine.close()
    return {"fill_per_s": depth / (t1 - t0), "deep_drain_per_s": drain / (t2 - t1), "drained": drain,
            "rss_queued_mb": before["rss_mb"], "rss_mb": after["rss_mb"], "hwm_mb": after["hwm_mb"]}
