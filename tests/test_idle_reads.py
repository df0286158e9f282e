"""An idle manager reads the store again only when something was written to it.

Its housekeeper looks for work every `discovery_interval` and, as a safety net, reloads
its queue every `poll_interval`. On a backend whose change token moves at every write
(SQLite's data_version, the memory store's count of writes), an unchanged token means
there is nothing new to load: 100,000 jobs scheduled for later used to cost an idle
manager 8-13% of a core, re-read every second (or every 50 ms in memory). A busy manager's reloads are spaced
out by what they cost, and so are an idle one's costly reads of its scheduled jobs.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta
from typing import Any, Callable

import pytest

import jobcore.loading
from jobcore import (FakeClock, Job, JobManager, JobRepository, JobStatus, MemoryRepository, SQLiteRepository,
                     housekeeper)
from jobcore.loading import EARLIEST_SCHEDULED, FULL_READ_SHARE
from jobcore.records import record_for
from jobcore.repository import memory

WAIT = 10.0


def noop() -> None:
    return None


class Watched:
    """Counts the store's reloads (reads of its scheduled jobs, not those of only the
    earliest few: `earliest_reads`; nor the memory store's reads of its feed of the rows
    made runnable since a look: `feed_reads`) and lets the test wait for each housekeeping
    look (each `change_token` read)."""

    def __init__(self, repository: JobRepository) -> None:
        self.reloads = 0
        self.earliest_reads = 0
        self.feed_reads = 0
        self.housekeepers_reloads = 0  # (those a started manager made; `run_pending` makes others)
        self._looks = threading.Semaphore(0)
        token, scheduled = repository.change_token, repository.scheduled

        def change_token() -> Any:
            value = token()
            self._looks.release()
            return value

        def counted_scheduled(names: Any, limit: int) -> Any:
            if limit > EARLIEST_SCHEDULED:  # (not a look's read of the earliest few)
                self.reloads += 1
                self.housekeepers_reloads += threading.current_thread().name == "jobcore-housekeeper"
            else:
                self.earliest_reads += 1
            return scheduled(names, limit)

        repository.change_token = change_token  # type: ignore[method-assign]
        repository.scheduled = counted_scheduled  # type: ignore[method-assign]
        if isinstance(repository, MemoryRepository):
            since = repository.runnable_since

            def counted_since(*args: Any) -> Any:
                self.feed_reads += 1
                return since(*args)

            repository.runnable_since = counted_since  # type: ignore[method-assign]

    @property
    def reads(self) -> int:
        """The store's reads for work: reloads, and reads of the memory store's feed."""
        return self.reloads + self.feed_reads

    def started(self) -> None:
        """Wait for the housekeeper's first token read, made as its thread starts."""
        assert self._looks.acquire(timeout=WAIT)

    def pass_time(self, clock: FakeClock, seconds: float) -> None:
        """Move past `seconds` and let the housekeeper finish the look made then (the next
        look, 0.06 s later, starts only after it)."""
        clock.advance(seconds)
        assert self._looks.acquire(timeout=WAIT)
        clock.advance(0.06)
        assert self._looks.acquire(timeout=WAIT)


def _idle_manager(make_manager: Callable[..., JobManager], repository: JobRepository,
                  clock: FakeClock, *jobs: Job) -> tuple[JobManager, Watched, int]:
    """A started manager on `repository` holding `jobs`, past its first looks; with the
    store's reads counted from then on (and how many there were so far: `Watched.reads`)."""
    watched = Watched(repository)
    manager = make_manager(repository, clock=clock, poll_interval=1.0, discovery_interval=0.05)
    manager.register_function("noop", noop)
    for job in jobs:
        manager.enqueue(job)
    manager.start()
    watched.started()
    for _ in range(2):
        watched.pass_time(clock, 1.5)
    return manager, watched, watched.reads


