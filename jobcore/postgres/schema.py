"""The PostgreSQL schema of jobcore and the SQL its repository runs, as named constants.

No code runs here beyond formatting; `postgres.repository` executes these. Every table
lives in one PostgreSQL schema (`jobcore` unless told otherwise), written `{s}` below and
filled in, quoted, by `statements(schema)`, so no query depends on `search_path`.
Schema changes bump `SCHEMA_VERSION` and add a step to `MIGRATIONS`.

Row locks, and why (READ COMMITTED; `jobs` rows):
- A claim takes `FOR NO KEY UPDATE SKIP LOCKED`: two managers claiming one job never
  wait on each other, the loser simply gets nothing.
- Inserting a job that depends on stored jobs takes `FOR KEY SHARE` on them, and every
  transition that ends a job (complete, final fail, cancel, recovery to FAILED, cascade)
  takes `FOR UPDATE` first. The two conflict, so a dependency cannot end between the
  moment an insert reads its status and the moment the dependent's `job_deps` row
  commits (which would leave the dependent blocked forever); claims (`NO KEY UPDATE`) do
  not conflict with `KEY SHARE`, so inserts never make a claim skip a job.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

# One statement per item: run in order inside one transaction by the migrator.
# IDENTITY (not a sequence default nobody owns): seq orders FIFO among equal priorities.
CREATE_SCHEMA = [
    "CREATE SCHEMA IF NOT EXISTS {s}",
    """
CREATE TABLE IF NOT EXISTS {s}.jobcore_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
)""",
    """
CREATE TABLE IF NOT EXISTS {s}.jobs (
    seq              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id               TEXT NOT NULL UNIQUE,
    function_name    TEXT NOT NULL,
    name             TEXT NOT NULL,
    payload          TEXT NOT NULL,
    priority         BIGINT NOT NULL,
    status           TEXT NOT NULL,
    blocked          INTEGER NOT NULL DEFAULT 0,
    created_at       DOUBLE PRECISION NOT NULL,
    scheduled_at     DOUBLE PRECISION,
    run_at           DOUBLE PRECISION,
    started_at       DOUBLE PRECISION,
    completed_at     DOUBLE PRECISION,
    attempts         INTEGER NOT NULL DEFAULT 0,
    max_retries      BIGINT NOT NULL,
    retry_delay      DOUBLE PRECISION NOT NULL,
    retry_backoff    DOUBLE PRECISION NOT NULL,
    retry_jitter     BOOLEAN NOT NULL,
    timeout          DOUBLE PRECISION,
    tags             TEXT[] NOT NULL DEFAULT ARRAY[]::TEXT[],
    metadata         TEXT NOT NULL DEFAULT '{{}}',
    owner            TEXT,
    unique_key       TEXT,
    isolation        TEXT NOT NULL DEFAULT 'thread',
    depends_on       TEXT[] NOT NULL DEFAULT ARRAY[]::TEXT[],
    progress         DOUBLE PRECISION NOT NULL DEFAULT 0,
    progress_message TEXT NOT NULL DEFAULT '',
    progress_details TEXT NOT NULL DEFAULT '{{}}',
    result           TEXT,
    error            TEXT,
    error_type       TEXT,
    traceback        TEXT,
    worker_id        TEXT,
    lease_expires_at DOUBLE PRECISION,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    cron             TEXT,
    cron_timezone    TEXT,
    schedule_id      TEXT,
    fire_at          DOUBLE PRECISION,
    CONSTRAINT jobs_status_valid CHECK (status IN
        ('pending', 'scheduled', 'running', 'completed', 'failed', 'cancelled'))
)""",
    # The ready queue: claimable jobs in the order they run.
    """CREATE INDEX IF NOT EXISTS jobs_ready ON {s}.jobs (priority DESC, seq)
    WHERE status = 'pending' AND blocked = 0""",
    # Timers: scheduled jobs by due time.
    "CREATE INDEX IF NOT EXISTS jobs_due ON {s}.jobs (run_at, seq) WHERE status = 'scheduled'",
    # Leases: running jobs by worker (heartbeats) and by expiry (recovery).
    "CREATE INDEX IF NOT EXISTS jobs_running_worker ON {s}.jobs (worker_id) WHERE status = 'running'",
    "CREATE INDEX IF NOT EXISTS jobs_lease ON {s}.jobs (lease_expires_at) WHERE status = 'running'",
    "CREATE INDEX IF NOT EXISTS jobs_status ON {s}.jobs (status, seq)",
    "CREATE INDEX IF NOT EXISTS jobs_owner ON {s}.jobs (owner, seq) WHERE owner IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS jobs_tags ON {s}.jobs USING GIN (tags)",
    """CREATE INDEX IF NOT EXISTS jobs_finished ON {s}.jobs (completed_at)
    WHERE status IN ('completed', 'failed', 'cancelled')""",
    # At most one unfinished job per unique_key.
    """CREATE UNIQUE INDEX IF NOT EXISTS jobs_unique ON {s}.jobs (unique_key)
    WHERE unique_key IS NOT NULL AND status IN ('pending', 'scheduled', 'running')""",
    # At most one run per schedule and fire time, whatever the processes do.
    """CREATE UNIQUE INDEX IF NOT EXISTS jobs_fire ON {s}.jobs (schedule_id, fire_at)
    WHERE schedule_id IS NOT NULL""",
    """
