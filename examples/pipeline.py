"""A fetch -> process -> report pipeline built with `depends_on`.

Run it from a fresh clone:  python examples/pipeline.py

1. Three jobs are enqueued together (`enqueue_many`, one transaction). `process` depends
   on `fetch` and `report` on `process`: each starts only once the one before COMPLETED.
   jobcore passes no data between jobs; a dependent reads its dependency's result with
   `poll(dependency_id).result`.
2. The same pipeline on a source that does not exist: `fetch` fails with a permanent
   error, and `process` and `report` end CANCELLED at once, with an error naming `fetch`.
   A job enqueued later that depends on the failed fetch is stored CANCELLED straight away.
3. Once the source exists, `retry()` re-queues the failed fetch and its cancelled
   dependents, and the pipeline runs through.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jobcore import Job, JobManager, JobStatus, PermanentError  # noqa: E402

SOURCES = {"sales-2024.csv": [120, 340, 95, 410, 230]}
manager: Optional[JobManager] = None   # set in main(); jobs read their inputs through it
T0 = time.monotonic()
_print_lock = threading.Lock()


def say(text: str) -> None:
    with _print_lock:
        print(f"  t={time.monotonic() - T0:4.2f}s  {text}", flush=True)


def fetch(source: str) -> list:
    say(f"fetch   {source}: downloading")
    time.sleep(0.3)
    if source not in SOURCES:
        raise PermanentError(f"HTTP 404: {source} not found")   # no point retrying
    return SOURCES[source]


def process(fetch_id: str) -> dict:
    rows = manager.poll(fetch_id).result   # the dependency COMPLETED, so its result is there
    say(f"process {len(rows)} rows")
    time.sleep(0.3)
    return {"rows": len(rows), "total": sum(rows), "largest": max(rows)}


def report(process_id: str) -> str:
    summary = manager.poll(process_id).result
    say("report  writing")
    time.sleep(0.2)
    return f"{summary['rows']} sales, total {summary['total']}, largest {summary['largest']}"


def pipeline(source: str) -> list[Job]:
    """Three jobs; their ids exist before enqueueing, so they can refer to each other."""
    fetch_job = Job(function_name="pipeline.fetch", args=(source,), name=f"fetch {source}")
    process_job = Job(function_name="pipeline.process", args=(fetch_job.id,),
                      depends_on=[fetch_job.id], name=f"process {source}")
    report_job = Job(function_name="pipeline.report", args=(process_job.id,),
                     depends_on=[process_job.id], name=f"report {source}")
    return [fetch_job, process_job, report_job]


def show(ids: list[str]) -> None:
    for job_id in ids:
        result = manager.poll(job_id)
        line = f"    {result.name:<26} {result.status.value:<9}"
        if result.status is JobStatus.COMPLETED:
            line += f" result={result.result!r}"
        elif result.error:
            line += f" {result.error_type}: {result.error}"
        print(line)


def main() -> None:
    global manager
    path = os.environ.get("JOBCORE_DB") or os.path.join(tempfile.mkdtemp(), "pipeline.db")
    print(f"database: {path}")
    with JobManager(path, max_workers=3) as manager:
        manager.register_function("pipeline.fetch", fetch)
        manager.register_function("pipeline.process", process)
        manager.register_function("pipeline.report", report)

        print("\n1. a pipeline on an existing source")
        ids = manager.enqueue_many(pipeline("sales-2024.csv"))
        print("  just enqueued (process and report wait for their dependency):")
        show(ids)
        manager.wait(ids[-1], timeout=30)
        print("  finished:")
        show(ids)

        print("\n2. the same pipeline on a missing source")
        ids = manager.enqueue_many(pipeline("sales-2025.csv"))
        manager.wait(ids[-1], timeout=30)
        show(ids)
        late = manager.enqueue(Job(function_name="pipeline.process", args=(ids[0],),
                                   depends_on=[ids[0]], name="late process sales-2025"))
        print("  a job enqueued later that depends on the failed fetch:")
        show([late])

        print("\n3. the source appears; retry the failed fetch and its cancelled dependents")
        SOURCES["sales-2025.csv"] = [500, 20, 75]
        print(f"  retry: {[manager.retry(job_id) for job_id in ids]}")
        manager.wait(ids[-1], timeout=30)
        show(ids)


if __name__ == "__main__":
    main()