def spend_cpu(seconds: float) -> None:
    """Keep this thread on the CPU for `seconds` of its own CPU time (a costly read being
    modelled: what jobcore measures of a read is its CPU time, not real time)."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def _make_scheduled_reads_cost(repository: JobRepository, seconds: float) -> None:
    """Each read of `repository`'s scheduled jobs costs `seconds` of CPU more (thousands
    of them, due later)."""
    scheduled = repository.scheduled

    def costly_scheduled(names: Any, limit: int) -> Any:
        if limit > EARLIEST_SCHEDULED:  # (the earliest few: a few rows of an index)
            spend_cpu(seconds)
        return scheduled(names, limit)

    repository.scheduled = costly_scheduled  # type: ignore[method-assign]


def test_an_idle_manager_does_not_reload_an_unchanged_store(repository: JobRepository,
                                                            make_manager: Callable[..., JobManager]) -> None:
    # given an idle manager with a job scheduled for later, past its first looks
    clock = FakeClock()
    later = datetime.fromtimestamp(clock.time()) + timedelta(hours=1)
    _, watched, before = _idle_manager(make_manager, repository, clock, Job(function_name="noop", scheduled_at=later))

    # when several poll intervals pass with nothing written
    for _ in range(5):
        watched.pass_time(clock, 1.5)

    # then it never read the store's jobs again
    assert watched.reads == before


@pytest.mark.parametrize("backend", ["sqlite", "memory"])
def test_an_idle_manager_reloads_after_another_writer_adds_a_job(backend: str, tmp_path: Any,
                                                                 make_manager: Callable[..., JobManager]) -> None:
    # given an idle manager, past its first looks
    clock = FakeClock()
    path = str(tmp_path / "jobs.db")
    repository: JobRepository = SQLiteRepository(path) if backend == "sqlite" else MemoryRepository()
    manager, watched, before = _idle_manager(make_manager, repository, clock)

    # when another writer stores a job: another process's manager (another connection to
    # the file), or another manager sharing the memory store
    other = SQLiteRepository(path) if backend == "sqlite" else repository
    job_id = make_manager(other, clock=clock, producer=True).enqueue(Job(function_name="noop"))
    watched.pass_time(clock, 0.06)

    # then the idle manager read the store again and ran it
    assert watched.reads > before
    assert manager.wait(job_id, timeout=WAIT).status.value == "completed"


@pytest.mark.parametrize("stocked", [True, False])
def test_a_busy_manager_spaces_out_costly_reloads_while_its_queue_is_stocked(
        stocked: bool, make_manager: Callable[..., JobManager], monkeypatch: pytest.MonkeyPatch) -> None:
    # given a busy manager (its one worker runs a job until released) whose store changes
    # between its looks (another manager keeps adding jobs of a function it does not run),
    # with 6,000 jobs of its own queued behind the running one, or none; the CPU time its
    # housekeeper reads a reload's cost on moves only when the test says (a reload of
    # 6,000 jobs, cheap, costs nothing; a loaded machine or a pause to collect garbage
    # made one cost 0.15 s and spaced the next one out)
    cpu = [0.0]
    monkeypatch.setattr(housekeeper, "thread_time", lambda: cpu[0])
    clock = FakeClock()
    repository = MemoryRepository()
    watched = Watched(repository)
    manager = make_manager(repository, clock=clock, poll_interval=1.0, discovery_interval=0.05, max_workers=1)
    release, started = threading.Event(), threading.Event()

    def busy() -> None:
        started.set()
        assert release.wait(WAIT)

    manager.register_function("busy", busy)
    manager.register_function("noop", noop)
    producer = make_manager(repository, clock=clock, producer=True)
    busy_id = manager.enqueue(Job(function_name="busy", priority=9))
    manager.start()
    watched.started()
    assert started.wait(WAIT)
    if stocked:
        manager.enqueue_many([Job(function_name="noop") for _ in range(6_000)])

    refills, refill = [0], manager._housekeeper._refill  # noqa: SLF001

    def counted_refill() -> Any:
        refills[0] += 1
        return refill()

    manager._housekeeper._refill = counted_refill  # type: ignore[method-assign]  # noqa: SLF001

    def reloads_over(passes: int) -> int:
        """Reloads in `passes` passes of 3 s: one each while a reload costs under 0.15 s of
        CPU (20 times that is the pause after it). (Not the glances at the jobs scheduled
        first, between: cheap, they are made whenever the store changed.)"""
        before = refills[0]
        for _ in range(passes):
            producer.enqueue(Job(function_name="elsewhere"))
            watched.pass_time(clock, 3.0)
        return refills[0] - before

    # (cheap reloads come at every pass)
    assert reloads_over(3) == 3
    # when one reload takes 0.2 s of CPU (as sorting a million ready jobs can)
    # (whichever read it makes: of every ready job, or of the memory store's feed)
    ready, since = repository.ready, repository.runnable_since

    def slow_ready(*args: Any) -> Any:
        cpu[0] += 0.2
        return ready(*args)

    def slow_since(*args: Any) -> Any:
        cpu[0] += 0.2
        return since(*args)

    repository.ready = slow_ready  # type: ignore[method-assign]
    repository.runnable_since = slow_since  # type: ignore[method-assign]
    assert reloads_over(1) == 1
    repository.ready = ready  # type: ignore[method-assign]
    repository.runnable_since = since  # type: ignore[method-assign]
    if stocked:
        # then, the queue stocked, the next comes only once 20 times that has passed (at
        # least 4 s: none in the next pass, 3.06 s)
        assert reloads_over(1) == 0
        # and once one has come, cheap again, they come at every pass again
        assert any(reloads_over(1) for _ in range(10))
    # (with the queue low, its workers need every reload: they never stop coming)
    assert reloads_over(3) == 3
    release.set()
    assert manager.wait(busy_id, timeout=WAIT).status.value == "completed"


def test_an_idle_manager_claiming_from_the_store_by_number_still_finds_new_jobs(
        db_path: str, make_manager: Any) -> None:
    # given a started manager on a file, idle, in the mode where other processes took the
    # ids it queued and it claims the store's best ready jobs by number instead
    ran = threading.Event()
    worker = make_manager(db_path, discovery_interval=0.01)
    worker.register_function("task", ran.set)
    worker.start()
    state = worker._pool._state
    with state.lock:
        state.from_store = True
    # when another manager (another process, as far as the file knows) stores a job
    producer = make_manager(db_path, producer=True)
    job_id = producer.enqueue(Job(function_name="task"))
    # then the idle manager notices it and runs it (it used to wait for ever: it queued
    # no id for it and told no thread to claim by number)
    assert ran.wait(5.0), "the new job was never claimed"
    assert producer.wait(job_id, timeout=5.0).status.value == "completed"


class _FirstTokenWaits(SQLiteRepository):
    """A file whose first `change_token` waits until `go` is set: the housekeeper's first
    look at the store's token is held back until the test has stored a job elsewhere."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.asked, self.go = threading.Event(), threading.Event()

    def change_token(self) -> Any:
        if not self.asked.is_set():
            self.asked.set()
            assert self.go.wait(10)
        return super().change_token()


