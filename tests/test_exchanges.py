"""Exchanges: finished attempts recorded together with the next claims, by a worker that
needs work or by the dispatcher. Outcomes a busy worker leaves for later are recorded
within RECORD_WITHIN all the same, and a failing repository is retried, never lost."""

from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import Any, Sequence

import pytest

from jobcore import FakeClock, Job, JobManager, JobStatus, MemoryRepository, RetryableError, SQLiteRepository
from jobcore.errors import RepositoryError
from jobcore.repository.base import JobRepository, Settlement
from mixed_repositories import repository_with
from waiting import Sleeps, count_wake_ups, wait_until


def test_an_outcome_left_for_later_is_recorded_while_every_worker_is_busy(repository: JobRepository,
                                                                          make_manager: Any) -> None:
    # given two workers holding four claimed jobs: a tiny one first, then three that block
    manager: JobManager = make_manager(repository, max_workers=2)
    release = threading.Event()
    manager.register_function("tiny", lambda: "done")
    manager.register_function("block", lambda: release.wait(10))
    tiny = Job(function_name="tiny", priority=9)
    blocking = [Job(function_name="block", priority=5 - n) for n in range(3)]
    manager.enqueue_many([tiny, *blocking])
    manager._pool._state.pacing.assume_short_jobs()  # short jobs: two more are claimed in reserve
    try:
        # when the tiny job's worker goes straight on to a buffered job that blocks
        manager.start()
        result = manager.wait(tiny.id, timeout=5)
        # then its outcome was recorded although neither worker came back to record it
        assert result.status == JobStatus.COMPLETED and result.result == "done"
        assert manager.poll(blocking[0].id).status == JobStatus.RUNNING
        assert manager.poll(blocking[1].id).status == JobStatus.RUNNING
    finally:
        release.set()
    for job in blocking:
        assert manager.wait(job.id, timeout=10).status == JobStatus.COMPLETED


class FailingRecording(MemoryRepository):
    """`apply` raises a storage error the first `failures` times it has outcomes to record."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.failed = 0
        self.threads: list[str] = []  # who made each exchange that recorded something

    def apply(self, settlements: Sequence[Settlement], *args: Any, **kwargs: Any) -> Any:
        if settlements:
            self.threads.append(threading.current_thread().name)
            if self.failed < self.failures:
                self.failed += 1
                raise RepositoryError("disk I/O error (injected)")
        return super().apply(settlements, *args, **kwargs)


def test_outcomes_whose_recording_failed_are_recorded_later_and_run_once(make_manager: Any) -> None:
    # given a repository that fails the first three recordings, and 40 tiny jobs
    repository = FailingRecording(failures=3)
    manager: JobManager = make_manager(repository, max_workers=2)
    runs: list[int] = []
    manager.register_function("task", runs.append)
    ids = manager.enqueue_many([Job(function_name="task", args=(n,)) for n in range(40)])
    # when they run
    manager.start()
    results = [manager.wait(job_id, timeout=10) for job_id in ids]
    # then every job completed, and ran exactly once: no outcome was lost or re-run
    assert repository.failed == 3
    assert all(r.status == JobStatus.COMPLETED and r.attempts == 1 for r in results)
    assert sorted(runs) == list(range(40))


def test_workers_record_their_own_outcomes_while_work_is_queued(make_manager: Any) -> None:
    # given many tiny jobs queued before the workers start
    repository = FailingRecording(failures=0)
    manager: JobManager = make_manager(repository, max_workers=2)
    manager.register_function("task", lambda: None)
    ids = manager.enqueue_many([Job(function_name="task") for _ in range(300)])
    manager._pool._state.pacing.assume_short_jobs()  # short jobs: two claimed in reserve, four per batch
    # when they are drained
    manager.start()
    assert all(manager.wait(job_id, timeout=10).status == JobStatus.COMPLETED for job_id in ids)
    # then worker threads made exchanges themselves (no hand-off to the dispatcher per
    # job), and outcomes were recorded in batches, not one by one
    assert any(name.startswith("jobcore-worker") for name in repository.threads)
    assert len(repository.threads) < len(ids) / 2


class ThreadsApplying:
    """Notes the thread making each `apply` call. Mixed into a repository class."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        self.threads: list[str] = []

    def apply(self, *args: Any, **kwargs: Any) -> Any:
        self.threads.append(threading.current_thread().name)
        return super().apply(*args, **kwargs)  # type: ignore[misc]


