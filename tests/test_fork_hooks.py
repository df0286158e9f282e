"""`on_fork` registrations: they go with their objects, and the live ones run in order.

Real `os.fork()` (children report through a pipe: see test_forks), real managers on real
SQLite files, real threads. Before, each registration was an `os.register_at_fork` hook
of its own, which the interpreter never drops: a process that made and closed 10,000
managers kept 40,000, and each fork called them all (22 ms instead of 0.55).
"""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys
import textwrap
import threading
from typing import Any, Callable, Iterator, Optional

import pytest

from jobcore import JobManager, MemoryRepository, SQLiteRepository, forks
from jobcore.forks import on_fork
from test_forks import _in_forked_child

WAIT = 10.0


class _Hooked:
    """An object whose fork hooks note `(when, name)` in `log`; `cyclic` ones are freed
    only by the collector (as a manager is: its parts point back at it)."""

    def __init__(self, name: str, log: list[tuple[str, str]], *, cyclic: bool = False) -> None:
        self.name = name
        self.log = log
        self.me: Optional[_Hooked] = self if cyclic else None
        on_fork(self, before="before", after_in_parent="in_parent", after_in_child="in_child")

    def before(self) -> None:
        self.log.append(("before", self.name))

    def in_parent(self) -> None:
        self.log.append(("parent", self.name))

    def in_child(self) -> None:
        self.log.append(("child", self.name))


@pytest.fixture
def quiet_collector() -> Iterator[None]:
    """No garbage from earlier tests left to be collected, nor automatic collections
    during the test; and the objects registered already kept alive until it ends: an
    earlier test's manager that only a thread still ending held (a poller lingering after
    its last `wait`) went at the test's own collection, and its registrations with it,
    while the test counted (seen once in the suite)."""
    gc.collect()
    gc.disable()
    with forks._registry._lock:
        alive = [entry.ref() for entry in forks._registry._entries.values()]
    try:
        yield
    finally:
        del alive
        gc.enable()


