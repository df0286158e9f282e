"""The PostgreSQL schema of jobcore: tables, indexes, version and migrations. No queries.

Every table lives in one PostgreSQL schema (`jobcore` unless told otherwise), written
`{s}` here and in `queries`, and filled in, quoted, by `queries.Statements`, so nothing
depends on `search_path`. A schema change bumps `SCHEMA_VERSION` and adds the steps from
the previous version to `MIGRATIONS`. `PostgresRepository` reads the version on open,
and whether every table and index of `CREATE_SCHEMA` is there, without a lock, and runs
no DDL when the schema is current and whole; only a schema that is missing, behind or
missing a table or index (dropped by hand) is created, migrated or repaired, under an
advisory lock, in one transaction.
"""

from __future__ import annotations

import re

SCHEMA_VERSION = 5

# Whether the schema, and its version table, exist, and which of `relations` (the tables
# and indexes of CREATE_SCHEMA) it holds: (schema, jobcore_meta, [names]), from the
# catalogs, which any role may read. Asked before reading the version, so that a missing
# table is an answer rather than an error (which would abort the migrator's transaction),
# and so that a current schema with a table or index dropped by hand is repaired (its
# tables fail every call without it, and its queries crawl without an index).
SELECT_SCHEMA_STATE = """
SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = %(schema)s),
       EXISTS (SELECT FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = %(schema)s AND c.relname = 'jobcore_meta'),
       ARRAY(SELECT c.relname::TEXT FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = %(schema)s AND c.relname = ANY(%(relations)s))
"""
# Run only when the schema is missing: PostgreSQL checks the CREATE privilege on the
# database before it looks for the schema, so IF NOT EXISTS alone fails for a role that
# was given a schema (CREATE SCHEMA ... AUTHORIZATION app) but may not create one.
CREATE_NAMESPACE = "CREATE SCHEMA IF NOT EXISTS {s}"
# Created and read before everything else: the schema version decides what else may run
# (a newer jobcore's tables may not take this version's indexes).
CREATE_META = [
    """
CREATE TABLE IF NOT EXISTS {s}.jobcore_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
)""",
]

# One statement per item, run in order by the migrator in its transaction, and only by
# it: every CREATE ... IF NOT EXISTS still needs the CREATE privilege on the schema, and
# CREATE INDEX IF NOT EXISTS takes a SHARE lock on `jobs` even when the index exists (it
# waits for every open write to `jobs`, and every later writer waits behind it).
# IDENTITY (not a sequence default nobody owns): seq orders FIFO among equal priorities.
CREATE_SCHEMA = [
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
    memory_limit     BIGINT,
    CONSTRAINT jobs_status_valid CHECK (status IN
        ('pending', 'scheduled', 'running', 'completed', 'failed', 'cancelled'))
)""",
    # The ready queue: claimable jobs of each function in the order they run. Reads and
    # claims by number walk the range of each function a manager runs, in order, and stop
    # after `limit` rows; they never walk other functions' jobs.
    """CREATE INDEX IF NOT EXISTS jobs_ready ON {s}.jobs (function_name, priority DESC, seq)
    WHERE status = 'pending' AND blocked = 0""",
    # Timers: scheduled jobs of each function by due time, and cron schedules (which any
    # manager fires) by their next fire time.
    "CREATE INDEX IF NOT EXISTS jobs_due ON {s}.jobs (function_name, run_at, seq) WHERE status = 'scheduled'",
    """CREATE INDEX IF NOT EXISTS jobs_schedules ON {s}.jobs (run_at, seq)
    WHERE status = 'scheduled' AND cron IS NOT NULL""",
    # By status, newest first: listing, counting, and finding running leases and finished
    # jobs. Every index costs each claim and completion (a status change rewrites every
    # index entry of the row), so there are no others beyond the constraints below.
    "CREATE INDEX IF NOT EXISTS jobs_status ON {s}.jobs (status, seq)",
    # The dead-letter queue, the most recently failed first (its query's exact order:
    # read in order, the first `limit` rows only, where jobs_status gave every failed job
    # to sort). Only a job entering or leaving FAILED writes it.
    """CREATE INDEX IF NOT EXISTS jobs_failed ON {s}.jobs (completed_at DESC NULLS LAST, seq DESC)
    WHERE status = 'failed'""",
    "CREATE INDEX IF NOT EXISTS jobs_owner ON {s}.jobs (owner, seq) WHERE owner IS NOT NULL",
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
    running      TEXT[] NOT NULL DEFAULT ARRAY[]::TEXT[],
    lease_timeout DOUBLE PRECISION
)""",
]

# The tables and indexes CREATE_SCHEMA makes, by name, read from its statements so that
# a new one cannot be left out: the open checks that each is there (SELECT_SCHEMA_STATE).
# (The indexes of constraints are not named here: CREATE TABLE IF NOT EXISTS would not
# make them again, and PostgreSQL refuses to drop one on its own.)
SCHEMA_RELATIONS: tuple[str, ...] = tuple(
    found.group(1) for statement in CREATE_SCHEMA
    for found in [re.match(r"\s*CREATE (?:UNIQUE )?(?:TABLE|INDEX) IF NOT EXISTS (?:\{s\}\.)?(\w+)",
                           statement)]
    if found)
assert len(SCHEMA_RELATIONS) == len(CREATE_SCHEMA), "a CREATE_SCHEMA statement names no relation"

# Migrations from version N to N + 1: lists of statements, run in order inside the
# migrator's transaction (under its advisory lock), before CREATE_SCHEMA.
MIGRATIONS: dict[int, list[str]] = {
    1: ["ALTER TABLE {s}.jobs ADD COLUMN IF NOT EXISTS memory_limit BIGINT"],  # isolated jobs' cap
    # The queue indexes, led by function_name from version 3: CREATE_SCHEMA makes them again.
    2: ["DROP INDEX IF EXISTS {s}.jobs_ready", "DROP INDEX IF EXISTS {s}.jobs_due"],
    # Each worker's own lease: entries are reaped by it, not by the reaper's (NULL in
    # entries an older jobcore still running writes: judged by the reader's lease).
    # IF EXISTS: a schema without the table gets it, with the column, from CREATE_SCHEMA.
    3: ["ALTER TABLE IF EXISTS {s}.jobcore_workers ADD COLUMN IF NOT EXISTS lease_timeout DOUBLE PRECISION"],
    # The dead-letter queue's index by finish time: CREATE_SCHEMA, run next, makes it.
    4: [],
}

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


def quote_identifier(name: str) -> str:
    """`name` as a quoted SQL identifier (validated: letters, digits, `_`, up to 63)."""
    if not isinstance(name, str) or not name or len(name) > 63 or not (
            name.replace("_", "a").isalnum() and name.isascii()) or name[0].isdigit():
        raise ValueError(f"schema must be a plain identifier (letters, digits, _; at most 63),"
                         f" got {name!r}")
    return f'"{name}"'
