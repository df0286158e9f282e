"""The exception hierarchy of jobcore: one root, and no behaviour beyond messages.

Every error jobcore raises derives from `JobcoreError`. Lookups also derive from
`LookupError` and bad arguments from `ValueError` or `TypeError`, so callers may catch
either way. Messages are built from the data that was wrong.
"""

from __future__ import annotations

from typing import Any, Optional


class JobcoreError(Exception):
    """Root of every exception jobcore raises."""


class JobNotFound(JobcoreError, LookupError):
    """Raised when no job has the given id."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job with id {job_id!r}")
        self.job_id = job_id


class InvalidJob(JobcoreError, ValueError):
    """Raised when a job's field has a wrong value; the message names the field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"Job.{field}: {problem}")
        self.field = field


class InvalidJobType(JobcoreError, TypeError):
    """Raised when a job's field has a wrong type; the message names the field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"Job.{field}: {problem}")
        self.field = field


class UnknownFunction(JobcoreError, LookupError):
    """Raised when a job names a function that is not registered with the manager."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"no function registered under {name!r}; call register_function({name!r}, func)"
            " first, or build the manager with producer=True to enqueue for other workers"
        )
        self.name = name


class DependencyError(JobcoreError, ValueError):
    """Raised when `depends_on` names an unknown job or the batch holds a cycle."""


class InvalidCronExpression(JobcoreError, ValueError):
    """Raised for a cron expression that cannot be parsed; the message names the field."""

    def __init__(self, expression: str, field: str, problem: str) -> None:
        super().__init__(f"invalid cron expression {expression!r}: {field} field: {problem}")
        self.expression = expression
        self.field = field


class RepositoryError(JobcoreError):
    """Raised when the storage behind a repository cannot do what was asked
    (read-only, disk full, locked past the busy timeout, not a jobcore database)."""


class JobCancelled(JobcoreError):
    """Raised inside a running job after its cancellation was requested.

    Let it propagate: the job then ends CANCELLED rather than FAILED."""

    def __init__(self, job_id: str = "") -> None:
        super().__init__(f"job {job_id!r} was cancelled" if job_id else "job was cancelled")
        self.job_id = job_id


# The longest a retry may be put off, in seconds (100 years): later than that, a job's
# retry time would soon have no calendar date to show (datetime ends with the year 9999).
LONGEST_RETRY_DELAY = 100 * 365.25 * 86400


class RetryableError(JobcoreError):
    """Raise from a job to ask for a retry whatever the message says.

    `delay` (seconds), when given, replaces the back-off delay for this retry."""

    delay: float | None = None  # also for a subclass whose __init__ does not call this one's

    def __init__(self, message: str = "", *, delay: float | None = None) -> None:
        super().__init__(message)
        if delay is not None and (isinstance(delay, bool) or not isinstance(delay, (int, float))
                                  or not 0 <= delay <= LONGEST_RETRY_DELAY):
            raise ValueError(f"RetryableError.delay must be a number of seconds from 0 to "
                             f"{LONGEST_RETRY_DELAY:.0f} (100 years), got {delay!r}")
        self.delay = None if delay is None else float(delay)


class PermanentError(JobcoreError):
    """Raise from a job to fail it at once, without retries, whatever the message says."""


class JobTimeout(JobcoreError, TimeoutError):
    """The error recorded when an attempt ran longer than its job's `timeout`."""

    def __init__(self, timeout: float, *args: Any) -> None:
        # (`.15g`: as given, 1209600 or 0.1234567, where `g` showed 1.2096e+06 and 0.123457)
        super().__init__(f"attempt exceeded its timeout of {timeout:.15g}s", *args)
        self.timeout = timeout


class ImmediateRecursionError(JobcoreError, RecursionError):
    """Raised by an immediate manager's `enqueue` (and by `run_pending`) when too little
    of the stack is left to run a job inside the call and record its outcome, or when the
    call runs in `nested_threads` helper threads nested in one another, the most allowed
    (coroutine jobs, and jobs run from async code, each run on a thread of its own): jobs
    that enqueue jobs ran nested that deep. Nothing is stored or run."""

    def __init__(self, room: int, limit: int, *, nested_threads: Optional[int] = None) -> None:
        if nested_threads is None:
            why = (f"fewer than {room} of the {limit} frames sys.getrecursionlimit() allows are"
                   " left")
        else:
            why = (f"it runs in {nested_threads} helper threads nested in one another, the most"
                   " allowed (a coroutine job, or any job run where an event loop runs, runs on a"
                   " thread of its own)")
        super().__init__(
            f"too deep to run a job inside this call: {why} (an immediate manager runs each job"
            " inside the enqueue that stores it, so jobs that enqueue jobs nest); nothing was stored")
        self.room = room
        self.limit = limit
        self.nested_threads = nested_threads
