"""Listing jobs from SQLite (`jobcore.repository.sqlite_listing`): every status filter is
read from an index, never by walking the whole table, and every listing answers exactly
as filtering all the jobs in Python would, whichever way it chose to read them.

The plans are checked on real files whose shape makes the old ways slow: pending jobs
are in no index in seq order, and a bound status or an owner's range left the planner to
walk every job (10 pending jobs behind 1,000,000 finished: 108 ms a listing).
"""

from __future__ import annotations

import json
import random
import re
import sqlite3
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest

from jobcore.models import JobStatus
from jobcore.repository.base import JobRecord
from jobcore.repository import SQLiteRepository
from jobcore.repository import sqlite_sql as sql
from jobcore.testing.contract.support import NOW, make_record
from raw_db import raw_db

_FULL_SCAN = re.compile(r"^SCAN (TABLE )?jobs\b(?! USING)")
_PAGES = [(50, 0), (1, 3), (None, 0)]
Statement = tuple[str, tuple[Any, ...]]


class _Recording:
    """A connection that notes each statement run on it, with its parameters."""

    def __init__(self, conn: sqlite3.Connection, seen: list[Statement]) -> None:
        self._conn, self._seen = conn, seen

    def execute(self, query: str, params: Any = ()) -> sqlite3.Cursor:
        self._seen.append((query, tuple(params)))
        return self._conn.execute(query, params)


def _record_statements(repo: SQLiteRepository, monkeypatch: pytest.MonkeyPatch) -> list[Statement]:
    """The statements `repo`'s reads run from now on (as many as they run)."""
    seen: list[Statement] = []
    reading = repo._db.reading

    def recording(read: Callable[[Any], Any]) -> Any:
        return reading(lambda conn: read(_Recording(conn, seen)))

    monkeypatch.setattr(repo._db, "reading", recording)
    return seen


def _plan(path: Path, query: str, params: tuple[Any, ...]) -> list[str]:
    with raw_db(path) as conn:
        return [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + query, params)]


def _set_status(path: Path, ids: list[str], status: str, **columns: Any) -> None:
    sets = ", ".join(["status = ?"] + [f"{name} = ?" for name in columns])
    with raw_db(path) as conn:
        conn.executemany(f"UPDATE jobs SET {sets} WHERE id = ?",
                         [(status, *columns.values(), job_id) for job_id in ids])


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "jobs.db"


@pytest.fixture
def repo(path: Path) -> Iterator[SQLiteRepository]:
    repository = SQLiteRepository(path)
    yield repository
    repository.close()


def _few_of_each_behind_many_finished(repo: SQLiteRepository, path: Path) -> None:
    """A store that kept its history: the oldest jobs are a few of each status (pending ones
    waiting on dependencies too), then 3,000 completed ones, 2,000 of them alice's."""
    def job(n: int) -> Any:
        return make_record(owner="alice" if n % 2 == 0 else None, tags=frozenset({"t"}) if n % 3 == 0 else frozenset())

    few = {status: [job(n) for n in range(5)] for status in
           ("pending", "scheduled", "running", "failed", "cancelled")}
    waiting = [make_record(owner="alice", depends_on=(few["pending"][0].id,)) for _ in range(3)]
    done = [make_record(owner="alice" if n % 3 else None, tags=frozenset({"t"}) if n % 5 == 0 else frozenset())
            for n in range(3000)]
    repo.insert([record for records in few.values() for record in records] + waiting, NOW)
    for start in range(0, len(done), 500):
        repo.insert(done[start:start + 500], NOW)
    _set_status(path, [r.id for r in few["scheduled"]], "scheduled", run_at=NOW + 60)
    _set_status(path, [r.id for r in few["running"]], "running", worker_id="w1", attempts=1)
    for status in ("failed", "cancelled"):
        _set_status(path, [r.id for r in few[status]], status, completed_at=NOW)
    _set_status(path, [r.id for r in done], "completed", completed_at=NOW)


def _listing_plans(repo: SQLiteRepository, path: Path, monkeypatch: pytest.MonkeyPatch,
                   **filters: Any) -> list[list[str]]:
    seen = _record_statements(repo, monkeypatch)
    repo.list_without_args(**filters)
    monkeypatch.undo()
    assert seen
    return [_plan(path, query, params) for query, params in seen]


