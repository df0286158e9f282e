"""Opening a SQLite file jobcore cannot use as it is: a read-only copy written by an earlier
jobcore, a read-only directory, and a newer jobcore's file (refused at once, even while a
newer process writes to it, and left as it was).

Read-only files are made so by their permission bits, which root ignores: the openers run
in a child Python as this user or, under root, as uid and gid 65534 (nobody), so that
the tests exercise the same paths in a CI that runs as root.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Iterator

import pytest

from jobcore import Job, JobManager, SQLiteRepository
from jobcore.errors import RepositoryError
from jobcore.repository import sqlite_rows
from jobcore.repository import sqlite_schema as schema
from jobcore.repository.sqlite_rows import translate
from raw_db import raw_db

ROOT = str(Path(__file__).resolve().parent.parent)
NOBODY = 65534  # the uid and gid a child of root drops to: root may write any file, whatever its mode
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0

pytestmark = pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX permission bits")

# The child's first lines: jobcore imported while it may still read any file (root's own
# interpreter may be out of nobody's reach), then root's privileges dropped for good.
_PRELUDE = f"""
import os, shutil, sys  # shutil: argparse imports it late, maybe from a folder nobody may read
from jobcore import JobManager, SQLiteRepository
from jobcore.cli import main
from jobcore.errors import RepositoryError
if os.geteuid() == 0:
    os.setgroups([])
    os.setgid({NOBODY})
    os.setuid({NOBODY})
assert os.geteuid() != 0
"""


def run_unprivileged(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run `code` (after `_PRELUDE`) in a child Python that may not write what its
    permission bits forbid."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("JOBCORE_DB", None)
    return subprocess.run([sys.executable, "-c", _PRELUDE + textwrap.dedent(code)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the child may enter and write: under root, one of the system's temporary
    directory (pytest's own is root's alone) owned by nobody."""
    folder = Path(tempfile.mkdtemp(prefix="jobcore-refused-"))
    try:
        if AS_ROOT:
            for parent in folder.parents:
                if not os.stat(parent).st_mode & stat.S_IXOTH:
                    pytest.skip(f"{parent} is out of nobody's reach")
            os.chown(folder, NOBODY, NOBODY)
        yield folder
    finally:
        for here, dirs, _ in os.walk(folder):
            for name in dirs:
                os.chmod(os.path.join(here, name), 0o700)
        shutil.rmtree(folder)


def make_database(path: Path, version: int = schema.SCHEMA_VERSION) -> None:
    """A jobcore database holding one job, at schema `version`: schema.SCHEMA_VERSION, or the
    one before (as the previous jobcore left it), or a newer one's (only its number), with
    no -wal or -shm file beside it (as a copy of the file alone)."""
    manager = JobManager(str(path), producer=True)
    manager.enqueue(Job(function_name="work"))
    manager.close()
    with raw_db(path) as conn:
        if version < schema.SCHEMA_VERSION:
            assert version == schema.SCHEMA_VERSION - 1 and schema.MIGRATIONS[version].startswith(schema._JOB_DEP_LISTS)
            conn.execute("DROP TABLE job_dep_lists")
        conn.execute("UPDATE jobcore_meta SET value = ? WHERE key = 'schema_version'", (str(version),))
    conn.close()
    assert not any(os.path.exists(f"{path}{suffix}") for suffix in ("-wal", "-shm"))


# -- a read-only copy of an older schema ---------------------------------------------------------
def test_a_read_only_copy_of_an_older_schema_says_it_must_be_migrated_by_a_process_with_write_access(
        shared_dir: Path) -> None:
    # Given read-only copies of a current database and of one the previous jobcore wrote,
    # in a directory the reader may write
    older, current = shared_dir / "older.db", shared_dir / "current.db"
    make_database(older, schema.SCHEMA_VERSION - 1)
    make_database(current)
    for path in (older, current):
        os.chmod(path, 0o444)
    # when a process that may not write them opens them
    result = run_unprivileged(f"""
        print(SQLiteRepository({str(current)!r}).count_queued())  # read-only, yet opens for reading
        try:
            SQLiteRepository({str(older)!r})
        except RepositoryError as exc:
            print(exc)
        sys.exit(main(["--db", {str(older)!r}, "stats"]))
    """, shared_dir)
    # then the older one's error says what to do, where it said only "read-only"
    said = (f"SQLite at {str(older)!r}: schema version {schema.SCHEMA_VERSION - 1} must be migrated to"
            f" {schema.SCHEMA_VERSION} once, by a process with write access to the file and its directory;"
            " this one cannot write it: the database is read-only (attempt to write a readonly database)")
    assert result.stdout.splitlines() == ["1", said], result.stderr
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"jobcore: error: {said}"]
    # and it is left unmigrated, until a process that may write it opens it
    os.chmod(older, 0o644)
    manager = JobManager(str(older), producer=True)
    assert manager.get_stats()["total"] == 1
    manager.close()


# -- a read-only directory ------------------------------------------------------------------------
@pytest.mark.parametrize("version, mode", [(schema.SCHEMA_VERSION, 0o666), (schema.SCHEMA_VERSION - 1, 0o444)],
                         ids=["current-writable-file", "older-read-only-file"])
