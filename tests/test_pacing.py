"""The pool's timing rules (`Pacing`), given the time: no threads, no sleeping."""

from __future__ import annotations

import threading
from typing import Any
from types import SimpleNamespace

import pytest

from jobcore.pacing import RECORD_WITHIN, RESERVE_BELOW, STALL_AFTER, STREAM_BATCH, STREAM_GAP, TINY_BELOW, Pacing
from jobcore.clock import SystemClock, real_monotonic
from jobcore.context import JobContext
from jobcore.dispatcher import Dispatcher
from jobcore.execution import Outcome
from jobcore.pool_state import PoolState, Slot
from jobcore.queue import ReadyQueue
from jobcore.recorder import Finished
from jobcore.testing.contract import make_record

T = 1000.0  # any real monotonic reading
# What `PoolState.running` holds of a worker's attempt, as far as these tests look: its slot.
_A_WORKERS_ATTEMPT = SimpleNamespace(slot=Slot(0))


def test_jobs_proved_short_get_a_reserve_and_long_ones_lose_it() -> None:
    pacing = Pacing(max_workers=4)
    assert pacing.capacity() == 4  # no reserve until jobs prove short
    for _ in range(100):
        pacing.ran(RESERVE_BELOW / 10)
    assert pacing.capacity() == 8
    for _ in range(100):
        pacing.ran(1.0)
    assert pacing.capacity() == 4


@pytest.mark.parametrize("seconds", [0.005, 0.01])
def test_io_bound_jobs_of_a_few_milliseconds_get_a_reserve(seconds: float) -> None:
    # given a pool whose jobs each wait a few milliseconds (an HTTP call, a database write)
    pacing = Pacing(max_workers=32)
    # when they have run a while
    for _ in range(100):
        pacing.ran(seconds)
    # then it claims a reserve: without one, each of its 32 workers that ended a job
    # waited its turn for an exchange (60-67% of the ideal rate on SQLite, 88-91% with it)
    assert pacing.capacity() == 64


def test_enqueues_closer_than_the_gap_make_a_stream_that_ends_a_gap_after_the_last() -> None:
    pacing = Pacing(max_workers=1)
    pacing.offered(T)
    assert not pacing.streaming(T)  # one enqueue is no stream
    pacing.offered(T + STREAM_GAP / 2)
    assert pacing.streaming(T + STREAM_GAP)
    assert not pacing.streaming(T + STREAM_GAP / 2 + STREAM_GAP)
    pacing.offered(T + 10.0)  # long after: no stream
    assert not pacing.streaming(T + 10.0)


def test_close_enqueues_from_two_threads_count_as_several_producers_for_a_gap() -> None:
    pacing = Pacing(max_workers=1)
    pacing.offered(T, 1)
    pacing.offered(T + STREAM_GAP / 2, 1)
    assert pacing.one_producer(T + STREAM_GAP / 2)  # one thread's stream
    pacing.offered(T + STREAM_GAP, 2)
    assert not pacing.one_producer(T + STREAM_GAP)
    assert not pacing.one_producer(T + 1.9 * STREAM_GAP)
    assert pacing.one_producer(T + 2 * STREAM_GAP)  # a gap after the last shared pair
    pacing.offered(T + 10.0, 3)  # long after, from another thread: no stream to share
    assert pacing.one_producer(T + 10.0)


def test_a_stream_ends_when_its_producer_waits_and_its_next_enqueue_starts_none() -> None:
    # given a stream of enqueues from thread 1
    pacing = Pacing(max_workers=1)
    pacing.offered(T, 1)
    pacing.offered(T + STREAM_GAP / 4, 1)
    assert pacing.streaming(T + STREAM_GAP / 2)
    # when another thread waits for a job, the stream goes on
    assert not pacing.producer_waits(2)
    assert pacing.streaming(T + STREAM_GAP / 2)
    # when its producer waits for one, the stream ends (and that is told)
    assert pacing.producer_waits(1)
    assert not pacing.streaming(T + STREAM_GAP / 2)
    # and its next enqueue, as close to the last as before, starts none
    pacing.offered(T + STREAM_GAP / 2, 1)
    assert not pacing.streaming(T + STREAM_GAP / 2)
    assert not pacing.producer_waits(1)  # no stream to end: nothing left to see to