def test_a_job_stored_elsewhere_while_a_manager_starts_is_found(db_path: str, make_manager: Any) -> None:
    # given a manager that has read the store at start, its housekeeper not yet looking
    ran = threading.Event()
    repository = _FirstTokenWaits(db_path)
    worker = make_manager(repository, discovery_interval=0.01)
    worker.register_function("task", ran.set)
    worker.start()
    assert repository.asked.wait(5.0)
    # when another process stores a job before the housekeeper's first look
    producer = make_manager(db_path, producer=True)
    job_id = producer.enqueue(Job(function_name="task"))
    repository.go.set()
    # then the manager finds and runs it (it took the token after that write for its
    # starting point, saw no change, and never read the store again)
    assert ran.wait(5.0), "the job stored during start was never found"
    assert producer.wait(job_id, timeout=5.0).status.value == "completed"


def test_an_idle_manager_spaces_out_costly_reads_of_its_scheduled_jobs(
        repository: JobRepository, make_manager: Callable[..., JobManager]) -> None:
    # given an idle manager whose store changes before each of its looks (another
    # process's heartbeats and progress reports on the file), and whose scheduled jobs
    # cost 20 ms of CPU to read (thousands of them, due later)
    changes, token = [0], repository.change_token

    def changing_token() -> Any:
        token()
        changes[0] += 1
        return changes[0]

    repository.change_token = changing_token  # type: ignore[method-assign]
    clock = FakeClock()
    manager, watched, _ = _idle_manager(make_manager, repository, clock)
    _make_scheduled_reads_cost(repository, 0.02)
    # when it looks 10 times (every discovery_interval, each finding the store changed)
    before, feed_before, began = watched.reloads, watched.feed_reads, time.monotonic()
    for _ in range(10):
        watched.pass_time(clock, 0.06)
    elapsed = time.monotonic() - began
    reads = watched.reloads - before
    if isinstance(repository, MemoryRepository):
        # then (the memory store) each look read the rows made runnable since the last
        # one, and every row again at most once per 200 times that read's cost (4 s)
        assert watched.feed_reads - feed_before + reads >= 10
        assert reads <= 1 + elapsed / (0.02 / FULL_READ_SHARE), (reads, elapsed)
        return
    # then it read its scheduled jobs again about once per 20 times their cost (0.4 s) of
    # real time, not at each look (it did: up to 85% of a CPU with 20,000 of them)
    assert 1 <= reads <= 2 + elapsed / 0.4, (reads, elapsed)


