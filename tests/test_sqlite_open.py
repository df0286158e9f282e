"""Opening and holding a SQLite file: waits bounded by the busy timeout, set-up on a file
another process is creating, refusing another application's tables, closing at exit,
errors in words, and a file removed while in use."""

from __future__ import annotations

import ntpath
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from jobcore import Job, JobManager, JobStatus, SQLiteRepository
from jobcore.errors import RepositoryError
from jobcore.repository import sqlite_conn, sqlite_rows
from jobcore.repository import sqlite_schema as schema
from jobcore.repository.sqlite_conn import file_uri
from jobcore.repository.sqlite_migration import OBJECTS_MADE
from jobcore.repository.sqlite_rows import translate
from raw_db import raw_db

ROOT = str(Path(__file__).resolve().parent.parent)


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("JOBCORE_DB", None)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


# -- waiting on a locked database ---------------------------------------------------------
@pytest.fixture
def locked(tmp_path: Path) -> Iterator[tuple[JobManager, list[str], sqlite3.Connection]]:
    """Given a producer with busy_timeout 0.5 s and stored jobs, and another connection
    holding the database's lock."""
    path = str(tmp_path / "jobs.db")
    manager = JobManager(SQLiteRepository(path, busy_timeout=0.5), producer=True)
    ids = manager.enqueue_many([Job(function_name="work") for _ in range(8)])
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    yield manager, ids, holder
    holder.execute("ROLLBACK")
    holder.close()
    manager.close()


