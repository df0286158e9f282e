"""`JobManager.wait` answering for jobs completed in this process without reading their
rows back, and never answering from what it remembers once that may be wrong."""

from __future__ import annotations

import dataclasses
import hashlib
import sqlite3
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest

from jobcore import Job, JobManager, JobStatus, MemoryRepository, SQLiteRepository, current_job
from jobcore import completions, job_ids, serialization, sizes, waiting
from jobcore.completions import Completion
from jobcore.errors import RepositoryError
from jobcore.repository.base import JobRecord
from jobcore.testing.contract import make_record

from mixed_repositories import BACKENDS, AsIs, repository_with
from pg_fixtures import *  # noqa: F401,F403 (the fixtures: server, schema)
from waiting import wait_until


def broken(x: Any) -> None:
    raise ValueError("broken on purpose")


def pair(x: int) -> tuple[int, dict[str, int]]:
    return (x, {"x": x})


def reports(x: int) -> int:
    job = current_job()
    assert job is not None
    job.progress(0.5, "halfway", step=x)
    return x


def _fields(result: Any) -> dict[str, Any]:
    return dataclasses.asdict(result)


class _CountingGets:
    """Wraps a repository's reads of one row (`get`, `get_without_args`) to count them."""

    def __init__(self, repository: Any) -> None:
        self.reads = 0
        self.unsettled = 0  # reads that found the job not yet terminal
        for name in ("get", "get_without_args"):
            setattr(repository, name, self._counting(getattr(repository, name)))

    def _counting(self, read: Any) -> Any:
        def counted(job_id: str) -> Any:
            self.reads += 1
            row = read(job_id)
            if row is not None and not row.status.is_terminal:
                self.unsettled += 1
            return row
        return counted


@pytest.mark.parametrize("backend", ["sqlite", "memory"])
def test_wait_on_a_job_completed_here_gives_what_poll_gives_without_reading_the_row(
        make_manager: Any, db_path: str, backend: str) -> None:
    # given a started manager that completed jobs returning values JSON changes (a tuple)
    repository = SQLiteRepository(db_path) if backend == "sqlite" else MemoryRepository()
    manager = make_manager(repository, max_workers=2)
    manager.register_function("pair", pair)
    manager.start()
    # (each field poll shows set apart from its default, so none can be taken for another)
    past = datetime.now() - timedelta(seconds=5)
    ids = [manager.enqueue(Job(function_name="pair", args=(n,), name=f"pair {n}", priority=n,
                               tags={"a", f"t{n}"}, metadata={"n": n}, owner=f"owner {n}",
                               max_retries=30 - n, scheduled_at=past if n % 2 else None))
           for n in range(20)]
    last = manager.wait(ids[-1], timeout=10)
    assert last.status is JobStatus.COMPLETED
    for job_id in ids:  # every one settled before the last one's wait returned? wait for each
        manager.wait(job_id, timeout=10)
    _noted(manager, ids)
    # when each is waited for again, with row reads counted
    reads = _CountingGets(manager.repository)
    waited = [manager.wait(job_id, timeout=10) for job_id in ids]
    # then no row was read, and each answer equals what poll reads from the repository
    assert reads.reads == 0
    for job_id, result in zip(ids, waited):
        assert _fields(result) == _fields(manager.poll(job_id))
    assert waited[3].result == ([3, {"x": 3}] if backend == "sqlite" else (3, {"x": 3}))
    assert waited[3].progress == 1.0 and waited[3].completed_at is not None
    assert (waited[3].owner, waited[3].tags, waited[3].metadata) == ("owner 3", {"a", "t3"}, {"n": 3})
    assert waited[3].scheduled_at is not None and waited[4].scheduled_at is None


def test_wait_reads_the_row_of_a_job_that_reported_progress(make_manager: Any, db_path: str) -> None:
    # given a job that reported progress while it ran (its row holds the message)
    manager = make_manager(db_path, max_workers=1)
    manager.register_function("reports", reports)
    manager.start()
    job_id = manager.enqueue(Job(function_name="reports", args=(7,)))
    # when it is waited for
    result = manager.wait(job_id, timeout=10)
    # then the answer carries what the job reported, as poll does
    assert result.status is JobStatus.COMPLETED and result.result == 7
    assert (result.progress_message, result.progress_details) == ("halfway", {"step": 7})
    assert _fields(result) == _fields(manager.poll(job_id))