def test_a_read_of_scheduled_jobs_skipped_as_costly_is_made_later_on_a_quiet_store(
        repository: JobRepository, make_manager: Callable[..., JobManager]) -> None:
    # given an idle manager whose scheduled jobs cost 20 ms of CPU to read, and another
    # manager on the same store (another process) that schedules a job a day ahead
    clock = FakeClock()
    manager, watched, _ = _idle_manager(make_manager, repository, clock)
    _make_scheduled_reads_cost(repository, 0.02)
    other = make_manager(repository)
    other.register_function("noop", noop)
    ahead = datetime.fromtimestamp(clock.time()) + timedelta(days=1)
    before = watched.reads  # (before the enqueue: its doorbell may have the manager look at once)
    job_id = other.enqueue(Job(function_name="noop", scheduled_at=ahead))
    watched.pass_time(clock, 0.06)
    assert watched.reads > before  # it read the new job, and holds its timer
    assert job_id in manager._queue  # noqa: SLF001 (the timer is what is at stake)
    # when the other manager cancels it right away (the next read of the scheduled jobs
    # is skipped: the last one was costly), and then nothing is written for a while
    assert other.cancel(job_id)
    began = time.monotonic()
    watched.pass_time(clock, 0.06)
    while time.monotonic() < began + 1.0:  # past the skipped read's window (0.4 s of real time)
        watched.pass_time(clock, 0.06)
    watched.pass_time(clock, 0.06)
    # then the skipped read was made once its window passed, and the cancelled job's
    # timer went (it stayed until its time came, a day later)
    assert job_id not in manager._queue  # noqa: SLF001


def test_a_job_another_process_schedules_due_soon_is_queued_while_the_costly_read_is_spaced_out(
        db_path: str, make_manager: Callable[..., JobManager], monkeypatch: Any) -> None:
    # given an idle manager on a file whose scheduled jobs cost 20 ms of CPU to read (thousands
    # due later), which read them all just now, for a job another process scheduled a day ahead
    # (the next such read spaced 40 s of real time on, not 0.4 s: two looks on a loaded
    # machine took longer than that)
    monkeypatch.setattr(jobcore.loading, "RELOAD_SHARE", housekeeper.RELOAD_SHARE / 100)
    clock = FakeClock()
    manager, watched, _ = _idle_manager(make_manager, SQLiteRepository(db_path), clock)
    _make_scheduled_reads_cost(manager.repository, 0.02)
    other = make_manager(SQLiteRepository(db_path), producer=True)
    now = datetime.fromtimestamp(clock.time())
    before = watched.reloads  # (before the enqueue: its doorbell may have the manager look at once)
    later = other.enqueue(Job(function_name="noop", scheduled_at=now + timedelta(days=1)))
    watched.pass_time(clock, 0.06)
    assert watched.reloads > before and later in manager._queue  # noqa: SLF001
    # when the other process schedules a job 0.3 s ahead (the next read of them all is
    # spaced out: the last one was costly)
    soon = other.enqueue(Job(function_name="noop", scheduled_at=now + timedelta(seconds=0.3)))
    before = watched.reloads
    watched.pass_time(clock, 0.06)
    # then the next look queued its timer, reading only the earliest few (the spaced read
    # found it 0.4-0.7 s later: it started that late, past SPEC's 100 ms)
    assert watched.reloads == before and watched.earliest_reads >= 1
    assert soon in manager._queue  # noqa: SLF001


