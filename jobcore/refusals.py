"""`Refusals`: recording outcomes one at a time once exchanges carrying them failed, so that
one the store refuses holds no other back; not the exchange itself, nor acting on outcomes.

`Recorder.exchange` hands its outcomes here after `ISOLATE_AFTER` failed exchanges (or one
failed by an error other than the store's trouble). Each is recorded in a call of its own:
one the store cannot hold becomes a final failure of its job (`unrecordable`); one a store
that works otherwise keeps failing is given up, its lease left to lapse. Those recorded go
back to the recorder to act on (`act`), those given up to be let go of (`give_up`). No
thread, no lock here: the thread making the exchange calls in.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

from . import serialization
from .clock import real_monotonic
from .finished import Finished
from .repository.base import Cascade, JobRecord, JobRepository, Settlement
from .settle import describe

# The recorder's logger: these messages are its own (configurations and tests name it).
logger = logging.getLogger("jobcore.workers")

# After this many failed exchanges carrying an outcome, the outcomes are recorded one at a
# time (see `Refusals.record_each`): one the store cannot take must not hold the others
# back. A store that is down fails the first, and that is all.
ISOLATE_AFTER = 2

# Acts on recorded outcomes, as after an exchange (`Recorder._after_all`): the attempts,
# their settlements, the store's cascade of each, and the time they were recorded.
Act = Callable[[list[Finished], list[Settlement], list[Optional[Cascade]], float], None]


class Refusals:
    """Records outcomes one at a time for one `Recorder` (see module docstring)."""

    def __init__(self, repository: JobRepository, worker_id: str, lease_timeout: float, *,
                 act: Act, give_up: Callable[[list[str]], None]) -> None:
        self._repo = repository
        self.worker_id = worker_id
        self._lease_timeout = lease_timeout
        self._act = act
        self._give_up = give_up

    def record_each(self, finished: list[Finished], settlements: list[Settlement], now: float) -> bool:
        """Record each of `settlements` (of `finished`) in a call of its own, after a call
        recording them together failed; hand those recorded to `act`. One the repository refuses
        with a `TypeError` or `ValueError` (it cannot hold it: see `JobRepository.apply`)
        becomes a final failure of its job saying why (or, if even that is refused, is
        given up: its lease lapses and it is taken back, as after a crash). Any other error
        is the store's trouble, which may pass (a disk full for a moment, a connection
        lost): the outcome is retried later, never failed for it; if the store does not
        renew that job's lease either, it is down, and the rest wait too; if it does, for
        a whole lease, the outcome is given up (the job taken back later). `finished`
        is left holding (in place) those not recorded, to be retried; returns True if
        there are none."""
        recorded: list[tuple[Finished, Settlement, Optional[Cascade]]] = []
        left: list[Finished] = []
        given_up: list[str] = []
        pending = sorted(zip(finished, settlements),
                         key=lambda pair: pair[0].refused_since is not None)  # suspects last
        for index, (f, settlement) in enumerate(pending):
            try:
                recorded.append((f, settlement, self._record_alone(settlement, now)))
                continue
            except (TypeError, ValueError) as exc:  # the backend cannot hold this outcome: no retry helps
                refusal: Exception = exc
            except Exception as exc:
                if not self._store_works(f, now):  # down: nothing more to learn now
                    left.extend(g for g, _ in pending[index:])
                    break
                at = real_monotonic()
                if f.refused_since is None:
                    f.refused_since = at
                if at - f.refused_since < self._lease_timeout:
                    logger.error("could not record the outcome of job %s, will retry: %s", f.record.id, exc)
                    left.append(f)
                    continue
                # Refused for a whole lease by a store that works otherwise (a statement
                # timeout this one write always hits, say): kept, it would hold every
                # claim back for ever. Given up, as a crash gives it up: its lease lapses
                # and recovery takes the job back (a new attempt, counted), never failed
                # for the store's trouble.
                logger.error("could not record the outcome of job %s for %.0fs while the store works; it is given"
                             " up, and taken back once its lease expires: %s", f.record.id, at - f.refused_since, exc)
                given_up.append(f.record.id)
                continue
            logger.error("the repository refused the outcome of job %s; the job is failed: %s",
                         f.record.id, describe(refusal))
            failure = unrecordable(f.record, refusal)
            try:
                recorded.append((f, failure, self._record_alone(failure, now)))
            except Exception:
                logger.exception("could not record the failure of job %s either; it is given up, and taken"
                                 " back once its lease expires", f.record.id)
                given_up.append(f.record.id)
        if given_up:
            self._give_up(given_up)
        if recorded:
            done, decided, cascades = (list(column) for column in zip(*recorded))
            self._act(done, decided, cascades, now)
        finished[:] = left
        return not left

    def _record_alone(self, settlement: Settlement, now: float) -> Optional[Cascade]:
        return self._repo.apply([settlement], [], self.worker_id, now, now + self._lease_timeout)[0][0]

    def _store_works(self, finished: Finished, now: float) -> bool:
        """True if the store renews the job's lease (a write to its very row): it is not
        down, and the other outcomes are worth trying now. (Not proof that it can take
        this outcome's write: a full disk may refuse a long result and take a lease.)"""
        try:
            self._repo.heartbeat(self.worker_id, [finished.record.id], now + self._lease_timeout, now)
        except Exception:
            return False
        return True


def unrecordable(record: JobRecord, exc: BaseException) -> Settlement:
    """The final failure of a job whose outcome could not be decided or recorded: a short
    error saying why, which any store holds."""
    return Settlement("fail", record.id, record.attempts, error=serialization.storable_text(
                      f"its outcome could not be recorded: {describe(exc)}"),
                      error_type=serialization.storable_text(type(exc).__name__), seq=record.seq)
