"""`raw_db`: a plain sqlite3 connection to a test's database file, for reading or
editing its rows behind jobcore's back."""

from __future__ import annotations

import contextlib
import sqlite3
from typing import Any, Iterator


@contextlib.contextmanager
def raw_db(path: Any, **options: Any) -> Iterator[sqlite3.Connection]:
    """A connection to `path` (`options` as `sqlite3.connect` takes them) that commits
    what the block did (rolls back if it raised) and is closed after it. (`with
    sqlite3.connect(...)` commits but does not close: the connection was left to the
    garbage collector, which since Python 3.13 warns of it, inside whichever later test
    it ran.)"""
    conn = sqlite3.connect(path, **options)
    try:
        with conn:
            yield conn
    finally:
        conn.close()
