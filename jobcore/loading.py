"""`QueueLoader`: fills a manager's `ReadyQueue` with the stored jobs it can run.

A window of the best ready jobs, and the scheduled ones as timers; the housekeeper's
reloads space out a read of the scheduled jobs that proves costly, and are told when a
read they skipped is owed. It owns no thread: the manager's start, its
`register_function` and the housekeeper call it.
"""

from __future__ import annotations

import time
from typing import Collection, Optional

from .clock import real_monotonic
from .housekeeper import RELOAD_SHARE
from .queue import ReadyQueue
from .registry import FunctionRegistry
from .repository.base import JobRepository
from .repository.memory import MemoryRepository
from .workers import WorkerPool

READY_LOAD_LIMIT = 10_000  # a window: the queue is refilled as it drains
# CPU seconds: a read of the scheduled jobs that cost more than this (about a thousand rows)
# is spaced out on the housekeeper's looks, to about RELOAD_SHARE of the time.
SPACED_SCHEDULED_READ = 0.005
# While that read is spaced out, each look reads this many of the earliest scheduled jobs
# (a few rows of an index: about 0.3 ms): a job another process schedules due soon is
# among them, and is queued as a timer at once. Found only by the spaced read, one stored
# 0.3 s ahead beside 20,000 due later started up to 0.7 s late (SPEC: within 100 ms).
EARLIEST_SCHEDULED = 100
# On the memory store, whose feed gives the rows made runnable since a look (see
# `QueueLoader.__init__`), the read of every row is a safety net only, made at most about
# this share of the time by its cost: at RELOAD_SHARE, an idle manager sharing the store
# with a producer, 100,000 jobs of another function pending, spent 5% of a CPU on it.
FULL_READ_SHARE = RELOAD_SHARE / 10


