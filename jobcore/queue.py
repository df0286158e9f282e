"""`ReadyQueue`: the in-memory index of jobs this process may run, and when.

A binary heap (`heapq`) of ready job ids ordered by priority then enqueue order, plus a
heap of timers for jobs due later. It stores ids and keys, never payloads; the repository
stays the source of truth, so an id taken from here may fail to claim, and that is fine.
It never blocks: whoever consumes it is told through `listener` when an entry became
ready or the earliest timer changed, and sleeps on its own condition until then.

A discarded entry (its job cancelled, claimed, or queued again with another time) is
dropped from the index at once but left in its heap, to be skipped when it surfaces. Each
heap counts those dead items and is rebuilt from its live ones once the dead outnumber
them by COMPACT_FLOOR, so memory stays proportional to the jobs queued: an application
scheduling jobs a week ahead and cancelling most of them (reminders, debounced work) grew
the timers heap without bound. A rebuild reads fewer than twice the items that died since
the last one, so a discard stays O(1) amortised. And a read of the store marked with
`reading` does not queue again an id discarded while it was under way; a read of the
scheduled jobs drops the timers it no longer finds (`drop_lost_timers`): jobs another
manager or process cancelled, which no discard here could name.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import math
import threading
from contextlib import contextmanager
from typing import Callable, Collection, Iterable, Iterator, Optional

from .clock import Clock
from .lock_waits import clear_way
from .repository.base import QueueEntry

# A heap item: (ordering key, seq, tie, entry, due); the key is -priority (ready) or a due
# time. `tie`, unique per item, settles what key and seq leave equal (one job queued again
# after its old item was discarded), so heapq never compares two entries (a float run_at
# with None raised TypeError, in a worker thread too). `due` is the time a timer or
# schedule is due, None for a ready item: an id queued again sooner replaces its item.
_Item = tuple[float, int, int, QueueEntry, Optional[float]]
_ties = itertools.count()

# The heaps, by the index of each in `ReadyQueue._heaps` and `_dead`. An item's heap follows
# from the item: a ready item has no due time; a timer and a schedule do, and a schedule's
# entry says it is one (see `ReadyQueue._bury`).
_READY, _TIMERS, _SCHEDULES = 0, 1, 2

# A heap is rebuilt once its dead items outnumber its live ones by this many: never for a
# few (a rebuild of a small heap would cost more than the items it frees).
COMPACT_FLOOR = 64


def _sooner(current: _Item, due_at: Optional[float]) -> bool:
    """True if an id queued as `current` is queued again due sooner (None: ready now): its
    job was retried or stored again elsewhere (another process's `retry` of a job whose
    timer was an hour ahead, say), and the old timer must not hold it back."""
    was_due = current[4]
    return was_due is not None and (due_at is None or due_at < was_due)


class ReadyQueue:
    """A priority queue of `QueueEntry` with timers, shared by a manager's dispatcher."""

    def __init__(self, clock: Clock, listener: Callable[[], None] = lambda: None) -> None:
        self._clock = clock
        self.listener = listener  # called, without any lock held, when there may be work
        # _lock guards _ready, _timers, _schedules, _members, _dead, _high_seq, _low_water,
        # _discards, _reads, _discarded, _bound, _held_back, _beyond and _claiming (`window` is set
        # once, before any thread uses the queue). An RLock, which `clear_way` can try (threads
        # queueing at once), though nothing here takes it twice.
        self._lock = threading.RLock()
        # heapq pops the smallest: -priority puts the highest first, seq keeps FIFO.
        self._ready: list[_Item] = []
        self._timers: list[_Item] = []
        # Cron schedules wait apart: firing one needs no worker, so it never queues
        # behind jobs for a free slot.
        self._schedules: list[_Item] = []
        # Each queued id's live heap item. An item whose id maps to another item (or to
        # none) was discarded: it stays in its heap until it surfaces, then is skipped.
        self._members: dict[str, _Item] = {}
        # The three heaps by kind (_READY, _TIMERS, _SCHEDULES; each changed in place, never
        # replaced) and how many dead items each holds: items no longer in _members.
        self._heaps = (self._ready, self._timers, self._schedules)
        self._dead = [0, 0, 0]
        # How many `discard` calls so far: a read's mark (see `reading`). While reads are
        # under way, _reads counts them by mark and _discarded holds the ids discarded
        # meanwhile, each with the count of discards then; emptied as the reads end.
        self._discards = 0
        self._reads: collections.Counter[int] = collections.Counter()
        self._discarded: dict[str, int] = {}
        # A persistent store's queue keeps a window of its ready jobs (`window`: at most
        # about twice that many ready entries; None, every one: a memory store, which keeps
        # each job whole anyway). `_bound` is the key (-priority, seq) of the worst ready
        # entry the last window read of the store, or a trim, left queued (None: the queue
        # holds every ready job). A ready entry worse than it is not queued: it waits in
        # the store, among others as good, for the next window read, made as the queue runs
        # low. Queued, it ran before them (a stream of LOW jobs enqueued while NORMAL ones
        # waited in the store beyond the window ran first, and each cost about 0.4 KB here:
        # 200,000 enqueued into a started manager, 85 MB). `_held_back`: entries turned
        # away while a read of the store is under way, by id, for its window to judge
        # again (the read may predate their jobs; see `push_ready`).
        self.window: Optional[int] = None
        self._bound: Optional[tuple[float, int]] = None
        self._held_back: dict[str, QueueEntry] = {}
        # How many live ready entries are worse than `_bound`: timers that came due, and
        # entries queued again by `push`. Not counted against the low mark, nor taken
        # until a window read lowers the bound: 3,000 LOW jobs scheduled earlier came due
        # beside the window, kept the queue from running low, and ran ahead of NORMAL
        # jobs waiting in the store past the window.
        self._beyond = 0
        # Ids popped for a claim not committed yet (`pop_ready(claiming=True)`, until
        # `claim_ended`): a read of the store that begins meanwhile may see their jobs still
        # waiting, and must not queue them again (see `reading`).
        self._claiming: set[str] = set()
        # Schedules popped to fire (`pop_due_schedules(firing=True)`, until `fire_ended`),
        # by the fire time they were popped for: a read of the store that began before the
        # fire committed finds that time still theirs, and an entry of it is not queued
        # again (a look after each batch queued the batch being fired: 1,000 schedules
        # sharing each second were taken to fire 1,370 times a second).
        self._firing: dict[str, float] = {}
        self._high_seq = 0  # the largest seq ever queued
        # While non-zero, a pop that leaves fewer entries queued than this calls
        # `running_low` (once; see `watch_low`).
        self._low_water = 0
        self.running_low: Callable[[], None] = lambda: None  # called without any lock held
        clock.subscribe(self.wake)  # a fake clock's jump makes timers due

    def forked(self) -> None:
        """In a forked child: a lock of its own (a parent thread may have held this one).
        Reads under way in the parent's threads are not the child's: it forgets them."""
        self._lock = threading.RLock()
        self._reads.clear()
        self._discarded.clear()
        self._firing.clear()  # (the parent's dispatcher fires them, or puts them back)

    @contextmanager
    def reading(self) -> Iterator[int]:
        """Bracket a read of the store whose entries are then queued with `read=` the mark
        this yields: an id discarded after the read began is not queued again from it.

        Such a read may see a job waiting just before a `cancel` commits, and queue it just
        after that cancel discarded it (the housekeeper's re-read of the scheduled jobs, as
        the application cancels one): the job would not run (its claim, or its schedule's
        fire, fails in the store), but its entry stayed until its time came, a week ahead
        perhaps. Whoever discards an id and queues it again (a `retry`) queues it without a
        mark, as does anything that queues what it has just written itself."""
        with self._lock:
            mark = self._discards
            self._reads[mark] += 1
            if self._claiming:  # popped before this read began, their claims not committed:
                # queued again from it, each came back stale when claimed, and switched a lone
                # manager to claims from the store, costly with many functions registered
                self._discards += 1
                for job_id in self._claiming:
                    self._discarded[job_id] = self._discards
        try:
            yield mark
        finally:
            with self._lock:
                self._reads[mark] -= 1
                if not self._reads[mark]:
                    del self._reads[mark]
                if not self._reads:
                    self._discarded.clear()
                    self._held_back.clear()
                elif self._discarded:  # reads still under way began at their marks: older discards spare them
                    oldest = min(self._reads)
                    self._discarded = {job_id: at for job_id, at in self._discarded.items() if at > oldest}

    def _discarded_since(self, job_id: str, read: Optional[int]) -> bool:
        """True if `job_id` was discarded after the read marked `read` began (see `reading`)."""
        return read is not None and self._discarded.get(job_id, -1) > read

    def _bury(self, item: _Item) -> None:
        """Count `item`, no longer in `_members`, as dead in its heap (see `_compact`)."""
        kind = _READY if item[4] is None else _SCHEDULES if item[3].is_schedule else _TIMERS
        self._dead[kind] += 1
        self._compact(kind)

    def _compact(self, kind: int) -> None:
        """Rebuild the heap of `kind` from its live items once its dead outnumber them by
        COMPACT_FLOOR. Checked as items die and as live ones leave (popped, or made
        ready): dead items behind a live head due in a day stayed after every other one
        left (found by a review). A rebuild reads fewer than twice the items buried since
        the last one: O(1) amortised a burial."""
        heap, dead = self._heaps[kind], self._dead[kind]
        if dead > len(heap) - dead + COMPACT_FLOOR:
            heap[:] = self._live_items(kind, heap)
            heapq.heapify(heap)
            self._dead[kind] = 0

    def _live_items(self, kind: int, heap: list[_Item]) -> list[_Item]:
        """The live items of `heap`, the heap of `kind`: each of them is in `_members`. Read
        from `_members` when it is the smaller (the usual case: one heap holds most of the
        queue), reading no dead item. Measured over 990,000 discards of timers a week ahead
        (66 rebuilds of some 30,000 items, about half of them dead): 0.37 s so, 2.2 s
        testing each item of the heap against `_members` (1.1 us an item)."""
        members = self._members
        if len(members) >= len(heap):
            return [kept for kept in heap if members.get(kept[3].job_id) is kept]
        if kind == _READY:
            return [kept for kept in members.values() if kept[4] is None]
        schedules = kind == _SCHEDULES
        return [kept for kept in members.values() if kept[4] is not None and bool(kept[3].is_schedule) is schedules]

    def push(self, entry: QueueEntry, due_at: Optional[float] = None, *, read: Optional[int] = None) -> None:
        """Queue `entry`, ready now or (with `due_at`, epoch seconds) once that time comes.

        An id already queued is not queued twice, unless this time it is due sooner: then
        this entry replaces the one queued. `read`: the mark of the store read that found
        the entry (see `reading`); an id discarded since is not queued."""
        clear_way(self._lock)  # threads queueing at once: see `clear_way`
        with self._lock:
            current = self._members.get(entry.job_id)
            if current is not None and not _sooner(current, due_at):
                return
            if self._discarded and self._discarded_since(entry.job_id, read):
                return
            if self._firing and read is not None and self._fired_already(entry):
                return
            self._high_seq = max(self._high_seq, entry.seq)
            item: _Item
            if entry.is_schedule:
                due = self._clock.time() if due_at is None else due_at
                heap, item = self._schedules, (due, entry.seq, next(_ties), entry, due)
                tell = not heap or due < heap[0][0]
            elif due_at is None:
                heap, item, tell = self._ready, (-entry.priority, entry.seq, next(_ties), entry, None), True
                self._beyond += self._worse(item)
            else:
                heap, item = self._timers, (due_at, entry.seq, next(_ties), entry, due_at)
                tell = not heap or due_at < heap[0][0]
            self._members[entry.job_id] = item
            heapq.heappush(heap, item)
            if current is not None:
                self._bury(current)
        if tell:
            self.listener()

    def push_ready(self, entries: list[QueueEntry], *, read: Optional[int] = None,
                   window_full: Optional[bool] = None) -> None:
        """Queue entries that are ready now (no schedules), telling the listener once.
        `read`: as for `push`. An entry worse than the window's bound is not queued (see
        `window`), unless `window_full` is given: the entries are then a window read of the
        store's best ready jobs (`window_full`: as many as asked for, so more may wait
        there), which sets the bound; entries turned away while it was read are judged
        again against it."""
        if not entries and window_full is None:
            return
        clear_way(self._lock)  # threads queueing at once: see `clear_way`
        with self._lock:
            bound = self._bound
            if window_full is not None:
                bound = self._bound = max(((-e.priority, e.seq) for e in entries), default=None) \
                    if window_full and self.window is not None else None
                held, self._held_back = self._held_back, {}
                entries = [*entries, *(e for e in held.values() if bound is None or (-e.priority, e.seq) <= bound)]
                bound = None  # (every entry now is within it)
            members, ready, high = self._members, self._ready, self._high_seq
            check = read is not None and bool(self._discarded)
            for entry in entries:
                current = members.get(entry.job_id)
                if current is None or current[4] is not None:  # a timer of its: ready now is sooner
                    if check and self._discarded_since(entry.job_id, read):
                        continue
                    key = -entry.priority
                    if bound is not None and (key, entry.seq) > bound:
                        if self._reads:
                            self._held_back[entry.job_id] = entry
                        continue
                    members[entry.job_id] = item = (key, entry.seq, next(_ties), entry, None)
                    heapq.heappush(ready, item)
                    high = max(high, entry.seq)
                    if current is not None:
                        self._bury(current)
            self._high_seq = high
            if window_full is not None:
                self._count_beyond()
            if self.window is not None and len(ready) - self._dead[_READY] > 2 * self.window:
                self._trim_ready(self.window)
        self.listener()

    def _trim_ready(self, window: int) -> None:
        """Keep the best `window` ready entries; the others wait in the store for a window
        read, asked for once the queue runs low (`running_low`). Sorting twice a window
        once per window of entries queued: a few comparisons an entry."""
        items = sorted(self._live_items(_READY, self._ready))
        for item in items[window:]:
            del self._members[item[3].job_id]
        self._ready[:] = items[:window]  # (a sorted list is a heap)
        self._dead[_READY] = 0
        self._bound = items[window - 1][:2]
        self._beyond = 0  # (the ones kept are the best)
        self._low_water = max(self._low_water, window // 4)

    def _worse(self, item: _Item) -> bool:
        """True if ready `item` is worse than the window's bound (lock held)."""
        return self._bound is not None and item[:2] > self._bound

    def _count_beyond(self) -> None:
        """Count `_beyond` afresh (lock held): the bound changed, or the heap was rebuilt."""
        self._beyond = 0 if self._bound is None else sum(
            1 for item in self._live_items(_READY, self._ready) if item[:2] > self._bound)

    def _fired_already(self, entry: QueueEntry) -> bool:
        """True if `entry`, read from the store, is of a schedule being fired for its fire
        time or a later one (see `_firing`)."""
        fired = self._firing.get(entry.job_id)
        return fired is not None and entry.run_at is not None and entry.run_at <= fired

    def _live(self, item: _Item) -> bool:
        return self._members.get(item[3].job_id) is item

    def _prune(self, kind: int) -> None:
        """Pop dead items off the top of the heap of `kind`, so its head is live (or it is
        empty)."""
        heap = self._heaps[kind]
        while heap and not self._live(heap[0]):
            heapq.heappop(heap)
            self._dead[kind] -= 1

    def _release_due(self) -> None:
        if self._timers:  # the clock is read only when a timer may be due
            self._release_timers()
        self._prune(_READY)

    def _release_timers(self) -> None:
        now = self._clock.time()
        while self._timers and self._timers[0][0] <= now:
            item = heapq.heappop(self._timers)
            if self._live(item):
                entry = item[3]
                self._members[entry.job_id] = ready = (-entry.priority, entry.seq, next(_ties), entry, None)
                heapq.heappush(self._ready, ready)
                self._beyond += self._worse(ready)
            else:
                self._dead[_TIMERS] -= 1
        self._compact(_TIMERS)

    def has_ready(self) -> bool:
        """True if an entry is ready now (timers that came due count) and may be taken:
        one worse than the window's bound waits for the next read (see `pop_ready`)."""
        with self._lock:
            self._release_due()
            return bool(self._ready) and not self._worse(self._ready[0])

    def ready_count(self) -> int:
        """About how many entries `pop_ready` could take now (timers that came due count)."""
        with self._lock:
            self._release_due()
            return max(0, len(self._ready) - self._dead[_READY] - self._beyond)

    def claim_ended(self, job_ids: Iterable[str]) -> None:
        """The claim of these ids, popped with `claiming`, committed or failed."""
        with self._lock:
            self._claiming.difference_update(job_ids)

    def pop_ready(self, limit: int, *, at_least: Optional[int] = None,
                  claiming: bool = False) -> list[QueueEntry]:
        """Take up to `limit` ready entries, best first (with `at_least`, only those of
        that priority or higher); never blocks. None worse than the window's bound: a
        timer that came due so (a LOW job scheduled earlier) waits for the read of the
        store's next window, which the low mark asks for once the entries within the
        bound run low (taken at once, it ran ahead of better jobs waiting there).

        A store read under way (`reading`) does not queue the ids taken again: it may have
        seen their jobs waiting before this pop's claim, and queued they came back stale,
        their claim in vain (which switched a lone manager to claims from the store)."""
        clear_way(self._lock)  # threads at the queue at once: see `clear_way`
        with self._lock:
            if not self._ready and not self._timers:
                return []  # nothing queued (a quiet pool's enqueue asks every time)
            self._release_due()
            taken: list[QueueEntry] = []
            bound = self._bound
            while self._ready and len(taken) < limit:
                item = self._ready[0]
                if not self._live(item):
                    heapq.heappop(self._ready)
                    self._dead[_READY] -= 1
                    continue
                if at_least is not None and item[3].priority < at_least:
                    break
                if bound is not None and item[:2] > bound:  # the rest too: they wait for the next window read
                    break
                heapq.heappop(self._ready)
                del self._members[item[3].job_id]
                taken.append(item[3])
            if self._reads and taken:
                self._discards += 1
                for entry in taken:
                    self._discarded[entry.job_id] = self._discards
            if claiming and taken:  # (`claim_ended` takes them out)
                self._claiming.update(entry.job_id for entry in taken)
            self._compact(_READY)
            low = self._ran_low()
        if low:
            self.running_low()
        return taken

    def _ran_low(self) -> bool:
        """True, once, when fewer ready entries than the low mark are left (lock held):
        the caller then calls `running_low`. Ready ones only: timers and schedules queued
        (window/4 of them, jobs a day ahead) kept the mark from ever being crossed."""
        if self._low_water and self._within() < self._low_water:
            self._low_water = 0
            return True
        return False

    def _within(self) -> int:
        """How many live ready entries are within the window's bound (lock held)."""
        return len(self._ready) - self._dead[_READY] - self._beyond

    def unbound(self) -> None:
        """Queue every ready entry from now on: no window read is coming to fetch the ones
        past a bound (the pool claims the store's best by number instead)."""
        with self._lock:
            self._bound = None
            self._beyond = 0

    def watch_low(self, below: int) -> None:
        """Call `running_low` once, when a pop (or a discard) leaves fewer than `below`
        ready entries queued (0: stop watching), or at once if fewer are queued already. For a queue holding a
        window of a bigger store: it is read again before it runs dry.

        "At once" matters: workers pop a window as soon as it is queued, before its reader
        gets here, and a queue they emptied sees no more pops to notice it by."""
        with self._lock:
            low = 0 < below and self._within() < below
            self._low_water = 0 if low else below
        if low:
            self.running_low()

    def discard(self, job_ids: Iterable[str]) -> None:
        """Forget these ids wherever they are queued: their jobs ended (cancelled), this
        process claimed them by number (not by id), so naming them in a later claim would
        be in vain, or they are about to be queued again with a new entry (a `push` of a
        queued id is ignored). A store read under way does not queue them again (see
        `reading`)."""
        with self._lock:
            self._discards += 1
            reading, at = bool(self._reads), self._discards
            forget, bury, discarded = self._members.pop, self._bury, self._discarded
            held = self._held_back
            for job_id in job_ids:
                if held:
                    held.pop(job_id, None)
                item = forget(job_id, None)
                if item is not None:
                    if item[4] is None and self._beyond and self._worse(item):
                        self._beyond -= 1
                    bury(item)
                if reading:
                    discarded[job_id] = at
            low = self._ran_low()  # (cancels emptied a window: the store is read for more)
        if low:
            self.running_low()

    def timer_mark(self) -> int:
        """A mark taken before a read of the store's scheduled jobs: timers queued after it
        are newer than that read (see `drop_lost_timers`)."""
        return next(_ties)

    def drop_lost_timers(self, found: Collection[QueueEntry], mark: int, functions: Collection[str], *,
                         whole: bool = True) -> int:
        """Forget the timers of jobs of `functions` that a read of the store's scheduled
        jobs, begun after `mark` (`timer_mark`), did not find (`found`, earliest due first;
        not `whole`: a window of them, so only timers due before its last are judged):
        no longer scheduled there, they were cancelled, run or deleted by another manager
        or process. Their claim would fail when they came due; until then each stayed
        queued here (a worker beside a web app that schedules reminders a day ahead and
        cancels most of them grew by about 0.5 KB a job for a day). Timers queued after
        `mark` stay (the read may predate their jobs), as do cron schedules. Returns how
        many were forgotten."""
        ids = {entry.job_id for entry in found}
        before = math.inf if whole else max((e.run_at for e in found if e.run_at is not None), default=-math.inf)
        with self._lock:
            members = self._members
            lost = [item for item in self._timers
                    if item[2] < mark and item[4] is not None and item[4] < before
                    and item[3].job_id not in ids and item[3].function_name in functions
                    and members.get(item[3].job_id) is item]
            for item in lost:
                del members[item[3].job_id]
                self._bury(item)
            return len(lost)

    @property
    def high_seq(self) -> int:
        """The largest `seq` ever queued here: a job stored later has a larger one, unless
        the newest jobs were deleted meanwhile (SQLite may give their seq again)."""
        with self._lock:
            return self._high_seq

    def drop_stale(self, up_to_seq: int) -> int:
        """Forget the ready entries of plain pending jobs (no `run_at`) with a `seq` up to
        `up_to_seq`: the repository just found no such job left to claim, so other
        processes took them all. Due timers stay. Returns how many were dropped; the
        periodic refill from the repository puts back any job dropped in error."""
        return self.drop_stale_pending(up_to_seq)[0]

    def drop_stale_pending(self, up_to_seq: int) -> tuple[int, Optional[int]]:
        """`drop_stale`, also telling the best priority of the entries dropped (None if
        none was): the store's best ready jobs are as good at least."""
        with self._lock:
            kept, dropped, best = [], 0, None
            for item in self._ready:
                if not self._live(item):
                    continue
                if item[3].run_at is None and item[1] <= up_to_seq:
                    del self._members[item[3].job_id]
                    dropped += 1
                    if best is None or item[3].priority > best:
                        best = item[3].priority
                else:
                    kept.append(item)
            if len(kept) < len(self._ready):
                heapq.heapify(kept)
                self._ready[:] = kept
            self._dead[_READY] = 0  # kept holds live items only
            self._count_beyond()
            low = self._ran_low()
        if low:
            self.running_low()
        return dropped, best

    def pop_due_schedules(self, limit: Optional[int] = None, *, firing: bool = False) -> list[QueueEntry]:
        """Take the cron schedules that are due to fire, earliest first (`limit` of them
        at most); never blocks. With `firing`, until `fire_ended` is told of them, a store
        read does not queue them again for the fire time they were taken for."""
        with self._lock:
            now = self._clock.time()
            due: list[QueueEntry] = []
            self._prune(_SCHEDULES)
            while self._schedules and self._schedules[0][0] <= now and (limit is None or len(due) < limit):
                item = heapq.heappop(self._schedules)
                if self._live(item):
                    entry = item[3]
                    del self._members[entry.job_id]
                    due.append(entry)
                    if firing and entry.run_at is not None:
                        self._firing[entry.job_id] = entry.run_at
                else:
                    self._dead[_SCHEDULES] -= 1
            self._compact(_SCHEDULES)
            return due

    def fire_ended(self, job_ids: Optional[Iterable[str]]) -> None:
        """The fire of these schedules (None: of all), popped with `firing`, committed or
        failed."""
        with self._lock:
            if job_ids is None:
                self._firing.clear()
            for job_id in job_ids or ():
                self._firing.pop(job_id, None)

    def next_due(self, schedules: bool = True) -> Optional[float]:
        """When the earliest timer not due yet, or schedule (unless not `schedules`), is
        due (epoch seconds), or None. Timers already due are made ready first: the
        consumer sleeps until one is due, and one due that it cannot take now (no worker
        free) is ready, not a reason to wake again at once (it woke again and again,
        spinning, while every worker was busy)."""
        with self._lock:
            if self._timers:
                self._release_timers()
            self._prune(_TIMERS)
            self._prune(_SCHEDULES)
            heads = [heap[0][0] for heap in ((self._timers, self._schedules) if schedules else (self._timers,))
                     if heap]
            return min(heads) if heads else None

    def wake(self) -> None:
        """Tell the consumer to look again (the clock jumped, or state changed)."""
        self.listener()

    def __contains__(self, job_id: object) -> bool:
        """True if `job_id` is queued here (ready, as a timer, or a schedule)."""
        return job_id in self._members

    def __len__(self) -> int:
        with self._lock:
            return len(self._members)
