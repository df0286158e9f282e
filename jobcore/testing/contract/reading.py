"""Contract tests for the reads: get, ready, scheduled, list, the dead-letter queue, the
counts, logs; writes only set up."""

from __future__ import annotations

from typing import Any

from ...models import JobStatus
from ...repository.base import JobRepository
from .support import NOW, _add, _claim, _complete, _fail, _get, _ids_of, make_record


class _ReadingContract:
    """get, ready, scheduled, list, list_dead_letters, count_by_status, count_queued and logs."""

    def test_get_of_an_unknown_id_is_none(self, repository: JobRepository) -> None:
        assert repository.get("no-such-job") is None

    def test_records_handed_out_are_copies(self, repository: JobRepository) -> None:
        # given a stored job, inserted from a record the caller keeps
        given = make_record(metadata={"k": 1}, kwargs={"n": 1})
        repository.insert([given], NOW)
        # when the caller changes the given record and the records it reads back
        given.name, given.metadata["k"] = "renamed", 2
        read = _get(repository, given.id)
        read.status, read.attempts, read.metadata["k"], read.kwargs["n"] = JobStatus.FAILED, 9, 3, 3
        listed = repository.list()[0]
        listed.owner, listed.metadata["k"] = "mallory", 4
        claimed = _claim(repository, given.id)
        claimed.worker_id, claimed.progress_details["x"] = "w9", 1
        # then the store is unchanged
        stored = _get(repository, given.id)
        assert (stored.name, stored.status, stored.attempts, stored.owner, stored.worker_id) == (
            "task", JobStatus.RUNNING, 1, None, "w1")
        assert (stored.metadata, stored.kwargs, stored.progress_details) == ({"k": 1}, {"n": 1}, {})

    def test_reads_without_args_match_full_reads_but_for_the_arguments(self, repository: JobRepository) -> None:
        # given jobs in several states, with arguments, tags, metadata and a result
        done = _add(repository, args=(1, "x" * 1000), kwargs={"n": [1, 2]}, tags=frozenset({"t"}),
                    metadata={"k": 1})
        _complete(repository, done.id, result={"r": [1, 2]})
        running = _claim(repository, _add(repository, args=({"deep": [1]},)).id)
        waiting = _add(repository, kwargs={"a": None}, depends_on=(running.id,))
        ids = [done.id, running.id, waiting.id]

        def same(full: Any, light: Any) -> bool:  # every field but the arguments, which may be left empty
            fields = [f for f in type(full).__dataclass_fields__ if f not in ("args", "kwargs")]
            return (all(getattr(full, f) == getattr(light, f) for f in fields)
                    and (light.args, light.kwargs) in ((full.args, full.kwargs), ((), {})))

        # then each read without arguments agrees with the full read
        for job_id in ids:
            assert same(_get(repository, job_id), repository.get_without_args(job_id))
        assert repository.get_without_args("no-such-job") is None
        for status in (None, JobStatus.COMPLETED, JobStatus.PENDING):
            full, light = repository.list(status=status), repository.list_without_args(status=status)
            assert [r.id for r in light] == [r.id for r in full]
            assert all(same(f, lt) for f, lt in zip(full, light))
        assert [r.id for r in repository.list_without_args(tags=["t"], limit=1, offset=0)] == [done.id]
        assert [r.id for r in repository.list_without_args(limit=2, offset=1)] == [running.id, done.id]

        def summary(full: Any, light: Any) -> bool:  # the fields a table of jobs shows
            left_out: dict[str, Any] = {"args": (), "kwargs": {}, "metadata": {}, "progress_details": {}, "result": None,
                        "traceback": None}
            return all(getattr(full, f) == getattr(light, f) or (f in left_out and getattr(light, f) == left_out[f])
                       for f in type(full).__dataclass_fields__)

        # and a summary agrees with it on every field it does not leave empty
        for status in (None, JobStatus.COMPLETED, JobStatus.PENDING):
            full, light = repository.list(status=status), repository.list_summaries(status=status)
            assert [r.id for r in light] == [r.id for r in full]
            assert all(summary(f, lt) for f, lt in zip(full, light))
        assert [r.id for r in repository.list_summaries(tags=["t"], limit=1, offset=0)] == [done.id]
        assert [r.id for r in repository.list_summaries(owner="nobody")] == []

    def test_statuses_of_many_jobs_are_read_at_once(self, repository: JobRepository) -> None:
        # given jobs pending, waiting on a dependency, scheduled, running, completed, failed
        # and cancelled (what callers of `wait` wait for, and what they wait to see)
        pending = _add(repository)
        running = _claim(repository, _add(repository).id)
        blocked = _add(repository, depends_on=(running.id,))
        later = _add(repository, status=JobStatus.SCHEDULED, scheduled_at=NOW + 60, run_at=NOW + 60)
        done = _add(repository)
        _complete(repository, done.id)
        failed = _add(repository)
        _fail(repository, failed.id)
        cancelled = _add(repository)
        repository.cancel(cancelled.id, NOW, "not wanted")
        expected = {pending.id: JobStatus.PENDING, running.id: JobStatus.RUNNING, blocked.id: JobStatus.PENDING,
                    later.id: JobStatus.SCHEDULED, done.id: JobStatus.COMPLETED, failed.id: JobStatus.FAILED,
                    cancelled.id: JobStatus.CANCELLED}
        # when their statuses are read in one call, with an unknown id and an id given twice
        found = repository.get_statuses([*expected, "no-such-job", done.id])
        # then each stored job's status comes by its id, and nothing for the unknown one
        assert dict(found) == expected
        assert dict(repository.get_statuses({pending.id, "no-such-job"})) == {pending.id: JobStatus.PENDING}
        assert dict(repository.get_statuses([])) == {}

    def test_many_jobs_are_read_at_once_as_get_reads_each(self, repository: JobRepository) -> None:
        # given jobs in several states, one with arguments, tags and metadata
        pending = _add(repository, args=(1, "two"), kwargs={"k": [3]}, tags=frozenset({"t"}), metadata={"m": 1})
        running = _claim(repository, _add(repository).id)
        later = _add(repository, status=JobStatus.SCHEDULED, scheduled_at=NOW + 60, run_at=NOW + 60)
        done = _add(repository)
        _complete(repository, done.id)
        # when they are read in one call, with an unknown id and an id given twice
        found = repository.get_many([pending.id, running.id, later.id, done.id, "no-such-job", done.id])
        # then each stored job comes by its id as `get` reads it, and nothing for the unknown one
        assert set(found) == {pending.id, running.id, later.id, done.id}
        for job_id, record in found.items():
            assert record == repository.get(job_id)
        assert (found[pending.id].args, found[pending.id].kwargs) == ((1, "two"), {"k": [3]})
        assert found[later.id].status is JobStatus.SCHEDULED and found[done.id].status is JobStatus.COMPLETED
        assert repository.get_many([]) == {} and repository.get_many(["no-such-job"]) == {}

    def test_the_oldest_job_of_a_status_is_the_one_stored_first(self, repository: JobRepository) -> None:
        # given pending jobs stored in two batches, one of them claimed since, and a failed one
        first = [make_record(priority=p) for p in (0, 10, 5)]
        repository.insert(first, NOW)
        repository.insert([make_record(priority=20)], NOW + 1)
        _claim(repository, first[0].id)
        failed = _add(repository, now=NOW + 2)
        _fail(repository, failed.id)
        # when the oldest of each status is read, then it is the one stored first, whatever
        # its priority, and none for a status no job has
        pending = repository.oldest(JobStatus.PENDING)
        assert pending is not None and pending.id == first[1].id and pending.status is JobStatus.PENDING
        assert pending.created_at == _get(repository, first[1].id).created_at
        running, dead = repository.oldest(JobStatus.RUNNING), repository.oldest(JobStatus.FAILED)
        assert running is not None and running.id == first[0].id
        assert dead is not None and dead.id == failed.id
        assert repository.oldest(JobStatus.CANCELLED) is None

    def test_ready_orders_by_priority_then_insertion(self, repository: JobRepository) -> None:
        # given jobs of mixed priorities, inserted in two batches
        priorities = [5, 10, 5, 0, 10, -3, 5]
        records = [make_record(priority=p) for p in priorities]
        repository.insert(records[:4], NOW)
        repository.insert(records[4:], NOW)
        # when the ready queue is read, then highest priority first, FIFO among equals
        order = sorted(range(len(records)), key=lambda i: (-priorities[i], i))
        expected = [records[i].id for i in order]
        assert _ids_of(repository.ready(None, 10)) == expected
        assert _ids_of(repository.ready(None, 3)) == expected[:3]
        top = repository.ready(None, 1)[0]
        assert (top.priority, top.seq, top.function_name, top.is_schedule) == (
            10, records[1].seq, "tests.task", False)

    def test_ready_filters_by_function_name(self, repository: JobRepository) -> None:
        mail1 = _add(repository, function_name="mail.send")
        report = _add(repository, function_name="report.build")
        mail2 = _add(repository, function_name="mail.send")
        assert _ids_of(repository.ready(["mail.send"], 10)) == [mail1.id, mail2.id]
        assert _ids_of(repository.ready({"report.build", "other"}, 10)) == [report.id]
        assert repository.ready([], 10) == []
        assert _ids_of(repository.ready(None, 10)) == [mail1.id, report.id, mail2.id]

    def test_ready_merges_several_functions_by_priority_then_insertion(self, repository: JobRepository) -> None:
        # given jobs of three functions, priorities and functions interleaved
        plan = [("f.a", 1), ("f.b", 5), ("f.c", 9), ("f.a", 5), ("f.b", 1), ("f.a", 9), ("f.c", 5),
                ("f.b", 9), ("f.a", 1), ("f.b", 5)]
        records = [make_record(function_name=name, priority=priority) for name, priority in plan]
        repository.insert(records[:5], NOW)
        repository.insert(records[5:], NOW)
        # then two of the functions read together come in one order: priority, then FIFO
        wanted = [r for r in records if r.function_name != "f.c"]
        expected = [r.id for r in sorted(wanted, key=lambda r: (-r.priority, records.index(r)))]
        for limit in (1, 3, len(expected), 50):
            assert _ids_of(repository.ready({"f.b", "f.a"}, limit)) == expected[:limit]
        assert _ids_of(repository.ready(["f.c"], 50)) == [records[2].id, records[6].id]

    def test_ready_excludes_blocked_scheduled_running_and_finished_jobs(self, repository: JobRepository) -> None:
        # given one job in each situation
        waiting = _add(repository)
        _add(repository, depends_on=(waiting.id,))                                 # blocked
        _add(repository, status=JobStatus.SCHEDULED, run_at=NOW - 1)               # scheduled, due
        _claim(repository, _add(repository).id)                                    # running
        _complete(repository, _add(repository).id)                                 # completed
        repository.cancel(_add(repository).id, NOW, "no")                          # cancelled
        # then only the plain pending job is ready
        assert _ids_of(repository.ready(None, 50)) == [waiting.id]

    def test_scheduled_orders_by_run_at_and_filters_by_function_name(self, repository: JobRepository) -> None:
        # given scheduled jobs due at various times, one blocked, one for another function
        late = _add(repository, status=JobStatus.SCHEDULED, run_at=NOW + 30)
        soon = _add(repository, status=JobStatus.SCHEDULED, run_at=NOW + 10)
        mid = _add(repository, status=JobStatus.SCHEDULED, run_at=NOW + 20)
        other = _add(repository, status=JobStatus.SCHEDULED, run_at=NOW + 5, function_name="other")
        _add(repository, status=JobStatus.SCHEDULED, run_at=NOW + 1, depends_on=(late.id,))
        _add(repository)                                                           # pending
        # then earliest first, blocked and pending left out, filtered by name
        assert _ids_of(repository.scheduled(None, 10)) == [other.id, soon.id, mid.id, late.id]
        assert _ids_of(repository.scheduled(["tests.task"], 2)) == [soon.id, mid.id]
        assert repository.scheduled(None, 1)[0].run_at == NOW + 5

    def test_scheduled_merges_several_functions_and_every_schedule_by_due_time(
            self, repository: JobRepository) -> None:
        # given scheduled jobs of three functions and a schedule of a function not asked for
        due = [("f.a", 40), ("f.b", 10), ("f.c", 5), ("f.a", 10), ("f.b", 30), ("f.a", 20)]
        records = [_add(repository, function_name=name, status=JobStatus.SCHEDULED, run_at=NOW + at)
                   for name, at in due]
        schedule = _add(repository, function_name="f.c", cron="*/5 * * * *", status=JobStatus.SCHEDULED,
                        run_at=NOW + 25)
        # then earliest first (FIFO for the same time), the schedule among them
        wanted = [r for r in records if r.function_name != "f.c"] + [schedule]
        expected = [r.id for r in sorted(wanted, key=lambda r: (r.run_at, r.seq))]
        for limit in (1, 4, 50):
            assert _ids_of(repository.scheduled(["f.a", "f.b"], limit)) == expected[:limit]
        assert _ids_of(repository.scheduled([], 50)) == [schedule.id]

    def test_scheduled_always_includes_schedules(self, repository: JobRepository) -> None:
        schedule = _add(repository, function_name="cron.fn", cron="*/5 * * * *",
                        status=JobStatus.SCHEDULED, run_at=NOW + 300)
        entries = repository.scheduled(["tests.task"], 10)
        assert _ids_of(entries) == [schedule.id] and entries[0].is_schedule

    def test_list_is_newest_first_with_limit_and_offset(self, repository: JobRepository) -> None:
        records = [make_record() for _ in range(5)]
        repository.insert(records[:2], NOW)
        repository.insert(records[2:], NOW + 1)
        newest_first = [r.id for r in reversed(records)]
        assert [r.id for r in repository.list()] == newest_first
        assert [r.id for r in repository.list(limit=2)] == newest_first[:2]
        assert [r.id for r in repository.list(limit=2, offset=2)] == newest_first[2:4]
        assert [r.id for r in repository.list(limit=None, offset=1)] == newest_first[1:]
        assert repository.list(offset=5) == []

    def test_list_filters_by_status_owner_and_every_tag(self, repository: JobRepository) -> None:
        a = _add(repository, owner="alice", tags=frozenset({"x", "y"}))
        b = _add(repository, owner="bob", tags=frozenset({"x"}))
        c = _add(repository, owner="alice")
        _complete(repository, c.id)
        d = _add(repository, owner="alice", tags=frozenset({"y"}))

        def ids(**filters: Any) -> list[str]:
            return [r.id for r in repository.list(**filters)]

        assert ids(owner="alice") == [d.id, c.id, a.id]
        assert ids(tags=["x"]) == [b.id, a.id]
        assert ids(tags={"x", "y"}) == [a.id]
        assert ids(status=JobStatus.COMPLETED) == [c.id]
        assert ids(status=JobStatus.PENDING, owner="alice", tags=["y"]) == [d.id, a.id]
        assert ids(tags=["nope"]) == [] and ids(owner="carol") == []

    def test_dead_letters_are_the_failed_jobs_most_recently_failed_first(self, repository: JobRepository) -> None:
        # given, in enqueue order: a job that failed last, one that failed first, two that
        # failed at one moment, a completed job and a pending one
        late, early, tie_a, tie_b, done = (_add(repository, args=(n,), kwargs={"n": n}) for n in range(5))
        _add(repository)
        _fail(repository, early.id, now=NOW + 1)
        _fail(repository, tie_a.id, now=NOW + 2)
        _fail(repository, tie_b.id, now=NOW + 2)
        _fail(repository, late.id, now=NOW + 3)
        _complete(repository, done.id, now=NOW + 4)

        def ids(records: list[Any]) -> list[str]:
            return [r.id for r in records]

        # then the dead-letter queue is by failure time, the later enqueued first among equals
        newest = [late.id, tie_b.id, tie_a.id, early.id]
        assert ids(repository.list_dead_letters()) == newest
        assert ids(repository.list_dead_letters(2)) == newest[:2]
        assert repository.list_dead_letters(0) == []
        assert [(r.args, r.kwargs) for r in repository.list_dead_letters(1)] == [((0,), {"n": 0})]
        assert ids(repository.list_dead_letters_without_args()) == newest
        assert ids(repository.list_dead_letters_without_args(3)) == newest[:3]
        # and listing by status keeps the newest enqueued first
        assert ids(repository.list(status=JobStatus.FAILED)) == [tie_b.id, tie_a.id, early.id, late.id]

        # when the first failure is re-queued and fails again, later than every other
        assert repository.requeue(early.id, NOW + 5) is not None
        assert ids(repository.list_dead_letters()) == [late.id, tie_b.id, tie_a.id]
        _fail(repository, early.id, now=NOW + 6)
        # then it comes first
        assert ids(repository.list_dead_letters()) == [early.id, late.id, tie_b.id, tie_a.id]

    def test_count_by_status_has_every_status(self, repository: JobRepository) -> None:
        assert repository.count_by_status() == {status: 0 for status in JobStatus}
        _add(repository)
        _add(repository)
        _add(repository, status=JobStatus.SCHEDULED, run_at=NOW + 60)
        _claim(repository, _add(repository).id)
        _complete(repository, _add(repository).id)
        _fail(repository, _add(repository).id)
        repository.cancel(_add(repository).id, NOW, "no")
        assert repository.count_by_status() == {
            JobStatus.PENDING: 2, JobStatus.SCHEDULED: 1, JobStatus.RUNNING: 1,
            JobStatus.COMPLETED: 1, JobStatus.FAILED: 1, JobStatus.CANCELLED: 1}

    def test_jobs_waiting_on_dependencies_are_counted_and_listed_as_pending(
            self, repository: JobRepository) -> None:
        # given a pending job, a job waiting on it, a job waiting on that one, and another
        # job completed
        first = _add(repository)
        second = _add(repository, depends_on=(first.id,))
        third = _add(repository, depends_on=(second.id,))
        _complete(repository, _add(repository).id)
        # then all three are pending, the two waiting ones included, newest first
        assert repository.count_by_status()[JobStatus.PENDING] == 3
        assert [r.id for r in repository.list(status=JobStatus.PENDING)] == [third.id, second.id, first.id]
        # and once the first completes, the second (released) and the third still are
        _complete(repository, first.id)
        counts = repository.count_by_status()
        assert (counts[JobStatus.PENDING], counts[JobStatus.COMPLETED]) == (2, 2)
        assert [r.id for r in repository.list(status=JobStatus.PENDING)] == [third.id, second.id]
        assert [r.id for r in repository.list(status=JobStatus.PENDING, limit=1, offset=1)] == [second.id]

    def test_count_queued_is_the_pending_and_scheduled_count_by_status_gives(
            self, repository: JobRepository) -> None:
        def queued() -> int:
            counts = repository.count_by_status()
            count = repository.count_queued()
            assert count == counts[JobStatus.PENDING] + counts[JobStatus.SCHEDULED], counts
            return count

        assert queued() == 0
        # given a job of every waiting kind: ready, waiting on a dependency, due later, a
        # cron schedule, waiting out a retry back-off; and others running or ended
        first = _add(repository)
        waiting = _add(repository, depends_on=(first.id,))
        _add(repository, status=JobStatus.SCHEDULED, run_at=NOW + 60)
        _add(repository, cron="* * * * *", status=JobStatus.SCHEDULED, run_at=NOW + 60)
        retried = _add(repository)
        attempt = _claim(repository, retried.id).attempts
        assert repository.fail(retried.id, "w1", attempt, error="boom", error_type="OSError", traceback=None,
                               now=NOW, retry_at=NOW + 5) is not None
        doomed = _add(repository)
        _add(repository, depends_on=(doomed.id,))
        _claim(repository, doomed.id)
        _complete(repository, _add(repository).id)
        repository.cancel(_add(repository).id, NOW, "no")
        # then the count is theirs, and follows them as they move on
        assert queued() == 6
        _complete(repository, first.id)  # releases the waiting job: still pending
        assert queued() == 5
        _claim(repository, waiting.id)
        assert queued() == 4
        assert repository.fail(doomed.id, "w1", 1, error="boom", error_type="ValueError", traceback=None,
                               now=NOW, retry_at=None) is not None  # its dependent is cancelled
        assert queued() == 3
        assert repository.requeue(doomed.id, NOW) is not None
        assert queued() == 4

    def test_logs_are_kept_per_job_oldest_first(self, repository: JobRepository) -> None:
        a, b = _add(repository), _add(repository)
        repository.add_log(a.id, "info", "first", NOW)
        repository.add_log(b.id, "info", "other job", NOW)
        repository.add_log(a.id, "warning", "second, same time", NOW)
        repository.add_log(a.id, "error", "third", NOW + 1)
        assert repository.logs(a.id) == [(NOW, "info", "first"), (NOW, "warning", "second, same time"),
                                         (NOW + 1, "error", "third")]
        assert repository.logs(b.id) == [(NOW, "info", "other job")]
        assert repository.logs("no-such-job") == []

    def test_add_logs_appends_lines_in_order(self, repository: JobRepository) -> None:
        job, other = _add(repository), _add(repository)
        repository.add_log(job.id, "info", "first", NOW)
        repository.add_logs(job.id, [(NOW + 1, "debug", "second"), (NOW, "error", "third, earlier time")])
        repository.add_logs(other.id, [(NOW, "info", "other job")])
        repository.add_logs(job.id, [])
        assert repository.logs(job.id) == [(NOW, "info", "first"), (NOW + 1, "debug", "second"),
                                           (NOW, "error", "third, earlier time")]
        assert repository.logs(other.id) == [(NOW, "info", "other job")]

    def test_logs_are_read_a_page_at_a_time(self, repository: JobRepository) -> None:
        job, other = _add(repository), _add(repository)
        for n in range(7):
            repository.add_log(job.id, "info", f"line {n}", NOW + n)
        repository.add_log(other.id, "info", "other job", NOW)
        assert repository.count_logs(job.id) == 7 and repository.count_logs("no-such-job") == 0
        assert [m for _, _, m in repository.log_page(job.id, 2, 3)] == ["line 2", "line 3", "line 4"]
        assert [m for _, _, m in repository.log_page(job.id, 5, None)] == ["line 5", "line 6"]
        assert repository.log_page(job.id, 0, None) == repository.logs(job.id)
        assert repository.log_page(job.id, 6, 0) == [] and repository.log_page(job.id, 7, 5) == []
        assert repository.log_page("no-such-job", 0, 10) == []