def test_a_database_in_a_read_only_directory_without_its_shm_file_says_the_directory_is_read_only(
        shared_dir: Path, version: int, mode: int) -> None:
    # Given a WAL database with no -wal and -shm files, in a directory its reader may not write
    folder = shared_dir / "readonly"
    folder.mkdir()
    path = folder / "jobs.db"
    make_database(path, version)
    os.chmod(path, mode)
    os.chmod(folder, 0o555)
    # when it is opened, then the error names the directory (SQLite says
    # SQLITE_READONLY_DIRECTORY, in the words of any read-only database)
    result = run_unprivileged(f"""
        try:
            JobManager({str(path)!r}, producer=True)
        except RepositoryError as exc:
            print(exc)
    """, shared_dir)
    assert result.stdout.splitlines() == [
        f"SQLite at {str(path)!r}: the database is read-only, and so is its directory, which holds no -wal"
        " and -shm files that SQLite could use: give write access to the directory (attempt to write a"
        " readonly database)"], result.stderr


def test_without_an_error_name_a_read_only_directory_is_told_by_the_directory_and_the_shm_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Python 3.10's sqlite3 errors carry no sqlite_errorname
    path = tmp_path / "jobs.db"
    path.touch()
    error = sqlite3.OperationalError("attempt to write a readonly database")
    assert "read-only, and so is its directory" not in str(translate(error, str(path)))  # the directory may be written
    real_access = os.access
    monkeypatch.setattr(sqlite_rows.os, "access",
                        lambda name, mode: False if name == str(tmp_path) else real_access(name, mode))
    assert "the database is read-only, and so is its directory" in str(translate(error, str(path)))
    Path(f"{path}-shm").touch()  # SQLite could read through it: the file itself is read-only
    assert str(translate(error, str(path))).endswith(
        ": the database is read-only (attempt to write a readonly database)")


# -- a newer jobcore's database -------------------------------------------------------------------
def test_a_newer_schema_is_refused_at_once_while_another_process_writes_to_it(tmp_path: Path) -> None:
    # Given a newer jobcore's database, whose write lock another connection holds (a newer
    # jobcore's process in a long write: a big cleanup, its own migration)
    path = tmp_path / "jobs.db"
    make_database(path, schema.SCHEMA_VERSION + 1)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("INSERT INTO job_logs (job_id, at, level, message) VALUES ('x', 0, 'info', 'busy')")
        # when this jobcore opens it, then it says why at once: it waited the whole busy
        # timeout for the lock, then said the database stayed locked
        started = time.monotonic()
        with pytest.raises(RepositoryError, match=f"schema version {schema.SCHEMA_VERSION + 1} is newer than this"
                                                  f" jobcore understands \\({schema.SCHEMA_VERSION}\\); upgrade jobcore"):
            SQLiteRepository(str(path), busy_timeout=2.0)
        assert time.monotonic() - started < 2.0
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_refused_newer_database_is_left_as_it_was_its_journal_mode_too(tmp_path: Path) -> None:
    # Given a newer jobcore's database in rollback-journal mode (shipped as one file, say)
    path = tmp_path / "jobs.db"
    make_database(path, schema.SCHEMA_VERSION + 1)
    with raw_db(path) as conn:
        assert conn.execute("PRAGMA journal_mode = DELETE").fetchone() == ("delete",)
    conn.close()
    before = _digest(path)
    # when this jobcore refuses it
    with pytest.raises(RepositoryError, match="is newer than this jobcore understands"):
        SQLiteRepository(str(path))
    # then not a byte of it changed: it used to be switched to WAL mode first
    assert _digest(path) == before
    assert sorted(os.listdir(tmp_path)) == ["jobs.db"]
    with raw_db(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    conn.close()


@pytest.mark.skipif(sys.platform == "win32", reason="resource limits are POSIX")
def test_a_process_out_of_file_descriptors_is_told_so_not_to_check_permissions(tmp_path: Path) -> None:
    # given a process that has opened as many files as its limit allows, after storing a job
    code = textwrap.dedent(f"""
        import os, resource, threading
        from jobcore import SQLiteRepository
        from jobcore.errors import RepositoryError
        from jobcore.testing.contract import NOW, make_record
        repo = SQLiteRepository({str(tmp_path / "jobs.db")!r})
        repo.insert([make_record()], NOW)
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 16,
                                                    resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        held = []
        try:
            while True:
                held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass
        said = []
        def use():  # a thread of its own: a connection of its own to open
            try:
                repo.count_by_status()
            except RepositoryError as exc:
                said.append(str(exc))
        thread = threading.Thread(target=use)
        thread.start()
        thread.join()
        print(said[0] if said else "no error")
        """)
    done = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=ROOT),
                          capture_output=True, text=True, timeout=60)
    # when it uses the store from a thread that has no connection yet, then the error says
    # why (it said to check the file's permissions)
    assert done.returncode == 0, done.stderr
    assert "as many files open as it may (EMFILE)" in done.stdout, done.stdout
