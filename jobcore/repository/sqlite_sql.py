"""The SQL that reads SQLite's job store and keeps it up, as named constants; not the SQL of
a job's own path from insert to its end (sqlite_transition_sql's).

Here: a job's row and status, the dead-letter queue, a manager's queue (read by sqlite_queue),
counts, listing (put together by sqlite_listing), log lines, recovery (lost leases, corrupt
rows), cleanup, schedules' advance and the worker registry, on jobcore's schema
(sqlite_schema). No code runs here; `repository.sqlite` and its halves execute these.
"""

from . import columns as _columns
from .sqlite_transition_sql import COLUMNS as COLUMNS  # the order the row decoders unpack
from .sqlite_transition_sql import COLUMNS_WITHOUT_ARGS as COLUMNS_WITHOUT_ARGS
from .sqlite_transition_sql import COLUMNS_SUMMARY as COLUMNS_SUMMARY

SELECT_JOB = f"SELECT {COLUMNS} FROM jobs WHERE id = ?"
SELECT_JOB_WITHOUT_ARGS = f"SELECT {COLUMNS_WITHOUT_ARGS} FROM jobs WHERE id = ?"
SELECT_STATUS = "SELECT status, name FROM jobs WHERE id = ?"
# Jobs by id, many at once (ids as one JSON array): `get_many`.
SELECT_JOBS = f"SELECT {COLUMNS} FROM jobs WHERE id IN (SELECT value FROM json_each(?))"
# Of the jobs a worker holds (ids as one JSON array), those it runs whose cancellation
# was requested: `cancels_requested`.
SELECT_CANCELS_REQUESTED = """
SELECT id FROM jobs WHERE id IN (SELECT value FROM json_each(?))
    AND status = 'running' AND worker_id = ? AND cancel_requested = 1
"""
# The jobs callers of `wait` wait for, all in one statement (ids as one JSON array).
SELECT_STATUSES = "SELECT id, status FROM jobs WHERE id IN (SELECT value FROM json_each(?))"
# The dead-letter queue (sqlite_schema._JOBS_FAILED_INDEX). INDEXED BY: left to itself the planner
# reads jobs_status's range of every failed job and sorts them all (tests check the plan).
_DEAD_LETTERS = ("FROM jobs INDEXED BY jobs_failed WHERE status = 'failed'"
                 " ORDER BY completed_at DESC, seq DESC LIMIT ?")
LIST_DEAD_LETTERS = f"SELECT {COLUMNS} {_DEAD_LETTERS}"
LIST_DEAD_LETTERS_WITHOUT_ARGS = f"SELECT {COLUMNS_WITHOUT_ARGS} {_DEAD_LETTERS}"
# Listing's filter for tags: a JSON array of distinct tags, and how many they are; a row
# matches if it holds all of them. One condition for any number of tags (one EXISTS per
# tag made a thousand tags an expression tree deeper than SQLite allows). A row whose
# tags are not a JSON array (a corrupt row) is taken as tagless: json_each of text that
# is not JSON failed the whole statement ("malformed JSON"), and so every tag-filtered
# listing; the row itself shows its decode error where it is read. CASE tries its arms
# in order, so json_type never sees text that is not JSON.
HAS_TAGS = """(SELECT count(DISTINCT value) FROM json_each(CASE WHEN NOT json_valid(jobs.tags) THEN '[]'
    WHEN json_type(jobs.tags) = 'array' THEN jobs.tags ELSE '[]' END)
    WHERE value IN (SELECT value FROM json_each(?))) = ?"""
