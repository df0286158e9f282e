"""Coroutine jobs' event loops: a worker thread keeps its loop for its next coroutine
attempt while each attempt leaves it clean, makes a new one after an attempt that left
something on it (the old one shut down and closed, as `asyncio.run` closes its own), and
closes the loop it keeps when it leaves; a loop found after a fork is the parent's, and is
neither used nor closed there."""

from __future__ import annotations

import asyncio
import os
import selectors
import socket
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import pytest

from jobcore import Job, JobStatus, MemoryRepository
from jobcore import event_loops

WAIT = 10.0


def _run_two(make_manager: Any, first: Callable[[], Any]) -> list[asyncio.AbstractEventLoop]:
    """Run the coroutine function `first`, then a plain coroutine job, on one worker
    thread; the loops each ran on (kept alive here, so no two are the same by chance)."""
    loops: list[asyncio.AbstractEventLoop] = []

    async def noting() -> None:
        loops.append(asyncio.get_running_loop())
        await first()

    async def plain() -> None:
        loops.append(asyncio.get_running_loop())
        await asyncio.sleep(0)

    manager = make_manager(MemoryRepository(), max_workers=1).start()
    for function in (noting, plain):
        job_id = manager.enqueue(Job(function=function, max_retries=0))
        assert manager.wait(job_id, timeout=WAIT).status is JobStatus.COMPLETED
    return loops


def test_a_worker_thread_runs_its_coroutine_jobs_on_the_loop_it_keeps(make_manager: Any) -> None:
    async def awaits_a_little() -> None:
        await asyncio.sleep(0)
        task = asyncio.get_running_loop().create_task(asyncio.sleep(0))
        await task  # a task of its own, ended before the job ends
        handle = asyncio.get_running_loop().call_later(3600, lambda: None)
        handle.cancel()  # and a callback it cancelled

    loops = _run_two(make_manager, awaits_a_little)
    assert loops[0] is loops[1]
    assert not loops[0].is_closed()


def test_the_loop_a_worker_thread_keeps_is_closed_when_it_leaves(make_manager: Any) -> None:
    loops: list[asyncio.AbstractEventLoop] = []

    async def note() -> None:
        loops.append(asyncio.get_running_loop())

    manager = make_manager(MemoryRepository(), max_workers=1).start()
    assert manager.wait(manager.enqueue(Job(function=note)), timeout=WAIT).status is JobStatus.COMPLETED
    manager.stop()  # waits for the worker threads to end
    assert loops[0].is_closed()


def _later(seconds: float) -> Callable[[], Any]:
    async def leave() -> None:
        asyncio.get_running_loop().call_later(seconds, lambda: None)
    return leave


_sockets: list[socket.socket] = []  # closed by the test that opened them


async def _watch_a_socket() -> None:
    _sockets.extend(socket.socketpair())
    asyncio.get_running_loop().add_reader(_sockets[0], lambda: None)


async def _use_the_default_executor() -> None:
    await asyncio.get_running_loop().run_in_executor(None, lambda: None)


async def _set_an_exception_handler() -> None:
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: None)


async def _set_a_task_factory() -> None:
    asyncio.get_running_loop().set_task_factory(lambda loop, coro: asyncio.Task(coro, loop=loop))


async def _turn_debug_on() -> None:
    loop = asyncio.get_running_loop()
    loop.set_debug(not loop.get_debug())


@pytest.mark.parametrize("leave", [_later(3600), _watch_a_socket, _use_the_default_executor,
                                   _set_an_exception_handler, _set_a_task_factory, _turn_debug_on],
                         ids=["callback due later", "socket watched", "default executor",
                              "exception handler", "task factory", "debug flag"])
def test_a_loop_an_attempt_left_something_on_is_closed_and_the_next_attempt_gets_a_new_one(
        make_manager: Any, leave: Callable[[], Any]) -> None:
    loops = _run_two(make_manager, leave)
    assert loops[0] is not loops[1]
    assert loops[0].is_closed()
    assert not loops[1].is_closed()
    while _sockets:
        _sockets.pop().close()