@pytest.mark.parametrize("status", list(JobStatus))
@pytest.mark.parametrize("owner", [None, "alice"])
@pytest.mark.parametrize("tags", [None, ["t"]])
@pytest.mark.parametrize("limit, offset", _PAGES)
def test_each_status_is_listed_from_an_index_never_by_walking_every_job(
        repo: SQLiteRepository, path: Path, monkeypatch: pytest.MonkeyPatch, status: JobStatus,
        owner: Optional[str], tags: Optional[list[str]], limit: Optional[int], offset: int) -> None:
    # given a few jobs of each status behind 3,000 completed ones, most of them alice's
    _few_of_each_behind_many_finished(repo, path)
    # when a status is listed, with or without other filters
    plans = _listing_plans(repo, path, monkeypatch, status=status, owner=owner, tags=tags, limit=limit,
                           offset=offset)
    # then no statement it ran walks the whole table
    for plan in plans:
        assert not [step for step in plan if _FULL_SCAN.match(step)], plans
    # and the rows of a status but `completed` come from its own range, not from alice's
    # 2,000 (the planner, left to choose, walked hers), nor from the table's
    listing = plans[-1]
    if status is JobStatus.PENDING:
        assert "SEARCH jobs USING INTEGER PRIMARY KEY (rowid=?)" in listing, listing
        assert [step for step in listing if "jobs_ready" in step], listing
    elif status is not JobStatus.COMPLETED:
        assert [step for step in listing if "USING INDEX jobs_status (status=?)" in step], listing
        assert not [step for step in listing if "jobs_owner" in step], listing


@pytest.mark.parametrize("limit, offset", [(50, 0), (1, 3)])
def test_a_backlog_of_pending_jobs_is_listed_from_its_newest_rows(
        repo: SQLiteRepository, path: Path, monkeypatch: pytest.MonkeyPatch, limit: int, offset: int) -> None:
    # given a few finished jobs, then a backlog of 3,000 pending ones, more than a look at
    # the newest rows reads
    old = [make_record() for _ in range(5)]
    repo.insert(old, NOW)
    _set_status(path, [r.id for r in old], "completed", completed_at=NOW)
    for _ in range(6):
        repo.insert([make_record() for _ in range(500)], NOW)
    # when the first pages of pending jobs are listed
    plans = _listing_plans(repo, path, monkeypatch, status=JobStatus.PENDING, limit=limit, offset=offset)
    # then they are read from a range of the newest rows (by the table's own key), not
    # from every pending job sorted, nor the whole table
    for plan in plans:
        assert not [step for step in plan if _FULL_SCAN.match(step)], plans
    assert "SEARCH jobs USING INTEGER PRIMARY KEY (rowid>?)" in plans[-1], plans


