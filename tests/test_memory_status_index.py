"""`MemoryRepository` keeps its rows by status, so that reading one status, counting, and
looking for work cost what that status holds, not the whole store (an idle manager looks
for work 20 times a second: scanning 100,000 finished rows each time kept a core busy).

Checked here: after any sequence of operations the index partitions the store exactly by
status and every read answers as a scan of the whole store would; and the reads a manager
makes while idle do not touch the whole store.
"""

from __future__ import annotations

import random
from typing import Any, Optional

import pytest

from jobcore import JobStatus, MemoryRepository
from jobcore.repository import memory, memory_listing
from jobcore.repository.base import JobRecord, newest_failures
from jobcore.repository.values import failed_key
from jobcore.testing.contract.support import LEASE, NOW, make_record


def _scan_list(repo: MemoryRepository, status: Optional[JobStatus], owner: Optional[str],
               tags: frozenset[str], limit: Optional[int], offset: int) -> list[str]:
    """What `list` must answer: every row, filtered, newest (highest seq) first."""
    rows = [r for r in repo._jobs.values()
            if (status is None or r.status is status) and (owner is None or r.owner == owner) and tags <= r.tags]
    rows.sort(key=lambda r: r.seq, reverse=True)
    end = None if limit is None else offset + limit
    return [r.id for r in rows[offset:end]]


def _check(repo: MemoryRepository, rng: random.Random) -> None:
    rows = repo._jobs
    indexed = {job_id: status for status, by_id in repo._by_status.items() for job_id in by_id}
    assert indexed == {job_id: row.status for job_id, row in rows.items()}
    assert all(repo._by_status[row.status][job_id] is row for job_id, row in rows.items())
    assert [r.seq for r in rows.values()] == sorted(r.seq for r in rows.values())  # what `list` relies on
    expected_counts = {status: sum(1 for r in rows.values() if r.status is status) for status in JobStatus}
    assert repo.count_by_status() == expected_counts
    ready = [r for r in rows.values() if r.status is JobStatus.PENDING and r.blocked == 0 and not r.is_schedule]
    ready.sort(key=lambda r: (-r.priority, r.seq))
    assert [e.job_id for e in repo.ready(None, 5)] == [r.id for r in ready[:5]]
    due = [r for r in rows.values() if r.status is JobStatus.SCHEDULED and r.blocked == 0]
    due.sort(key=lambda r: (r.run_at or 0.0, r.seq))
    assert [e.job_id for e in repo.scheduled(None, 5)] == [r.id for r in due[:5]]
    failed = [r for r in rows.values() if r.status is JobStatus.FAILED]
    for limit in (None, 0, 1, 3):
        assert [r.id for r in repo.list_dead_letters(limit)] == [r.id for r in newest_failures(failed, limit)]
    assert repo._failed_order == sorted(failed_key(r) for r in failed)
    owned = {job_id: owner for owner, by_id in repo._by_owner.items() for job_id in by_id}
    assert owned == {job_id: row.owner for job_id, row in rows.items() if row.owner is not None}
    assert all(list(by_id) == sorted(by_id, key=lambda i: rows[i].seq) for by_id in repo._by_owner.values())
    for _ in range(4):
        status = rng.choice([None, *JobStatus])
        owner = rng.choice([None, None, "ann", "bob"])
        tags = frozenset(rng.choice([(), (), ("red",), ("red", "blue")]))
        limit = rng.choice([None, 0, 1, 3, 50])
        offset = rng.choice([0, 0, 1, 4])
        got = [r.id for r in repo.list(status=status, owner=owner, tags=tags, limit=limit, offset=offset)]
        assert got == _scan_list(repo, status, owner, tags, limit, offset), (status, owner, tags, limit, offset)


