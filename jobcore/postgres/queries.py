"""The SQL `PostgresRepository` runs, as named constants, and `Statements` to fill them in.

No code runs here beyond formatting. `{s}` stands for the quoted PostgreSQL schema.

Row locks, and why (READ COMMITTED; rows of `jobs`):
- Claims take `FOR NO KEY UPDATE SKIP LOCKED`: managers claiming the same job never wait
  on each other; the loser simply gets nothing.
- Inserting a job that depends on stored jobs takes `FOR KEY SHARE` on them, and every
  transition that ends a job (complete, final fail, cancel, recovery, cascade; a retry
  or a hand-back too, which end it if its cancellation was requested) takes `FOR UPDATE`
  first; `cancel` takes it before it reads the status it acts on. The
  two conflict, so a dependency cannot end between the moment an insert reads its
  status and the moment the dependent's `job_deps` row commits (which would leave the
  dependent blocked forever); claims (`NO KEY UPDATE`) do not conflict with `KEY SHARE`,
  so inserts never make a claim skip a job.
- Statements that lock several rows take them in `seq` order, and statements that must
  never wait (claims, heartbeats, recovery) skip locked rows, so no two transactions
  wait on each other in a cycle (PostgreSQL would break it only after deadlock_timeout).
"""

from __future__ import annotations

from typing import Optional

from ..models import JobStatus
from ..repository.columns import JOB_COLUMNS as COLUMNS  # the order the row decoders unpack
from ..repository.columns import JOB_COLUMNS_WITHOUT_ARGS as COLUMNS_WITHOUT_ARGS
from ..repository.columns import UNUSABLE_TIME_SQL
from . import schema as ddl

# COALESCE(status, ''), in statements that find a few jobs by id: it keeps the planner
# off the status indexes. Queue statistics are always stale (thousands of jobs change
# status between two ANALYZEs), and with them the planner was seen (EXPLAIN ANALYZE) to
# read every pending job through jobs_ready or jobs_status and filter by id, on every
# claim and completion: a drain of 20,000 jobs then slowed down as it went.
_J_COLUMNS = ", ".join(f"j.{column.strip()}" for column in COLUMNS.split(","))
ENTRY = "id, priority, seq, run_at, function_name, cron IS NOT NULL"
_J_ENTRY = "j.id, j.priority, j.seq, j.run_at, j.function_name, j.cron IS NOT NULL"
_UNFINISHED = "('pending', 'scheduled', 'running')"

