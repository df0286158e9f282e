"""A long job that keeps running after the process that submitted it has gone away.

Run it from a fresh clone:  python examples/long_job.py

Three kinds of process share one SQLite file, as a web app and its workers would:

1. a worker process, started the way you would in production:
       python -m jobcore --db PATH worker --import long_job --workers 1
   It imports this file as the module `long_job`, which registers `render_video`.
2. a submitter (this script run as `long_job.py submit PATH`): a producer manager that
   enqueues the job, prints its id and exits at once, like a web request that returns.
3. a poller (`long_job.py poll PATH ID`), started a little later, like the user coming
   back: a fresh producer that knows only the id, shows a progress bar and the result.

Nothing about the job lives in the submitter or the poller; the database is the only
link between them. `python -m jobcore --db PATH watch ID` shows the same progress bar.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jobcore  # noqa: E402
from jobcore import Job, JobManager  # noqa: E402

FUNCTION = "long_job.render_video"


def render_video(title: str, seconds: float, progress_callback=None) -> dict:
    """The long job: render `title` in 10 steps over `seconds` seconds."""
    for step in range(1, 11):
        time.sleep(seconds / 10)  # the real work would go here
        progress_callback(step / 10, f"rendered {step * 10}% of {title}", frames=step * 120)
    return {"title": title, "frames": 1200, "file": f"/videos/{title}.mp4"}


if __name__ != "__main__":
    # Imported by `python -m jobcore worker --import long_job`: register on the worker's
    # manager, which `jobcore.register_job_function` reaches through the default manager.
    jobcore.register_job_function(FUNCTION, render_video)


def submit(db: str) -> None:
    """Role 2: enqueue and exit. A producer needs the function's name, not its code."""
    producer = JobManager(db, producer=True)
    job_id = producer.enqueue(Job(function_name=FUNCTION, args=("holiday-2024", 6.0),
                                  name="render holiday-2024", owner="ann"))
    producer.close()
    print(os.getpid(), job_id, flush=True)


def poll(db: str, job_id: str) -> None:
    """Role 3: come back later knowing only the id; show progress until the job ends."""
    producer = JobManager(db, producer=True)
    last = None
    while True:
        result = producer.poll(job_id)
        line = (f"{result.status.value:<9} [{'#' * round(result.progress * 30):<30}]"
                f" {result.progress:4.0%}  {result.progress_message}")
        if line != last:
            print(f"  poller: {line}", flush=True)
            last = line
        if result.is_terminal:
            break
        time.sleep(0.2)
    print(f"  poller: result {result.result}, started {result.started_at:%H:%M:%S},"
          f" finished {result.completed_at:%H:%M:%S}", flush=True)
    producer.close()


def relay(stream, prefix: str) -> None:
    for line in stream:
        print(f"  {prefix}: {line.rstrip()}", flush=True)


def main() -> None:
    # a path made absolute (the workers run in another folder), a postgresql:// DSN as given
    db = os.environ.get("JOBCORE_DB") or os.path.join(tempfile.mkdtemp(), "long_job.db")
    if not db.startswith(("postgresql://", "postgres://")):
        db = os.path.abspath(db)
    here = os.path.dirname(os.path.abspath(__file__))
    # `python -m jobcore` must find the package from a fresh clone, and the worker must
    # find this file as the module `long_job` (it puts its working directory on sys.path).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "jobcore", "--db", db, "worker", "--import", "long_job", "--workers", "1"]
    print(f"database: {db}")
    print(f"starting a worker in {here}:")
    print(f"  python {' '.join(command[1:])}")
    worker = subprocess.Popen(command, cwd=here, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    started = worker.stdout.readline()
    if not started.startswith("jobcore worker"):
        raise SystemExit(f"the worker did not start: {started}{worker.stdout.read()}")
    print(f"  worker: {started.rstrip()}")
    relaying = threading.Thread(target=relay, args=(worker.stdout, "worker"), daemon=True)
    relaying.start()
    try:
        t0 = time.monotonic()
        submitter = subprocess.run([sys.executable, __file__, "submit", db], env=env,
                                   capture_output=True, text=True, check=True)
        pid, job_id = submitter.stdout.split()
        print(f"submitter (pid {pid}) enqueued {job_id} and exited (status {submitter.returncode})"
              f" {time.monotonic() - t0:.2f}s after it started")

        print("the user is away for 2.5 s; the job runs in the worker meanwhile...")
        time.sleep(2.5)

        print(f"a new process comes back to poll {job_id}:")
        subprocess.run([sys.executable, __file__, "poll", db, job_id], env=env, check=True)
    finally:
        worker.terminate()   # SIGTERM: graceful stop
        worker.wait(timeout=15)
        relaying.join(timeout=5)  # it prints the worker's last lines, then sees the pipe end
        worker.stdout.close()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "submit":
        submit(sys.argv[2])
    elif len(sys.argv) > 1 and sys.argv[1] == "poll":
        poll(sys.argv[2], sys.argv[3])
    else:
        main()
