"""The short INSERTs SQLite uses for jobs whose optional fields hold their defaults (and the
default INSERT, for those whose settings are the defaults too) store exactly the row the
full INSERT would."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Iterator

import pytest

from jobcore.models import Job, JobStatus
from jobcore.records import record_for
from jobcore.repository import SQLiteRepository
from jobcore.repository import sqlite_schema as schema
from jobcore.repository import sqlite_transition_sql as sql
from jobcore.repository.sqlite_rows import has_default_settings, is_plain, row_params
from jobcore.testing.contract import LEASE, NOW, make_record
from raw_db import raw_db


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[SQLiteRepository]:
    repository = SQLiteRepository(tmp_path / "jobs.db")
    yield repository
    repository.close()


def _row(repo: SQLiteRepository, job_id: str) -> dict[str, Any]:
    """Every column of a stored job but the ones that tell rows apart."""
    with raw_db(repo.path) as conn:
        conn.row_factory = sqlite3.Row
        row = dict(conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())
    del row["id"], row["seq"]
    return row


def _stored_by_full_insert(repo: SQLiteRepository, record: Any, claimed: bool = False) -> dict[str, Any]:
    """The row the full INSERT stores for a copy of `record` under another id."""
    twin = record.copy()
    twin.id = make_record().id
    params = row_params(twin, NOW, JobStatus.RUNNING if claimed else twin.status, 0, None, None)
    with raw_db(repo.path) as conn:
        if claimed:
            conn.execute(sql.INSERT_CLAIMED_JOB, (*params, NOW, "w1", NOW + LEASE))
        else:
            conn.execute(sql.INSERT_JOB, params)
    return _row(repo, twin.id)


PLAIN = {"args": (1, "two"), "kwargs": {"k": [3]}, "priority": 7, "timeout": 2.5, "max_retries": 0,
         "retry_delay": 0.25, "retry_backoff": 3.0, "retry_jitter": False, "isolation": "process"}


# Settings a record may hold that compare equal to the defaults without being them: stored
# by the default INSERT too, as the bound values would store them (a REAL column keeps 1 as
# 1.0, an INTEGER one 3.0 as 3).
DEFAULTS_OF_OTHER_TYPES = {"retry_delay": 1, "retry_backoff": 2, "max_retries": 3.0}


def test_a_job_made_with_the_default_settings_takes_the_default_insert() -> None:
    # what the default INSERT writes into its statement is what a Job holds unless told
    assert has_default_settings(record_for(Job(function_name="tests.task"), NOW))
    assert has_default_settings(make_record()) and has_default_settings(make_record(**DEFAULTS_OF_OTHER_TYPES))
    for field, value in PLAIN.items():
        if field not in ("args", "kwargs", "priority"):
            assert not has_default_settings(make_record(**{field: value})), field
    assert not has_default_settings(make_record(timeout=60.0))


@pytest.mark.parametrize("settings", [{}, DEFAULTS_OF_OTHER_TYPES], ids=["defaults", "equal-defaults"])
def test_a_job_with_the_default_settings_is_stored_as_the_full_insert_would(repo: SQLiteRepository,
                                                                          settings: dict[str, Any]) -> None:
    alone, handed, *batch = [make_record(args=(1, "two"), priority=7, **settings) for _ in range(5)]
    repo.insert([alone], NOW)
    job_id, claimed = repo.insert_claimed(handed, "w1", NOW, NOW + LEASE)
    assert job_id == handed.id and claimed is not None and claimed.max_retries == 3
    repo.insert(batch, NOW)  # every job of the batch with the defaults: one default INSERT
    assert _row(repo, alone.id) == _stored_by_full_insert(repo, alone)
    assert _row(repo, handed.id) == _stored_by_full_insert(repo, handed, claimed=True)
    for record in batch:
        assert _row(repo, record.id) == _stored_by_full_insert(repo, record)
        assert record.seq == _seqs(repo)[record.id]


def test_a_plain_job_alone_is_stored_as_the_full_insert_would(repo: SQLiteRepository) -> None:
    record = make_record(**PLAIN)
    assert is_plain(record)
    repo.insert([record], NOW)
    assert _row(repo, record.id) == _stored_by_full_insert(repo, record)


def test_a_batch_of_plain_jobs_is_stored_as_the_full_insert_would(repo: SQLiteRepository) -> None:
    records = [make_record(**PLAIN), make_record()]
    repo.insert(records, NOW)
    for record in records:
        assert _row(repo, record.id) == _stored_by_full_insert(repo, record)


def test_a_plain_job_handed_off_is_stored_as_the_full_insert_would(repo: SQLiteRepository) -> None:
    record = make_record(**PLAIN)
    job_id, claimed = repo.insert_claimed(record, "w1", NOW, NOW + LEASE)
    assert job_id == record.id and claimed is not None
    assert _row(repo, record.id) == _stored_by_full_insert(repo, record, claimed=True)


@pytest.mark.parametrize("field, value", [
    ("tags", frozenset({"a"})), ("metadata", {"m": 1}), ("owner", "ann"), ("memory_limit", 1 << 20),
    ("scheduled_at", NOW + 60), ("run_at", NOW + 60),
])
def test_a_job_with_an_optional_field_set_takes_the_full_insert(repo: SQLiteRepository, field: str,
                                                                value: Any) -> None:
    record = make_record(**{field: value})
    assert not is_plain(record)
    plain = make_record()
    repo.insert([record, plain], NOW)  # one batch: the plain one follows the other's INSERT
    stored = repo.get(record.id)
    assert stored is not None and getattr(stored, field) == value
    assert _row(repo, plain.id) == _stored_by_full_insert(repo, plain)


def _seqs(repo: SQLiteRepository) -> dict[str, int]:
    with raw_db(repo.path) as conn:
        return dict(conn.execute("SELECT id, seq FROM jobs"))


@pytest.mark.parametrize("position", [0, 299, 499])
def test_a_batch_reusing_a_stored_id_names_it_and_stores_nothing(repo: SQLiteRepository,
                                                                 position: int) -> None:
    # given a stored job, and a batch of 500 plain jobs one of which reuses its id
    existing = make_record(name="original")
    repo.insert([existing], NOW)
    batch = [make_record() for _ in range(500)]
    batch[position] = make_record(id=existing.id, name="impostor")
    # when the batch is inserted (one statement for all of them)
    # then the error names that id, and no job of the batch is stored
    with pytest.raises(ValueError, match=existing.id):
        repo.insert(batch, NOW)
    assert repo.count_by_status()[JobStatus.PENDING] == 1
    assert repo.get(existing.id).name == "original"  # type: ignore[union-attr]
    # and the next batch goes in whole
    assert repo.insert([make_record() for _ in range(3)], NOW + 1) and repo.count_by_status()[JobStatus.PENDING] == 4


def test_a_new_file_keeps_no_sqlite_sequence(repo: SQLiteRepository) -> None:
    # AUTOINCREMENT would read and write sqlite_sequence in every INSERT (a page a commit)
    records = [make_record() for _ in range(3)]
    repo.insert(records[:1], NOW)
    repo.insert(records[1:], NOW)
    assert [r.seq for r in records] == [1, 2, 3] == [_seqs(repo)[r.id] for r in records]
    with raw_db(repo.path) as conn:
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'sqlite_sequence'").fetchall() == []


def test_a_file_made_with_autoincrement_is_used_as_it_is(tmp_path: Path) -> None:
    # given a file whose jobs table was made by an earlier jobcore, with AUTOINCREMENT
    path = tmp_path / "old.db"
    old_schema = schema.CREATE_SCHEMA.replace("seq              INTEGER PRIMARY KEY,",
                                           "seq              INTEGER PRIMARY KEY AUTOINCREMENT,")
    assert old_schema != schema.CREATE_SCHEMA
    with raw_db(path) as conn:
        conn.executescript(old_schema)
        conn.execute(schema.CREATE_META)
        conn.execute(schema.SET_SCHEMA_VERSION, (str(schema.SCHEMA_VERSION),))
    repo = SQLiteRepository(path)
    try:
        older, newest = make_record(), make_record()
        repo.insert([older], NOW)
        repo.insert([newest], NOW)
        assert repo.claim(newest.id, "w1", NOW, NOW + LEASE) is not None
        repo.delete_finished(None)  # nothing finished yet: both stay
        assert set(_seqs(repo)) == {older.id, newest.id}
        # when the newest finishes and is deleted, and a batch and a single job follow
        assert repo.complete(newest.id, "w1", 1, None, NOW + 1) is not None
        assert repo.delete_finished(None) == 1
        batch, single = [make_record(), make_record()], make_record()
        repo.insert(batch, NOW + 2)
        repo.insert([single], NOW + 3)
        # then every seq is the one stored, after the deleted one's (sqlite_sequence kept it)
        stored = _seqs(repo)
        assert [r.seq for r in (*batch, single)] == [stored[r.id] for r in (*batch, single)] == [3, 4, 5]
        assert [e.job_id for e in repo.ready(None, 10)] == [older.id, batch[0].id, batch[1].id, single.id]
    finally:
        repo.close()