INSERT_JOB = """
INSERT INTO {s}.jobs (id, function_name, name, payload, priority, status, blocked, created_at,
    scheduled_at, run_at, max_retries, retry_delay, retry_backoff, retry_jitter, timeout, tags,
    metadata, owner, unique_key, isolation, depends_on, cron, cron_timezone, error, error_type,
    completed_at, memory_limit)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,
    %s, %s, %s, %s, %s)
RETURNING seq
"""
# One job that needs no check against other rows (no dependencies, no unique key), alone:
# stored and announced (NOTIFY, as `Tx.notify`) by one autocommit statement, one round
# trip instead of a transaction's BEGIN, lookup, INSERT, NOTIFY and COMMIT. A taken id
# fails on jobs_id_key, as the lookup would have found it.
INSERT_ALONE = "WITH added AS (" + INSERT_JOB.strip() + ") SELECT seq, pg_notify('jobcore_jobs', %s) FROM added"
SELECT_INSERTED = "SELECT seq, function_name, payload, created_at FROM {s}.jobs WHERE id = %s"
# For batches with a unique_key: a job whose key another transaction took since the
# insert looked (SELECT_UNFINISHED_BY_KEYS) is not inserted and returns no row, and the
# insert runs again to find that holder. Not an error: inserts are pipelined, and psycopg
# logs a WARNING for an error inside a pipeline even when the caller handles it. Batches
# without keys keep INSERT_JOB: ON CONFLICT makes every row a speculative insertion.
INSERT_JOB_KEYED = INSERT_JOB.replace("RETURNING seq", f"""ON CONFLICT (unique_key)
    WHERE unique_key IS NOT NULL AND status IN {_UNFINISHED} DO NOTHING
RETURNING seq""")
INSERT_RUN = """
INSERT INTO {s}.jobs (id, function_name, name, payload, priority, status, blocked, created_at,
    scheduled_at, run_at, max_retries, retry_delay, retry_backoff, retry_jitter, timeout, tags,
    metadata, owner, unique_key, isolation, depends_on, cron, cron_timezone, error, error_type,
    completed_at, memory_limit, schedule_id, fire_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,
    %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (schedule_id, fire_at) WHERE schedule_id IS NOT NULL DO NOTHING
RETURNING seq
"""
INSERT_DEP = "INSERT INTO {s}.job_deps (job_id, depends_on) VALUES (%s, %s) ON CONFLICT DO NOTHING"
# KEY SHARE: see the module docstring. ORDER BY seq: every multi-row locker takes rows
# in one order, so two of them cannot deadlock.
LOCK_DEPENDENCIES = """
SELECT id, status, name, cron IS NOT NULL FROM {s}.jobs WHERE id = ANY(%s) ORDER BY seq FOR KEY SHARE
"""
SELECT_UNFINISHED_BY_KEYS = f"""
SELECT unique_key, id FROM {{s}}.jobs WHERE unique_key = ANY(%s) AND status IN {_UNFINISHED}
"""
SELECT_JOB = f"SELECT {COLUMNS} FROM {{s}}.jobs WHERE id = %s"
SELECT_JOB_WITHOUT_ARGS = f"SELECT {COLUMNS_WITHOUT_ARGS} FROM {{s}}.jobs WHERE id = %s"
SELECT_STATUS = "SELECT status, name FROM {s}.jobs WHERE id = %s"
# The jobs callers of `wait` wait for, all in one statement (ids as one text array).
SELECT_STATUSES = "SELECT id, status FROM {s}.jobs WHERE id = ANY(%s)"
# A manager's queue: the best of each function it runs (`names`), each read in order from
# its range of jobs_ready or jobs_due (LATERAL, with LIMIT: no other function's jobs are
# read), then the best of those. Cron schedules come whatever their function. The *_ANY
# forms, for any function, sort every ready or scheduled job: no manager uses them.
_AS_ENTRY = "id, priority, seq, run_at, function_name, cron IS NOT NULL AS is_schedule"
SELECT_READY = f"""
SELECT e.* FROM unnest(%(names)s::TEXT[]) AS n(name) CROSS JOIN LATERAL (
    SELECT {_AS_ENTRY} FROM {{s}}.jobs
    WHERE function_name = n.name AND status = 'pending' AND blocked = 0
    ORDER BY priority DESC, seq LIMIT %(limit)s) AS e
ORDER BY e.priority DESC, e.seq LIMIT %(limit)s
"""
SELECT_READY_ANY = f"""
SELECT {ENTRY} FROM {{s}}.jobs WHERE status = 'pending' AND blocked = 0
ORDER BY priority DESC, seq LIMIT %(limit)s
"""
SELECT_SCHEDULED = f"""
SELECT * FROM (
    SELECT e.* FROM unnest(%(names)s::TEXT[]) AS n(name) CROSS JOIN LATERAL (
        SELECT {_AS_ENTRY} FROM {{s}}.jobs
        WHERE function_name = n.name AND status = 'scheduled' AND blocked = 0 AND cron IS NULL
        ORDER BY run_at, seq LIMIT %(limit)s) AS e
    UNION ALL
    (SELECT {_AS_ENTRY} FROM {{s}}.jobs WHERE status = 'scheduled' AND blocked = 0 AND cron IS NOT NULL
     ORDER BY run_at, seq LIMIT %(limit)s)
) AS due ORDER BY run_at, seq LIMIT %(limit)s
"""
SELECT_SCHEDULED_ANY = f"""
SELECT {ENTRY} FROM {{s}}.jobs WHERE status = 'scheduled' AND blocked = 0
ORDER BY run_at, seq LIMIT %(limit)s
"""
# Listing newest first: one text per status (None: any) and per whether an owner is given,
# `LIST[columns][(status, by_owner)]`. The status is written in from JobStatus's values
# (the caller's is checked against the enum first), never the caller's text: with it bound,
# as `(%(status)s IS NULL OR status = %(status)s)`, the plan PostgreSQL caches for a
# statement prepared on a connection (psycopg prepares one at its 5th run) walked every job
# backwards from the newest and filtered them, whatever the status. PostgreSQL takes that
# generic plan once the plans it made for the values given cost more on average (a few
# `list_jobs(status="completed", limit=None)` on a connection did it): listing 10 pending
# jobs then took 25 ms with 100,000 jobs stored and 400 ms with 1,000,000, against under a
# millisecond from jobs_status, and kept taking it on that connection. Each text's own
# generic plan reads its status's range (the tags, LIMIT and OFFSET bound as before).
def _list(columns: str, status: Optional[str], by_owner: bool) -> str:
    terms = [] if status is None else [f"status = '{status}'"]
    if by_owner:
        terms.append("owner = %(owner)s")
    terms.append("tags @> %(tags)s::TEXT[]")
    return (f"SELECT {columns} FROM {{s}}.jobs WHERE {' AND '.join(terms)}"
            " ORDER BY seq DESC LIMIT %(limit)s OFFSET %(offset)s")


