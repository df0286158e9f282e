"""The function registry: which names this process can run, and the callables behind them.

Persisted jobs name their function; only registered names run. Nothing here runs jobs.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable, Optional

from .errors import InvalidJob, InvalidJobType


class FunctionRegistry:
    """A thread-safe map from names to callables."""

    def __init__(self) -> None:
        # _lock guards writes to _functions and _names (readers take the snapshot in _names).
        self._lock = threading.Lock()
        self._functions: dict[str, Callable[..., Any]] = {}
        self._names: frozenset[str] = frozenset()

    def forked(self) -> None:
        """In a forked child: a lock of its own (a parent thread may have held this one)."""
        self._lock = threading.Lock()

    def register(self, name: str, func: Callable[..., Any], *, replace: bool = True) -> bool:
        """Bind `name` to `func`. With `replace=False` an existing binding is kept.

        Returns True if `name` now runs `func`."""
        if not isinstance(name, str) or not name.strip():
            raise InvalidJobType("function_name", f"must be a non-empty str, got {name!r}")
        if "\x00" in name:  # no job can name it (see `Job`), and the stores' queries would choke on it
            raise InvalidJob("function_name", f"must not contain a NUL character, got {name!r}")
        if not callable(func):
            raise InvalidJobType("function", f"must be callable, got {func!r}")
        with self._lock:
            current = self._functions.get(name)
            if current is not None and not replace:
                return current is func
            self._functions[name] = func
            self._names = frozenset(self._functions)
            return True

    def get(self, name: str) -> Optional[Callable[..., Any]]:
        """The callable registered under `name`, or None."""
        return self._functions.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._functions

    @property
    def names(self) -> frozenset[str]:
        """Every registered name (an immutable snapshot)."""
        return self._names


class LocalJobs:
    """What some jobs carry that cannot be stored: the callable given as `Job.function`
    when its name is bound to another callable (or, for a job handed straight to a worker,
    to none yet: see `Enqueuer._bind_function`), and a per-job `retry_on` classifier.

    Kept only in this process, keyed by job id: forgotten when the job completes; when it
    fails or is cancelled, kept among the latest ENDED_KEPT such jobs, so that a `retry` of
    one runs its own callable, not whatever else its name is bound to."""

    ENDED_KEPT = 10_000

    def __init__(self) -> None:
        # _lock guards _functions, _classifiers and _ended (reads take no lock: one dict
        # lookup each, whole under the GIL).
        self._lock = threading.Lock()
        self._functions: dict[str, Callable[..., Any]] = {}
        self._classifiers: dict[str, Callable[[BaseException], bool]] = {}
        # Jobs that failed or were cancelled, oldest first: (function, classifier).
        self._ended: OrderedDict[str, tuple[Optional[Callable[..., Any]],
                                            Optional[Callable[[BaseException], bool]]]] = OrderedDict()

    def forked(self) -> None:
        """In a forked child: a lock of its own (a parent thread may have held this one)."""
        self._lock = threading.Lock()

    def remember(self, job_id: str, function: Optional[Callable[..., Any]],
                 retry_on: Optional[Callable[[BaseException], bool]]) -> None:
        if function is None and retry_on is None:
            return  # what most jobs carry: nothing to keep, no lock to take
        with self._lock:
            if function is not None:
                self._functions[job_id] = function
            if retry_on is not None:
                self._classifiers[job_id] = retry_on

    def kept(self, job_id: str) -> tuple[Any, Any, Any]:
        """What is kept for `job_id` now, for `put_back`: a job given an id already taken
        is refused, and what the job holding it carries must stay as it was."""
        return self._functions.get(job_id), self._classifiers.get(job_id), self._ended.get(job_id)

    def put_back(self, job_id: str, kept: tuple[Any, Any, Any]) -> None:
        """Keep for `job_id` what `kept` (from `kept`) says, and nothing else: undoes a
        `remember` for a job that was not stored."""
        function, classifier, ended = kept
        if function is None and classifier is None and ended is None:
            self.forget(job_id)
            return
        with self._lock:
            for held, value in ((self._functions, function), (self._classifiers, classifier), (self._ended, ended)):
                if value is None:
                    held.pop(job_id, None)
                else:
                    held[job_id] = value

    def function(self, job_id: str) -> Optional[Callable[..., Any]]:
        found = self._functions.get(job_id)
        if found is None and self._ended:
            found = self._ended.get(job_id, (None, None))[0]
        return found

    def retry_on(self, job_id: str) -> Optional[Callable[[BaseException], bool]]:
        found = self._classifiers.get(job_id)
        if found is None and self._ended:
            found = self._ended.get(job_id, (None, None))[1]
        return found

    def forget(self, job_id: str) -> None:
        """The job completed (or was never stored): nothing of it is needed again."""
        if job_id not in self._functions and job_id not in self._classifiers and job_id not in self._ended:
            return  # most jobs carry nothing here; a dict lookup needs no lock
        with self._lock:
            self._functions.pop(job_id, None)
            self._classifiers.pop(job_id, None)
            self._ended.pop(job_id, None)

    def drop_function(self, job_id: str, function: Callable[..., Any]) -> None:
        """The job carried `function` only until its name was registered to it: forget that
        (not its classifier); its name now runs the same."""
        if self._functions.get(job_id) is not function:
            return  # a dict lookup needs no lock
        with self._lock:
            if self._functions.get(job_id) is function:
                del self._functions[job_id]

    def ended(self, job_id: str) -> None:
        """The job failed or was cancelled: keep what it carries for a `retry`, a while."""
        if job_id not in self._functions and job_id not in self._classifiers:
            return
        with self._lock:
            carried = (self._functions.pop(job_id, None), self._classifiers.pop(job_id, None))
            self._ended[job_id] = carried
            while len(self._ended) > self.ENDED_KEPT:
                self._ended.popitem(last=False)
