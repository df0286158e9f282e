"""A manager's queue read from SQLite: the best ready jobs and the next due ones of the
functions it runs, and the claim of the best ready jobs by number.

Each function's jobs are one range of an index led by `function_name` (jobs_ready,
jobs_due), walked in order, and several functions' ranges are merged as they are read: a
manager reads about as many rows as it takes and never walks the jobs of functions it
does not run. (With one index holding every function's jobs in one order, a manager
running only `a` beside 100,000 ready jobs of `b` walked all of them at each look for
work, 20 times a second while other processes wrote: half a core.) No connection of its
own: the repository passes the one to use; the SQL is `sqlite_sql`'s (the claim's,
`sqlite_transition_sql`'s).
"""

from __future__ import annotations

import heapq
import itertools
import json
import sqlite3
from typing import Any, Callable, Collection, Optional, Sequence

from . import sqlite_sql as sql
from . import sqlite_transition_sql as transition_sql
from .columns import DEFAULT_PRIORITY, usable_time

Row = Sequence[Any]  # (id, priority, seq, run_at, function_name, is_schedule)

# Function names one claim statement names at most (SQLite allows 500 terms in a compound
# SELECT); a manager running more is rare, and its claims by number read through them all.
MAX_NAMED = 200


# As jobs_ready orders one function's jobs: priority, then seq; and as jobs_due orders
# them by due time (NULL first, as 0.0 does here). A corrupt row's value that is not a
# number (or no usable time) sorts as entry_from_row reads it (the default priority, due now).
def _by_rank(row: Row) -> tuple[int, int]:
    priority = row[1]
    return -(priority if type(priority) is int else DEFAULT_PRIORITY), row[2]


def _by_due(row: Row) -> tuple[float, int]:
    due = usable_time(row[3])
    return 0.0 if due is None else due, row[2]


def _merged(conn: sqlite3.Connection, queries: list[tuple[str, tuple[Any, ...]]],
            key: Callable[[Row], Any], limit: int) -> list[Row]:
    """The first `limit` rows of several queries, each already in `key` order, merged:
    each query's rows are stepped only as far as the merge takes them. (A query that
    finds nothing ends at once, so the others may read a later commit: harmless for a
    queue, which the store's claims check anyway.)"""
    cursors = [conn.execute(query, params) for query, params in queries]
    try:
        if len(cursors) == 1:
            return cursors[0].fetchall()
        return list(itertools.islice(heapq.merge(*cursors, key=key), limit))
    finally:
        for cursor in cursors:
            cursor.close()


def ready_rows(conn: sqlite3.Connection, names: Optional[Collection[str]], limit: int) -> list[Row]:
    """The best `limit` ready jobs of the functions `names` (None: any function, sorted
    whole), in the order they run."""
    if names is None:
        return conn.execute(sql.READY_ANY, (limit,)).fetchall()
    if not names or limit <= 0:
        return []
    return _merged(conn, [(sql.READY_OF, (name, limit)) for name in sorted(names)], _by_rank, limit)


def scheduled_rows(conn: sqlite3.Connection, names: Optional[Collection[str]], limit: int) -> list[Row]:
    """The first `limit` scheduled jobs by due time: those of the functions `names` (None:
    any function) and every cron schedule, whatever its function (firing one runs nothing)."""
    if names is None:
        return conn.execute(sql.DUE_ANY, (limit,)).fetchall()
    if limit <= 0:
        return []
    queries: list[tuple[str, tuple[Any, ...]]] = [(sql.DUE_OF, (name, limit)) for name in sorted(names)]
    queries.append((sql.SCHEDULES, (limit,)))
    return _merged(conn, queries, _by_due, limit)


# CLAIM_BEST for one function: its range of jobs_ready, in order (what most managers run,
# and claims by number come once a batch, in single processes too: no sort, no SQL built).
_CLAIM_BEST_OF_ONE = transition_sql.CLAIM_BEST.replace("{best}", transition_sql.BEST_OF_ONE)
_CLAIM_BEST_OF_MANY: dict[int, str] = {}  # by the number of functions (a few distinct ones)
_CLAIM_BEST_OF_ANY = transition_sql.CLAIM_BEST.replace(
    "{best}", "SELECT seq FROM jobs WHERE status = 'pending' AND blocked = 0 AND cron IS NULL AND typeof(id) = 'text'"
              " AND function_name IN (SELECT value FROM json_each(?)) ORDER BY priority DESC, seq LIMIT ?")


def with_ready_jobs(conn: sqlite3.Connection, names: Collection[str]) -> Collection[str]:
    """Those of the functions `names` that have a ready job, as `conn` reads them (all of
    them if there is only one), for a claim by number to walk only their ranges: each range
    costs the claim about 5.6 µs walked, empty or not (a manager with 104 functions
    registered drained 20,000 jobs of one of them at 0.68× the rate of one running only
    it), and asking costs about 0.2 µs a function. A function missing here has no job to
    claim in the same transaction."""
    if len(names) <= 1:
        return names
    return [name for (name,) in conn.execute(sql.WITH_READY_JOBS, (json.dumps(sorted(names)),))]


def claim_best(names: Collection[str], up_to: int) -> tuple[str, tuple[Any, ...]]:
    """CLAIM_BEST choosing the best `up_to` ready jobs of the functions `names` (non-empty),
    and its parameters after the claim's own three: for several functions, each one's best
    `up_to` by its range of jobs_ready, then the best of those (a sort of at most `up_to`
    rows per function)."""
    if len(names) == 1:
        (name,) = names
        return _CLAIM_BEST_OF_ONE, (name, up_to)
    ordered = sorted(names)
    if len(ordered) > MAX_NAMED:  # one range per function would not fit in one statement
        return _CLAIM_BEST_OF_ANY, (json.dumps(ordered), up_to)
    query = _CLAIM_BEST_OF_MANY.get(len(ordered))
    if query is None:
        arms = " UNION ALL ".join([transition_sql.BEST_OF] * len(ordered))
        query = transition_sql.CLAIM_BEST.replace(
            "{best}", f"SELECT seq FROM ({arms} ORDER BY priority DESC, seq LIMIT ?)")
        _CLAIM_BEST_OF_MANY[len(ordered)] = query  # the same text for the same count: no lock needed
    return query, tuple(itertools.chain.from_iterable((name, up_to) for name in ordered)) + (up_to,)
