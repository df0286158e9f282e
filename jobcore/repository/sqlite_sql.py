"""The SQL the SQLite repository runs on jobcore's schema (sqlite_schema), as named
constants. No code runs here; `repository.sqlite` and its halves execute these.
"""

from . import columns as _columns

COLUMNS = _columns.JOB_COLUMNS  # the order the row decoders unpack
COLUMNS_WITHOUT_ARGS = _columns.JOB_COLUMNS_WITHOUT_ARGS


# What every new job's row is given (sqlite_rows.plain_params, in this order), and what a
# job may set beyond that (sqlite_rows.row_params adds these). A job whose optional fields
# all hold their defaults is stored by the short INSERT, the column defaults filling in
# the rest: each bound parameter costs (measured: 27 of them, 19 µs a row in a batch of
# 500; 13, 11 µs).
_PLAIN = ("id, function_name, name, payload, priority, status, created_at, max_retries, retry_delay,"
          " retry_backoff, retry_jitter, timeout, isolation")
_OPTIONAL = ("blocked, scheduled_at, run_at, tags, metadata, owner, unique_key, depends_on, cron,"
             " cron_timezone, error, error_type, completed_at, memory_limit")
# A new job stored already claimed by an idle worker of the enqueuing process (hand-off).
_CLAIMED = "started_at, worker_id, lease_expires_at"


def _insert(columns: str, claimed: bool = False) -> str:
    if claimed:
        columns = f"{columns}, {_CLAIMED}"
    marks = ", ".join("?" * (columns.count(",") + 1))
    if claimed:  # its first attempt
        return f"INSERT INTO jobs ({columns}, attempts) VALUES ({marks}, 1)"
    return f"INSERT INTO jobs ({columns}) VALUES ({marks})"


INSERT_JOB = _insert(f"{_PLAIN}, {_OPTIONAL}")
INSERT_PLAIN_JOB = _insert(_PLAIN)
INSERT_CLAIMED_JOB = _insert(f"{_PLAIN}, {_OPTIONAL}", claimed=True)
INSERT_CLAIMED_PLAIN_JOB = _insert(_PLAIN, claimed=True)
INSERT_DEP = "INSERT OR IGNORE INTO job_deps (job_id, depends_on) VALUES (?, ?)"
SELECT_UNFINISHED_BY_KEY = """
SELECT id FROM jobs WHERE unique_key = ? AND status IN ('pending', 'scheduled', 'running')
"""
SELECT_JOB = f"SELECT {COLUMNS} FROM jobs WHERE id = ?"
SELECT_JOB_WITHOUT_ARGS = f"SELECT {COLUMNS_WITHOUT_ARGS} FROM jobs WHERE id = ?"
SELECT_STATUS = "SELECT status, name FROM jobs WHERE id = ?"
# The jobs callers of `wait` wait for, all in one statement (ids as one JSON array).
SELECT_STATUSES = "SELECT id, status FROM jobs WHERE id IN (SELECT value FROM json_each(?))"
# The dead-letter queue (sqlite_schema._JOBS_FAILED_INDEX). INDEXED BY: left to itself the planner
# reads jobs_status's range of every failed job and sorts them all (tests check the plan).
_DEAD_LETTERS = ("FROM jobs INDEXED BY jobs_failed WHERE status = 'failed'"
                 " ORDER BY completed_at DESC, seq DESC LIMIT ?")
LIST_DEAD_LETTERS = f"SELECT {COLUMNS} {_DEAD_LETTERS}"
LIST_DEAD_LETTERS_WITHOUT_ARGS = f"SELECT {COLUMNS_WITHOUT_ARGS} {_DEAD_LETTERS}"
SELECT_DEPENDENCY = "SELECT status, name, cron IS NOT NULL FROM jobs WHERE id = ?"
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
TAGS_TERM = HAS_TAGS
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

# A scheduled job is due at its time, or at once if that is no usable time (see
# columns.UNUSABLE_TIME_SQL): the claim reads its row, whose decode error then fails it
# alone as CorruptJob. (The second term is read only for a scheduled row not due yet.)
_DUE = f"(run_at <= ? OR {_columns.UNUSABLE_TIME_SQL.format(column='run_at')})"

