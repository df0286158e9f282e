"""A PostgreSQL server for the tests: the one `JOBCORE_TEST_PG_DSN` names, or a throwaway one.

`server_dsn()` returns a DSN to a database the tests may fill, starting a private cluster
(initdb in a temp dir, a free loopback port, trust auth, fsync off) the first time it is
needed when the environment names none; the cluster is stopped when the process exits,
also when it is killed (a watchdog process waits for it).
`SKIP_REASON` is set only when neither is possible. `.ci/postgres.sh` does the same for
CI from the shell. `restart()` and `stopped()` restart or stop the server, when it is one
of those two (never a server the environment merely names). It holds no jobcore code and
no tests.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from typing import Iterator, Optional

try:
    import fcntl
except ImportError:  # (not POSIX: no server of our own to restart either)
    fcntl = None  # type: ignore[assignment]

ENV = "JOBCORE_TEST_PG_DSN"
DIR_ENV = "JOBCORE_TEST_PG_DIR"  # .ci/postgres.sh's cluster directory, exported with its DSN
DATABASE = "jobcore_test"

_lock = threading.Lock()  # guards _dsn and _cluster
_dsn: Optional[str] = None
_cluster: Optional[str] = None  # the temp dir of the cluster we started, if any
_watchdog: Optional["subprocess.Popen[bytes]"] = None  # stops that cluster if we are killed


def find_bindir() -> Optional[str]:
    """The directory holding `initdb` and `pg_ctl` (PostgreSQL 15 preferred), or None."""
    candidates = ["/usr/lib/postgresql/15/bin"] + sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(out.stdout.strip())
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(os.path.dirname(os.path.realpath(initdb)))
    for bindir in candidates:
        if bindir and all(os.access(os.path.join(bindir, tool), os.X_OK) for tool in ("initdb", "pg_ctl")):
            return bindir
    return None


def _skip_reason() -> Optional[str]:
    if os.environ.get(ENV):
        return None
    if find_bindir() is None:
        return (f"NO POSTGRESQL: {ENV} is not set and no initdb/pg_ctl was found; the PostgreSQL"
                " repository is NOT tested here (install postgresql-15, or run .ci/postgres.sh)")
    return None


SKIP_REASON = _skip_reason()


def _as_owner(argv: list[str]) -> list[str]:
    """Run server binaries as `postgres` when we are root: initdb refuses root."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(argv: list[str], what: str) -> None:
    proc = subprocess.run(_as_owner(argv), capture_output=True, text=True, check=False, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")


def _start_cluster() -> str:
    bindir = find_bindir()
    assert bindir is not None, SKIP_REASON
    directory = tempfile.mkdtemp(prefix="jobcore-pg-")
    os.chmod(directory, 0o755)
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres")
    port = _free_port()
    data = os.path.join(directory, "data")
    _run([f"{bindir}/initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale"],
         "initdb")
    options = (f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c max_connections=300"
               " -c fsync=off -c synchronous_commit=off -c full_page_writes=off")
    _run([f"{bindir}/pg_ctl", "-D", data, "-l", os.path.join(directory, "server.log"), "-w", "-t", "60",
          "-o", options, "start"], "pg_ctl start")
    global _cluster, _watchdog
    _cluster = directory
    atexit.register(_stop_cluster, bindir, directory)
    # atexit does not run when the test process is killed (a timeout, Ctrl-C twice): a
    # watchdog process of its own session waits for the end of a pipe only this process
    # holds open, then stops the cluster and removes its directory.
    _watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, json.dumps(_stop_argv(bindir, directory)),
                                  directory], stdin=subprocess.PIPE, start_new_session=True,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _run([f"{bindir}/createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", DATABASE], "createdb")
    return f"postgresql://postgres@127.0.0.1:{port}/{DATABASE}"


def _stop_argv(bindir: str, directory: str) -> list[str]:
    return _as_owner([f"{bindir}/pg_ctl", "-D", os.path.join(directory, "data"), "-m", "immediate", "-w", "stop"])


def _stop_cluster(bindir: str, directory: str) -> None:
    subprocess.run(_stop_argv(bindir, directory), capture_output=True, check=False, timeout=60)
    shutil.rmtree(directory, ignore_errors=True)


_WATCHDOG = """
import json, shutil, subprocess, sys
sys.stdin.buffer.read()  # returns once the test process is gone, however it ended
subprocess.run(json.loads(sys.argv[1]), capture_output=True, check=False, timeout=60)
shutil.rmtree(sys.argv[2], ignore_errors=True)
"""


def server_dsn() -> str:
    """A DSN to a database for tests: `$JOBCORE_TEST_PG_DSN`, or a cluster started now."""
    global _dsn
    with _lock:
        if _dsn is None:
            _dsn = os.environ.get(ENV) or _start_cluster()
        return _dsn


def started_here() -> bool:
    """True if this process started the cluster (rather than using `$JOBCORE_TEST_PG_DSN`)."""
    return _cluster is not None