# A manager's queue, read by sqlite_queue: each function's ready jobs best first, its
# scheduled jobs by due time, and the cron schedules, each one range of its index walked in
# order (INDEXED BY: left to itself the planner may read every pending job through
# jobs_status and sort them; tests/test_repository_contract.py checks the plans).
# The *_ANY forms, for any function, sort every ready or scheduled job: no manager uses them.
_QUEUE_COLUMNS = "id, priority, seq, run_at, function_name, cron IS NOT NULL"
READY_OF = f"""
SELECT {_QUEUE_COLUMNS} FROM jobs INDEXED BY jobs_ready
WHERE function_name = ? AND status = 'pending' AND blocked = 0
ORDER BY priority DESC, seq LIMIT ?
"""
# Which of the functions named (a JSON array) have a ready job: one seek into jobs_ready
# each (about 0.2 µs), where walking a function's range to claim from it costs about 5.6 µs
# even when it is empty (see sqlite_queue.with_ready_jobs).
WITH_READY_JOBS = """
SELECT value FROM json_each(?) WHERE EXISTS (SELECT 1 FROM jobs INDEXED BY jobs_ready
    WHERE function_name = value AND status = 'pending' AND blocked = 0)
"""
READY_ANY = f"""
SELECT {_QUEUE_COLUMNS} FROM jobs WHERE status = 'pending' AND blocked = 0
ORDER BY priority DESC, seq LIMIT ?
"""
DUE_OF = f"""
SELECT {_QUEUE_COLUMNS} FROM jobs INDEXED BY jobs_due
WHERE function_name = ? AND status = 'scheduled' AND blocked = 0 AND cron IS NULL
ORDER BY run_at, seq LIMIT ?
"""
SCHEDULES = f"""
SELECT {_QUEUE_COLUMNS} FROM jobs INDEXED BY jobs_schedules
WHERE status = 'scheduled' AND blocked = 0 AND cron IS NOT NULL
ORDER BY run_at, seq LIMIT ?
"""
DUE_ANY = f"""
SELECT {_QUEUE_COLUMNS} FROM jobs WHERE status = 'scheduled' AND blocked = 0
ORDER BY run_at, seq LIMIT ?
"""
# The total, then the jobs of each status in COUNTED_STATUSES, in one statement and so one
# snapshot. SQLite counts a whole table from its smallest index's pages without reading
# their entries; each status is one range of jobs_status, but 'pending': its ready jobs are
# the entries of jobs_ready, and those waiting on dependencies a range of jobs_status. What
# the total has beyond them are rows whose status jobcore never writes (a hand edit:
# 'PENDING'): they read as failed, and are counted so (`SQLiteRepository.count_by_status`).
# ('completed' was once the rest of the total, and such rows were counted as completed.)
# The statuses are written out, not bound: a bound status would make SQLite prepare the
# statement again at every call to choose its partial index.
COUNTED_STATUSES = ("pending", "scheduled", "running", "completed", "failed", "cancelled")
_COUNT_PENDING = """(SELECT COUNT(*) FROM jobs WHERE status = 'pending' AND blocked = 0)
        + (SELECT COUNT(*) FROM jobs WHERE status = 'pending' AND blocked <> 0)"""
_COUNT_SCHEDULED = "(SELECT COUNT(*) FROM jobs WHERE status = 'scheduled')"
COUNT_BY_STATUS = f"""
SELECT (SELECT COUNT(*) FROM jobs),
    {_COUNT_PENDING},
    {_COUNT_SCHEDULED},
    (SELECT COUNT(*) FROM jobs WHERE status = 'running'),
    (SELECT COUNT(*) FROM jobs WHERE status = 'completed'),
    (SELECT COUNT(*) FROM jobs WHERE status = 'failed'),
    (SELECT COUNT(*) FROM jobs WHERE status = 'cancelled')
"""
_COUNT_ORDER = [COUNT_BY_STATUS.find(f"status = '{status}'") for status in COUNTED_STATUSES]
if -1 in _COUNT_ORDER or _COUNT_ORDER != sorted(_COUNT_ORDER):
    raise ImportError("COUNT_BY_STATUS must count COUNTED_STATUSES in their order")
# What `count_queued` reads: COUNT_BY_STATUS's own pending and scheduled terms (so the two
# agree on every row, corrupt ones included), without its whole-table total and its
# finished ranges, which grow with every finished job kept: the entries of jobs_ready and
# two ranges of jobs_status, all unfinished jobs.
COUNT_QUEUED = f"SELECT {_COUNT_PENDING} + {_COUNT_SCHEDULED}"

