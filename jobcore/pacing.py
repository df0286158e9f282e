"""`Pacing`: when a worker pool records finished attempts, and how many jobs it holds.

Pure rules over real monotonic seconds given by the caller (`clock.real_monotonic`): a
batching window is a millisecond or two of real time, whatever clock the manager has.
No threads, no locks and no storage here; the pool's lock guards its one instance, but
for `offered`, which enqueuing threads call without it (see there).
"""

from __future__ import annotations

from typing import Optional

from .clock import LONGEST_WAIT

# Jobs shorter than this on average (seconds) get claimed in reserve. Without one, each
# worker that ends a job waits for an exchange to claim its next: on SQLite, 32 workers
# running 5 ms jobs reached 60% of their ideal rate, 64 running 10 ms ones 64-67% (one
# exchange at a time, about 0.5 ms each); with it, 88-91% (and 10-25% less CPU a job:
# the dispatcher batches the claims). A reserved job waits for a worker here for at
# most about one job's length, so the bound stays short.
RESERVE_BELOW = 0.02
# Seconds: a job claimed in reserve that no worker took for this long, every worker busy,
# is handed back, and the reserve stops until jobs prove short again: its jobs run longer
# than a reserve is for (short jobs, then long ones: the reserve filled with long jobs,
# claimed while the average was short, that waited for a long job's length here, a later
# HIGH job behind them, while idle workers elsewhere could not take them).
RESERVE_HOLD = 0.1
# Seconds: the longest a finished attempt waits to be recorded while the workers, busy
# with buffered jobs, leave it for a later exchange; then the dispatcher records it.
RECORD_WITHIN = 0.002
# Seconds: enqueues closer together than this make a stream. While one lasts, exchanges
# are left to the enqueuing thread, not made by the dispatcher.
STREAM_GAP = 0.001
# While enqueues stream in, an enqueue records the outcomes waiting once this many wait
# (or the first has waited half of RECORD_WITHIN).
STREAM_BATCH = 8
# Seconds: the longest an enqueue waits for an exchange under way (a worker's or the
# dispatcher's) to end, to make its own. Stored alone, its job would wait behind that
# exchange's transaction anyway, and then need a claim in another: while one thread's
# enqueues streamed in, a sixth to a half of the jobs went that way. Not while several
# threads enqueue: stored alone, their jobs share commits (group commit), and waiting
# for exchanges made four enqueuing threads 12-48% slower.
EXCHANGE_WAIT = 0.002
# Jobs shorter than this on average (seconds) are tiny: buffered ones are left to the
# worker already running jobs, and wake no idle worker. A batch of 2 x max_workers of
# them runs in about a millisecond in one thread, while waking a thread for them costs
# more than they do: it wakes on the other CPU and takes turns with the busy one at the
# GIL (a 20,000-job drain made about 3 wake-ups of idle workers per exchange, and ran
# about a third faster without them). The dispatcher wakes one if the buffer stalls.
TINY_BELOW = 0.0002
# Seconds: while jobs are tiny, buffered jobs that no worker took for this long (the busy
# worker may be in a long job after all) get an idle worker woken by the dispatcher,
# which wakes at least this often while the pool holds work.
STALL_AFTER = 0.002


