"""`NotificationDispatcher`: delivers events to channels off the caller's thread; never formats.

Each channel gets a bounded queue and a daemon thread, so a slow or hung channel delays
only itself, and `publish` never waits. Channels are any objects with `send(event)`.
"""

from __future__ import annotations

import itertools
import logging
import threading
import weakref
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from jobcore import lock_waits
from jobcore.deferred_interrupts import survived
from jobcore.errors import JobcoreError
from jobcore.lock_waits import waitable_lock

logger = logging.getLogger("jobcore.notifications")
_thread_numbers = itertools.count(1)
# Seconds between an idle delivery thread's looks at whether its dispatcher still exists.
# The thread holds it only weakly, so a dispatcher nobody refers to any more (its manager
# stopped and let go) is freed, and its threads end at their next look; holding it, they
# kept it, its manager and its channels alive until the process exited, a thread each.
# (Ending idle threads instead would have needed a new thread for the next event, which
# Python 3.12 refuses during interpreter exit, when a manager's stop may publish events.)
GONE_CHECK_EVERY = 2.0


class _Delivery:
    """One channel's queue, counters and thread; the dispatcher's `_lock` guards every field."""

    def __init__(self, channel: Any, lock: threading.RLock) -> None:
        self.channel = channel
        self.pending: deque[dict[str, Any]] = deque()
        # has_work (on the dispatcher's lock) is notified when pending grows or when
        # stopping or retired is set: what the delivery thread waits for.
        self.has_work = threading.Condition(lock)
        self.accepted = 0       # events ever put in pending
        self.finished = 0       # events that left pending: sent, failed or discarded
        self.drop_streak = 0    # events dropped since pending last had room
        self.thread: threading.Thread | None = None
        self.stopping = False   # deliver what is pending, then let the thread end
        self.retired = False    # removed, or its thread ended: flush no longer waits for it