def _own_cluster() -> Optional[str]:
    """The directory of the cluster the tests use if we may restart it: started here, or
    by `.ci/postgres.sh` (which exports its directory with its DSN); else None."""
    with _lock:
        if _cluster is not None:
            return _cluster
    directory = os.environ.get(DIR_ENV)
    if os.environ.get(ENV) and directory and os.path.isfile(os.path.join(directory, "data", "PG_VERSION")):
        return directory
    return None


def restartable() -> bool:
    """True if `restart()` and `stopped()` can act on the server the tests use (call
    `server_dsn()` first)."""
    return _own_cluster() is not None and find_bindir() is not None


def restart() -> None:
    """Restart the server as an operator would (`pg_ctl restart -m fast`: every session is
    ended with `terminating connection due to administrator command`), and return once it
    accepts connections again. pg_ctl starts it with the options it was started with.
    It waits for the tests on the server in other processes to end (`alone`)."""
    with alone():
        _pg_ctl("restart", "-m", "fast")


@contextlib.contextmanager
def stopped() -> Iterator[None]:
    """Stop the server (fast: sessions are ended) for the block, then start it again with
    the options it had, and wait until it accepts connections."""
    directory = _own_cluster()
    assert directory is not None, "stopped() needs a cluster of our own"
    options = _options_started_with(os.path.join(directory, "data"))
    with alone():
        _pg_ctl("stop", "-m", "fast")
        try:
            yield
        finally:
            _pg_ctl("start", "-o", options)


# -- the server's use, shared among the test processes -------------------------------------
# A test on the server holds its use shared while it runs (`in_use`, taken by conftest for
# every such test); a restart or a stop holds it alone (`alone`), so that no test in
# another pytest-xdist worker has its connections ended under it. An flock on a file in
# the cluster's directory: every process on that cluster sees it. (conftest also puts
# those tests in one xdist group, but pytest 9.2 ignores the ids pytest-xdist 3.8 gives
# grouped tests, and the group was split over both workers.)
class SharedUse:
    """A use shared among processes, or held by one alone: an flock on the file at `path`
    (created if missing). Tests run one at a time in a process, on its main thread:
    `_mode` is this process's hold (fcntl.LOCK_UN, LOCK_SH or LOCK_EX). POSIX only."""

    def __init__(self, path: str) -> None:
        assert fcntl is not None, "flock is POSIX's"
        self._file = open(path, "ab")
        self._mode = fcntl.LOCK_UN

    def _hold(self, mode: int) -> None:
        if mode != self._mode:
            fcntl.flock(self._file, mode)
            self._mode = mode

    @contextlib.contextmanager
    def in_use(self) -> Iterator[None]:
        """Hold the use, shared with the other processes, for the block."""
        before = self._mode
        self._hold(before if before == fcntl.LOCK_EX else fcntl.LOCK_SH)
        try:
            yield
        finally:
            self._hold(before)

    @contextlib.contextmanager
    def alone(self) -> Iterator[None]:
        """Hold it alone for the block: once the other processes' holds have ended (this
        one's own hold is given up as it waits, and taken again after)."""
        before = self._mode
        self._hold(fcntl.LOCK_EX)
        try:
            yield
        finally:
            self._hold(before)

    def close(self) -> None:
        """Give up this process's hold and the file (the module's own use lasts the process)."""
        self._file.close()
        self._mode = fcntl.LOCK_UN

    def others_hold(self) -> bool:
        """True if another process holds it now (this process's own hold is as it was
        after)."""
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            fcntl.flock(self._file, self._mode)
        return False


_use: Optional[SharedUse] = None  # this process's, for the cluster the tests use


def _server_use() -> Optional[SharedUse]:
    """The use of the cluster the tests use, if they may restart it (else None: nothing
    to wait for)."""
    global _use
    directory = _own_cluster()
    if directory is None or fcntl is None:
        return None
    if _use is None:
        _use = SharedUse(os.path.join(directory, "tests.lock"))
    return _use


@contextlib.contextmanager
def in_use() -> Iterator[None]:
    """Hold the server's use, shared with the tests in other processes, for the block."""
    use = _server_use()
    with use.in_use() if use is not None else contextlib.nullcontext():
        yield


@contextlib.contextmanager
def alone() -> Iterator[None]:
    """Hold the server's use alone for the block (see `SharedUse.alone`)."""
    use = _server_use()
    with use.alone() if use is not None else contextlib.nullcontext():
        yield


def _options_started_with(data: str) -> str:
    """The server's command-line options as `postmaster.opts` recorded them, less `-D`
    (pg_ctl passes that itself)."""
    with open(os.path.join(data, "postmaster.opts"), encoding="utf-8") as opts:
        words = shlex.split(opts.read())[1:]  # the postgres binary, then its arguments
    kept: list[str] = []
    while words:
        word = words.pop(0)
        if word == "-D":
            words.pop(0)
        else:
            kept.append(shlex.quote(word))
    return " ".join(kept)


def _pg_ctl(action: str, *options: str) -> None:
    directory, bindir = _own_cluster(), find_bindir()
    assert directory is not None and bindir is not None, "pg_ctl needs a cluster of our own"
    _run([f"{bindir}/pg_ctl", "-D", os.path.join(directory, "data"), "-l", os.path.join(directory, "server.log"),
          "-w", "-t", "60", *options, action], f"pg_ctl {action}")