def test_wait_on_a_completed_job_that_was_cleaned_up_raises_lookup_error(make_manager: Any,
                                                                        db_path: str) -> None:
    # given a job completed here, then deleted by cleanup
    manager = make_manager(db_path, max_workers=1)
    manager.register_function("pair", pair)
    manager.start()
    job_id = manager.enqueue(Job(function_name="pair", args=(1,)))
    manager.wait(job_id, timeout=10)
    assert manager.cleanup_old_results(retention_days=0) == 1
    # when it is waited for again, then it is unknown, and so it is to poll (which
    # answers a job completed here lately without reading its row otherwise)
    with pytest.raises(LookupError):
        manager.wait(job_id, timeout=1)
    assert manager.poll(job_id) is None


@pytest.fixture(params=BACKENDS)
def two_repositories(request: Any, tmp_path: Any) -> Any:
    """Two repositories of this process on one store: the same memory store, two
    repository objects on one SQLite file, or on one PostgreSQL schema."""
    first = repository_with(AsIs, request, tmp_path)
    if request.param == "memory":
        return first, first
    return first, repository_with(AsIs, request, tmp_path)


def test_a_job_another_manager_of_the_process_cleaned_up_is_unknown_here(make_manager: Any,
                                                                       two_repositories: Any) -> None:
    # given a job completed by one manager, and another manager of the process on the
    # same store (another repository object on the file or schema, or the same memory store)
    manager = make_manager(two_repositories[0], max_workers=1)
    other = make_manager(two_repositories[1])
    manager.register_function("pair", pair)
    manager.start()
    job_id = manager.enqueue(Job(function_name="pair", args=(1,)))
    assert manager.wait(job_id, timeout=10).status is JobStatus.COMPLETED
    # when the other one's cleanup deletes it
    assert other.cleanup_old_results(retention_days=0) == 1
    # then it is unknown to the first one's poll and wait too (it answered COMPLETED from
    # the completions it remembered)
    assert manager.poll(job_id) is None and other.poll(job_id) is None
    with pytest.raises(LookupError):
        manager.wait(job_id, timeout=1)


def test_a_manager_whose_process_changed_directory_forgets_what_its_cleanup_deleted(
        make_manager: Any, tmp_path: Any, monkeypatch: Any) -> None:
    # given a job completed by a manager on a relative path, then the process's directory
    # changed (its store named afresh named another file, and the cleanup's news went
    # nowhere)
    monkeypatch.chdir(tmp_path)
    manager = make_manager("jobs.db", max_workers=1)
    manager.register_function("pair", pair)
    manager.start()
    job_id = manager.enqueue(Job(function_name="pair", args=(1,)))
    assert manager.wait(job_id, timeout=10).status is JobStatus.COMPLETED
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    # when its cleanup deletes the job, then it is unknown to its poll and wait
    assert manager.cleanup_old_results(retention_days=0) == 1
    assert manager.poll(job_id) is None
    with pytest.raises(LookupError):
        manager.wait(job_id, timeout=1)


class FailingAfterDeleting(SQLiteRepository):
    """Deletes the finished jobs, then fails (as a chunk after the first may, the database
    locked past its busy timeout)."""

    def delete_finished(self, before: Any) -> int:
        super().delete_finished(before)
        raise RepositoryError("the database stayed locked past the busy timeout")


def test_a_cleanup_that_failed_part_of_the_way_forgets_what_it_may_have_deleted(
        make_manager: Any, db_path: str) -> None:
    # given a job completed here
    manager = make_manager(FailingAfterDeleting(db_path), max_workers=1)
    manager.register_function("pair", pair)
    manager.start()
    job_id = manager.enqueue(Job(function_name="pair", args=(1,)))
    assert manager.wait(job_id, timeout=10).status is JobStatus.COMPLETED
    # when a cleanup deletes it, then fails
    with pytest.raises(RepositoryError):
        manager.cleanup_old_results(retention_days=0)
    # then the job is unknown to poll and wait (both answered COMPLETED from memory)
    assert manager.poll(job_id) is None
    with pytest.raises(LookupError):
        manager.wait(job_id, timeout=1)


