"""The SQL of a job's own path on PostgreSQL, as named constants: its insert (a schedule's
run too), claim, progress and heartbeat, the settlement of its attempt, the release or
cancellation of its dependents, and its cancel and requeue on request. Not reads, listing,
counts, logs, recovery, cleanup, schedules or the worker registry (queries'), and no
formatting: `{s}` stands for the quoted PostgreSQL schema, filled in by `queries.Statements`.

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
  Outcomes that end jobs in more than one statement (completions, then failures) lock
  them all in `seq` order first (LOCK_HELD): each statement in order, a completion locked
  a later job before a failure locked an earlier one that an insert of their dependents
  held, while that insert waited for the later one (1-2 s, 3 runs in 3). So do the
  dependents that several failures cancel, one job's after another's (LOCK_DEPENDENTS;
  deeper levels of a cascade are still locked level by level).
"""

from __future__ import annotations

from ..repository.columns import JOB_COLUMNS as COLUMNS  # the order the row decoders unpack
from ..repository.columns import UNUSABLE_TIME_SQL

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
# The same job stored already claimed by an idle worker of the enqueuing manager (its first
# attempt: a hand-off), one round trip where an INSERT and a claim were two. No NOTIFY: no
# other manager can take it.
INSERT_CLAIMED = INSERT_JOB.replace(
    "completed_at, memory_limit)", "completed_at, memory_limit, started_at, worker_id, lease_expires_at, attempts)",
    1).replace("%s, %s, %s)", "%s, %s, %s, %s, %s, %s, 1)", 1)
assert INSERT_CLAIMED.count("%s") == INSERT_JOB.count("%s") + 3 and "attempts" in INSERT_CLAIMED
# For batches with a unique_key: a job whose key another transaction took since the
# insert looked (SELECT_UNFINISHED_BY_KEYS) is not inserted and returns no row, and the
# insert runs again to find that holder. Not an error: inserts are pipelined, and psycopg
# logs a WARNING for an error inside a pipeline even when the caller handles it. Batches
# without keys keep INSERT_JOB: ON CONFLICT makes every row a speculative insertion.
INSERT_JOB_KEYED = INSERT_JOB.replace("RETURNING seq", f"""ON CONFLICT (unique_key)
    WHERE unique_key IS NOT NULL AND status IN {_UNFINISHED} DO NOTHING
RETURNING seq""")
# One job whose only check against other rows is its unique_key, alone: INSERT_ALONE that
# stores nothing and tells no one when an unfinished job holds the key (or returns no row
# as a batch's INSERT_JOB_KEYED does); the holder is then read. Most keys are free: one
# round trip where a transaction took seven (BEGIN, its settings, the key's lookup, the
# lock of the rows it found, the INSERT, NOTIFY, COMMIT): 866 keyed enqueues a second
# became about 4,000, as many as plain ones.
INSERT_ALONE_KEYED = ("WITH added AS (" + INSERT_JOB_KEYED.strip()
                      + ") SELECT seq, pg_notify('jobcore_jobs', %s) FROM added")
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

# A scheduled job is due at its time, or at once if that is no usable time (infinity, NaN:
# see UNUSABLE_TIME_SQL): the claim reads its row, whose decode error fails it as CorruptJob.
_DUE = f"(run_at <= %(now)s OR {UNUSABLE_TIME_SQL.format(column='run_at')})"

