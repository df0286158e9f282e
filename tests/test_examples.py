"""The scripts in examples/ run from a fresh clone as their docstrings say (the README's
demo is one of them): each exits 0, prints the line that shows what it demonstrates, and
prints no traceback or warning of the engine's.

They run at once, each a real subprocess in a directory of its own (two of them start
worker processes of their own with `python -m jobcore`), so the file costs about as long
as the slowest script, not the sum."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = REPO_ROOT / "examples"
BOUND = 120.0  # seconds a script may take; each takes 1-9 s here

# Each script and a line its output must hold (what it shows, in its own words).
EXPECTED = {
    "quickstart.py": "result: {'user': 'user-42', 'sections': 12, 'status': 'ready'}",
    "batch_documents.py": "batch documents started in the order they were enqueued (FIFO):",
    "flaky_api.py": "still in the dead-letter queue: ['sync-customers']",
    "long_job.py": "poller: result {'title': 'holiday-2024', 'frames': 1200",
    "pipeline.py": "report sales-2025.csv      completed result='3 sales, total 595, largest 500'",
    "reminders.py": "declared twice, still 1 schedule(s)",
    "worker_pool.py": "jobcore worker: stopped",
}


def test_every_example_is_checked_here() -> None:
    assert sorted(EXPECTED) == sorted(path.name for path in EXAMPLES.glob("*.py"))


def test_each_example_runs_to_its_end_and_shows_what_it_demonstrates(tmp_path: Any) -> None:
    env = {key: value for key, value in os.environ.items() if key != "JOBCORE_DB"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    running = {}
    for name in EXPECTED:
        cwd = tmp_path / name.removesuffix(".py")
        cwd.mkdir()
        running[name] = subprocess.Popen([sys.executable, str(EXAMPLES / name)], cwd=cwd, env=env,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    outputs = {}
    try:
        for name, process in running.items():
            out, _ = process.communicate(timeout=BOUND)
            outputs[name] = (process.returncode, out.replace("\r", "\n"))
    finally:
        for process in running.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    for name, (code, out) in outputs.items():
        assert code == 0, f"{name} exited with {code}:\n{out[-3000:]}"
        assert EXPECTED[name] in out, f"{name} did not print {EXPECTED[name]!r}:\n{out[-3000:]}"
        # and nothing went wrong on the way (the engine's own warnings say "could not")
        assert "Traceback" not in out and "could not" not in out, f"{name}:\n{out[-3000:]}"
