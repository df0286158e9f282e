"""`Housekeeper`: one thread doing a manager's periodic upkeep, and nothing else.

It enforces attempt timeouts, renews the leases of running jobs (and hears of cancel
requests made by other processes), keeps this manager's entry in the worker registry,
takes back jobs whose lease expired or whose worker process on this host is gone, reaps
dead workers, and notices new work written by other processes through the repository's
cheap `change_token`, and stores the progress reports that wait (see `progress`). It sleeps on its own
condition until the next of those is due; it never runs jobs. After a wall-clock jump,
after the store failed it (an outage: no worker's heartbeats got through), and after a
stall of its own process (its beat came half a lease late, in real time too: what
stalled it may have stalled its neighbours), it takes no lease back for a lease period,
in which every live worker renews its own. After a pass that took half a lease (a store
locked by another program, or a stall in the pass), it takes back for a lease period
only leases that expired before that pass began. After a stop that did not wait for the jobs running here (or a
start that failed after it), it goes on renewing their leases (and enforcing their
timeouts) until they end, and nothing else.
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import threading
from typing import Callable, Collection, Optional

from .doorbell import Doorbell
from .clock import LONGEST_WAIT, Clock, join_within, real_monotonic
from .errors import RepositoryError
from .repository.base import JobRepository, Recovery, takes_argument
from .workers import PoolSettings, WorkerPool

logger = logging.getLogger("jobcore.housekeeper")

# Seconds of wall-clock drift against monotonic time that count as no jump, at most (see
# `jump_tolerance`).
JUMP_TOLERANCE = 1.0
# While its queue is well stocked, a busy manager's periodic reloads (a look for higher
# priorities elsewhere) take at most about this share of the time: one that took 0.35 s
# (a memory store holding a million ready jobs sorts them all) comes every 7 s rather
# than every poll_interval. A queue running low is reloaded every poll_interval anyway:
# its workers need what the reload brings.
RELOAD_SHARE = 0.05


class Housekeeper:
    """Periodic upkeep for one manager (see module docstring).

    `refill()` reloads the manager's ready queue from the repository; `stocked()` tells
    whether that queue holds plenty (then costly reloads are spaced out). Intervals are float
    seconds: heartbeats every `poll_interval` (at least three a lease: `beat_every`),
    recovery every `lease_timeout / 4` (at least `poll_interval`), and change detection
    every `discovery_interval`.
    """

    def __init__(self, repository: JobRepository, pool: WorkerPool, clock: Clock, settings: PoolSettings,
                 refill: Callable[[], object], discovery_interval: float,
                 on_recovery: Callable[[Recovery], None], stocked: Callable[[], bool] = lambda: False) -> None:
        self._repo = repository
        self._pool = pool
        self._clock = clock
        self._settings = settings
        self._refill = refill
        self._stocked = stocked
        self._exact_token = repository.change_token_sees_every_write
        self._on_recovery = on_recovery  # queues what came back, notifies of what failed
        self._discovery_interval = discovery_interval
        # _cond guards _stopping, _starts, _refill_soon, _replan, _look_soon and _thread;
        # the thread sleeps on it between chores.
        self._cond = threading.Condition(threading.Lock())
        self._stopping = True
        # Counts starts (and `close`): the thread of an earlier one, still renewing the
        # leases of jobs that outlived a stop (`_keep_leases`), leaves once it moves.
        self._starts = 0
        self._refill_soon = False  # see `refill_soon`
        self._replan = False  # see `wake`: set while the thread is busy, it does not sleep
        self._look_soon = False  # see `look_soon`
        # Other managers of this process on this store ring it when they store work.
        self._doorbell = Doorbell(repository.store_key, self.look_soon)
        self._thread: Optional[threading.Thread] = None
        self._host, self._pid = host_identity(), os.getpid()
        # Our own lease goes into our registry entry, and others' entries are reaped by
        # theirs, where the backend's methods take them (one written before does not).
        self._own_lease = ({"lease_timeout": settings.lease_timeout}
                           if takes_argument(repository.register_worker, "lease_timeout") else {})
        self._reaps_by_own_lease = takes_argument(repository.reap_workers, "now")
        pool.on_deadline = self.wake
        pool.on_progress_waiting = self.wake_to_flush
        clock.subscribe(self.wake)

    def start(self) -> None:
        """Register this manager as a worker and start the thread.

        The thread of an earlier start, told to stop by a `stop` that did not wait for it,
        is waited for first (it ends once the chores under way are done; one renewing the
        leases of jobs still running leaves them to this start's thread, whose heartbeats
        renew every job the pool holds): one thread does the upkeep, never two.

        If registering fails (the store down or locked) or is interrupted, it raises with
        no upkeep started; a thread renews the leases the earlier one renewed, as after a
        stop (a pool started later takes them over)."""
        with self._cond:
            self._stopping = True  # as `stop` left it (a start makes sure)
            self._starts += 1
            self._cond.notify_all()
            previous = self._thread
        try:
            if previous is not None:
                previous.join()
            self._register(self._clock.time())
        except BaseException:
            if self._pool.held_ids():  # jobs running past a stop: their leases must not lapse
                with self._cond:
                    self._thread = threading.Thread(target=self._run, args=(self._starts, False),
                                                    name="jobcore-housekeeper", daemon=True)
                    self._thread.start()
            raise
        with self._cond:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, args=(self._starts,), name="jobcore-housekeeper",
                                            daemon=True)
            self._thread.start()

    def stop(self, timeout: Optional[float]) -> None:
        """Stop the upkeep (after the pool stopped); the thread leaves the worker registry
        as it ends.

        Jobs still running here (the pool's stop did not wait for them all) keep their
        leases, so that no other worker runs them while they run here: the thread goes
        on renewing those (and enforcing their timeouts, storing their progress) until
        each has ended and its outcome was recorded (or given up, the store failing for
        a lease_timeout: see `Dispatcher`), then leaves the registry and ends (see
        `_keep_leases`). It is a daemon: if the process exits first, the leases
        lapse and the jobs are taken back as after a crash."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if self._pool.held_ids():
            return  # the thread keeps their leases, and leaves the registry after them
        if thread is None:
            self._leave_registry()
            return
        # The thread leaves the registry on its way out (see `_run`), once: leaving it here
        # too was a second store call, which in an outage (a database locked) waited a
        # whole busy timeout more. A stop whose timeout ends first leaves that to it.
        join_within(thread, timeout)

    def forked(self) -> None:
        """In a forked child: a lock of its own (the parent's thread may have held this
        one), and this process's pid to register a start under, not the parent's."""
        self._cond = threading.Condition(threading.Lock())
        self._pid = os.getpid()

    def close(self) -> None:
        """End the thread for good, before the repository closes: the leases it still
        renewed after a stop that did not wait (see `stop`) are renewed no more; those
        jobs are taken back when their leases expire, and may run elsewhere while their
        threads here go on."""
        with self._cond:
            self._stopping = True
            self._starts += 1
            self._cond.notify_all()
            thread = self._thread
        if thread is None or not thread.is_alive():
            return
        held = self._pool.held_ids()
        if held:  # (info: the worker command says so itself, after its --grace)
            logger.info("manager closed while %d of its jobs still run: their leases are renewed no more,"
                        " and they are taken back when those expire (%s)", len(held), ", ".join(held))
        thread.join()
        self._leave_registry()

    def _leave_registry(self) -> None:
        try:
            self._repo.unregister_worker(self._pool.worker_id)
        except RepositoryError as exc:
            logger.warning("could not leave the worker registry: %s", exc)

    def wake(self) -> None:
        """Re-plan now (a deadline was added, a progress report waits, or the clock jumped)."""
        with self._cond:
            self._replan = True
            self._cond.notify_all()

    def wake_to_flush(self) -> bool:
        """`wake`, for progress reports that wait to be written; False (nothing done) if
        the thread is not running, so the caller writes them itself."""
        with self._cond:
            if self._stopping:
                return False
            self._replan = True
            self._cond.notify_all()
            return True

    def look_soon(self) -> None:
        """Look for new work now, as at the next `discovery_interval` (another manager of
        this process stored some: see `Doorbell`), if this manager's workers are idle: a
        busy one reads the store when they run low anyway, and waking it at every enqueue
        of a stream cost that stream a fifth of its rate (measured)."""
        if self._look_soon or not self._pool.idle:
            return  # (read without the lock: a stale answer costs one look, or one wake)
        with self._cond:
            self._look_soon = True
            self._cond.notify_all()

    def ring(self) -> None:
        """Tell the other managers of this process on this store that work was stored."""
        self._doorbell.ring()

    def refill_soon(self) -> None:
        """Refill the ready queue now: it holds a window of the store's ready jobs and
        runs low, with more waiting there. (Any thread; a manager not started has no
        housekeeper thread, and its `run_pending` reads the store itself.)"""
        with self._cond:
            self._refill_soon = True
            self._cond.notify_all()

    def _run(self, start: int, upkeep: bool = True) -> None:
        """The thread of the start numbered `start`: upkeep (if `upkeep`) until a stop,
        then the leases of the jobs still running here until they end (unless a start or
        `close` comes first)."""
        if upkeep:
            self._doorbell.join()
            try:
                self._loop()
            finally:
                self._doorbell.leave()
        if self._keep_leases(start):
            self._leave_registry()

    def _loop(self) -> None:
        settings = self._settings
        recover_every = max(settings.poll_interval, settings.lease_timeout / 4)
        # Wall minus monotonic (see `wall_now`), read together: read after the first change
        # token below (a store call, long if the store is busy; a test's fake clock moving
        # meanwhile), it took that call's time for a jump back of the wall clock.
        start, first_wall = self._clock.monotonic(), self._clock.time()
        offset = first_wall - start
        beat_every = settings.beat_every
        next_beat = start + beat_every
        # next_beat in real time, or when the store calls last returned if later (see the stall below)
        beat_due_real = real_monotonic() + beat_every
        next_recover = start + recover_every
        held_until = start  # no recovery before this (monotonic): see the clock jump and the outage below
        failing_since: Optional[float] = None  # a store call failed here since the last beat that worked
        next_look = start + self._discovery_interval
        last_refill = start
        refill_every = settings.poll_interval  # at least; more if reloads prove costly
        token = self._token()
        # The first look reads the store whatever the token says: a job another process
        # stored after `start` read the store, but before that token was taken, would
        # otherwise leave no change to notice, and wait for ever.
        first_look = True
        tolerance = jump_tolerance(settings.lease_timeout)

        def wall_now(now: float) -> Optional[float]:
            """The wall time, or None if the wall clock jumped (set by hand or NTP) since
            `offset` was taken (`now`: this pass's monotonic time). Leases are wall times
            shared with other processes, so after a jump ours are renewed at once and
            taking others' back is held off for a lease period, during which every live
            worker renews its own."""
            nonlocal offset, next_beat, held_until, next_recover
            before, wall, after = self._clock.monotonic(), self._clock.time(), self._clock.monotonic()
            # Monotonic read on both sides of the wall reading: a fake clock's `advance`
            # (both readings move) between two of the three reads is no jump, whichever two.
            drift = min((wall - before) - offset, (wall - after) - offset, key=abs)
            if abs(drift) <= tolerance:
                return wall
            logger.warning("wall clock jumped by %+.1fs; renewing leases before any recovery", drift)
            offset += drift
            next_beat = now  # due in this pass (at its top) or the next
            held_until = next_recover = after + settings.lease_timeout
            # The dispatcher sleeps real seconds until the next timer's wall time: after
            # a jump forward (a resume from suspend, NTP) that timer is due sooner.
            self._pool.wake_dispatcher()
            return None

        # This pass's top: real time, and the wall time (None after a jump) read there.
        real_now, top_wall = real_monotonic(), None
        held_in_pass = False  # long_pass found this pass long already
        # After a pass that took half a lease (see `long_pass`): (until when, monotonic; the
        # wall time at that pass's top), oldest first. While any is held, recovery takes
        # back only leases that expired before the oldest one's wall time.
        caps: collections.deque[tuple[float, float]] = collections.deque()

        def long_pass(now: float) -> None:
            """If this pass has taken half a lease so far, in real time (a store call
            waited: another program locked the store; or the process stopped in it), the
            other workers' heartbeats may have waited or stopped as well, and their leases
            lapsed with no fault of theirs while this pass waited. For a lease from now,
            recovery takes back only leases that expired before this pass began (their
            owners failed to renew before any of that wait), and our own leases are renewed
            at once. Unlike a hold-off, this never stops recovery for good: locks that keep
            coming (each over half a lease) move that time on as they come."""
            nonlocal next_beat, held_in_pass
            took = real_monotonic() - real_now
            if took < settings.lease_timeout / 2 or held_in_pass:
                return
            held_in_pass = True
            next_beat = now
            if top_wall is None:
                return  # a jump at the top: recovery is held off a lease already
            if not caps:
                logger.warning("housekeeping took %.1fs (a store locked, or this process stopped); for"
                               " %.1fs, only leases that expired before it began are taken back",
                               took, settings.lease_timeout)
            caps.append((self._clock.monotonic() + settings.lease_timeout, top_wall))

        def capped(wall: float) -> float:
            """`wall`, or the oldest cap's wall time if earlier (see `caps`)."""
            monotonic = self._clock.monotonic()
            while caps and caps[0][0] <= monotonic:
                caps.popleft()
            return min(wall, caps[0][1]) if caps else wall

        while True:
            now = self._clock.monotonic()
            real_now = real_monotonic()
            held_in_pass = False
            if now < next_beat:
                # When the beat falls due in real time, seen from here: a fake clock that
                # stands still (a test between two `advance`s) moves it on, so that only
                # time this thread really lost makes its beat late (see the stall below).
                beat_due_real = real_now + (next_beat - now)
            deadline = self._pool.time_out_overdue(now)
            top_wall = wall_now(now)
            if top_wall is None:
                caps.clear()  # wall times from before a jump
            progress_due = None
            try:
                with self._cond:
                    soon, self._refill_soon, self._replan = self._refill_soon, False, False
                    if self._look_soon:
                        self._look_soon, next_look = False, now
                progress_due = self._pool.flush_progress()
                if soon:
                    last_refill = now
                    self._refill()
                if now >= next_beat:
                    # Late on the manager's clock (leases may have lapsed) and in real time
                    # (this thread did not run): a fake clock's `advance` is the first
                    # alone, and stalls nothing; with the system clock the two agree.
                    late = min(now - next_beat, real_now - beat_due_real)
                    next_beat = now + beat_every
                    if late >= settings.lease_timeout / 2:
                        # This process stalled (suspended, a paused VM, starved of CPU): its
                        # beat comes half a lease late. Whatever stalled it may have stalled
                        # the other workers on its machine too, whose leases then lapsed with
                        # no fault of theirs; each renews its own at its first beat after
                        # it. Taking those back first would run their jobs a second time
                        # beside them (or use up their attempts), so hold recovery off for
                        # a lease period from now, as after an outage.
                        held_until = next_recover = max(next_recover, now + settings.lease_timeout)
                        logger.warning("this process stalled for %.1fs; expired leases are taken back no"
                                       " sooner than %.1fs from now", late, settings.lease_timeout)
                    running = self._pool.heartbeat()
                    self._beat(running)
                    back = self._clock.monotonic()
                    if failing_since is not None and back - failing_since >= beat_every:
                        # The store works again after an outage. The other live workers'
                        # heartbeats failed as ours did, and their leases may have lapsed:
                        # whoever took those back first would run their jobs a second time
                        # beside them. Hold recovery off for a lease period from now, in
                        # which each renews its own. (Shorter trouble cannot have kept a
                        # worker beating every beat_every from renewing for a lease.)
                        held_until = next_recover = max(next_recover, back + settings.lease_timeout)
                        logger.warning("the store works again after failing for %.1fs; leases renewed, and"
                                       " expired leases are taken back no sooner than %.1fs from now",
                                       back - failing_since, settings.lease_timeout)
                    failing_since = None
                    if self._expire_dead_neighbours():
                        next_recover = max(now, held_until)  # take their jobs back now, not after the lease
                # After store calls failed here (a server down, a database locked past its
                # busy timeout), a beat must work before any recovery: our leases first.
                if now >= next_recover:
                    next_recover = now + recover_every
                    # The wall time recovery compares leases with is checked for a jump in
                    # the same reading: one since the top of this pass (while the heartbeat
                    # above waited on a busy store, say) renewed our leases with the time
                    # before it, and they would expire by the time after it. A jump found
                    # here is handled as there (renew first, hold recovery off a lease).
                    wall = wall_now(now) if failing_since is None else None
                    # (A stall after the check that follows this reading only makes `wall`
                    # older: a recovery by it takes back less.)
                    long_pass(now)
                    if wall is not None:
                        wall = capped(wall)
                        self._on_recovery(self._repo.recover(wall))
                        for worker_id in self._reap(wall):
                            logger.warning("worker %s stopped beating; removed from the registry", worker_id)
                if now >= next_look:
                    next_look = now + self._discovery_interval
                    current = self._token()
                    # Look when another process changed the store and we have room for
                    # work, and in any case every poll_interval (higher priorities elsewhere)
                    # unless the token says nothing was written since the last look: the
                    # queue already holds what this manager's own writes made runnable.
                    # A busy manager with a well-stocked queue spaces its reloads out by
                    # what they cost (real time: the work they keep from the workers).
                    changed = first_look or current is None or current != token
                    every = refill_every if self._stocked() else settings.poll_interval
                    due = now - last_refill >= every and (changed or not self._exact_token)
                    if (changed and self._pool.idle) or due:
                        first_look = False
                        token, last_refill = current, now
                        began = real_monotonic()
                        self._refill()
                        refill_every = max(settings.poll_interval, (real_monotonic() - began) / RELOAD_SHARE)
            except RepositoryError as exc:
                logger.error("housekeeping failed, will retry: %s", exc)
                if failing_since is None:
                    failing_since = now
            except Exception:  # the housekeeper must survive anything
                logger.exception("housekeeping failed")
            # The store calls above have returned (or raised). A beat that fell due while
            # they waited (a database another program locked holds each for its busy
            # timeout) is late from now on only: this thread ran all along, and no stall
            # of the process made it late (it once logged one, the busy timeout over half a
            # lease). A stall while it sleeps, or while it is due, still counts in full.
            beat_due_real = max(beat_due_real, real_monotonic())
            if failing_since is None:
                long_pass(now)  # a call after the recovery (or in a pass without one) waited
            wake_at = min(t for t in (next_beat, next_recover, next_look, deadline) if t is not None)
            if self._sleep(wake_at, progress_due, lambda: self._stopping):
                return

    def _keep_leases(self, start: int) -> bool:
        """After a stop that did not wait for every job running here: every
        `beat_every`, renew the leases of the jobs the pool still holds (and hear of
        cancel requests for them) and beat in the registry; store their progress and time
        them out as the upkeep does. Nothing else: no recovery, no reaping, no looking for
        work. Returns True once the pool holds no job (each ended and was recorded or
        given up, or nothing ran at the stop), False as soon as a start (whose thread renews them from
        then on) or `close` comes."""
        def superseded() -> bool:
            return self._starts != start

        next_beat = self._clock.monotonic()
        while True:
            with self._cond:
                if superseded():
                    return False
                self._refill_soon = self._replan = False  # a stopped manager loads no work
            if not self._pool.held_ids():
                return True
            now = self._clock.monotonic()
            deadline = progress_due = None
            try:
                deadline = self._pool.time_out_overdue(now)
                progress_due = self._pool.flush_progress()
                if now >= next_beat:
                    next_beat = now + self._settings.beat_every
                    self._beat(self._pool.heartbeat())
            except RepositoryError as exc:
                logger.error("renewing the leases of jobs running after the stop failed, will retry: %s", exc)
            except Exception:  # as the upkeep: the leases must outlive anything
                logger.exception("renewing the leases of jobs running after the stop failed")
            wake_at = next_beat if deadline is None else min(next_beat, deadline)
            if self._sleep(wake_at, progress_due, superseded):
                return False

    def _sleep(self, wake_at: float, progress_due: Optional[float], leave: Callable[[], bool]) -> bool:
        """Sleep until monotonic `wake_at`, real `progress_due` or a wake-up. Returns True
        at once, not sleeping, if `leave()` (asked under the lock) says the thread ends."""
        with self._cond:
            if leave():
                return True
            delay = wake_at - self._clock.monotonic()
            if progress_due is not None:  # real time, whatever clock the rest keeps
                delay = min(delay, progress_due - real_monotonic())
            if delay > 0 and not (self._refill_soon or self._replan or self._look_soon):
                self._cond.wait(min(delay, LONGEST_WAIT))
        return False

    def _beat(self, running: Collection[str]) -> None:
        """Beat in the worker registry; register again if the entry is gone (its beats
        failed, in an outage, for longer than another worker's lease_timeout)."""
        worker_id, now = self._pool.worker_id, self._clock.time()
        if self._repo.beat_worker(worker_id, running, now) is False:
            with self._cond:
                if self._stopping:  # `stop` unregistered it (it did not wait for this beat)
                    return
            logger.warning("worker %s was removed from the worker registry while its heartbeats failed;"
                           " registered again", worker_id)
            self._register(now)
            self._repo.beat_worker(worker_id, running, now)

    def _register(self, now: float) -> None:
        self._repo.register_worker(self._pool.worker_id, self._host, self._pid, now, **self._own_lease)

    def _reap(self, now: float) -> list[str]:
        """Remove the registry entries silent for their own lease_timeout (ours for
        entries that recorded none): a worker with a longer lease, beating less often,
        is not removed between its beats."""
        before = now - self._settings.lease_timeout
        if self._reaps_by_own_lease:
            return self._repo.reap_workers(before, now=now)
        return self._repo.reap_workers(before)

    def _expire_dead_neighbours(self) -> bool:
        """End the leases of workers on this host whose process is gone (SIGKILL, OOM):
        their jobs need not wait out `lease_timeout`. A reused pid only delays this.
        "This host" is `host_identity()`: a worker in another pid namespace (another
        container on the machine) has pids this process cannot see, so it is left alone."""
        found = False
        for worker in self._repo.list_workers():
            if worker.host != self._host or worker.pid == self._pid or _pid_alive(worker.pid):
                continue
            count = self._repo.expire_worker(worker.worker_id, self._clock.time())
            self._repo.unregister_worker(worker.worker_id)
            # A warning only if it held jobs: a process that ended without stopping its
            # manager (a multiprocessing child returning) leaves an entry and nothing else.
            logger.log(logging.WARNING if count else logging.INFO, "worker %s (pid %d) is gone; %d of its"
                       " jobs taken back", worker.worker_id, worker.pid, count)
            found = True
        return found

    def _token(self) -> Optional[object]:
        try:
            return self._repo.change_token()
        except RepositoryError:
            return None


def jump_tolerance(lease_timeout: float) -> float:
    """How far (seconds) the wall clock may drift against the monotonic clock before a
    housekeeper treats it as a jump: JUMP_TOLERANCE, or a quarter of the lease if less.
    Leases are renewed at least three times a lease, so a live one has about two thirds of
    it left; a step forward by a fixed second took live jobs back under a lease of 1.2 s
    (ntpd steps any offset over 128 ms)."""
    return min(JUMP_TOLERANCE, lease_timeout / 4)


def host_identity() -> str:
    """What a worker registers as its host: where its pid means a process this one can
    check. The host name, and on Linux this boot of the machine and the pid namespace
    (containers on one machine, even sharing its host name, each have their own pids)."""
    parts = [socket.gethostname()]
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            parts.append(f"boot:{boot.read().strip()[:8]}")
        parts.append(os.readlink("/proc/self/ns/pid"))  # "pid:[4026531836]"
    except OSError:
        pass  # not Linux, or no /proc: the host name alone
    return " ".join(parts)


def _pid_alive(pid: int) -> bool:
    """True if a process with this pid exists on this machine (or we cannot tell)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, under another user
        return True
    return True
