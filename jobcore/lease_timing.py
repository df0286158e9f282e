"""`LeaseTiming`: when a housekeeper beats and recovers, and up to which wall time; it calls no store.

It keeps the housekeeper's times: the next heartbeat (and when that falls due in real
time), the next recovery, and the hold-offs that keep recovery from taking back the
leases of live workers. After its manager starts, after a wall-clock jump, after the
store failed (an outage: no worker's heartbeats got through), and after a stall of the
process (its beat came half a lease late, in real time too), recovery is held off for a
lease period, in which every live worker renews its own; after a pass that took half a
lease, recovery takes back for a lease period only leases that expired before that pass
began. It reads the clock it is given and the real monotonic clock; it renews, takes
back and sleeps on nothing itself: the housekeeper's thread does, and is its only caller
(no lock here).
"""

from __future__ import annotations

import collections
import math
import logging
from typing import Callable, Optional

from .clock import Clock, real_monotonic

# The housekeeper's logger: these warnings are its own (configurations and tests name it).
logger = logging.getLogger("jobcore.housekeeper")

# Seconds of wall-clock drift against monotonic time that count as no jump, at most (see
# `jump_tolerance`).
JUMP_TOLERANCE = 1.0


def jump_tolerance(lease_timeout: float) -> float:
    """How far (seconds) the wall clock may drift against the monotonic clock before a
    housekeeper treats it as a jump: JUMP_TOLERANCE, or a quarter of the lease if less.
    Leases are renewed at least three times a lease, so a live one has about two thirds of
    it left; a step forward by a fixed second took live jobs back under a lease of 1.2 s
    (ntpd steps any offset over 128 ms)."""
    return min(JUMP_TOLERANCE, lease_timeout / 4)


