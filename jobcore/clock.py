"""The one place jobcore reads time: a `Clock` interface, the system clock and a fake.

Everything else receives a clock. Times are float seconds: `time()` is wall-clock epoch
seconds (shared between processes, so leases and schedules use it), `monotonic()` is for
measuring durations inside one process. Nothing here knows about jobs.

`real_monotonic` and `real_sleep` are the exception, on purpose: they pace threads in
real time whatever clock a manager was given (a batching window of a millisecond or two,
a pause between tries of a locked database). `Condition.wait` waits in real time too, so
a fake clock that stands still must not decide when such a wait ends.
"""

from __future__ import annotations

import inspect
import math
import threading
import time as _time
import weakref
from datetime import datetime
from typing import Callable, Optional, Protocol


# The longest a thread sleeps on a condition in one go before it looks again. A time far
# ahead (a job scheduled centuries from now) must not reach `Condition.wait`, which
# raises OverflowError past the platform's limit (that ended the dispatcher thread).
LONGEST_WAIT = 3600.0


def as_seconds(value: float) -> float:
    """`value` (an int or a float) as float seconds. An int too large for a float is
    infinite, as a float that large would be, rather than an `OverflowError`: checks that
    follow (`isnan`, `isinf`, bounds, `now + value`) then treat 10**400 as they treat inf."""
    try:
        return float(value)
    except OverflowError:  # only an int beyond about 1.8e308
        return math.inf if value > 0 else -math.inf


class Clock(Protocol):
    """What jobcore needs from time."""

    def time(self) -> float:
        """Wall-clock seconds since the epoch."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary start, never going backwards."""

    def sleep(self, delay: float) -> None:
        """Block the calling thread for `delay` seconds of this clock."""

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call `listener` whenever time jumps (a fake clock's `advance`); may be a no-op."""


class SystemClock:
    """The real clock."""

    def time(self) -> float:
        """Wall-clock seconds since the epoch (`time.time()`)."""
        return _time.time()

    def monotonic(self) -> float:
        """`time.monotonic()`: seconds from an arbitrary start, never going backwards."""
        return _time.monotonic()

    def sleep(self, delay: float) -> None:
        """Block the calling thread for `delay` seconds (none if it is negative)."""
        _time.sleep(max(0.0, delay))

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Real time never jumps under our control: nothing to subscribe to."""


class FakeClock:
    """A clock that moves only when told to, for tests.

    `advance(delay)` moves both readings forward and calls every subscriber, so a manager
    waiting for a timer recomputes its deadline at once. `sleep` advances the clock.
    """

    def __init__(self, start: float | None = None) -> None:
        # _lock guards _now and _listeners.
        self._lock = threading.Lock()
        self._now = datetime(2030, 1, 1).timestamp() if start is None else as_seconds(start)
        self._start = self._now
        # Each subscriber's reference: weak to a bound method (the managers' parts), so a
        # clock that outlives its managers (a test session's) keeps none of them alive, nor
        # its store's connections open; strong to anything else (a function, a lambda).
        self._listeners: list[Callable[[], Optional[Callable[[], None]]]] = []

    def time(self) -> float:
        """The fake wall-clock time, seconds since the epoch (2030-01-01 local at first)."""
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        """Seconds moved by `advance` since this clock was made (`jump` leaves it)."""
        with self._lock:
            return self._now - self._start

    def sleep(self, delay: float) -> None:
        """Return at once, the clock moved forward by `delay` (`advance`)."""
        self.advance(delay)

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call `listener` after every `advance` and `jump` (a manager recomputes its timers).
        A bound method is held weakly: it is called while its object lives."""
        ref: Callable[[], Optional[Callable[[], None]]] = lambda: listener
        if inspect.ismethod(listener):
            try:
                ref = weakref.WeakMethod(listener)
            except TypeError:  # (its object takes no weak reference: held as it is)
                pass
        with self._lock:
            self._listeners = [kept for kept in self._listeners if kept() is not None]
            self._listeners.append(ref)

    def _live_listeners_locked(self) -> list[Callable[[], None]]:
        return [listener for ref in self._listeners if (listener := ref()) is not None]

    def jump(self, delta: float) -> None:
        """Move only the wall clock by `delta` seconds (either way), as when an operator or
        NTP sets the system time; `monotonic()` is unaffected. Subscribers are woken."""
        seconds = as_seconds(delta)
        with self._lock:
            self._now += seconds
            self._start += seconds
            listeners = self._live_listeners_locked()
        for listener in listeners:
            listener()

    def advance(self, delay: float) -> None:
        """Move time forward by `delay` seconds and wake every subscriber."""
        seconds = as_seconds(delay)
        if not seconds >= 0:  # NaN too
            raise ValueError(f"cannot move a clock backwards (or by NaN): {delay!r}")
        with self._lock:
            self._now += seconds
            listeners = self._live_listeners_locked()
        for listener in listeners:
            listener()


SYSTEM_CLOCK = SystemClock()


def real_monotonic() -> float:
    """Real monotonic seconds, for pacing threads (see the module docstring)."""
    return _time.monotonic()


def real_sleep(delay: float) -> None:
    """Block the calling thread for `delay` real seconds (see the module docstring)."""
    _time.sleep(max(0.0, delay))


def join_within(thread: threading.Thread, timeout: Optional[float]) -> None:
    """`thread.join(timeout)` for any timeout: a long one (`stop(timeout=1e300)`, a
    worker's `--grace`) is waited for in steps of LONGEST_WAIT real seconds, as
    `Thread.join` raises OverflowError past the platform's limit."""
    deadline = None if timeout is None else _time.monotonic() + timeout
    while thread.is_alive():
        left = LONGEST_WAIT if deadline is None else min(deadline - _time.monotonic(), LONGEST_WAIT)
        if left <= 0:
            return
        thread.join(left)