def _make_memory_full_reads_cost(repository: MemoryRepository, seconds: float) -> None:
    """Each read of every ready and every scheduled job of the memory store costs
    `seconds` of CPU more (thousands of them), so that its next one is spaced out."""
    _make_scheduled_reads_cost(repository, seconds)
    ready = repository.ready

    def costly_ready(*args: Any) -> Any:
        spend_cpu(seconds)
        return ready(*args)

    repository.ready = costly_ready  # type: ignore[method-assign]


def _memory_idle_manager(make_manager: Callable[..., JobManager],
                         clock: FakeClock) -> tuple[MemoryRepository, JobManager, Watched]:
    """An idle manager on a memory store whose reads of every job cost 50 ms of CPU (the
    last one made just now: the next comes 10 s later), past its first looks."""
    repository = MemoryRepository()
    manager, watched, _ = _idle_manager(make_manager, repository, clock)
    _make_memory_full_reads_cost(repository, 0.05)
    before, began = watched.housekeepers_reloads, time.monotonic()
    while watched.housekeepers_reloads == before:  # (a look reads when the store changed)
        assert time.monotonic() < began + WAIT
        make_manager(repository, producer=True).enqueue(Job(function_name="elsewhere"))
        watched.pass_time(clock, 0.06)
    return repository, manager, watched


def test_a_job_another_manager_of_the_memory_store_schedules_is_queued_at_the_next_look(
        make_manager: Callable[..., JobManager]) -> None:
    # given an idle manager on a memory store whose reads of every job are costly and
    # spaced out (50,000 scheduled for later), the last one made just now
    clock = FakeClock()
    repository, manager, watched = _memory_idle_manager(make_manager, clock)
    # when another manager of this process schedules a job 0.3 s ahead
    other = make_manager(repository, clock=clock, producer=True)
    before, feed_before = watched.housekeepers_reloads, watched.feed_reads
    soon = other.enqueue(Job(function_name="noop",
                             scheduled_at=datetime.fromtimestamp(clock.time()) + timedelta(seconds=0.3)))
    watched.pass_time(clock, 0.06)
    # then the next look queued its timer, from the rows made runnable since the last one
    # (found only by the spaced read of every job, one started 0.4-1.2 s late, past
    # SPEC's 100 ms)
    assert watched.housekeepers_reloads == before and watched.feed_reads > feed_before
    assert soon in manager._queue  # noqa: SLF001
    clock.advance(0.3)
    assert manager.wait(soon, timeout=WAIT).status.value == "completed"


def test_a_dependent_another_manager_releases_on_the_memory_store_runs_without_a_full_read(
        make_manager: Callable[..., JobManager]) -> None:
    # given an idle manager on a memory store (its reads of every job spaced out), that
    # runs "noop", and another manager of this process that runs "first"
    clock = FakeClock()
    repository, manager, watched = _memory_idle_manager(make_manager, clock)
    other = make_manager(repository, clock=clock, producer=True)
    other.register_function("first", noop)
    before = watched.housekeepers_reloads
    # when the other manager runs a job another depends on, the dependent seen waiting
    first = other.enqueue(Job(function_name="first"))
    then = other.enqueue(Job(function_name="noop", depends_on=[first]))
    watched.pass_time(clock, 0.06)
    assert then not in manager._queue  # noqa: SLF001
    assert other.run_pending() == 1
    watched.pass_time(clock, 0.06)
    # then the dependent it released was queued by the next look, and ran
    assert manager.wait(then, timeout=WAIT).status.value == "completed"
    assert watched.housekeepers_reloads == before