@pytest.fixture(params=["memory", "sqlite"])
def noted_repository(request: Any, tmp_path: Any) -> JobRepository:
    return repository_with(ThreadsApplying, request, tmp_path)


def test_a_chain_of_dependent_jobs_runs_on_one_worker_with_no_dispatcher_hand_over(
        noted_repository: Any, make_manager: Any) -> None:
    # given a chain of 30 jobs, each depending on the one before, queued before the start
    manager: JobManager = make_manager(noted_repository, max_workers=4)
    ran: list[int] = []
    manager.register_function("link", ran.append)
    chain: list[Job] = []
    for n in range(30):
        chain.append(Job(function_name="link", args=(n,), depends_on=[chain[-1].id] if chain else []))
    manager.enqueue_many(chain)
    notified = count_wake_ups(manager._pool._state.dispatch_needed)  # the dispatcher's wake-ups
    # when it runs
    manager.start()
    assert manager.wait(chain[-1].id, timeout=10).status == JobStatus.COMPLETED
    # then they ran in order, and the worker that ran each job recorded its outcome and
    # claimed the dependent it released itself: the dispatcher claimed the first job at
    # most (it made two exchanges a link: one to record, woken by the worker, and one to
    # claim, woken by the queue), and was hardly woken (the queue woke it for each
    # dependent released, while the worker that released it went on to claim it)
    assert ran == list(range(30))
    by_dispatcher = [name for name in noted_repository.threads if not name.startswith("jobcore-worker")]
    assert len(by_dispatcher) <= 1, by_dispatcher
    assert notified[0] <= 3, notified[0]
    # and where the store can claim the dependents an outcome releases (SQLite), each link
    # was one exchange: the outcome recorded, the next job claimed (two before)
    if noted_repository.claims_released:
        assert len(noted_repository.threads) <= 32, len(noted_repository.threads)


def test_dependents_released_together_run_at_once_on_the_workers_free(repository: JobRepository,
                                                                     make_manager: Any) -> None:
    # given two dependents of one job, the better one blocking until released, the other a
    # job's own function (no registered name), for a manager with two workers
    manager: JobManager = make_manager(repository, max_workers=2)
    release, ran = threading.Event(), threading.Event()
    manager.register_function("quick", lambda: None)
    manager.register_function("long", lambda: release.wait(10) and None)

    def own() -> None:
        ran.set()

    first = Job(function_name="quick")
    manager.enqueue_many([first, Job(function_name="long", depends_on=[first.id], priority=9),
                          Job(function=own, depends_on=[first.id])])
    # when the first completes, releasing both (the worker that recorded it goes on to
    # the better one)
    manager.start()
    try:
        # then the other runs on the second worker meanwhile, not after the blocking one
        assert ran.wait(5), "the second dependent waited for the first to end"
    finally:
        release.set()


@pytest.mark.parametrize("durability", ["normal", "full"])
def test_a_drain_on_sqlite_records_every_outcome_once(tmp_path: Any, make_manager: Any,
                                                      durability: str) -> None:
    # given a SQLite file with tiny jobs, some failing for good
    manager: JobManager = make_manager(SQLiteRepository(str(tmp_path / "jobs.db"), durability=durability),
                                       max_workers=4)

    def task(n: int) -> int:
        if n % 7 == 0:
            raise ValueError(f"job {n} fails")
        return n

    manager.register_function("task", task)
    ids = manager.enqueue_many([Job(function_name="task", args=(n,), max_retries=0) for n in range(200)])
    # when the workers drain them
    manager.start()
    results = [manager.wait(job_id, timeout=10) for job_id in ids]
    # then each ended as its function did, after one attempt
    for n, result in enumerate(results):
        assert result.attempts == 1
        if n % 7 == 0:
            assert result.status == JobStatus.FAILED and result.error_type == "ValueError"
        else:
            assert result.status == JobStatus.COMPLETED and result.result == n
    assert manager.get_stats()["running"] == 0



def test_buffered_jobs_that_block_run_on_every_worker_at_once(repository: JobRepository,
                                                              make_manager: Any) -> None:
    # given four workers and eight claimed jobs that each wait until four run together
    manager: JobManager = make_manager(repository, max_workers=4)
    barrier = threading.Barrier(4)
    manager.register_function("meet", lambda: barrier.wait(timeout=5))
    ids = manager.enqueue_many([Job(function_name="meet", max_retries=0) for _ in range(8)])
    manager._pool._state.pacing.assume_short_jobs()  # short jobs: all eight are claimed at once
    # when they run (one idle worker is woken, and each wakes the next while jobs wait)
    manager.start()
    results = [manager.wait(job_id, timeout=10) for job_id in ids]
    # then every worker joined in: no job's barrier timed out
    assert [r.status for r in results] == [JobStatus.COMPLETED] * 8