LIST = {columns: {(status, by_owner): _list(columns, status, by_owner)
                  for status in (None, *(s.value for s in JobStatus)) for by_owner in (False, True)}
        for columns in (COLUMNS, COLUMNS_WITHOUT_ARGS)}
# The dead-letter queue, the most recently failed first, read in order from jobs_failed
# (NULLS LAST: PostgreSQL puts NULLs first in a DESC order; SQLite and the memory store
# put a row without a finish time last). LIMIT NULL: no limit.
_DEAD_LETTERS = """
WHERE status = 'failed' ORDER BY completed_at DESC NULLS LAST, seq DESC LIMIT %s
"""
LIST_DEAD_LETTERS = f"SELECT {COLUMNS} FROM {{s}}.jobs {_DEAD_LETTERS}"
LIST_DEAD_LETTERS_WITHOUT_ARGS = f"SELECT {COLUMNS_WITHOUT_ARGS} FROM {{s}}.jobs {_DEAD_LETTERS}"
COUNT_BY_STATUS = "SELECT status, COUNT(*) FROM {s}.jobs GROUP BY status"
# Pending and scheduled jobs: ranges of jobs_status (or the queue's partial indexes), never
# the finished jobs, which are most rows of a store that keeps them.
COUNT_QUEUED = "SELECT COUNT(*) FROM {s}.jobs WHERE status IN ('pending', 'scheduled')"
SELECT_LOGS = "SELECT at, level, message FROM {s}.job_logs WHERE job_id = %s ORDER BY id"
SELECT_LOG_PAGE = SELECT_LOGS + " LIMIT %s OFFSET %s"  # LIMIT NULL: no limit
COUNT_LOGS = "SELECT count(*) FROM {s}.job_logs WHERE job_id = %s"
INSERT_LOG = "INSERT INTO {s}.job_logs (job_id, at, level, message) VALUES (%s, %s, %s, %s)"

# A scheduled job is due at its time, or at once if that is no usable time (infinity, NaN:
# see UNUSABLE_TIME_SQL): the claim reads its row, whose decode error fails it as CorruptJob.
_DUE = f"(run_at <= %(now)s OR {UNUSABLE_TIME_SQL.format(column='run_at')})"