def test_a_manager_behind_on_the_memory_store_feed_reads_every_job(
        make_manager: Callable[..., JobManager], monkeypatch: pytest.MonkeyPatch) -> None:
    # given an idle manager on a memory store whose feed keeps 5 to 10 rows made runnable
    monkeypatch.setattr(memory, "FEED_KEEP", 5)
    clock = FakeClock()
    repository = MemoryRepository()
    manager, watched, _ = _idle_manager(make_manager, repository, clock)
    _make_memory_full_reads_cost(repository, 0.02)
    make_manager(repository, producer=True).enqueue(Job(function_name="elsewhere"))
    watched.pass_time(clock, 0.06)  # (a costly read of every job: the next is spaced out)
    before = watched.reloads
    # when another manager stores 30 jobs between two of its looks (in one call: stored
    # one by one, each rang this manager's doorbell, and a look made between them could
    # keep up with the feed, then read none of them at once: the test failed 1 run in 8)
    other = make_manager(repository, clock=clock, producer=True)
    ids = other.enqueue_many([Job(function_name="noop", scheduled_at=datetime.fromtimestamp(clock.time())
                                  + timedelta(days=1)) for _ in range(30)])
    watched.pass_time(clock, 0.06)
    # then, the feed no longer holding its place, it read every job at once
    assert watched.reloads > before
    assert all(job_id in manager._queue for job_id in ids)  # noqa: SLF001


def _busy_manager(make_manager: Callable[..., JobManager], repository: JobRepository, clock: FakeClock,
                  watched: Watched) -> tuple[JobManager, threading.Event]:
    """A started manager on `repository` whose one worker runs a job until the event
    returned is set, with a job ready behind it: it wants no work, so its looks do not
    reload the store (poll_interval is a minute)."""
    manager = make_manager(repository, clock=clock, poll_interval=60.0, discovery_interval=0.05, max_workers=1)
    busy, release = threading.Event(), threading.Event()
    manager.register_function("busy", lambda: busy.set() or release.wait(WAIT))
    manager.register_function("noop", noop)
    manager.enqueue(Job(function_name="busy", priority=9))
    manager.enqueue(Job(function_name="noop"))
    manager.start()
    watched.started()
    assert busy.wait(WAIT)
    return manager, release


@pytest.mark.parametrize("backend", ["sqlite", "memory"])
def test_a_busy_manager_queues_a_job_another_writer_schedules_at_its_next_look(
        backend: str, tmp_path: Any, make_manager: Callable[..., JobManager]) -> None:
    # given a started manager whose one worker is busy, with a job ready behind it (it
    # wants no work, so its looks do not reload the store: that comes every poll_interval)
    clock = FakeClock()
    path = str(tmp_path / "jobs.db")
    repository: JobRepository = SQLiteRepository(path) if backend == "sqlite" else MemoryRepository()
    watched = Watched(repository)
    manager, release = _busy_manager(make_manager, repository, clock, watched)
    watched.pass_time(clock, 0.06)
    before = watched.reloads
    # when another writer (another process, or another manager of this one) schedules a
    # job due soon
    other = SQLiteRepository(path) if backend == "sqlite" else repository
    soon = datetime.fromtimestamp(clock.time()) + timedelta(seconds=5)
    job_id = make_manager(other, clock=clock, producer=True).enqueue(Job(function_name="noop", scheduled_at=soon))
    began = time.monotonic()
    watched.pass_time(clock, 0.06)
    while job_id not in manager._queue and time.monotonic() < began + WAIT:  # noqa: SLF001
        watched.pass_time(clock, 0.06)  # (glances are spaced out by their cost: a few ms here)
    # then a look queued the job's timer before its time, without reloading the store
    # (found only by that reload, it started up to 2 s late while the manager's own jobs
    # kept it busy)
    assert job_id in manager._queue  # noqa: SLF001
    assert clock.time() < soon.timestamp()
    assert watched.reloads == before
    release.set()


