"""The ready queue keeps memory in proportion to the jobs it holds, and no entry of a job
that ended.

Far-future timers and cron schedules that are cancelled (or replaced) leave dead items in
their heaps until those surface; each heap is rebuilt once its dead items outnumber its
live ones by `COMPACT_FLOOR`. Before, an application scheduling jobs a week ahead and
cancelling most of them grew the timers heap without bound (a leak hunt: 10,000 such jobs
left 10,012 items and 3.4 MB behind). And a store read that saw a job waiting just before
a cancel committed no longer queues it again after that cancel discarded it.
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any, Callable

from jobcore import FakeClock, Job, JobManager, JobRepository, JobStatus
from jobcore.queue import COMPACT_FLOOR, ReadyQueue
from jobcore.repository.base import QueueEntry

from waiting import wait_until

WAIT = 10.0
START = 1_900_000_000.0
WEEK = 7 * 86_400.0


def timer(job_id: str, seq: int, due: float) -> QueueEntry:
    return QueueEntry(job_id, 0, seq, due, "task")


def schedule(job_id: str, seq: int, due: float) -> QueueEntry:
    return QueueEntry(job_id, 0, seq, due, "task", is_schedule=True)


def bound(live: int) -> int:
    """The most items a heap holding `live` live ones may keep: dead ones stay at most
    `COMPACT_FLOOR` more than the live ones."""
    return 2 * live + COMPACT_FLOOR


def assert_counts_exact(queue: ReadyQueue) -> None:
    """Each heap's count of dead items is the number of its items not in `_members`, and
    every member is in its heap."""
    members = queue._members
    for kind, heap in enumerate(queue._heaps):
        assert queue._dead[kind] == sum(1 for item in heap if members.get(item[3].job_id) is not item)
    in_heaps = {id(item) for heap in queue._heaps for item in heap}
    assert all(id(item) in in_heaps for item in members.values())


# -- ReadyQueue alone ------------------------------------------------------------------------------
def test_cancelled_far_future_timers_are_compacted_and_the_live_ones_fire_in_order() -> None:
    # given 5,000 timers a week ahead, each due a minute after the one before
    clock = FakeClock(START)
    queue = ReadyQueue(clock)
    for n in range(5_000):
        queue.push(timer(f"t{n}", n, START + WEEK + 60 * n), START + WEEK + 60 * n)
    live = [f"t{n}" for n in range(0, 5_000, 100)]
    # when all but every hundredth are cancelled, one at a time as an application would
    for n in range(5_000):
        if n % 100:
            queue.discard([f"t{n}"])
    # then the heap holds about the live ones, and its count of dead items is exact
    assert len(queue) == 50
    assert len(queue._timers) <= bound(50)
    assert_counts_exact(queue)
    # and the live ones still come due in their order, each once
    for job_id in live:
        due = START + WEEK + 60 * int(job_id[1:])
        assert queue.next_due() == due
        clock.advance(due - clock.time())
        assert [entry.job_id for entry in queue.pop_ready(10)] == [job_id]
    assert len(queue) == 0 and queue.next_due() is None
    assert_counts_exact(queue)


def test_timers_a_store_read_did_not_find_are_dropped_and_no_others() -> None:
    # given timers queued before a read of the store's scheduled jobs began, one queued
    # after, one of a function this read did not cover, one due past the read's window,
    # and a cron schedule
    clock = FakeClock(START)
    queue = ReadyQueue(clock)
    for n, job_id in enumerate(["kept", "lost", "other-function", "late"]):
        entry = QueueEntry(job_id, 0, n, START + WEEK + n, "elsewhere" if job_id == "other-function" else "task")
        queue.push(entry, entry.run_at)
    queue.push(schedule("cron", 9, START + WEEK), START + WEEK)
    mark = queue.timer_mark()
    queue.push(timer("newer", 10, START + WEEK), START + WEEK)
    # when the read found only "kept" (the others cancelled elsewhere, or newer than it),
    # in a window of the store's scheduled jobs that ends where "late" is due
    found = [timer("kept", 0, START + WEEK), timer("last-of-the-window", 99, START + WEEK + 3)]
    dropped = queue.drop_lost_timers(found, mark, {"task"}, whole=False)
    # then only "lost" is forgotten, and the heap's count of dead items is exact
    assert dropped == 1
    assert set(queue._members) == {"kept", "other-function", "late", "cron", "newer"}
    assert_counts_exact(queue)


def test_timers_queued_again_sooner_leave_no_heap_behind_and_fire_once() -> None:
    # given 1,000 timers a week ahead, each queued again 100 times, sooner each time (a
    # retry elsewhere, say): every older item is dead
    clock = FakeClock(START)
    queue = ReadyQueue(clock)
    for n in range(1_000):
        for again in range(100):
            due = START + WEEK - again
            queue.push(timer(f"t{n}", n, due), due)
    assert len(queue._timers) <= bound(1_000)
    assert_counts_exact(queue)
    # when they come due, each fires once, at its soonest time
    clock.advance(WEEK - 99)
    assert sorted(entry.job_id for entry in queue.pop_ready(10_000)) == sorted(f"t{n}" for n in range(1_000))
    clock.advance(WEEK)
    assert queue.pop_ready(10_000) == [] and len(queue) == 0


def test_an_id_discarded_then_queued_for_another_time_fires_at_that_time_only() -> None:
    # given "a" due in an hour, discarded and queued again due in two, while enough other
    # discards go by to rebuild the heap several times
    clock = FakeClock(START)
    queue = ReadyQueue(clock)
    queue.push(timer("a", 1, START + 3600), START + 3600)
    queue.discard(["a"])
    queue.push(timer("a", 1, START + 7200), START + 7200)
    for n in range(10 * COMPACT_FLOOR):
        queue.push(timer(f"x{n}", 2 + n, START + 60), START + 60)
        queue.discard([f"x{n}"])
    assert_counts_exact(queue)
    # then its old time passes without it; its new time brings it
    clock.advance(3600)
    assert queue.pop_ready(10) == []
    assert queue.next_due() == START + 7200
    clock.advance(3600)
    assert [entry.job_id for entry in queue.pop_ready(10)] == ["a"]


def test_cancelled_schedules_are_compacted_and_the_live_ones_fire_in_order() -> None:
    clock = FakeClock(START)
    queue = ReadyQueue(clock)
    for n in range(2_000):
        queue.push(schedule(f"s{n}", n, START + 3600 + n), START + 3600 + n)
    queue.discard(f"s{n}" for n in range(2_000) if n % 200)
    assert len(queue._schedules) <= bound(10)
    assert_counts_exact(queue)
    clock.advance(3600 + 2_000)
    assert [entry.job_id for entry in queue.pop_due_schedules()] == [f"s{n}" for n in range(0, 2_000, 200)]
    assert len(queue) == 0


def test_a_schedule_being_fired_is_not_queued_again_from_a_read_that_saw_it_due() -> None:
    # given two schedules due now, taken to fire
    clock = FakeClock(START)
    queue = ReadyQueue(clock)
    queue.push(schedule("s1", 1, START), START)
    queue.push(schedule("s2", 2, START), START)
    assert [e.job_id for e in queue.pop_due_schedules(firing=True)] == ["s1", "s2"]
    # when a store read made before their fire committed queues them, still due then
    with queue.reading() as read:
        for job_id, seq in (("s1", 1), ("s2", 2)):
            queue.push(schedule(job_id, seq, START), START, read=read)
    # then neither is queued again (each was fired a second time, for nothing: a look
    # after each batch of fires queued the batch being fired)
    assert len(queue) == 0 and queue.pop_due_schedules() == []
    # but a schedule's next fire time is queued, by the fire or by a read made after it
    with queue.reading() as read:
        queue.push(schedule("s1", 1, START + 60), START + 60, read=read)
    # and once their fire ended, one put back after failing, or read again, is queued
    queue.push(schedule("s2", 2, START), START + 1)  # (a failed fire: back in a second, no read)
    queue.fire_ended(["s1", "s2"])
    assert len(queue) == 2
    clock.advance(60)
    assert [e.job_id for e in queue.pop_due_schedules()] == ["s2", "s1"]
    with queue.reading() as read:
        queue.push(schedule("s2", 2, START + 60), START + 60, read=read)
    assert [e.job_id for e in queue.pop_due_schedules()] == ["s2"]


def test_ready_ids_claimed_by_number_are_compacted() -> None:
    clock = FakeClock(START)
    queue = ReadyQueue(clock)
    queue.push_ready([QueueEntry(f"r{n}", n % 3, n, None, "task") for n in range(3_000)])
    queue.discard(f"r{n}" for n in range(3_000) if n % 100)
    assert len(queue._ready) <= bound(30)
    assert_counts_exact(queue)
    taken = [entry.job_id for entry in queue.pop_ready(100)]
    assert taken == [f"r{n}" for p in (2, 1, 0) for n in range(0, 3_000, 100) if n % 3 == p]


def test_dead_items_behind_a_live_head_go_once_the_live_ones_before_them_leave() -> None:
    # given timers due in a minute, as many a week ahead that were cancelled (dead behind
    # the minute ones, and too few to outnumber them), and one live timer a day ahead
    clock = FakeClock(START)
    queue = ReadyQueue(clock)
    for n in range(1_000):
        queue.push(timer(f"soon{n}", n, START + 60), START + 60)
        queue.push(timer(f"week{n}", 1_000 + n, START + WEEK), START + WEEK)
    queue.push(timer("tomorrow", 2_000, START + 86_400), START + 86_400)
    queue.discard(f"week{n}" for n in range(1_000))
    assert_counts_exact(queue)
    # when the minute ones come due and are taken (no timer is discarded after)
    clock.advance(120)
    taken = []
    while batch := queue.pop_ready(100):
        taken.extend(entry.job_id for entry in batch)
    # then the dead ones went too: they stayed behind the day-ahead head until it fired
    assert taken == [f"soon{n}" for n in range(1_000)]
    assert len(queue._timers) <= bound(1)
    assert_counts_exact(queue)
    # and the day-ahead one fires at its time
    clock.advance(86_400)
    assert [entry.job_id for entry in queue.pop_ready(10)] == ["tomorrow"]


def test_a_read_begun_before_a_discard_does_not_queue_the_id_again() -> None:
    clock = FakeClock(START)
    queue = ReadyQueue(clock)
    a, b = timer("a", 1, START + WEEK), timer("b", 2, START + WEEK)
    with queue.reading() as early:
        # a read saw "a" and "b" waiting; then "a" is cancelled before the read queues them
        queue.discard(["a"])
        with queue.reading() as late:  # a read begun after the cancel may queue it (a retry)
            queue.push(a, a.run_at, read=early)
            queue.push_ready([QueueEntry("a", 0, 1, None, "task")], read=early)
            queue.push(b, b.run_at, read=early)
            assert sorted(queue._members) == ["b"]
            queue.push(a, a.run_at, read=late)
        assert sorted(queue._members) == ["a", "b"]
    # once no read is under way, nothing of the discards is kept
    assert queue._discarded == {} and not queue._reads
    queue.discard(["a"])
    assert queue._discarded == {}
    queue.push(a, a.run_at)  # queued again without a read (a retry): taken
    assert sorted(queue._members) == ["a", "b"]


# -- a started manager ---------------------------------------------------------------------------------
def _started(make_manager: Callable[..., JobManager], repository: JobRepository, clock: FakeClock,
             **functions: Callable[..., Any]) -> JobManager:
    manager = make_manager(repository, clock=clock, max_workers=1)
    for name, func in functions.items():
        manager.register_function(name, func)
    return manager.start()


def test_a_manager_cancelling_most_of_its_far_future_jobs_keeps_a_small_queue(
        repository: JobRepository, make_manager: Callable[..., JobManager]) -> None:
    # given 1,000 jobs scheduled a day ahead, an hour apart, on a started manager
    clock = FakeClock(START)
    ran: list[str] = []
    manager = _started(make_manager, repository, clock, remind=ran.append)
    ids = manager.enqueue_many([Job(function_name="remind", args=(str(n),),
                                    scheduled_at=datetime.fromtimestamp(START + 86_400 + 3600 * n))
                                for n in range(1_000)])
    # when all but every hundredth are cancelled
    for n, job_id in enumerate(ids):
        if n % 100:
            assert manager.cancel(job_id)
    # then the queue holds about the ten live ones (it held 1,000 items)
    queue = manager._queue
    assert len(queue) == 10
    assert len(queue._timers) <= bound(10)
    # and those ten run, each at its time, in order; no cancelled one runs
    clock.advance(86_400)
    for n in range(0, 1_000, 100):
        clock.advance(START + 86_400 + 3600 * n - clock.time())
        assert manager.wait(ids[n], timeout=WAIT).status is JobStatus.COMPLETED
        assert ran == [str(k) for k in range(0, n + 1, 100)]
    assert manager.get_stats()["cancelled"] == 990


def test_replaced_and_cancelled_cron_schedules_leave_a_small_queue_and_the_live_ones_fire(
        repository: JobRepository, make_manager: Callable[..., JobManager]) -> None:
    clock = FakeClock(START)
    fired = threading.Semaphore(0)
    manager = _started(make_manager, repository, clock, tick=lambda: fired.release())
    # given 300 daily schedules, all but three cancelled
    ids = [manager.enqueue(Job(function_name="tick", cron="0 3 * * *")) for _ in range(300)]
    for n, schedule_id in enumerate(ids):
        if n % 100:
            assert manager.cancel(schedule_id)
    # and one periodic schedule whose expression changed 200 times (each change replaces it)
    def nightly() -> None:
        fired.release()
    for n in range(200):
        manager.periodic(f"{n % 60} 4 * * *", name="nightly")(nightly)
    # then the schedules heap holds about the four live ones
    queue = manager._queue
    assert len(queue) == 4
    assert len(queue._schedules) <= bound(4)
    # and within a day the four fire, each once
    clock.advance(86_400)
    for _ in range(4):
        assert fired.acquire(timeout=WAIT)
    wait_until(lambda: manager.get_stats()["completed"] == 4, WAIT, "the four runs to be recorded")
    live = {r.job_id for r in manager.list_jobs(status=JobStatus.SCHEDULED, limit=None)}
    assert len(live) == 4 and {ids[0], ids[100], ids[200]} <= live
    runs = [r for r in manager.list_jobs(limit=None) if "schedule_id" in r.metadata]
    assert sorted(r.metadata["schedule_id"] for r in runs) == sorted(live)
    assert not fired.acquire(timeout=0.1)


# -- a read racing a cancel ---------------------------------------------------------------------------------
def test_a_job_cancelled_while_the_scheduled_jobs_are_read_is_not_queued_again(
        repository: JobRepository, make_manager: Callable[..., JobManager]) -> None:
    # given a job a week ahead, and a read of the scheduled jobs that sees it waiting,
    # after which a cancel commits (and discards it) before the read queues what it saw
    clock = FakeClock(START)
    manager = make_manager(repository, clock=clock)
    ran: list[int] = []
    manager.register_function("remind", lambda: ran.append(1))
    job_id = manager.enqueue(Job(function_name="remind", scheduled_at=datetime.fromtimestamp(START + WEEK)))
    read = repository.scheduled
    cancels = [lambda: manager.cancel(job_id)]

    def scheduled(*args: Any) -> Any:
        entries = read(*args)
        if cancels:
            assert any(entry.job_id == job_id for entry in entries)
            assert cancels.pop()()
        return entries

    repository.scheduled = scheduled  # type: ignore[method-assign,assignment]
    # when the housekeeper's spaced read queues what it read
    manager._load_queue(spaced=True)
    # then the cancelled job is not queued (it stayed queued, until its time a week ahead)
    assert cancels == [] and len(manager._queue) == 0
    assert manager._queue._discarded == {}
    # and when its time comes, nothing runs
    clock.advance(WEEK)
    assert manager.run_pending() == 0 and ran == []
    assert manager.get_stats()["cancelled"] == 1


def test_a_schedule_cancelled_as_it_fires_is_not_queued_again(
        repository: JobRepository, make_manager: Callable[..., JobManager]) -> None:
    # given a daily schedule come due, which is cancelled just after its fire committed
    clock = FakeClock(START)
    manager = make_manager(repository, clock=clock)
    ran: list[int] = []
    manager.register_function("tick", lambda: ran.append(1))
    schedule_id = manager.enqueue(Job(function_name="tick", cron="0 3 * * *"))
    fire = repository.fire_schedules

    def fire_then_cancel(*args: Any) -> Any:
        fired = fire(*args)
        assert manager.cancel(schedule_id)
        return fired

    repository.fire_schedules = fire_then_cancel  # type: ignore[method-assign]
    clock.advance(86_400)
    # when it fires: its run runs
    assert manager.run_pending() == 1 and ran == [1]
    # then the ended schedule is not queued for its next fire (it stayed, until then)
    assert len(manager._queue) == 0
    clock.advance(86_400)
    assert manager.run_pending() == 0 and ran == [1]


def test_a_cancelled_jobs_stale_timer_runs_nothing_and_leaves_the_queue_when_due(
        repository: JobRepository, make_manager: Callable[..., JobManager]) -> None:
    # given a started manager holding stale entries of a cancelled job and of a cancelled
    # schedule (as a read racing the cancels queued them before this fix; a recovery
    # racing a cancel still may)
    clock = FakeClock(START)
    ran: list[int] = []
    manager = _started(make_manager, repository, clock, remind=lambda: ran.append(1))
    job_id = manager.enqueue(Job(function_name="remind", scheduled_at=datetime.fromtimestamp(START + 3600)))
    schedule_id = manager.enqueue(Job(function_name="remind", cron="0 * * * *"))
    entries = {record.id: record.queue_entry() for record in map(repository.get, (job_id, schedule_id))
               if record is not None}
    assert manager.cancel(job_id) and manager.cancel(schedule_id)
    for entry in entries.values():
        manager._queue.push(entry, entry.run_at)
    # (the job's may leave sooner: a read of the scheduled jobs finds it no longer there)
    # when their times come, the claim (or the fire) fails in the store: nothing runs
    clock.advance(3600)
    wait_until(lambda: len(manager._queue) == 0, WAIT, "the stale entries to leave the queue")
    assert ran == []
    assert manager.get_stats()["total"] == 2
    assert {manager.poll(i).status for i in entries} == {JobStatus.CANCELLED}  # type: ignore[union-attr]


def test_timers_of_jobs_another_manager_cancelled_leave_the_workers_queue(
        repository: JobRepository, make_manager: Callable[..., JobManager]) -> None:
    # given a started worker holding timers of 200 jobs a producer scheduled a day ahead
    # (another manager, as a web app beside the worker would be), and one more it keeps
    worker = make_manager(repository, max_workers=1)
    worker.register_function("remind", lambda: None)
    worker.start()
    producer = make_manager(repository, producer=True)
    later = datetime.fromtimestamp(datetime.now().timestamp() + 86_400)
    ids = producer.enqueue_many([Job(function_name="remind", scheduled_at=later) for _ in range(200)])
    kept = producer.enqueue(Job(function_name="remind", scheduled_at=later))
    wait_until(lambda: len(worker._queue) == 201, WAIT, "the worker to queue the timers")
    # when the producer cancels the 200
    for job_id in ids:
        assert producer.cancel(job_id)
    # then the worker's next read of the store lets their timers go (they stayed a day,
    # about 0.5 KB each: a hunt saw a worker grow by 50 MB over 100,000 such jobs), and
    # keeps the one still scheduled
    wait_until(lambda: len(worker._queue) == 1, WAIT, "the cancelled jobs' timers to leave the queue")
    assert set(worker._queue._members) == {kept}


def test_a_job_retried_during_a_read_runs_once(repository: JobRepository,
                                              make_manager: Callable[..., JobManager]) -> None:
    # a retry discards the job's old entry and queues its new one itself: a read begun
    # before the retry takes nothing from it, and the job runs once, now
    clock = FakeClock(START)
    repo = repository
    manager = make_manager(repo, clock=clock)
    ran: list[int] = []
    manager.register_function("remind", lambda: ran.append(1))
    job_id = manager.enqueue(Job(function_name="remind", scheduled_at=datetime.fromtimestamp(START + WEEK)))
    assert manager.cancel(job_id)
    with manager._queue.reading() as read:
        assert manager.retry(job_id)
        manager._pool.enqueue_entries([repo.get(job_id).queue_entry()], read)  # type: ignore[union-attr]
    assert manager.run_pending() == 1 and ran == [1]


def ready(job_id: str, priority: int, seq: int) -> QueueEntry:
    return QueueEntry(job_id, priority, seq, None, "task")


def test_a_persistent_stores_queue_keeps_a_window_and_leaves_worse_entries_in_the_store() -> None:
    # given a queue keeping a window of 10 ready entries, and a full window read
    queue = ReadyQueue(FakeClock(START))
    queue.window = 10
    low: list[int] = []
    queue.running_low = lambda: low.append(len(queue))
    queue.push_ready([ready(f"w{n}", 5, n) for n in range(10)], window_full=True)
    # when worse entries are queued (a stream of LOW jobs), and better ones
    queue.push_ready([ready(f"low{n}", 0, 100 + n) for n in range(50)])
    queue.push_ready([ready(f"high{n}", 9, 200 + n) for n in range(25)])
    # then the worse ones wait in the store (the next window read finds them), and the
    # better ones beyond twice the window too: the best ten are kept, the store asked
    # for more as the queue runs low
    assert len(queue) <= 20
    taken = queue.pop_ready(100)
    assert [e.job_id for e in taken[:10]] == [f"high{n}" for n in range(10)]
    assert all(e.priority >= 5 for e in taken)
    assert low
    # and a window read that is not full (the store has no more) queues every entry again
    queue.push_ready([ready(f"low{n}", 0, 100 + n) for n in range(3)], window_full=False)
    queue.push_ready([ready("late", 0, 999)])
    assert [e.job_id for e in queue.pop_ready(100)] == ["low0", "low1", "low2", "late"]


def test_an_entry_turned_away_while_a_window_is_read_is_judged_again_by_that_window() -> None:
    # given a queue whose bound is a window of priority 5, and a read of the store under
    # way that began before a LOW job was stored (so it does not see it)
    queue = ReadyQueue(FakeClock(START))
    queue.window = 2
    queue.push_ready([ready("a", 5, 1), ready("b", 5, 2)], window_full=True)
    with queue.reading() as read:
        queue.push_ready([ready("low", 0, 3)])  # worse than the bound: turned away
        assert "low" not in queue
        # when that read finds fewer than a window (the store's last ready jobs)
        queue.push_ready([ready("c", 5, 4)], read=read, window_full=False)
    # then the LOW job is queued after all: no window read would have found it again
    assert [e.job_id for e in queue.pop_ready(10)] == ["a", "b", "c", "low"]


def test_a_memory_stores_queue_keeps_every_entry() -> None:
    queue = ReadyQueue(FakeClock(START))  # window None: the memory store's
    queue.push_ready([ready(f"w{n}", 5, n) for n in range(10)], window_full=True)
    queue.push_ready([ready(f"low{n}", 0, 100 + n) for n in range(50)])
    assert len(queue) == 60


def test_a_read_begun_while_a_claim_is_under_way_does_not_queue_its_ids_again() -> None:
    # given an id popped for a claim not committed yet, and a read of the store that
    # begins meanwhile (its snapshot may still show the job waiting)
    queue = ReadyQueue(FakeClock(START))
    queue.push_ready([ready("a", 5, 1), ready("b", 5, 2)])
    assert [e.job_id for e in queue.pop_ready(1, claiming=True)] == ["a"]
    with queue.reading() as read:
        queue.claim_ended(["a"])  # the claim commits while the read goes on
        # when the read queues what it found, then the claimed id is not queued again
        # (claimed again by id, it came back stale, and a lone manager switched to claims
        # from the store: a third of the rate with 100 functions registered)
        queue.push_ready([ready("a", 5, 1), ready("b", 5, 2)], read=read)
    assert "a" not in queue and "b" in queue
    # and a read begun once the claim ended queues what it finds
    with queue.reading() as read:
        queue.push_ready([ready("a", 5, 1)], read=read)
    assert "a" in queue