def test_threads_queued_behind_a_locked_database_each_raise_within_about_their_own_busy_timeout(
        locked: tuple[JobManager, list[str], sqlite3.Connection]) -> None:
    # Each used to wait a full busy timeout once the thread ahead of it gave up: the
    # last of 8 raised after 4 s. Now each call's wait is fixed when it starts.
    manager, ids, _ = locked
    took: list[tuple[str, float, BaseException | None]] = []
    start = threading.Barrier(8)

    def call(kind: str, job_id: str) -> None:
        start.wait(10)
        began = time.monotonic()
        try:
            manager.cancel(job_id) if kind == "cancel" else manager.enqueue(Job(function_name="work"))
            error = None
        except RepositoryError as exc:
            error = exc
        took.append((kind, time.monotonic() - began, error))

    threads = [threading.Thread(target=call, args=(kind, ids[i])) for i in range(4) for kind in ("cancel", "enqueue")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(took) == 8
    for kind, seconds, error in took:
        assert error is not None and "locked past the busy timeout" in str(error), (kind, error)
        assert seconds < 3 * 0.5, (kind, seconds)  # cancels within 1, enqueues (shared) within 2
    assert manager.get_stats()["total"] == 8  # nothing stored, nothing lost


def test_a_thread_waiting_for_another_threads_write_lock_gives_up_at_its_deadline(tmp_path: Path) -> None:
    repo = SQLiteRepository(str(tmp_path / "jobs.db"), busy_timeout=0.2)
    try:
        with repo._db.write():  # this thread holds the process's write lock
            errors: list[BaseException] = []
            thread = threading.Thread(target=lambda: _capture(errors, lambda: repo.register_worker("w", "h", 1, 0.0)))
            thread.start()
            thread.join(10)
            assert not thread.is_alive()
        assert len(errors) == 1 and "locked past the busy timeout" in str(errors[0])
        repo.register_worker("w", "h", 1, 0.0)  # free again
    finally:
        repo.close()


def _capture(errors: list[BaseException], call: Any) -> None:
    try:
        call()
    except RepositoryError as exc:
        errors.append(exc)


# -- setting up a connection -----------------------------------------------------------------
class _Flaky(sqlite3.Connection):
    """A connection whose first `PRAGMA journal_mode = WAL` answers as on a new file that
    another process is setting up: "database is locked" at once, then the old mode."""

    answers: list[Any] = []

    def execute(self, sql_text: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
        if sql_text.startswith("PRAGMA journal_mode") and _Flaky.answers:
            answer = _Flaky.answers.pop(0)
            if isinstance(answer, BaseException):
                raise answer
            return super().execute("SELECT ?", (answer,))
        return super().execute(sql_text, *args)


def test_the_journal_mode_is_set_again_while_another_process_holds_a_new_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # It used to be set outside the busy wait: the open failed at once ("locked past the
    # busy timeout" after 30 ms), 1 process in 800 when 8 created a file together.
    real_connect = sqlite3.connect
    monkeypatch.setattr(sqlite_conn.sqlite3, "connect",
                        lambda *args, **kwargs: real_connect(*args, factory=_Flaky, **kwargs))
    _Flaky.answers = [sqlite3.OperationalError("database is locked"), "delete",
                      sqlite3.OperationalError("database is locked")]
    repo = SQLiteRepository(str(tmp_path / "jobs.db"), busy_timeout=5.0)
    try:
        assert _Flaky.answers == []
        assert repo._read("PRAGMA journal_mode") == [("wal",)]
    finally:
        repo.close()


def test_a_journal_mode_that_never_becomes_wal_fails_after_the_busy_timeout(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_connect = sqlite3.connect
    monkeypatch.setattr(sqlite_conn.sqlite3, "connect",
                        lambda *args, **kwargs: real_connect(*args, factory=_Flaky, **kwargs))
    _Flaky.answers = ["delete"] * 1_000_000
    try:
        with pytest.raises(RepositoryError, match="locked past the busy timeout.*journal mode stayed 'delete'"):
            SQLiteRepository(str(tmp_path / "jobs.db"), busy_timeout=0.05)
    finally:
        _Flaky.answers = []


@pytest.mark.parametrize("name", ["file::memory:?cache=shared", "file:jobs?mode=memory&cache=shared"])
def test_an_in_memory_sqlite_database_is_refused_at_once_saying_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    name: str) -> None:
    # given a shared-cache in-memory URI (it waited the whole busy timeout, 30 s, then said
    # the database was locked: its journal mode is "memory", never WAL), or another name
    # SQLite gives an in-memory database
    monkeypatch.chdir(tmp_path)
    began = time.monotonic()
    with pytest.raises(RepositoryError, match="an in-memory SQLite database cannot be used"):
        SQLiteRepository(name, busy_timeout=10.0)
    assert time.monotonic() - began < 5.0  # not the busy timeout
    assert os.listdir(tmp_path) == []  # and no file of that name made


def test_names_that_only_look_in_memory_are_files_and_in_memory_names_are_refused_even_if_a_file_exists(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    # a name with "mode=memory" outside a URI's query is a file of that name
    os.mkdir("file:notes")
    for name in ("file:mode=memory.db", "file:notes/mode=memory-backup.db"):
        SQLiteRepository(name).close()
        assert os.path.exists(name)
    # and SQLite's in-memory names are refused, a file of that name there or not
    open("file::memory:", "wb").close()
    with pytest.raises(RepositoryError, match="an in-memory SQLite database cannot be used"):
        SQLiteRepository("file::memory:")
    assert os.path.getsize("file::memory:") == 0


def test_a_path_through_a_symbolic_link_and_dot_dot_is_the_file_the_file_system_names(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_manager: Any) -> None:
    # given link -> real/sub, and the path link/../jobs.db (the file system: real/jobs.db;
    # the URI made from its text named work/jobs.db, a file of its own)
    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "link").symlink_to(tmp_path / "real" / "sub")
    monkeypatch.chdir(tmp_path / "work")
    repository = SQLiteRepository("link/../jobs.db")
    manager = make_manager(repository, max_workers=1)
    manager.register_function("double", lambda x: 2 * x)
    manager.start()
    job_id = manager.enqueue(Job(function_name="double", args=(4,)))
    # then the job runs, in that file, which every other name of it opens
    assert manager.wait(job_id, timeout=10).result == 8
    assert not (tmp_path / "work" / "jobs.db").exists()
    other = SQLiteRepository(str(tmp_path / "real" / "jobs.db"))
    try:
        assert other.store_key == repository.store_key
        found = other.get(job_id)
        assert found is not None and found.status is JobStatus.COMPLETED
    finally:
        other.close()


def test_a_new_file_whose_name_starts_with_file_colon_is_that_file_for_every_connection(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_manager: Any) -> None:
    # given a relative path that SQLite would read as a URI ("file:jobs.db" names jobs.db
    # there), of a file that does not exist yet
    monkeypatch.chdir(tmp_path)
    manager = make_manager(SQLiteRepository("file:jobs.db"), max_workers=1)
    manager.register_function("double", lambda x: 2 * x)
    # when a job is enqueued and run (its outcome recorded on another thread's connection)
    manager.start()
    job_id = manager.enqueue(Job(function_name="double", args=(21,)))
    # then it completes, in the one file of that very name (the first connection made
    # jobs.db, the others found "file:jobs.db" gone, and the job stayed RUNNING)
    assert manager.wait(job_id, timeout=10).result == 42
    assert sorted(name for name in os.listdir(tmp_path) if not name.endswith(("-wal", "-shm"))) == ["file:jobs.db"]


# -- another application's database -------------------------------------------------------------
_TABLES = [name for name, (kind, _) in OBJECTS_MADE.items() if kind == "table" and name != "jobcore_meta"]
_INDEXES = [name for name, (kind, _) in OBJECTS_MADE.items() if kind == "index"]


@pytest.mark.parametrize("made", [f"{kind} {name}" for kind, names in (("table", _TABLES), ("view", _TABLES),
                                                                       ("index", _INDEXES)) for name in names]
                         + ["index JOBS_READY", "view Jobs"])  # (SQLite's names ignore case)
def test_another_applications_object_named_as_jobcores_is_refused_and_the_file_left_as_it_was(
        tmp_path: Path, made: str) -> None:
    # A view or index of that name was not looked at: the file was switched to WAL, then
    # refused for "views may not be indexed"; or an index of jobcore's was skipped (`IF NOT
    # EXISTS`), and two unfinished jobs took one unique key, or every claim failed.
    kind, name = made.split()
    path = str(tmp_path / "crm.db")
    with raw_db(path) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, title TEXT)")
        conn.execute({"table": f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, title TEXT)",
                      "view": f"CREATE VIEW {name} AS SELECT * FROM orders",
                      "index": f"CREATE INDEX {name} ON orders (title)"}[kind])
    conn.close()
    with pytest.raises(RepositoryError, match=f"{kind} '{name.lower()}' .*is not jobcore's.*give jobcore a file of its own"):
        SQLiteRepository(path)
    with raw_db(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)  # was switched to wal for good
        assert sorted(row[0] for row in conn.execute("SELECT name FROM sqlite_master")) == sorted(["orders", name])
    conn.close()


