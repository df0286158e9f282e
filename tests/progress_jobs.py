"""`report_progress_for`: a job body that reports progress until its time is up, for tests
of cancels that reach a running job (it raises `JobCancelled` at the report after one)."""

from __future__ import annotations

import time

from jobcore import current_job


def report_progress_for(seconds: float) -> str:
    """Report progress every 10 ms for `seconds`, then complete (unless cancelled)."""
    context = current_job()
    assert context is not None
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        context.progress(0.5)
        time.sleep(0.01)
    return "ran to its end"
