"""The SQLite schema of jobcore: its tables and indexes, its version, and the migrations
from each older version, as named constants (the statements run on it are sqlite_sql's and sqlite_transition_sql's).

No code runs here; `repository.sqlite_migration` executes these. Schema changes bump
`SCHEMA_VERSION` and add a step to `MIGRATIONS`.
"""

SCHEMA_VERSION = 7

# The statuses are listed one by one (not `status <> 'pending'`, not `status IN (...)`):
# SQLite uses a partial index for a query only if one of the query's own terms is one of
# the index's OR-ed terms, so `status = 'running'` or `status = ?` finds its range here.
_JOBS_STATUS_INDEX = """CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq)
    WHERE status = 'scheduled' OR status = 'running' OR status = 'completed' OR status = 'failed'
       OR status = 'cancelled' OR blocked <> 0"""

# The dead-letter queue, the most recently failed first: failed jobs by finish time, read
# backwards (seq, the rowid, ends every entry: among equal times the later enqueued comes
# first). Without it the queue was read from jobs_status's range of every failed job and
# sorted in full ("USE TEMP B-TREE FOR ORDER BY") to give the first few. Only a job
# entering or leaving FAILED writes it, never a claim or completion.
_JOBS_FAILED_INDEX = "CREATE INDEX IF NOT EXISTS jobs_failed ON jobs (completed_at) WHERE status = 'failed'"

# A job's list of dependencies longer than sqlite_transition_sql.LONG_DEPENDS_ON bytes of
# JSON, kept out of its row (whose depends_on then holds DEPENDS_ON_APART): each completion
# of a dependency rewrites the dependent's row (its `blocked`), and SQLite reads every byte
# of a row it rewrites: with a fan-in of 100,000 jobs each completion read 3.4 MB, adding
# 64 s to a 4 s drain.
_JOB_DEP_LISTS = """CREATE TABLE IF NOT EXISTS job_dep_lists (
    job_id     TEXT PRIMARY KEY,
    depends_on TEXT NOT NULL
)"""

# Created and read before everything else: the schema version decides what else may run.
CREATE_META = """
CREATE TABLE IF NOT EXISTS jobcore_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
)
"""
SELECT_SCHEMA_VERSION = "SELECT value FROM jobcore_meta WHERE key = 'schema_version'"
SET_SCHEMA_VERSION = "INSERT OR REPLACE INTO jobcore_meta (key, value) VALUES ('schema_version', ?)"
# Every object in the file, checked against those jobcore makes (`sqlite_migration`).
SELECT_OBJECTS = "SELECT name, type, tbl_name FROM sqlite_master"

# seq is the rowid, without AUTOINCREMENT: that reads and writes sqlite_sequence in every
# INSERT (a 5th page a commit; `enqueue` measured 7-18% faster without it). SQLite gives
# a new row the largest seq stored + 1, so a job stored later still comes after every job
# still stored; only the seq of a newest job since deleted can be given again. (Files made
# before this keep AUTOINCREMENT: either works.)
CREATE_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq              INTEGER PRIMARY KEY,
    id               TEXT NOT NULL UNIQUE,
    function_name    TEXT NOT NULL,
    name             TEXT NOT NULL,
    payload          TEXT NOT NULL,
    priority         INTEGER NOT NULL,
    status           TEXT NOT NULL,
    blocked          INTEGER NOT NULL DEFAULT 0,
    created_at       REAL NOT NULL,
    scheduled_at     REAL,
    run_at           REAL,
    started_at       REAL,
    completed_at     REAL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    max_retries      INTEGER NOT NULL,
    retry_delay      REAL NOT NULL,
    retry_backoff    REAL NOT NULL,
    retry_jitter     INTEGER NOT NULL,
    timeout          REAL,
    tags             TEXT NOT NULL DEFAULT '[]',
    metadata         TEXT NOT NULL DEFAULT '{}',
    owner            TEXT,
    unique_key       TEXT,
    isolation        TEXT NOT NULL DEFAULT 'thread',
    depends_on       TEXT NOT NULL DEFAULT '[]',
    progress         REAL NOT NULL DEFAULT 0,
    progress_message TEXT NOT NULL DEFAULT '',
    progress_details TEXT NOT NULL DEFAULT '{}',
    result           TEXT,
    error            TEXT,
    error_type       TEXT,
    traceback        TEXT,
    worker_id        TEXT,
    lease_expires_at REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    cron             TEXT,
    cron_timezone    TEXT,
    memory_limit     INTEGER
);
-- The ready queue: claimable jobs of each function in the order they run. A manager
-- reads the ranges of the functions it runs (sqlite_queue), never other functions' jobs.
CREATE INDEX IF NOT EXISTS jobs_ready ON jobs (function_name, priority DESC, seq)
    WHERE status = 'pending' AND blocked = 0;