# What the batch claims return, in the order `claimed_records` reads it: the columns a
# claimed job's record needs that differ between plain jobs, then whether every other
# column holds what it holds for a plain job stored by INSERT_PLAIN_JOB and claimed. The
# claims set status, started_at, worker_id, lease_expires_at and cancel_requested, and
# take only rows with blocked = 0 and no cron. Such a row (most rows) is read back 14
# columns wide instead of 38: each column read makes a Python object, about 9 µs a job
# here (measured). Any other claimed row is read in full by SELECT_JOBS_BY_IDS in the
# same transaction.
CLAIMED_COLUMNS = """id, function_name, name, payload, priority, seq, created_at, attempts, max_retries,
    retry_delay, retry_backoff, retry_jitter, timeout, isolation,
    (scheduled_at IS NULL AND run_at IS NULL AND completed_at IS NULL AND tags = '[]'
     AND metadata = '{}' AND owner IS NULL AND unique_key IS NULL AND depends_on = '[]'
     AND progress = 0 AND progress_message = '' AND progress_details = '{}'
     AND result IS NULL AND error IS NULL AND error_type IS NULL AND traceback IS NULL
     AND cron_timezone IS NULL AND memory_limit IS NULL)"""
CLAIMED_PLAIN = 14  # the index of that last column in a claimed row
if CLAIMED_COLUMNS.count(",") != CLAIMED_PLAIN:
    raise ImportError("CLAIMED_COLUMNS changed: update CLAIMED_PLAIN and sqlite_rows._plain_claimed")
SELECT_JOBS_BY_IDS = f"SELECT {COLUMNS} FROM jobs WHERE id IN (SELECT value FROM json_each(?))"
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
# seq is noted where the queue is read and recovery fails it (FAIL_CORRUPT).
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
# failed: see COUNT_BY_STATUS), go back to pending.
REQUEUE = """
UPDATE jobs SET status = 'pending', attempts = 0, run_at = NULL, started_at = NULL,
    completed_at = NULL, error = NULL, error_type = NULL, traceback = NULL, progress = 0,
    progress_message = '', progress_details = '{}', worker_id = NULL, cancel_requested = 0,
    blocked = (SELECT COUNT(*) FROM job_deps AS d JOIN jobs AS p ON p.id = d.depends_on
               WHERE d.job_id = jobs.id AND p.status != 'completed')
WHERE id = ? AND status NOT IN ('pending', 'scheduled', 'running', 'completed') AND cron IS NULL
  AND NOT EXISTS (SELECT 1 FROM job_deps AS d JOIN jobs AS p ON p.id = d.depends_on
                  WHERE d.job_id = jobs.id AND p.status IN ('failed', 'cancelled'))
  AND (started_at IS NOT NULL  -- else a dependency deleted (cleaned up) may not have completed
       OR NOT EXISTS (SELECT 1 FROM json_each(CASE WHEN json_valid(jobs.depends_on) THEN jobs.depends_on
                                                   ELSE '[]' END) AS d
                      WHERE NOT EXISTS (SELECT 1 FROM jobs AS p WHERE p.id = d.value)))
RETURNING id, priority, seq, run_at, function_name, cron IS NOT NULL
"""
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
# A job taken back to run again has no progress, as after FAIL_RETRY; one that ends
# FAILED or CANCELLED keeps its lost attempt's last report.
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
# Up to LIMIT jobs of one terminal status finished before a time (None: any time):
# cleanup deletes a chunk a write transaction, so other writers (every process) wait for
# one chunk, not the whole purge. One status at a time, in seq order: jobs kept (finished
# later) come last in their status, so each chunk finds its rows without reading them.
# The status is written into each statement: jobs_status, a partial index, is used only
# for a status the planner can see.
DELETE_FINISHED = {status: f"""
DELETE FROM jobs WHERE seq IN (
    SELECT seq FROM jobs WHERE status = '{status}' AND (? IS NULL OR completed_at < ?) LIMIT ?)
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