def test_a_busy_managers_glances_are_spaced_out_by_their_cost(
        db_path: str, make_manager: Callable[..., JobManager]) -> None:
    # given a busy manager (its one worker held, a job ready behind it) whose glance at the
    # jobs scheduled first costs 20 ms of CPU (100 of each of 200 functions), on a file
    # another process writes to before each of its looks
    clock = FakeClock()
    repository = SQLiteRepository(db_path)
    watched = Watched(repository)
    scheduled = repository.scheduled

    def costly_glance(names: Any, limit: int) -> Any:
        if limit <= EARLIEST_SCHEDULED:
            spend_cpu(0.02)
        return scheduled(names, limit)

    repository.scheduled = costly_glance  # type: ignore[method-assign]
    manager, release = _busy_manager(make_manager, repository, clock, watched)
    other = make_manager(SQLiteRepository(db_path), clock=clock, producer=True)
    # when it looks 10 times, the store changed before each
    before, began = watched.earliest_reads, time.monotonic()
    for _ in range(10):
        other.enqueue(Job(function_name="elsewhere"))
        watched.pass_time(clock, 0.06)
    elapsed = time.monotonic() - began
    # then it glanced about once per 20 times a glance's cost (0.4 s) of real time, not
    # at each look (200 functions: 16% of a CPU on SQLite, more of PostgreSQL's server)
    glances = watched.earliest_reads - before
    assert 1 <= glances <= 2 + elapsed / 0.4, (glances, elapsed)
    release.set()


def test_a_busy_manager_on_the_memory_store_reads_its_feed_at_every_look_that_finds_a_change(
        make_manager: Callable[..., JobManager]) -> None:
    # given a busy manager on a memory store whose feed reads cost 20 ms of CPU (a producer
    # beside it storing 18,000 jobs a second: what each read finds grows with the time
    # since the last one)
    clock = FakeClock()
    repository = MemoryRepository()
    watched = Watched(repository)
    since = repository.runnable_since
    manager, release = _busy_manager(make_manager, repository, clock, watched)

    def costly_since(*args: Any) -> Any:
        spend_cpu(0.02)
        return since(*args)

    repository.runnable_since = costly_since  # type: ignore[method-assign]
    producer = make_manager(repository, clock=clock, producer=True)
    # when it looks 5 times, the store changed before each
    before = watched.feed_reads
    for _ in range(5):
        producer.enqueue(Job(function_name="elsewhere"))
        watched.pass_time(clock, 0.06)
    # then it read the feed at each (spaced out by their cost, the reads came 2 s apart,
    # and a job the producer scheduled 300 ms ahead started up to 0.9 s late)
    assert watched.feed_reads - before >= 5
    release.set()


@pytest.mark.parametrize("backend", ["sqlite", "memory"])
def test_a_look_asked_for_while_the_pool_was_busy_is_made_by_a_worker_left_idle(backend: str, db_path: str,
                                                                                make_manager: Any) -> None:
    # given a started manager of three workers that looks at the store only when asked,
    # one worker running a job that blocks, a job stored by another writer that it was not
    # told of, and a look asked for while the pool was busy (as its housekeeper asks, told
    # of work stored elsewhere while an exchange was under way: made once a worker is free)
    repository: JobRepository = SQLiteRepository(db_path) if backend == "sqlite" else MemoryRepository()
    manager = make_manager(repository, max_workers=3, discovery_interval=60.0, poll_interval=60.0)
    started, release = threading.Semaphore(0), threading.Event()
    manager.register_function("block", lambda: started.release() or release.wait(WAIT))
    manager.register_function("job", lambda: "done")
    manager.start()
    manager.enqueue(Job(function_name="block"))
    assert started.acquire(timeout=WAIT)
    elsewhere = Job(function_name="job")
    repository.insert([record_for(elsewhere, time.time())], time.time())
    manager._pool.look_when_free(wake=False)
    try:
        # when a job enqueued here goes to a second worker (the one woken for it takes it)
        manager.enqueue(Job(function_name="block"))
        assert started.acquire(timeout=WAIT)
        # then the third worker makes the look and runs the job stored elsewhere (no worker
        # found nothing to do, so the look waited, beside that idle worker, for a running
        # job to end: on PostgreSQL, jobs another process stored a few at a time stayed
        # pending the length of the jobs running)
        assert manager.wait(elsewhere.id, timeout=WAIT).status is JobStatus.COMPLETED
    finally:
        release.set()