class NotificationDispatcher:
    """Delivers events to channels on one daemon thread per channel, never on the caller's.

    `publish` never waits for a channel: each channel has a queue of at most `queue_size`
    events, and an event that finds it full is dropped for that channel (logged, counted in
    `dropped`). A channel's thread (`jobcore-notify-<n>`) starts on the first event it
    gets, so a slow or hung channel delays only its own queue; it ends at `close()`, or
    once the dispatcher itself is gone. A channel that raises is
    logged and delivery goes on. A channel's `wants` is called on the publishing thread.
    Usable as a context manager that closes it on exit.
    """

    def __init__(self, channels: Iterable[Any] = (), *, queue_size: int = 10_000) -> None:
        if not isinstance(queue_size, int) or isinstance(queue_size, bool):
            raise TypeError(f"queue_size must be an int, got {type(queue_size).__name__}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {queue_size}")
        self._queue_size = queue_size
        # _lock guards _deliveries, _running, _closed, _dropped and every _Delivery's fields.
        self._lock = waitable_lock()  # (flush and close, on a caller's thread, wait on _progress)
        # _progress (on _lock) is notified when a delivery finishes an event, retires, or
        # its thread ends: what flush() and close() wait for.
        self._progress = threading.Condition(self._lock)
        self._deliveries: list[_Delivery] = []
        # The channels of _deliveries, in order: replaced (never changed) under _lock at
        # each add and remove, so `channels` reads it without the lock (once per event).
        self._channels: tuple[Any, ...] = ()
        self._running: set[_Delivery] = set()   # deliveries whose thread has not ended
        self._closed = False
        self._dropped = 0
        for channel in channels:
            self.add(channel)

    @property
    def channels(self) -> tuple[Any, ...]:
        """The channels, in the order they were added."""
        return self._channels

    @property
    def dropped(self) -> int:
        """How many (event, channel) deliveries were dropped because a queue was full."""
        with self._lock:
            return self._dropped

    def add(self, channel: Any) -> None:
        """Deliver future events to `channel`, which needs a callable `send(event)`.

        Raises `TypeError` if it has none, `ValueError` if it was already added, and
        `RuntimeError` after `close()`."""
        if not callable(getattr(channel, "send", None)):
            raise TypeError(
                f"a notification channel needs a callable send(event), got {channel!r}")
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot add a channel to a closed NotificationDispatcher")
            if any(d.channel is channel for d in self._deliveries):
                raise ValueError(f"channel {channel!r} was already added")
            self._deliveries.append(_Delivery(channel, self._lock))
            self._channels = tuple(d.channel for d in self._deliveries)

    def remove(self, channel: Any) -> None:
        """Stop delivering to `channel`; events still queued for it are discarded.

        An event it is sending now finishes on its thread. `ValueError` if not added."""
        with self._lock:
            delivery = next((d for d in self._deliveries if d.channel is channel), None)
            if delivery is None:
                raise ValueError(f"channel {channel!r} was not added")
            self._deliveries.remove(delivery)
            self._channels = tuple(d.channel for d in self._deliveries)
            discarded = self._retire(delivery)
        if discarded:
            logger.info("removed notification channel %r; %d queued events discarded",
                        channel, discarded)

    def publish(self, event: Mapping[str, Any]) -> None:
        """Queue `event` for every channel that wants it, without waiting for any.

        The event is copied, so the caller may reuse its dict. After `close()`, events are
        ignored."""
        if not isinstance(event, Mapping):
            raise TypeError(f"an event must be a mapping, got {type(event).__name__}")
        snapshot = dict(event)
        with self._lock:
            deliveries = [] if self._closed else list(self._deliveries)
        # wants() is channel code: call it with no lock held.
        wanted = [d for d in deliveries if _wants(d.channel, snapshot.get("event", ""))]
        to_start, full, reopened = [], [], []
        with self._lock:
            for d in wanted:
                if d.retired or d.stopping:
                    continue
                if len(d.pending) >= self._queue_size:
                    d.drop_streak += 1
                    self._dropped += 1
                    if d.drop_streak & (d.drop_streak - 1) == 0:   # 1, 2, 4, 8...: log, not flood
                        full.append((d.channel, d.drop_streak))
                    continue
                if d.drop_streak:
                    reopened.append((d.channel, d.drop_streak))
                    d.drop_streak = 0
                d.pending.append(snapshot)
                d.accepted += 1
                if d.thread is None:
                    d.thread = threading.Thread(target=_deliver, args=(weakref.ref(self), d), daemon=True,
                                                name=f"jobcore-notify-{next(_thread_numbers)}")
                    self._running.add(d)
                    to_start.append(d)
                else:
                    d.has_work.notify()
        for d in to_start:
            self._start(d)
        for channel, count in full:
            logger.warning("notification queue for %r is full (%d events): "
                           "dropped %d events in a row", channel, self._queue_size, count)
        for channel, count in reopened:
            logger.warning("notification queue for %r has room again after dropping %d events",
                           channel, count)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every channel has handled (sent, or failed on) each event published
        before this call; False if `timeout` seconds passed first.

        A hung channel makes this wait the full timeout, and forever when it is None.
        Removed channels are not waited for."""
        self._refuse_own_thread("flush")
        with self._lock:
            targets = [(d, d.accepted) for d in self._deliveries]
            return lock_waits.wait_for(self._progress, self._lock,
                lambda: all(d.retired or d.finished >= n for d, n in targets), timeout)

    def backlog(self) -> list[tuple[Any, int]]:
        """Each channel with events published that it has not handled yet (sent, or failed
        on), and how many."""
        with self._lock:
            return [(d.channel, d.accepted - d.finished) for d in self._deliveries
                    if not d.retired and d.finished < d.accepted]

    def close(self, timeout: float | None = 5.0) -> bool:
        """Stop accepting events, deliver what is queued, and let the threads end.

        Waits at most `timeout` seconds (None: no limit); returns False if some channel
        was still busy then. Delivery threads are daemons, so a hung channel never holds up
        interpreter exit. Closing twice is harmless."""
        self._refuse_own_thread("close")
        with self._lock:
            self._closed = True
            for d in self._deliveries:
                d.stopping = True
                d.has_work.notify()
            ended = lock_waits.wait_for(self._progress, self._lock, lambda: not self._running, timeout)
            busy = [(d.channel, len(d.pending)) for d in self._running]
        for channel, left in busy:
            logger.warning("notification channel %r still busy at close; "
                           "%d queued events not delivered", channel, left)
        return ended

    def forked(self) -> None:
        """In a forked child. The delivery threads stayed in the parent, with the lock if
        one of them (or any parent thread) held it at the fork; the events queued for them
        are the parent's, delivered there. Here: a lock of its own, the same channels with
        empty queues and no thread (one starts at the first event published here), and no
        thread counted as running, so `flush` and `close` wait only for this process's.
        Closed if it was."""
        self._lock = waitable_lock()
        self._progress = threading.Condition(self._lock)
        # (Only the forking thread runs here: nothing else reads these while they change.)
        self._deliveries = [_Delivery(d.channel, self._lock) for d in self._deliveries]
        self._channels = tuple(d.channel for d in self._deliveries)
        self._running = set()

    def __enter__(self) -> NotificationDispatcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _retire(self, d: _Delivery) -> int:
        """Stop `d` at once; returns how many queued events were discarded. Holds _lock."""
        discarded = len(d.pending)
        d.pending.clear()
        d.finished += discarded
        d.retired = True
        d.has_work.notify()
        self._progress.notify_all()
        return discarded

    def _start(self, d: _Delivery) -> None:
        assert d.thread is not None
        try:
            d.thread.start()
        except RuntimeError as exc:   # "can't start new thread", or interpreter shutdown
            with self._lock:
                self._running.discard(d)
                discarded = self._retire(d)
            logger.error("cannot start a delivery thread for %r (%s); %d events discarded",
                         d.channel, exc, discarded)

    def _sent(self, d: _Delivery) -> None:
        """`d`'s thread handled an event (sent it, or failed on it). Holds _lock."""
        d.finished += 1
        self._progress.notify_all()

    def _thread_ended(self, d: _Delivery) -> None:
        """`d`'s thread ends: what it still holds is discarded unless it was retired."""
        with self._lock:
            self._running.discard(d)
            # (`_retire` notifies too; a thread of a channel retired earlier ends without
            # it, and `close` waits for `_running` to empty.)
            self._progress.notify_all()
            discarded = 0 if d.retired else self._retire(d)
        if discarded:
            logger.error("delivery thread for %r ended; %d queued events discarded",
                         d.channel, discarded)

    def on_delivery_thread(self) -> bool:
        """True when called by a channel, on one of the delivery threads."""
        with self._lock:
            return any(d.thread is threading.current_thread() for d in self._running)

    def _refuse_own_thread(self, method: str) -> None:
        if self.on_delivery_thread():
            raise RuntimeError(
                f"{method}() called from a notification channel would wait for itself")