def test_an_index_of_another_application_in_a_jobcore_file_is_refused(tmp_path: Path) -> None:
    # given a jobcore file whose unique-key index another application replaced by its own
    path = str(tmp_path / "jobs.db")
    SQLiteRepository(path).close()
    with raw_db(path) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, title TEXT)")
        conn.execute("DROP INDEX jobs_unique")
        conn.execute("CREATE INDEX jobs_unique ON orders (title)")
    conn.close()
    with pytest.raises(RepositoryError, match="index 'jobs_unique' on 'orders' is not jobcore's; give jobcore"):
        SQLiteRepository(path)


def test_the_objects_checked_are_those_jobcore_makes() -> None:
    created = {statement.split("EXISTS")[1].split("(")[0].split(" ON ")[0].strip()
               for statement in [schema.CREATE_META, *schema.CREATE_SCHEMA.split(";")] if "CREATE " in statement}
    assert created == set(OBJECTS_MADE) and len(_TABLES) == 5 and len(_INDEXES) == 9


def test_a_database_without_tables_named_as_jobcores_still_gets_them(tmp_path: Path) -> None:
    path = str(tmp_path / "other.db")
    with raw_db(path) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY)")
    conn.close()
    manager = JobManager(path, producer=True)
    manager.enqueue(Job(function_name="work"))
    assert manager.get_stats()["total"] == 1
    manager.close()


def test_a_schema_version_that_is_no_number_is_a_repository_error(tmp_path: Path) -> None:
    path = str(tmp_path / "jobs.db")
    SQLiteRepository(path).close()
    with raw_db(path) as conn:
        conn.execute("UPDATE jobcore_meta SET value = '4.0'")
    conn.close()
    with pytest.raises(RepositoryError, match=r"schema version '4.0' is not a number: the file is corrupt or not jobcore's"):
        SQLiteRepository(path)
    result = run_python(f"import sys; from jobcore.cli import main; sys.exit(main(['--db', {path!r}, 'stats']))",
                        tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"jobcore: error: SQLite at {path!r}: schema version '4.0' is not a number:"
                                          " the file is corrupt or not jobcore's"]


@pytest.mark.parametrize("stored", ["0", "-1"])
def test_a_schema_version_below_the_first_is_a_repository_error(tmp_path: Path, stored: str) -> None:
    # (a KeyError, and a traceback from the CLI, looking for its migration)
    path = str(tmp_path / "jobs.db")
    SQLiteRepository(path).close()
    with raw_db(path) as conn:
        conn.execute("UPDATE jobcore_meta SET value = ?", (stored,))
    conn.close()
    message = f"SQLite at {path!r}: schema version {stored!r} is not one jobcore ever wrote: the file is corrupt or not jobcore's"
    with pytest.raises(RepositoryError) as raised:
        SQLiteRepository(path)
    assert str(raised.value) == message
    result = run_python(f"import sys; from jobcore.cli import main; sys.exit(main(['--db', {path!r}, 'stats']))",
                        tmp_path)
    assert (result.returncode, result.stderr.splitlines()) == (1, [f"jobcore: error: {message}"])
    with raw_db(path) as conn:  # and the file is left as it was
        assert conn.execute("SELECT value FROM jobcore_meta").fetchall() == [(stored,)]
    conn.close()


