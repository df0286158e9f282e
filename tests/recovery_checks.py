"""Checks shared by the SQLite and PostgreSQL tests of leases: a running job whose lease
is not a time, worker entries written before entries recorded their own lease, and a
store locked by another program for longer than a lease."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, ContextManager

from jobcore import Job, JobManager, JobStatus
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


LOCK_LEASE = 1.0


def runs_once_through_a_lock(make_store: Callable[[], JobRepository], make_manager: Callable[..., JobManager],
                             locked: Callable[[], ContextManager[None]]) -> None:
    """Two managers on one store (from `make_store`), one running a job; another program
    holds the store locked (`locked()`) for two and a half leases, so that every store call
    of both waits, their heartbeats among them, and then lets it go. The job must not be
    taken back: it runs once, and completes on its first attempt."""
    started, release = threading.Semaphore(0), threading.Event()

    def hold() -> str:
        started.release()
        assert release.wait(WAIT)
        return "held"

    def manager() -> JobManager:
        made = make_manager(make_store(), max_workers=1, lease_timeout=LOCK_LEASE, poll_interval=0.05)
        made.register_function("hold", hold)
        return made

    holder, other = manager(), manager()
    holder.start()
    job_id = holder.enqueue(Job(function_name="hold", max_retries=3))
    assert started.acquire(timeout=WAIT)
    other.start()
    time.sleep(LOCK_LEASE / 2)  # the other's housekeeping at work: it would take back any lapsed lease
    with locked():
        time.sleep(2.5 * LOCK_LEASE)  # every heartbeat waits, and the lease written before the lock lapses
    time.sleep(2 * LOCK_LEASE)  # time for a recovery after the lock to take the job back, if it would
    release.set()
    result = holder.wait(job_id, timeout=WAIT)
    assert (result.status, result.attempts, result.result) == (JobStatus.COMPLETED, 1, "held")
    assert not started.acquire(timeout=0)  # it started once