CREATE TABLE IF NOT EXISTS {s}.job_deps (
    job_id     TEXT NOT NULL,
    depends_on TEXT NOT NULL,
    PRIMARY KEY (depends_on, job_id)
)""",
    "CREATE INDEX IF NOT EXISTS job_deps_job ON {s}.job_deps (job_id)",
    """
CREATE TABLE IF NOT EXISTS {s}.job_logs (
    id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id  TEXT NOT NULL,
    at      DOUBLE PRECISION NOT NULL,
    level   TEXT NOT NULL,
    message TEXT NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS job_logs_job ON {s}.job_logs (job_id, id)",
    """
CREATE TABLE IF NOT EXISTS {s}.jobcore_workers (
    worker_id    TEXT PRIMARY KEY,
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    started_at   DOUBLE PRECISION NOT NULL,
    heartbeat_at DOUBLE PRECISION NOT NULL,
    running      TEXT[] NOT NULL DEFAULT ARRAY[]::TEXT[]
)""",
]

# Migrations from version N to N + 1: lists of statements, run in order inside the
# migrator's transaction (under its advisory lock), after CREATE_SCHEMA.
MIGRATIONS: dict[int, list[str]] = {}

# Serialises migrators of one schema across processes (two CREATE TABLE IF NOT EXISTS
# racing can both try to create the row type and one fails on a unique violation).
LOCK_SCHEMA = "SELECT pg_advisory_xact_lock(hashtext('jobcore schema ' || %s))"
SELECT_VERSION = "SELECT value FROM {s}.jobcore_meta WHERE key = 'schema_version'"
STORE_VERSION = """
INSERT INTO {s}.jobcore_meta (key, value) VALUES ('schema_version', %s)
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value
"""

# Wakes idle managers (every process LISTENing on the channel); the payload names the
# schema so that several jobcore schemas can share a database. Delivered on commit.
CHANNEL = "jobcore_jobs"
NOTIFY = "SELECT pg_notify('jobcore_jobs', %s)"

COLUMNS = (
    "id, function_name, name, payload, priority, status, seq, created_at, scheduled_at, run_at,"
    " started_at, completed_at, attempts, max_retries, retry_delay, retry_backoff, retry_jitter,"
    " timeout, tags, metadata, owner, unique_key, isolation, depends_on, blocked, progress,"
    " progress_message, progress_details, result, error, error_type, traceback, worker_id,"
    " lease_expires_at, cancel_requested, cron, cron_timezone"
)
_J_COLUMNS = ", ".join(f"j.{column.strip()}" for column in COLUMNS.split(","))
ENTRY = "id, priority, seq, run_at, function_name, cron IS NOT NULL"
_J_ENTRY = "j.id, j.priority, j.seq, j.run_at, j.function_name, j.cron IS NOT NULL"
_UNFINISHED = "('pending', 'scheduled', 'running')"

