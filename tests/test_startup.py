"""What `import jobcore` costs a process that starts: the heavy standard-library modules
that only some jobs or channels need are imported when first used, not at start-up
(every worker process pays its imports before it runs a job)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

# Each costs milliseconds to import, and most processes never use them: asyncio (coroutine
# jobs), multiprocessing (isolated jobs), smtplib/ssl/email (the email channel),
# urllib.request/http.client (the webhook channel).
DEFERRED = ("asyncio", "multiprocessing", "smtplib", "ssl", "email.message", "urllib.request",
            "http.client")


def _modules_after(code: str) -> set[str]:
    """The modules loaded in a fresh interpreter once `code` has run."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True,
                         text=True, timeout=60).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_importing_jobcore_defers_what_only_some_jobs_and_channels_need(tmp_path: Any) -> None:
    # given the modules a bare interpreter in this environment loads anyway
    baseline = _modules_after("pass")
    # when jobcore is imported and a manager runs a plain job on a SQLite file
    loaded = _modules_after(f"""
import jobcore
manager = jobcore.JobManager({str(tmp_path / "jobs.db")!r}, immediate=True)
manager.register_function("double", lambda x: 2 * x)
assert manager.wait(manager.enqueue(jobcore.Job(function_name="double", args=(4,)))).result == 8
manager.close()
""") - baseline
    # then jobcore was loaded, and none of the deferred modules
    assert "jobcore.manager" in loaded
    assert sorted(set(DEFERRED) & loaded) == []


def test_a_coroutine_job_and_an_isolated_one_load_what_they_need(tmp_path: Any) -> None:
    # when a manager runs a coroutine job, and checks a job meant for a child process
    loaded = _modules_after(f"""
import jobcore
manager = jobcore.JobManager({str(tmp_path / "jobs.db")!r}, immediate=True)
async def seven():
    return 7
manager.register_function("seven", seven)
assert manager.wait(manager.enqueue(jobcore.Job(function_name="seven"))).result == 7
manager.register_function("abs", abs)
manager.enqueue(jobcore.Job(function_name="abs", args=(-1,), isolation="process"))
manager.close()
""")
    # then asyncio and multiprocessing were imported on the way
    assert {"asyncio", "multiprocessing"} <= loaded