class CountingClaims(SQLiteRepository):
    """Counts `apply` calls that tried to claim jobs."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.claiming = 0

    def apply(self, settlements: Sequence[Settlement], claim_ids: Sequence[str], *args: Any,
              **kwargs: Any) -> Any:
        if claim_ids:
            self.claiming += 1
        return super().apply(settlements, claim_ids, *args, **kwargs)


def test_ids_other_processes_took_are_forgotten_after_one_vain_claim(tmp_path: Any,
                                                                      make_manager: Any) -> None:
    # given a manager whose ready queue holds the ids of 100 stored jobs (as a read of the
    # store fills it) and, before it started, another manager on the same file ran them
    # all: every id in its ready queue is stale
    path = str(tmp_path / "jobs.db")
    repository = CountingClaims(path)
    late: JobManager = make_manager(repository, max_workers=4)
    late.register_function("task", lambda: None)
    ids = late.enqueue_many([Job(function_name="task") for _ in range(100)])
    late._queue.push_ready(repository.ready(["task"], 1_000))
    other: JobManager = make_manager(path, max_workers=4)
    other.register_function("task", lambda: None)
    other.start()
    assert all(other.wait(job_id, timeout=10).status == JobStatus.COMPLETED for job_id in ids)
    other.stop()
    # when the first manager starts
    late.start()
    deadline = time.monotonic() + 5
    while not late._pool.idle and time.monotonic() < deadline:
        time.sleep(0.005)
    # then one claim that came back empty emptied its queue: it did not try the other
    # ids four at a time, a write transaction each
    assert late._pool.idle
    assert repository.claiming == 1


class StealsOnce(SQLiteRepository):
    """Stands in for another process: the first claim naming ids finds them taken (by
    worker "elsewhere", just before). Records each claim made: (ids named, up_to)."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.stolen: list[str] = []
        self.claims: list[tuple[list[str], Any]] = []

    def apply(self, settlements: Sequence[Settlement], claim_ids: Sequence[str], worker_id: str,
              now: float, lease_expires_at: float, top_up: Any = None, up_to: Any = None) -> Any:
        if claim_ids and not self.stolen:
            taken = super().apply([], claim_ids, "elsewhere", now, lease_expires_at)[1]
            self.stolen = [record.id for record in taken]
        if claim_ids or up_to:
            self.claims.append((list(claim_ids), up_to))
        return super().apply(settlements, claim_ids, worker_id, now, lease_expires_at, top_up, up_to)


def test_a_manager_whose_ids_others_take_claims_the_best_stored_jobs_by_number(
        tmp_path: Any, make_manager: Any) -> None:
    # given 40 queued jobs, the fifth of which fails once (retried at once), and another
    # process that takes the first ids this manager names
    repository = StealsOnce(str(tmp_path / "jobs.db"))
    manager: JobManager = make_manager(repository, max_workers=2, clock=FakeClock())
    ran: list[int] = []
    manager.register_function("task", ran.append)
    failures: list[int] = []

    def flaky(n: int) -> None:
        if not failures:
            failures.append(n)
            raise RetryableError("once")
        ran.append(n)
    manager.register_function("flaky", flaky)
    jobs = [Job(function_name="flaky" if n == 4 else "task", args=(n,), retry_delay=0.0,
                retry_jitter=False) for n in range(40)]
    ids = manager.enqueue_many(jobs)
    # when it runs them
    manager.start()
    results = [manager.wait(job_id, timeout=10) for job_id in ids[2:]]
    # then it ran every job but the two the other took, once each (the flaky one twice)
    assert sorted(repository.stolen) == sorted(ids[:2])
    assert [r.status for r in results] == [JobStatus.COMPLETED] * 38
    assert sorted(ran) == list(range(2, 40)) and manager.poll(ids[4]).attempts == 2  # type: ignore[union-attr]
    # after that first claim, it named no pending id: it asked for the store's best by
    # number, naming only the due retry, until the store ran out of ready jobs
    # (how much more such a claim asks for depends on the room left at that moment; the
    # test below pins it down)
    named = [claim_ids for claim_ids, _ in repository.claims[1:]]
    assert [claim_ids for claim_ids in named if claim_ids] == [[ids[4]]]
    assert any(up_to for claim_ids, up_to in repository.claims[1:] if not claim_ids)
    wait_until(lambda: not manager._pool.claims_from_store, 5, "the mode to end", pause=0.002)
    # and a job queued now runs as usual
    later = manager.enqueue(Job(function_name="task", args=(99,)))
    assert manager.wait(later, timeout=10).status == JobStatus.COMPLETED


