"""Ending the subprocesses the tests start, their pipes included."""

from __future__ import annotations

import subprocess
from typing import Any


def close_pipes(process: "subprocess.Popen[Any]") -> None:
    """Close the pipes of `process`, once it has ended and what was wanted of them was
    read (a `Popen`'s are otherwise left to the collector, which Python 3.13 warns of)."""
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            stream.close()
