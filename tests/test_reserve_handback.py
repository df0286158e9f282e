"""Jobs held in reserve (claimed for a worker, not started) while every worker is busy:
handed back after `pacing.RESERVE_HOLD` (see `Dispatcher._stale_reserve_locked`), whatever
the store does meanwhile, and no empty exchanges while a reserve cannot be had."""

from __future__ import annotations

import threading
import time
from typing import Any, Sequence

import pytest

from jobcore import Job, JobManager, JobStatus, MemoryRepository, current_job, dispatcher, pool_state
from jobcore.errors import RepositoryError

WAIT = 10.0
SLOW = 60.0  # discovery_interval and poll_interval: no look of their own within a test


class _FaultyReleases(MemoryRepository):
    """A memory store whose next hand-back (`apply` of releases) fails once: before it
    writes anything (`after=False`, a database locked), or after (a commit that failed
    once written). Counts every `apply`."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_next: bool | None = None  # None: no fault; else whether after writing
        self.applies = 0

    def apply(self, settlements: Sequence[Any], claim_ids: Sequence[str], *args: Any, **kwargs: Any) -> Any:
        self.applies += 1
        fault = self.fail_next
        if fault is not None and settlements and all(s.kind == "release" for s in settlements):
            self.fail_next = None
            if not fault:
                raise RepositoryError("injected: the database is locked")
            super().apply(settlements, claim_ids, *args, **kwargs)
            raise RepositoryError("injected: the connection was lost at commit")
        return super().apply(settlements, claim_ids, *args, **kwargs)


def _busy_with_a_reserve(store: MemoryRepository, make_manager: Any) -> tuple[JobManager, threading.Event, list[str]]:
    """A started manager of one worker, short jobs assumed (a reserve), running a job that
    blocks until the event returned is set; `ran` lists the jobs of "job" that ran."""
    manager = make_manager(store, max_workers=1, discovery_interval=SLOW, poll_interval=SLOW)
    started, release, ran = threading.Event(), threading.Event(), []

    def job(name: str) -> str:
        context = current_job()
        assert context is not None
        context.check_cancelled()
        ran.append(name)
        return name

    manager.register_function("block", lambda: started.set() or release.wait(WAIT))
    manager.register_function("job", job)
    manager._pool._state.pacing.assume_short_jobs()
    manager.start()
    manager.enqueue(Job(function_name="block"))
    assert started.wait(WAIT)
    return manager, release, ran


@pytest.mark.parametrize("after_writing", [False, True])
def test_a_job_whose_hand_back_failed_runs_once(make_manager: Any, after_writing: bool) -> None:
    # given a job held in reserve behind a running one, and a store whose hand-back of it
    # fails once (before writing, or once written)
    store = _FaultyReleases()
    store.fail_next = after_writing
    manager, release, ran = _busy_with_a_reserve(store, make_manager)
    job_id = manager.enqueue(Job(function_name="job", args=("held",)))
    # when it is handed back, and the running job then ends
    deadline = time.monotonic() + WAIT
    while store.fail_next is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert store.fail_next is None, "the hand-back was never tried"
    release.set()
    # then it runs once, now (written and put back as held, it ran with no claim, its
    # outcome was discarded, and it ran again at the next look, a minute on)
    done = manager.wait(job_id, timeout=WAIT)
    assert done.status is JobStatus.COMPLETED and done.attempts == 1
    assert ran == ["held"]


def test_a_job_cancelled_in_reserve_whose_hand_back_failed_never_runs(make_manager: Any) -> None:
    # given a job held in reserve behind a running one, cancelled there, and a store whose
    # hand-back of it fails once before writing
    store = _FaultyReleases()
    manager, release, ran = _busy_with_a_reserve(store, make_manager)
    job_id = manager.enqueue(Job(function_name="job", args=("held",)))
    assert manager.poll(job_id).status is JobStatus.RUNNING  # type: ignore[union-attr]
    store.fail_next = False
    assert manager.cancel(job_id)
    # when its hand-back fails and it is kept here, and the running job then ends
    deadline = time.monotonic() + WAIT
    while store.fail_next is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    release.set()
    # then it ends CANCELLED without running (the hand-back forgot its cancel: it ran and
    # completed)
    assert manager.wait(job_id, timeout=WAIT).status is JobStatus.CANCELLED
    assert ran == []


def test_no_exchange_is_made_for_a_reserve_that_cannot_be_had(make_manager: Any) -> None:
    # given jobs of a few milliseconds on average (a reserve held), one worker running a
    # long job, and one job queued (no more than a workers' worth: none to take in reserve)
    store = _FaultyReleases()
    manager, release, ran = _busy_with_a_reserve(store, make_manager)
    for _ in range(100):
        manager._pool._state.pacing.ran(0.005)
    job_id = manager.enqueue(Job(function_name="job", args=("queued",)))
    # when the long job runs on
    before = store.applies
    time.sleep(0.3)
    applies = store.applies - before
    release.set()
    # then no exchange is made meanwhile (the room to claim in reserve, cut to nothing in
    # each exchange, made the dispatcher begin empty ones in a loop: 35,000-94,000 a
    # second, a whole CPU)
    assert applies <= 3, applies
    assert manager.wait(job_id, timeout=WAIT).status is JobStatus.COMPLETED


class _LateReleases(MemoryRepository):
    """A memory store whose hand-backs (`apply` of releases only) land only after the next
    read of the ready jobs (a start's) that begins once one of them is under way."""

    def __init__(self) -> None:
        super().__init__()
        self.releasing, self.read = threading.Event(), threading.Event()

    def apply(self, settlements: Sequence[Any], claim_ids: Sequence[str], *args: Any, **kwargs: Any) -> Any:
        if settlements and all(s.kind == "release" for s in settlements):
            self.releasing.set()
            self.read.wait(WAIT)
        return super().apply(settlements, claim_ids, *args, **kwargs)

    def ready(self, *args: Any, **kwargs: Any) -> Any:
        found = super().ready(*args, **kwargs)
        if self.releasing.is_set():
            self.read.set()
        return found


def test_a_job_a_stop_hands_back_as_the_manager_starts_again_runs_there(make_manager: Any,
                                                                        monkeypatch: Any) -> None:
    # given a manager of one worker holding a job in reserve behind one that blocks (no
    # hand-back of its own while it runs: RESERVE_HOLD a minute), on a store whose
    # hand-backs land only when the test says
    monkeypatch.setattr(dispatcher, "RESERVE_HOLD", SLOW)
    monkeypatch.setattr(pool_state, "RESERVE_HOLD", SLOW)
    store = _LateReleases()
    manager, release, ran = _busy_with_a_reserve(store, make_manager)
    held = manager.enqueue(Job(function_name="job", args=("held",)))
    deadline = time.monotonic() + WAIT
    while manager.poll(held).status is not JobStatus.RUNNING and time.monotonic() < deadline:  # type: ignore[union-attr]
        time.sleep(0.005)
    # when it stops without waiting (handing that job back) and starts again at once, the
    # hand-back landing just after the start read the store
    manager.stop(wait=False)
    assert store.releasing.wait(WAIT)
    manager.start()
    assert store.read.is_set()
    release.set()
    # then the job runs there once the blocking job ended (PENDING in the store and queued
    # nowhere, it waited for the manager's next look, a minute on)
    assert manager.wait(held, timeout=WAIT).status is JobStatus.COMPLETED
    assert ran == ["held"]
