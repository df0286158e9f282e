"""A web app and two worker processes sharing one SQLite file, with live progress.

Run it from a fresh clone:  python examples/worker_pool.py

The "web app" (this script) is a producer: it enqueues jobs for users and never runs
them. Two worker processes run them, each started as you would in production:

    python -m jobcore --db PATH worker --import worker_pool --workers 2

Each worker imports this file as the module `worker_pool`, which registers the job
functions. The web app prints a live table (status, progress bar, which worker process
runs each job) as a dashboard would, cancels one job on a user's request (the worker
running it notices at its next heartbeat and the job stops at its next progress report),
and finally shows which process ran what. For the web view of the same database, run
`python -m jobcore --db PATH dashboard` and open http://127.0.0.1:8080.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jobcore  # noqa: E402
from jobcore import Job, JobManager, JobPriority, JobStatus  # noqa: E402


def export_data(user: str, rows: int, progress_callback=None) -> dict:
    """Export a user's data in chunks of 100 rows."""
    chunks = rows // 100
    for chunk in range(1, chunks + 1):
        time.sleep(0.25)  # the real work would go here
        progress_callback(chunk / chunks, f"{chunk * 100} of {rows} rows")
    return {"user": user, "rows": rows, "pid": os.getpid()}


def make_thumbnails(user: str, images: int, progress_callback=None) -> dict:
    """Make one thumbnail per image."""
    for done in range(1, images + 1):
        time.sleep(0.2)
        progress_callback(done / images, f"{done} of {images} images")
    return {"user": user, "thumbnails": images, "pid": os.getpid()}


if __name__ != "__main__":
    # Imported by `python -m jobcore worker --import worker_pool`: register on the
    # worker's own manager (the process-wide default the worker command sets up).
    jobcore.register_job_function("app.export", export_data)
    jobcore.register_job_function("app.thumbnails", make_thumbnails)


def bar(fraction: float, width: int = 20) -> str:
    return "[" + "#" * round(fraction * width) + "." * (width - round(fraction * width)) + "]"


def frame(app: JobManager, ids: list[str], pids: dict[str, int], elapsed: float) -> None:
    stats = app.get_stats()
    print(f"--- t={elapsed:4.1f}s  pending {stats['pending']}  running {stats['running']}"
          f"  completed {stats['completed']}  cancelled {stats['cancelled']}")
    for job_id in ids:
        r = app.poll(job_id)
        where = f"pid {pids.get(r.worker_id, '?')}" if r.worker_id else ""
        print(f"  {r.name:<18} {r.owner:<4} {r.status.value:<9} {bar(r.progress)} {r.progress:4.0%}"
              f"  {where:<9} {r.progress_message}")


def main() -> None:
    # a path made absolute (the workers run in another folder), a postgresql:// DSN as given
    db = os.environ.get("JOBCORE_DB") or os.path.join(tempfile.mkdtemp(), "app.db")
    if not db.startswith(("postgresql://", "postgres://")):
        db = os.path.abspath(db)
    here = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "jobcore", "--db", db, "worker", "--import", "worker_pool",
               "--workers", "2"]
    print(f"database: {db}")
    print(f"starting two workers in {here}:\n  python {' '.join(command[1:])}")
    workers = [subprocess.Popen(command, cwd=here, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    try:
        for worker in workers:
            line = worker.stdout.readline()
            if not line.startswith("jobcore worker"):
                raise SystemExit(f"a worker did not start: {line}{worker.stdout.read()}")
            print(f"  {line.rstrip()}")

        app = JobManager(db, producer=True)   # the web app: enqueues, polls, cancels; runs nothing
        pids = {w.worker_id: w.pid for w in app.list_workers()}
        requests = [  # (user, function, args, priority)
            ("ann", "app.export", ("ann", 1200), JobPriority.NORMAL),
            ("bob", "app.thumbnails", ("bob", 8), JobPriority.NORMAL),
            ("cho", "app.export", ("cho", 800), JobPriority.NORMAL),
            ("bob", "app.export", ("bob", 1600), JobPriority.LOW),
            ("dee", "app.thumbnails", ("dee", 5), JobPriority.HIGH),
            ("ann", "app.thumbnails", ("ann", 6), JobPriority.NORMAL),
        ]
        t0 = time.monotonic()
        ids = []
        for user, function, args, priority in requests:   # requests arrive one by one
            ids.append(app.enqueue(Job(function_name=function, args=args, owner=user, priority=priority,
                                       name=f"{function.split('.')[1]} {args[1]}")))
            time.sleep(0.1)

        cancelled = explained = False
        while True:
            time.sleep(1.0)
            frame(app, ids, pids, time.monotonic() - t0)
            if all(app.poll(job_id).is_terminal for job_id in ids):
                break
            if not explained and app.get_stats()["running"] > 2 * len(workers):
                print("  (more jobs show 'running' than the 4 threads: a worker claims up to twice its"
                      " threads, and a claimed job\n   shows 'running' at 0% while it waits for one of"
                      " that worker's threads to free up)")
                explained = True
            bobs_export = app.poll(ids[3])
            if not cancelled and bobs_export.status is JobStatus.RUNNING:
                print(f"  >> bob clicks Cancel on '{bobs_export.name}': cancel() -> {app.cancel(ids[3])}")
                cancelled = True
            if time.monotonic() - t0 > 30:
                raise SystemExit("jobs did not finish in 30 s")

        print("\nwho ran what:")
        for job_id in ids:
            r = app.poll(job_id)
            print(f"  {r.name:<18} {r.status.value:<9} by pid {pids.get(r.worker_id, '?')}"
                  + (f"  ({r.error_type}: {r.error})" if r.error else ""))
        print(f"worker processes on this database: {[(w.host, w.pid) for w in app.list_workers()]}")
        print(f"\nfor a web view of this database: python -m jobcore --db {db} dashboard")
        app.close()
    finally:
        for worker in workers:
            worker.terminate()   # SIGTERM: each worker stops gracefully
        for worker in workers:
            rest = worker.communicate(timeout=15)[0]
            print(f"  worker pid {worker.pid}: {rest.strip().splitlines()[-1] if rest.strip() else ''}")


if __name__ == "__main__":
    main()