def test_a_completion_noted_after_this_managers_cleanup_deleted_its_job_is_not_answered(
        make_manager: Any, db_path: str, monkeypatch: Any) -> None:
    # given a job whose completion is noted here late: committed, and the recording thread
    # still on its way to note it
    release, held, noted = threading.Event(), threading.Event(), threading.Event()
    note = waiting.Settlements.note

    def late_note(self: waiting.Settlements, settled: Any) -> None:
        settled = list(settled)
        late = any(completion is not None for _, completion in settled) and not release.is_set()
        if late:
            held.set()
            release.wait(10)
        note(self, settled)
        if late:
            noted.set()

    monkeypatch.setattr(waiting.Settlements, "note", late_note)
    manager = make_manager(db_path, max_workers=1)
    manager.register_function("pair", pair)
    manager.start()
    job_id = manager.enqueue(Job(function_name="pair", args=(1,)))
    assert held.wait(10)
    record = manager.repository.get(job_id)
    assert record is not None and record.status is JobStatus.COMPLETED
    # when this manager's cleanup deletes it, and only then is the completion noted
    assert manager.cleanup_old_results(retention_days=0) == 1
    release.set()
    assert noted.wait(10)
    # then the deleted job is unknown to wait and poll (both answered COMPLETED)
    with pytest.raises(LookupError):
        manager.wait(job_id, timeout=1)
    assert manager.poll(job_id) is None


def test_an_id_used_again_after_another_process_deleted_its_job_is_waited_for_afresh(
        make_manager: Any, db_path: str) -> None:
    # given a job completed here, deleted behind this manager's back (as another process
    # cleaning up would), and a gate that holds the next run of its function
    gate = threading.Event()
    manager = make_manager(db_path, max_workers=1)
    manager.register_function("pair", pair)
    manager.register_function("gated", lambda x: gate.wait(10) and x * 10)
    manager.start()
    job_id = manager.enqueue(Job(function_name="pair", args=(1,), id="reused-id"))
    assert manager.wait(job_id, timeout=10).result == [1, {"x": 1}]
    other = sqlite3.connect(db_path)
    with other:
        other.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
    other.close()
    # when a new job takes the same id and is still running
    assert manager.enqueue(Job(function_name="gated", args=(2,), id="reused-id")) == job_id
    # then wait does not answer with the old job's result: it waits for the new one
    with pytest.raises(TimeoutError):
        manager.wait(job_id, timeout=0.2)
    gate.set()
    assert manager.wait(job_id, timeout=10).result == 20


def test_only_the_latest_completions_are_remembered(make_manager: Any, db_path: str,
                                                    monkeypatch: Any) -> None:
    # given a manager that remembers at most 3 completions
    monkeypatch.setattr(waiting, "RECENT_COMPLETIONS", 3)
    manager = make_manager(db_path, max_workers=1)
    manager.register_function("pair", pair)
    manager.start()
    ids = [manager.enqueue(Job(function_name="pair", args=(n,))) for n in range(6)]
    for job_id in ids:
        manager.wait(job_id, timeout=10)
    _noted(manager, ids[-1:])
    # when every job is waited for again
    reads = _CountingGets(manager.repository)
    results = [manager.wait(job_id, timeout=10) for job_id in ids]
    # then the three oldest were read back from the repository, the newest three were not,
    # and every answer is right
    assert reads.reads == 3
    assert [r.result[0] for r in results] == list(range(6))
    assert len(manager._settlements) == 3


def _remembering(monkeypatch: Any, first: int, most: int, behind: int) -> None:
    monkeypatch.setattr(waiting, "RECENT_COMPLETIONS", first)
    monkeypatch.setattr(waiting, "MOST_COMPLETIONS", most)
    monkeypatch.setattr(waiting, "BEHIND_READS", behind)


def _started(make_manager: Any, db_path: str) -> JobManager:
    manager: JobManager = make_manager(db_path, max_workers=1)
    manager.register_function("pair", pair)
    manager.start()
    return manager


def _run(manager: JobManager, numbers: range) -> list[str]:
    """Enqueue a `pair` job of each number and wait for it before the next: a caller that
    never falls behind (the tests make one fall behind on purpose). Their ids."""
    ids = []
    for n in numbers:
        ids.append(manager.enqueue(Job(function_name="pair", args=(n,))))
        manager.wait(ids[-1], timeout=10)
    _noted(manager, ids[-1:])
    return ids


def _noted(manager: JobManager, ids: list[str]) -> None:
    """Wait until these jobs' completions are noted here, which the counts of row reads
    that follow rely on (a `wait` on a job run here returns once it is noted; this says so
    where it is relied on)."""
    wait_until(lambda: all(manager._settlements.completed(job_id) is not None for job_id in ids), 10,
               "the completions noted here")