def test_a_close_enqueue_never_shortens_a_longer_stream() -> None:
    pacing = Pacing(max_workers=1)
    pacing.stream_for(60.0, T)
    pacing.offered(T + 1.0)
    pacing.offered(T + 1.0 + STREAM_GAP / 2)
    assert pacing.streaming(T + 30.0)
    pacing.stream_for(0.0, T + 30.0)
    assert not pacing.streaming(T + 30.0)


def test_while_streaming_an_enqueue_takes_outcomes_once_a_batch_waits_or_half_their_time_passed() -> None:
    pacing = Pacing(max_workers=1)
    pacing.stream_for(60.0, T)
    pacing.first_outcome(T)
    assert not pacing.enqueue_takes_outcomes(T, waiting=STREAM_BATCH - 1)
    assert pacing.enqueue_takes_outcomes(T, waiting=STREAM_BATCH)
    assert pacing.enqueue_takes_outcomes(T + RECORD_WITHIN / 2, waiting=1)
    pacing.stream_for(0.0, T)
    assert pacing.enqueue_takes_outcomes(T, waiting=1)  # no stream: always


def test_the_first_outcome_asks_for_the_dispatcher_only_if_it_would_sleep_past_its_time() -> None:
    pacing = Pacing(max_workers=1)
    assert pacing.first_outcome(T)  # the dispatcher sleeps until notified
    assert pacing.record_due == T + RECORD_WITHIN
    assert not pacing.overdue(T) and pacing.overdue(T + RECORD_WITHIN)
    pacing.taken()
    assert pacing.record_due is None and not pacing.overdue(T + 10.0)
    pacing.dispatcher_timeout(T, outcomes_wait=False, timer_in=RECORD_WITHIN / 2)
    assert not pacing.first_outcome(T)  # it wakes before the outcome is due anyway
    pacing.dispatcher_woke()
    assert pacing.first_outcome(T)


def test_the_dispatcher_sleeps_until_the_first_of_a_timer_the_outcomes_time_and_the_stream_pace() -> None:
    pacing = Pacing(max_workers=1)
    assert pacing.dispatcher_timeout(T, outcomes_wait=False, timer_in=None) is None
    assert pacing.dispatcher_wakes_at is None
    assert pacing.dispatcher_timeout(T, outcomes_wait=False, timer_in=5.0) == 5.0
    pacing.first_outcome(T)
    assert pacing.dispatcher_timeout(T, outcomes_wait=True, timer_in=5.0) == pytest.approx(RECORD_WITHIN)
    assert pacing.dispatcher_wakes_at == pytest.approx(T + RECORD_WITHIN)
    pacing.taken()
    pacing.stream_for(60.0, T)
    assert pacing.dispatcher_timeout(T, outcomes_wait=False, timer_in=5.0) == RECORD_WITHIN
    pacing.due_now(T)
    assert pacing.dispatcher_timeout(T + 1.0, outcomes_wait=True, timer_in=None) == 0.0


def test_jobs_prove_tiny_by_their_average_and_stop_being_tiny_once_they_run_long() -> None:
    pacing = Pacing(max_workers=4)
    assert not pacing.tiny()  # not until jobs prove short
    for _ in range(100):
        pacing.ran(TINY_BELOW / 10)
    assert pacing.tiny()
    for _ in range(30):
        pacing.ran(TINY_BELOW * 10)
    assert not pacing.tiny()


