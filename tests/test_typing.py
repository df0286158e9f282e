"""The package's type hints hold together: `mypy --strict jobcore` finds no error, for the
oldest Python jobcore supports (3.10) and for the one running the tests.

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


# The oldest Python jobcore supports, and the one running the tests: mypy checks the
# package against each one's standard library (3.10's lacks some of 3.11's signatures:
# `Traversable.joinpath` took one name there).
VERSIONS = sorted({"3.10", f"{sys.version_info.major}.{sys.version_info.minor}"})


@pytest.mark.parametrize("version", VERSIONS)
def test_mypy_strict_finds_no_error_in_the_package(tmp_path: Path, version: str) -> None:
    done = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--python-version", version,
                           "--cache-dir", str(tmp_path), "jobcore"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)

    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("Success: no issues found")