def test_a_caller_that_fell_behind_makes_more_completions_remembered(make_manager: Any, db_path: str,
                                                                       monkeypatch: Any) -> None:
    # given a manager remembering 4 completions at first, twice as many after every 2
    # jobs it completed had to be read back, at most 16; 8 jobs completed and waited for
    _remembering(monkeypatch, first=4, most=16, behind=2)
    manager = _started(make_manager, db_path)
    first = _run(manager, range(8))
    assert len(manager._settlements) == 4
    # when a caller waits on the oldest two again, fallen behind what is remembered
    reads = _CountingGets(manager.repository)
    assert [manager.wait(job_id, timeout=10).result[0] for job_id in first[:2]] == [0, 1]
    assert reads.reads == 2
    # then 8 are remembered from then on: the next 8 completions are answered without a read
    later = _run(manager, range(8, 16))
    assert len(manager._settlements) == 8
    reads.reads = 0
    assert [manager.wait(job_id, timeout=10).result[0] for job_id in later] == list(range(8, 16))
    assert reads.reads == 0
    # and however far a caller falls behind, no more than the most are remembered
    for job_id in first + later + _run(manager, range(16, 40)) + first + later:
        manager.wait(job_id, timeout=10)
    _run(manager, range(40, 80))
    assert len(manager._settlements) == 16


def test_reading_back_jobs_another_process_completed_remembers_no_more(make_manager: Any, db_path: str,
                                                                        monkeypatch: Any) -> None:
    # given jobs completed by another manager on the same file, and a manager here whose
    # own remembered completions are full
    _remembering(monkeypatch, first=2, most=16, behind=1)
    other = _started(make_manager, db_path)
    theirs = _run(other, range(4))
    other.stop()
    manager = _started(make_manager, db_path)
    _run(manager, range(4, 6))
    # when a caller here waits on the other manager's jobs (read back: not completed here)
    assert [manager.wait(job_id, timeout=10).result[0] for job_id in theirs] == list(range(4))
    # then it still remembers 2: four more completions here keep only the latest 2
    _run(manager, range(6, 10))
    assert len(manager._settlements) == 2


def test_only_jobs_forgotten_count_as_falling_behind(monkeypatch: Any) -> None:
    # given 2 completions remembered (all there is room for), completed at 10 and 11
    _remembering(monkeypatch, first=2, most=16, behind=1)
    settlements = waiting.Settlements()
    settlements.mark([(job_ids.new_job_id(), Completion((), None, 10.0 + n, False)) for n in range(2)])

    def wait_reading(record: JobRecord) -> None:
        settlements.wait(record.id, 1.0, held=lambda _: False, read=lambda _: record, worker_id="here")

    def remembered_after_four_more() -> int:
        settlements.mark([(job_ids.new_job_id(), Completion((), None, 20.0 + n, False)) for n in range(4)])
        return len(settlements)

    # when a caller reads back a job completed here after the oldest one remembered (read
    # between its commit and its completion being noted), or one completed elsewhere
    wait_reading(make_record(status=JobStatus.COMPLETED, worker_id="here", completed_at=12.0))
    wait_reading(make_record(status=JobStatus.COMPLETED, worker_id="elsewhere", completed_at=5.0))
    # then nothing more is remembered
    assert remembered_after_four_more() == 2
    # but a job completed here before the oldest one remembered was forgotten: it counts
    wait_reading(make_record(status=JobStatus.COMPLETED, worker_id="here", completed_at=5.0))
    assert remembered_after_four_more() == 4


def _running_at_a_gate(make_manager: Any, db_path: str, value: int,
                       reported: bool = False) -> tuple[JobManager, str, threading.Event, _CountingGets]:
    """A started manager of one worker running a job held at a gate (set it and the job
    returns `value`; `reported`: it reported progress first), and the row reads made from
    then on: (manager, job id, gate, reads)."""
    started, gate = threading.Event(), threading.Event()

    def gated(x: int) -> int:
        if reported:
            job = current_job()
            assert job is not None
            job.progress(0.5, "halfway")
        started.set()
        gate.wait(10)
        return x

    manager = make_manager(db_path, max_workers=1)
    manager.register_function("gated", gated)
    manager.start()
    job_id = manager.enqueue(Job(function_name="gated", args=(value,)))
    assert started.wait(10)
    return manager, job_id, gate, _CountingGets(manager.repository)