@pytest.mark.parametrize("when", ["ready", "due later"])
def test_a_callback_left_on_the_loop_never_runs_in_a_later_job(make_manager: Any, when: str) -> None:
    ran_after_first: list[bool] = []  # per run of the callback: whether the first job had ended
    first_ended = threading.Event()

    def note() -> None:
        ran_after_first.append(first_ended.is_set())

    async def leave_a_callback() -> None:
        loop = asyncio.get_running_loop()
        if when == "ready":  # made ready in the loop's last turn, which does not run it
            loop.call_soon(loop.call_soon, note)
        else:
            loop.call_later(0.05, note)

    async def outlast_it() -> None:
        await asyncio.sleep(0.2)  # either would have run by now, on a loop kept

    manager = make_manager(MemoryRepository(), max_workers=1).start()
    for function in (leave_a_callback, outlast_it):
        assert manager.wait(manager.enqueue(Job(function=function)), timeout=WAIT).status is JobStatus.COMPLETED
        first_ended.set()
    # (the one made ready runs as the first job's loop is shut down, as under asyncio.run)
    assert True not in ran_after_first


def test_a_thread_outside_loops_kept_makes_and_closes_a_loop_per_attempt() -> None:
    loops: list[asyncio.AbstractEventLoop] = []

    async def note() -> None:
        loops.append(asyncio.get_running_loop())

    with ThreadPoolExecutor(1) as pool:  # (not a worker thread of a pool)
        for _ in range(2):
            pool.submit(event_loops.run_to_end, note()).result(timeout=WAIT)
    assert loops[0] is not loops[1]
    assert loops[0].is_closed() and loops[1].is_closed()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_neither_uses_nor_closes_the_loop_its_parent_thread_kept() -> None:
    # Given a thread keeping a loop (made in this process)
    outcome: dict[str, Any] = {}

    def thread() -> None:
        with event_loops.loops_kept():
            async def loop_now() -> asyncio.AbstractEventLoop:
                return asyncio.get_running_loop()

            kept = event_loops.run_to_end(loop_now())
            # When that thread forks, and the child runs a coroutine there
            pid = os.fork()
            if pid == 0:  # the child: a new loop, the parent's left open, both untouched
                code = 1
                try:
                    child_loop = event_loops.run_to_end(loop_now())
                    code = 0 if child_loop is not kept and not kept.is_closed() else 3
                finally:
                    os._exit(code)
            outcome["child"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

            # Then the parent's loop still hears another thread's call_soon_threadsafe
            # (a child closing its copy would have unregistered the loop's wake-up socket
            # from the epoll instance they share): the future is set, not timed out
            async def woken() -> str:
                loop = asyncio.get_running_loop()
                future: asyncio.Future[str] = loop.create_future()
                threading.Timer(0.05, loop.call_soon_threadsafe, (future.set_result, "woken")).start()
                return await asyncio.wait_for(future, WAIT)

            outcome["parent"] = (event_loops.run_to_end(loop_now()) is kept, event_loops.run_to_end(woken()))

    runner = threading.Thread(target=thread)
    runner.start()
    runner.join(WAIT * 2)
    assert outcome == {"child": 0, "parent": (True, "woken")}


def test_a_kept_loop_does_not_ask_the_kernel_when_nothing_is_watched_and_callbacks_are_ready(
        make_manager: Any, monkeypatch: Any) -> None:
    polls: list[Any] = []
    select = selectors.DefaultSelector.select

    def counting(self: Any, timeout: Any = None) -> Any:
        polls.append(timeout)
        return select(self, timeout)

    monkeypatch.setattr(selectors.DefaultSelector, "select", counting)

    async def yields() -> None:
        for _ in range(20):
            await asyncio.sleep(0)

    manager = make_manager(MemoryRepository(), max_workers=1).start()
    for _ in range(3):
        assert manager.wait(manager.enqueue(Job(function=yields)), timeout=WAIT).status is JobStatus.COMPLETED
    assert [timeout for timeout in polls if timeout is not None and timeout <= 0] == []


def test_a_kept_loop_still_hears_its_sockets_and_other_threads(make_manager: Any) -> None:
    ours, theirs = socket.socketpair()
    try:
        async def read_and_be_woken() -> str:
            loop = asyncio.get_running_loop()
            threading.Timer(0.05, theirs.send, (b"data",)).start()
            ours.setblocking(False)
            got = await asyncio.wait_for(loop.sock_recv(ours, 4), WAIT)
            future: asyncio.Future[str] = loop.create_future()
            threading.Timer(0.05, loop.call_soon_threadsafe, (future.set_result, "woken")).start()
            woken = await asyncio.wait_for(future, WAIT)
            # and a socket watched while callbacks are ready all along (a task spinning)
            reader = loop.create_task(loop.sock_recv(ours, 4))
            await asyncio.sleep(0)  # it found nothing to read, and watches the socket
            theirs.send(b"more")
            for _ in range(100_000):
                if reader.done():
                    return f"{got.decode()} {woken} {reader.result().decode()}"
                await asyncio.sleep(0)
            reader.cancel()
            return "the socket was never read"

        manager = make_manager(MemoryRepository(), max_workers=1).start()
        for _ in range(2):  # a new loop, then the kept one
            result = manager.wait(manager.enqueue(Job(function=read_and_be_woken)), timeout=WAIT * 3)
            assert (result.status, result.result) == (JobStatus.COMPLETED, "data woken more")
    finally:
        ours.close()
        theirs.close()


def test_a_loop_of_another_kind_an_event_loop_policy_gives_is_the_one_used(make_manager: Any) -> None:
    class OwnLoop(asyncio.SelectorEventLoop):  # type: ignore[misc,valid-type]
        pass

    class OwnPolicy(asyncio.DefaultEventLoopPolicy):  # type: ignore[misc,valid-type]
        def new_event_loop(self) -> asyncio.AbstractEventLoop:
            return OwnLoop()

    kinds: list[type] = []

    async def note() -> None:
        kinds.append(type(asyncio.get_running_loop()))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # (policies: deprecated in Python 3.14)
        before = asyncio.get_event_loop_policy()
        asyncio.set_event_loop_policy(OwnPolicy())
    try:
        manager = make_manager(MemoryRepository(), max_workers=1).start()
        for _ in range(2):
            assert manager.wait(manager.enqueue(Job(function=note)), timeout=WAIT).status is JobStatus.COMPLETED
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_event_loop_policy(before)
    assert kinds == [OwnLoop, OwnLoop]


def test_a_cancel_of_a_running_coroutine_job_cancels_its_task_at_its_next_await(make_manager: Any) -> None:
    # given a started manager running a coroutine job that awaits a minute's sleep, and
    # one that cleans up as it is cancelled
    manager = make_manager(MemoryRepository(), max_workers=2).start()
    began, cleaned = threading.Event(), threading.Event()

    async def nap() -> str:
        began.set()
        await asyncio.sleep(60)
        return "woke"

    async def tidy() -> str:
        try:
            began.set()
            await asyncio.sleep(60)
        finally:
            cleaned.set()
        return "done"

    manager.register_function("nap", nap)
    manager.register_function("tidy", tidy)
    for name in ("nap", "tidy"):
        began.clear()
        job_id = manager.enqueue(Job(function_name=name))
        assert began.wait(WAIT)
        # when it is cancelled
        assert manager.cancel(job_id)
        # then it ends CANCELLED at once, its finally blocks run (it ran its minute out,
        # and COMPLETED: a cancel reached a coroutine only through its progress reports)
        result = manager.wait(job_id, timeout=WAIT)
        assert (result.status, result.error_type) == (JobStatus.CANCELLED, "JobCancelled"), result
    assert cleaned.is_set()


def test_a_coroutine_job_that_swallows_its_cancellation_completes_with_its_result(make_manager: Any) -> None:
    # given a coroutine job that catches the cancellation of its task and returns
    manager = make_manager(MemoryRepository(), max_workers=1).start()
    began = threading.Event()

    async def stubborn() -> str:
        began.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            return "kept going"
        return "slept"

    manager.register_function("stubborn", stubborn)
    job_id = manager.enqueue(Job(function_name="stubborn"))
    assert began.wait(WAIT)
    # when it is cancelled, then it ends as its coroutine did, as in asyncio
    assert manager.cancel(job_id)
    result = manager.wait(job_id, timeout=WAIT)
    assert (result.status, result.result) == (JobStatus.COMPLETED, "kept going")
