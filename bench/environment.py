"""The benchmark's environment: its own venv with the peers (bench/.venv), and what is
recorded about the machine and the code measured. No measuring here.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from typing import Any

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
VENV = os.path.join(BENCH, ".venv")
# Pinned to versions seen working here (litequeue releases after 0.9 need Python 3.12+).
PEER_REQUIREMENTS = ["huey==3.5.4", "persist-queue==1.1.0", "litequeue==0.9"]
# jobcore's PostgreSQL extra, for the opt-in "jobcore-postgres" engine (engines.PG_DSN_ENV).
POSTGRES_REQUIREMENTS = ["psycopg[binary]>=3.1"]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def bootstrap(script: str) -> None:
    """Build bench/.venv with the peers if needed, then re-run this script inside it."""
    if os.path.realpath(sys.prefix) == os.path.realpath(VENV):
        return
    python = os.path.join(VENV, "bin", "python")
    marker = os.path.join(VENV, "bench-peers.json")
    try:
        if not os.path.exists(python):
            log(f"creating {VENV} ...")
            subprocess.run([sys.executable, "-m", "venv", VENV], check=True, timeout=300)
        status: dict[str, Any] = {}
        if os.path.exists(marker):
            with open(marker) as f:
                status = json.load(f)
        installed = status.get("installed", [])
        failed: dict[str, str] = {}
        wanted = PEER_REQUIREMENTS + (POSTGRES_REQUIREMENTS if os.environ.get("JOBCORE_BENCH_PG_DSN") else [])
        for requirement in wanted:
            if requirement in installed:
                continue
            log(f"pip install {requirement} into {VENV} ...")
            done = subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                                   requirement], capture_output=True, text=True, timeout=600)
            if done.returncode == 0:
                installed.append(requirement)
            else:
                lines = [line for line in done.stderr.splitlines() if line.strip()]
                failed[requirement] = lines[-1] if lines else f"pip exited {done.returncode}"
                log(f"  could not install {requirement}: {failed[requirement]}")
        with open(marker, "w") as f:
            json.dump({"installed": installed, "failed": failed}, f, indent=1)
    except (OSError, subprocess.SubprocessError) as exc:
        log(f"could not build the benchmark venv ({exc}); peers will be n/a")
        return
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    os.execve(python, [python, os.path.abspath(script), *sys.argv[1:]], env)


def machine() -> dict[str, Any]:
    import sqlite3
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    except OSError:
        pass
    memory = "?"
    try:
        with open("/proc/meminfo") as f:
            memory = f"{int(f.readline().split()[1]) / 2**20:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "memory": memory, "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version, "platform": platform.platform(),
            "tmpdir": tempfile.gettempdir(), "jobcore": _jobcore_revision()}


CODE_ENV = "JOBCORE_BENCH_CODE"   # the directory children import jobcore from


def snapshot_jobcore() -> str:
    """Copy the work tree's jobcore/ to a temporary directory and return it: every child
    of one run then measures the same code, even if the work tree changes meanwhile."""
    import shutil
    target = tempfile.mkdtemp(prefix="jobcore-bench-code-")
    shutil.copytree(os.path.join(ROOT, "jobcore"), os.path.join(target, "jobcore"),
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


def code_digest(code_dir: str) -> str:
    """A short hash of the jobcore sources measured, to tell two runs' code apart."""
    import hashlib
    digest = hashlib.sha256()
    package = os.path.join(code_dir, "jobcore")
    for folder, dirs, files in sorted(os.walk(package)):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            digest.update(os.path.relpath(path, package).encode())
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()[:12]


def _jobcore_revision() -> str:
    """The commit measured, and whether jobcore/ had uncommitted changes (read-only git)."""
    try:
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "jobcore"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return (head or "?") + (" with uncommitted changes in jobcore/" if dirty else "")


def loadavg() -> str:
    """1, 5 and 15 minute load averages: other work on the machine skews every figure."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def peer_status() -> dict[str, Any]:
    marker = os.path.join(VENV, "bench-peers.json")
    status: dict[str, Any] = {"venv": os.path.realpath(sys.prefix) == os.path.realpath(VENV)}
    if os.path.exists(marker):
        with open(marker) as f:
            status.update(json.load(f))
    return status