@pytest.mark.parametrize("reported", [False, True])
def test_wait_on_a_job_running_here_reads_no_row_until_it_settles(make_manager: Any, db_path: str,
                                                                  reported: bool) -> None:
    """A job claimed here settles here, and its waiter is woken then: reading its row
    while it runs would tell nothing new. One that reported progress is read once, after."""
    # given a job running here, held at a gate
    manager, job_id, gate, reads = _running_at_a_gate(make_manager, db_path, 3, reported)
    # when it is waited for while it runs (past a timeout), then released and waited for
    with pytest.raises(TimeoutError, match="still running"):
        manager.wait(job_id, timeout=0.05)
    gate.set()
    result = manager.wait(job_id, timeout=10)
    # then the answer is its outcome, and no row was read before it settled
    assert (result.status, result.result) == (JobStatus.COMPLETED, 3)
    assert reads.reads == (1 if reported else 0)


def test_a_waiter_the_poller_tells_of_a_job_being_recorded_here_reads_no_row(
        make_manager: Any, db_path: str, monkeypatch: Any) -> None:
    """The poller reads the statuses of jobs held here too (one may have ended elsewhere),
    and often finds a job ended between its outcome's commit and its settling here. That
    job settles here at once: its waiter waits for it rather than read the row."""
    # given a job whose completion is committed and then held up before it is noted here
    release, held_up, told, looked = (threading.Event() for _ in range(4))
    note, look_again, look = waiting.Settlements.note, waiting.Settlements._look_again, waiting.Settlements._look

    def late_note(self: waiting.Settlements, settled: Any) -> None:
        settled = list(settled)
        if any(completion is not None for _, completion in settled) and not release.is_set():
            held_up.set()
            release.wait(10)
        note(self, settled)

    def news(self: waiting.Settlements, ids: list[str]) -> None:
        look_again(self, ids)
        told.set()

    def looking(self: waiting.Settlements, *args: Any, elsewhere_since: Any = None) -> Any:
        found = look(self, *args, elsewhere_since=elsewhere_since)
        if elsewhere_since is not None and held_up.is_set():
            looked.set()
        return found

    monkeypatch.setattr(waiting.Settlements, "note", late_note)
    monkeypatch.setattr(waiting.Settlements, "_look_again", news)
    monkeypatch.setattr(waiting.Settlements, "_look", looking)
    manager, job_id, gate, reads = _running_at_a_gate(make_manager, db_path, 4)
    results: list[Any] = []
    waiter = threading.Thread(target=lambda: results.append(manager.wait(job_id, timeout=10)))
    waiter.start()
    # when the job returns, the poller finds its row ended before it is noted here, and the
    # waiter looks at that news
    gate.set()
    assert held_up.wait(10) and told.wait(10) and looked.wait(10)
    release.set()
    waiter.join(10)
    # then the waiter has its outcome, and read no row
    assert [(r.status, r.result) for r in results] == [(JobStatus.COMPLETED, 4)]
    assert reads.reads == 0


def test_wait_sees_a_job_another_process_completed_while_this_one_still_runs_its_attempt(
        make_manager: Any, db_path: str) -> None:
    """A process that froze past its job's lease (a paused VM, a long GC pause) still runs
    the attempt once it resumes, while another process took the job back and completed
    it. Its `wait` must see that: it waited for its own attempt, which may never return."""
    started, gate = threading.Event(), threading.Event()

    def gated() -> str:
        started.set()
        gate.wait(10)
        return "here"

    manager = make_manager(db_path, max_workers=1)
    manager.register_function("gated", gated)
    manager.start()
    job_id = manager.enqueue(Job(function_name="gated"))
    try:
        assert started.wait(10)
        manager.stop(wait=False)  # (it claims nothing more; the attempt runs on, held here)
        # given another process took the job back, its lease lapsed, and completed it
        other = SQLiteRepository(db_path)
        try:
            now = time.time()
            assert [entry.job_id for entry in other.recover_expired(now + 3600)] == [job_id]
            record = other.claim(job_id, "another-process", now, now + 60)
            assert record is not None
            assert other.complete(job_id, "another-process", record.attempts, "elsewhere", now) is not None
        finally:
            other.close()
        # when this process waits for it, its own attempt still running
        result = manager.wait(job_id, timeout=5)
        # then it sees the job completed elsewhere
        assert (result.status, result.result, result.attempts) == (JobStatus.COMPLETED, "elsewhere", 2)
    finally:
        gate.set()


def test_a_manager_that_runs_nothing_still_waits_by_reading(make_manager: Any, db_path: str) -> None:
    # given a job completed by one manager, and a second manager on the same file
    runner = make_manager(db_path, max_workers=1)
    runner.register_function("pair", pair)
    runner.start()
    job_id = runner.enqueue(Job(function_name="pair", args=(5,)))
    runner.wait(job_id, timeout=10)
    observer: JobManager = make_manager(db_path, producer=True)
    # when the second waits for it, then it reads the row and sees the same result
    assert _fields(observer.wait(job_id, timeout=10)) == _fields(runner.wait(job_id, timeout=10))