def test_a_claim_from_the_store_names_due_timers_and_asks_for_the_rest_of_its_room(
        tmp_path: Any, make_manager: Any) -> None:
    # given a manager in the mode where other processes take the ids it queued, with
    # pending jobs queued and a scheduled job now due
    clock = FakeClock()
    repository = StealsOnce(str(tmp_path / "jobs.db"))
    repository.stolen = ["nothing"]  # no other process this time
    manager: JobManager = make_manager(repository, max_workers=2, clock=clock)
    manager.register_function("task", lambda: None)
    pending = manager.enqueue_many([Job(function_name="task") for _ in range(5)])
    due = manager.enqueue(Job(function_name="task",
                              scheduled_at=datetime.fromtimestamp(clock.time() + 10)))
    clock.advance(20)
    manager._load_queue()  # queued as `start` queues them (an enqueue before it leaves them stored)
    # when an exchange with room for three jobs is made in that mode
    assert manager._pool._exchanges.run([], 3, True, by_worker=False)
    # then it named the due job alone, asked the store for three in all, and got the due
    # job and the two best pending ones
    assert repository.claims == [([due], 3)]
    assert sorted(r.id for r in manager._pool._state.buffer) == sorted([due, *pending[:2]])


def test_ready_ids_are_not_reloaded_while_claims_come_from_the_store(tmp_path: Any, make_manager: Any) -> None:
    # given a started manager whose first claimed ids another process took, its two
    # workers held up by the jobs it claimed instead
    repository = StealsOnce(str(tmp_path / "jobs.db"))
    manager: JobManager = make_manager(repository, max_workers=2)
    gate = threading.Event()
    manager.register_function("task", lambda: gate.wait(10))
    ids = manager.enqueue_many([Job(function_name="task") for _ in range(20)])
    loads: list[int] = []  # the reads of ready ids made by this thread (the housekeeper makes its own)
    ready, here = repository.ready, threading.get_ident()

    def counted_ready(*args: Any) -> Any:
        if threading.get_ident() == here:
            loads.append(1)
        return ready(*args)

    repository.ready = counted_ready  # type: ignore[method-assign]
    manager.start()
    try:
        wait_until(lambda: manager._pool.claims_from_store, 5, "claims by number", pause=0.002)
        # when the queue is reloaded (as the housekeeper does every poll_interval)
        loads.clear()
        manager._load_queue()
        # then no ready id was read: claims take the store's best anyway
        assert loads == []
    finally:
        gate.set()
    assert all(manager.wait(job_id, timeout=10).status == JobStatus.COMPLETED for job_id in ids[2:])
    # and once the store ran out of ready jobs, reloads read them again
    wait_until(lambda: not manager._pool.claims_from_store, 5, "the mode to end", pause=0.002)
    manager._load_queue()
    assert loads == [1]


def test_dropping_stale_ids_keeps_due_timers_and_jobs_queued_since() -> None:
    # given a ready queue with plain pending ids, a due retry (it has a run_at), a pending
    # id queued after the vain claim began (a larger seq), and a timer not yet due
    from jobcore.clock import FakeClock
    from jobcore.queue import ReadyQueue
    from jobcore.repository.base import QueueEntry
    clock = FakeClock(1000.0)
    queue = ReadyQueue(clock)
    queue.push_ready([QueueEntry(f"old{n}", 0, n, None, "task") for n in range(1, 6)])
    queue.push(QueueEntry("retry", 0, 2, 990.0, "task"))
    queue.push(QueueEntry("later", 0, 3, 2000.0, "task"), due_at=2000.0)
    known = queue.high_seq
    queue.push(QueueEntry("new", 0, known + 1, None, "task"))
    # when the ids up to that point are dropped as stale
    dropped = queue.drop_stale(known)
    # then only the plain pending ids went; each kept one can still be taken, once
    assert dropped == 5
    assert [e.job_id for e in queue.pop_ready(10)] == ["retry", "new"]
    queue.push(QueueEntry("old1", 0, 1, None, "task"))  # forgotten, so it can be queued again
    assert [e.job_id for e in queue.pop_ready(10)] == ["old1"]
    clock.advance(1000.0)
    assert [e.job_id for e in queue.pop_ready(10)] == ["later"]


