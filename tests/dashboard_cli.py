"""`serve_dashboard`: run `python -m jobcore --db DB dashboard`, read its stats over HTTP,
stop it with Ctrl-C; shared by the command-line tests of each backend."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from typing import Any
from subprocesses import close_pipes


def serve_dashboard(db: str, env: dict[str, str], wait: float) -> tuple[str, str, dict[str, Any]]:
    """The dashboard's banner line, its URL and what `GET /api/stats` answered; it must
    exit 0 on SIGINT."""
    proc = subprocess.Popen([sys.executable, "-m", "jobcore", "--db", db, "dashboard", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        assert " on http://" in banner, proc.stderr.read() if proc.stderr else banner
        url = banner.split(" on ", 1)[1].split()[0]
        with urllib.request.urlopen(url + "api/stats", timeout=wait) as reply:
            stats = json.loads(reply.read())
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(wait) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(wait)
        close_pipes(proc)
    return banner, url, stats