INSERT_JOB = """
INSERT INTO {s}.jobs (id, function_name, name, payload, priority, status, blocked, created_at,
    scheduled_at, run_at, max_retries, retry_delay, retry_backoff, retry_jitter, timeout, tags,
    metadata, owner, unique_key, isolation, depends_on, cron, cron_timezone, error, error_type,
    completed_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,
    %s, %s, %s, %s)
RETURNING seq
"""
INSERT_RUN = """
INSERT INTO {s}.jobs (id, function_name, name, payload, priority, status, blocked, created_at,
    scheduled_at, run_at, max_retries, retry_delay, retry_backoff, retry_jitter, timeout, tags,
    metadata, owner, unique_key, isolation, depends_on, cron, cron_timezone, error, error_type,
    completed_at, schedule_id, fire_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,
    %s, %s, %s, %s, %s, %s)
ON CONFLICT (schedule_id, fire_at) WHERE schedule_id IS NOT NULL DO NOTHING
RETURNING seq
"""
INSERT_DEP = "INSERT INTO {s}.job_deps (job_id, depends_on) VALUES (%s, %s) ON CONFLICT DO NOTHING"
# KEY SHARE: see the module docstring. ORDER BY id: every locker takes rows in one order.
LOCK_DEPENDENCIES = """
SELECT id, status, name FROM {s}.jobs WHERE id = ANY(%s) ORDER BY id FOR KEY SHARE
"""
SELECT_UNFINISHED_BY_KEYS = f"""
SELECT unique_key, id FROM {{s}}.jobs WHERE unique_key = ANY(%s) AND status IN {_UNFINISHED}
"""
SELECT_JOB = f"SELECT {COLUMNS} FROM {{s}}.jobs WHERE id = %s"
SELECT_STATUS = "SELECT status, name FROM {s}.jobs WHERE id = %s"
SELECT_READY = f"""
SELECT {ENTRY} FROM {{s}}.jobs
WHERE status = 'pending' AND blocked = 0 AND (%(any)s OR function_name = ANY(%(names)s))
ORDER BY priority DESC, seq LIMIT %(limit)s
"""
SELECT_SCHEDULED = f"""
SELECT {ENTRY} FROM {{s}}.jobs
WHERE status = 'scheduled' AND blocked = 0
  AND (%(any)s OR function_name = ANY(%(names)s) OR cron IS NOT NULL)
ORDER BY run_at, seq LIMIT %(limit)s
"""
LIST_JOBS = f"""
SELECT {COLUMNS} FROM {{s}}.jobs
WHERE (%(status)s::TEXT IS NULL OR status = %(status)s)
  AND (%(owner)s::TEXT IS NULL OR owner = %(owner)s)
  AND tags @> %(tags)s::TEXT[]
ORDER BY seq DESC LIMIT %(limit)s OFFSET %(offset)s
"""
COUNT_BY_STATUS = "SELECT status, COUNT(*) FROM {s}.jobs GROUP BY status"
SELECT_LOGS = "SELECT at, level, message FROM {s}.job_logs WHERE job_id = %s ORDER BY id"
INSERT_LOG = "INSERT INTO {s}.job_logs (job_id, at, level, message) VALUES (%s, %s, %s, %s)"

