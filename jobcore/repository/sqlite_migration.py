"""`SQLiteMigration`: how `SQLiteRepository` checks a file as it opens it and creates or
migrates jobcore's tables in it; it never reads or writes a job. The statements are
sqlite_schema's, the connections sqlite_conn's.

A file holding another application's tables, or a schema version newer than this
jobcore's (or no number), is refused on the first connection, before anything is written
to it (the journal mode among it). A file already at this version is opened with no
write: opening never waits for another process's writer.
"""

from __future__ import annotations

import re
import sqlite3
from typing import TYPE_CHECKING, Any, ContextManager, Optional, Sequence

from ..errors import RepositoryError
from . import sqlite_schema as schema
from .sqlite_rows import READ_ONLY, translate
from .values import schema_version


# Every table and index jobcore makes, by name: (type, the table it is on). A file holding
# one of these names as anything else (another application's table, view, index or
# trigger: jobcore's `IF NOT EXISTS` would skip its own, and a unique key go unchecked) is
# refused before anything is written.
OBJECTS_MADE: dict[str, tuple[str, str]] = {
    name: (kind.lower(), table or name)
    for kind, name, table in re.findall(r"CREATE (?:UNIQUE )?(INDEX|TABLE) IF NOT EXISTS (\w+)(?: ON (\w+))?",
                                        schema.CREATE_META + schema.CREATE_SCHEMA)}


class SQLiteMigration:
    """The opening half of `SQLiteRepository`, which sets `path` and runs `_migrate` (and
    `_refuse_foreign_file` as its connections' first check) as it is made."""

    path: str

    if TYPE_CHECKING:  # SQLiteRepository's (declared here for the type checker only)
        def _write(self) -> ContextManager[sqlite3.Connection]: ...
        def _read(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def _migrate(self) -> None:
        current = self._current_version()
        if current == schema.SCHEMA_VERSION:
            return  # nothing to write: opening never waits for another process's writer
        if current is not None:
            # Before the write lock: a newer jobcore's process may hold it for long (a big
            # cleanup, its own migration), and this one would say "locked" after its busy
            # timeout instead of what is wrong. (The first connection's check refused the
            # file already; a newer jobcore may have migrated it since.)
            self._refuse_newer(current)
        try:
            with self._write() as conn:
                self._migrate_in(conn)
        except RepositoryError as exc:
            if not str(exc).startswith(f"SQLite at {self.path!r}: {READ_ONLY}"):
                raise
            # A reader's read-only copy (a file it may not write, or in a directory it may
            # not write) opens only once migrated: say what to do, not only what failed.
            needed = ("jobcore's tables must be created in it" if current is None
                      else f"schema version {current} must be migrated to {schema.SCHEMA_VERSION}")
            detail = str(exc).removeprefix(f"SQLite at {self.path!r}: ")
            raise RepositoryError(
                f"SQLite at {self.path!r}: {needed} once, by a process with write access to the file"
                f" and its directory; this one cannot write it: {detail}") from None

    def _migrate_in(self, conn: sqlite3.Connection) -> None:
        """Create or migrate jobcore's tables inside the write transaction `conn` is in."""
        try:
            # The version first: a newer jobcore's tables may not take this version's indexes.
            conn.execute(schema.CREATE_META)
            row = conn.execute(schema.SELECT_SCHEMA_VERSION).fetchone()
            version = self._version(row[0]) if row else schema.SCHEMA_VERSION
            self._refuse_newer(version)  # again: a newer jobcore may have migrated it since it was read
            # Statement by statement: executescript() would COMMIT our transaction.
            for statement in schema.CREATE_SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            while version < schema.SCHEMA_VERSION:
                for statement in schema.MIGRATIONS[version].split(";"):
                    if statement.strip():
                        try:
                            conn.execute(statement)
                        except sqlite3.OperationalError as exc:
                            if "duplicate column" not in str(exc):
                                raise
                version += 1
            # Written only when it changes, so a read-only database still opens for reading.
            if row is None or row[0] != str(version):
                conn.execute(schema.SET_SCHEMA_VERSION, (str(version),))
        except sqlite3.DatabaseError as exc:
            raise translate(exc, self.path) from None

    def _current_version(self) -> Optional[int]:
        try:
            rows = self._read(schema.SELECT_SCHEMA_VERSION)
        except RepositoryError as exc:
            if "no such table" in str(exc):
                return None
            raise
        return self._version(rows[0][0]) if rows else None

    def _version(self, stored: Any) -> int:
        """The schema version stored as `stored`: an integer, or a RepositoryError."""
        return schema_version(stored, f"SQLite at {self.path!r}", "file")

    def _refuse_newer(self, version: int) -> None:
        if version > schema.SCHEMA_VERSION:
            raise RepositoryError(
                f"SQLite at {self.path!r}: schema version {version} is newer than this"
                f" jobcore understands ({schema.SCHEMA_VERSION}); upgrade jobcore")

    def _refuse_foreign_file(self, conn: sqlite3.Connection) -> None:
        """Refuse a database holding an object named as one of jobcore's tables or indexes
        that is not it (with no jobcore_meta table, any such object): another
        application's (jobcore would fail on its columns, change its rows, or skip an index
        of its own); and one whose schema version is newer than this jobcore's, or no
        number. Runs on the first connection, before the journal mode is set: a refused
        file is left as it was."""
        # (lower-cased: SQLite's names are: an index JOBS_READY made jobcore skip its own)
        found = {name.lower(): (kind, table.lower()) for name, kind, table in conn.execute(schema.SELECT_OBJECTS)}
        ours = found.get("jobcore_meta") == OBJECTS_MADE["jobcore_meta"]
        for name, made in OBJECTS_MADE.items():
            if name in found and (found[name] != made or not ours):
                kind, table = found[name]
                what = f"{kind} {name!r}" + (f" on {table!r}" if kind not in ("table", "view") else "")
                why = "" if ours else " (the file has no jobcore_meta table)"
                raise RepositoryError(f"SQLite at {self.path!r}: {what} is not jobcore's{why};"
                                      " give jobcore a file of its own")
        if not ours:
            return
        rows = conn.execute(schema.SELECT_SCHEMA_VERSION).fetchall()  # all: no statement left open
        if rows:
            self._refuse_newer(self._version(rows[0][0]))