# -- closing at exit ----------------------------------------------------------------------------
def _no_wal_left(path: Path, jobs: int) -> None:
    assert not os.path.exists(f"{path}-wal") and not os.path.exists(f"{path}-shm")
    copy = path.with_name("copy.db")
    shutil.copy(path, copy)  # the database file alone, as `cp` would copy it
    with raw_db(copy) as conn:
        assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone() == (jobs,)
    conn.close()


def test_a_producer_that_exits_without_closing_leaves_every_commit_in_the_database_file(tmp_path: Path) -> None:
    # The commits stayed in jobs.db-wal (1.3 MB beside a 4 KB jobs.db): a copy of the
    # file alone lacked even the jobs table.
    result = run_python("""
        from jobcore import Job, JobManager
        manager = JobManager("jobs.db", producer=True)
        for i in range(100):
            manager.enqueue(Job(function_name="work", args=[i]))
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    _no_wal_left(tmp_path / "jobs.db", 100)


def test_a_with_block_then_exit_leaves_every_commit_in_the_database_file(tmp_path: Path) -> None:
    result = run_python("""
        from jobcore import Job, JobManager
        manager = JobManager("jobs.db", max_workers=2)
        manager.register_function("work", lambda x: x)
        with manager:
            for job_id in manager.enqueue_many([Job(function_name="work", args=[i]) for i in range(500)]):
                manager.wait(job_id, 60)
        assert manager.poll(job_id).result == 499  # still usable after the block
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    _no_wal_left(tmp_path / "jobs.db", 500)


def test_a_manager_still_running_at_exit_keeps_its_connections_and_loses_nothing(tmp_path: Path) -> None:
    result = run_python("""
        from jobcore import Job, JobManager
        manager = JobManager("jobs.db", max_workers=2, poll_interval=0.05)
        manager.register_function("work", lambda x: x)
        manager.start()
        for job_id in manager.enqueue_many([Job(function_name="work", args=[i]) for i in range(200)]):
            manager.wait(job_id, 60)
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    with raw_db(tmp_path / "jobs.db") as conn:
        assert conn.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall() == [("completed", 200)]
    conn.close()


# -- errors in words ---------------------------------------------------------------------------
def test_a_full_disk_met_growing_the_shm_file_reads_as_a_full_disk(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    error = sqlite3.OperationalError("disk I/O error")
    error.sqlite_errorname = "SQLITE_IOERR_SHMSIZE"  # type: ignore[attr-defined]  # as Python 3.11+ sets it
    assert "the disk is full (disk I/O error)" in str(translate(error, str(tmp_path / "jobs.db")))
    # Python 3.10 names no error: the disk's free space tells.
    bare = sqlite3.OperationalError("disk I/O error")
    assert "the disk is full" not in str(translate(bare, str(tmp_path / "jobs.db")))
    monkeypatch.setattr(sqlite_rows.os, "statvfs", lambda folder: os.statvfs_result((4096,) * 3 + (0, 0) + (0,) * 5))
    assert "the disk is full (disk I/O error)" in str(translate(bare, str(tmp_path / "jobs.db")))


def test_a_database_that_cannot_be_opened_in_a_read_only_directory_reads_as_read_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "jobs.db"
    path.touch()
    error = sqlite3.OperationalError("unable to open database file")
    assert "cannot open or create the file" in str(translate(error, str(path)))
    real_access = os.access
    monkeypatch.setattr(sqlite_rows.os, "access",
                        lambda name, mode: False if name == str(tmp_path) else real_access(name, mode))
    assert "the database is read-only, and so is its directory" in str(translate(error, str(path)))


# -- a file removed while in use ------------------------------------------------------------------
def test_a_file_removed_while_in_use_is_an_error_not_a_new_empty_database(tmp_path: Path) -> None:
    # A reader's next thread (a dashboard's next request) used to create an empty file there.
    path = tmp_path / "jobs.db"
    manager = JobManager(str(path), producer=True)
    manager.enqueue(Job(function_name="work"))
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(f"{path}{suffix}"):
            os.rename(f"{path}{suffix}", tmp_path / f"moved.db{suffix}")
    errors: list[BaseException] = []
    thread = threading.Thread(target=_capture, args=(errors, manager.get_stats))
    thread.start()
    thread.join(30)
    assert len(errors) == 1 and "the file is gone" in str(errors[0])
    assert not path.exists()
    manager.close()


@pytest.mark.parametrize("name", ["a b.db", "50%#?&x=1.db", "été.db"])
def test_every_thread_opens_a_file_whose_name_needs_quoting(tmp_path: Path, name: str) -> None:
    path = str(tmp_path / name)
    manager = JobManager(path, producer=True)
    manager.enqueue(Job(function_name="work"))
    seen: list[Any] = []
    thread = threading.Thread(target=lambda: seen.append(manager.get_stats()["total"]))
    thread.start()
    thread.join(30)
    assert seen == [1]
    assert sorted(os.listdir(tmp_path)) == sorted([name, f"{name}-wal", f"{name}-shm"])
    manager.close()


def test_file_uris_name_windows_paths() -> None:
    assert file_uri("C:\\data\\my jobs.db", "rw", ntpath) == "file:///C:/data/my%20jobs.db?mode=rw"
    assert file_uri("\\\\server\\share\\jobs.db", "rw", ntpath) == "file:////server/share/jobs.db?mode=rw"
    assert file_uri("/srv/q#1?.db", "rw") == "file:///srv/q%231%3F.db?mode=rw"


def test_a_file_whose_name_is_not_utf8_opens_from_every_thread_and_from_the_command_line(tmp_path: Path) -> None:
    # given a Latin-1 file name on a UTF-8 system, as os.listdir() and the command line
    # give it: 'caf\udce9.db', a lone surrogate. Quoting it into the URI raised
    # UnicodeEncodeError: no repository opened it, and the CLI printed a traceback.
    raw = os.path.join(os.fsencode(tmp_path), b"caf\xe9.db")
    try:
        open(raw, "wb").close()
        os.remove(raw)
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    path = os.fsdecode(raw)
    assert "\udce9" in path

    # when a repository creates it, then another opens it (by URI, as every thread's
    # connection but a new file's first does)
    manager = JobManager(SQLiteRepository(path), producer=True)
    job_id = manager.enqueue(Job(function_name="work"))
    manager.close()
    assert os.path.exists(raw)
    reopened = SQLiteRepository(path)
    seen: list[Any] = []
    thread = threading.Thread(target=lambda: seen.append(reopened.get(job_id)))
    thread.start()
    thread.join(30)
    reopened.close()

    # then both see the job, in the one file of that name
    assert [record.id for record in seen] == [job_id]
    assert sorted(os.listdir(os.fsencode(tmp_path))) == [b"caf\xe9.db"]
    # and the command line, given the name's bytes, reads it too
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", "jobcore", "--db", raw, "stats"], env=env,
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert b"pending" in proc.stdout and b"Traceback" not in proc.stderr


def test_the_connection_of_a_thread_not_started_by_threading_is_closed_as_it_ends(tmp_path: Path) -> None:
    # given threads started by C code (here `_thread`): each reads as alive for ever, so
    # the connection each opened stayed open, a file descriptor each
    import _thread
    from jobcore import SQLiteRepository
    repo = SQLiteRepository(str(tmp_path / "jobs.db"))
    done = threading.Semaphore(0)

    def request() -> None:
        try:
            repo.get("no-such-job")
        finally:
            done.release()

    for _ in range(40):
        _thread.start_new_thread(request, ())
        assert done.acquire(timeout=10)
    # then once they ended, their connections are closed and forgotten
    deadline = time.monotonic() + 10
    while len(repo._db._connections) > 1 and time.monotonic() < deadline:
        time.sleep(0.01)  # the last thread may still be ending
    assert len(repo._db._connections) <= 1
    repo.close()


CLOSE_DURING_READ = textwrap.dedent("""
    import sys, threading, time
    from jobcore import SQLiteRepository

    repository = SQLiteRepository(sys.argv[1])
    started, counted = threading.Event(), []

    def read():
        started.set()
        counted.append(repository._read(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000000)"
            " SELECT count(*) FROM c")[0][0])

    reader = threading.Thread(target=read)
    reader.start()
    started.wait()
    time.sleep(0.05)  # inside its statement (about half a second long)
    repository.close()
    reader.join()
    print(counted)
""")


def test_close_waits_for_a_statement_another_thread_is_running(tmp_path: Path) -> None:
    # given a thread inside a long read when the repository closes (a dashboard request
    # still reading as its manager closed): its connection was closed under the statement,
    # and the process died of a segfault
    script = tmp_path / "close_during_read.py"
    script.write_text(CLOSE_DURING_READ)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, str(script), str(tmp_path / "jobs.db")], env=env,
                         capture_output=True, text=True, timeout=60)
    # then the read ends as usual, and the connection is closed after it
    assert (run.returncode, run.stdout.strip()) == (0, "[2000000]"), run.stderr