def test_no_status_is_bound_and_what_callers_give_is(repo: SQLiteRepository, path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # given jobs whose owner and tags hold quotes, as a careless caller's text would
    owner, tag = "o'brien", "x'); DROP TABLE jobs; --"
    records = [make_record(owner=owner, tags=frozenset({tag})) for _ in range(3)]
    repo.insert(records, NOW)
    seen = _record_statements(repo, monkeypatch)
    # when they are listed by status, owner and tag
    listed = [r.id for r in repo.list_without_args(status=JobStatus.PENDING, owner=owner, tags=[tag])]
    # then they are found, and no statement holds the caller's text or binds a status
    assert listed == [r.id for r in reversed(records)]
    for query, params in seen:
        assert owner not in query and "DROP" not in query
        assert not {status.value for status in JobStatus} & set(params), (query, params)


# -- every listing as a scan of all the jobs would answer ---------------------------------
_OWNERS = [None, "alice", "bob", "o'brien"]


def _random_store(repo: SQLiteRepository, path: Path, rng: random.Random) -> None:
    """400 jobs of random statuses, owners and tags; some pending ones wait on others, and a
    few rows were edited by hand (a status jobcore never writes, a `blocked` that is no count)."""
    records: list[JobRecord] = []
    for n in range(400):
        depends = (records[rng.randrange(n)].id,) if n and rng.random() < 0.05 else ()
        records.append(make_record(owner=rng.choice(_OWNERS), depends_on=depends,
                                   tags=frozenset(tag for tag in ("t", "u") if rng.random() < 0.4)))
    for start in range(0, len(records), 100):
        repo.insert(records[start:start + 100], NOW)
    statuses = ["pending"] * 3 + ["scheduled", "running", "completed", "completed", "failed", "cancelled"]
    by_status: dict[str, list[str]] = {}
    for record in records:
        if not record.depends_on:
            by_status.setdefault(rng.choice(statuses), []).append(record.id)
    for status, ids in by_status.items():
        if status != "pending":
            _set_status(path, ids, status)
    with raw_db(path) as conn:
        pending = by_status["pending"]
        conn.execute("UPDATE jobs SET status = 'PENDING' WHERE id = ?", (pending[0],))
        conn.execute("UPDATE jobs SET blocked = 'x' WHERE id = ?", (pending[1],))
        conn.execute("UPDATE jobs SET blocked = -1 WHERE id = ?", (pending[2],))


def _scan(path: Path, status: Optional[JobStatus], owner: Optional[str], tags: Optional[list[str]],
          limit: Optional[int], offset: int) -> list[str]:
    """What `list` must answer: every row, newest first, filtered here."""
    with raw_db(path) as conn:
        rows = conn.execute("SELECT id, status, owner, tags FROM jobs ORDER BY seq DESC").fetchall()
    found = [job_id for job_id, stored_status, stored_owner, stored_tags in rows
             if (status is None or stored_status == status.value) and (owner is None or stored_owner == owner)
             and set(tags or ()) <= set(json.loads(stored_tags))]
    return found[offset:None if limit is None else offset + limit]


def test_every_listing_is_what_filtering_all_the_jobs_gives(repo: SQLiteRepository, path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from jobcore.repository import sqlite_listing  # (imported here: the plan tests run on any version)

    # given a store of jobs of every status, owner and tags, some of them edited by hand
    _random_store(repo, path, random.Random(7))
    seen = _record_statements(repo, monkeypatch)
    # (COUNT_FLOOR, COUNT_PER_MATCH, SORT_CAP): as shipped, then small enough that 400 jobs
    # take each way: the newest rows looked at and enough (or not), every pending job
    # sorted, and a walk of the table or of an owner's range
    limits = [(sqlite_listing.COUNT_FLOOR, sqlite_listing.COUNT_PER_MATCH, sqlite_listing.SORT_CAP),
              (8, 1, 30), (1, 0, 1000), (1000, 0, 5)]
    for floor, per_match, sort_cap in limits:
        monkeypatch.setattr(sqlite_listing, "COUNT_FLOOR", floor)
        monkeypatch.setattr(sqlite_listing, "COUNT_PER_MATCH", per_match)
        monkeypatch.setattr(sqlite_listing, "SORT_CAP", sort_cap)
        for status in [None, *JobStatus]:
            for owner in [*_OWNERS, "nobody"]:
                for tags in [None, ["t"], ["t", "u"]]:
                    for limit, offset in [(50, 0), (7, 0), (1, 0), (7, 40), (0, 0), (None, 0), (None, 3), (5, 1000)]:
                        # when they are listed, then it is what a scan of them all gives
                        listed = [r.id for r in repo.list_without_args(status=status, owner=owner, tags=tags,
                                                                        limit=limit, offset=offset)]
                        assert listed == _scan(path, status, owner, tags, limit, offset), (
                            status, owner, tags, limit, offset, (floor, per_match, sort_cap))
    # and every way of reading them was taken
    listings = [query for query, _ in seen if query.startswith("SELECT") and "ORDER BY seq DESC" in query]
    pending = [query for query in listings if sql.STATUS_TERMS["pending"] in query or sql.PENDING_TERM in query]
    assert [query for query in pending if sql.PENDING_TERM in query]  # every pending job sorted
    assert [query for query in pending if sql.NEWEST_TERM in query]  # the newest rows looked at
    assert [query for query in pending if sql.PENDING_TERM not in query and sql.NEWEST_TERM not in query
            and sql.BY_OWNER not in query]  # the table walked
    assert [query for query in listings if sql.BY_OWNER in query]
    assert [query for query in listings if sql.BY_STATUS in query]


@pytest.mark.parametrize("status", [JobStatus.PENDING, JobStatus.FAILED])
@pytest.mark.parametrize("limit, offset", [(2**63 - 1, 0), (None, 2**62), (1, 2**59)])
def test_a_limit_or_offset_as_large_as_list_jobs_takes_lists_as_before(
        repo: SQLiteRepository, status: JobStatus, limit: Optional[int], offset: int) -> None:
    # given an owner's pending jobs
    ids = [record.id for record in (make_record(owner="alice") for _ in range(3))]
    repo.insert([make_record(owner="alice", id=job_id) for job_id in ids], NOW)
    # when its jobs of a status are listed with a page past what SQLite's integers hold
    # once the counts that choose the way are sized from it (OverflowError)
    listed = [r.id for r in repo.list_without_args(status=status, owner="alice", limit=limit, offset=offset)]
    # then the listing is what it was: everything from the start, nothing past the end
    expected = sorted(ids) if status is JobStatus.PENDING and offset == 0 else []
    assert sorted(listed) == expected


def _listed_counting_steps(repo: SQLiteRepository, tags: list[str]) -> tuple[list[Any], int]:
    """`repo.list(tags=tags)`, and about how many steps SQLite's machine took for it (a
    progress handler ticks every 100)."""
    conn = repo._db.get()
    ticks = [0]

    def tick() -> int:
        ticks[0] += 1
        return 0

    conn.set_progress_handler(tick, 100)
    try:
        return repo.list(tags=tags, limit=None), ticks[0] * 100
    finally:
        conn.set_progress_handler(None, 100)


@pytest.mark.parametrize("wanted", [["rare"], ["rare", "t1"], ['quo"te'], ["caf\u00e9"], ["back\\slash", "rare"]])
def test_a_tag_filter_passes_over_a_job_without_the_tag_by_its_text_alone(repo: SQLiteRepository,
                                                                         wanted: list[str]) -> None:
    # given 3,000 jobs with other tags, and two with the wanted ones (and others) behind them
    repo.insert([make_record(tags=frozenset({f"t{n % 7}", "common"})) for n in range(3000)], NOW)
    tagged = [make_record(tags=frozenset({*wanted, "t1", "extra"})) for _ in range(2)]
    repo.insert(tagged, NOW)
    # when they are listed by those tags, SQLite's steps counted
    found, steps = _listed_counting_steps(repo, wanted)
    # then the two are found, newest first; and where each tag's JSON is itself between
    # quotes, in under 20 steps a job without one (reading each job's tags as JSON took
    # about 60: 330-450 ms for a tag no job has among 300,000 tagged ones); a tag JSON
    # escapes is matched by reading the JSON alone
    assert [r.id for r in found] == [tagged[1].id, tagged[0].id]
    plain = all('"' not in tag and "\\" not in tag and tag.isascii() for tag in wanted)
    if plain:
        assert steps < 3000 * 20, steps


def test_a_tag_filter_finds_a_row_whose_json_another_program_wrote_with_escapes(repo: SQLiteRepository) -> None:
    # given a job whose tags another program wrote, escaping characters jobcore writes as
    # they are (PHP's json_encode writes "a\/b"), beside jobs with other tags
    repo.insert([make_record(tags=frozenset({"other"})) for _ in range(5)], NOW)
    escaped = make_record(tags=frozenset({"placeholder"}))
    repo.insert([escaped], NOW)
    with repo._db.write() as conn:
        conn.execute("UPDATE jobs SET tags = ? WHERE id = ?", ('["a\\/b", "\\u0061bc"]', escaped.id))
    assert repo.get(escaped.id).tags == frozenset({"a/b", "abc"})
    # when listed by those tags, then it is found, as its tags read (the text of a tag was
    # looked for alone, and such a row was left out)
    assert [r.id for r in repo.list(tags=["a/b"], limit=None)] == [escaped.id]
    assert [r.id for r in repo.list(tags=["abc", "a/b"], limit=None)] == [escaped.id]
    assert repo.list(tags=["other", "abc"], limit=None) == []


def test_a_tag_filter_passes_over_a_tagless_job_by_its_text_alone(repo: SQLiteRepository) -> None:
    # given 3,000 jobs with no tag and one tagged job behind them
    repo.insert([make_record() for _ in range(3000)], NOW)
    tagged = make_record(tags=frozenset({"rare"}))
    repo.insert([tagged], NOW)
    # when they are listed by that tag, SQLite's steps counted
    found, steps = _listed_counting_steps(repo, ["rare"])
    # then only the tagged one is found, in under 10 steps a tagless job (counting the
    # tags of each, none, took 23: 80% of such a listing's time, 150 ms at 300,000 jobs)
    assert [r.id for r in found] == [tagged.id]
    assert steps < 3000 * 10, steps


def test_a_table_of_jobs_reads_no_result_and_lists_a_job_whose_result_cannot_be_decoded(tmp_path: Path) -> None:
    # The dashboard's job table (every second), its metrics and `jobcore list` decoded each
    # job's whole result and dropped it: 1.2-2.6 s of CPU a refresh with results of 0.9 MB.
    from jobcore import Job, JobManager

    path = str(tmp_path / "jobs.db")
    with JobManager(path) as manager:
        manager.register_function("big", lambda: {"rows": list(range(1000))})
        job_id = manager.enqueue(Job(function_name="big", metadata={"m": 1}))
        assert manager.wait(job_id, timeout=10).status is JobStatus.COMPLETED
    conn = sqlite3.connect(path)
    conn.execute("UPDATE jobs SET result = '{not json' WHERE id = ?", (job_id,))  # read, it fails to decode
    conn.commit()
    conn.close()
    manager = JobManager(path)
    try:
        [summary] = manager.list_job_summaries()
        [full] = manager.list_jobs()
    finally:
        manager.close()
    assert (summary.job_id, summary.status, summary.result, summary.metadata) == (job_id, JobStatus.COMPLETED, None, {})
    assert summary.error is None  # its result was not read
    assert full.error_type == "CorruptJob" and "cannot be decoded" in (full.error or "")