class QueueLoader:
    """Loads one manager's queue from its repository (see module docstring)."""

    def __init__(self, repository: JobRepository, registry: FunctionRegistry, pool: WorkerPool,
                 queue: ReadyQueue, *, bounded: bool = True) -> None:
        self._repo = repository
        self._registry = registry
        self._pool = pool
        self._queue = queue
        # The queue keeps a window of a persistent store's ready jobs, twice at most, if
        # `bounded`: an immediate manager's must hold every job it enqueues, to run it
        # before `enqueue` returns (it has no housekeeper to read the store again), and the
        # memory store keeps every job whole anyway (see `ReadyQueue.window`).
        queue.window = READY_LOAD_LIMIT if bounded and repository.persistent else None
        # Real monotonic time before which a spaced load skips the scheduled jobs. Set by
        # the thread loading the queue (the housekeeper's, one starting the manager, one
        # registering a function on it): a value lost to a race only moves a read.
        self._scheduled_read_after = 0.0
        # The memory store keeps a feed of the rows made runnable (see
        # `MemoryRepository.runnable_since`): after a full load, the housekeeper's reloads
        # read what it added since (`_feed_at`, its position then), and read every row
        # again only as often as FULL_READ_SHARE allows by that read's cost (from
        # `_full_read_after`, real monotonic). Set by the thread loading the queue, as above.
        self._feed = repository if isinstance(repository, MemoryRepository) else None
        self._feed_at: Optional[int] = None
        self._full_read_after = 0.0
        # Whether the last window of ready jobs read was full (see `load`). Set as above.
        self._more_ready = False
        # Real monotonic time before which a persistent store's `glance` is skipped (by
        # its cost, as the read of the scheduled jobs). Set by the housekeeper's thread.
        self._glance_after = 0.0

    def stocked(self) -> bool:
        """True while the queue holds half a window or more (reloads may be spaced out)."""
        return len(self._queue) >= READY_LOAD_LIMIT // 2

    def spaced_reload(self) -> Optional[float]:
        """The housekeeper's reload (`load`, spaced); if it skipped the scheduled jobs, the
        real monotonic time from which that read is owed (else None): on a store quiet
        from then on, nothing else would make it, and the timers of jobs another process
        cancelled meanwhile stayed queued until their time came."""
        if self._feed is not None:
            self._follow_feed(self._feed)
            return None
        self._load_ready()
        return self._read_scheduled(spaced=True)

    def glance(self) -> bool:
        """The housekeeper's look when the store changed but the pool wants no work (no
        reload then): queue the EARLIEST_SCHEDULED jobs due first of each function (on
        the memory store, what its feed gained), so that a job another process or manager
        schedules due soon is queued before its time. False if skipped: on a persistent
        store glances are spaced out by their cost, to about RELOAD_SHARE of the time
        (200 functions: 8 ms each on SQLite, 12-21 of PostgreSQL's server, and a busy
        manager's own commits change the token at every look). Not the memory store's,
        a read of what its feed gained since: put off, it only grows (beside a producer
        storing 18,000 jobs a second, spaced glances came 2 s apart, and a job it
        scheduled 300 ms ahead started up to 0.9 s late)."""
        if self._feed is not None:
            self._follow_feed(self._feed, glance=True)
            return True
        began = real_monotonic()
        if began < self._glance_after:
            return False
        cpu = time.thread_time()
        self._read_earliest(self._registry.names)
        self._glance_after = began + (time.thread_time() - cpu) / RELOAD_SHARE
        return True

    def _read_earliest(self, names: Collection[str]) -> None:
        """Queue the EARLIEST_SCHEDULED jobs due first of each function as timers (a few
        rows of an index each)."""
        with self._queue.reading() as read:
            self._pool.enqueue_entries(self._repo.scheduled(names, EARLIEST_SCHEDULED), read)

    def _follow_feed(self, feed: MemoryRepository, glance: bool = False) -> None:
        """`spaced_reload` on the memory store: queue the rows it made runnable since the
        last read, and forget those that ended since (cancelled by another manager), or
        read them all if that read is due (see `__init__`). The window of the best ready
        jobs is read again, as on other stores, while the last one was full (more wait
        in the store than it holds), and the pool's claims by number told (see
        `_load_ready`). Nothing is ever owed: the feed tells every change a read of them
        all would find. A `glance` reads the feed alone (if it still holds its place)."""
        began = real_monotonic()
        at = self._feed_at
        if at is not None and (glance or began < self._full_read_after):
            window = self._more_ready or self._pool.claims_from_store
            with self._queue.reading() as read:
                found = feed.runnable_since(at, self._registry.names)
                if found is not None:
                    ready, scheduled, gone, self._feed_at = found
                    self._queue.discard(gone)
                    self._pool.enqueue_entries(scheduled if window else [*ready, *scheduled], read)
            if found is not None:
                if window and not glance:
                    self._load_ready()
                return
        if glance:
            return
        cpu = time.thread_time()
        self.load()
        self._full_read_after = began + (time.thread_time() - cpu) / FULL_READ_SHARE

    def load(self, spaced: bool = False) -> bool:
        """Index the stored jobs this manager can run (up to a window of the best). True
        if the window of ready jobs was full: more may wait in the store, and the queue
        is read again before it runs dry.

        With `spaced` (the housekeeper's looks), a read of the scheduled jobs that proved
        costly is skipped until its cost is about RELOAD_SHARE of the time since: an idle
        manager holding thousands of jobs scheduled for later read them all again at every
        look after another process's commit (each heartbeat or progress report of a
        worker beside it), up to 85% of a CPU with 20,000. Those it holds are queued as
        timers already; one another process schedules is found at the next look among the
        EARLIEST_SCHEDULED read then (on a persistent store), or else at the next read of
        them all (a second or two at that size)."""
        if self._feed is not None:
            self._feed_at = self._feed.feed_position()  # (before the reads: see `_follow_feed`)
        more = self._load_ready()
        self._read_scheduled(spaced)
        return more

    def _load_ready(self) -> bool:
        """Queue the window of the best ready jobs (see `load`); True if it was full."""
        names = self._registry.names
        more = False
        if not self._pool.claims_from_store:
            # Each read is marked (`ReadyQueue.reading`): a job it saw waiting just before a
            # cancel committed is not queued again after that cancel discarded it.
            with self._queue.reading() as read:
                ready = self._repo.ready(names, READY_LOAD_LIMIT)
                more = self._more_ready = len(ready) >= READY_LOAD_LIMIT
                self._pool.enqueue_entries(ready, read, window_full=more)
            self._queue.watch_low(READY_LOAD_LIMIT // 4 if more else 0)
        else:
            # No ids to queue: the pool claims the store's best by number, in an exchange
            # the dispatcher makes when told (an idle pool would otherwise never look). No
            # window is read, so none bounds the queue: jobs stored meanwhile are queued.
            self._queue.unbound()
            self._pool.wake_dispatcher()
        return more

    def _read_scheduled(self, spaced: bool) -> Optional[float]:
        """Queue the scheduled jobs as timers, dropping those of jobs no longer scheduled
        (see `load`). Spaced and skipped: returns when the read is owed (real monotonic)."""
        names = self._registry.names
        began = real_monotonic()
        if spaced and began < self._scheduled_read_after:
            # (Not on a store kept in memory other than ours, which follows its feed: it
            # reads its earliest jobs as costly as all of them.)
            if self._repo.persistent:
                self._read_earliest(names)
            return self._scheduled_read_after
        cpu = time.thread_time()  # its cost: CPU, which a loaded machine does not inflate
        with self._queue.reading() as read:
            mark = self._queue.timer_mark()
            found = self._repo.scheduled(names, READY_LOAD_LIMIT)
            self._pool.enqueue_entries(found, read)
        # Timers of jobs no longer scheduled in the store (cancelled elsewhere) go.
        self._queue.drop_lost_timers(found, mark, names, whole=len(found) < READY_LOAD_LIMIT)
        took = time.thread_time() - cpu
        self._scheduled_read_after = began + took / RELOAD_SHARE if took > SPACED_SCHEDULED_READ else 0.0
        return None