def test_ids_taken_while_a_store_read_is_under_way_are_not_queued_again_by_it() -> None:
    # given a read of the store under way that saw two jobs waiting
    from jobcore.clock import FakeClock
    from jobcore.queue import ReadyQueue
    from jobcore.repository.base import QueueEntry
    queue = ReadyQueue(FakeClock(1000.0))
    seen = [QueueEntry(name, 0, seq, None, "task") for seq, name in enumerate("ab", 1)]
    queue.push_ready(seen)
    with queue.reading() as read:
        # when a worker takes one (to claim it) before the read queues what it saw
        assert [e.job_id for e in queue.pop_ready(1)] == ["a"]
        for entry in seen:
            queue.push(entry, read=read)
    # then the one taken is not queued again (its claim would come back stale: a lone
    # manager then took its ids for others' and claimed from the store), the other is
    assert [e.job_id for e in queue.pop_ready(10)] == ["b"]
    queue.push(seen[0])  # (queued anew, by whoever stores it again, it is)
    assert [e.job_id for e in queue.pop_ready(10)] == ["a"]


def test_claims_from_the_store_take_a_due_timer_by_id_only_if_it_is_as_good_as_the_best_pending() -> None:
    # given a queue of pending ids at priority 10 and 5, and due timers at 0 and 20
    from jobcore.clock import FakeClock
    from jobcore.queue import ReadyQueue
    from jobcore.repository.base import QueueEntry
    queue = ReadyQueue(FakeClock(1000.0))
    queue.push_ready([QueueEntry("high", 10, 1, None, "task"), QueueEntry("mid", 5, 2, None, "task")])
    queue.push(QueueEntry("low-due", 0, 3, 990.0, "task"))
    queue.push(QueueEntry("urgent-due", 20, 4, 990.0, "task"))
    # when the pending ids are dropped as stale (claims go to the store's best by number)
    dropped, best = queue.drop_stale_pending(queue.high_seq)
    # then the best of them is told, and only the due timer as good as it is taken by id
    assert (dropped, best) == (2, 10)
    assert [e.job_id for e in queue.pop_ready(10, at_least=best)] == ["urgent-due"]
    assert [e.job_id for e in queue.pop_ready(10)] == ["low-due"]


def test_a_manager_claiming_from_the_store_runs_due_low_jobs_after_the_higher_ones_waiting(
        tmp_path: Any, make_manager: Any) -> None:
    # given a manager claiming from the store (as once other processes took its ids, or a
    # reload queued stale ones) through HIGH jobs, the first of them running
    from datetime import datetime, timedelta
    from jobcore import FakeClock
    clock = FakeClock()
    manager: JobManager = make_manager(str(tmp_path / "jobs.db"), max_workers=1, clock=clock)
    ran: list[str] = []
    go = threading.Event()

    def task(name: str) -> None:
        ran.append(name)
        if name == "high0":
            assert go.wait(10)

    manager.register_function("task", task)
    due = datetime.fromtimestamp(clock.time()) + timedelta(seconds=1)
    manager.enqueue_many([Job(function_name="task", args=(f"low{n}",), priority=0, scheduled_at=due)
                          for n in range(5)])
    manager.enqueue_many([Job(function_name="task", args=(f"high{n}",), priority=10) for n in range(20)])
    manager._pool._state.from_store = True
    manager.start()
    wait_until(lambda: ran == ["high0"], 10, "the first HIGH job to start")
    # when the LOW jobs come due meanwhile
    clock.advance(2)
    go.set()
    wait_until(lambda: len(ran) == 25, 10, "every job to run")
    # then every HIGH job ran first (the due LOW ones were claimed by id ahead of the
    # store's best, by number)
    assert ran[:20] == [f"high{n}" for n in range(20)]