def _step(repo: MemoryRepository, rng: random.Random, now: float) -> None:
    rows = list(repo._jobs.values())
    by = {status: [r for r in rows if r.status is status] for status in JobStatus}
    action = rng.randrange(10)
    if action <= 2 or not rows:
        fields: dict[str, Any] = {"priority": rng.randrange(3), "owner": rng.choice([None, "ann", "bob"]),
                                  "tags": frozenset(rng.choice([(), ("red",), ("red", "blue")]))}
        if rng.random() < 0.2:
            fields.update(status=JobStatus.SCHEDULED, run_at=now + rng.choice([-1.0, 5.0]))
        if rng.random() < 0.2 and rows:
            fields["depends_on"] = (rng.choice(rows).id,)
        repo.insert([make_record(**fields) for _ in range(rng.randrange(1, 4))], now)
    elif action == 3 and (by[JobStatus.PENDING] or by[JobStatus.SCHEDULED]):
        row = rng.choice(by[JobStatus.PENDING] + by[JobStatus.SCHEDULED])
        repo.claim(row.id, "w", now, now + rng.choice([-1.0, LEASE]))
    elif action in (4, 5) and by[JobStatus.RUNNING]:
        row = rng.choice(by[JobStatus.RUNNING])
        if action == 4:
            repo.complete(row.id, row.worker_id or "", row.attempts, None, now)
        else:
            repo.fail(row.id, row.worker_id or "", row.attempts, error="boom", error_type="ValueError",
                      traceback=None, now=now, retry_at=rng.choice([None, now + 1.0]))
    elif action == 6 and rows:
        repo.cancel(rng.choice(rows).id, now, "by request")
    elif action == 7 and (by[JobStatus.FAILED] or by[JobStatus.CANCELLED]):
        repo.requeue(rng.choice(by[JobStatus.FAILED] + by[JobStatus.CANCELLED]).id, now)
    elif action == 8 and by[JobStatus.RUNNING]:
        row = rng.choice(by[JobStatus.RUNNING])
        repo.release(row.id, row.worker_id or "", row.attempts, now)
    elif action == 9:
        if rng.random() < 0.5:
            repo.recover(now)
        else:
            repo.delete_finished(rng.choice([None, now - 2.0]))


@pytest.mark.parametrize("seed", range(12))
def test_the_status_index_matches_a_scan_of_the_store_after_any_operations(seed: int) -> None:
    rng = random.Random(seed)
    repo = MemoryRepository()
    for step in range(150):
        _step(repo, rng, NOW + step)
        _check(repo, rng)


class _Follower:
    """What another manager of the process sharing the store queues from its feed of rows
    made runnable (`runnable_since`): entries by id, ready or timers; every ready and
    scheduled row read afresh when the feed no longer holds its place (a manager keeps
    what it queued before, refused at its claim if stale: not the feed's to tell)."""

    def __init__(self, repo: MemoryRepository) -> None:
        self.repo, self.at = repo, repo.feed_position()
        self.queued: dict[str, Any] = {}
        self.full_reads = 0

    def look(self) -> None:
        found = self.repo.runnable_since(self.at, None)
        if found is None:
            self.full_reads += 1
            self.at = self.repo.feed_position()
            self.queued = {}
            self.queued.update((e.job_id, e) for e in [*self.repo.ready(None, 10**6), *self.repo.scheduled(None, 10**6)])
            return
        ready, scheduled, gone, self.at = found
        for job_id in gone:
            self.queued.pop(job_id, None)
        self.queued.update((e.job_id, e) for e in [*ready, *scheduled])