def test_poll_wait_and_list_jobs_never_read_the_arguments(make_manager: Any, db_path: str,
                                                          monkeypatch: Any) -> None:
    """What they show carries no arguments, so they read none: showing a job costs the
    same whatever the size of its arguments. The dead-letter queue, which gives the Job
    back, still reads them."""
    decoded: list[str] = []
    real_decode = serialization.decode_payload

    def recording_decode(text: str) -> Any:
        decoded.append(text)
        return real_decode(text)

    monkeypatch.setattr(serialization, "decode_payload", recording_decode)
    # given jobs with large arguments, run by another manager on the same file
    big = "argument-" * 10_000
    producer = make_manager(db_path)
    echo = lambda *args, **kwargs: [list(args), kwargs]  # noqa: E731
    producer.register_function("echo", echo)
    producer.register_function("broken", broken)
    ok = producer.enqueue(Job(function_name="echo", args=(big,), kwargs={"x": big}))
    bad = producer.enqueue(Job(function_name="broken", args=(big,), max_retries=0))
    runner = make_manager(db_path, max_workers=1)
    runner.register_function("echo", echo)
    runner.register_function("broken", broken)
    runner.start()
    assert runner.wait(ok, timeout=10).result == [[big], {"x": big}]
    assert runner.wait(bad, timeout=10).status is JobStatus.FAILED
    # when the producer (which completed nothing itself) shows them
    decoded.clear()
    assert producer.poll(ok).status is JobStatus.COMPLETED
    assert producer.wait(ok, timeout=10).result == [[big], {"x": big}]
    assert [r.job_id for r in producer.list_jobs()] == [bad, ok]
    assert producer.list_jobs(status="failed")[0].error_type == "ValueError"
    # then no argument was read or decoded
    assert not any("argument-" in text for text in decoded)
    # and the dead-letter queue gives the failed job back with its arguments
    [(job, result)] = producer.get_dead_letter_queue()
    assert (job.id, job.args, result.status) == (bad, (big,), JobStatus.FAILED)


def test_wait_shows_what_poll_shows_of_metadata_changed_after_enqueue(make_manager: Any, db_path: str) -> None:
    release = threading.Event()
    manager = make_manager(db_path, max_workers=1).start()
    inner = [1]
    job_id = manager.enqueue(Job(function=release.wait, args=(10,), metadata={"pair": (1, 2), "list": inner}))
    inner.append("changed after enqueue")
    release.set()
    waited = manager.wait(job_id, timeout=10)
    assert waited.metadata == manager.poll(job_id).metadata == {"pair": [1, 2], "list": [1]}


def test_scheduled_at_is_not_a_spent_retry_time(make_manager: Any, db_path: str) -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("once")
        return "done"

    manager = make_manager(db_path, max_workers=1).start()
    job_id = manager.enqueue(Job(function=flaky, retry_delay=0.01, retry_jitter=False))
    waited = manager.wait(job_id, timeout=10)
    assert (waited.result, waited.attempts) == ("done", 2)
    assert waited.scheduled_at is None and manager.poll(job_id).scheduled_at is None
    assert manager.list_jobs()[0].scheduled_at is None


def _own_id(kind: str) -> str:
    """An id of one's own: a name, or of the shape jobcore's have: a uuid4's hex (as SPEC's
    ids), or a hex digest of a work item's key (idempotent ids) with a uuid4's version and
    variant digits, as 1 digest in 64 has."""
    if kind == "name":
        return "nightly-report"
    if kind == "uuid4 hex":
        return uuid.uuid4().hex
    return next(digest for n in range(10_000)
                if (digest := hashlib.md5(f"report-{n}".encode()).hexdigest())[12] == "4" and digest[16] in "89ab")


@pytest.mark.parametrize("kind", ["name", "uuid4 hex", "hex digest"])
def test_poll_and_wait_read_the_row_of_a_job_with_an_id_of_its_own(tmp_path: Any, kind: str) -> None:
    # given a job with an id of its own completed here, then deleted by another process,
    # which gave that id to a new job: wait and poll answered with the old job's result
    own_id = _own_id(kind)
    path = str(tmp_path / "shared.db")
    worker = JobManager(path, max_workers=1)
    worker.register_function("value", lambda n: n)
    other = JobManager(path, producer=True)
    worker.start()
    try:
        assert worker.wait(worker.enqueue(Job(function_name="value", args=(42,), id=own_id)),
                           timeout=10).result == 42
        assert other.cleanup_old_results(0) == 1
        worker.stop()
        other.enqueue(Job(function_name="value", args=(7,), id=own_id))
        # then poll and wait see the new job (pending: its manager is stopped), not the
        # old result
        polled = worker.poll(own_id)
        assert polled is not None and polled.status is JobStatus.PENDING
        with pytest.raises(TimeoutError):
            worker.wait(own_id, timeout=0.05)
        worker.start()
        assert worker.wait(own_id, timeout=10).result == 7
    finally:
        worker.close()
        other.close()