class StealsAndRaces(SQLiteRepository):
    """During the first claim naming ids, stands in for another process that took them
    all (worker "elsewhere") and for a producer thread here that stored and queued one
    more job meanwhile (`race`, set by the test). Records the ids each claim named."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.race: Any = None
        self.named: list[list[str]] = []

    def apply(self, settlements: Sequence[Settlement], claim_ids: Sequence[str], worker_id: str,
              now: float, lease_expires_at: float, top_up: Any = None, up_to: Any = None) -> Any:
        if claim_ids:
            if not self.named:
                super().apply([], claim_ids, "elsewhere", now, lease_expires_at)
                self.race()
            self.named.append(list(claim_ids))
        return super().apply(settlements, claim_ids, worker_id, now, lease_expires_at, top_up, up_to)


def test_a_job_claimed_by_number_is_not_named_in_a_later_claim(tmp_path: Any, make_manager: Any) -> None:
    # given two queued jobs that another process takes as the first claim names them,
    # while a job enqueued here meanwhile is the only ready one left, so that claim tops
    # up with it by number
    repository = StealsAndRaces(str(tmp_path / "jobs.db"))
    manager: JobManager = make_manager(repository, max_workers=2)
    ran: list[str] = []
    manager.register_function("task", ran.append)
    manager.enqueue_many([Job(function_name="task", args=(name,)) for name in ("a", "b")])
    racer = manager._enqueuer.record_for(Job(function_name="task", args=("racer",)), time.time())

    def race() -> None:
        repository.insert([racer], time.time())
        manager._pool.enqueue_entries([racer.queue_entry()])
    repository.race = race
    # when the manager runs
    manager.start()
    wait_until(lambda: bool(repository.named), 5, "the first claim", pause=0.002)
    assert manager.wait(racer.id, timeout=10).status == JobStatus.COMPLETED
    wait_until(lambda: manager._pool.idle, 5, "the pool to go idle", pause=0.002)
    # then it ran the racer once, and never named its id in a claim: its queued id was
    # forgotten when it was claimed by number (else the next claim names it in vain,
    # its miss is topped up by number, and so on while jobs keep coming)
    assert ran == ["racer"]
    assert len(repository.named) == 1 and racer.id not in repository.named[0]


def test_a_discarded_id_is_skipped_and_can_be_queued_again() -> None:
    # given a ready queue holding three ids and a timer
    from jobcore.clock import FakeClock
    from jobcore.queue import ReadyQueue
    from jobcore.repository.base import QueueEntry
    clock = FakeClock(1000.0)
    queue = ReadyQueue(clock)
    queue.push_ready([QueueEntry(name, 0, seq, None, "task") for seq, name in enumerate("abc", 1)])
    queue.push(QueueEntry("t", 0, 4, 1500.0, "task"), due_at=1500.0)
    # when two of the ready ids and the timer are discarded, and one of them queued again
    queue.discard(["a", "b", "t", "unknown"])
    assert len(queue) == 1 and not queue.drop_stale(0)
    queue.push(QueueEntry("b", 9, 5, None, "task"))
    # then only live entries come out, each once, and the discarded timer never fires
    assert len(queue) == 2
    assert [e.job_id for e in queue.pop_ready(10)] == ["b", "c"]
    assert queue.next_due() is None
    clock.advance(1000.0)
    assert not queue.has_ready() and queue.pop_ready(10) == [] and len(queue) == 0


def test_a_failure_acting_on_an_outcome_does_not_stall_the_manager(repository: JobRepository,
                                                                   make_manager: Any) -> None:
    # given a manager whose bookkeeping after the first recorded outcome raises once
    manager: JobManager = make_manager(repository, max_workers=2)
    manager.register_function("task", lambda n: n)
    recorder = manager._pool._recorder
    settled = recorder._on_settled
    failed: list[str] = []

    def flaky(jobs: list[tuple[str, Any]]) -> None:
        if not failed:
            failed.append(jobs[0][0])
            raise RuntimeError("bookkeeping bug (injected)")
        settled(jobs)

    recorder._on_settled = flaky
    ids = manager.enqueue_many([Job(function_name="task", args=(n,)) for n in range(50)])
    # when the jobs run
    manager.start()
    # then every job completed, the one whose bookkeeping failed included
    results = [manager.wait(job_id, timeout=10) for job_id in ids]
    assert failed and all(r.status == JobStatus.COMPLETED for r in results)
    assert [r.result for r in results] == list(range(50))


def test_a_job_queued_again_beside_its_discarded_entry_is_ordered_without_comparing_entries() -> None:
    # given a job whose due timer came due (its entry has a run_at), discarded and queued
    # again ready (the same priority and seq, no run_at), as retry() of it does
    from jobcore.clock import FakeClock
    from jobcore.queue import ReadyQueue
    from jobcore.repository.base import QueueEntry
    clock = FakeClock(1000.0)
    queue = ReadyQueue(clock)
    queue.push(QueueEntry("job", 5, 7, 990.0, "task"), due_at=990.0)
    assert queue.has_ready()  # released from the timers into the ready heap
    queue.discard(["job"])
    # when it is queued again, beside its old item: heapq compared the two entries
    # (TypeError: None < float), in retry() and then in a worker thread
    queue.push(QueueEntry("job", 5, 7, None, "task"))
    queue.push(QueueEntry("other", 5, 7, None, "task"))
    # then it comes out once, live, with the other
    assert sorted(entry.job_id for entry in queue.pop_ready(10)) == ["job", "other"]
    assert queue.pop_ready(10) == []


def test_a_job_that_returns_in_time_is_not_timed_out_while_the_engine_finishes_its_attempt(
        tmp_path: Any) -> None:
    # given a job with a 0.5 s timeout whose last progress report waits to be written when
    # it returns, and a write lock another connection holds for 1.5 s meanwhile (the
    # deadline comes before the manager's first heartbeat, which would wait on it too)
    import sqlite3
    path = str(tmp_path / "jobs.db")
    manager = JobManager(SQLiteRepository(path), max_workers=1).start()
    locked, release = threading.Event(), threading.Event()

    def hold_lock() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        locked.set()
        release.wait(1.5)
        conn.execute("COMMIT")
        conn.close()

    def reports(progress_callback: Any) -> str:
        progress_callback(0.5, "first")   # written at once
        threading.Thread(target=hold_lock).start()
        assert locked.wait(10)
        progress_callback(0.9, "second")  # within the interval: written when the attempt ends
        return "done"

    try:
        manager.register_function("reports", reports)
        job_id = manager.enqueue(Job(function_name="reports", timeout=0.5, max_retries=0))
        result = manager.wait(job_id, timeout=30)
        # then it completed: its function returned within 0.5 s (the write of its last
        # report waited out the lock after that: it was failed as JobTimeout, result lost)
        assert (result.status, result.result, result.error_type) == (JobStatus.COMPLETED, "done", None)
    finally:
        release.set()
        manager.close()


def test_a_fault_reading_the_ready_queue_does_not_wedge_the_pool() -> None:
    # given a manager whose ready queue fails once when an exchange reads it (as a heap
    # comparing entries once did): the thread making the exchange died holding the pool's
    # one exchange, so no job ran again and stop() hung
    manager = JobManager(MemoryRepository(), max_workers=2)
    manager.register_function("echo", lambda n: n)
    real_pop, failed = manager._queue.pop_ready, threading.Event()

    def pop_once_failing(limit: int, **options: Any) -> Any:
        if not failed.is_set():
            failed.set()
            raise RuntimeError("a fault in the queue")
        return real_pop(limit, **options)

    manager._queue.pop_ready = pop_once_failing  # type: ignore[method-assign]
    ids = [manager.enqueue(Job(function_name="echo", args=(n,))) for n in range(20)]
    manager.start()
    try:
        # then the jobs still run, and stop returns
        assert [manager.wait(job_id, timeout=10).result for job_id in ids] == list(range(20))
        assert failed.is_set()
    finally:
        manager.stop(timeout=10)
        manager.close()


def test_a_job_queued_again_sooner_replaces_its_timer() -> None:
    # given timers of jobs due in an hour (another process then retried them: ready now)
    from jobcore.clock import FakeClock
    from jobcore.queue import ReadyQueue
    from jobcore.repository.base import QueueEntry
    clock = FakeClock(1000.0)
    queue = ReadyQueue(clock)
    for seq, name in enumerate("abcd", 1):
        queue.push(QueueEntry(name, 0, seq, 4600.0, "task"), due_at=4600.0)
    # when they are queued again: ready (one by one, and in a batch), due sooner, and later
    queue.push(QueueEntry("a", 0, 1, None, "task"))
    queue.push_ready([QueueEntry("b", 0, 2, None, "task")])
    queue.push(QueueEntry("c", 0, 3, 2000.0, "task"), due_at=2000.0)
    queue.push(QueueEntry("d", 0, 4, 9000.0, "task"), due_at=9000.0)
    # then the ready ones come out now, each once, and the others at their soonest time
    assert len(queue) == 4
    assert [e.job_id for e in queue.pop_ready(10)] == ["a", "b"]
    assert queue.next_due() == 2000.0
    clock.advance(1000.0)
    assert [e.job_id for e in queue.pop_ready(10)] == ["c"]
    clock.advance(10_000.0)
    assert [e.job_id for e in queue.pop_ready(10)] == ["d"] and queue.pop_ready(10) == []
    # and a ready entry is not pushed back to a timer
    queue.push(QueueEntry("e", 0, 5, None, "task"))
    queue.push(QueueEntry("e", 0, 5, 99_999.0, "task"), due_at=99_999.0)
    assert [e.job_id for e in queue.pop_ready(10)] == ["e"]


@pytest.mark.parametrize("released_claimed_too", [False, True], ids=["released-waits", "released-claimed"])
def test_make_way_hands_back_only_claims_worse_than_a_released_dependent_left_unclaimed(
        make_manager: Any, released_claimed_too: bool) -> None:
    # given an exchange that claimed a NORMAL job, and whose outcomes released a CRITICAL
    # dependent (claimed too when the claim was by number, from the store's best)
    repository = MemoryRepository()
    manager = make_manager(repository, max_workers=1)
    manager.register_function("noop", lambda: None)
    normal = manager.enqueue(Job(function_name="noop"))
    critical = manager.enqueue(Job(function_name="noop", priority=100))
    recorder = manager._pool._recorder
    now = time.time()
    wanted = [critical, normal] if released_claimed_too else [normal]
    _, claimed = repository.apply([], wanted, manager.worker_id, now, now + 60)
    claimed.sort(key=lambda record: -record.priority)
    recorder._released_now = [repository.get(critical).queue_entry()]

    # when it makes way for the released job
    kept = recorder.make_way(claimed)

    # then the NORMAL claim goes back (PENDING, its attempt not counted) only if the
    # CRITICAL job is left to claim; a claim that took it already keeps both
    if released_claimed_too:
        assert [record.id for record in kept] == [critical, normal]
        assert repository.get(normal).status is JobStatus.RUNNING
    else:
        assert kept == []
        record = repository.get(normal)
        assert (record.status, record.attempts) == (JobStatus.PENDING, 0)


class HeldClaim(SQLiteRepository):
    """The first `apply` that claims ids waits inside (`entered` set) until `gate` is set."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.held, self.entered, self.gate = True, threading.Event(), threading.Event()

    def apply(self, settlements: Sequence[Settlement], claim_ids: Sequence[str], *args: Any,
              **kwargs: Any) -> Any:
        if claim_ids and self.held:
            self.held = False
            self.entered.set()
            assert self.gate.wait(10)
        return super().apply(settlements, claim_ids, *args, **kwargs)


