"""The SQL of a job's own path on SQLite, as named constants: its insert, claim, progress
and heartbeat, the settlement of its attempt (complete, fail, release, finish cancelled),
the release or cancellation of its dependents, and its cancel and requeue on request. Not
reads, listing, counts, logs, recovery, cleanup or the worker registry (sqlite_sql's).

On jobcore's schema (sqlite_schema). No code runs here; `repository.sqlite` and its halves
(sqlite_adding, sqlite_settle, sqlite_queue's claim of the best ready jobs) execute these.
"""

from dataclasses import fields

from . import columns as _columns
from .values import JobRecord

# A list of dependencies longer than this (bytes of JSON, about 30 ids) is kept in
# job_dep_lists, its row's depends_on holding DEPENDS_ON_APART (see sqlite_schema): the
# dependent's row is rewritten at each dependency's completion. That is a list, of one id
# no job has, for a jobcore of schema version 6 still running beside this one (it does
# not read job_dep_lists): it runs such a job as it should, shows it that list, and
# refuses to retry it if it never ran (a dependency looks deleted). A list whose JSON is
# that text is kept apart too, so it reads as itself.
LONG_DEPENDS_ON = 1024
DEPENDS_ON_APART = '["@job_dep_lists"]'
# What a row's depends_on reads as: its own text, or the list kept apart (NULL if that is
# missing: the row fails to decode, as a corrupt one does).
DEPENDS_ON = (f"CASE WHEN jobs.depends_on = '{DEPENDS_ON_APART}' THEN (SELECT l.depends_on FROM job_dep_lists AS l"
              " WHERE l.job_id = +jobs.id) ELSE jobs.depends_on END")
# The order the row decoders unpack (columns.JOB_COLUMNS, depends_on read as above).
COLUMNS = _columns.JOB_COLUMNS.replace(" depends_on,", f" {DEPENDS_ON},", 1)
COLUMNS_WITHOUT_ARGS = _columns.JOB_COLUMNS_WITHOUT_ARGS.replace(" depends_on,", f" {DEPENDS_ON},", 1)
COLUMNS_SUMMARY = _columns.JOB_COLUMNS_SUMMARY.replace(" depends_on,", f" {DEPENDS_ON},", 1)
if DEPENDS_ON not in COLUMNS or DEPENDS_ON not in COLUMNS_WITHOUT_ARGS or DEPENDS_ON not in COLUMNS_SUMMARY:
    raise ImportError("columns.JOB_COLUMNS changed: update sqlite_transition_sql.COLUMNS")


# What every new job's row is given (sqlite_rows.plain_params, in this order), and what a
# job may set beyond that (sqlite_rows.row_params adds these). A job whose optional fields
# all hold their defaults is stored by the short INSERT, the column defaults filling in
# the rest: each bound parameter costs (measured: 27 of them, 19 µs a row in a batch of
# 500; 13, 11 µs).
_FIRST = "id, function_name, name, payload, priority, status, created_at"
_SETTINGS = "max_retries, retry_delay, retry_backoff, retry_jitter, timeout, isolation"
_PLAIN = f"{_FIRST}, {_SETTINGS}"
_OPTIONAL = ("blocked, scheduled_at, run_at, tags, metadata, owner, unique_key, depends_on, cron,"
             " cron_timezone, error, error_type, completed_at, memory_limit")
# A new job stored already claimed by an idle worker of the enqueuing process (hand-off).
_CLAIMED = "started_at, worker_id, lease_expires_at"
# The settings most jobs leave as they are: JobRecord's defaults, in _SETTINGS' order, the
# jitter flag as stored. A plain job holding them all is stored by the default INSERT,
# which writes them into the statement and binds only _FIRST (sqlite_rows.default_params).
# Measured: 5% off `enqueue` and `enqueue_many` alike (33.4 against 35.3 µs a call, 12.4
# against 13.1 µs a job in batches of 500; interleaved runs, no overlap).
_RECORD_DEFAULTS = {f.name: f.default for f in fields(JobRecord)}
DEFAULT_SETTINGS = tuple(int(value) if isinstance(value, bool) else value
                         for value in (_RECORD_DEFAULTS[name] for name in _SETTINGS.split(", ")))

