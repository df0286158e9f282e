"""Isolated jobs through the manager: hard timeouts and cancels of code that never yields."""

from __future__ import annotations

import sys
import textwrap
import time
from typing import Any, Iterator

import pytest

from jobcore import Job, JobStatus

WAIT = 15.0


@pytest.fixture
def busy_module(tmp_path: Any) -> Iterator[Any]:
    (tmp_path / "busyjobs.py").write_text(textwrap.dedent("""
        def spin():
            while True:
                pass

        def quick(x):
            return x + 1

        def grab(megabytes):
            return len(bytearray(megabytes * 1024 * 1024))
    """))
    sys.path.insert(0, str(tmp_path))
    import busyjobs  # noqa: F401
    yield busyjobs
    sys.path.remove(str(tmp_path))
    sys.modules.pop("busyjobs", None)


def test_busy_loop_times_out_and_the_worker_goes_on(make_manager: Any, db_path: str, busy_module: Any) -> None:
    manager = make_manager(db_path, max_workers=1).start()
    started = time.monotonic()
    spinning = manager.enqueue(Job(function=busy_module.spin, timeout=0.5, isolation="process", max_retries=0))
    after = manager.enqueue(Job(function=busy_module.quick, args=(1,)))

    failed = manager.wait(spinning, timeout=WAIT)
    assert (failed.status, failed.error_type) == (JobStatus.FAILED, "JobTimeout")
    assert time.monotonic() - started < 3.0
    assert manager.wait(after, timeout=WAIT).result == 2
    assert manager.abandoned_threads == 0  # the child was killed, no thread left behind


def test_cancel_ends_a_running_busy_loop(make_manager: Any, db_path: str, busy_module: Any) -> None:
    manager = make_manager(db_path, max_workers=1).start()
    job_id = manager.enqueue(Job(function=busy_module.spin, isolation="process"))
    deadline = time.monotonic() + WAIT
    while manager.poll(job_id).status is not JobStatus.RUNNING and time.monotonic() < deadline:
        time.sleep(0.01)
    cancelled_at = time.monotonic()
    assert manager.cancel(job_id)
    result = manager.wait(job_id, timeout=WAIT)
    assert result.status is JobStatus.CANCELLED
    assert time.monotonic() - cancelled_at < 3.0


def test_isolated_results_and_memory_limit(make_manager: Any, db_path: str, busy_module: Any) -> None:
    manager = make_manager(db_path, max_workers=2).start()
    ok = manager.enqueue(Job(function=busy_module.quick, args=(41,), isolation="process"))
    assert manager.wait(ok, timeout=WAIT).result == 42
    if sys.platform.startswith("linux"):
        hog = manager.enqueue(Job(function=busy_module.grab, args=(2048,), isolation="process",
                                  memory_limit=512 * 1024 * 1024, max_retries=0))
        result = manager.wait(hog, timeout=WAIT)
        assert (result.status, result.error_type) == (JobStatus.FAILED, "MemoryError")


def test_what_cannot_run_isolated_is_rejected_at_enqueue(make_manager: Any, db_path: str) -> None:
    manager = make_manager(db_path)
    with pytest.raises(ValueError, match="isolation"):
        manager.enqueue(Job(function=lambda: 1, isolation="process"))
    with pytest.raises(ValueError, match="memory_limit"):
        Job(function=print, memory_limit=1024)
    assert manager.get_stats()["total"] == 0