-- Timers: scheduled jobs of each function by due time, and cron schedules (which any
-- manager fires) by their next fire time.
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (function_name, run_at) WHERE status = 'scheduled';
CREATE INDEX IF NOT EXISTS jobs_schedules ON jobs (run_at) WHERE status = 'scheduled' AND cron IS NOT NULL;
-- By status, newest first: listing, counting, and finding running leases and finished
-- jobs. (Every index here costs each claim and completion, so there are no others.)
-- Pending jobs, except those waiting on dependencies, are left out: jobs_ready holds them
-- and counts them, and each index a new job enters is one more page its INSERT writes.
""" + _JOBS_STATUS_INDEX + """;
-- The dead-letter queue by finish time: only a job entering or leaving FAILED writes it.
""" + _JOBS_FAILED_INDEX + """;
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, seq) WHERE owner IS NOT NULL;
-- At most one unfinished job per unique_key.
CREATE UNIQUE INDEX IF NOT EXISTS jobs_unique ON jobs (unique_key)
    WHERE unique_key IS NOT NULL AND status IN ('pending', 'scheduled', 'running');
CREATE TABLE IF NOT EXISTS job_deps (
    job_id     TEXT NOT NULL,
    depends_on TEXT NOT NULL,
    PRIMARY KEY (depends_on, job_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS job_deps_job ON job_deps (job_id);
""" + _JOB_DEP_LISTS + """;
CREATE TABLE IF NOT EXISTS job_logs (
    id      INTEGER PRIMARY KEY,
    job_id  TEXT NOT NULL,
    at      REAL NOT NULL,
    level   TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS job_logs_job ON job_logs (job_id, id);
CREATE TABLE IF NOT EXISTS jobcore_workers (
    worker_id    TEXT PRIMARY KEY,
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    started_at   REAL NOT NULL,
    heartbeat_at REAL NOT NULL,
    running      TEXT NOT NULL DEFAULT '[]',
    lease_timeout REAL
);
"""


# Migrations from version N to N + 1, run in order inside one transaction.
# A step may meet a database that already has its change (created by a development build
# of the same version): "duplicate column" errors are skipped.
MIGRATIONS: dict[int, str] = {
    1: "ALTER TABLE jobs ADD COLUMN memory_limit INTEGER",  # isolated jobs' memory cap
    # The queue indexes led by function_name (jobs_schedules comes from CREATE_SCHEMA).
    2: """
DROP INDEX IF EXISTS jobs_ready;
CREATE INDEX jobs_ready ON jobs (function_name, priority DESC, seq) WHERE status = 'pending' AND blocked = 0;
DROP INDEX IF EXISTS jobs_due;
CREATE INDEX jobs_due ON jobs (function_name, run_at) WHERE status = 'scheduled'
""",
    # jobs_status without the pending jobs that jobs_ready holds.
    3: "DROP INDEX IF EXISTS jobs_status;" + _JOBS_STATUS_INDEX,
    # Each worker's own lease: entries are reaped by it, not by the reaper's (NULL in
    # entries an older jobcore still running writes: judged by the reader's lease).
    4: "ALTER TABLE jobcore_workers ADD COLUMN lease_timeout REAL",
    # The dead-letter queue's index by finish time (CREATE_SCHEMA, run first, makes it too).
    5: _JOBS_FAILED_INDEX,
    # Long dependency lists kept out of their rows (CREATE_SCHEMA makes the table too). A
    # row written before whose list is the very text that now says "kept apart" (one
    # dependency, of id "@job_dep_lists") gets its list there too, so it reads the same.
    6: _JOB_DEP_LISTS + """;
INSERT OR IGNORE INTO job_dep_lists (job_id, depends_on)
    SELECT id, depends_on FROM jobs WHERE depends_on = '["@job_dep_lists"]'""",
}