def test_while_the_pool_holds_tiny_jobs_the_dispatcher_looks_at_least_every_stall_period() -> None:
    pacing = Pacing(max_workers=1)
    pacing.assume_short_jobs()
    assert pacing.dispatcher_timeout(T, outcomes_wait=False, timer_in=5.0, busy=True) == STALL_AFTER
    assert not pacing.dispatcher_sleeps_past(T + STALL_AFTER)
    assert pacing.dispatcher_timeout(T, outcomes_wait=False, timer_in=None, busy=False) is None
    assert pacing.dispatcher_sleeps_past(T + STALL_AFTER)  # idle pool: until notified
    for _ in range(100):
        pacing.ran(1.0)
    assert pacing.dispatcher_timeout(T, outcomes_wait=False, timer_in=None, busy=True) is None  # long jobs


def _state_with_idle_worker(tiny: bool, workers: int = 2, idle: int = 1) -> PoolState:
    state = PoolState(max_workers=workers)
    state.stopping = False
    state.idle = idle
    if tiny:
        state.pacing.assume_short_jobs()
    return state


def test_buffered_tiny_jobs_wake_no_idle_worker_while_one_works_on_them() -> None:
    # given tiny jobs and an idle worker
    state = _state_with_idle_worker(tiny=True)
    state.pacing.dispatcher_timeout(T, outcomes_wait=False, timer_in=None, busy=True)  # it ticks
    # when a worker about to run one (active) or a running job leaves more buffered
    with state.lock:
        state.wake_for_buffer_locked(active=True)
        state.running["busy"] = _A_WORKERS_ATTEMPT  # type: ignore[assignment]
        state.wake_for_buffer_locked(active=False)
    # then the idle worker is left asleep: the busy one takes them next
    assert state.waking == 0


def test_buffered_jobs_wake_an_idle_worker_when_no_one_works_or_jobs_are_not_tiny() -> None:
    alone = _state_with_idle_worker(tiny=True)
    with alone.lock:
        alone.wake_for_buffer_locked(active=False)  # nothing running: someone must come
    assert alone.waking == 1
    slow = _state_with_idle_worker(tiny=False)
    slow.running["busy"] = _A_WORKERS_ATTEMPT  # type: ignore[assignment]
    with slow.lock:
        slow.wake_for_buffer_locked(active=True)  # jobs not proved tiny: join in at once
    assert slow.waking == 1


def test_a_stream_of_tiny_jobs_still_wakes_an_idle_worker_when_no_job_runs() -> None:
    # given tiny jobs, an idle worker, no job running, and enqueues streaming in
    state = _state_with_idle_worker(tiny=True)
    state.pacing.stream_for(60.0, real_monotonic())
    # when an enqueue's exchange buffers its job
    with state.lock:
        state.buffer.append(make_record(id="next"))
        state.wake_for_buffer_locked(active=False)
    # then a worker is woken at once: the producer may be waiting for this job to start
    # before it enqueues the next (left for the stream's next enqueues, as tried once,
    # each such job waited about 2 ms for the dispatcher)
    assert state.waking == 1


def test_ready_jobs_need_no_notification_only_while_a_stream_lasts_and_the_dispatcher_looks_soon() -> None:
    pacing = Pacing(max_workers=1)
    pacing.stream_for(60.0, T)
    assert not pacing.dispatcher_looks_soon(T)  # awake (or never slept): tell it
    pacing.dispatcher_timeout(T, outcomes_wait=False, timer_in=None)  # it sleeps RECORD_WITHIN
    assert pacing.dispatcher_looks_soon(T)
    assert pacing.dispatcher_looks_soon(T + RECORD_WITHIN / 2)
    pacing.stream_for(0.0, T)
    assert not pacing.dispatcher_looks_soon(T)  # no stream: no enqueue will make the exchange
    pacing.dispatcher_timeout(T, outcomes_wait=False, timer_in=None)  # until notified
    pacing.stream_for(60.0, T)
    assert not pacing.dispatcher_looks_soon(T)  # it would sleep through the stream's end
    pacing.dispatcher_timeout(T, outcomes_wait=False, timer_in=5.0)
    pacing.dispatcher_woke()
    assert not pacing.dispatcher_looks_soon(T)


