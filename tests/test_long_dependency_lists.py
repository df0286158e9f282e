"""A job's long list of dependencies is kept out of its row on SQLite (sqlite_schema's
job_dep_lists): each completion of a dependency rewrites the dependent's row, and SQLite
reads every byte of a row it rewrites, so a fan-in of 100,000 jobs read 3.4 MB at each
completion. The row stays small; every read still gives the whole list, in order."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any, Iterator

import pytest

from jobcore import Job, JobManager, JobStatus
from jobcore.repository import SQLiteRepository
from jobcore.repository import sqlite_sql as read_sql
from jobcore.repository import sqlite_transition_sql as sql
from jobcore.repository.columns import JOB_COLUMNS
from jobcore.repository.sqlite_rows import record_from_row
from jobcore.repository.sqlite_schema import SCHEMA_VERSION
from jobcore.testing.contract import NOW
from jobcore.testing.contract.support import _add, _claim, _complete, _fail, _get, _ids_of
from raw_db import raw_db


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[SQLiteRepository]:
    repository = SQLiteRepository(str(tmp_path / "jobs.db"))
    yield repository
    repository.close()


def _completed(repo: SQLiteRepository, count: int, now: float = NOW) -> list[str]:
    ids = [_add(repo).id for _ in range(count)]
    for job_id in ids:
        _complete(repo, job_id, now=now)
    return ids


def _raw(repo: SQLiteRepository, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with raw_db(repo.path) as conn:
        return conn.execute(query, params).fetchall()


def _stored_depends_on(repo: SQLiteRepository, job_id: str) -> str:
    return str(_raw(repo, "SELECT depends_on FROM jobs WHERE id = ?", job_id)[0][0])


def test_a_long_list_is_kept_out_of_the_row_and_read_whole_in_order(repo: SQLiteRepository) -> None:
    # given a job waiting on one job and 60 completed ones (about 2 KB of ids)
    done = _completed(repo, 60)
    waiting_on = _add(repo)
    deps = (*done[:30], waiting_on.id, *done[30:])
    dependent = _add(repo, depends_on=deps)
    # then its row holds no list, and every read gives the list as given
    assert _stored_depends_on(repo, dependent.id) == sql.DEPENDS_ON_APART
    assert _raw(repo, "SELECT depends_on FROM job_dep_lists WHERE job_id = ?", dependent.id) == [(json.dumps(deps),)]
    stored = _get(repo, dependent.id)
    assert (stored.depends_on, stored.blocked, stored.decode_error) == (deps, 1, None)
    assert [r.depends_on for r in repo.list() if r.id == dependent.id] == [deps]
    assert [r.depends_on for r in repo.list_without_args() if r.id == dependent.id] == [deps]
    # when its last dependency completes, it is released, and claimed whole
    assert _ids_of(_complete(repo, waiting_on.id, now=NOW + 1).released) == [dependent.id]
    claimed = _claim(repo, dependent.id, now=NOW + 2)
    assert (claimed.depends_on, claimed.decode_error) == (deps, None)
    assert _stored_depends_on(repo, dependent.id) == sql.DEPENDS_ON_APART


def test_a_list_up_to_the_limit_stays_in_the_row(repo: SQLiteRepository) -> None:
    done = _completed(repo, 29)
    assert len(json.dumps(done[:28])) <= sql.LONG_DEPENDS_ON < len(json.dumps(done))
    short = _add(repo, depends_on=tuple(done[:28]))
    long = _add(repo, depends_on=tuple(done))
    assert _stored_depends_on(repo, short.id) == json.dumps(done[:28])
    assert _stored_depends_on(repo, long.id) == sql.DEPENDS_ON_APART
    assert (_get(repo, short.id).depends_on, _get(repo, long.id).depends_on) == (tuple(done[:28]), tuple(done))


def test_a_list_whose_json_is_the_marker_reads_as_itself(repo: SQLiteRepository) -> None:
    named = _add(repo, id=json.loads(sql.DEPENDS_ON_APART)[0])  # a job whose id is the marker's
    dependent = _add(repo, depends_on=(named.id,))
    assert _get(repo, dependent.id).depends_on == (named.id,)
    assert _ids_of(_complete(repo, named.id).released) == [dependent.id]


def test_a_row_whose_list_is_kept_apart_decodes_as_a_jobcore_of_version_6_reads_it(
        repo: SQLiteRepository) -> None:
    # A process of the previous jobcore, still running beside this one, reads the row's own
    # column (its COLUMNS are JOB_COLUMNS): a list of one id, not a corrupt row it would fail.
    dependent = _add(repo, depends_on=tuple(_completed(repo, 40)))
    row = _raw(repo, f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", dependent.id)[0]
    record = record_from_row(row)
    assert (record.decode_error, record.depends_on) == (None, tuple(json.loads(sql.DEPENDS_ON_APART)))


def test_requeue_reads_a_long_list_to_refuse_a_job_whose_dependency_was_deleted(repo: SQLiteRepository) -> None:
    # given a job cancelled while it waited on a parent and on 40 jobs completed later; the
    # parent failed and was deleted since (cleaned up), the 40 were not
    parent = _add(repo)
    later = [_add(repo).id for _ in range(40)]
    child = _add(repo, depends_on=(parent.id, *later))
    assert _stored_depends_on(repo, child.id) == sql.DEPENDS_ON_APART
    repo.cancel(child.id, NOW + 10, "not needed")
    _fail(repo, parent.id, now=NOW + 1)
    for job_id in later:
        _complete(repo, job_id, now=NOW + 20)
    assert repo.delete_finished(NOW + 5) == 1 and repo.get(parent.id) is None
    # then it is not re-queued: whether its parent completed is unknown
    assert repo.requeue(child.id, NOW + 30) is None
    assert _get(repo, child.id).status is JobStatus.CANCELLED


def test_requeue_of_a_long_list_counts_the_dependencies_still_unfinished(repo: SQLiteRepository) -> None:
    done = _completed(repo, 40)
    waiting_on = _add(repo)
    dependent = _add(repo, depends_on=(*done, waiting_on.id))
    repo.cancel(dependent.id, NOW, "no")
    assert repo.requeue(dependent.id, NOW + 1) is not None
    assert _get(repo, dependent.id).blocked == 1
    assert _ids_of(_complete(repo, waiting_on.id, now=NOW + 2).released) == [dependent.id]


def test_deleting_a_job_deletes_its_long_list(repo: SQLiteRepository) -> None:
    done = _completed(repo, 40)
    dependent = _add(repo, depends_on=tuple(done))
    _complete(repo, dependent.id, now=NOW + 1)
    assert _raw(repo, "SELECT count(*) FROM job_dep_lists") == [(1,)]
    assert repo.delete_finished(NOW + 5) == 41
    assert _raw(repo, "SELECT count(*) FROM job_dep_lists") == [(0,)]


def test_a_list_whose_job_an_older_version_deleted_goes_at_the_next_cleanup(repo: SQLiteRepository) -> None:
    # given two jobs with long lists, one of which a jobcore of version 6 (which knows
    # nothing of job_dep_lists) deleted, leaving its list behind
    done = _completed(repo, 40)
    kept, gone = _add(repo, depends_on=tuple(done)), _add(repo, depends_on=tuple(done))
    _raw(repo, "DELETE FROM jobs WHERE id = ?", gone.id)
    # when a cleanup runs that deletes nothing of those
    repo.delete_finished(NOW - 5)
    # then only the list left behind is gone
    assert _raw(repo, "SELECT job_id FROM job_dep_lists") == [(kept.id,)]
    assert _get(repo, kept.id).depends_on == tuple(done)


def test_a_list_kept_apart_and_gone_fails_that_job_alone_as_corrupt(repo: SQLiteRepository) -> None:
    done = _completed(repo, 40)
    dependent, other = _add(repo, depends_on=tuple(done)), _add(repo)
    _raw(repo, "DELETE FROM job_dep_lists")  # a hand edit
    assert _get(repo, dependent.id).decode_error is not None
    assert _get(repo, other.id).decode_error is None


@pytest.mark.parametrize("query", ["SELECT_JOB", "SELECT_JOB_WITHOUT_ARGS", "CLAIM", "SELECT_JOBS_BY_SEQS",
                                   "REQUEUE", "UNUSABLE_BLOCKED"])
def test_a_list_kept_apart_is_found_by_its_key(repo: SQLiteRepository, query: str) -> None:
    statement = getattr(sql, query, None) or getattr(read_sql, query)
    with raw_db(repo.path) as conn:
        plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + statement, (None,) * statement.count("?"))]
    assert any(re.match(r"^SEARCH l USING INDEX sqlite_autoindex_job_dep_lists", step) for step in plan), plan
    assert not [step for step in plan if re.match(r"^SCAN (TABLE )?l\b", step)], plan


def test_a_version_6_database_is_migrated_and_keeps_its_lists_in_rows(tmp_path: Path) -> None:
    # given a file of schema version 6, whose rows hold their lists, however long
    path = str(tmp_path / "old.db")
    repo = SQLiteRepository(path)
    done = _completed(repo, 40)
    old = _add(repo)
    repo.close()
    raw = sqlite3.connect(path)
    raw.execute("DROP TABLE job_dep_lists")
    raw.execute("UPDATE jobs SET depends_on = ? WHERE id = ?", (json.dumps(done), old.id))
    raw.execute("UPDATE jobcore_meta SET value = '6' WHERE key = 'schema_version'")
    raw.commit()
    raw.close()
    # when it is opened, then it is migrated, the old row reads whole, and a new long list goes apart
    repo = SQLiteRepository(path)
    try:
        assert _raw(repo, "SELECT value FROM jobcore_meta WHERE key = 'schema_version'") == [(str(SCHEMA_VERSION),)]
        assert _get(repo, old.id).depends_on == tuple(done)
        new = _add(repo, depends_on=tuple(done))
        assert _stored_depends_on(repo, new.id) == sql.DEPENDS_ON_APART
        assert _get(repo, new.id).depends_on == tuple(done)
    finally:
        repo.close()


def test_a_version_6_row_whose_list_is_the_kept_apart_text_reads_the_same_after_the_migration(
        tmp_path: Path) -> None:
    # given a file of schema version 6 holding a job that depends on one job whose id is
    # "@job_dep_lists" (a legal id): its row's list is the text version 7 reads as "kept
    # apart", which version 6 never wrote apart
    path = str(tmp_path / "old.db")
    repo = SQLiteRepository(path)
    _add(repo, id="@job_dep_lists")
    child = _add(repo)
    repo.close()
    raw = sqlite3.connect(path)
    raw.execute("DROP TABLE job_dep_lists")
    raw.execute("UPDATE jobs SET depends_on = ? WHERE id = ?", (sql.DEPENDS_ON_APART, child.id))
    raw.execute("UPDATE jobcore_meta SET value = '6' WHERE key = 'schema_version'")
    raw.commit()
    raw.close()
    # when it is opened (migrated)
    repo = SQLiteRepository(path)
    try:
        # then the job still depends on that one job (it read as corrupt: no list kept apart)
        got = _get(repo, child.id)
        assert got.decode_error is None and got.depends_on == ("@job_dep_lists",)
    finally:
        repo.close()


def test_a_manager_runs_a_fan_in_kept_apart_after_every_dependency(tmp_path: Path) -> None:
    manager = JobManager(SQLiteRepository(str(tmp_path / "jobs.db")), max_workers=4)
    parts: list[str] = []
    seen: list[int] = []
    manager.register_function("part", lambda x: x)
    manager.register_function("gather", lambda: seen.append(
        sum(manager.poll(part).status is JobStatus.COMPLETED for part in parts)))
    try:
        parts += manager.enqueue_many([Job(function_name="part", args=(i,)) for i in range(200)])
        gather = manager.enqueue(Job(function_name="gather", depends_on=parts))
        manager.start()
        assert manager.wait(gather, timeout=60).status is JobStatus.COMPLETED
        assert seen == [200]
    finally:
        manager.close()
