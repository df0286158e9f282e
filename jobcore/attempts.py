"""`AttemptRunner`: runs one claimed attempt of a job, in the calling worker thread or
(isolation "process") in a child process, and says what came of it.

It picks the function to run and refuses what cannot run (a corrupt row, an unknown
function, a cancel requested before the start). It decides nothing about retries and
touches no storage: the worker pool records the `Outcome`.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Optional

from .clock import Clock
from .context import JobContext
from .errors import JobCancelled, PermanentError
from .execution import Outcome, run_attempt
from .registry import FunctionRegistry, LocalJobs
from .repository.base import JobRecord

if TYPE_CHECKING:
    from .isolation import ProcessRunner


class AttemptRunner:
    """Runs attempts for one worker pool; owns the child processes of isolated jobs."""

    def __init__(self, registry: FunctionRegistry, local: LocalJobs, clock: Clock, children: int, *,
                 check_details: bool = False, max_payload_bytes: Optional[int] = None) -> None:
        self._registry = registry
        self._check_details = check_details
        self._max_payload_bytes = max_payload_bytes
        self._local = local
        self._clock = clock
        self._children = max(1, children)
        # _lock guards _processes, built on the first isolated job (children cost ~0.1 s),
        # and _closed: after `close`, no runner is built again.
        self._lock = threading.Lock()
        self._processes: Optional[ProcessRunner] = None
        self._closed = False

    def run(self, record: JobRecord, context: JobContext) -> Outcome:
        """Run one attempt of `record` to its end (or its isolated timeout)."""
        if context.cancel_requested:
            return Outcome(error=JobCancelled(record.id))
        if record.decode_error is not None:
            return Outcome(error=_CorruptJob(record.decode_error))
        func = self._local.function(record.id) or self._registry.get(record.function_name)
        if func is None:
            return Outcome(error=_NotRegistered(f"no function registered as {record.function_name!r}"))
        if record.isolation != "thread" and record.isolation != "process":
            # A stored value jobcore never writes (a hand edit, another program): running it
            # on a thread would go against what the row says, on a process against what it
            # was checked for. It fails as any other column that cannot be read.
            return Outcome(error=_CorruptJob(f"stored job {record.id} cannot be decoded: isolation holds"
                                             f" {record.isolation!r}, neither 'thread' nor 'process'"))
        if record.isolation == "process":
            runner = self._runner()
            if runner is None:  # closed: its lease lapses, and the job is taken back
                return Outcome(error=RuntimeError("the process runner is closed"))
            return runner.run(func, record.args, record.kwargs, context,
                                      timeout=record.timeout, memory_limit=record.memory_limit,
                                      check_details=self._check_details,
                                      max_payload_bytes=self._max_payload_bytes)
        return run_attempt(func, record.args, record.kwargs, context)

    def _runner(self) -> Optional[ProcessRunner]:
        # Imported on the first isolated job: multiprocessing costs ~15 ms at start-up.
        from .isolation import ProcessRunner
        with self._lock:
            if self._closed:
                return None
            if self._processes is None:
                self._processes = ProcessRunner(self._children, clock=self._clock)
            return self._processes

    def forked(self) -> None:
        """In a forked child: the parent's child processes are not this process's to use
        or end (they run the parent's attempts); a lock of its own."""
        self._lock = threading.Lock()
        self._processes = None
        self._closed = False

    def close(self) -> None:
        """End the child processes, busy ones too (see `ProcessRunner.close`); an isolated
        attempt started after this fails at once (the engine records it no more)."""
        with self._lock:
            self._closed = True
            runner, self._processes = self._processes, None
        if runner is not None:
            runner.close()


class _CorruptJob(PermanentError):
    """A stored job that cannot be decoded (reported as error_type `CorruptJob`)."""


class _NotRegistered(PermanentError):
    """A claimed job whose function is not registered here."""


_CorruptJob.__name__ = "CorruptJob"
_NotRegistered.__name__ = "UnknownFunction"