# Claims by id; with `top_up`, ids that went stale (other processes took those jobs) are
# made up, to `up_to` claims in all, with the best ready jobs naming `names`, in priority
# then FIFO order: each function's range of jobs_ready is walked in order, rows other
# claimers hold skipped, and the best of what each gave are taken (rows one function's
# walk locked beyond those stay locked until this statement's transaction ends).
# One statement: `extra` sees what `wanted` locked, so nothing is claimed twice.
CLAIM_MANY = f"""
WITH wanted AS (
    SELECT seq FROM {{s}}.jobs
    WHERE id = ANY(%(ids)s) AND blocked = 0 AND cron IS NULL
      AND (COALESCE(status, '') = 'pending' OR (COALESCE(status, '') = 'scheduled' AND {_DUE}))
    ORDER BY priority DESC, seq
    FOR NO KEY UPDATE SKIP LOCKED
), extra AS (
    SELECT e.seq FROM unnest(%(names)s::TEXT[]) AS n(name) CROSS JOIN LATERAL (
        SELECT seq, priority FROM {{s}}.jobs
        WHERE %(top_up)s AND function_name = n.name AND status = 'pending' AND blocked = 0
          AND cron IS NULL AND seq NOT IN (SELECT seq FROM wanted)
        ORDER BY priority DESC, seq
        LIMIT GREATEST(%(up_to)s - (SELECT COUNT(*) FROM wanted), 0)
        FOR NO KEY UPDATE SKIP LOCKED) AS e
    ORDER BY e.priority DESC, e.seq
    LIMIT GREATEST(%(up_to)s - (SELECT COUNT(*) FROM wanted), 0)
)
UPDATE {{s}}.jobs AS j SET status = 'running', attempts = j.attempts + 1, started_at = %(now)s,
    worker_id = %(worker)s, lease_expires_at = %(lease)s, cancel_requested = FALSE
WHERE j.seq IN (SELECT seq FROM wanted UNION ALL SELECT seq FROM extra)
RETURNING {_J_COLUMNS}
"""
_HELD_WHERE = "id = %(id)s AND status = 'running' AND worker_id = %(worker)s AND attempts = %(attempt)s"
# A running job held by (worker_id, attempts), locked FOR UPDATE: it is about to end.
_HELD = f"""
WITH held AS (SELECT seq FROM {{s}}.jobs WHERE {_HELD_WHERE} FOR UPDATE)
"""
# A claimed job handed back unstarted (at stop) is PENDING again, its attempt uncounted;
# or, if its cancellation was requested meanwhile (cancel() returned True), CANCELLED as
# CANCEL_WAITING leaves a pending job, in the same statement: it must not run later. It
# takes FOR UPDATE, since it may end the job; the SET reads the row as the lock found it
# (a cancel request committed meanwhile is seen), and RETURNING tells which it did.
RELEASE = _HELD + """
UPDATE {s}.jobs AS j SET status = CASE WHEN j.cancel_requested THEN 'cancelled' ELSE 'pending' END,
    completed_at = CASE WHEN j.cancel_requested THEN %(now)s ELSE j.completed_at END,
    error = CASE WHEN j.cancel_requested THEN 'cancelled by request' ELSE j.error END,
    error_type = CASE WHEN j.cancel_requested THEN 'JobCancelled' ELSE j.error_type END,
    attempts = j.attempts - 1, worker_id = NULL, lease_expires_at = NULL, cancel_requested = FALSE
FROM held WHERE j.seq = held.seq
RETURNING j.status = 'cancelled'
"""
# Several completions of one worker in one statement each (the dispatcher's hot path).
COMPLETE_MANY = """
WITH given AS (
    SELECT * FROM unnest(%(ids)s::TEXT[], %(attempts)s::INTEGER[], %(results)s::TEXT[])
        AS given(id, attempt, result)
), held AS (
    SELECT j.seq, given.result FROM {s}.jobs AS j JOIN given ON j.id = given.id
    WHERE COALESCE(j.status, '') = 'running' AND j.worker_id = %(worker)s AND j.attempts = given.attempt
    ORDER BY j.seq FOR UPDATE OF j
)
UPDATE {s}.jobs AS j SET status = 'completed', result = held.result, completed_at = %(now)s,
    progress = 1.0, lease_expires_at = NULL, error = NULL, error_type = NULL, traceback = NULL
FROM held WHERE j.seq = held.seq
RETURNING j.id
"""
# A dependent of several of them loses one block per completed dependency; `completed`
# lists which, so that each release is reported with one of the completions.
RELEASE_DEPENDENTS_MANY = f"""
WITH counts AS (
    SELECT job_id, COUNT(*) AS n, ARRAY_AGG(depends_on) AS completed FROM {{s}}.job_deps
    WHERE depends_on = ANY(%s) GROUP BY job_id
), waiting AS (
    SELECT j.seq, counts.n, counts.completed FROM {{s}}.jobs AS j JOIN counts ON j.id = counts.job_id
    WHERE COALESCE(j.status, '') IN ('pending', 'scheduled')
    ORDER BY j.seq FOR NO KEY UPDATE OF j
)
UPDATE {{s}}.jobs AS j SET blocked = GREATEST(j.blocked - waiting.n, 0)
FROM waiting WHERE j.seq = waiting.seq
RETURNING {_J_ENTRY}, j.blocked, waiting.completed
"""
FINISH_CANCELLED = _HELD + """
UPDATE {s}.jobs AS j SET status = 'cancelled', completed_at = %(now)s,
    error = 'cancelled while running', error_type = 'JobCancelled', lease_expires_at = NULL
FROM held WHERE j.seq = held.seq
"""
# A failed attempt of a job whose cancellation was requested (cancel() returned True while
# the outcome was on its way: the worker had not heard of it, or the attempt had already
# ended or timed out) ends CANCELLED, as FINISH_CANCELLED leaves it, in the same statement:
# no retry, no dead letter. The SET reads the row as the lock found it (a cancel request
# committed meanwhile is seen), and RETURNING tells the caller which it did. A retry
# takes FOR UPDATE too, since it may end the job (see the module docstring).
# The error columns and the rest, shared by both: a cancel requested wins over the error.
_OR_CANCELLED = """
    error = CASE WHEN j.cancel_requested THEN 'cancelled while running' ELSE %(error)s END,
    error_type = CASE WHEN j.cancel_requested THEN 'JobCancelled' ELSE %(error_type)s END,
    traceback = CASE WHEN j.cancel_requested THEN j.traceback ELSE %(traceback)s END,
    lease_expires_at = NULL
FROM held WHERE j.seq = held.seq
RETURNING j.cancel_requested
"""
# A job waiting for its retry has no progress: the next attempt starts from 0. One that
# ends CANCELLED keeps its last report, as every ended job does.
FAIL_RETRY = _HELD + """
UPDATE {s}.jobs AS j SET status = CASE WHEN j.cancel_requested THEN 'cancelled' ELSE 'scheduled' END,
    run_at = CASE WHEN j.cancel_requested THEN j.run_at ELSE %(retry_at)s END,
    completed_at = CASE WHEN j.cancel_requested THEN %(now)s ELSE j.completed_at END,
    progress = CASE WHEN j.cancel_requested THEN j.progress ELSE 0 END,
    progress_message = CASE WHEN j.cancel_requested THEN j.progress_message ELSE '' END,
    progress_details = CASE WHEN j.cancel_requested THEN j.progress_details ELSE '{{}}' END,""" + _OR_CANCELLED