class Pacing:
    """The timing state of one pool: the waiting outcomes' deadline, the enqueue stream,
    the dispatcher's next wake-up and the average run time. Every `now` is real
    monotonic seconds."""

    def __init__(self, max_workers: int) -> None:
        self._max_workers = max_workers
        # By when the outcomes waiting are recorded; None while none waits (or after an
        # exchange took them).
        self.record_due: Optional[float] = None
        # When the sleeping dispatcher wakes by itself; None: not before it is notified.
        self.dispatcher_wakes_at: Optional[float] = None
        # The last enqueue that offered to make an exchange: when, and its thread. One
        # tuple, replaced whole: `offered` runs without the pool's lock.
        self._last_offer: tuple[float, Optional[int]] = (float("-inf"), None)
        self._stream_until = float("-inf")  # enqueues stream in until then
        self._shared_until = float("-inf")  # they come from several threads until then
        self._average_run = 1.0  # seconds; start without a reserve until jobs prove short

    # -- how many jobs to hold -----------------------------------------------------------
    def capacity(self) -> int:
        """How many jobs the pool holds: one per worker, plus as many claimed in reserve
        while jobs are short (under RESERVE_BELOW seconds on average), so a worker never
        waits for an exchange between short jobs. Long jobs get no reserve: a claimed job
        would show as running, keep a later higher-priority job waiting, and be out of
        reach of idle workers elsewhere."""
        workers = self._max_workers
        return 2 * workers if self._average_run < RESERVE_BELOW else workers

    def reserve_went_stale(self) -> None:
        """Jobs held in reserve were handed back (see RESERVE_HOLD): no reserve until the
        jobs that end prove short again."""
        self._average_run = max(self._average_run, RESERVE_BELOW)

    def ran(self, seconds: float) -> None:
        """An attempt ran `seconds`: a moving average decides the reserve."""
        self._average_run += 0.1 * (seconds - self._average_run)

    def tiny(self) -> bool:
        """True while jobs run under TINY_BELOW seconds on average."""
        return self._average_run < TINY_BELOW

    def assume_short_jobs(self) -> None:
        """Hold a reserve from the start, as if jobs had proved short (for tests)."""
        self._average_run = 0.0

    # -- the enqueue stream ------------------------------------------------------------------
    def offered(self, now: float, producer: Optional[int] = None) -> None:
        """An enqueue offered to make an exchange at `now`, from thread `producer` (its
        ident); one within STREAM_GAP of the last keeps a stream going, and shares it with
        another thread if that one made the last.

        Called without the pool's lock (threads enqueueing at once met there at every job):
        each field it writes is replaced whole, a GIL-atomic store, and offers racing each
        other (or `producer_waits`) can only lose one offer's extension of a stream, less
        than STREAM_GAP, which the next offer restores."""
        last_at, last_producer = self._last_offer
        if now - last_at < STREAM_GAP:
            self._stream_until = max(self._stream_until, now + STREAM_GAP)
            if producer != last_producer:
                self._shared_until = now + STREAM_GAP
        self._last_offer = (now, producer)

    def one_producer(self, now: float) -> bool:
        """True unless enqueues from more than one thread came within STREAM_GAP of each
        other in the last STREAM_GAP."""
        return now >= self._shared_until

    def streaming(self, now: float) -> bool:
        """True while enqueues stream in."""
        return now < self._stream_until

    def offered_last(self, thread: int) -> bool:
        """Whether thread `thread` (its ident) made the last enqueue's offer: if not,
        `producer_waits` for it changes nothing. Safe without the pool's lock for the
        thread asking about itself: only its own enqueues can make it the last."""
        return self._last_offer[1] == thread

    def producer_waits(self, thread: int) -> bool:
        """Thread `thread` (its ident) waits for a job to settle. If it made the last
        enqueue it streams no more: the stream ends, and its next enqueue starts none (a
        loop of `enqueue` then `wait`, half a millisecond a turn, looked like a stream,
        whose rules left each outcome for a next enqueue that was waiting for it: 2 ms a
        turn). True if a stream ended (the outcomes it left are to be recorded now)."""
        last_at, last_producer = self._last_offer
        if thread != last_producer:
            return False
        streamed = self._stream_until > last_at
        self._stream_until = float("-inf")
        self._last_offer = (float("-inf"), last_producer)
        return streamed

    def stream_for(self, seconds: float, now: float) -> None:
        """Treat enqueues as streaming in for `seconds` from `now` (0 ends a stream; for
        tests)."""
        self._stream_until = now + seconds if seconds > 0 else float("-inf")

    def enqueue_takes_outcomes(self, now: float, waiting: int) -> bool:
        """Whether an enqueue's exchange records the `waiting` outcomes. While the stream
        lasts they wait for a few more (recorded together, they share statements and
        bookkeeping), but not past half their RECORD_WITHIN: then the dispatcher would
        record them, in a transaction of its own."""
        due = self.record_due
        return (waiting >= STREAM_BATCH or not self.streaming(now) or due is None
                or now >= due - RECORD_WITHIN / 2)

    # -- outcomes waiting to be recorded ------------------------------------------------------
    def first_outcome(self, now: float) -> bool:
        """The first outcome of a batch waits from `now`: it is due RECORD_WITHIN later.
        True if the dispatcher would sleep past that (it must be told, if no one else
        will record it in time)."""
        self.record_due = due = now + RECORD_WITHIN
        wakes_at = self.dispatcher_wakes_at
        return wakes_at is None or wakes_at > due

    def overdue(self, now: float) -> bool:
        """True once waiting outcomes are past their time."""
        return self.record_due is not None and now >= self.record_due

    def taken(self) -> None:
        """An exchange took the waiting outcomes."""
        self.record_due = None

    def due_now(self, now: float) -> None:
        """Outcomes were given back (their exchange failed): record them at once."""
        self.record_due = now

    # -- the dispatcher's sleep -------------------------------------------------------------
    def dispatcher_timeout(self, now: float, outcomes_wait: bool,
                           timer_in: Optional[float], busy: bool = False) -> Optional[float]:
        """How long the dispatcher may sleep from `now`: until the next timer (`timer_in`
        seconds, if any), the time the waiting outcomes are due, and, while enqueues
        stream in, RECORD_WITHIN at most (an outcome left for the next enqueue is then
        recorded in time without a notification of its own, and whatever waits is taken
        up soon after the stream stops). While the pool holds tiny jobs (`busy`), STALL_AFTER
        at most: it looks for a stalled buffer, and the first outcome of each exchange's
        batch needs no notification. None: until notified."""
        waits = [] if timer_in is None else [timer_in]
        if outcomes_wait and self.record_due is not None:
            waits.append(max(0.0, self.record_due - now))
        if self.streaming(now):
            waits.append(RECORD_WITHIN)
        if busy and self.tiny():
            waits.append(STALL_AFTER)
        timeout = min(*waits, LONGEST_WAIT) if waits else None
        self.dispatcher_wakes_at = None if timeout is None else now + timeout
        return timeout

    def dispatcher_sleeps_past(self, when: float) -> bool:
        """True if the dispatcher, asleep, would not wake by itself by `when` (or is awake:
        it then sleeps on what it sees next)."""
        wakes_at = self.dispatcher_wakes_at
        return wakes_at is None or wakes_at > when

    def dispatcher_looks_soon(self, now: float) -> bool:
        """True while enqueues stream in and the dispatcher, asleep, wakes by itself within
        RECORD_WITHIN: jobs queued meanwhile need no notification (the stream's next
        enqueue makes the exchange, and the dispatcher takes over once the stream ends).
        Telling it of each one woke it about once per job, for nothing, on the other CPU."""
        return self.streaming(now) and not self.dispatcher_sleeps_past(now + RECORD_WITHIN)

    def dispatcher_woke(self) -> None:
        """The dispatcher is awake: nothing need be timed to wake it."""
        self.dispatcher_wakes_at = None