def test_outcomes_handed_in_during_an_exchange_wake_a_dispatcher_asleep_for_good() -> None:
    # given the dispatcher asleep until notified (an idle pool, no stream, no timer)
    state = PoolState(max_workers=2)
    state.stopping = False
    asleep, told = threading.Event(), []

    def dispatcher() -> None:
        with state.lock:
            state.pacing.dispatcher_timeout(T, outcomes_wait=False, timer_in=None)
            asleep.set()
            told.append(state.dispatch_needed.wait(10.0))

    thread = threading.Thread(target=dispatcher)
    thread.start()
    assert asleep.wait(10.0)
    # when a job's outcome is handed in while an exchange runs (its worker then makes
    # none: one is under way), nothing buffered and no enqueue streaming in
    with state.lock:  # taken once the dispatcher waits
        state.begin_exchange_locked()
        state.add_finished_locked(_finished("a"))
        # then the exchange's end tells the dispatcher, which records it
        state.ended_locked([], [], wake=False)
    thread.join(10.0)
    assert told == [True]


def _dispatcher_with_work_queued(tiny: bool, buffered: int = 0, running: bool = False) -> tuple[Dispatcher, PoolState]:
    """A dispatcher of 4 workers with jobs ready in its queue, `buffered` jobs claimed
    and, if `running`, one running."""
    state = _state_with_idle_worker(tiny, workers=4, idle=3 if running else 4)
    if not tiny:  # short jobs (a reserve), not tiny ones
        state.pacing.assume_short_jobs()
        for _ in range(100):
            state.pacing.ran((TINY_BELOW + RESERVE_BELOW) / 2)
    state.buffer.extend(make_record(id=f"buffered-{n}") for n in range(buffered))
    if running:
        state.running["busy"] = _A_WORKERS_ATTEMPT  # type: ignore[assignment]
    queue = ReadyQueue(SystemClock())
    queue.push_ready([make_record(id=f"ready-{n}").queue_entry() for n in range(20)])
    dispatcher = Dispatcher(state, None, queue, None, SystemClock(), give_up_after=60.0)  # type: ignore[arg-type]
    return dispatcher, state


@pytest.mark.parametrize("tiny, buffered, running", [
    (True, 0, False), (True, 0, True), (True, 3, False),  # tiny jobs, but no worker busy with buffered ones
    (False, 0, False), (False, 3, True),  # jobs not tiny: idle workers take buffered ones
])
def test_the_dispatcher_claims_ready_jobs_unless_a_busy_worker_will_claim_them(tiny: bool, buffered: int,
                                                                               running: bool) -> None:
    dispatcher, state = _dispatcher_with_work_queued(tiny, buffered, running)
    assert state.pacing.tiny() is tiny
    with state.lock:
        assert state.room_locked() > 0
        exchange = dispatcher._exchange_due_locked()
    assert exchange is not None and exchange[1] == state.room_locked() + state.claiming


def test_the_dispatcher_leaves_the_busy_worker_to_claim_more_tiny_jobs() -> None:
    # given tiny jobs buffered, a worker running them, room to claim more and more ready
    dispatcher, state = _dispatcher_with_work_queued(tiny=True, buffered=5, running=True)
    with state.lock:
        assert state.room_locked() > 0
        # then the dispatcher makes no exchange: the busy worker makes one when the buffer
        # runs out (topping it up meanwhile, it made most exchanges of a memory drain, of
        # about 2 jobs each, taking turns with that worker at the GIL)
        assert dispatcher._exchange_due_locked() is None
        # nor once an outcome waits, until its time is up
        state.add_finished_locked(_finished("done"))
        assert dispatcher._exchange_due_locked() is None
        state.pacing.due_now(real_monotonic())
        exchange = dispatcher._exchange_due_locked()
    assert exchange is not None and [f.record.id for f in exchange[0]] == ["done"]


