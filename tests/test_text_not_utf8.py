"""Stored text that is not UTF-8 (another tool, a hand edit, corruption): the row holding
it fails alone as CorruptJob, and every read and claim meeting it works. sqlite3 raised
"Could not decode to UTF-8 column ..." for the whole statement: one such row stopped every
claim of a worker (its transaction rolled back and retried for ever) and every listing."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from jobcore import Job, JobManager, JobStatus, SQLiteRepository
from jobcore.cli import main
from jobcore.dashboard import DashboardServer
from jobcore.records import record_for

WAIT = 10.0
# b'\xfflocked': not UTF-8, and sqlite3's error quoting it says "locked", which the wait for
# a busy database once took for another process's lock.
NOT_UTF8 = "CAST(X'ff6c6f636b6564' AS TEXT)"
SHOWN = "\ufffdlocked"  # how it reads: U+FFFD for the byte that is not UTF-8


def _set_raw(db: str, job_id: str, column: str, sql_value: str) -> None:
    """Set one column of a job row as another tool would, with SQL of its own."""
    raw = sqlite3.connect(db, isolation_level=None)
    try:
        assert raw.execute(f"UPDATE jobs SET {column} = {sql_value} WHERE id = ?", (job_id,)).rowcount == 1
    finally:
        raw.close()


class Store:
    """A SQLite file holding plain jobs of two functions and jobs whose name, payload or
    metadata another tool set to text that is not UTF-8; each `open()` is a new repository,
    whose connections read text strictly until they meet such text."""

    def __init__(self, path: Path) -> None:
        self.db = str(path)
        self._opened: list[SQLiteRepository] = []
        repo = self.open()
        now = time.time()
        jobs = [Job(function_name="work", args=(0,)), Job(function_name="work", args=(1,)),
                Job(function_name="other", args=(2,)), Job(function_name="work", args=(3,)),
                Job(function_name="work", args=(4,), metadata={"team": "x"})]
        self.ids = repo.insert([record_for(job, now) for job in jobs], now)
        self.good = [self.ids[0], self.ids[2]]
        self.bad_name, self.bad_payload, self.bad_metadata = self.ids[1], self.ids[3], self.ids[4]
        _set_raw(self.db, self.bad_name, "name", NOT_UTF8)
        _set_raw(self.db, self.bad_payload, "payload", "CAST(X'5b5b22ff225d2c7b7d5d' AS TEXT)")  # [["\xff"],{}]
        _set_raw(self.db, self.bad_metadata, "metadata", "CAST(X'7b2274223a22ff227d' AS TEXT)")  # {"t":"\xff"}

    def open(self) -> SQLiteRepository:
        repo = SQLiteRepository(self.db, busy_timeout=WAIT)
        self._opened.append(repo)
        return repo

    def close(self) -> None:
        for repo in self._opened:
            repo.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / "jobs.db")
    yield store
    store.close()


def _told(store: Store) -> dict[str, str]:
    """What each corrupt job's decode error must say."""
    return {store.bad_name: f"stored job {store.bad_name} cannot be decoded: name holds text that is not UTF-8"
                            f" ({SHOWN!r})",
            store.bad_payload: "payload holds text that is not UTF-8",
            store.bad_metadata: "metadata holds text that is not UTF-8"}


def test_every_read_meeting_such_text_reads_each_row_and_marks_only_the_corrupt_ones(store: Store) -> None:
    told = _told(store)
    # when a job is read by id (a repository of its own each: connections that read strictly)
    shown = store.open().get(store.bad_name)
    # then it reads, its name as U+FFFD and the byte, with an error naming the column
    assert shown is not None and shown.name == SHOWN and told[store.bad_name] == shown.decode_error
    metadata = store.open().get(store.bad_metadata)
    assert metadata is not None
    stored_metadata = '{"t":"\ufffd"}'
    assert metadata.decode_error.endswith(f"{told[store.bad_metadata]} ({stored_metadata!r})")
    fine = store.open().get(store.ids[0])
    assert fine is not None and fine.decode_error is None and fine.args == (0,)
    # and listings and the queue give every job, only the corrupt ones with an error
    listed = {r.id: r.decode_error for r in store.open().list(limit=None)}
    assert set(listed) == set(store.ids)
    assert all(told[job_id] in (listed[job_id] or "") for job_id in told)
    assert all(listed[job_id] is None for job_id in set(store.ids) - set(told))
    assert {r.id for r in store.open().list_without_args(limit=None)} == set(store.ids)
    assert {e.job_id for e in store.open().ready(["work", "other"], 10)} == set(store.ids)
    assert store.open().count_by_status()[JobStatus.PENDING] == 5