def test_the_ids_jobcore_makes_are_told_from_any_other() -> None:
    made = [Job(function=pair).id for _ in range(2000)]
    assert all(job_ids.made_by_jobcore(job_id) for job_id in made)
    # not a uuid4 of one's own, nor a digest, though of the same shape (nor one edited)
    own = [uuid.uuid4().hex for _ in range(2000)]
    assert not any(job_ids.made_by_jobcore(job_id) for job_id in own)
    assert not any(job_ids.made_by_jobcore(job_id[:-1] + ("0" if job_id[-1] != "0" else "1")) for job_id in made)
    assert not any(job_ids.made_by_jobcore(job_id.upper()) for job_id in made)
    assert not job_ids.made_by_jobcore("nightly-report") and not job_ids.made_by_jobcore("")


def _large_fields(n: int) -> dict[str, Any]:
    """Job fields of which the `n % 4`th takes 5 KB or more (more than a remembered
    completion keeps), or of an ordinary size if `n` is negative."""
    if n < 0:
        return {"metadata": {"user": "u-1", "n": -n}, "tags": {"billing"}}
    large: list[dict[str, Any]] = [{"metadata": {"blob": "x" * 5000, "n": n}},
                                   {"tags": {f"tag-{i:04}" for i in range(500)}},
                                   {"name": "long " * 1000}, {"owner": "o" * 5000}]
    return large[n % 4]


@pytest.mark.parametrize("backend", ["sqlite", "memory"])
def test_wait_on_a_job_with_large_fields_gives_what_it_gave_from_memory(
        make_manager: Any, db_path: str, backend: str, monkeypatch: Any) -> None:
    # given a started manager, and jobs with 100 KB of metadata (or another large field)
    # it completed while completions of any size were remembered (as before)
    repository = SQLiteRepository(db_path) if backend == "sqlite" else MemoryRepository()
    manager = make_manager(repository, max_workers=1)
    manager.register_function("pair", pair)
    manager.start()
    fields = [{"metadata": {"blob": "x" * 100_000, "nested": {"list": [1, 2.5, None, True]}},
               "tags": {"a", "b"}, "owner": "someone"}] + [_large_fields(n) for n in range(1, 4)]
    monkeypatch.setattr(completions, "REMEMBERED_FIELDS_BYTES", 10**9, raising=False)  # (none before)
    remembered = [manager.enqueue(Job(function_name="pair", args=(n,), **f)) for n, f in enumerate(fields)]
    for job_id in remembered:
        manager.wait(job_id, timeout=10)
    _noted(manager, remembered)
    monkeypatch.undo()
    reads = _CountingGets(manager.repository)
    from_memory = [manager.wait(job_id, timeout=10) for job_id in remembered]
    assert reads.reads == 0
    # when they are waited for once they are no longer remembered (read back), and the
    # same jobs run again now are waited for
    manager._settlements.forget(remembered)
    from_rows = [manager.wait(job_id, timeout=10) for job_id in remembered]
    a_read = reads.reads // len(remembered)  # (calls counted for one row read: `get` may be called by the other)
    assert a_read and reads.reads == a_read * len(remembered)
    again = [manager.enqueue(Job(function_name="pair", args=(n,), **f)) for n, f in enumerate(fields)]
    # (each ended before its wait begins: a wait that begins while its job is still queued
    # reads the row as it begins and again once told, which on a loaded host made 5 reads)
    wait_until(lambda: set(manager.repository.get_statuses(again).values()) == {JobStatus.COMPLETED}, 10,
               "the jobs run again to complete")
    now = [manager.wait(job_id, timeout=10) for job_id in again]
    # then the jobs completed now were not remembered (each was read back), and every
    # answer is the one given from memory before, and what poll shows
    assert reads.reads == 2 * a_read * len(remembered)
    assert [_fields(r) for r in from_rows] == [_fields(r) for r in from_memory]
    assert [_fields(r) for r in from_memory] == [_fields(manager.poll(job_id)) for job_id in remembered]
    assert [_fields(r) for r in now] == [_fields(manager.poll(job_id)) for job_id in again]
    assert now[0].metadata == fields[0]["metadata"] and now[0].tags == {"a", "b"}
    for before, after in zip(from_memory, now):
        assert ({k: v for k, v in _fields(after).items() if k not in ("job_id", "created_at", "started_at",
                                                                       "completed_at")}
                == {k: v for k, v in _fields(before).items() if k not in ("job_id", "created_at", "started_at",
                                                                          "completed_at")})