def _insert(columns: str, claimed: bool = False, fixed: tuple[object, ...] = ()) -> str:
    """The INSERT of `columns`, each bound but the last len(`fixed`), which are given these
    values in the statement; then, if `claimed`, the claim's columns (bound) and
    attempts = 1."""
    values = ["?"] * (columns.count(",") + 1 - len(fixed))
    values += ["NULL" if value is None else repr(value) for value in fixed]  # (numbers and plain text)
    if claimed:  # its first attempt
        return f"INSERT INTO jobs ({columns}, {_CLAIMED}, attempts) VALUES ({', '.join(values)}, ?, ?, ?, 1)"
    return f"INSERT INTO jobs ({columns}) VALUES ({', '.join(values)})"


INSERT_JOB = _insert(f"{_PLAIN}, {_OPTIONAL}")
# A job with a unique_key, stored alone by one statement unless an unfinished job holds
# its key (or its id is taken): then it stores nothing, and a transaction finds out which.
INSERT_JOB_UNLESS_REFUSED = INSERT_JOB.replace("INSERT INTO", "INSERT OR IGNORE INTO", 1)
INSERT_PLAIN_JOB = _insert(_PLAIN)
INSERT_DEFAULT_JOB = _insert(_PLAIN, fixed=DEFAULT_SETTINGS)
INSERT_CLAIMED_JOB = _insert(f"{_PLAIN}, {_OPTIONAL}", claimed=True)
INSERT_CLAIMED_PLAIN_JOB = _insert(_PLAIN, claimed=True)
INSERT_CLAIMED_DEFAULT_JOB = _insert(_PLAIN, claimed=True, fixed=DEFAULT_SETTINGS)
INSERT_DEP = "INSERT OR IGNORE INTO job_deps (job_id, depends_on) VALUES (?, ?)"
# OR REPLACE: a list whose job a jobcore of version 6 deleted (its cleanup does not know
# this table) is stale, and its id may be given again.
INSERT_DEP_LIST = "INSERT OR REPLACE INTO job_dep_lists (job_id, depends_on) VALUES (?, ?)"
SELECT_UNFINISHED_BY_KEY = """
SELECT id FROM jobs WHERE unique_key = ? AND status IN ('pending', 'scheduled', 'running')
"""
SELECT_DEPENDENCY = "SELECT status, name, cron IS NOT NULL FROM jobs WHERE id = ?"

# A scheduled job is due at its time, or at once if that is no usable time (see
# columns.UNUSABLE_TIME_SQL): the claim reads its row, whose decode error then fails it
# alone as CorruptJob. (The second term is read only for a scheduled row not due yet.)
_DUE = f"(run_at <= ? OR {_columns.UNUSABLE_TIME_SQL.format(column='run_at')})"

# What the batch claims return, in the order `claimed_records` reads it: the columns a
# claimed job's record needs that differ between jobs (in JOB_COLUMNS' order, so that a
# row's decode error names its columns in the same order as a full read; depends_on read
# as DEPENDS_ON), then whether every other column holds what it holds for a job stored by
# INSERT_JOB and claimed. The claims set status, started_at, worker_id, lease_expires_at
# and cancel_requested, and take only rows with blocked = 0 and no cron. Such a row (most
# rows) is read back 24 columns wide instead of 38: each column read makes a Python
# object, about 9 µs a job here (measured). Any other claimed row (one with progress
# reported, say) is read in full by SELECT_JOBS_BY_SEQS in the same transaction. Tags,
# metadata, an owner, a unique_key, a time to start at, dependencies and a failed
# attempt's error are among the 24: jobs carry them often (tags, a key against
# duplicates, a retry), and each such job's second read cost its drain 8-22%.
CLAIMED_NAMES = ("id", "function_name", "name", "payload", "priority", "seq", "created_at", "scheduled_at",
                 "run_at", "attempts", "max_retries", "retry_delay", "retry_backoff", "retry_jitter", "timeout",
                 "tags", "metadata", "owner", "unique_key", "isolation", "depends_on", "error", "error_type",
                 "traceback")
CLAIMED_COLUMNS = ", ".join(DEPENDS_ON if name == "depends_on" else name for name in CLAIMED_NAMES) + """,
    (completed_at IS NULL AND progress = 0 AND progress_message = '' AND progress_details = '{}'
     AND result IS NULL AND cron_timezone IS NULL AND memory_limit IS NULL)"""