# Claims by id; with `top_up`, ids that went stale (other processes took those jobs) are
# made up, to `up_to` claims in all, with the best ready jobs naming `names`, in priority
# then FIFO order: each function's range of jobs_ready is walked in order, rows other
# claimers hold skipped, and the best of what each gave are taken (rows one function's
# walk locked beyond those stay locked until this statement's transaction ends).
# One statement: `extra` sees what `wanted` locked, so nothing is claimed twice.
# The rows are updated by `seq = ANY(ARRAY(...))`, an index lookup of each whatever the
# statistics: the plan made for any values (an exchange's, see database._GENERIC_PLANS)
# cannot know the top-up's number, counts it at a tenth of the queue, and with
# `seq IN (...)` joined the claimed seqs to every job by a hash over a sequential scan
# (EXPLAIN ANALYZE with 20,000 jobs queued: 7.6 ms for a claim of 8; 0.34 ms now).
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
WHERE j.seq = ANY(ARRAY(SELECT seq FROM wanted UNION ALL SELECT seq FROM extra))
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
# The running jobs of a worker about to end, locked in `seq` order: outcomes that end
# them in more than one statement take these locks first (see the module docstring).
LOCK_HELD = """
SELECT 1 FROM {s}.jobs WHERE id = ANY(%s) AND COALESCE(status, '') = 'running' AND worker_id = %s
ORDER BY seq FOR UPDATE
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
# The dependents are found by `id = ANY(ARRAY(...))`, an index lookup of each: the generic
# plan an exchange runs (database._GENERIC_PLANS), made on a small table (its first
# exchanges), otherwise joined them to every job by a hash over the whole index on ids,
# and kept doing so with thousands queued.
# The links are read by the key of each job completed (`OFFSET 0` keeps the lateral read
# apart, once per id): on `depends_on = ANY(...)` the generic plan, estimating from the
# statistics of a store that had held one fan-out (one id in every link) that every link
# matched, walked the whole index on job_id, as its groups want them; 20,000 links kept
# (cancelled dependents, say) made each exchange read them all, 6-9 ms, and a drain of
# plain jobs 4 times slower (25 times at 100,000).
# Each dependent's links to the jobs completed are then read by its own id (`counted`):
# joined to the links read above, a set the generic plan expects to hold one row, they
# were scanned again for each dependent (a nested loop over the CTE), so releasing the N
# dependents of one job cost N squared: 8,000 took 9 s (0.17 s since), while the
# manager's exchanges waited.
RELEASE_DEPENDENTS_MANY = f"""
WITH dependents AS (
    SELECT j.seq, j.id FROM {{s}}.jobs AS j
    WHERE j.id = ANY(ARRAY(
        SELECT d.job_id FROM unnest(%(done)s::TEXT[]) AS c(id)
        CROSS JOIN LATERAL (SELECT job_id FROM {{s}}.job_deps WHERE depends_on = c.id OFFSET 0) AS d))
      AND COALESCE(j.status, '') IN ('pending', 'scheduled')
    ORDER BY j.seq FOR NO KEY UPDATE OF j
), counted AS (
    SELECT w.seq, c.n, c.completed FROM dependents AS w CROSS JOIN LATERAL (
        SELECT COUNT(*) AS n, ARRAY_AGG(d.depends_on) AS completed FROM {{s}}.job_deps AS d
        WHERE d.job_id = w.id AND d.depends_on = ANY(%(done)s::TEXT[])) AS c
    WHERE c.n > 0
)
UPDATE {{s}}.jobs AS j SET blocked = GREATEST(j.blocked - counted.n, 0)
FROM counted WHERE j.seq = counted.seq
RETURNING {_J_ENTRY}, j.blocked, counted.completed
"""
FINISH_CANCELLED = _HELD + """
UPDATE {s}.jobs AS j SET status = 'cancelled', completed_at = %(now)s,
    error = 'cancelled while running', error_type = 'JobCancelled', lease_expires_at = NULL