# Listing newest first (`list`: list_jobs, the dashboard, `jobcore list`), put together by
# sqlite_listing from the text below only: {columns} is COLUMNS or COLUMNS_WITHOUT_ARGS,
# {index} empty or one of the INDEXED BY clauses, {where} some of the terms AND-ed. What a
# caller gives (owner, tags, limit, offset) is always bound, never written into the text.
LIST = "SELECT {columns} FROM jobs{index} WHERE {where} ORDER BY seq DESC LIMIT ? OFFSET ?"
# How many rows a listing's range holds, up to the last `?`: reading a range costs an
# entry each (an index's own entries: no row is read).
COUNT_UP_TO = "SELECT count(*) FROM (SELECT 1 FROM jobs{index} WHERE {where} LIMIT ?)"
BY_STATUS = " INDEXED BY jobs_status"
BY_OWNER = " INDEXED BY jobs_owner"
# A status is written into the statement, one text per JobStatus value (the caller's status
# is checked against the enum first): jobs_status is a partial index, and SQLite found a
# bound status's range only by preparing the statement again at every call, once it had
# the value (about 60 µs a call here, as long as reading 50 rows takes).
STATUS_TERMS = {status: f"status = '{status}'" for status in COUNTED_STATUSES}
OWNER_TERM = "owner = ?"
# The owner checked on each row read (unary plus: no index), where the rows come by seq.
OWNER_CHECKED = "+owner = ?"
# A job with no tag (most, by far) is passed over by its text alone: the count of its tags
# took 80% of a tag-filtered listing's time (150 ms with 300,000 jobs kept, 31 without).
TAGS_TERM = f"(jobs.tags <> '[]' AND {HAS_TAGS})"
# A wanted tag's text in the row's JSON (see sqlite_listing._Filters), looked for first;
# a row whose JSON escapes a character (not as jobcore writes: another program's `\/`,
# `\u0061`) is read as JSON whatever its text.
TAG_TEXT_TERM = "(instr(jobs.tags, ?) > 0 OR instr(jobs.tags, '\\') > 0)"
# The newest rows only: a range of the table's own key, from the newest row back to
# `?` seqs before it (fewer rows once older ones are deleted). Any such range is where a
# listing of the whole table newest first begins, so what a listing finds in it is what the
# whole listing gives, as far as it goes.
NEWEST_TERM = "seq > (SELECT max(seq) FROM jobs) - ?"
# Whether that range is every row (NULL: there are none): then a walk of the whole table
# is what reads it.
NEWEST_IS_ALL = "SELECT (SELECT min(seq) FROM jobs) > (SELECT max(seq) FROM jobs) - ?"
# Every pending job: the ready ones are the entries of jobs_ready, by function and priority
# (not by seq), and those waiting on dependencies a range of jobs_status (blocked is never
# NULL, so every pending row is in one of the two). Their seqs are gathered, then sorted
# (SQLite builds a temporary index of them) and the rows found by their key newest first.
_PENDING_SEQS = """SELECT seq FROM jobs INDEXED BY jobs_ready WHERE status = 'pending' AND blocked = 0
    UNION ALL SELECT seq FROM jobs INDEXED BY jobs_status WHERE status = 'pending' AND blocked <> 0"""
PENDING_TERM = f"seq IN ({_PENDING_SEQS})"
COUNT_PENDING_UP_TO = f"SELECT count(*) FROM (SELECT 1 FROM ({_PENDING_SEQS}) LIMIT ?)"
SELECT_LOGS = "SELECT at, level, message FROM job_logs WHERE job_id = ? ORDER BY id"
SELECT_LOG_PAGE = SELECT_LOGS + " LIMIT ? OFFSET ?"  # LIMIT -1: no limit
COUNT_LOGS = "SELECT count(*) FROM job_logs WHERE job_id = ?"
INSERT_LOG = "INSERT INTO job_logs (job_id, at, level, message) VALUES (?, ?, ?, ?)"
# A line for a job that may be gone (a timed-out attempt's thread logging on after its job
# was deleted): stored only beside its job, so no line outlives the job. Parameters: at,
# level, message, job_id. (Plain `?` marks only: Python 3.12 warns of numbered ones given
# a sequence, and 3.14 refuses them.)
INSERT_LOG_IF_STORED = "INSERT INTO job_logs (job_id, at, level, message) SELECT id, ?, ?, ? FROM jobs WHERE id = ?"

