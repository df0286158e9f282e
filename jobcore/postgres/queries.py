"""The SQL that reads PostgreSQL's job store and keeps it up, as named constants, and
`Statements` to fill in every statement (transition_queries' too); not the SQL of a job's
own path from insert to its end (transition_queries').

No code runs here beyond formatting. `{s}` stands for the quoted PostgreSQL schema. Here: a
job's row and status, a manager's queue, listing, dead letters, counts, logs, recovery
(unreadable and expired leases), cleanup, schedules (advance, fail) and the worker
registry. The row locks statements take, and why: transition_queries' docstring.
"""

from __future__ import annotations

from typing import Optional

from ..models import JobStatus
from ..repository.columns import JOB_COLUMNS as COLUMNS  # the order the row decoders unpack
from ..repository.columns import JOB_COLUMNS_SUMMARY
from ..repository.columns import JOB_COLUMNS_WITHOUT_ARGS as COLUMNS_WITHOUT_ARGS
from ..repository.columns import UNUSABLE_TIME_SQL
from . import schema as ddl
from . import transition_queries
from .transition_queries import ENTRY, _J_ENTRY

SELECT_JOB = f"SELECT {COLUMNS} FROM {{s}}.jobs WHERE id = %s"
# (Its '{}' literals doubled: the texts below are formatted with the schema's name.)
COLUMNS_SUMMARY = JOB_COLUMNS_SUMMARY.replace("{", "{{").replace("}", "}}")
SELECT_JOB_WITHOUT_ARGS = f"SELECT {COLUMNS_WITHOUT_ARGS} FROM {{s}}.jobs WHERE id = %s"
SELECT_STATUS = "SELECT status, name FROM {s}.jobs WHERE id = %s"
# The job of a status stored first (`oldest`): the head of jobs_status's range.
SELECT_OLDEST = f"SELECT {COLUMNS_WITHOUT_ARGS} FROM {{s}}.jobs WHERE status = %s ORDER BY seq LIMIT 1"
# Jobs by id, many at once (ids as one text array): `get_many`.
SELECT_JOBS = f"SELECT {COLUMNS} FROM {{s}}.jobs WHERE id = ANY(%s)"
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
        for columns in (COLUMNS, COLUMNS_WITHOUT_ARGS, COLUMNS_SUMMARY)}
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
# A line for a job that may be gone (a timed-out attempt's thread logging on after its job
# was deleted): stored only beside its job. FOR KEY SHARE holds a cleanup deleting the job
# until this commits (its next statement then deletes the line too), and waits for one
# under way (finding the job gone). Claims and heartbeats (NO KEY UPDATE) never wait for
# it; a settlement of the job waits for its commit; recovery skips the job until its next look.
# Parameters: (at, level, message, job_id).
INSERT_LOG_IF_STORED = """INSERT INTO {s}.job_logs (job_id, at, level, message)
    SELECT id, %s, %s, %s FROM {s}.jobs WHERE id = %s FOR KEY SHARE"""

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
# A job taken back to run again has no progress, as after a retry (transition_queries.FAIL_MANY);
# one that ends FAILED or CANCELLED keeps its lost attempt's last report.
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

# Every statement with `{s}` to fill in, transition_queries' and this module's, by name.
_TEXTS = {name: value
          for namespace in (vars(transition_queries), globals()) for name, value in list(namespace.items())
          if name.isupper() and isinstance(value, str) and "{s}" in value}
_NAMES = list(_TEXTS)


class Statements:
    """Every SQL constant here and in transition_queries, and the schema's DDL, with `{s}`
    filled in for one schema."""

    CREATE_META: list[str]
    CREATE_SCHEMA: list[str]
    MIGRATIONS: dict[int, list[str]]
    LIST: dict[str, dict[tuple[Optional[str], bool], str]]

    def __init__(self, schema: str) -> None:
        quoted = ddl.quote_identifier(schema)
        self.schema = schema
        for name in _NAMES:
            setattr(self, name, _TEXTS[name].format(s=quoted))
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