FROM held WHERE j.seq = held.seq
"""
# Failed attempts of one worker, one statement for all: each a retry (a retry_at given:
# SCHEDULED then) or a failure for good (none: FAILED, the dead-letter queue), its rows
# locked in the order of their seqs, as COMPLETE_MANY locks them. A job whose cancellation
# was requested (cancel() returned True while the outcome was on its way: the worker had
# not heard of it, or the attempt had already ended or timed out) ends CANCELLED, as
# FINISH_CANCELLED leaves it: no retry, no dead letter. The SET reads each row as the lock
# found it (a cancel request committed meanwhile is seen), and RETURNING tells which it
# did. A retry takes FOR UPDATE too, since it may end the job (see the module docstring).
# A job waiting for its retry has no progress: the next attempt starts from 0. One that
# ends keeps its last report, as every ended job does. One statement per failed job, with
# its note and its look for dependents, made a failure storm pay three round trips a job
# (1,700 failing jobs drained a second against 4,500 that complete).
FAIL_MANY = """
WITH given AS (
    SELECT * FROM unnest(%(ids)s::TEXT[], %(attempts)s::INTEGER[], %(retry_at)s::DOUBLE PRECISION[],
                         %(errors)s::TEXT[], %(error_types)s::TEXT[], %(tracebacks)s::TEXT[])
        AS given(id, attempt, retry_at, error, error_type, traceback)
), held AS (
    SELECT j.seq, given.retry_at, given.error, given.error_type, given.traceback
    FROM {s}.jobs AS j JOIN given ON j.id = given.id
    WHERE COALESCE(j.status, '') = 'running' AND j.worker_id = %(worker)s AND j.attempts = given.attempt
    ORDER BY j.seq FOR UPDATE OF j
)
UPDATE {s}.jobs AS j SET
    status = CASE WHEN j.cancel_requested THEN 'cancelled' WHEN held.retry_at IS NULL THEN 'failed'
                  ELSE 'scheduled' END,
    run_at = CASE WHEN j.cancel_requested OR held.retry_at IS NULL THEN j.run_at ELSE held.retry_at END,
    completed_at = CASE WHEN j.cancel_requested OR held.retry_at IS NULL THEN %(now)s ELSE j.completed_at END,
    progress = CASE WHEN j.cancel_requested OR held.retry_at IS NULL THEN j.progress ELSE 0 END,
    progress_message = CASE WHEN j.cancel_requested OR held.retry_at IS NULL THEN j.progress_message
                            ELSE '' END,
    progress_details = CASE WHEN j.cancel_requested OR held.retry_at IS NULL THEN j.progress_details
                            ELSE '{{}}' END,
    error = CASE WHEN j.cancel_requested THEN 'cancelled while running' ELSE held.error END,
    error_type = CASE WHEN j.cancel_requested THEN 'JobCancelled' ELSE held.error_type END,
    traceback = CASE WHEN j.cancel_requested THEN j.traceback ELSE held.traceback END,
    lease_expires_at = NULL
FROM held WHERE j.seq = held.seq
RETURNING j.id, j.cancel_requested
"""
# The cascade goes one level per statement: each statement reads job_deps afresh after
# the previous one waited for its locks, so a dependent committed meanwhile is seen.
SELECT_DEPENDENTS = "SELECT DISTINCT job_id FROM {s}.job_deps WHERE depends_on = ANY(%s)"
# The waiting dependents of several jobs that ended for good, locked in `seq` order before
# each job's cascade cancels its own (one job after another: out of `seq` order, as the
# outcomes in LOCK_HELD were).
LOCK_DEPENDENTS = """
SELECT 1 FROM {s}.jobs WHERE id IN (SELECT job_id FROM {s}.job_deps WHERE depends_on = ANY(%s))
    AND COALESCE(status, '') IN ('pending', 'scheduled')
ORDER BY seq FOR UPDATE
"""
# Which of these jobs have dependents (most have none): only those need the cascade.
SELECT_DEPENDED_ON = "SELECT DISTINCT depends_on FROM {s}.job_deps WHERE depends_on = ANY(%s)"
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
  AND (blocked = 0
       OR NOT EXISTS (SELECT 1 FROM unnest({{s}}.jobs.depends_on) AS d(id)
                      WHERE NOT EXISTS (SELECT 1 FROM {{s}}.jobs AS p WHERE p.id = d.id)))
RETURNING {ENTRY}
"""
UPDATE_PROGRESS = f"""
UPDATE {{s}}.jobs SET progress = %(progress)s, progress_message = %(message)s,
    progress_details = %(details)s
WHERE {_HELD_WHERE}
"""
# Read only (`cancels_requested`): the housekeeper asks at its looks when the store changed.
CANCELS_REQUESTED = """
SELECT id FROM {s}.jobs
WHERE COALESCE(status, '') = 'running' AND worker_id = %(worker)s AND id = ANY(%(ids)s) AND cancel_requested
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