def _deliver(dispatcher: "weakref.ref[NotificationDispatcher]", d: _Delivery) -> None:
    """The delivery thread of `d`: sends its events in order until it is retired, its
    dispatcher closes (once what is queued went), or the dispatcher is gone. It refers
    to the dispatcher only to count an event handled, never while it waits or sends
    (see GONE_CHECK_EVERY)."""
    try:
        while True:
            with d.has_work:  # (the dispatcher's lock)
                while not (d.pending or d.stopping or d.retired):
                    if not d.has_work.wait(GONE_CHECK_EVERY) and dispatcher() is None:
                        return  # no event can come any more
                if not d.pending:   # retired, or stopping with nothing left
                    return
                event = d.pending.popleft()
            _send(d.channel, event)
            with d.has_work:
                owner = dispatcher()
                if owner is not None:
                    owner._sent(d)
                del owner
    finally:
        owner = dispatcher()
        if owner is not None:
            owner._thread_ended(d)


def _send(channel: Any, event: dict[str, Any]) -> None:
    """Call `channel.send` with a copy of `event`, logging instead of raising."""
    try:
        channel.send(dict(event))
    except (OSError, JobcoreError) as exc:   # delivery trouble, not a bug: no traceback
        logger.warning("notification channel %r could not deliver %s for job %s: %s: %s", channel,
                       event.get("event"), event.get("job_id"), type(exc).__name__, exc)
    except BaseException:  # SystemExit too: it ended the delivery thread, events lost unlogged
        logger.exception("notification channel %r failed on %s for job %s", channel,
                         event.get("event"), event.get("job_id"))


def _wants(channel: Any, event_name: str) -> bool:
    wants = getattr(channel, "wants", None)
    if wants is None:
        return True
    try:
        return bool(wants(event_name))
    except BaseException as exc:  # (SystemExit too, as `_send`: it runs on a worker thread)
        logger.exception("notification channel %r failed in wants(%r); event skipped",
                         channel, event_name)
        survived(exc)
        return False
