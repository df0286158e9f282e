"""`Recorder`: turns finished attempts into repository writes, and acts on what they changed;
it runs no attempt, and leaves recording outcomes one at a time to `refusals`.

It decides each settlement (complete, retry, dead-letter, cancel), writes them together
with the next claims in one repository call, then queues retries and released
dependents, forgets per-job state and publishes events. It also feeds the ready queue and
fires cron schedules. It owns no threads: the worker pool's dispatcher calls it.
"""

from __future__ import annotations

import logging
import random
from typing import Any, Callable, Collection, Iterable, Optional, Sequence

from . import serialization
from .completions import Completion
from .clock import Clock
from .errors import RepositoryError
from .execution import Outcome
from .finished import Finished as Finished  # re-exported: the pool's modules and tests import it from here
from .models import JobStatus
from .queue import ReadyQueue
from .refusals import ISOLATE_AFTER, Refusals, unrecordable
from .registry import FunctionRegistry, LocalJobs
from .repository.base import (CANCELLED_BY_REQUEST, CANCELLED_ERROR_TYPE, Cascade, JobRecord, JobRepository,
                              LastProgress, PartlyApplied, QueueEntry, Settlement, takes_argument)
from .retry import Classifier
from .scheduler import ScheduleFirer
from .settle import EVENTS, cancelled, completed, decide, event_details

logger = logging.getLogger("jobcore.workers")

Publisher = Callable[[str, JobRecord, dict[str, Any]], None]


# Told of the jobs that settled here, in one call per exchange: each one's id, and its
# `Completion` if it completed.
Settled = Callable[[list[tuple[str, Optional[Completion]]]], None]


