"""Checks shared by the SQLite and PostgreSQL tests of leases: a running job whose lease
is not a time, and worker entries written before entries recorded their own lease."""

from __future__ import annotations

from typing import Any, Callable

from jobcore import JobManager, JobStatus
from jobcore.repository.base import JobRepository
from jobcore.testing.contract import NOW

WAIT = 10.0


def runs_again_with_its_reason(make_manager: Callable[..., JobManager], store: Any, job_id: str,
                               reason: str) -> list[str]:
    """Start a manager on `store` that recovers leases often; `job_id` (an `echo` of 1,
    claimed by a dead worker whose lease is unreadable) must be taken back and complete on
    its second attempt, its log giving `reason`. Returns its log's messages."""
    manager = make_manager(store, lease_timeout=0.2, poll_interval=0.05)
    manager.register_function("echo", lambda x: x)
    manager.start()
    result = manager.wait(job_id, timeout=WAIT)
    assert (result.status, result.attempts, result.result) == (JobStatus.COMPLETED, 2, 1)
    messages = [entry.message for entry in manager.get_logs(job_id)]
    assert any(reason in message for message in messages), messages
    return messages


def check_entries_with_and_without_a_lease(migrated: JobRepository) -> None:
    """`migrated` holds the entry "old" (beaten at NOW) written before entries recorded
    their lease: it has none, a new one records its own, and each is reaped by its own
    (the old one by the reaper's)."""
    migrated.register_worker("new", "host-a", 102, NOW + 1, lease_timeout=60.0)
    assert [(w.worker_id, w.lease_timeout) for w in migrated.list_workers()] == [("old", None), ("new", 60.0)]
    assert migrated.reap_workers(NOW + 10 - 1.5, now=NOW + 10) == ["old"]