CLAIMED_PLAIN = len(CLAIMED_NAMES)  # the index of that last column in a claimed row
CLAIMED_SEQ = CLAIMED_NAMES.index("seq")
if CLAIMED_COLUMNS.count(",") != CLAIMED_PLAIN:  # (DEPENDS_ON holds no comma)
    raise ImportError("CLAIMED_COLUMNS changed: update sqlite_rows._plain_claimed")
# By the seqs a claim returned: the table's own key, no read of the index on ids.
SELECT_JOBS_BY_SEQS = f"SELECT {COLUMNS} FROM jobs WHERE seq IN (SELECT value FROM json_each(?))"
CLAIM = f"""
UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = ?, worker_id = ?,
    lease_expires_at = ?, cancel_requested = 0
WHERE id = ? AND blocked = 0 AND cron IS NULL
  AND (status = 'pending' OR (status = 'scheduled' AND {_DUE}))
RETURNING {COLUMNS}
"""
# `+status`: keeps the planner off jobs_status, which would read every pending and scheduled
# job (EXPLAIN QUERY PLAN: "MULTI-INDEX OR ... jobs_status") to claim a handful by id.
CLAIM_MANY = f"""
UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = ?, worker_id = ?,
    lease_expires_at = ?, cancel_requested = 0
WHERE id IN (SELECT value FROM json_each(?)) AND blocked = 0 AND cron IS NULL
  AND (+status = 'pending' OR (+status = 'scheduled' AND {_DUE}))
RETURNING {CLAIMED_COLUMNS}
"""
# The same claim finding each row by its seq (the table's own key: no index read), given
# the seqs (first JSON array) and ids (second) of the jobs to claim: a row is claimed only
# if its id is one of them too (`+id`: checked on the row found, not looked up).
CLAIM_MANY_BY_SEQ = CLAIM_MANY.replace(
    "WHERE id IN (SELECT value FROM json_each(?))",
    "WHERE seq IN (SELECT value FROM json_each(?)) AND +id IN (SELECT value FROM json_each(?))")
# Claims the best ready jobs by number when the ids a manager knew of went stale (other
# processes took them). sqlite_queue.claim_best fills in {best} for the manager's functions:
# one function's range of jobs_ready (BEST_OF_ONE), or each function's best `up_to` by its
# range (BEST_OF) and the best `up_to` of those. They choose seqs, which jobs_ready holds,
# so the rows are found by their key.
CLAIM_BEST = f"""
UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = ?, worker_id = ?,
    lease_expires_at = ?, cancel_requested = 0
WHERE seq IN ({{best}})
RETURNING {CLAIMED_COLUMNS}
"""
# `typeof(id) = 'text'`: a row whose id is bytes (a hand edit) is never handed out; its
# seq is noted where the queue is read and recovery fails it (sqlite_sql.FAIL_CORRUPT).
BEST_OF_ONE = """SELECT seq FROM jobs INDEXED BY jobs_ready
    WHERE function_name = ? AND status = 'pending' AND blocked = 0 AND cron IS NULL AND typeof(id) = 'text'
    ORDER BY priority DESC, seq LIMIT ?"""
