"""bench/run.py refuses scenario and engine names it does not know, before it measures
anything, and runs what it is given otherwise (issue 6's benchmark; nothing is timed here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parent.parent / "bench" / "run.py"


def _run(tmp_path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "JOBCORE_BENCH_PG_DSN"}
    return subprocess.run([sys.executable, str(RUN), "--no-venv", "--output", str(tmp_path / "out.json"), *options],
                          capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize("options, named", [
    (("--only", "e2e,bogus"), "--only: unknown 'bogus'"),
    (("--engines", "heap,raw-batched"), "--engines: unknown 'raw-batched'"),
    (("--profile", "jobcore"), "--profile: unknown 'jobcore'"),
    (("--engines", "jobcore-postgres"), "set $JOBCORE_BENCH_PG_DSN"),
])
def test_an_unknown_name_is_a_usage_error_and_nothing_is_written(tmp_path: Path, options: tuple[str, ...],
                                                                  named: str) -> None:
    done = _run(tmp_path, *options)
    assert done.returncode == 2, done.stderr
    assert named in done.stderr
    assert not (tmp_path / "out.json").exists()


def test_known_names_run_and_write_their_figures(tmp_path: Path) -> None:
    done = _run(tmp_path, "--only", "e2e", "--engines", "heap", "--n", "200", "--reps", "1")
    assert done.returncode == 0, done.stderr
    saved = json.loads((tmp_path / "out.json").read_text())
    assert set(saved["results"]["e2e"]) == {"heap"}
    assert saved["meta"]["config"]["n"] == 200
    assert saved["results"]["e2e"]["heap"]["e2e_per_s"] > 0