@pytest.mark.parametrize("buffered, tops_up_at_once", [(3, False), (2, True), (0, True)])
def test_an_outcome_of_a_short_job_is_recorded_with_the_top_up_at_its_time_while_the_reserve_lasts(
        buffered: int, tops_up_at_once: bool) -> None:
    # given short jobs (a reserve) on 4 workers, `buffered` of them claimed, one running,
    # and an outcome waiting, due later
    dispatcher, state = _dispatcher_with_work_queued(tiny=False, buffered=buffered, running=True)
    with state.lock:
        state.add_finished_locked(_finished("done"))
        assert state.room_locked() > 0 and not state.pacing.overdue(real_monotonic())
        # then the dispatcher tops the buffer up at once only if it runs low (at most half
        # the workers' worth): else it waits for the outcome's time and claims with it
        # (topped up at every job's end, 16 workers running 10 ms jobs made an exchange per
        # job, 300-320 µs of CPU each; 160 once they waited)
        exchange = dispatcher._exchange_due_locked()
        assert (exchange is not None) is tops_up_at_once
        if exchange is None:
            state.pacing.due_now(real_monotonic())
            exchange = dispatcher._exchange_due_locked()
    assert exchange is not None and [f.record.id for f in exchange[0]] == ["done"]


@pytest.mark.parametrize("ready, tiny, claims", [
    (16, False, 8), (20, False, 12), (24, False, 16), (100, False, 16), (16, True, 16)])
def test_a_reserve_is_claimed_only_from_jobs_beyond_a_workers_worth_left_for_others(
        ready: int, tiny: bool, claims: int) -> None:
    # given an idle pool of 8 workers holding a reserve (room for 16)
    state = PoolState(max_workers=8)
    state.stopping = False
    state.pacing.assume_short_jobs()
    if not tiny:
        for _ in range(100):
            state.pacing.ran((TINY_BELOW + RESERVE_BELOW) / 2)
    with state.lock:
        assert state.room_locked() == 16
        # then of `ready` jobs queued, it claims for its free workers, and in reserve only
        # those beyond 8 more left for others (a burst of 16 jobs of 15 ms went whole to one
        # manager, 8 waiting in reserve beside another's idle workers: 31 ms for the
        # burst, not 16), unless the jobs are tiny
        assert state.reserve_limited_locked(16, ready) == claims


def _finished(job_id: str) -> Finished:
    record = make_record(id=job_id)
    return Finished(record, JobContext(job_id, job_id, 1, None), Outcome(), 0.001)  # type: ignore[arg-type]


def test_a_thread_that_made_no_enqueue_waits_without_the_pools_lock(tmp_path: Any) -> None:
    # given a started manager whose pool lock another thread holds (a worker, the dispatcher)
    from jobcore import JobManager  # (a whole manager: `caller_waits` is the pool's)
    manager = JobManager(str(tmp_path / "jobs.db"), max_workers=1).start()
    try:
        pool = manager._pool  # noqa: SLF001
        assert pacing_of(pool).offered_last(threading.get_ident()) is False
        returned = threading.Event()
        with pool._state.lock:  # noqa: SLF001
            # when a thread that made no enqueue (one of 50 polling their jobs) says it waits
            waiter = threading.Thread(target=lambda: (pool.caller_waits(), returned.set()))
            waiter.start()
            # then it goes on at once: nothing of its to see to (it took the lock at each
            # poll, and 50 such threads met the workers there: a drain at 0.05x its rate)
            assert returned.wait(5.0)
        waiter.join(5.0)
        # and the thread that made the last enqueue still ends its stream under the lock
        pacing = pacing_of(pool)
        pacing.offered(real_monotonic(), threading.get_ident())
        assert pacing.offered_last(threading.get_ident())
        pool.caller_waits()
        assert not pacing.streaming(real_monotonic())
    finally:
        manager.stop()


def pacing_of(pool: Any) -> Pacing:
    return pool._state.pacing  # type: ignore[no-any-return]  # noqa: SLF001