CLAIM = f"""
WITH target AS (
    SELECT seq FROM {{s}}.jobs
    WHERE id = %(id)s AND blocked = 0 AND cron IS NULL
      AND (status = 'pending' OR (status = 'scheduled' AND run_at <= %(now)s))
    FOR NO KEY UPDATE SKIP LOCKED
)
UPDATE {{s}}.jobs AS j SET status = 'running', attempts = j.attempts + 1, started_at = %(now)s,
    worker_id = %(worker)s, lease_expires_at = %(lease)s, cancel_requested = FALSE
FROM target WHERE j.seq = target.seq
RETURNING {_J_COLUMNS}
"""
# Several at once, best first (the order only decides which rows are locked first).
CLAIM_MANY = f"""
WITH target AS (
    SELECT seq FROM {{s}}.jobs
    WHERE id = ANY(%(ids)s) AND blocked = 0 AND cron IS NULL
      AND (status = 'pending' OR (status = 'scheduled' AND run_at <= %(now)s))
    ORDER BY priority DESC, seq
    FOR NO KEY UPDATE SKIP LOCKED
)
UPDATE {{s}}.jobs AS j SET status = 'running', attempts = j.attempts + 1, started_at = %(now)s,
    worker_id = %(worker)s, lease_expires_at = %(lease)s, cancel_requested = FALSE
FROM target WHERE j.seq = target.seq
RETURNING {_J_COLUMNS}
"""
_HELD_WHERE = "id = %(id)s AND status = 'running' AND worker_id = %(worker)s AND attempts = %(attempt)s"
RELEASE = f"""
UPDATE {{s}}.jobs SET status = 'pending', attempts = attempts - 1, worker_id = NULL,
    lease_expires_at = NULL, cancel_requested = FALSE
WHERE {_HELD_WHERE}
"""
# A running job held by (worker_id, attempts), locked FOR UPDATE: it is about to end.
_HELD = f"""
WITH held AS (SELECT seq FROM {{s}}.jobs WHERE {_HELD_WHERE} FOR UPDATE)
"""
COMPLETE = _HELD + """
UPDATE {s}.jobs AS j SET status = 'completed', result = %(result)s, completed_at = %(now)s,
    progress = 1.0, lease_expires_at = NULL, error = NULL, error_type = NULL, traceback = NULL
FROM held WHERE j.seq = held.seq
"""
RELEASE_DEPENDENTS = f"""
UPDATE {{s}}.jobs AS j SET blocked = GREATEST(j.blocked - 1, 0)
FROM {{s}}.job_deps AS d
WHERE d.depends_on = %s AND j.id = d.job_id AND j.status IN ('pending', 'scheduled')
RETURNING {_J_ENTRY}, j.blocked
"""
FAIL_RETRY = f"""
UPDATE {{s}}.jobs SET status = 'scheduled', run_at = %(retry_at)s, error = %(error)s,
    error_type = %(error_type)s, traceback = %(traceback)s, lease_expires_at = NULL
WHERE {_HELD_WHERE}
"""
FAIL_FINAL = _HELD + """
UPDATE {s}.jobs AS j SET status = 'failed', completed_at = %(now)s, error = %(error)s,
    error_type = %(error_type)s, traceback = %(traceback)s, lease_expires_at = NULL
FROM held WHERE j.seq = held.seq
"""
FINISH_CANCELLED = _HELD + """
UPDATE {s}.jobs AS j SET status = 'cancelled', completed_at = %(now)s,
    error = 'cancelled while running', error_type = 'JobCancelled', lease_expires_at = NULL
FROM held WHERE j.seq = held.seq
"""
# The cascade goes one level per statement: each statement reads job_deps afresh after
# the previous one waited for its locks, so a dependent committed meanwhile is seen.
SELECT_DEPENDENTS = "SELECT DISTINCT job_id FROM {s}.job_deps WHERE depends_on = ANY(%s)"
CANCEL_DEPENDENTS = """
WITH doomed AS (
    SELECT seq FROM {s}.jobs WHERE id = ANY(%(ids)s) AND status IN ('pending', 'scheduled')
    ORDER BY id FOR UPDATE
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
REQUEST_CANCEL = "UPDATE {s}.jobs SET cancel_requested = TRUE WHERE id = %s AND status = 'running'"
SELECT_UNIQUE_HOLDER = f"""
SELECT other.id FROM {{s}}.jobs AS j JOIN {{s}}.jobs AS other ON other.unique_key = j.unique_key
WHERE j.id = %s AND other.id <> j.id AND other.status IN {_UNFINISHED}
"""
LOCK_JOB_DEPENDENCIES = """
SELECT p.status FROM {s}.job_deps AS d JOIN {s}.jobs AS p ON p.id = d.depends_on
WHERE d.job_id = %s ORDER BY p.id FOR KEY SHARE OF p
"""
REQUEUE = f"""
UPDATE {{s}}.jobs SET status = 'pending', attempts = 0, run_at = NULL, started_at = NULL,
    completed_at = NULL, error = NULL, error_type = NULL, traceback = NULL, progress = 0,
    progress_message = '', progress_details = '{{{{}}}}', worker_id = NULL,
    cancel_requested = FALSE, blocked = %s
