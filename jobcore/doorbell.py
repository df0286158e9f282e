"""`Doorbell`: managers of one process on the same store wake each other's housekeeper
when one of them stores work or makes stored work ready (a retry, released dependents,
jobs handed back, fired runs, recovered jobs), and tell each other of a cancel requested
for a job one of them runs.

A manager learns of jobs another manager stored by looking at the store's change token
every `discovery_interval` (50 ms): across processes there is no cheaper way. Within one
process there is: a producer manager beside a worker manager on the same SQLite file (or
the same repository object) rings, and the worker manager looks at once, so its pickup
takes about what a single manager's does instead of up to a look interval. An enqueue's
ring hands the other managers the entries of the jobs it stored, which they queue as
their own enqueues' (no look, no read of the store); any other ring only asks for the
look, and whether the housekeeper then reads the store is its own rule (it reads when
its workers have room), so a stream of enqueues costs a busy manager no reads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import TYPE_CHECKING, Callable, Hashable, Iterator, Optional, Sequence

if TYPE_CHECKING:
    from .repository.base import QueueEntry

logger = logging.getLogger("jobcore")

# _lock guards _rings, the bells that joined, by key. `ring` reads _rings without the lock
# (one dict read, atomic under the GIL); `join` and `leave` replace its tuples whole.
_lock = threading.Lock()
_rings: dict[Hashable, tuple["Doorbell", ...]] = {}


def _forked() -> None:
    """In a forked child: the parent's housekeepers stayed in the parent, so no bell rings
    for them here (and a parent thread may have held the lock as it forked)."""
    global _lock, _rings
    _lock = threading.Lock()
    _rings = {}


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


class Doorbell:
    """One manager's place among the managers of this process on one store.

    `key` names the store (see `JobRepository.store_key`); `wake` asks this manager's
    housekeeper to look for new work now, and `cancel(job_id)` asks its pool to stop that
    job if it runs it. `join` while the housekeeper runs, `leave` once it stops; `ring`
    after storing ready work wakes the others that joined with the same key, and
    `ring_cancel` tells them of a cancel requested (they would hear of it at their next
    heartbeat, up to `poll_interval` later).
    """

    def __init__(self, key: Hashable, wake: Callable[[], None],
                 cancel: Callable[[str], bool] = lambda job_id: False,
                 offer: Callable[[Sequence["QueueEntry"]], bool] = lambda entries: False) -> None:
        self.key = key
        self._wake = wake
        self._cancel = cancel
        # Queues jobs another manager stored into this one's ready queue, if it queues
        # stored jobs now (True then: no look is needed for them).
        self._offer = offer
        self._joins = 0  # joins not yet left (the housekeeper's, a `run_pending`'s): guarded by _lock

    def join(self) -> None:
        """Be woken by the others' rings, until as many `leave` calls as joins were made
        (the housekeeper's thread and `run_pending` each join while they run)."""
        with _lock:
            bells = _rings.get(self.key, ())
            if self in bells:
                self._joins += 1
            else:  # (counted afresh: a forked child's bells start out of the rings, whatever the parent counted)
                self._joins = 1
                _rings[self.key] = (*bells, self)

    def leave(self) -> None:
        """Undo one `join`: the last one left, be woken no more."""
        with _lock:
            self._joins = max(0, self._joins - 1)
            if self._joins:
                return
            bells = tuple(bell for bell in _rings.get(self.key, ()) if bell is not self)
            if bells:
                _rings[self.key] = bells
            else:
                _rings.pop(self.key, None)

    @contextlib.contextmanager
    def joined(self) -> Iterator[None]:
        """`join` for the block, `leave` after it."""
        self.join()
        try:
            yield
        finally:
            self.leave()

    def ring(self, entries: Optional[Sequence["QueueEntry"]] = None) -> None:
        """Wake the other managers of this process on this store that joined; given the
        `entries` of every job the ring is for (an enqueue's), offer them those instead,
        and wake only one that does not take them. Woken, a manager's housekeeper read the
        store and its dispatcher then claimed the job: a producer manager's job started
        about 3 times later than one enqueued into the worker manager itself."""
        bells = _rings.get(self.key)
        if not bells or (len(bells) == 1 and bells[0] is self):
            return  # the common case: this manager alone (or none) on the store
        for bell in bells:
            if bell is not self and not (entries is not None and bell._offered(entries)):
                bell._wake()

    def _offered(self, entries: Sequence["QueueEntry"]) -> bool:
        """`offer` on the ringing thread, which stored the jobs: a fault is logged (the
        manager is woken instead), never raised into that caller's enqueue."""
        try:
            return self._offer(entries)
        except Exception:  # (not expected)
            logger.exception("queueing %d jobs in another manager of this process failed", len(entries))
            return False

    def ring_cancel(self, job_id: str) -> None:
        """Tell the other managers of this process on this store that joined that a cancel
        was requested for `job_id` (the one running it stops it)."""
        for bell in _rings.get(self.key, ()):
            if bell is not self and bell._cancel(job_id):
                return
