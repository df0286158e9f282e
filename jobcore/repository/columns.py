"""The columns of a stored job in the order every SQL backend selects them.

SQLite's and PostgreSQL's row decoders both unpack rows in this order, so it is written
once, here. No SQL runs here.
"""

JOB_COLUMNS = (
    "id, function_name, name, payload, priority, status, seq, created_at, scheduled_at, run_at,"
    " started_at, completed_at, attempts, max_retries, retry_delay, retry_backoff, retry_jitter,"
    " timeout, tags, metadata, owner, unique_key, isolation, depends_on, blocked, progress,"
    " progress_message, progress_details, result, error, error_type, traceback, worker_id,"
    " lease_expires_at, cancel_requested, cron, cron_timezone, memory_limit"
)