WHERE id = %s AND status IN ('failed', 'cancelled')
RETURNING {ENTRY}
"""
UPDATE_PROGRESS = f"""
UPDATE {{s}}.jobs SET progress = %(progress)s, progress_message = %(message)s,
    progress_details = %(details)s
WHERE {_HELD_WHERE}
"""
HEARTBEAT = """
UPDATE {s}.jobs SET lease_expires_at = %s
WHERE status = 'running' AND worker_id = %s AND id = ANY(%s)
RETURNING id, cancel_requested
"""
# SKIP LOCKED: a row locked by a heartbeat in flight is alive; another manager already
# recovering a row needs no help.
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
    lease_expires_at = NULL
FROM expired WHERE j.seq = expired.seq
RETURNING {_J_ENTRY}, j.status, j.error
"""
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
REGISTER_WORKER = """
INSERT INTO {s}.jobcore_workers (worker_id, host, pid, started_at, heartbeat_at, running)
VALUES (%s, %s, %s, %s, %s, ARRAY[]::TEXT[])
ON CONFLICT (worker_id) DO UPDATE SET host = EXCLUDED.host, pid = EXCLUDED.pid,
    started_at = EXCLUDED.started_at, heartbeat_at = EXCLUDED.heartbeat_at, running = EXCLUDED.running
"""
BEAT_WORKER = "UPDATE {s}.jobcore_workers SET heartbeat_at = %s, running = %s WHERE worker_id = %s"
UNREGISTER_WORKER = "DELETE FROM {s}.jobcore_workers WHERE worker_id = %s"
LIST_WORKERS = """
SELECT worker_id, host, pid, started_at, heartbeat_at, running FROM {s}.jobcore_workers
ORDER BY started_at, worker_id
"""
REAP_WORKERS = "DELETE FROM {s}.jobcore_workers WHERE heartbeat_at < %s RETURNING worker_id"

_NAMES = [name for name, value in list(globals().items())
          if name.isupper() and isinstance(value, str) and "{s}" in value]


def quote_identifier(name: str) -> str:
    """`name` as a quoted SQL identifier (validated: letters, digits, `_`, up to 63)."""
    if not isinstance(name, str) or not name or len(name) > 63 or not (
            name.replace("_", "a").isalnum() and name.isascii()) or name[0].isdigit():
        raise ValueError(f"schema must be a plain identifier (letters, digits, _; at most 63),"
                         f" got {name!r}")
    return f'"{name}"'


class Statements:
    """Every SQL constant above with `{s}` filled in for one schema, as attributes."""

    def __init__(self, schema: str) -> None:
        quoted = quote_identifier(schema)
        self.schema = schema
        for name in _NAMES:
            setattr(self, name, globals()[name].format(s=quoted))
        self.CREATE_SCHEMA = [statement.format(s=quoted) for statement in CREATE_SCHEMA]
        self.MIGRATIONS = {version: [statement.format(s=quoted) for statement in steps]
                           for version, steps in MIGRATIONS.items()}
