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
only leases that expired before that pass began (those times and hold-offs are kept by
`LeaseTiming`, in `lease_timing`; which workers on this host are gone, by `neighbours`).
After a stop that did not wait for the jobs running here (or a start that failed after
it), it goes on renewing their leases (and enforcing their timeouts) until they end, and
nothing else.
"""

from __future__ import annotations

import logging
import os
import threading
from time import thread_time
from typing import Callable, Collection, ContextManager, Optional, Sequence

from .doorbell import Doorbell
from .clock import LONGEST_WAIT, Clock, join_within, real_monotonic
from .errors import RepositoryError
from .lease_timing import JUMP_TOLERANCE as JUMP_TOLERANCE  # (re-exported: defined here before)
from .lease_timing import LeaseTiming
from .lease_timing import jump_tolerance as jump_tolerance  # (re-exported: defined here before)
from .models import JobStatus
from .neighbours import expire_dead_neighbours
from .neighbours import host_identity as host_identity  # (re-exported: defined here before)
from .repository.base import JobRepository, QueueEntry, Recovery, takes_argument
from .workers import PoolSettings, WorkerPool

logger = logging.getLogger("jobcore.housekeeper")

# While its queue is well stocked, a busy manager's periodic reloads (a look for higher
# priorities elsewhere) take at most about this share of the time: one that took 0.35 s
# of CPU (a memory store holding a million ready jobs sorts them all) comes every 7 s
# rather than every poll_interval. Its cost is the housekeeper thread's CPU time: the work
# a reload keeps from the workers (it holds the GIL), which a loaded machine does not
# inflate as it does real time. A queue running low is reloaded every poll_interval
# anyway: its workers need what the reload brings.
RELOAD_SHARE = 0.05


class Housekeeper:
    """Periodic upkeep for one manager (see module docstring).

    `refill()` reloads the manager's ready queue from the repository; `stocked()` tells
    whether that queue holds plenty (then costly reloads are spaced out); `glance()` reads
    the few jobs due first, when the store changed but the workers have work here (False
    if it put that off). Intervals are float
    seconds: heartbeats every `poll_interval` (at least three a lease: `beat_every`),
    recovery every `lease_timeout / 4` (at least `poll_interval`), and change detection
    every `discovery_interval`.
    """

    def __init__(self, repository: JobRepository, pool: WorkerPool, clock: Clock, settings: PoolSettings,
                 refill: Callable[[], Optional[float]], discovery_interval: float,
                 on_recovery: Callable[[Recovery], None], stocked: Callable[[], bool] = lambda: False,
                 glance: Callable[[], bool] = lambda: True) -> None:
        self._repo = repository
        self._pool = pool
        self._clock = clock
        self._settings = settings
        self._refill = refill
        self._stocked = stocked
        self._glance = glance
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
        self._doorbell = Doorbell(repository.store_key, self.look_soon, pool.request_cancel,
                                  lambda entries: self.offered(entries))
        # Set by the manager: queue here the entries of jobs another manager of this
        # process stored, if this one queues stored jobs now; True if it does.
        self.offered: Callable[[Sequence[QueueEntry]], bool] = lambda entries: False
        self._thread: Optional[threading.Thread] = None
        self._host, self._pid = host_identity(), os.getpid()
        # Our own lease goes into our registry entry, and others' entries are reaped by
        # theirs, where the backend's methods take them (one written before does not).
        self._own_lease = ({"lease_timeout": settings.lease_timeout}
                           if takes_argument(repository.register_worker, "lease_timeout") else {})
        self._reaps_by_own_lease = takes_argument(repository.reap_workers, "now")
        pool.on_deadline = self.wake
        pool.on_free = self._look_now
        pool.on_work_stored = self.ring
        pool.on_progress_waiting = self.wake_to_flush
        clock.subscribe(self.wake)

    def listen(self) -> Callable[[], None]:
        """Hear from now on of work stored elsewhere: the rings of the other managers of
        this process on this store (`Doorbell`), and the store's word of other processes'
        (`watch_changes`: PostgreSQL's LISTEN connection is made before it returns). A start calls
        it before it reads the store, and hands what it returns to `start`, whose thread
        calls it as it stops: work stored after that read, before the thread ran, was heard
        by no one, and waited for the first look, a `discovery_interval` on. Heard before
        the pool starts, it is looked for once a worker is free (see `look_soon`)."""
        self._doorbell.join()
        try:
            unwatch = self._repo.watch_changes(self.look_soon)
        except BaseException:
            self._doorbell.leave()
            raise
        once = threading.Lock()  # taken by the first call: the thread's and a failed start's may both come

        def unlisten() -> None:
            if not once.acquire(blocking=False):
                return
            try:
                unwatch()
            finally:
                self._doorbell.leave()

        return unlisten

    def start(self, unlisten: Callable[[], None] = lambda: None) -> None:
        """Register this manager as a worker and start the thread; `unlisten` is what
        `listen` returned, called by the thread as its upkeep ends (or here, if the start
        fails; it acts once).

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
            unlisten()
            if self._pool.held_ids():  # jobs running past a stop: their leases must not lapse
                with self._cond:
                    self._thread = threading.Thread(target=self._run, args=(self._starts, False),
                                                    name="jobcore-housekeeper", daemon=True)
                    self._thread.start()
            raise
        with self._cond:
            self._stopping = False
            thread = self._thread = threading.Thread(target=self._run, args=(self._starts, True, unlisten),
                                                     name="jobcore-housekeeper", daemon=True)
        try:
            thread.start()
        except BaseException:
            self._abandon_start(thread, unlisten)
            raise

    def _abandon_start(self, thread: threading.Thread, unlisten: Callable[[], None]) -> None:
        """`start` raised as its thread started (a Ctrl-C in `Thread.start`, which waits for
        the thread to begin): no upkeep goes on. Left running, the thread heartbeated and
        heard the other managers' rings for a manager not started, and `stop` had nothing
        to stop. A thread begun sees the stop and ends (leaving the registry); one never
        begun is forgotten (joined, it would raise). The listening is undone here, once."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        began_by = real_monotonic() + 1.0  # (one begun sets its ident at once)
        while thread.ident is None and real_monotonic() < began_by:
            threading.Event().wait(0.001)
        if thread.ident is None:
            with self._cond:
                if self._thread is thread:
                    self._thread = None
        unlisten()

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
        this process stored some: see `Doorbell`; another process did, told by the store),
        if a worker here is free and nothing queued here is ready (`wants_work`). A busy
        pool has the look made once a worker finds nothing to do (`WorkerPool.look_when_free`):
        waking the housekeeper at every enqueue of a stream cost that stream a fifth of its
        rate (measured), and dropped, the look came a discovery_interval later."""
        if self._look_soon:
            return  # (read without the lock: a stale answer costs one look, or one wake)
        if not self._pool.wants_work:
            # Not dropped: a worker that finds nothing to do asks for the look then (there
            # may be no window read to come, and the next look was a discovery_interval on).
            self._pool.look_when_free()
            return
        self._look_now()

    def _look_now(self) -> None:
        """Look for new work at once (see `look_soon`; the pool's `on_free`)."""
        with self._cond:
            self._look_soon = True
            self._cond.notify_all()

    def ring(self, entries: Optional[Sequence[QueueEntry]] = None) -> None:
        """Tell the other managers of this process on this store that work was stored
        (`entries`: all of it, ready or timed, which they may queue at once)."""
        self._doorbell.ring(entries)

    def ring_cancel(self, job_id: str) -> None:
        """Tell the other managers of this process on this store that a cancel was
        requested for `job_id`, which this one does not run."""
        self._doorbell.ring_cancel(job_id)

    def hearing_cancels(self) -> ContextManager[None]:
        """While `run_pending` runs jobs on the caller's thread: a cancel another manager
        of this process requests reaches the job at once (`ring_cancel`), as it reaches a
        started manager's. (No heartbeat runs there: one from another process does not.)"""
        return self._doorbell.joined()

    def refill_soon(self) -> None:
        """Refill the ready queue now: it holds a window of the store's ready jobs and
        runs low, with more waiting there. (Any thread; a manager not started has no
        housekeeper thread, and its `run_pending` reads the store itself.)"""
        with self._cond:
            self._refill_soon = True
            self._cond.notify_all()

    def _run(self, start: int, upkeep: bool = True, unlisten: Callable[[], None] = lambda: None) -> None:
        """The thread of the start numbered `start`: upkeep (if `upkeep`; hearing of work
        stored elsewhere until `unlisten`, see `listen`) until a stop, then the leases of
        the jobs still running here until they end (unless a start or `close` comes first)."""
        if upkeep:
            try:
                self._loop()
            finally:
                unlisten()
        if self._keep_leases(start):
            self._leave_registry()

    def _loop(self) -> None:
        settings = self._settings
        # When to beat and recover, and the hold-offs after a jump, an outage, a stall or a
        # long pass (see `LeaseTiming`); made before the first change token below is read.
        times = LeaseTiming(self._clock, settings.lease_timeout, settings.poll_interval, settings.beat_every,
                            self._pool.wake_dispatcher)
        start = times.start
        next_look = start + self._discovery_interval
        last_refill = start
        refill_every = settings.poll_interval  # at least; more if reloads prove costly
        # Real monotonic: a part of the store the last refill skipped (a costly read, spaced
        # out) is read from then, whatever the token says (on a quiet store, nothing else
        # would: the timers of jobs another process cancelled meanwhile stayed until due).
        owed: Optional[float] = None
        token = self._token()
        glanced = token  # the token when the store was last read or glanced at (see below)
        heard = token  # the token when the cancel requests of the jobs held were last read
        # The first look reads the store whatever the token says: a job another process
        # stored after `start` read the store, but before that token was taken, would
        # otherwise leave no change to notice, and wait for ever.
        first_look = True
        while True:
            now = times.begin_pass()
            deadline = self._pool.time_out_overdue(now)
            times.read_top_wall(now)
            progress_due = None
            try:
                with self._cond:
                    soon, self._refill_soon, self._replan = self._refill_soon, False, False
                    asked = self._look_soon  # (by `look_soon`, or a worker free: see below)
                    if asked:
                        self._look_soon, next_look = False, now
                progress_due = self._pool.flush_progress()
                if soon:
                    last_refill = now
                    owed = self._refill()
                if now >= times.next_beat:
                    times.beat_due(now)  # (a beat half a lease late holds recovery off)
                    running = self._pool.heartbeat()
                    self._beat(running)
                    times.beat_worked()  # (after an outage, holds recovery off)
                    dead = self._expire_dead_neighbours()
                    if dead and times.held(now):
                        self._recover_the_dead(dead)
                    elif dead:
                        times.recover_now(now)  # take their jobs back now, not after the lease
                # After store calls failed here (a server down, a database locked past its
                # busy timeout), a beat must work before any recovery: our leases first.
                if now >= times.next_recover:
                    wall = times.recovery_wall(now)
                    if wall is not None:
                        self._on_recovery(self._repo.recover(wall))
                        for worker_id in self._reap(wall):
                            logger.warning("worker %s stopped beating; removed from the registry", worker_id)
                if now >= next_look:
                    next_look = now + self._discovery_interval
                    current = self._token()
                    if current is not None and current != heard and self._repo.persistent:
                        # Another process (the CLI, the dashboard, a web app) may have asked
                        # to cancel a job held here: heard now, not at the next heartbeat
                        # (`beat_every`: with poll_interval=30, a job reporting progress ran
                        # on to its end). A read of the held ids, none when nothing is held;
                        # PostgreSQL's cancel notifies, moving the token. (In this process,
                        # `cancel` reaches the job at once.)
                        heard = current
                        self._pool.hear_cancels()
                    # Look when another process changed the store and we have room for
                    # work, and in any case every poll_interval (higher priorities elsewhere)
                    # unless the token says nothing was written since the last look: the
                    # queue already holds what this manager's own writes made runnable.
                    # A busy manager with a well-stocked queue spaces its reloads out by
                    # what they cost (see RELOAD_SHARE).
                    changed = (first_look or current is None or current != token
                               or (owed is not None and real_monotonic() >= owed))
                    every = refill_every if self._stocked() else settings.poll_interval
                    due = now - last_refill >= every and (changed or not self._exact_token)
                    reload = changed and self._pool.wants_work
                    if changed and asked and not (reload or due):
                        # Asked for, but the pool turned busy meanwhile (an exchange began,
                        # a worker took a job): made once a worker is free again, not
                        # dropped (with 2 workers, 9 asked looks in 20 were).
                        self._pool.look_when_free(wake=False)
                    if reload or due:
                        first_look = False
                        token, glanced, last_refill = current, current, now
                        cpu = thread_time()
                        owed = self._refill()
                        refill_every = max(settings.poll_interval, (thread_time() - cpu) / RELOAD_SHARE)
                    elif current is not None and current != glanced and self._glance():
                        # No reload (the workers have work here), but the store changed:
                        # a glance queued the timers of the jobs due first, among them one
                        # another process scheduled due soon. While a manager's own
                        # scheduled jobs kept coming due (833 a second), such a job was
                        # found only by the reload every poll_interval: up to 2 s late.
                        # (One skipped, spaced out by its cost, is made at a later look.)
                        # (Not asked of the pool for when a worker is free, as `look_soon`
                        # is: the token moves with this manager's own writes too, and a
                        # look at every worker's pause in a drain cost more than it found.)
                        glanced = current
            except RepositoryError as exc:
                logger.error("housekeeping failed, will retry: %s", exc)
                times.store_failed(now)
            except Exception:  # the housekeeper must survive anything
                logger.exception("housekeeping failed")
            times.end_pass(now)  # (a beat that fell due while store calls waited is not late)
            wake_at = min(t for t in (times.next_beat, times.next_recover, next_look, deadline) if t is not None)
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
        at once, not sleeping, if `leave()` (asked under the lock) says the thread ends.
        The pool is told when this looks next, for the attempts and progress reports that
        need a wake-up before then (`WorkerPool.plan_upkeep`, `plan_progress`)."""
        # (the deadlines of attempts started since the pass read them included)
        wake_at = self._pool.plan_upkeep(wake_at)
        with self._cond:
            if leave():
                return True
            delay = wake_at - self._clock.monotonic()
            if progress_due is not None:  # real time, whatever clock the rest keeps
                delay = min(delay, progress_due - real_monotonic())
            if delay > 0 and not (self._refill_soon or self._replan or self._look_soon):
                now = real_monotonic()
                # (reports made since `progress_due` was read, which woke nobody, included)
                delay = self._pool.plan_progress(now + min(delay, LONGEST_WAIT)) - now
                if delay > 0:
                    self._cond.wait(delay)
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

    def _expire_dead_neighbours(self) -> list[str]:
        """End the leases of gone workers on this host (see `neighbours`); their ids."""
        return expire_dead_neighbours(self._repo, self._clock, self._host, self._pid)

    def _recover_the_dead(self, dead: list[str]) -> None:
        """While recovery is held off (see `LeaseTiming`), take back the jobs of the gone
        workers `dead` at once all the same, if no other lease has lapsed: a recovery
        takes back every lapsed lease, and another may be a live worker's whose
        heartbeats waited. Else theirs wait for the hold-off to end, with the others."""
        wall = self._clock.time()
        lapsed = [r for r in self._repo.list(status=JobStatus.RUNNING, limit=None)
                  if r.lease_expires_at is not None and r.lease_expires_at <= wall]
        if all(r.worker_id in dead for r in lapsed):
            self._on_recovery(self._repo.recover(wall))

    def _token(self) -> Optional[object]:
        try:
            return self._repo.change_token()
        except RepositoryError:
            return None