@pytest.mark.parametrize("how", ["by id", "by number", "one at a time"])
def test_a_claim_meeting_such_text_claims_every_job_and_marks_only_the_corrupt_ones(store: Store, how: str) -> None:
    # given a repository whose connections read text strictly
    repo = store.open()
    now = time.time()
    # when a worker claims every job (it raised, and the claim's transaction was undone)
    if how == "by id":
        _, claimed = repo.apply([], store.ids, "w", now, now + 60)
    elif how == "by number":
        _, claimed = repo.apply([], [], "w", now, now + 60, top_up={"work", "other"}, up_to=10)
    else:
        claimed = [record for record in (repo.claim(job_id, "w", now, now + 60) for job_id in store.ids)
                   if record is not None]
    # then each is claimed once; the good ones with their arguments, the corrupt ones
    # with an error naming the column (a worker fails them as CorruptJob)
    by_id = {record.id: record for record in claimed}
    assert sorted(by_id) == sorted(store.ids)
    assert [(by_id[job_id].args, by_id[job_id].decode_error) for job_id in store.good] == [((0,), None), ((2,), None)]
    for job_id, error in _told(store).items():
        assert error in (by_id[job_id].decode_error or ""), (how, job_id)
    assert by_id[store.bad_name].name == SHOWN
    assert all(record.status is JobStatus.RUNNING for record in store.open().list(limit=None))


def test_cancelling_a_job_whose_dependent_reads_its_name_cancels_both(store: Store) -> None:
    # given a job depending on the one whose name is not UTF-8 (a cancel names it to its
    # dependents, reading its name)
    repo = store.open()
    now = time.time()
    (dependent,) = repo.insert([record_for(Job(function_name="work", depends_on=[store.bad_name]), now)], now)
    # when it is cancelled, by a repository that reads text strictly
    outcome, cascade = store.open().cancel(store.bad_name, now, "by hand")
    # then it is cancelled, and its dependent too, the error naming it as read
    assert (outcome.name, cascade.cancelled) == ("CANCELLED", (dependent,))
    after = repo.get(dependent)
    assert after is not None and after.status is JobStatus.CANCELLED
    assert store.bad_name in (after.error or "")


def test_a_connection_reads_text_strictly_until_it_meets_text_that_is_not_utf8(store: Store) -> None:
    # given a repository reading only sound rows
    repo = store.open()
    assert repo.get(store.ids[0]) is not None
    conn = repo._db.get()
    # then its connection reads with sqlite3's own factory (a Python one costs every text value)
    assert conn.text_factory is str
    # when it meets text that is not UTF-8
    assert repo.get(store.bad_name) is not None
    # then that connection reads tolerantly from then on, and so does each opened after it
    assert conn.text_factory is not str
    seen: list[Any] = []
    thread = threading.Thread(target=lambda: seen.append((repo._db.get().text_factory, repo.get(store.bad_name))))
    thread.start()
    thread.join(WAIT)
    assert seen and seen[0][0] is conn.text_factory and seen[0][1].name == SHOWN


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=WAIT) as reply:
        assert reply.status == 200
        return json.loads(reply.read())


def test_a_worker_runs_the_other_jobs_and_fails_the_corrupt_ones_alone(
        store: Store, make_manager: Callable[..., JobManager], capsys: Any) -> None:
    # given a manager running both functions (its worker once retried its claims for
    # ever: no job of any function ran, and no outcome was recorded)
    manager = make_manager(store.db, max_workers=2)
    manager.register_function("work", lambda x: x)
    manager.register_function("other", lambda x: -x)
    # when it runs them, and a job enqueued after
    manager.start()
    later = manager.enqueue(Job(function_name="work", args=(5,)))
    # then the sound ones complete
    assert [manager.wait(job_id, timeout=WAIT).result for job_id in (*store.good, later)] == [0, -2, 5]
    # and each corrupt one fails alone as CorruptJob, naming its column, after one attempt
    for job_id, told in _told(store).items():
        result = manager.wait(job_id, timeout=WAIT)
        assert (result.status, result.error_type, result.attempts) == (JobStatus.FAILED, "CorruptJob", 1)
        assert told in (result.error or "")
    assert manager.poll(store.bad_name).name == SHOWN
    # and the command line lists them (it exited 1 on the error)
    assert main(["--db", store.db, "list"]) == 0
    listed = capsys.readouterr().out
    assert SHOWN in listed and listed.count("failed") == 3
    # and a dashboard of its own (connections that read strictly) serves them (GET
    # /api/jobs answered 503)
    server = DashboardServer(make_manager(store.db, producer=True), port=0).start()
    try:
        jobs = _get_json(server.url.rstrip("/") + "/api/jobs")["jobs"]
    finally:
        server.close()
    assert {job["id"]: job["name"] for job in jobs}[store.bad_name] == SHOWN
