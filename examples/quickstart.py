"""Quickstart: a report job with a progress bar, polled to completion from the terminal.

Run it from a fresh clone:  python examples/quickstart.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jobcore import Job, JobManager, JobPriority, JobStatus  # noqa: E402


def build_report(user_id: str, sections: int, progress_callback=None) -> dict:
    """Pretend to build a report section by section, reporting progress as it goes."""
    for done in range(1, sections + 1):
        time.sleep(0.15)  # the real work would go here
        progress_callback(done / sections, f"section {done} of {sections}", section=done)
    return {"user": user_id, "sections": sections, "status": "ready"}


def bar(fraction: float, width: int = 30) -> str:
    filled = int(round(fraction * width))
    return "[" + "#" * filled + "-" * (width - filled) + f"] {fraction * 100:5.1f}%"


def main() -> None:
    path = os.environ.get("JOBCORE_DB") or os.path.join(tempfile.mkdtemp(), "quickstart.db")
    with JobManager(path, max_workers=2) as manager:
        manager.register_function("build_report", build_report)
        job_id = manager.enqueue(Job(function_name="build_report", args=("user-42", 12),
                                     name="Monthly report", priority=JobPriority.HIGH))
        print(f"enqueued {job_id} into {path}")
        while True:
            result = manager.poll(job_id)
            print(f"\r{result.status.value:<9} {bar(result.progress)} {result.progress_message:<20}",
                  end="", flush=True)
            if result.status.is_terminal:
                break
            time.sleep(0.1)
        print()
        if result.status is JobStatus.COMPLETED:
            took = (result.completed_at - result.started_at).total_seconds()
            print(f"result: {result.result} (ran {took:.2f}s, {result.attempts} attempt)")
        else:
            print(f"job ended {result.status.value}: {result.error}")
            sys.exit(1)


if __name__ == "__main__":
    main()