BEST_OF = f"SELECT * FROM ({BEST_OF_ONE.replace('SELECT seq', 'SELECT seq, priority', 1)})"
_HELD = "id = ? AND status = 'running' AND worker_id = ? AND attempts = ?"
# A claimed job handed back unstarted (at stop) is PENDING again, its attempt uncounted;
# or, if its cancellation was requested meanwhile (cancel() returned True), CANCELLED as
# CANCEL_WAITING leaves a pending job, in the same statement: it must not run later.
# RETURNING tells the caller which it did.
RELEASE = f"""
UPDATE jobs SET status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'pending' END,
    completed_at = CASE WHEN cancel_requested THEN ? ELSE completed_at END,
    error = CASE WHEN cancel_requested THEN 'cancelled by request' ELSE error END,
    error_type = CASE WHEN cancel_requested THEN 'JobCancelled' ELSE error_type END,
    attempts = attempts - 1, worker_id = NULL, lease_expires_at = NULL, cancel_requested = 0
WHERE {_HELD}
RETURNING status = 'cancelled'
"""
COMPLETE = f"""
UPDATE jobs SET status = 'completed', result = ?, completed_at = ?, progress = 1.0,
    lease_expires_at = NULL, error = NULL, error_type = NULL, traceback = NULL
WHERE {_HELD}
"""
# COMPLETE for an attempt whose last progress report is not in its row yet (the settlement
# carries it): its message and details set in the same statement, not in an UPDATE_PROGRESS
# of their own.
COMPLETE_REPORTED = f"""
UPDATE jobs SET status = 'completed', result = ?, completed_at = ?, progress = 1.0,
    progress_message = ?, progress_details = ?,
    lease_expires_at = NULL, error = NULL, error_type = NULL, traceback = NULL
WHERE {_HELD}
"""
# A run of completions: one COMPLETE per job, then their dependents released together.
# Measured against one UPDATE ... FROM json_each(?) RETURNING for the whole run, per-row
# COMPLETEs cost less (RETURNING runs a trigger program per row, and each result would be
# escaped into JSON and parsed back) and keep the compare-and-set exact when a list names
# a job twice. Most jobs have no dependents, and ANY_DEPENDENTS (given a JSON array of
# ids) costs less than RELEASE_DEPENDENTS finding nothing.
ANY_DEPENDENTS = """
SELECT EXISTS (SELECT 1 FROM job_deps WHERE depends_on IN (SELECT value FROM json_each(?)))
"""
# The same for one completed job: json_each costs more than the search itself (about 14 µs
# against 6 here), and one completion per exchange is common while enqueues stream in.
ANY_DEPENDENT = "SELECT EXISTS (SELECT 1 FROM job_deps WHERE depends_on = ?)"
# The dependents of the completed jobs lose one block per dependency among them. Each `?`
# is the same JSON array of distinct job ids, in settlement order. The last column names,
# for a dependent left with no block, the last of its dependencies in the array: the
# completion that released it.
# `+status`: without the unary plus the planner walks every waiting job through jobs_status
# instead of looking up the few dependents by id (EXPLAIN QUERY PLAN shows which).
# `+jobs.id`: with a bare column of the updated table inside RETURNING, that lookup uses
# only depends_on and so walks every dependent of the completed job, for each one released
# (quadratic in a fan-out); with it, job_deps_job finds the pair.
RELEASE_DEPENDENTS = """
UPDATE jobs SET blocked = MAX(blocked - (SELECT COUNT(*) FROM job_deps AS d
                                         WHERE d.job_id = jobs.id
                                           AND d.depends_on IN (SELECT value FROM json_each(?))), 0)
WHERE id IN (SELECT d.job_id FROM json_each(?) AS c JOIN job_deps AS d ON d.depends_on = c.value)
  AND +status IN ('pending', 'scheduled')
RETURNING id, priority, seq, run_at, function_name, cron IS NOT NULL, blocked,
    CASE WHEN blocked = 0 THEN (SELECT d.depends_on FROM json_each(?) AS c
                                JOIN job_deps AS d ON d.depends_on = c.value
                                WHERE d.job_id = +jobs.id ORDER BY c.key DESC LIMIT 1) END
"""
FINISH_CANCELLED = f"""
UPDATE jobs SET status = 'cancelled', completed_at = ?, error = 'cancelled while running',
    error_type = 'JobCancelled', lease_expires_at = NULL
WHERE {_HELD}
"""
# A failed attempt of a job whose cancellation was requested (cancel() returned True while
# the outcome was on its way: the worker had not heard of it, or the attempt had already
# ended or timed out) ends CANCELLED, as FINISH_CANCELLED leaves it, in the same statement:
# no retry, no dead letter. RETURNING tells the caller which it did.
# A job waiting for its retry has no progress: the next attempt starts from 0 (a bar
# showing the failed attempt's 0.8 until the new one reports would jump back). One that
# ends CANCELLED keeps its last report, as every ended job does.
FAIL_RETRY = f"""
UPDATE jobs SET status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'scheduled' END,
    run_at = CASE WHEN cancel_requested THEN run_at ELSE ? END,
    completed_at = CASE WHEN cancel_requested THEN ? ELSE completed_at END,
    error = CASE WHEN cancel_requested THEN 'cancelled while running' ELSE ? END,
    error_type = CASE WHEN cancel_requested THEN 'JobCancelled' ELSE ? END,
    traceback = CASE WHEN cancel_requested THEN traceback ELSE ? END,
    progress = CASE WHEN cancel_requested THEN progress ELSE 0 END,
    progress_message = CASE WHEN cancel_requested THEN progress_message ELSE '' END,
    progress_details = CASE WHEN cancel_requested THEN progress_details ELSE '{{}}' END,
    lease_expires_at = NULL
WHERE {_HELD}
RETURNING cancel_requested
"""
FAIL_FINAL = f"""
UPDATE jobs SET status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'failed' END,
    completed_at = ?,
    error = CASE WHEN cancel_requested THEN 'cancelled while running' ELSE ? END,
    error_type = CASE WHEN cancel_requested THEN 'JobCancelled' ELSE ? END,
    traceback = CASE WHEN cancel_requested THEN traceback ELSE ? END,
    lease_expires_at = NULL
WHERE {_HELD}
RETURNING cancel_requested
"""
# `+status`: as in RELEASE_DEPENDENTS.
CANCEL_DEPENDENTS = """
WITH RECURSIVE dependents(id) AS (
    SELECT job_id FROM job_deps WHERE depends_on = ?
    UNION
    SELECT d.job_id FROM job_deps AS d JOIN dependents ON d.depends_on = dependents.id
)
UPDATE jobs SET status = 'cancelled', completed_at = ?, error = ?, error_type = 'DependencyFailed'
WHERE id IN (SELECT id FROM dependents) AND +status IN ('pending', 'scheduled')
RETURNING id
"""
CANCEL_WAITING = """
UPDATE jobs SET status = 'cancelled', completed_at = ?, error = ?, error_type = 'JobCancelled'
WHERE id = ? AND status IN ('pending', 'scheduled')
"""
REQUEST_CANCEL = "UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = 'running'"
# Failed and cancelled jobs, and those whose status jobcore never writes (they read as
# failed: see sqlite_sql.COUNT_BY_STATUS), go back to pending.
REQUEUE = """
UPDATE jobs SET status = 'pending', attempts = 0, run_at = NULL, started_at = NULL,
    completed_at = NULL, error = NULL, error_type = NULL, traceback = NULL, progress = 0,
    progress_message = '', progress_details = '{}', worker_id = NULL, cancel_requested = 0,
    blocked = (SELECT COUNT(*) FROM job_deps AS d JOIN jobs AS p ON p.id = d.depends_on
               WHERE d.job_id = jobs.id AND p.status != 'completed')
WHERE id = ? AND status NOT IN ('pending', 'scheduled', 'running', 'completed') AND cron IS NULL
  AND NOT EXISTS (SELECT 1 FROM job_deps AS d JOIN jobs AS p ON p.id = d.depends_on
                  WHERE d.job_id = jobs.id AND p.status IN ('failed', 'cancelled'))
  AND (blocked = 0  -- else a dependency deleted (cleaned up) may not have completed
       OR NOT EXISTS (SELECT 1 FROM json_each(CASE WHEN json_valid({depends_on}) THEN {depends_on}
                                                   ELSE '[]' END) AS d
                      WHERE NOT EXISTS (SELECT 1 FROM jobs AS p WHERE p.id = d.value)))
RETURNING id, priority, seq, run_at, function_name, cron IS NOT NULL
""".replace("{depends_on}", f"({DEPENDS_ON})")
UPDATE_PROGRESS = f"""
UPDATE jobs SET progress = ?, progress_message = ?, progress_details = ? WHERE {_HELD}
"""
# Each statement on a job held above (and UPDATE_PROGRESS, for a settlement carrying progress),
# finding the row by its seq (no index read) and checking its id: the parameters go on with
# the seq before the id.
HELD_BY_SEQ = {query: query.replace(f"WHERE {_HELD}", f"WHERE seq = ? AND {_HELD}")
               for query in (RELEASE, COMPLETE, COMPLETE_REPORTED, FAIL_RETRY, FAIL_FINAL, FINISH_CANCELLED,
                             UPDATE_PROGRESS)}
HEARTBEAT = """
UPDATE jobs SET lease_expires_at = ?
WHERE status = 'running' AND worker_id = ? AND id IN (SELECT value FROM json_each(?))
RETURNING id, cancel_requested
"""
