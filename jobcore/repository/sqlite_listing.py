"""Listing jobs newest first from SQLite (`SQLiteRepository.list`: `list_jobs`, the
dashboard, `jobcore list`): which rows a listing reads, chosen by counting what each way
would read. Not the SQL's text (sqlite_sql's) nor the decoding of rows (sqlite_rows').

A listing walks rows newest first and stops at `offset + limit` matches. The jobs of one
status but `pending` are a range of jobs_status in seq order, an owner's a range of
jobs_owner: given both, it walks the status's range when that is the shorter (counted
first), where the planner, with no statistics to go on, walked the owner's (to list an
owner's 2 failed jobs among its 143,000 completed ones: 83 ms, now 0.1).

Pending jobs are in no index in seq order: the ready ones are the entries of jobs_ready,
kept by function and priority for the queue, and jobs_status holds only those waiting on
dependencies (one index fewer for each new job's INSERT, see sqlite_schema). A walk of
the table from its newest row finds them at once in a backlog (the newest jobs are the
ones waiting), but walks every newer job to reach a few old ones (10 pending jobs behind
1,000,000 finished: 97 ms). So the seqs of the pending jobs are read from those two
indexes and sorted when they are few (0.2 ms for those 10); when they are many, the page
is looked for in the newest rows, then in all pending jobs sorted if there are at most
SORT_CAP of them, else by the walk. Each way is one statement whose answer stands on its
own; the counts before it only choose it. No connection of its own: the repository passes
the one to use.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Collection, Optional, Sequence

from ..models import INT64_MAX
from . import sqlite_sql as sql

Row = Sequence[Any]

# The most entries of a range a listing counts to choose how to read it: COUNT_FLOOR, and
# COUNT_PER_MATCH more for each match the page needs (offset + limit). Counting costs an
# index entry each (about 45 ns here), a walk at least a row each (about 110 ns), so a
# range counted shorter than that is walked rather than another.
COUNT_FLOOR = 1_024
COUNT_PER_MATCH = 16
# The most pending jobs whose seqs a listing sorts (about 2 ms for 10,000 here; a walk of
# the table reads about 9,000 rows a millisecond), when the newest rows do not hold the
# page: more than that are a backlog, whose jobs a walk from the newest row finds.
SORT_CAP = 10_000


# The most wanted tags looked for in a row's text (a term each: SQLite refuses a
# statement whose expression nests 1,000 deep, as 1,000 terms ANDed do; a few pass over
# most rows without the tags).
TAG_TEXTS_AT_MOST = 8


class _Filters:
    """The owner and tags a listing filters by, as SQL terms and their parameters."""

    def __init__(self, owner: Optional[str], tags: Optional[Collection[str]]) -> None:
        self.owner = owner
        self.tag_params: tuple[Any, ...] = ()
        # Each wanted tag as jobcore writes it in a row's JSON (`"tag"`), if that is the tag
        # between quotes (no character JSON escapes): a row whose text does not hold it has
        # not the tag, and is passed over without its JSON read (a tag no job has, among
        # 300,000 tagged jobs: 330-450 ms a listing, then 60-80).
        self.tag_texts: list[str] = []
        if tags:
            wanted = sorted(set(tags))
            self.tag_params = (json.dumps(wanted), len(wanted))
            plain = [f'"{tag}"' for tag in wanted if json.dumps(tag) == f'"{tag}"']
            self.tag_texts = plain[:TAG_TEXTS_AT_MOST]

    def terms(self, owner_term: str = sql.OWNER_TERM) -> tuple[list[str], list[Any]]:
        terms: list[str] = []
        params: list[Any] = []
        if self.owner is not None:
            terms.append(owner_term)
            params.append(self.owner)
        if self.tag_params:
            terms += [sql.TAG_TEXT_TERM] * len(self.tag_texts)
            params += self.tag_texts
            terms.append(sql.TAGS_TERM)
            params += self.tag_params
        return terms, params


def list_rows(conn: sqlite3.Connection, columns: str, status: Optional[str], owner: Optional[str],
              tags: Optional[Collection[str]], limit: Optional[int], offset: int) -> list[Row]:
    """The rows (`columns`: sqlite_sql.COLUMNS or COLUMNS_WITHOUT_ARGS) of the jobs with
    `status` (a JobStatus value, or None: any), `owner` (None: any) and every tag of
    `tags`, newest first (by seq), from the `offset`-th, at most `limit` (None: all)."""
    filters = _Filters(owner, tags)
    if status is None:
        return _list(conn, columns, "", [], [], filters, limit, offset)
    status_term = sql.STATUS_TERMS[status]  # KeyError for anything but a JobStatus value
    # (Bound as a LIMIT: capped at what SQLite's integers hold, for a limit of sys.maxsize.)
    budget = min(COUNT_FLOOR + COUNT_PER_MATCH * (offset + (limit or 0)), INT64_MAX)
    if status == "pending":
        return _list_pending(conn, columns, filters, limit, offset, budget)
    index = sql.BY_STATUS
    if owner is not None:
        in_status = _count(conn, sql.BY_STATUS, [status_term], [], budget)
        if in_status == budget or _count(conn, sql.BY_OWNER, [sql.OWNER_TERM], [owner], in_status) < in_status:
            index = sql.BY_OWNER  # shorter than the status's range, or both long: as the planner chose
    return _list(conn, columns, index, [status_term], [], filters, limit, offset)


def _list_pending(conn: sqlite3.Connection, columns: str, filters: _Filters, limit: Optional[int],
                  offset: int, budget: int) -> list[Row]:
    status_term = sql.STATUS_TERMS["pending"]
    walk = ""  # the table, from its newest row
    if filters.owner is not None:
        walk = sql.BY_OWNER
        if _count(conn, sql.BY_OWNER, [sql.OWNER_TERM], [filters.owner], budget) < budget:
            return _list(conn, columns, walk, [status_term], [], filters, limit, offset)  # a short range
    cap = min(budget, SORT_CAP + 1)
    pending = _count_pending(conn, cap)
    if pending == cap:  # as many as a look at the newest rows reads, or more than SORT_CAP
        if limit is not None:
            if conn.execute(sql.NEWEST_IS_ALL, (budget,)).fetchone()[0] != 0:
                return _list(conn, columns, walk, [status_term], [], filters, limit, offset)
            rows = _list(conn, columns, "", [status_term, sql.NEWEST_TERM], [budget], filters, limit, offset)
            if len(rows) == limit:  # the newest rows hold the page (a backlog): it is the listing's
                return rows
        if pending > SORT_CAP or _count_pending(conn, SORT_CAP + 1) > SORT_CAP:
            return _list(conn, columns, walk, [status_term], [], filters, limit, offset)
    return _list(conn, columns, "", [sql.PENDING_TERM], [], filters, limit, offset, owner_term=sql.OWNER_CHECKED)


def _count_pending(conn: sqlite3.Connection, cap: int) -> int:
    """How many jobs are pending, up to `cap`."""
    return int(conn.execute(sql.COUNT_PENDING_UP_TO, (cap,)).fetchone()[0])


def _count(conn: sqlite3.Connection, index: str, terms: list[str], params: list[Any], cap: int) -> int:
    """How many rows the range of `index` the `terms` select holds, up to `cap`."""
    query = sql.COUNT_UP_TO.format(index=index, where=" AND ".join(terms))
    return int(conn.execute(query, (*params, cap)).fetchone()[0])


def _list(conn: sqlite3.Connection, columns: str, index: str, terms: list[str], params: list[Any],
          filters: _Filters, limit: Optional[int], offset: int, owner_term: str = sql.OWNER_TERM) -> list[Row]:
    filter_terms, filter_params = filters.terms(owner_term)
    where = " AND ".join(terms + filter_terms) or "1 = 1"
    query = sql.LIST.format(columns=columns, index=index, where=where)
    rows: list[Row] = conn.execute(query, (*params, *filter_params, -1 if limit is None else limit,
                                           offset)).fetchall()
    return rows
