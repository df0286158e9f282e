"""The package's type hints hold together: `mypy --strict jobcore` finds no error, for the
oldest Python jobcore supports (3.10) and for the one running the tests.

jobcore ships `py.typed`, so an application's type checker reads these hints; one that
names the wrong thing (`list[...]` inside a class with a `list` method meant that
method) or disagrees with the code turns into errors or silent `Any`s there."""

from __future__ import annotations

import os
import re
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


USAGE = os.path.join(ROOT, "tests", "typed_usage")


def _mypy_strict(path: str, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(cache), path],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_an_application_using_jobcore_as_documented_type_checks(tmp_path: Path) -> None:
    # given an application's code as SPEC and docs/ show it: decorators, Job's field forms,
    # a Fraction of progress, a generator of tags, the dashboard, the contract suite
    # when mypy --strict checks it, then it finds nothing (it found ten errors: decorators
    # typed Any, `tags` only a set, `depends_on` only ids, names loaded lazily Any, ...)
    done = _mypy_strict(os.path.join(USAGE, "ok.py"), tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_an_applications_mistakes_are_caught_by_the_checker(tmp_path: Path) -> None:
    # given calls that break a decorated function's signature, a plain function given as a
    # notification channel, a misspelt keyword of a class exported lazily
    path = os.path.join(USAGE, "bad.py")
    with open(path, encoding="utf-8") as source:
        expected = {(number, line.split("# E: ")[1].strip())
                    for number, line in enumerate(source, start=1) if "# E: " in line}

    # when mypy --strict checks it
    done = _mypy_strict(path, tmp_path)

    # then each is an error on its line, and nothing else is (the decorated functions were
    # Any: their calls went unchecked)
    found = {(int(match[1]), match[2]) for match in re.finditer(r"bad\.py:(\d+): error: .*\[([a-z-]+)\]$",
                                                                   done.stdout, re.MULTILINE)}
    assert len(expected) == 6
    assert found == expected, done.stdout + done.stderr