FAIL_FINAL = _HELD + """
UPDATE {s}.jobs AS j SET status = CASE WHEN j.cancel_requested THEN 'cancelled' ELSE 'failed' END,
    completed_at = %(now)s,""" + _OR_CANCELLED
# The cascade goes one level per statement: each statement reads job_deps afresh after
# the previous one waited for its locks, so a dependent committed meanwhile is seen.
SELECT_DEPENDENTS = "SELECT DISTINCT job_id FROM {s}.job_deps WHERE depends_on = ANY(%s)"
CANCEL_DEPENDENTS = """
WITH doomed AS (
    SELECT seq FROM {s}.jobs WHERE id = ANY(%(ids)s) AND COALESCE(status, '') IN ('pending', 'scheduled')
    ORDER BY seq FOR UPDATE
)
UPDATE {s}.jobs AS j SET status = 'cancelled', completed_at = %(now)s, error = %(error)s,
    error_type = 'DependencyFailed'
FROM doomed WHERE j.seq = doomed.seq
RETURNING j.id
"""
CANCEL_WAITING = """
WITH waiting AS (
    SELECT seq FROM {s}.jobs WHERE id = %(id)s AND status IN ('pending', 'scheduled') FOR UPDATE
)
UPDATE {s}.jobs AS j SET status = 'cancelled', completed_at = %(now)s, error = %(reason)s,
    error_type = 'JobCancelled'
FROM waiting WHERE j.seq = waiting.seq
"""
# cancel() locks the job's row first and decides on the status it finds: two statements
# that each looked for the status they act on (pending or scheduled, then running) could
# both miss a job that went from one to the other between them (a retry recorded: running
# to scheduled), and cancel() returned False for an unfinished job. FOR UPDATE: cancelling
# may end the job (see the module docstring); it waits for a transition under way and
# returns the row as that transition left it.
LOCK_FOR_CANCEL = "SELECT status FROM {s}.jobs WHERE id = %s FOR UPDATE"
REQUEST_CANCEL = "UPDATE {s}.jobs SET cancel_requested = TRUE WHERE id = %s AND status = 'running'"
SELECT_UNIQUE_HOLDER = f"""
SELECT other.id FROM {{s}}.jobs AS j JOIN {{s}}.jobs AS other ON other.unique_key = j.unique_key
WHERE j.id = %s AND other.id <> j.id AND other.status IN {_UNFINISHED}
"""
LOCK_JOB_DEPENDENCIES = """
SELECT p.status FROM {s}.job_deps AS d JOIN {s}.jobs AS p ON p.id = d.depends_on
WHERE d.job_id = %s ORDER BY p.seq FOR KEY SHARE OF p
"""
REQUEUE = f"""
UPDATE {{s}}.jobs SET status = 'pending', attempts = 0, run_at = NULL, started_at = NULL,
    completed_at = NULL, error = NULL, error_type = NULL, traceback = NULL, progress = 0,
    progress_message = '', progress_details = '{{{{}}}}', worker_id = NULL,
    cancel_requested = FALSE, blocked = %s
WHERE id = %s AND status IN ('failed', 'cancelled') AND cron IS NULL
  AND (started_at IS NOT NULL
       OR NOT EXISTS (SELECT 1 FROM unnest({{s}}.jobs.depends_on) AS d(id)
                      WHERE NOT EXISTS (SELECT 1 FROM {{s}}.jobs AS p WHERE p.id = d.id)))
RETURNING {ENTRY}
"""
UPDATE_PROGRESS = f"""
UPDATE {{s}}.jobs SET progress = %(progress)s, progress_message = %(message)s,
    progress_details = %(details)s
WHERE {_HELD_WHERE}
"""
# SKIP LOCKED: a heartbeat never waits. A row locked now is being settled by its own
# worker (or briefly by a claimer that lost the race); waiting for it would let a
# heartbeat and a settlement of the same worker lock two rows in opposite orders, a
# deadlock PostgreSQL breaks only after deadlock_timeout (1 s), long enough to lose
# short leases. The next heartbeat renews what this one skipped.
# The lease counts from when the row is written: a statement that waited behind a lock on
# the table (LOCK TABLE, VACUUM FULL) adds its wait (server time, no clock compared), or
# a lease computed before the wait would be written expired, and taken back beside the
# job still running.
HEARTBEAT = """
WITH beat AS (
    SELECT seq FROM {s}.jobs
    WHERE COALESCE(status, '') = 'running' AND worker_id = %(worker)s AND id = ANY(%(ids)s)
    FOR NO KEY UPDATE SKIP LOCKED
)
UPDATE {s}.jobs AS j
SET lease_expires_at = %(lease)s + EXTRACT(EPOCH FROM clock_timestamp() - statement_timestamp())::float8
FROM beat WHERE j.seq = beat.seq
RETURNING j.id, j.cancel_requested
"""
# Running jobs whose lease is no usable time (see UNUSABLE_TIME_SQL): recovery makes it end
# now rather than take them back at once (their worker may live, and renews it at its next
# heartbeat; the next round takes back the job of a dead one). Returns the old lease too.
END_UNREADABLE_LEASES = f"""
WITH unreadable AS (
    SELECT seq, lease_expires_at FROM {{s}}.jobs
    WHERE status = 'running' AND {UNUSABLE_TIME_SQL.format(column='lease_expires_at')}
    ORDER BY seq FOR UPDATE SKIP LOCKED
)
UPDATE {{s}}.jobs AS j SET lease_expires_at = %(now)s
FROM unreadable WHERE j.seq = unreadable.seq
RETURNING j.id, unreadable.lease_expires_at
"""
# SKIP LOCKED: a row locked by a heartbeat in flight is alive; another manager already
# recovering a row needs no help.
# A job taken back to run again has no progress, as after FAIL_RETRY; one that ends
# FAILED or CANCELLED keeps its lost attempt's last report.
RECOVER_EXPIRED = f"""
WITH expired AS (
    SELECT seq FROM {{s}}.jobs WHERE status = 'running' AND lease_expires_at < %(now)s
    ORDER BY seq FOR UPDATE SKIP LOCKED
)
UPDATE {{s}}.jobs AS j
SET status = CASE WHEN j.cancel_requested THEN 'cancelled'
                  WHEN j.attempts > j.max_retries THEN 'failed' ELSE 'pending' END,
    completed_at = CASE WHEN j.cancel_requested OR j.attempts > j.max_retries THEN %(now)s END,
    error = 'worker ' || j.worker_id || ' lost its lease on attempt ' || j.attempts,
    error_type = CASE WHEN j.cancel_requested THEN 'JobCancelled' ELSE 'WorkerLost' END,
    progress = CASE WHEN j.cancel_requested OR j.attempts > j.max_retries THEN j.progress ELSE 0 END,
    progress_message = CASE WHEN j.cancel_requested OR j.attempts > j.max_retries
                            THEN j.progress_message ELSE '' END,
    progress_details = CASE WHEN j.cancel_requested OR j.attempts > j.max_retries
                            THEN j.progress_details ELSE '{{{{}}}}' END,
    lease_expires_at = NULL
FROM expired WHERE j.seq = expired.seq
RETURNING {_J_ENTRY}, j.status, j.error
"""
EXPIRE_WORKER = "UPDATE {s}.jobs SET lease_expires_at = %s WHERE status = 'running' AND worker_id = %s"
DELETE_FINISHED = """
DELETE FROM {s}.jobs
WHERE status IN ('completed', 'failed', 'cancelled') AND (%(all)s OR completed_at < %(before)s)
RETURNING id
"""
DELETE_LOGS = "DELETE FROM {s}.job_logs WHERE job_id = ANY(%s)"
DELETE_DEPS = "DELETE FROM {s}.job_deps WHERE job_id = ANY(%s) OR depends_on = ANY(%s)"
ADVANCE_SCHEDULE = """
UPDATE {s}.jobs SET run_at = %s
WHERE id = %s AND status = 'scheduled' AND cron IS NOT NULL AND run_at = %s
"""
# A schedule that can never fire (ScheduleFirer.fire), ended as SQLite's FAIL_CORRUPT ends it.
FAIL_SCHEDULE = """
UPDATE {s}.jobs SET status = 'failed', completed_at = %s, error = %s, error_type = 'CorruptJob',
    worker_id = NULL, lease_expires_at = NULL
WHERE id = %s AND status = 'scheduled' AND cron IS NOT NULL
"""
REGISTER_WORKER = """
INSERT INTO {s}.jobcore_workers (worker_id, host, pid, started_at, heartbeat_at, running, lease_timeout)
VALUES (%s, %s, %s, %s, %s, ARRAY[]::TEXT[], %s)
ON CONFLICT (worker_id) DO UPDATE SET host = EXCLUDED.host, pid = EXCLUDED.pid,
    started_at = EXCLUDED.started_at, heartbeat_at = EXCLUDED.heartbeat_at, running = EXCLUDED.running,
    lease_timeout = EXCLUDED.lease_timeout
"""
BEAT_WORKER = "UPDATE {s}.jobcore_workers SET heartbeat_at = %s, running = %s WHERE worker_id = %s"
UNREGISTER_WORKER = "DELETE FROM {s}.jobcore_workers WHERE worker_id = %s"
LIST_WORKERS = """
SELECT worker_id, host, pid, started_at, heartbeat_at, running, lease_timeout FROM {s}.jobcore_workers
ORDER BY started_at, worker_id
"""
# (now, before): an entry with its own lease is silent once older than now - lease; one
# without (or with no `now` given: NULL - lease is NULL) once older than `before`.
REAP_WORKERS = """
DELETE FROM {s}.jobcore_workers
WHERE heartbeat_at < COALESCE(%s::DOUBLE PRECISION - lease_timeout, %s) RETURNING worker_id
"""

