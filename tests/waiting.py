"""`wait_until`: the one bounded poll the tests share, for effects no event signals
(another process's writes, the end of an exchange already under way)."""

from __future__ import annotations

import time
from typing import Callable


def wait_until(condition: Callable[[], object], timeout: float, what: str = "the condition",
               pause: float = 0.02) -> None:
    """Return once `condition()` is true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(pause)
