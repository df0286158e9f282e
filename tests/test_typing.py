"""The package's type hints hold together: `mypy --strict jobcore` finds no error.

jobcore ships `py.typed`, so an application's type checker reads these hints; one that
names the wrong thing (`list[...]` inside a class with a `list` method meant that
method) or disagrees with the code turns into errors or silent `Any`s there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytest.importorskip("mypy", reason="TYPE CHECK SKIPPED: mypy is missing; `pip install -e '.[test]'` brings it")


def test_mypy_strict_finds_no_error_in_the_package(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path), "jobcore"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)

    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("Success: no issues found")