_NAMES = [name for name, value in list(globals().items())
          if name.isupper() and isinstance(value, str) and "{s}" in value]


class Statements:
    """Every SQL constant here, and the schema's DDL, with `{s}` filled in for one schema."""

    CREATE_META: list[str]
    CREATE_SCHEMA: list[str]
    MIGRATIONS: dict[int, list[str]]
    LIST: dict[str, dict[tuple[Optional[str], bool], str]]

    def __init__(self, schema: str) -> None:
        quoted = ddl.quote_identifier(schema)
        self.schema = schema
        for name in _NAMES:
            setattr(self, name, globals()[name].format(s=quoted))
        self.SELECT_VERSION = ddl.SELECT_VERSION.format(s=quoted)
        self.STORE_VERSION = ddl.STORE_VERSION.format(s=quoted)
        self.CREATE_NAMESPACE = ddl.CREATE_NAMESPACE.format(s=quoted)
        self.CREATE_META = [statement.format(s=quoted) for statement in ddl.CREATE_META]
        self.CREATE_SCHEMA = [statement.format(s=quoted) for statement in ddl.CREATE_SCHEMA]
        self.MIGRATIONS = {version: [statement.format(s=quoted) for statement in steps]
                           for version, steps in ddl.MIGRATIONS.items()}
        self.LIST = {columns: {key: text.format(s=quoted) for key, text in texts.items()}
                     for columns, texts in LIST.items()}

    def __getattr__(self, name: str) -> str:  # reached only for a name __init__ did not set
        raise AttributeError(f"no SQL statement named {name!r}")