class LeaseTiming:
    """The times of one housekeeper thread's upkeep loop (see module docstring), as
    monotonic seconds of `clock`: `next_beat` and `next_recover` are when those chores
    fall due. Made at the loop's start (`start`: its monotonic time), then told of each
    pass: `begin_pass`, `read_top_wall`, `beat_due` and `beat_worked` around a heartbeat,
    `recovery_wall` for a recovery, `store_failed`, and `end_pass`. `on_jump` is called
    after a wall-clock jump."""

    def __init__(self, clock: Clock, lease_timeout: float, poll_interval: float, beat_every: float,
                 on_jump: Callable[[], None]) -> None:
        self._clock = clock
        self._lease_timeout = lease_timeout
        self._on_jump = on_jump
        self._recover_every = max(poll_interval, lease_timeout / 4)
        # Wall minus monotonic (see `_wall_now`), read together: read after the first change
        # token (a store call, long if the store is busy; a test's fake clock moving
        # meanwhile), it took that call's time for a jump back of the wall clock.
        start, first_wall = clock.monotonic(), clock.time()
        self.start = start
        self._offset = first_wall - start
        self._beat_every = beat_every
        self.next_beat = start + beat_every
        # next_beat in real time, or when the store calls last returned if later (see the stall in `beat_due`)
        self._beat_due_real = real_monotonic() + beat_every
        # No recovery before `_held_until` (monotonic): see the clock jump and the outage.
        # A manager just started holds off for a lease: it cannot tell whether a lease
        # lapsed because its worker died or because every heartbeat waited (a database
        # locked until just now, a wall clock stepped before it started). Its store worked
        # just now (it registered as a worker), and so it does for the live workers, which
        # renew their leases within a lease from now.
        self._held_until = self.next_recover = start + lease_timeout
        # The wall time the current hold-off answers for: leases that expired before it
        # lapsed with no stall, outage or jump to excuse them (their owners had a live
        # lease to renew in). A pass that began in the hold-off and took half a lease
        # takes back no lease that expired after it (see `_long_pass`).
        self._hold_wall = first_wall
        self._failing_since: Optional[float] = None  # a store call failed here since the last beat that worked
        self._tolerance = jump_tolerance(lease_timeout)
        # This pass's top: real time, the wall time read just before it (`_begin_wall`), and
        # the wall time read after its timeouts were enforced (None after a jump).
        self._begin_wall = clock.time()
        self._real_now = real_monotonic()
        self._began_held = True  # (whether this pass began in a hold-off: see `_long_pass`)
        self._top_wall: Optional[float] = None
        self._held_in_pass = False  # _long_pass found this pass long already
        # After a pass that took half a lease (see `_long_pass`): (until when, monotonic; the
        # wall time at that pass's beginning), oldest first. While any is held, recovery takes
        # back only leases that expired before the oldest one's wall time.
        self._caps: collections.deque[tuple[float, float]] = collections.deque()

    def begin_pass(self) -> float:
        """A pass begins (before its timeouts are enforced): its monotonic time, `now`."""
        # Read in this order, so that a stall of the process between any two readings,
        # or later in the pass, is seen: before the real time, the beat comes late in
        # both times (`beat_due`); after it, the pass is long (`_long_pass`), and the
        # wall time read before it, taken as the pass's beginning, is before the stall.
        # (The pass's `now` read first, then the real time, a stall between the two
        # was seen by neither, and one after the real time capped recovery by a wall
        # time read after it: another process took back the lease of a live worker
        # stopped with this one, 1 run in 24 of a test that stops both.)
        began = self._clock.monotonic()  # (before the real time: whether the pass began held)
        self._begin_wall = self._clock.time()
        self._real_now = real_monotonic()
        now = self._clock.monotonic()
        self._began_held = began < self._held_until
        self._held_in_pass = False
        if now < self.next_beat:
            # When the beat falls due in real time, seen from here: a fake clock that
            # stands still (a test between two `advance`s) moves it on, so that only
            # time this thread really lost makes its beat late (see the stall below).
            self._beat_due_real = self._real_now + (self.next_beat - now)
        return now

    def read_top_wall(self, now: float) -> None:
        """The wall time at this pass's top (after its timeouts were enforced)."""
        self._top_wall = self._wall_now(now)
        if self._top_wall is None:
            self._caps.clear()  # wall times from before a jump

    def beat_due(self, now: float) -> None:
        """The beat is due (`now >= next_beat`) and about to be made: the next one is due
        a `beat_every` from now, and a beat half a lease late holds recovery off."""
        # Late on the manager's clock (leases may have lapsed) and in real time
        # (this thread did not run): a fake clock's `advance` is the first
        # alone, and stalls nothing; with the system clock the two agree.
        late = min(now - self.next_beat, self._real_now - self._beat_due_real)
        self.next_beat = now + self._beat_every
        if late >= self._lease_timeout / 2:
            # This process stalled (suspended, a paused VM, starved of CPU): its
            # beat comes half a lease late. Whatever stalled it may have stalled
            # the other workers on its machine too, whose leases then lapsed with
            # no fault of theirs; each renews its own at its first beat after
            # it. Taking those back first would run their jobs a second time
            # beside them (or use up their attempts), so hold recovery off for
            # a lease period from now, as after an outage.
            self._hold(now - late, now + self._lease_timeout, self._clock.time() - late)
            logger.warning("this process stalled for %.1fs; expired leases are taken back no"
                           " sooner than %.1fs from now", late, self._lease_timeout)

    def beat_worked(self) -> None:
        """The heartbeat (leases and registry) went through."""
        back = self._clock.monotonic()
        if self._failing_since is not None and back - self._failing_since >= self._beat_every:
            # The store works again after an outage. The other live workers'
            # heartbeats failed as ours did, and their leases may have lapsed:
            # whoever took those back first would run their jobs a second time
            # beside them. Hold recovery off for a lease period from now, in
            # which each renews its own. (Shorter trouble cannot have kept a
            # worker beating every beat_every from renewing for a lease.)
            self._hold(self._failing_since, back + self._lease_timeout,
                       self._clock.time() - (back - self._failing_since))
            logger.warning("the store works again after failing for %.1fs; leases renewed, and"
                           " expired leases are taken back no sooner than %.1fs from now",
                           back - self._failing_since, self._lease_timeout)
        self._failing_since = None

    def _hold(self, since: float, until: float, since_wall: float) -> None:
        """Hold recovery off until monotonic `until`, for leases that expired after wall
        time `since_wall`, when its cause (a stall, an outage, a jump) began: at monotonic
        `since`. A cause that began while a hold-off ran keeps that one's wall time if
        earlier (the hold-off ran out in it: a stall soon after a stall)."""
        self._hold_wall = min(self._hold_wall, since_wall) if since < self._held_until else since_wall
        self._held_until = self.next_recover = max(self.next_recover, until)

    def recover_now(self, now: float) -> None:
        """Recovery falls due now (dead workers' jobs wait), unless it is held off."""
        self.next_recover = max(now, self._held_until)  # take their jobs back now, not after the lease

    def held(self, now: float) -> bool:
        """True while recovery is held off (see `__init__` and the hold-offs below)."""
        return now < self._held_until

    def recovery_wall(self, now: float) -> Optional[float]:
        """Recovery is due (`now >= next_recover`): the wall time to take back leases
        expired by, or None to take nothing back this time (a store call failed since the
        last beat that worked, or the wall clock jumped). The next is due a recovery
        interval from now."""
        self.next_recover = now + self._recover_every
        # The wall time recovery compares leases with is checked for a jump in
        # the same reading: one since the top of this pass (while the heartbeat
        # above waited on a busy store, say) renewed our leases with the time
        # before it, and they would expire by the time after it. A jump found
        # here is handled as there (renew first, hold recovery off a lease).
        wall = self._wall_now(now) if self._failing_since is None else None
        # (A stall after the check that follows this reading only makes `wall`
        # older: a recovery by it takes back less.)
        self._long_pass(now)
        return None if wall is None else self._capped(wall)

    def store_failed(self, now: float) -> None:
        """A store call of the pass at monotonic `now` failed."""
        if self._failing_since is None:
            self._failing_since = now

    def end_pass(self, now: float) -> None:
        """The pass at monotonic `now` is over (its store calls returned or raised)."""
        # The store calls above have returned (or raised). A beat that fell due while
        # they waited (a database another program locked holds each for its busy
        # timeout) is late from now on only: this thread ran all along, and no stall
        # of the process made it late (it once logged one, the busy timeout over half a
        # lease). A stall while it sleeps, or while it is due, still counts in full.
        self._beat_due_real = max(self._beat_due_real, real_monotonic())
        if self._failing_since is None:
            self._long_pass(now)  # a call after the recovery (or in a pass without one) waited

    def _wall_now(self, now: float) -> Optional[float]:
        """The wall time, or None if the wall clock jumped (set by hand or NTP) since
        `_offset` was taken (`now`: this pass's monotonic time). Leases are wall times
        shared with other processes, so after a jump ours are renewed at once and
        taking others' back is held off for a lease period, during which every live
        worker renews its own."""
        before, wall, after = self._clock.monotonic(), self._clock.time(), self._clock.monotonic()
        # Monotonic read on both sides of the wall reading: a fake clock's `advance`
        # (both readings move) between two of the three reads is no jump, whichever two.
        drift = min((wall - before) - self._offset, (wall - after) - self._offset, key=abs)
        if abs(drift) <= self._tolerance:
            return wall
        logger.warning("wall clock jumped by %+.1fs; renewing leases before any recovery", drift)
        self._offset += drift
        self.next_beat = now  # due in this pass (at its top) or the next
        self._hold_wall = -math.inf  # (no wall time from before the jump holds)
        self._held_until = self.next_recover = after + self._lease_timeout
        # The dispatcher sleeps real seconds until the next timer's wall time: after
        # a jump forward (a resume from suspend, NTP) that timer is due sooner.
        self._on_jump()
        return None

    def _long_pass(self, now: float) -> None:
        """If this pass has taken half a lease so far, in real time (a store call
        waited: another program locked the store; or the process stopped in it), the
        other workers' heartbeats may have waited or stopped as well, and their leases
        lapsed with no fault of theirs while this pass waited. For a lease from now,
        recovery takes back only leases that expired before this pass began (their
        owners failed to renew before any of that wait), and our own leases are renewed
        at once. Unlike a hold-off, this never stops recovery for good: locks that keep
        coming (each over half a lease) move that time on as they come."""
        took = real_monotonic() - self._real_now
        if took < self._lease_timeout / 2 or self._held_in_pass:
            return
        self._held_in_pass = True
        self.next_beat = now
        if self._top_wall is None:
            return  # a jump at the top: recovery is held off a lease already
        if not self._caps:
            logger.warning("housekeeping took %.1fs (a store locked, or this process stopped); for"
                           " %.1fs, only leases that expired before it began are taken back",
                           took, self._lease_timeout)
        cap = min(self._begin_wall, self._top_wall)
        if self._began_held:
            # The pass began in a hold-off (a stall, say, the process stopped again before
            # the other workers had beaten), which ran out while the pass stood still: the
            # leases that lapsed since that hold-off's cause began are not yet theirs to have
            # renewed (a live worker's job was taken back, 3 runs in 3).
            cap = min(cap, self._hold_wall)
        self._caps.append((self._clock.monotonic() + self._lease_timeout, cap))

    def _capped(self, wall: float) -> float:
        """`wall`, or the oldest cap's wall time if earlier (see `_caps`)."""
        monotonic = self._clock.monotonic()
        while self._caps and self._caps[0][0] <= monotonic:
            self._caps.popleft()
        return min(wall, self._caps[0][1]) if self._caps else wall