def _deep_size(value: Any) -> int:
    """`sys.getsizeof` of `value` and of all its containers hold."""
    inner = list(value.items()) if isinstance(value, dict) else value
    if isinstance(value, (dict, list, tuple, set, frozenset)):
        return sys.getsizeof(value) + sum(_deep_size(item) for item in inner)
    return sys.getsizeof(value)


@pytest.mark.parametrize("backend", ["sqlite", "memory"])
def test_the_fields_remembered_of_completions_stay_small(make_manager: Any, db_path: str, backend: str) -> None:
    # given a started manager
    repository = SQLiteRepository(db_path) if backend == "sqlite" else MemoryRepository()
    manager = make_manager(repository, max_workers=2)
    manager.register_function("pair", pair)
    manager.start()
    # when it completes 200 jobs, each with one field of 5 KB or more (metadata, tags,
    # name or owner), and 50 ordinary ones, and each is waited for
    ids = manager.enqueue_many([Job(function_name="pair", args=(n,), **_large_fields(n if n < 200 else -n))
                                for n in range(250)])
    results = [manager.wait(job_id, timeout=10) for job_id in ids]
    assert [r.status for r in results] == [JobStatus.COMPLETED] * 250
    _noted(manager, ids[200:])
    # then only the ordinary ones are remembered, each with its fields in under 4 KB
    # (before: all 250, the large ones with their 5 KB and more each; with 100 KB of
    # metadata each, 4,096 held 410 MB)
    kept = list(manager._settlements._completions.items())
    assert sorted(job_id for job_id, _ in kept) == sorted(ids[200:])
    assert max(_deep_size(completion.kept) for _, completion in kept) <= completions.REMEMBERED_FIELDS_BYTES


def test_the_memory_a_value_takes_is_told_near_enough_and_at_a_bounded_cost() -> None:
    # a value's size is told within a factor of two of what its objects take
    values: list[Any] = [{"user": "u-1", "n": 3, "ok": True, "none": None, "x": 2.5}, ["a", "bc", 1],
                         {"nested": {"deeper": [{"k": "v" * 300}]}}, frozenset({"t1", "t2"}), "x" * 900,
                         {f"k{i}": [] for i in range(20)}, tuple(f"id-{i}" for i in range(30))]
    for value in values:
        told = 100_000 - sizes.bytes_left(value, 100_000)
        assert _deep_size(value) // 2 <= told <= 2 * _deep_size(value), (value, told, _deep_size(value))
    # and never much less for large ints (JSON's have up to 4,300 digits) and text of
    # other characters than ASCII (up to 4 bytes each), which were told as small (80
    # ints of 4,000 digits: 3.4 KB told, 145 KB taken; a wait remembered 4,096 of them)
    for value in ([10**4000] * 3, {"n": 10**3000}, 2**9000, "日本語" * 300, ["😀" * 300, "😀"],
                  {"ключ": "значение" * 50}, {"😀" * 100: 1}, ("é" * 100,)):
        told = 100_000 - sizes.bytes_left(value, 100_000)
        assert _deep_size(value) // 2 <= told, (value, told, _deep_size(value))
    assert sizes.bytes_left([10**4000] * 80, 4096) < 0
    # and however large, the count stops once past the budget, without a RecursionError
    assert sizes.bytes_left({"blob": "x" * 100_000}, 4096) < 0
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    assert sizes.bytes_left(deep, 4096) < 0

    # looking at no more items of a container than the budget allows, whatever it holds
    looked: list[int] = []

    class Counted(list):  # type: ignore[type-arg]
        def __iter__(self) -> Any:
            for item in super().__iter__():
                looked.append(1)
                yield item

    assert sizes.bytes_left(Counted([["y"]] * 1_000_000), 4096) < 0
    assert looked == []  # told by its length alone
    assert sizes.bytes_left(Counted([["y"]] * 400), 4096) < 0
    assert 0 < len(looked) <= 2 * 4096 // sizes.ARRAY_ITEM