def test_a_job_queued_while_a_workers_claim_was_under_way_runs_on_the_idle_worker(
        tmp_path: Any, make_manager: Any, monkeypatch: Any) -> None:
    # given a manager of two workers on a fake clock (no periodic look at the store comes),
    # one job stored that blocks, and the claim of it a worker makes as the pool starts,
    # held inside the repository (its dispatcher begins once that claim is held, so that
    # it is a worker's); every later wake-up of the dispatcher counted
    repository = HeldClaim(str(tmp_path / "jobs.db"))
    manager: JobManager = make_manager(repository, max_workers=2, clock=FakeClock())
    release = threading.Event()
    manager.register_function("block", lambda: release.wait(10))
    manager.register_function("task", lambda: "done")
    blocking = manager.enqueue(Job(function_name="block"))
    dispatcher = manager._pool._dispatcher
    serve = dispatcher._serve
    monkeypatch.setattr(dispatcher, "_serve", lambda generation: repository.entered.wait(10) and serve(generation))
    sleeps = Sleeps(manager._pool._state.dispatch_needed)
    try:
        manager.start()
        assert repository.entered.wait(10)
        # when another job is queued meanwhile, and the dispatcher, asleep and told of it,
        # wakes to find that claim under way (it leaves the queue to it), before the
        # claim commits
        wait_until(sleeps.asleep, 10, "the dispatcher to sleep")
        seen = sleeps.woke
        queued = manager.enqueue(Job(function_name="task"))
        wait_until(lambda: sleeps.woke > seen, 10, "the dispatcher to wake")
        repository.gate.set()
        # then the idle worker runs the new job while the claimed one blocks on the other
        # (no one looked at the queue again: it stayed PENDING, the worker idle)
        assert manager.wait(queued, timeout=10).status == JobStatus.COMPLETED
        assert manager.poll(blocking).status == JobStatus.RUNNING  # type: ignore[union-attr]
    finally:
        repository.gate.set()
        release.set()