@pytest.mark.parametrize("seed", range(8))
def test_the_feed_of_rows_made_runnable_misses_none(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # given a follower of the feed, which keeps 2 to 4 rows between two looks or more
    if seed % 2:
        monkeypatch.setattr(memory, "FEED_KEEP", 2)
    rng = random.Random(seed)
    repo = MemoryRepository()
    follower = _Follower(repo)
    for step in range(150):
        # when any operation is made, and the follower looks now and then
        _step(repo, rng, NOW + step)
        if rng.random() < 0.5:
            follower.look()
            # then every job that can run is queued there, a scheduled one by its time,
            # and none that was cancelled or failed while it waited is
            for row in repo._jobs.values():
                runnable = row.blocked == 0 and (row.status is JobStatus.SCHEDULED or (
                    row.status is JobStatus.PENDING and row.cron is None))
                entry = follower.queued.get(row.id)
                if runnable:
                    assert entry is not None, (step, row.status, row.id)
                    assert entry.run_at == (row.run_at if row.status is JobStatus.SCHEDULED else entry.run_at)
                elif row.status in (JobStatus.CANCELLED, JobStatus.FAILED) and row.started_at is None:
                    assert entry is None, (step, row.status, row.id)
    assert follower.full_reads > 0 or not seed % 2


class _NoScan(dict):  # type: ignore[type-arg]
    """A store that refuses to be walked whole (lookups by id still work)."""

    def values(self) -> Any:
        raise AssertionError("the whole store was scanned")

    def items(self) -> Any:
        raise AssertionError("the whole store was scanned")

    def __iter__(self) -> Any:
        raise AssertionError("the whole store was scanned")

    def __reversed__(self) -> Any:
        raise AssertionError("the whole store was scanned")


def test_what_an_idle_manager_reads_does_not_walk_the_finished_jobs() -> None:
    # given a store of finished jobs and a few others
    repo = MemoryRepository()
    done = [make_record() for _ in range(200)]
    repo.insert(done, NOW)
    for record in done:
        claimed = repo.claim(record.id, "w", NOW, NOW + LEASE)
        assert claimed is not None
        repo.complete(record.id, "w", 1, None, NOW)
    failed = make_record(max_retries=0)
    waiting = make_record(status=JobStatus.SCHEDULED, run_at=NOW + 60)
    repo.insert([failed, waiting, make_record()], NOW)
    repo.claim(failed.id, "w", NOW, NOW + LEASE)
    repo.fail(failed.id, "w", 1, error="boom", error_type="ValueError", traceback=None, now=NOW, retry_at=None)
    repo._jobs = _NoScan(repo._jobs)

    # then looking for work, recovering leases, counting and listing a small status read
    # only what those statuses hold
    assert len(repo.ready(None, 10)) == 1
    assert [e.job_id for e in repo.scheduled(None, 10)] == [waiting.id]
    assert repo.recover(NOW + 2 * LEASE).requeued == ()
    counts = repo.count_by_status()
    assert counts[JobStatus.COMPLETED] == 200 and counts[JobStatus.FAILED] == 1
    assert [r.id for r in repo.list(status=JobStatus.FAILED)] == [failed.id]
    assert repo.delete_finished(NOW - 1.0) == 0


class _CountedView:
    """A values view that records which rows a reversed walk read."""

    def __init__(self, view: Any, seen: list[str]) -> None:
        self.view, self.seen = view, seen

    def __iter__(self) -> Any:
        return iter(self.view)

    def __len__(self) -> int:
        return len(self.view)

    def __reversed__(self) -> Any:
        for row in reversed(self.view):
            self.seen.append(row.id)
            yield row


def test_the_newest_jobs_are_listed_without_reading_older_ones() -> None:
    repo = MemoryRepository()
    records: list[JobRecord] = [make_record() for _ in range(300)]
    repo.insert(records, NOW)
    seen: list[str] = []

    class Watched(dict):  # type: ignore[type-arg]
        def values(self) -> Any:
            return _CountedView(super().values(), seen)

    repo._jobs = Watched(repo._jobs)
    assert [r.id for r in repo.list(limit=5, offset=2)] == [r.id for r in records[::-1][2:7]]
    assert len(seen) == 7


class _NamesSeen(set[str]):
    """Function names that note, each time a row is matched against them, whether the
    thread asking holds the store's lock."""

    def __init__(self, repo: MemoryRepository, names: set[str]) -> None:
        super().__init__(names)
        self.repo = repo
        self.locked: list[bool] = []

    def __contains__(self, name: object) -> bool:
        self.locked.append(self.repo.held_here())
        return super().__contains__(name)


def test_the_reads_of_the_queue_pick_and_sort_their_rows_without_the_stores_lock() -> None:
    # given ready and scheduled jobs: a pass over 300,000 ready rows took 100-240 ms, and
    # every enqueue, claim and completion waited that long behind the lock (scheduled jobs
    # started that late)
    repo = MemoryRepository()
    ready = [make_record(priority=i % 3) for i in range(6)]
    later = [make_record(status=JobStatus.SCHEDULED, run_at=NOW + 60 - i) for i in range(6)]
    repo.insert(ready + later, NOW)
    names = _NamesSeen(repo, {ready[0].function_name})
    # when the queue's reads pick the rows
    found = repo.ready(names, 4)
    timers = repo.scheduled(names, 4)
    # then each row was matched with the lock free, and the answers are a locked pass's
    assert len(names.locked) == 12 and not any(names.locked)
    best = sorted(ready, key=lambda r: (-r.priority, r.seq))[:4]
    assert [e.job_id for e in found] == [r.id for r in best]
    assert [e.job_id for e in timers] == [r.id for r in reversed(later)][:4]


def test_the_newest_dead_letters_are_read_without_walking_every_failed_job() -> None:
    # given 300 failed jobs, in an order of failure unlike their order of enqueueing, two
    # failed at the same moment, and one retried since
    repo = MemoryRepository()
    records = [make_record(max_retries=0) for _ in range(300)]
    repo.insert(records, NOW)
    times = {record.id: NOW + (i * 7919) % 300 for i, record in enumerate(records)}
    times[records[5].id] = times[records[9].id]
    for record in records:
        repo.claim(record.id, "w", NOW, NOW + LEASE)
        repo.fail(record.id, "w", 1, error="boom", error_type="ValueError", traceback=None,
                  now=times[record.id], retry_at=None)
    assert repo.requeue(records[7].id, NOW + 400) is not None
    expected = newest_failures([r for r in repo._jobs.values() if r.status is JobStatus.FAILED], 3)
    # (sorting every failed row at each read took 20-45 ms with 60,000 of them, the store locked)
    repo._by_status[JobStatus.FAILED] = _NoScan(repo._by_status[JobStatus.FAILED])
    # when the dead-letter queue's newest 3 are read, then they are those, newest first
    assert [r.id for r in repo.list_dead_letters(3)] == [r.id for r in expected]
    assert len(repo.list_dead_letters(None)) == 299


def test_a_long_dead_letter_queue_is_copied_a_few_hundred_rows_a_hold_of_the_lock() -> None:
    # given 1,200 failed jobs
    repo = MemoryRepository()
    records = [make_record(max_retries=0) for _ in range(1_200)]
    repo.insert(records, NOW)
    for n, record in enumerate(records):
        repo.claim(record.id, "w", NOW, NOW + LEASE)
        repo.fail(record.id, "w", 1, error="boom", error_type="ValueError", traceback=None,
                  now=NOW + n, retry_at=None)
    newest_first = [r.id for r in reversed(records)]
    # and a lock that counts its holds, and between the listing's first two holds the two
    # oldest failed jobs (copied last) are retried, and the second fails again
    lock, holds, injecting = repo._lock, [], []

    class Counted:
        def __enter__(self) -> None:
            if injecting:
                return lock.acquire()  # (the retries' own holds: not the listing's)
            holds.append(1)
            if len(holds) == 2:
                injecting.append(1)
                with lock:
                    for record in records[:2]:
                        assert repo.requeue(record.id, NOW + 2_000) is not None
                    repo.claim(records[1].id, "w", NOW + 2_000, NOW + 2_000 + LEASE)
                    repo.fail(records[1].id, "w", 1, error="again", error_type="ValueError", traceback=None,
                              now=NOW + 2_001, retry_at=None)
                injecting.clear()
            lock.acquire()

        def __exit__(self, *exc: Any) -> None:
            lock.release()

    repo._lock = Counted()  # type: ignore[assignment]
    try:
        # when the whole dead-letter queue is read
        found = [r.id for r in repo.list_dead_letters(None)]
    finally:
        repo._lock = lock
    # then it was copied in holds of at most DEAD_LETTERS_AT_ONCE rows (50,000 copied in
    # one held every claim, completion and enqueue up to 0.9 s), newest first, the rows
    # that left the queue meanwhile left out (and the one that failed again, newer than
    # the read, as if it came after)
    assert len(holds) == 1 + -(-1_200 // memory_listing.DEAD_LETTERS_AT_ONCE)
    assert found == newest_first[:-2]


def test_an_owners_jobs_are_listed_without_walking_the_store() -> None:
    # given 300 jobs of other owners or none, and 3 of alice's among them
    repo = MemoryRepository()
    records = [make_record(owner=None if i % 2 else "bob") for i in range(300)]
    for i in (10, 150, 290):
        records[i] = make_record(owner="alice")
    repo.insert(records, NOW)
    # (listing an owner's jobs walked every row: 30 ms with 300,000 kept, the store locked)
    repo._jobs = _NoScan(repo._jobs)
    # when alice's are listed, then they are hers, newest first, whatever else is asked
    assert [r.id for r in repo.list(owner="alice")] == [records[i].id for i in (290, 150, 10)]
    assert [r.id for r in repo.list(owner="alice", limit=1, offset=1)] == [records[150].id]
    assert [r.id for r in repo.list(owner="alice", status=JobStatus.PENDING)] == [records[i].id for i in (290, 150, 10)]
    assert repo.list(owner="carol") == []


def test_the_scheduled_jobs_read_give_the_times_they_were_picked_by(monkeypatch: pytest.MonkeyPatch) -> None:
    # given 5 scheduled jobs, and the earliest one's run_at moved an hour later while they
    # are picked without the lock (it ran meanwhile, failed, and waits for its retry)
    import jobcore.repository.memory as memory_module
    repo = MemoryRepository()
    later = [make_record(status=JobStatus.SCHEDULED, run_at=NOW + i) for i in range(1, 6)]
    repo.insert(later, NOW)
    real = memory_module.heapq.nsmallest

    def picked_then_moved(n: int, rows: Any, key: Any = None) -> Any:
        best = real(n, rows, key=key)
        repo._jobs[later[0].id].run_at = NOW + 3600
        return best

    monkeypatch.setattr(memory_module.heapq, "nsmallest", picked_then_moved)
    # when the earliest 3 are read
    found = repo.scheduled(None, 3)
    # then each entry gives the time it was picked by: the window's last time is the third
    # job's (the moved job's new time in its entry made it an hour later, and the reader
    # dropped the timers of jobs still scheduled before that)
    assert [(e.job_id, e.run_at) for e in found] == [(r.id, r.run_at) for r in later[:3]]


def test_a_cleanup_lets_other_threads_at_the_store_between_its_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    # given 5 completed, 5 failed and 5 cancelled jobs, and a cleanup of 2 a hold of the lock
    # (deleting 250,000 in one hold stopped every other store call for 450 ms)
    import jobcore.repository.memory_changing as changing_module
    repo = MemoryRepository()
    records = [make_record(max_retries=0) for _ in range(15)]
    repo.insert(records, NOW)
    for i, record in enumerate(records):
        if i >= 10:
            repo.cancel(record.id, NOW + i, "no")
            continue
        repo.claim(record.id, "w", NOW, NOW + LEASE)
        if i < 5:
            repo.complete(record.id, "w", 1, None, NOW + i)
        else:
            repo.fail(record.id, "w", 1, error="boom", error_type="ValueError", traceback=None,
                      now=NOW + i, retry_at=None)
    monkeypatch.setattr(changing_module, "DELETE_CHUNK", 2)
    between: list[bool] = []
    monkeypatch.setattr(changing_module, "_let_others_in", lambda: between.append(repo.held_here()))
    # when the jobs finished before NOW + 12 are deleted (all but 3 cancelled ones)
    assert repo.delete_finished(NOW + 12) == 12
    # then it let go of the lock between its chunks, and kept the rest exactly
    assert len(between) >= 6 and not any(between)
    assert sorted(r.id for r in repo.list(limit=None)) == sorted(r.id for r in records[12:])
    assert repo._failed_order == [] and repo.list_dead_letters() == []


def _store_with_pending(pending: int, total: int) -> tuple[MemoryRepository, list[JobRecord]]:
    """A memory store of `total` jobs, in seq order: the first `pending` pending, the rest
    completed."""
    repo = MemoryRepository()
    records = [make_record() for _ in range(total)]
    repo.insert(records, NOW)
    for record in records[pending:]:
        assert repo.claim(record.id, "w", NOW, NOW + LEASE) is not None
        repo.complete(record.id, "w", 1, None, NOW)
    return repo, records


class _TagsSeen(frozenset):  # type: ignore[type-arg]
    """A row's tags that note, each time the row is matched against a listing's tags,
    whether the thread asking holds the store's lock (a subclass: its `__ge__` is asked
    first for `wanted <= tags`)."""

    repo: MemoryRepository
    locked: list[bool]

    def __ge__(self, other: Any) -> bool:
        self.locked.append(self.repo.held_here())
        return frozenset.__ge__(self, other)


def test_a_listing_of_one_status_picks_its_rows_without_the_stores_lock() -> None:
    # given 40 pending jobs among 400 (a dashboard listing 30,000 pending jobs held the
    # store's lock 14-51 ms a time, and every enqueue, claim and completion waited)
    repo, records = _store_with_pending(40, 400)
    locked: list[bool] = []
    for record in records[:40]:
        tags = _TagsSeen()
        tags.repo, tags.locked = repo, locked
        repo._jobs[record.id].tags = tags
    # when the newest 5 pending jobs are listed
    listed = repo.list(status=JobStatus.PENDING, limit=5, offset=1)
    # then they were picked with the lock free (only the 6 picked, the one skipped by the
    # offset with them, checked again under it), and are a locked pass's answer
    assert len(locked) == 40 + 6 and not any(locked[:40]) and all(locked[40:])
    assert [r.id for r in listed] == [r.id for r in records[:40][::-1][1:6]]


def test_a_listing_of_one_status_leaves_out_a_row_that_left_it_while_it_picked() -> None:
    # given 20 pending jobs among 200
    repo, records = _store_with_pending(20, 200)
    newest = records[19]

    class Claimed(frozenset):  # type: ignore[type-arg]
        """Tags whose first match, made while the rows are picked, claims the newest job."""

        def __ge__(self, other: Any) -> bool:
            if not repo.held_here() and repo._jobs[newest.id].status is JobStatus.PENDING:
                assert repo.claim(newest.id, "w", NOW, NOW + LEASE) is not None
            return frozenset.__ge__(self, other)

    repo._jobs[records[0].id].tags = Claimed()
    # when a job is claimed while the listing picks its rows
    listed = repo.list(status=JobStatus.PENDING, limit=3)
    # then the listing shows the pending jobs as they are then, not the one claimed
    assert [r.id for r in listed] == [r.id for r in records[16:19][::-1]]
    assert all(r.status is JobStatus.PENDING for r in listed)


def test_a_listing_of_one_status_shows_a_row_that_entered_it_while_it_picked() -> None:
    # given 20 pending jobs among 200
    repo, records = _store_with_pending(20, 200)
    newer = make_record()

    class Changing(frozenset):  # type: ignore[type-arg]
        """Tags whose first match, made while the rows are picked, cancels the newest
        pending job and stores a newer one."""

        def __ge__(self, other: Any) -> bool:
            if not repo.held_here() and repo.get(newer.id) is None:
                repo.cancel(records[19].id, NOW, "by request")
                repo.insert([newer], NOW)
            return frozenset.__ge__(self, other)

    repo._jobs[records[0].id].tags = Changing()
    # when that happens while a listing picks its rows
    listed = repo.list(status=JobStatus.PENDING, limit=2)
    # then it shows the page as it is once it is done, the new job first (it showed the
    # two below the cancelled one: a page that never was)
    assert [r.id for r in listed] == [newer.id, records[18].id]


def test_a_retry_is_in_the_feed_with_its_time_already_set() -> None:
    # given a running job, and the feed's notes watched as they are made
    repo = MemoryRepository()
    record = make_record()
    repo.insert([record], NOW)
    assert repo.claim(record.id, "w", NOW, NOW + LEASE) is not None
    noted: list[tuple[JobStatus, Optional[float]]] = []
    note = repo._note_runnable

    def watched(job_id: str) -> None:
        row = repo._jobs[job_id]
        noted.append((row.status, row.run_at))
        note(job_id)

    repo._note_runnable = watched  # type: ignore[method-assign]
    # when it fails and is to be retried a minute later
    repo.fail(record.id, "w", 1, error="boom", error_type="ConnectionError", traceback=None,
              now=NOW, retry_at=NOW + 60)
    # then the row was noted SCHEDULED with its new time set (a reader of the feed, which
    # reads rows without the lock, could see it SCHEDULED with no time: queued as ready
    # now, its claim refused, and the worker's own timer for it skipped as not sooner)
    assert noted == [(JobStatus.SCHEDULED, NOW + 60)]
