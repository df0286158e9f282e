"""How `SQLiteRepository.apply` batches a worker's completions: what each settlement
reports, how dependents are released, and which indexes the batch statements use.

The contract suite checks `apply` settlement by settlement; these tests aim at what
batching could get wrong: positions of refused settlements, a dependent reached by
several completions of one batch, the order of completions and failures, and results
stored exactly. No timing here: the speed is measured by hand, not asserted.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import pytest

from jobcore.models import JobStatus
from jobcore.repository import SQLiteRepository
from jobcore.repository import sqlite_transition_sql as sql
from jobcore.repository.base import Cascade, JobRecord, JobRepository, Settlement
from jobcore.testing.contract import LEASE, NOW, make_record
from raw_db import raw_db


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[SQLiteRepository]:
    repository = SQLiteRepository(tmp_path / "jobs.db")
    yield repository
    repository.close()


def _add(repo: JobRepository, **overrides: Any) -> JobRecord:
    record = make_record(**overrides)
    assert repo.insert([record], NOW) == [record.id]
    return record


def _running(repo: JobRepository, worker: str = "w1", **overrides: Any) -> JobRecord:
    """A job claimed by `worker` (attempt 1)."""
    record = _add(repo, **overrides)
    assert repo.claim(record.id, worker, NOW, NOW + LEASE) is not None
    return record


def _done(job: JobRecord, result: Any = None, note: Optional[str] = None, attempt: int = 1) -> Settlement:
    return Settlement("complete", job.id, attempt, result=result, note=note)


def _apply(repo: JobRepository, settlements: Sequence[Settlement]) -> list[Optional[Cascade]]:
    cascades, claimed = repo.apply(settlements, [], "w1", NOW + 1, NOW + 1 + LEASE)
    assert claimed == []
    return cascades


def _released(cascade: Optional[Cascade]) -> list[str]:
    assert cascade is not None
    return sorted(entry.job_id for entry in cascade.released)


def _get(repo: JobRepository, job_id: str) -> JobRecord:
    record = repo.get(job_id)
    assert record is not None
    return record


# -- settlements in one batch ------------------------------------------------------------
def test_a_completion_no_longer_held_reports_none_in_its_place(repo: SQLiteRepository) -> None:
    # given w1 holding three jobs, a job w2 holds, and a job w1 already completed
    first, second, third = (_running(repo) for _ in range(3))
    theirs = _running(repo, worker="w2")
    finished = _running(repo)
    assert _apply(repo, [_done(finished, result="earlier")]) == [Cascade()]
    # when w1 completes them all in one batch, one of them on a stale attempt
    cascades = _apply(repo, [_done(first, result=1), _done(theirs, result="not mine"),
                             _done(second, result=2, attempt=2), _done(finished, result="again"),
                             _done(third, result=3)])
    # then only the held ones apply, and each refusal is None at its own position
    assert cascades == [Cascade(), None, None, None, Cascade()]
    assert [(_get(repo, j.id).status, _get(repo, j.id).result) for j in (first, second, third)] == [
        (JobStatus.COMPLETED, 1), (JobStatus.RUNNING, None), (JobStatus.COMPLETED, 3)]
    assert (_get(repo, theirs.id).status, _get(repo, theirs.id).worker_id) == (JobStatus.RUNNING, "w2")
    assert _get(repo, finished.id).result == "earlier"


def test_a_job_named_twice_in_one_batch_completes_once(repo: SQLiteRepository) -> None:
    job = _running(repo)
    dependent = _add(repo, depends_on=(job.id,))
    cascades = _apply(repo, [_done(job, result="first"), _done(job, result="second")])
    assert _released(cascades[0]) == [dependent.id] and cascades[1] is None
    assert _get(repo, job.id).result == "first"
    assert _get(repo, dependent.id).blocked == 0


def test_notes_are_logged_only_for_completions_that_applied(repo: SQLiteRepository) -> None:
    held, stale = _running(repo), _running(repo)
    cascades = _apply(repo, [_done(held, note="attempt 1 completed"),
                             _done(stale, note="never logged", attempt=3)])
    assert cascades == [Cascade(), None]
    assert repo.logs(held.id) == [(NOW + 1, "info", "attempt 1 completed")]
    assert repo.logs(stale.id) == []


# -- releasing dependents ----------------------------------------------------------------
@pytest.mark.parametrize("reverse", [False, True], ids=["a-then-b", "b-then-a"])
def test_a_dependent_of_two_completions_is_released_once_by_the_later(repo: SQLiteRepository,
                                                                      reverse: bool) -> None:
    # given a dependent of two running jobs
    a, b = _running(repo), _running(repo)
    both = _add(repo, depends_on=(a.id, b.id))
    order = [b, a] if reverse else [a, b]
    # when both complete in one batch
    cascades = _apply(repo, [_done(job) for job in order])
    # then the later completion releases it, once, with no block left
    assert [_released(c) for c in cascades] == [[], [both.id]]
    stored = _get(repo, both.id)
    assert (stored.status, stored.blocked) == (JobStatus.PENDING, 0)
    assert [entry.job_id for entry in repo.ready(None, 10)] == [both.id]


def test_a_dependent_counts_each_completed_dependency_of_the_batch(repo: SQLiteRepository) -> None:
    # given a dependent of three jobs, and a fan-in of many jobs into one dependent
    a, b, c = _running(repo), _running(repo), _running(repo)
    three = _add(repo, depends_on=(a.id, b.id, c.id))
    many = [_running(repo) for _ in range(40)]
    fan_in = _add(repo, depends_on=tuple(job.id for job in many))
    # when two of the three and all of the many complete in one batch
    cascades = _apply(repo, [_done(a), _done(b)] + [_done(job) for job in many])
    # then the first keeps one block and is released by nobody; the fan-in is released once
    assert _get(repo, three.id).blocked == 1
    assert [_released(c) for c in cascades] == [[]] * 41 + [[fan_in.id]]
    assert _get(repo, fan_in.id).blocked == 0
    # and the last dependency releases the first on its own
    assert [_released(c) for c in _apply(repo, [_done(c)])] == [[three.id]]


def test_a_job_with_dependents_beside_jobs_without(repo: SQLiteRepository) -> None:
    lonely, parent, other = _running(repo), _running(repo), _running(repo)
    child = _add(repo, depends_on=(parent.id,))
    timed = _add(repo, depends_on=(parent.id,), status=JobStatus.SCHEDULED, run_at=NOW + 60)
    cascades = _apply(repo, [_done(lonely), _done(parent), _done(other)])
    assert [_released(c) for c in cascades] == [[], sorted([child.id, timed.id]), []]
    assert cascades[1] is not None
    entries = {entry.job_id: entry for entry in cascades[1].released}
    assert entries[timed.id].run_at == NOW + 60 and entries[child.id].run_at is None


def test_a_mixed_batch_settles_as_one_by_one_would(repository: JobRepository) -> None:
    # Runs on SQLite and on the in-memory backend, which settles one by one: same answers.
    # given w1 holding a, b, c and f; w2 holding x; and their dependents
    a, b, c, f = (_running(repository) for _ in range(4))
    x = _running(repository, worker="w2")
    only_a = _add(repository, depends_on=(a.id,))
    a_and_b = _add(repository, depends_on=(a.id, b.id))
    f_and_c = _add(repository, depends_on=(f.id, c.id))
    on_x = _add(repository, depends_on=(x.id,))
    never = _add(repository)
    a_b_never = _add(repository, depends_on=(a.id, b.id, never.id))
    # when w1 completes a and b, x (not its own), fails f, then completes c and a again
    cascades = _apply(repository, [
        _done(a, result={"a": 1}, note="a done"), _done(b), _done(x),
        Settlement("fail", f.id, 1, error="bad", error_type="ValueError"),
        _done(c), _done(a, result="again")])
    # then each settlement reports as its single-job method would
    assert [None if cc is None else (_released(cc), sorted(cc.cancelled)) for cc in cascades] == [
        ([only_a.id], []), ([a_and_b.id], []), None, ([], [f_and_c.id]), ([], []), None]
    blocked = {job.id: _get(repository, job.id).blocked for job in (only_a, a_and_b, f_and_c, on_x, a_b_never)}
    # f_and_c was cancelled before c completed: c's release did not touch it
    assert blocked == {only_a.id: 0, a_and_b.id: 0, f_and_c.id: 2, on_x.id: 1, a_b_never.id: 1}
    assert _get(repository, f_and_c.id).status is JobStatus.CANCELLED
    assert _get(repository, a.id).result == {"a": 1}
    assert repository.logs(a.id) == [(NOW + 1, "info", "a done")]


# -- results -------------------------------------------------------------------------------
@pytest.mark.parametrize("result", [
    None, "", 0, -1.5, True, [], {},
    "quotes \" and 'single' and back\\slash and \\\" both",
    "unicode: héllo wörld ∑ 日本語 😀 \u2028 \u0000 \t\n",
    {"nested": {"list": [1, 2.5, None, "x", {"deep": ["\"", "\\"]}], "empty": {}}, "ü": "ß"},
    '{"looks": "like json"}',
    "x" * 5000,
], ids=lambda value: type(value).__name__ + str(len(str(value))))
def test_results_round_trip_exactly(repo: SQLiteRepository, result: Any) -> None:
    jobs = [_running(repo) for _ in range(3)]
    _apply(repo, [_done(jobs[0], result="before"), _done(jobs[1], result=result),
                  _done(jobs[2], result=[result])])
    assert [_get(repo, job.id).result for job in jobs] == ["before", result, [result]]


def test_a_result_encoded_by_the_engine_is_stored_as_given(repo: SQLiteRepository) -> None:
    # given completions whose results the engine already encoded (one of them not)
    jobs = [_running(repo) for _ in range(2)]
    encoded = Settlement("complete", jobs[0].id, 1, result=(1, 2), encoded_result='[1,2]')
    # when they are applied
    _apply(repo, [encoded, _done(jobs[1], result=(3, 4))])
    # then the encoded text is what was stored, and the other was encoded here
    with raw_db(repo.path) as conn:
        stored = dict(conn.execute("SELECT id, result FROM jobs").fetchall())
    assert (stored[jobs[0].id], stored[jobs[1].id]) == ("[1,2]", "[3,4]")


# -- query plans ---------------------------------------------------------------------------
def _plan(repo: SQLiteRepository, query: str) -> list[str]:
    with raw_db(repo.path) as conn:
        rows = conn.execute("EXPLAIN QUERY PLAN " + query, (None,) * query.count("?")).fetchall()
    return [row[3] for row in rows]


@pytest.mark.parametrize("query", ["COMPLETE", "ANY_DEPENDENTS", "RELEASE_DEPENDENTS"])
def test_the_completion_statements_look_jobs_up_by_id(repo: SQLiteRepository, query: str) -> None:
    plan = _plan(repo, getattr(sql, query))
    jobs_steps = [step for step in plan if re.match(r"^(SEARCH|SCAN) (TABLE )?jobs\b", step)]
    assert all("(id=?)" in step for step in jobs_steps), plan
    # job_deps (and its alias d) is always searched by an index, never walked whole
    assert not [step for step in plan if re.match(r"^SCAN (TABLE )?(job_deps|d)\b", step)], plan
    assert jobs_steps or query == "ANY_DEPENDENTS", plan


def test_releasing_looks_up_each_dependency_pair_whole(repo: SQLiteRepository) -> None:
    # Both per-dependent subqueries (how many blocks to remove, which completion released
    # it) must find the (job_id, depends_on) pair, not walk every dependent of a parent.
    plan = _plan(repo, sql.RELEASE_DEPENDENTS)
    assert len([step for step in plan if "job_deps_job (job_id=? AND depends_on=?)" in step]) == 2, plan