# Running jobs whose lease is no usable time (see columns.UNUSABLE_TIME_SQL), for recovery
# to end their lease now rather than take them back at once: a live worker renews it at
# its next heartbeat; the next recovery round takes back the job of a dead one.
UNREADABLE_LEASES = f"""
SELECT id, lease_expires_at FROM jobs
WHERE status = 'running' AND {_columns.UNUSABLE_TIME_SQL.format(column='lease_expires_at')}
"""
# Pending jobs whose count of unfinished dependencies is no integer >= 0 (a hand edit: 'x'
# or -1 never reaches 0, and the job waited for ever): one range of jobs_status (which holds
# the pending rows with blocked <> 0), read by each recovery round.
UNUSABLE_BLOCKED = f"""
SELECT {COLUMNS} FROM jobs
WHERE status = 'pending' AND blocked <> 0 AND NOT (typeof(blocked) = 'integer' AND blocked > 0)
"""
SELECT_JOB_BY_SEQ = f"SELECT {COLUMNS} FROM jobs WHERE seq = ?"
# A waiting job whose row is corrupt in a way no claim reaches, ended as a claim of it would
# end it (see columns.unsound_numbers), found by its seq: its id may be no text.
FAIL_CORRUPT = """
UPDATE jobs SET status = 'failed', completed_at = ?, error = ?, error_type = 'CorruptJob',
    worker_id = NULL, lease_expires_at = NULL
WHERE seq = ? AND status IN ('pending', 'scheduled')
"""
# A schedule that can never fire, ended by FAIL_CORRUPT (ScheduleFirer.fire).
SELECT_SCHEDULE_SEQ = "SELECT seq FROM jobs WHERE id = ? AND status = 'scheduled' AND cron IS NOT NULL"
END_LEASE = "UPDATE jobs SET lease_expires_at = ? WHERE id = ? AND status = 'running'"
# A job taken back to run again has no progress, as after sqlite_transition_sql.FAIL_RETRY;
# one that ends FAILED or CANCELLED keeps its lost attempt's last report.
RECOVER_EXPIRED = """
UPDATE jobs SET status = CASE WHEN cancel_requested THEN 'cancelled'
                          WHEN attempts > max_retries THEN 'failed' ELSE 'pending' END,
    completed_at = CASE WHEN cancel_requested OR attempts > max_retries THEN ? ELSE NULL END,
    error = 'worker ' || worker_id || ' lost its lease on attempt ' || attempts,
    error_type = CASE WHEN cancel_requested THEN 'JobCancelled' ELSE 'WorkerLost' END,
    progress = CASE WHEN cancel_requested OR attempts > max_retries THEN progress ELSE 0 END,
    progress_message = CASE WHEN cancel_requested OR attempts > max_retries THEN progress_message ELSE '' END,
    progress_details = CASE WHEN cancel_requested OR attempts > max_retries THEN progress_details ELSE '{}' END,
    lease_expires_at = NULL
WHERE status = 'running' AND lease_expires_at < ?
RETURNING id, priority, seq, run_at, function_name, cron IS NOT NULL, status, error
"""
# Each finished status is its own range of jobs_status: SQLite matches `status IN (...)`
# to none of the partial index's terms, and would read the whole table.
# Cleanup finds the jobs to delete by reading, outside any write transaction: the seqs of
# up to LIMIT jobs of one terminal status past a seq, finished before a time (None: any
# time), in seq order. Reading a range of jobs_status reads each job's row for its
# completed_at (no index holds it for completed and cancelled jobs): 700,000 jobs kept took
# 100 ms, and within the write transaction, as it was, every other writer (every process)
# waited that long, a job due meanwhile started that late. Then it deletes a chunk a write
# transaction, by seq, each job again only if it is still of that status and finished then
# (retried meanwhile, it is kept). The status is written into each statement: jobs_status,
# a partial index, is used only for a status the planner can see.
FINISHED_SEQS = {status: f"""
SELECT seq FROM jobs INDEXED BY jobs_status
WHERE status = '{status}' AND seq > ? AND (? IS NULL OR completed_at < ?) ORDER BY seq LIMIT ?
""" for status in ("completed", "failed", "cancelled")}
DELETE_FINISHED = {status: f"""
DELETE FROM jobs WHERE seq IN (SELECT value FROM json_each(?)) AND status = '{status}'
  AND (? IS NULL OR completed_at < ?)
RETURNING id
""" for status in ("completed", "failed", "cancelled")}
# Rows whose status jobcore never writes (they read as failed: see COUNT_BY_STATUS),
# finished before the time given (or, never finished, created before it). No index holds
# them: this reads the whole table, so it runs only when counting finds some.
DELETE_UNKNOWN_STATUS = """
DELETE FROM jobs
WHERE status NOT IN ('pending', 'scheduled', 'running', 'completed', 'failed', 'cancelled')
  AND (? IS NULL OR completed_at < ? OR (completed_at IS NULL AND created_at < ?))
RETURNING id
"""
# Given a JSON array of the ids deleted (one statement a chunk, not two a job).
DELETE_LOGS = "DELETE FROM job_logs WHERE job_id IN (SELECT value FROM json_each(?))"
DELETE_DEP_LISTS = "DELETE FROM job_dep_lists WHERE job_id IN (SELECT value FROM json_each(?))"
# Lists whose job is gone: a jobcore of version 6 running beside this one during an upgrade
# deletes jobs without their lists (it does not know the table). Each found by its key.
_ORPHAN = "NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.id = job_dep_lists.job_id)"
ORPHAN_DEP_LISTS = f"SELECT EXISTS (SELECT 1 FROM job_dep_lists WHERE {_ORPHAN})"
DELETE_ORPHAN_DEP_LISTS = f"DELETE FROM job_dep_lists WHERE {_ORPHAN}"
DELETE_DEPS = """
DELETE FROM job_deps WHERE job_id IN (SELECT value FROM json_each(?))
    OR depends_on IN (SELECT value FROM json_each(?))
"""
ADVANCE_SCHEDULE = """
UPDATE jobs SET run_at = ?
WHERE id = ? AND status = 'scheduled' AND cron IS NOT NULL AND run_at = ?
"""
REGISTER_WORKER = """
INSERT OR REPLACE INTO jobcore_workers (worker_id, host, pid, started_at, heartbeat_at, running, lease_timeout)
VALUES (?, ?, ?, ?, ?, '[]', ?)
"""
BEAT_WORKER = "UPDATE jobcore_workers SET heartbeat_at = ?, running = ? WHERE worker_id = ?"
UNREGISTER_WORKER = "DELETE FROM jobcore_workers WHERE worker_id = ?"
LIST_WORKERS = """
SELECT worker_id, host, pid, started_at, heartbeat_at, running, lease_timeout FROM jobcore_workers
ORDER BY started_at, worker_id
"""
# (now, before): an entry with its own lease is silent once older than now - lease; one
# without (or with no `now` given: NULL - lease is NULL) once older than `before`.
REAP_WORKERS = """
DELETE FROM jobcore_workers WHERE heartbeat_at < COALESCE(? - lease_timeout, ?) RETURNING worker_id
"""
EXPIRE_WORKER = """
UPDATE jobs SET lease_expires_at = ? WHERE status = 'running' AND worker_id = ?
"""
# The job of each status stored first (`oldest`), by status: the head of the status's range
# of jobs_status, or, for `pending` (whose ready jobs are in jobs_ready alone, by function
# and priority), the lowest of jobs_ready's seqs (an index-only pass: 22 ms for 300,000)
# and of the waiting ones' range. The walk to the last of a listing took 67-167 ms.
SELECT_OLDEST = {
    status: (f"SELECT {COLUMNS_WITHOUT_ARGS} FROM jobs WHERE seq = (SELECT MIN(seq) FROM ("
             "SELECT (SELECT MIN(seq) FROM jobs INDEXED BY jobs_ready WHERE status = 'pending' AND blocked = 0)"
             " AS seq UNION ALL SELECT (SELECT MIN(seq) FROM jobs INDEXED BY jobs_status"
             " WHERE status = 'pending' AND blocked <> 0)))"
             if status == "pending" else
             f"SELECT {COLUMNS_WITHOUT_ARGS} FROM jobs INDEXED BY jobs_status WHERE {STATUS_TERMS[status]}"
             " ORDER BY seq LIMIT 1")
    for status in COUNTED_STATUSES}