def test_managers_and_objects_made_and_dropped_give_the_interpreter_no_fork_hooks(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # given a process where jobcore registered fork hooks already (and imported what a
    # manager on each store imports)
    keeper = _Hooked("keeper", [])
    for warm_up in (SQLiteRepository(str(tmp_path / "jobs.db")), MemoryRepository()):
        JobManager(warm_up).close()
    given: list[dict[str, Any]] = []
    real = os.register_at_fork

    def counted(**hooks: Callable[[], object]) -> None:
        given.append(hooks)
        real(**hooks)

    monkeypatch.setattr(os, "register_at_fork", counted)

    # when it makes and closes 100 managers (half on SQLite, half on memory) and makes and
    # drops 1,000 objects that register hooks
    for i in range(100):
        JobManager(SQLiteRepository(str(tmp_path / "jobs.db")) if i % 2 else MemoryRepository()).close()
    for i in range(1000):
        _Hooked(f"gone-{i}", [])

    # then the interpreter was given no hook (before: 4 per manager and 1 per object,
    # which it never drops, and each fork called them all)
    assert len(given) == 0
    del keeper


def test_registrations_go_with_their_objects(tmp_path: Any, quiet_collector: None) -> None:
    # given the registrations of a process
    before = forks.registered()

    # when it makes and closes 100 managers (half on SQLite, half on memory: their parts
    # point at each other, so only the collector frees them), and makes and drops 1,000
    # objects that register hooks, half of them in cycles
    for i in range(100):
        manager = JobManager(SQLiteRepository(str(tmp_path / "jobs.db")) if i % 2 else MemoryRepository())
        manager.close()
    for i in range(1000):
        _Hooked(f"gone-{i}", [], cyclic=i % 2 == 0)
    during = forks.registered()
    del manager
    gc.collect()

    # then the registrations went with their objects, the cyclic ones as the collector
    # freed them
    assert during >= before + 100 * 2 + 500  # (2 or 3 a manager, 1 a cyclic object)
    assert forks.registered() == before


def test_hooks_of_live_objects_run_in_order_in_parent_and_child_and_dead_ones_do_not(
        quiet_collector: None) -> None:
    # given five objects registered in turn, of which the second and fourth are dropped
    # (the fourth in a cycle: freed by the collector)
    log: list[tuple[str, str]] = []
    before = forks.registered()
    first, gone, second, cyclic, third = (_Hooked(name, log, cyclic=name == "cyclic")
                                          for name in ("first", "gone", "second", "cyclic", "third"))
    assert forks.registered() == before + 5
    del gone, cyclic
    assert forks.registered() == before + 4  # "gone" went with its last reference
    gc.collect()
    assert forks.registered() == before + 3

    # when the process forks, and the child reports what ran there
    report = _in_forked_child(lambda: repr(log))
    # then the `before` hooks ran last registered first, the others first registered
    # first, in the parent and in the child, and none of the dropped objects' ran
    ahead = [("before", "third"), ("before", "second"), ("before", "first")]
    assert report == repr(ahead + [("child", "first"), ("child", "second"), ("child", "third")])
    assert log == ahead + [("parent", "first"), ("parent", "second"), ("parent", "third")]
    del first, second, third


class _Holding:
    """Registered for fork hooks: its `before` has another thread take the registry's
    lock and hold it through the fork (as one in `on_fork` would); `after_in_parent`
    lets it go."""

    def __init__(self) -> None:
        self.holding, self.done = threading.Event(), threading.Event()
        self.thread: Optional[threading.Thread] = None
        self.armed = True  # at the next fork only (not at the child's)
        on_fork(self, before="before", after_in_parent="in_parent")

    def before(self) -> None:
        if not self.armed:
            return
        self.armed = False
        self.thread = threading.Thread(target=self._hold, name="registry-holder")
        self.thread.start()
        assert self.holding.wait(WAIT)

    def _hold(self) -> None:
        with forks._registry._lock:
            self.holding.set()
            self.done.wait(WAIT)

    def in_parent(self) -> None:
        self.done.set()


def test_a_fork_while_another_thread_holds_the_registry_lock_does_not_hang_the_child() -> None:
    # given an object whose `before` hook has another thread hold the registry's lock
    # until the parent's `after_in_parent` hooks run
    holding = _Holding()
    log: list[tuple[str, str]] = []

    # when the process forks, and the child registers an object, counts the registrations
    # and forks again
    def child() -> str:
        kept = _Hooked("in-child", log)
        count = forks.registered()
        grandchild = _in_forked_child(lambda: repr(log), timeout=5.0)
        return f"{count > 0 and kept.name == 'in-child'} {grandchild}"

    try:
        report = _in_forked_child(child, timeout=5.0)
    finally:
        holding.done.set()
        if holding.thread is not None:
            holding.thread.join(WAIT)
    # then the child did not wait for the lock a parent thread held (it has one of its
    # own), and its registration runs in its children
    assert report == "True " + repr([("before", "in-child"), ("child", "in-child")]), report
    assert holding.holding.is_set() and holding.done.is_set()


def test_forks_while_another_thread_registers_and_drops_objects_do_not_hang_the_children() -> None:
    # given a thread making and dropping objects that register hooks, in a loop
    stop = threading.Event()
    made = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            _Hooked("churn", [], cyclic=True)
            _Hooked("churn", [])
            made.set()

    thread = threading.Thread(target=churn, name="registering")
    thread.start()
    log: list[tuple[str, str]] = []
    live = _Hooked("live", log)
    try:
        assert made.wait(WAIT)
        # when the process forks 20 times, and each child registers an object and reports
        reports = []
        for _ in range(20):
            log.clear()
            report = _in_forked_child(lambda: f"{_Hooked('child', []) is not None} {log}", timeout=5.0)
            reports.append(report)
            if report is None:
                break  # one hung: no need to wait for more
    finally:
        stop.set()
        thread.join(WAIT)
    # then no child hung, and the live object's hooks ran in each
    assert reports == ["True [('before', 'live'), ('child', 'live')]"] * 20, reports
    del live


class _Raising:
    """Registered for fork hooks that raise."""

    def __init__(self) -> None:
        on_fork(self, before="fail", after_in_parent="fail", after_in_child="fail")

    def fail(self) -> None:
        raise RuntimeError("hook failed")


def test_a_hook_that_raises_is_logged_and_the_others_still_run(caplog: pytest.LogCaptureFixture) -> None:
    # given objects registered before and after one whose hooks raise
    log: list[tuple[str, str]] = []
    first = _Hooked("first", log)
    raising = _Raising()
    last = _Hooked("last", log)
    # when the process forks
    with caplog.at_level(logging.ERROR, logger="jobcore"):
        report = _in_forked_child(lambda: repr(log))
    # then every other hook ran, in the parent and the child, and the failures were logged
    assert report == repr([("before", "last"), ("before", "first"), ("child", "first"), ("child", "last")])
    assert log == [("before", "last"), ("before", "first"), ("parent", "first"), ("parent", "last")]
    assert [r.getMessage() for r in caplog.records if "raised" in r.getMessage()] == [
        f"fork hook fail of {raising!r} raised"] * 2
    del first, raising, last


def test_on_fork_wants_a_method() -> None:
    with pytest.raises(TypeError):
        on_fork(threading.Event())


_REENTRY = textwrap.dedent("""
    import gc, sys
    from jobcore.forks import on_fork

    class Hooked:
        def c(self): pass

    kept = []

    class Reregisters:  # freed only by the collector; registers another object as it goes
        def __init__(self): self.me = self
        def __del__(self):
            h = Hooked(); kept.append(h)
            on_fork(h, after_in_child="c")

    first = Hooked()
    on_fork(first, after_in_child="c")
    for k in range(10):
        h = Hooked()
        gc.collect(); gc.disable()
        Reregisters()
        gc.enable()
        gc.set_threshold(gc.get_count()[0] + k, 1000, 1000)  # a collection k allocations on
        on_fork(h, after_in_child="c")
        gc.set_threshold(700, 10, 10)
    gc.collect()
    print(len(kept))
""")


def test_a_finalizer_that_registers_during_a_registration_does_not_wait_for_itself() -> None:
    # given a registration during which the collector frees an object whose finalizer
    # registers another object for fork hooks, on the same thread (a collection at each
    # of the first ten allocations of the registration in turn)
    done = subprocess.run([sys.executable, "-c", _REENTRY], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))})
    # then every registration returned (with a plain lock, the nested one waited for the
    # outer one, on its own thread, for ever), the finalizers' too
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["10"]