class Recorder:
    """Records outcomes and claims for one worker pool (see module docstring)."""

    def __init__(self, repository: JobRepository, queue: ReadyQueue, registry: FunctionRegistry,
                 local: LocalJobs, clock: Clock, worker_id: str, *, lease_timeout: float,
                 max_retry_delay: float, retry_on: Classifier, rng: random.Random,
                 publish: Publisher, on_settled: Settled, ring: Callable[[], None] = lambda: None,
                 handed_back: Callable[[list[QueueEntry]], object] = lambda entries: None,
                 look: Callable[[], None] = lambda: None) -> None:
        self._repo = repository
        # Tells the other managers of this process on the store (see `Doorbell`) of jobs this
        # pool's writes made ready: dependents released, jobs handed back, runs fired. The
        # function may be one another of them runs (or has a free worker for), and it heard
        # of none of them: they waited for its next look, a discovery_interval on.
        self._ring = ring
        # Queues the jobs a stop handed back PENDING here, if this manager queues stored jobs
        # now (`Enqueuer.queue_here`): started again while its last dispatcher handed them
        # back, its start's read of the store may come before that write, and no bell rings
        # for a manager's own writes (they waited for its next look, a discovery_interval on).
        self._handed_back = handed_back
        # Whether to pass claims' seqs: to a backend that finds rows by them, through a
        # method that takes them (a subclass may override it without the argument).
        self._seqs_to_apply = repository.finds_rows_by_seq and takes_argument(repository.apply, "claim_seqs")
        self._seqs_to_insert = (repository.finds_rows_by_seq
                                and takes_argument(repository.insert_and_apply, "claim_seqs"))
        # Whether `apply` can claim the dependents it releases (`claim_released`).
        self._claims_released = repository.claims_released and takes_argument(repository.apply, "claim_released")
        self._queue = queue
        self._registry = registry
        self._local = local
        self._clock = clock
        self._worker_id = worker_id
        self._lease_timeout = lease_timeout
        self._max_retry_delay = max_retry_delay
        self._retry_on = retry_on
        self._rng = rng
        self._publish = publish
        self._on_settled = on_settled
        self._scheduler = ScheduleFirer(repository, clock, self.enqueue_entries, catch_up_within=lease_timeout,
                                        ring=ring, fired_elsewhere=look, failed=self._schedule_failed)
        self._refusals = Refusals(repository, worker_id, lease_timeout, act=self._after_all,
                                  give_up=self.forget_unrecorded)
        # The dependents the last exchange released, ready now and runnable here (see
        # `make_way`): set by each exchange, which the pool makes one at a time.
        self._released_now: list[QueueEntry] = []

    # -- feeding the queue --------------------------------------------------------------------
    def runnable(self, entry: QueueEntry) -> bool:
        """True if this process can run (or fire) the queued job."""
        return (entry.is_schedule or entry.function_name in self._registry
                or self._local.function(entry.job_id) is not None)

    def enqueue_entries(self, entries: Iterable[QueueEntry], read: Optional[int] = None,
                        window_full: Optional[bool] = None) -> None:
        """Queue entries this process can run (ready now, or as timers). `read`: the mark
        of the store read that found them (`ReadyQueue.reading`), if they were read;
        `window_full`: as for `ReadyQueue.push_ready` (a window read of the ready jobs)."""
        now = self._clock.time()
        ready = []
        for entry in entries:
            if self.runnable(entry):
                if entry.is_schedule:
                    # By its fire time, passed or not: a schedule being caught up, queued
                    # again as due "now" by each look, went behind thousands of others and
                    # fired seconds late while they kept firing.
                    self._queue.push(entry, entry.run_at, read=read)
                    continue
                due = entry.run_at if entry.run_at is not None and entry.run_at > now else None
                if due is not None:
                    self._queue.push(entry, due, read=read)
                else:
                    ready.append(entry)
        self._queue.push_ready(ready, read=read, window_full=window_full)

    def fire_schedules(self, entries: list[QueueEntry], running_since: Optional[float] = None) -> None:
        """Fire due cron schedules together (`ScheduleFirer.fire`, which tells what
        `running_since` is for); storage trouble retries them in a second, and a fault
        fires them one by one (a broken schedule must not keep the others from firing)."""
        try:
            # A read: a cancel committed after it must not leave a schedule queued.
            with self._queue.reading() as read:
                self._scheduler.fire(entries, read, running_since)
        except RepositoryError as exc:
            logger.error("could not fire %d schedule(s), retrying in 1s: %s", len(entries), exc)
            for entry in entries:
                self._queue.push(entry, self._clock.time() + 1.0)
        except Exception:  # a broken schedule must not stop the dispatcher
            if len(entries) > 1:
                for entry in entries:
                    self.fire_schedules([entry], running_since)
            else:
                logger.exception("schedule %s failed to fire", entries[0].job_id)
        finally:
            self._queue.fire_ended(entry.job_id for entry in entries)  # (popped `firing`)

    # -- recording ---------------------------------------------------------------------------
    @property
    def worker_id(self) -> str:
        """The id under which this manager claims jobs."""
        return self._worker_id

    def rename(self, worker_id: str) -> None:
        """Claim and record as `worker_id` from now on (a forked child's own: see
        `JobManager._forked`); called while nothing runs here."""
        self._worker_id = self._refusals.worker_id = worker_id

    def exchange(self, finished: list[Finished], claim_ids: list[str],
                 top_up: Optional[Iterable[str]] = None, up_to: int = 0,
                 claim_seqs: Optional[list[int]] = None, claim_released: int = 0) -> Optional[list[JobRecord]]:
        """Record `finished` and claim `claim_ids` (topped up from `top_up` names, to
        `up_to` claims if more) in one repository call, then act on the results. Returns
        the claimed records, best first, or None if the repository failed: no claim was
        made, and `finished` (changed in place) holds the outcomes not recorded; retry
        later. An error other than a `RepositoryError` made with claims drops them (none
        are made) and records the outcomes alone; made with outcomes alone, or a
        `RepositoryError` repeated, it records each alone (see `Refusals.record_each`).
        `claim_seqs`: the seqs of `claim_ids`, if known. `claim_released`: how many of the
        dependents these outcomes release, ready now and registered here, to claim as
        well (where the repository can)."""
        now = self._clock.time()
        self._released_now = []
        settlements = [f.settlement or self._settled(f, now) for f in finished]
        try:
            # Top-ups only help where other processes take jobs this one knows of.
            wanted = frozenset(top_up) if top_up is not None and self._repo.persistent else None
            more = _seqs(claim_seqs, self._seqs_to_apply)
            # `up_to` only when needed: a backend written before it still works elsewhere.
            if wanted is not None and up_to > len(claim_ids):
                more["up_to"] = up_to
            if claim_released > 0 and settlements and self._claims_released:
                more["claim_released"] = claim_released
                more["released_functions"] = self._registry.names
            cascades, claimed = self._repo.apply(settlements, claim_ids, self._worker_id, now,
                                                 now + self._lease_timeout, top_up=wanted, **more)
        except RepositoryError as exc:  # storage trouble: retry, never die
            logger.error("could not record %d outcomes / claim %d jobs, will retry: %s",
                         len(settlements), len(claim_ids), exc)
            if isinstance(exc, PartlyApplied):  # (a backend's `apply` made one call at a time)
                # Those recorded are acted on now: retried, they would be "no longer held".
                done = len(exc.cascades)
                self._after_all(finished[:done], settlements[:done], exc.cascades, now)
                finished[:done], settlements = [], settlements[done:]
            for f in finished:
                f.failed_exchanges += 1
            if finished and max(f.failed_exchanges for f in finished) >= ISOLATE_AFTER:
                # Perhaps one outcome the store refuses, every time: the others are recorded
                # alone, and the claims wait for the next exchange (it retries them).
                self._refusals.record_each(finished, settlements, now)
            return None
        except Exception:  # a backend bug, or a claim it cannot make: never die, never loop
            if not claim_ids and wanted is None:
                # Retried as it is, one outcome the backend refuses (a result too long for
                # its column: see `JobRepository.apply`) stalled every outcome and claim
                # after it, for ever. Each is recorded alone, and one refused alone fails
                # its job.
                logger.exception("repository failed to record %d outcomes; each is recorded alone",
                                 len(settlements))
                return [] if self._refusals.record_each(finished, settlements, now) else None
            # Retried with the same claims it would fail again for ever, the outcomes with
            # it (a corrupt row's id once did: its jobs stayed RUNNING, nothing else ran).
            # The claims are dropped (their jobs stay in the store, as after a lost race)
            # and the outcomes recorded alone.
            logger.exception("repository failed to record %d outcomes and claim %d jobs; the claims are"
                             " dropped and the outcomes recorded alone", len(settlements), len(claim_ids))
            for f, settlement in zip(finished, settlements):
                f.settlement = settlement  # decided once
            return self.exchange(finished, []) if finished else []
        self._after_all(finished, settlements, cascades, now,
                        claimed={record.id for record in claimed} if "claim_released" in more else ())
        self._released_now = self._ready_released(cascades, now)
        if self._released_now and self._claims_released:
            taken = {record.id for record in claimed}
            if any(entry.job_id not in taken for entry in self._released_now):
                # Dependents ready and runnable here that this exchange had no room to claim
                # (every worker busy): another manager of the process may have a free one.
                # Told only of those it did not run, an idle one waited for this pool's
                # worker (6 s beside a long job) or its next look.
                self._ring_safely()
        if len(claimed) > 1:
            claimed.sort(key=lambda r: (-r.priority, r.seq))
        return claimed

    def exchange_inserting(self, record: JobRecord, claim_new: bool, finished: list[Finished],
                           claim_ids: list[str], now: float,
                           claim_seqs: Optional[list[int]] = None) -> list[JobRecord]:
        """`exchange`, storing the plain pending `record` in the same repository call
        (`insert_and_apply`), claimed if `claim_new`. Returns the claimed records, best
        first. Raises what the repository raised: nothing was stored, recorded or
        claimed then (the caller decides what to tell; it may be the new job's fault)."""
        self._released_now = []
        settlements = [f.settlement or self._settled(f, now) for f in finished]
        cascades, claimed = self._repo.insert_and_apply(record, settlements, claim_ids, self._worker_id, now,
                                                        now + self._lease_timeout, claim_new=claim_new,
                                                        **_seqs(claim_seqs, self._seqs_to_insert))
        if finished:
            self._after_all(finished, settlements, cascades, now)
            self._released_now = self._ready_released(cascades, now)
        if len(claimed) > 1:
            claimed.sort(key=lambda r: (-r.priority, r.seq))
        return claimed

    def _ready_released(self, cascades: Sequence[Optional[Cascade]], now: float) -> list[QueueEntry]:
        """The dependents `cascades` released that are ready now and runnable here."""
        return [entry for cascade in cascades if cascade is not None for entry in cascade.released
                if not entry.is_schedule and (entry.run_at is None or entry.run_at <= now)
                and self.runnable(entry)]

    def make_way(self, claimed: list[JobRecord]) -> list[JobRecord]:
        """`claimed` (best first), the claims of the exchange just made, less those that
        are worse than dependents its outcomes released: their jobs were chosen from the
        queue before the outcomes were recorded, when the released ones were not ready
        yet. The worse ones are handed back (PENDING again, the attempt not counted) and
        queued here again, so that the next claim takes the released ones first, as it
        would take jobs of their priority enqueued then. Most exchanges release nothing."""
        released, self._released_now = self._released_now, []
        if not released or not claimed:
            return claimed
        kept = list(claimed)
        worse: list[JobRecord] = []
        taken = {record.id for record in claimed}  # (claimed by number, a released one may be among them)
        for priority in sorted((entry.priority for entry in released if entry.job_id not in taken), reverse=True):
            if not kept or kept[-1].priority >= priority:
                break
            worse.append(kept.pop())
        if not worse:
            return claimed
        pending, held = self._release(worse)
        self.enqueue_entries([record.queue_entry() for record in pending])
        if held:  # the store failed: those are still ours to run
            kept = sorted(kept + held, key=lambda r: (-r.priority, r.seq))
        return kept

    def _after_all(self, finished: list[Finished], settlements: list[Settlement],
                   cascades: list[Optional[Cascade]], now: float, claimed: Collection[str] = ()) -> None:
        """Act on the recorded outcomes, then tell of the jobs they settled. `claimed`: the
        ids the same step claimed (dependents it released among them are not queued)."""
        settled: list[tuple[str, Optional[Completion]]] = []
        for f, settlement, cascade in zip(finished, settlements, cascades):
            try:
                self._after(f, settlement, cascade, now, settled, claimed)
            except Exception:  # bookkeeping must never end the thread making the exchange
                logger.exception("after recording job %s, acting on its outcome failed", f.record.id)
        if any(not self.runnable(entry) for cascade in cascades if cascade is not None
               for entry in cascade.released):
            # Only for a dependent this process does not run: rung at every release, a
            # chain drained beside two idle managers made them read the store at each link
            # (0.45x the rate). One it runs is claimed here, or (no room) rung for by
            # `exchange`.
            self._ring_safely()
        if settled:
            try:
                self._on_settled(settled)
            except Exception:  # waiters then find these by reading the store
                logger.exception("telling of %d settled jobs failed", len(settled))

    def decide(self, finished: Finished) -> Optional[Settlement]:
        """The settlement of `finished` as of now, or None if deciding failed (it is then
        decided again when recorded). Called by the thread that ran the attempt."""
        try:
            settlement = self._settlement(finished, self._clock.time())
            if finished.last_report is None and not finished.log_lines:
                return settlement
            return self._with_report_and_logs(settlement, finished)
        except Exception:  # never let bookkeeping kill a worker thread
            logger.exception("could not decide the outcome of job %s here", finished.record.id)
            return None

    def decide_given_up(self, finished: Finished) -> Optional[Settlement]:
        """`decide` for an attempt given up at its timeout (its last report and log lines
        taken first, as `_settled` takes them), on a thread of its own; None if deciding
        failed (decided again when recorded)."""
        try:
            return self._settled(finished, self._clock.time())
        except Exception:  # (never: `_settled` fails the job rather than raise)
            logger.exception("could not decide the outcome of job %s here", finished.record.id)
            return None

    def _settled(self, finished: Finished, now: float) -> Settlement:
        """`_settlement`, or if even that fails (a bug of the engine's), a final failure
        saying so: the thread recording it must go on, and the job must not stay RUNNING.
        An attempt given up at its timeout takes its last report and log lines first."""
        collect, finished.collect = finished.collect, None
        if collect is not None:
            try:
                finished.last_report, finished.log_lines = collect()
            except Exception:  # the outcome is recorded without them
                logger.exception("job %s: the last progress report and log lines of its attempt given up"
                                 " could not be taken", finished.record.id)
        try:
            settlement = self._settlement(finished, now)
        except Exception as exc:
            logger.exception("could not decide the outcome of job %s; it is failed", finished.record.id)
            settlement = unrecordable(finished.record, exc)
        return self._with_report_and_logs(settlement, finished)

    def _with_report_and_logs(self, settlement: Settlement, finished: Finished) -> Settlement:
        """`settlement` carrying the attempt's last progress report, if one may not be in
        its row yet, and its log lines waiting, for the store to record with it (details
        encoded here, once, for a persistent store). Details the store cannot hold (changed
        by the job since it reported them) are logged, and the report left out: the
        outcome goes on."""
        report, progress = finished.last_report, None
        if report is not None:
            details, encoded = report.details, None
            try:
                if self._repo.persistent:
                    encoded = "{}" if not details else serialization.encode(
                        details, field="progress details", max_bytes=self._repo.max_payload_bytes)
                progress = LastProgress(report.progress, report.message, details, encoded)
            except (TypeError, ValueError) as exc:
                logger.warning("could not store the last progress report of job %s: %s", finished.record.id, exc)
        if progress is None and not finished.log_lines:
            return settlement
        return settlement.carrying(progress, finished.log_lines)

    def _settlement(self, finished: Finished, now: float) -> Settlement:
        record, outcome = finished.record, finished.outcome
        classifier: Optional[Classifier] = None
        if outcome.error is None:  # succeeded: no retry policy to look up (see `completed`)
            if not self._repo.persistent:
                return completed(record, outcome.value, finished.ran_for)
            try:  # encoded once, here: the repository stores this text as it is
                encoded = serialization.encode(outcome.value, field="result",
                                               max_bytes=self._repo.max_payload_bytes)
            except (TypeError, ValueError) as exc:  # the result cannot be stored: a failure,
                outcome, classifier = Outcome(error=exc, traceback=None), _never_retried  # for good
            else:
                return completed(record, outcome.value, finished.ran_for, encoded)
        if classifier is None:
            classifier = self._local.retry_on(record.id) or self._retry_on
        return decide(record, outcome, cancel_requested=finished.context.cancel_requested,
                      classifier=classifier, rng=self._rng, max_retry_delay=self._max_retry_delay,
                      now=now, ran_for=finished.ran_for)

    def _after(self, finished: Finished, settlement: Settlement, cascade: Optional[Cascade],
               now: float, settled: list[tuple[str, Optional[Completion]]], claimed: Collection[str]) -> None:
        """Act on one recorded outcome; add the jobs it settled to `settled` (`claimed`: see
        `_after_all`)."""
        record = finished.record
        if cascade is None:
            logger.warning("job %s was no longer held by this worker; its outcome is discarded", record.id)
            settled.append((record.id, None))
            return
        if cascade.cancelled_instead:  # cancel() came too late for the worker to see: no retry timer
            settlement = cancelled(record)
        if settlement.kind == "retry":  # a timer: its run_at keeps it from drop_stale
            self._queue.push(record.queue_entry()._replace(run_at=settlement.retry_at), settlement.retry_at)
        elif settlement.kind == "complete":
            self._local.forget(record.id)
        else:  # failed or cancelled: a retry runs it again
            self._local.ended(record.id)
        if cascade.released:  # most release nothing
            self.enqueue_entries([e for e in cascade.released if e.job_id not in claimed] if claimed
                                 else cascade.released)
        for job_id in cascade.cancelled:
            self._local.ended(job_id)
            settled.append((job_id, None))
        settled.append((record.id, Completion.of(finished.record, finished.context.reported_progress, settlement, now,
                                                        self._repo.persistent)))
        details = {"result": settlement.result} if settlement.kind == "complete" else event_details(settlement)
        self._publish(EVENTS[settlement.kind], record, details)

    def _ring_safely(self) -> None:
        """`_ring`, on a thread that must go on whatever it raises."""
        try:
            self._ring()
        except Exception:  # (not expected) the others find the jobs at their next look
            logger.exception("telling the other managers of this process of new work failed")

    def _schedule_failed(self, schedule: JobRecord, error: str) -> None:
        """A schedule ended FAILED (`CorruptJob`) as it came due: notification channels
        hear of it as of any job entering the dead-letter queue."""
        self._publish(EVENTS["fail"], schedule, {"error": error, "error_type": "CorruptJob"})

    def forget_unrecorded(self, job_ids: list[str]) -> None:
        """Let go of finished jobs whose outcomes will not be recorded here (see
        `Dispatcher`): they are told to `on_settled` as settled here, unrecorded, so
        whoever waits for them reads the store again, and nothing renews their leases."""
        self._on_settled([(job_id, None) for job_id in job_ids])

    def hand_back(self, records: list[JobRecord]) -> None:
        """Release claimed jobs that never started (at stop): PENDING again, uncounted; or
        CANCELLED, if their cancellation was requested meanwhile (the store decides, in
        the same write: see `JobRepository.release`), which is then told as a cancel is.
        Every one is told to `on_settled`, so whoever waits for it here looks again."""
        if records:
            pending, _ = self._release(records)
            if pending:
                self._handed_back([record.queue_entry() for record in pending])

    def give_back(self, records: list[JobRecord]) -> list[JobRecord]:
        """Release claimed jobs that never started, as `hand_back` does, while the pool
        runs: those handed back PENDING are queued here again. Returns those still held
        here: the store failed, and their rows say they are still this worker's claim (a
        failed write may have committed before it failed: put back as held, such a job ran
        with no claim, its outcome was discarded, and it ran again once found PENDING)."""
        pending, failed = self._release(records, then="their rows tell whether they are still held here")
        self.enqueue_entries([record.queue_entry() for record in pending])
        if not failed:
            return []
        try:
            rows = self._repo.get_many([record.id for record in failed])
        except RepositoryError:
            return failed  # (most likely nothing was written: still held here)
        held, queued = [], []
        for record in failed:
            row = rows.get(record.id)
            if (row is not None and row.status is JobStatus.RUNNING and row.worker_id == self._worker_id
                    and row.attempts == record.attempts):
                record.cancel_requested = row.cancel_requested
                held.append(record)
            elif row is not None and row.status is JobStatus.PENDING:
                queued.append(row.queue_entry())
        self.enqueue_entries(queued)
        return held

    def _release(self, records: list[JobRecord],
                 then: str = "their leases will lapse") -> tuple[list[JobRecord], list[JobRecord]]:
        """`hand_back`: returns the records handed back PENDING, and those the store
        failed to hand back (still held here; their leases lapse unless renewed)."""
        now = self._clock.time()
        releases = [Settlement("release", r.id, r.attempts, seq=r.seq) for r in records]
        settled: list[tuple[str, Optional[Completion]]] = [(r.id, None) for r in records]
        cascades: list[Optional[Cascade]] = []
        pending: list[JobRecord] = []
        try:
            cascades, _ = self._repo.apply(releases, [], self._worker_id, now, now)
        except RepositoryError as exc:
            logger.error("could not hand back %d unstarted jobs (%s): %s", len(records), then, exc)
            if isinstance(exc, PartlyApplied):  # the first ones were handed back
                cascades = exc.cascades
        finally:
            for record, cascade in zip(records, cascades):
                if cascade is not None and cascade.cancelled_instead:
                    self._handed_back_cancelled(record, cascade, settled)
                elif cascade is not None:
                    pending.append(record)
            self._on_settled(settled)
            if pending:
                self._ring_safely()
        return pending, records[len(cascades):]

    def _handed_back_cancelled(self, record: JobRecord, cascade: Cascade,
                               settled: list[tuple[str, Optional[Completion]]]) -> None:
        """A job handed back unstarted ended CANCELLED (its cancel was requested while it
        waited to start): act on it as on a cancel; its dependents go in `settled`."""
        self._local.ended(record.id)
        for job_id in cascade.cancelled:
            self._local.ended(job_id)
            settled.append((job_id, None))
        uncounted = record.copy()  # as the store left it: the attempt never started
        uncounted.attempts -= 1
        details = event_details(Settlement("cancel", record.id, uncounted.attempts, error=CANCELLED_BY_REQUEST,
                                           error_type=CANCELLED_ERROR_TYPE))
        try:
            self._publish(EVENTS["cancel"], uncounted, details)
        except Exception:  # a notification must not keep the others from being told
            logger.exception("announcing the cancel of job %s failed", record.id)


def _never_retried(exc: BaseException) -> bool:
    """The classifier for a return value the store cannot hold: whatever the error's
    message says (a `sqlite3.Connection` mentions a connection), a retry cannot help."""
    return False


def _seqs(claim_seqs: Optional[list[int]], taken: bool) -> dict[str, Any]:
    """The `claim_seqs` keyword argument, for a repository method that `taken` says takes
    it (and only then: a backend written before it still works)."""
    return {"claim_seqs": claim_seqs} if taken and claim_seqs is not None else {}


