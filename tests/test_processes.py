"""Several worker processes on one SQLite file: exactly-once draining, SIGKILL, recovery.

Real subprocesses started as users start them (`python -m jobcore worker --import`), real
SIGKILL. Each job appends "<n> <pid>" to a log file (O_APPEND) when it starts running, so
the test can count how often each job ran and where.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any, Iterator, Optional

import pytest

from jobcore import FakeClock, Job, JobManager, JobStatus, MemoryRepository, SQLiteRepository
from waiting import wait_until
from subprocesses import close_pipes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAIT = 60.0

JOBS_MODULE = textwrap.dedent("""
    import os, time
    import jobcore

    LOG = os.environ["CHAOS_LOG"]

    def work(n, pause=0.0):
        fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, f"{n} {os.getpid()}\\n".encode())
        finally:
            os.close(fd)
        if pause:
            time.sleep(pause)
        return n

    def hang(started_file):
        with open(started_file, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(3600)

    jobcore.register_job_function("work", work)
    jobcore.register_job_function("chaosjobs.hang", hang)
""")


class Workers:
    """Starts and kills worker processes on one database."""

    def __init__(self, tmp_path: Any) -> None:
        self.db = str(tmp_path / "shared.db")
        self.log = str(tmp_path / "runs.log")
        (tmp_path / "chaosjobs.py").write_text(JOBS_MODULE)
        self.env = {**os.environ, "CHAOS_LOG": self.log,
                    "PYTHONPATH": os.pathsep.join([str(tmp_path), ROOT, os.environ.get("PYTHONPATH", "")])}
        self.cwd = str(tmp_path)
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, workers: int = 2, lease: float = 1.0) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [sys.executable, "-m", "jobcore", "--db", self.db, "worker", "--import", "chaosjobs",
             "--workers", str(workers), "--lease-timeout", str(lease), "--poll-interval", "0.2"],
            env=self.env, cwd=self.cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.processes.append(process)
        return process

    def runs(self) -> collections.Counter[int]:
        if not os.path.exists(self.log):
            return collections.Counter()
        with open(self.log) as f:
            return collections.Counter(int(line.split()[0]) for line in f if line.strip())

    def pids(self) -> set[int]:
        with open(self.log) as f:
            return {int(line.split()[1]) for line in f if line.strip()}

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
            close_pipes(process)


@pytest.fixture
def workers(tmp_path: Any) -> Iterator[Workers]:
    pool = Workers(tmp_path)
    yield pool
    pool.stop_all()


def test_two_processes_drain_every_job_exactly_once(workers: Workers) -> None:
    producer = JobManager(workers.db, producer=True)
    # Leases far longer than the test: both processes live, so no job may run twice. (With
    # a 1 s lease a process stalled that long on a loaded machine loses its claims, and a
    # job it then runs anyway runs twice: at-least-once, which the crash tests cover.)
    workers.start(workers=4, lease=30.0)
    workers.start(workers=4, lease=30.0)
    wait_until(lambda: len(producer.list_workers()) == 2, WAIT)  # both up before work arrives
    ids = []
    for start in range(0, 2000, 250):  # arrive in bursts while both are running
        ids += producer.enqueue_many([Job(function_name="work", args=(n,)) for n in range(start, start + 250)])

    wait_until(lambda: producer.get_stats()["completed"] == 2000, WAIT)

    runs = workers.runs()
    assert sorted(runs) == list(range(2000))
    assert set(runs.values()) == {1}
    assert len(workers.pids()) == 2  # both processes took work
    assert all(producer.poll(job_id).attempts == 1 for job_id in ids[::97])
    producer.close()


def test_sigkilled_worker_loses_no_job(workers: Workers) -> None:
    producer = JobManager(workers.db, producer=True)
    steady = workers.start(workers=2)
    victim = workers.start(workers=2)
    producer.enqueue_many([Job(function_name="work", args=(n,), kwargs={"pause": 0.01}) for n in range(300)])

    for kill, threshold in enumerate((40, 110, 180)):
        wait_until(lambda: len(workers.runs()) >= threshold, WAIT)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        victim = workers.start(workers=2)

    wait_until(lambda: producer.get_stats()["completed"] == 300, WAIT)
    runs = workers.runs()
    assert sorted(runs) == list(range(300))
    duplicates = sum(count - 1 for count in runs.values())
    assert duplicates <= 3 * 2 * 2  # at most 2 x max_workers per kill
    assert steady.poll() is None
    producer.close()


def test_job_of_a_killed_worker_completes_elsewhere(workers: Workers, tmp_path: Any) -> None:
    producer = JobManager(workers.db, producer=True)
    started = tmp_path / "started"
    job_id = producer.enqueue(Job(function_name="chaosjobs.hang", args=(str(started),), max_retries=3))
    victim = workers.start(workers=1)
    wait_until(lambda: started.exists() and started.read_text() != "", WAIT)
    assert producer.poll(job_id).status is JobStatus.RUNNING
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)

    started.unlink()
    # A healthy worker whose copy of hang() returns at once.
    (tmp_path / "chaosjobs2.py").write_text(textwrap.dedent("""
        import jobcore
        def hang(started_file):
            return "finished elsewhere"
        jobcore.register_job_function("chaosjobs.hang", hang)
    """))
    rescuer = subprocess.Popen(
        [sys.executable, "-m", "jobcore", "--db", workers.db, "worker", "--import", "chaosjobs2",
         "--workers", "1", "--lease-timeout", "1.0", "--poll-interval", "0.2"],
        env=workers.env, cwd=workers.cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workers.processes.append(rescuer)

    result = producer.wait(job_id, timeout=WAIT)
    assert result.status is JobStatus.COMPLETED
    assert result.result == "finished elsewhere"
    assert result.attempts >= 2
    assert any("lost its lease" in entry.message for entry in producer.get_logs(job_id))
    producer.close()


def test_worker_registry_lists_live_processes(workers: Workers) -> None:
    first = workers.start(workers=1)
    workers.start(workers=1)
    manager = JobManager(workers.db, producer=True)
    wait_until(lambda: len(manager.list_workers()) == 2, 20)
    assert {w.pid for w in manager.list_workers()} == {p.pid for p in workers.processes}
    first.send_signal(signal.SIGTERM)
    first.wait(15)
    wait_until(lambda: len(manager.list_workers()) == 1, 20)
    manager.close()


def test_a_dead_worker_on_this_host_is_noticed_before_its_lease_ends(workers: Workers, tmp_path: Any) -> None:
    producer = JobManager(workers.db, producer=True)
    started = tmp_path / "started"
    job_id = producer.enqueue(Job(function_name="chaosjobs.hang", args=(str(started),)))
    victim = workers.start(workers=1, lease=3600)  # its lease alone would hold the job an hour
    wait_until(lambda: started.exists() and started.read_text() != "", WAIT)
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)

    (tmp_path / "rescue.py").write_text(textwrap.dedent("""
        import jobcore
        jobcore.register_job_function("chaosjobs.hang", lambda started_file: "rescued")
    """))
    rescuer = subprocess.Popen(
        [sys.executable, "-m", "jobcore", "--db", workers.db, "worker", "--import", "rescue",
         "--workers", "1", "--poll-interval", "0.2"],
        env=workers.env, cwd=workers.cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workers.processes.append(rescuer)

    began = time.monotonic()
    result = producer.wait(job_id, timeout=WAIT)
    assert (result.status, result.result) == (JobStatus.COMPLETED, "rescued")
    assert result.attempts == 2
    assert time.monotonic() - began < 30  # not the hour-long lease
    producer.close()


def test_a_gone_worker_that_held_no_job_is_removed_without_a_warning(tmp_path: Any, caplog: Any) -> None:
    # given a registry entry of a process on this host that ended holding no job (a
    # multiprocessing child that returned without stopping its manager): each other
    # manager warned of it on stderr
    from jobcore.housekeeper import host_identity
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(10)
    db = str(tmp_path / "jobs.db")
    registry = SQLiteRepository(db)
    try:
        registry.register_worker("gone-worker", host_identity(), gone.pid, time.time(), lease_timeout=3600)
    finally:
        registry.close()
    # when a manager runs on the file
    with caplog.at_level(logging.INFO, logger="jobcore.housekeeper"):
        with JobManager(db, poll_interval=0.05) as manager:
            wait_until(lambda: [w.worker_id for w in manager.list_workers()] == [manager.worker_id], WAIT,
                       "the gone worker's entry to be removed")
    # then it removed the entry, saying so at INFO, not WARNING
    said = [(r.levelno, r.getMessage()) for r in caplog.records if "gone-worker" in r.getMessage()]
    assert said == [(logging.INFO, f"worker gone-worker (pid {gone.pid}) is gone; 0 of its jobs taken back")]


def _in_forked_child(body: Any) -> tuple[int, list[str]]:
    """Run `body()` in a forked child of this process; its exit status and the words of
    the text `body` returned (the child leaves with os._exit, running no cleanup of ours)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.write(write, body().encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    report = os.read(read, 400).decode().split()
    os.close(read)
    _, status = os.waitpid(pid, 0)
    return status, report


def test_children_that_start_a_manager_built_before_the_fork_are_workers_of_their_own(tmp_path: Any) -> None:
    # given a manager built, not started, before the fork (gunicorn's --preload)
    path = str(tmp_path / "jobs.db")
    manager = JobManager(path, max_workers=1, lease_timeout=60)
    manager.register_function("pid", os.getpid)
    parent_id = manager.worker_id
    job_id = manager.enqueue(Job(function_name="pid"))

    # when a child starts it and runs a job
    def child() -> str:
        manager.start()
        result = manager.wait(job_id, timeout=WAIT)
        entries = [w.worker_id for w in manager.list_workers()]
        manager.stop()
        return f"{manager.worker_id} {result.worker_id} {result.result} {' '.join(entries)}"

    status, (child_id, claimed_by, ran_in, *registered) = _in_forked_child(child)
    # then the child claims, runs and registers under an id of its own, made with its pid:
    # under the parent's, siblings were one worker, and one found gone took the others' jobs
    assert status == 0
    assert child_id != parent_id and claimed_by == child_id and registered == [child_id]
    assert child_id.split(":")[1] == ran_in != str(os.getpid())
    assert manager.worker_id == parent_id  # the parent's own is unchanged
    manager.close()


def test_a_forked_child_opens_connections_of_its_own_and_both_processes_go_on(tmp_path: Any) -> None:
    # given a producer whose process has used the file (as a web app's master does when
    # it builds its manager at import time, before forking its workers)
    path = str(tmp_path / "jobs.db")
    producer = JobManager(path, producer=True)
    first = producer.enqueue(Job(function_name="noop", args=(0,)))
    # (The object kept: the fork closes it, and a new one may take a freed one's id.)
    inherited = producer.repository._db.get()
    # when the process forks and the child enqueues, then leaves the way Python does
    # (closing what it holds)
    def child() -> str:
        own = producer.repository._db.get()
        job_id = producer.enqueue(Job(function_name="noop", args=(1,)))
        producer.repository.close()
        return f"{own is not inherited} {job_id}"

    status, report = _in_forked_child(child)
    # then the child used a connection of its own (SQLite forbids using one across a
    # fork), its job is stored, and the parent's connection still works
    assert status == 0 and report[0] == "True", report
    last = producer.enqueue(Job(function_name="noop", args=(2,)))
    assert [producer.poll(job_id).status for job_id in (first, report[1], last)] == [JobStatus.PENDING] * 3
    producer.repository.close()


def test_a_manager_running_when_its_process_forks_stores_jobs_in_the_child_for_the_parent(
        tmp_path: Any) -> None:
    # given a started manager (its worker threads run in this process)
    path = str(tmp_path / "jobs.db")
    manager = JobManager(path, max_workers=2, discovery_interval=0.02)
    manager.register_function("where", os.getpid)
    manager.start()
    try:
        assert manager.wait(manager.enqueue(Job(function_name="where")), timeout=WAIT).result == os.getpid()
        # when the process forks, and the child enqueues through it and tries to start it
        def child() -> str:
            refused = ""
            try:
                manager.start()
            except RuntimeError as exc:
                refused = "refused" if "build a new JobManager" in str(exc) else str(exc)
            return f"{refused} {manager.running} {manager.enqueue(Job(function_name='where'))}"

        status, report = _in_forked_child(child)
        # then the child's manager was not running (its workers stayed here) and said so
        # when asked to start, and the job it stored runs here, in the parent
        assert status == 0 and report[:2] == ["refused", "False"], report
        assert manager.wait(report[2], timeout=WAIT).result == os.getpid()
    finally:
        manager.stop()


def test_the_default_manager_of_a_forked_child_runs_jobs_in_the_child(tmp_path: Any) -> None:
    # given a script whose default manager runs, then forks (a web server preloading the
    # app): the child enqueues through the module-level API and waits
    script = textwrap.dedent("""
        import os
        import jobcore

        jobcore.register_job_function("where", os.getpid)
        first = jobcore.enqueue(jobcore.Job(function_name="where"))
        assert jobcore.get_job_manager().wait(first, timeout=30).result == os.getpid()
        pid = os.fork()
        if pid == 0:
            job_id = jobcore.enqueue(jobcore.Job(function_name="where"))
            result = jobcore.get_job_manager().wait(job_id, timeout=30)
            print("CHILD", result.status.value, result.result == os.getpid(), flush=True)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        print("PARENT", status)
    """)
    env = {**os.environ, "JOBCORE_DB": str(tmp_path / "default.db"),
           "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    # then the child got a default manager of its own, whose workers ran its job there
    # (before, the inherited one claimed it for workers that stayed in the parent, and it
    # sat RUNNING until its lease expired)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["CHILD completed True", "PARENT 0"], done.stdout + done.stderr


def _run_script(script: str, tmp_path: Any) -> subprocess.CompletedProcess[str]:
    """Run `script` (dedented) with $JOBCORE_DB in `tmp_path`; its completed process."""
    path = tmp_path / "app.py"
    path.write_text(textwrap.dedent(script))
    env = {**os.environ, "JOBCORE_DB": str(tmp_path / "default.db"),
           "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(path)], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)


def test_the_default_manager_of_a_forked_child_keeps_the_notification_channels(tmp_path: Any) -> None:
    # (the child's default manager was built with the parent's size, lease and functions
    # only: a job dead-lettered there told no one)
    done = _run_script("""
        import os
        import jobcore

        def broken():
            raise ValueError("no")

        events = []
        jobcore.register_job_function("broken", broken)
        jobcore.get_job_manager().add_notification_channel(jobcore.CallbackNotificationChannel(events.append))
        pid = os.fork()
        if pid == 0:
            job_id = jobcore.enqueue(jobcore.Job(function_name="broken", max_retries=0))
            jobcore.get_job_manager().wait(job_id, timeout=30)
            jobcore.get_job_manager().stop()  # (delivers what waits)
            print("CHILD", [e["event"] for e in events if e["job_id"] == job_id], flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
    """, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "CHILD ['job.dead_lettered']", done.stdout + done.stderr


def test_a_multiprocessing_child_stops_its_default_manager_as_it_ends(tmp_path: Any) -> None:
    # A process multiprocessing started leaves with os._exit: the default manager's atexit
    # stop never ran, and the jobs it was running stayed RUNNING (run again elsewhere).
    done = _run_script("""
        import multiprocessing, os, time
        import jobcore

        def slow():
            open("started", "w").close()
            time.sleep(0.5)
            return os.getpid()

        def task():
            jobcore.register_job_function("slow", slow)
            job_id = jobcore.enqueue(jobcore.Job(function_name="slow"))
            while not os.path.exists("started"):  # running (a job claimed, not started, is handed back)
                time.sleep(0.01)
            print("TASK", job_id, os.getpid(), flush=True)

        if __name__ == "__main__":
            child = multiprocessing.get_context("fork").Process(target=task)
            child.start()
            child.join(60)
            print("EXIT", child.exitcode, flush=True)
    """, tmp_path)
    assert done.returncode == 0, done.stderr
    (task, exit_line) = done.stdout.split("\n")[:2]
    _, job_id, child_pid = task.split()
    assert exit_line == "EXIT 0"
    result = JobManager(str(tmp_path / "default.db"), producer=True).poll(job_id)
    assert result is not None and (result.status, result.attempts, result.result) == (
        JobStatus.COMPLETED, 1, int(child_pid)), result


def test_a_default_manager_first_used_in_an_atexit_handler_is_stopped_at_exit(tmp_path: Any) -> None:
    # Its stop is a finalizer of multiprocessing's, whose own atexit handler was registered
    # only as multiprocessing.util was first imported, inside that handler: too late to run.
    # The job was killed with the process and left RUNNING.
    done = _run_script("""
        import atexit, os, time
        import jobcore

        def slow():
            open("started", "w").close()
            time.sleep(0.3)
            return "done"

        def at_exit():
            jobcore.register_job_function("slow", slow)
            job_id = jobcore.enqueue(jobcore.Job(function_name="slow"))
            while not os.path.exists("started"):  # running (a job claimed, not started, is handed back)
                time.sleep(0.01)
            print("JOB", job_id, flush=True)

        atexit.register(at_exit)
    """, tmp_path)
    assert done.returncode == 0, done.stderr
    _, job_id = done.stdout.split("\n")[0].split()
    result = JobManager(str(tmp_path / "default.db"), producer=True).poll(job_id)
    assert result is not None and (result.status, result.result) == (JobStatus.COMPLETED, "done"), result


def test_no_manager_starts_in_an_isolated_jobs_child_as_it_imports_the_main_script(tmp_path: Any) -> None:
    # The child of an isolated job imports the script again (as __mp_main__) before it is
    # one: a top-level register_job_function started a default manager there, which took
    # the app's jobs, and left them RUNNING as the app's exit ended the child.
    done = _run_script("""
        import os, time
        import jobcore

        def work(x):
            time.sleep(0.05)
            return os.getpid()

        jobcore.register_job_function("work", work)

        if __name__ == "__main__":
            manager = jobcore.get_job_manager()
            isolated = jobcore.enqueue(jobcore.Job(function=work, args=(0,), isolation="process"))
            print("ISOLATED", manager.wait(isolated, timeout=30).status.value, flush=True)
            ids = [jobcore.enqueue(jobcore.Job(function_name="work", args=(n,))) for n in range(12)]
            ran_in = {manager.wait(job_id, timeout=30).result for job_id in ids}
            print("RAN", ran_in == {os.getpid()}, flush=True)
    """, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["ISOLATED completed", "RAN True"], done.stdout + done.stderr


def test_the_default_manager_runs_in_a_spawn_child_whose_script_registers_at_top_level(tmp_path: Any) -> None:
    # (only an isolated job's child runs no manager: a check of any re-import of the
    # script as __mp_main__ left the default manager of every "spawn" child not started)
    done = _run_script("""
        import multiprocessing, os
        import jobcore

        def answer():
            return 42

        jobcore.register_job_function("answer", answer)

        def task(queue):
            job_id = jobcore.enqueue(jobcore.Job(function_name="answer"))
            queue.put(jobcore.get_job_manager().wait(job_id, timeout=30).result)

        if __name__ == "__main__":
            jobcore.get_job_manager().stop()  # the parent runs nothing: the child must
            context = multiprocessing.get_context("spawn")
            queue = context.Queue()
            child = context.Process(target=task, args=(queue,))
            child.start()
            print("CHILD", queue.get(timeout=60), flush=True)
            child.join(60)
    """, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "CHILD 42", done.stdout + done.stderr


def test_an_immediate_manager_goes_on_running_jobs_in_a_forked_child() -> None:
    # given an immediate manager (it runs jobs inside enqueue, with no thread to lose)
    manager = JobManager(MemoryRepository(), immediate=True)
    manager.register_function("where", os.getpid)
    manager.start()

    # when the process forks, then the child's enqueue runs the job there, as before
    def child() -> str:
        result = manager.wait(manager.enqueue(Job(function_name="where")), timeout=WAIT)
        return f"{result.result == os.getpid()} {manager.running}"

    assert _in_forked_child(child) == (0, ["True", "True"])


def _dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(10)
    return child.pid


def test_a_registry_row_jobcore_never_wrote_leaves_the_others_read_and_the_dead_found(tmp_path: Any) -> None:
    # given a gone worker of this host holding a job, beside a registry row a hand edit broke
    # (its running jobs not JSON, its pid and times text): listing the registry raised, so
    # the dashboard's stats failed, and every housekeeper pass stopped before it found the
    # gone worker, whose job waited out its hour-long lease
    import sqlite3
    from jobcore.housekeeper import host_identity

    path = str(tmp_path / "jobs.db")
    manager = JobManager(path, lease_timeout=3600, producer=True)
    repo, now = manager.repository, time.time()
    repo.register_worker("gone-here", host_identity(), _dead_pid(), now)
    held = manager.enqueue(Job(function_name="noop"))
    assert repo.claim(held, "gone-here", now, now + 3600) is not None
    raw = sqlite3.connect(path)
    raw.execute("INSERT INTO jobcore_workers VALUES ('broken', ?, 'x', 'noon', 'noon', 'not json', 'x')",
                (host_identity(),))
    raw.commit()
    raw.close()
    # when the registry is listed, and this manager's housekeeper looks for dead neighbours
    broken = {worker.worker_id: worker for worker in repo.list_workers()}["broken"]
    dead = manager._housekeeper._expire_dead_neighbours()
    # then the broken row reads as unknown, and the gone worker's job comes back
    assert (broken.pid, broken.running, broken.heartbeat_at, broken.lease_timeout) == (0, (), 0.0, None)
    assert dead == ["gone-here"]
    repo.recover(time.time())
    assert manager.poll(held).status is JobStatus.PENDING
    manager.close()


def test_only_a_worker_in_this_pid_namespace_is_taken_for_dead_by_its_pid(tmp_path: Any) -> None:
    # given two workers on this machine whose pids no process here has, each holding a
    # running job with an hour-long lease: one registered as this host and pid namespace,
    # one with this host name but in another pid namespace (another container sharing
    # the host name and the file), whose pid means nothing here
    from jobcore.housekeeper import host_identity

    manager = JobManager(str(tmp_path / "jobs.db"), lease_timeout=3600, producer=True)
    repo, now = manager.repository, time.time()
    here = host_identity()
    elsewhere = here.rsplit(" ", 1)[0] + " pid:[1]" if " pid:[" in here else here + " pid:[1]"
    held = {}
    for worker_id, host in (("gone-here", here), ("alive-elsewhere", elsewhere)):
        repo.register_worker(worker_id, host, _dead_pid(), now)
        held[worker_id] = manager.enqueue(Job(function_name="noop", args=(worker_id,)))
        assert repo.claim(held[worker_id], worker_id, now, now + 3600) is not None
    # when this manager's housekeeper looks for dead neighbours
    assert manager._housekeeper._expire_dead_neighbours() == ["gone-here"]
    # then only the one in this namespace lost its job (the other, live in its own
    # namespace, would have its job run twice at once) and its entry
    repo.recover(time.time())
    assert manager.poll(held["gone-here"]).status is JobStatus.PENDING
    assert manager.poll(held["alive-elsewhere"]).status is JobStatus.RUNNING
    assert [w.worker_id for w in repo.list_workers()] == ["alive-elsewhere"]
    manager.close()


@pytest.mark.parametrize("another_lapsed", [False, True])
def test_while_recovery_is_held_off_a_gone_neighbours_jobs_come_back_if_no_other_lease_lapsed(
        tmp_path: Any, another_lapsed: bool) -> None:
    # given a manager holding recovery off (as for a lease after it starts), a gone worker
    # of this host holding a job, and maybe a worker elsewhere whose lease lapsed (dead,
    # or alive with its heartbeats held back by a lock: a recovery cannot tell)
    from jobcore.housekeeper import host_identity

    manager = JobManager(str(tmp_path / "jobs.db"), lease_timeout=3600, producer=True)
    repo, now = manager.repository, time.time()
    repo.register_worker("gone-here", host_identity(), _dead_pid(), now)
    gone_job = manager.enqueue(Job(function_name="noop", args=(1,)))
    assert repo.claim(gone_job, "gone-here", now, now + 3600) is not None
    if another_lapsed:
        silent_job = manager.enqueue(Job(function_name="noop", args=(2,)))
        assert repo.claim(silent_job, "silent-elsewhere", now - 120, now - 60) is not None
    # when the housekeeper finds the gone one
    dead = manager._housekeeper._expire_dead_neighbours()
    assert dead == ["gone-here"]
    manager._housekeeper._recover_the_dead(dead)
    # then its job comes back at once, unless that recovery would take the other too
    expected = JobStatus.RUNNING if another_lapsed else JobStatus.PENDING
    assert manager.poll(gone_job).status is expected
    if another_lapsed:
        assert manager.poll(silent_job).status is JobStatus.RUNNING
    manager.close()


def test_a_worker_that_stopped_beating_is_not_listed_before_its_entry_is_removed(tmp_path: Any) -> None:
    # given a registry entry that last beat two minutes ago (a worker killed with no
    # other worker running to remove it) and one that beat just now
    manager = JobManager(str(tmp_path / "jobs.db"), lease_timeout=60)
    now = time.time()
    manager.repository.register_worker("killed", "host", 1, now - 120)
    manager.repository.register_worker("beating", "host", 2, now)
    # then only the one beating within the lease counts as a worker (it said 2 for ever)
    assert [w.worker_id for w in manager.list_workers()] == ["beating"]
    assert len(manager.repository.list_workers()) == 2  # the entry itself is still there
    manager.close()


def test_a_worker_removed_from_the_registry_while_its_beats_failed_registers_again(tmp_path: Any) -> None:
    # given a started manager whose registry entry another worker removed (as one does
    # to entries silent for lease_timeout: after an outage longer than that, live
    # workers were left out of the registry for good)
    manager = JobManager(str(tmp_path / "jobs.db"), poll_interval=0.05).start()
    try:
        (entry,) = manager.repository.list_workers()
        manager.repository.unregister_worker(manager.worker_id)
        # then its next heartbeat finds the entry gone and registers again
        wait_until(lambda: [w.worker_id for w in manager.repository.list_workers()] == [manager.worker_id], WAIT)
        assert manager.repository.list_workers()[0].host == entry.host
    finally:
        manager.close()


class _Watch:
    """Mixed into a repository: tells when its manager's housekeeper has begun its loop
    (`looping`: it takes a change token first, after reading the clock its timers start
    from), and waits for its heartbeats and reaps to reach a wall time (`saw`)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.looping = threading.Event()
        # _seen guards _latest: the time of the latest heartbeat, and the `before` of the latest reap.
        self._seen = threading.Condition()
        self._latest = {"beat": float("-inf"), "reap": float("-inf")}

    def change_token(self) -> Optional[object]:
        self.looping.set()
        return super().change_token()  # type: ignore[misc, no-any-return]

    def beat_worker(self, worker_id: str, running: Any, now: float) -> Optional[bool]:
        beaten = super().beat_worker(worker_id, running, now)  # type: ignore[misc]
        self._saw("beat", now)
        return beaten  # type: ignore[no-any-return]

    def reap_workers(self, before: float, now: Optional[float] = None) -> list[str]:
        reap = super().reap_workers  # type: ignore[misc]
        removed = reap(before) if now is None else reap(before, now=now)
        self._saw("reap", before)
        return removed  # type: ignore[no-any-return]

    def _saw(self, what: str, at: float) -> None:
        with self._seen:
            self._latest[what] = max(self._latest[what], at)
            self._seen.notify_all()

    def saw(self, what: str, at: float) -> bool:
        """Wait (bounded) for a heartbeat ("beat") at wall time `at` or later, or a reap
        ("reap") of the entries silent since `at` or later."""
        with self._seen:
            return self._seen.wait_for(lambda: self._latest[what] >= at, WAIT)


class _WatchedSQLite(_Watch, SQLiteRepository):
    pass


def _advance(clock: FakeClock, seconds: float, beating: _Watch) -> None:
    """Move `clock` on by `seconds` in steps of 0.45 s, each once `beating`'s housekeeper
    has beaten after the one before. Its jump check reads the monotonic and the wall
    clock apart: two steps in between would be taken for a wall clock jump (over 1 s),
    which holds recovery and reaping off for a lease. (Its heartbeats come at most every
    0.45 s: each step makes one due.)"""
    while seconds > 0:
        step = min(seconds, 0.45)
        clock.advance(step)
        seconds -= step
        assert beating.saw("beat", clock.time())


def test_workers_with_different_leases_keep_each_others_registry_entries(
        make_manager: Any, db_path: str) -> None:
    # given a long-job worker (60 s lease, a heartbeat every 2 s) and a fast one (1.5 s
    # lease, a heartbeat every 0.2 s) on one file, both registered at the same moment
    clock = FakeClock()
    started = clock.time()
    slow_repo, fast_repo = _WatchedSQLite(db_path), _WatchedSQLite(db_path)
    slow = make_manager(slow_repo, lease_timeout=60.0, poll_interval=2.0, clock=clock).start()
    fast = make_manager(fast_repo, lease_timeout=1.5, poll_interval=0.2, clock=clock).start()
    assert slow_repo.looping.wait(WAIT) and fast_repo.looping.wait(WAIT)

    # when 1.8 s pass (the slow worker's next heartbeat is 0.2 s away) and the fast one
    # looks for silent workers
    _advance(clock, 1.8, fast_repo)
    assert fast_repo.saw("reap", started + 0.25)  # (the one due at 1.8 s)

    # then the slow worker, silent for 1.8 s of its own 60 s lease, is still registered,
    # and listed by either manager (it was removed and left out by the fast one's lease)
    both = sorted([slow.worker_id, fast.worker_id])
    assert sorted(w.worker_id for w in fast_repo.list_workers()) == both
    assert sorted(w.worker_id for w in fast.list_workers()) == both
    assert sorted(w.worker_id for w in slow.list_workers()) == both
    entry = next(w for w in fast.list_workers() if w.worker_id == slow.worker_id)
    assert (entry.heartbeat_at, entry.lease_timeout) == (started, 60.0)


class _SlowFirstToken(MemoryRepository):
    """Its first change token waits until `go` is set (a busy store), after `asked` is."""

    def __init__(self) -> None:
        super().__init__()
        self.asked, self.go = threading.Event(), threading.Event()

    def change_token(self) -> Optional[object]:
        if not self.asked.is_set():
            self.asked.set()
            assert self.go.wait(WAIT)
        return super().change_token()


def test_time_passing_during_the_first_change_token_is_no_wall_clock_jump(make_manager: Any,
                                                                        caplog: Any) -> None:
    # given a started manager whose housekeeper's first store call (a change token) is slow
    # (the suite, under load, saw a fake clock move then: "wall clock jumped by -0.5s",
    # recovery and reaping held off a lease, and a test waiting for a reap failed)
    clock = FakeClock()
    repository = _SlowFirstToken()
    with caplog.at_level(logging.WARNING, logger="jobcore.housekeeper"):
        manager = make_manager(repository, lease_timeout=1.5, poll_interval=0.2, clock=clock).start()
        assert repository.asked.wait(WAIT)
        # when time passes during it (both clocks: no jump)
        clock.advance(0.45)
        repository.go.set()
        manager.stop()
    # then no jump of the wall clock was seen
    assert not [r for r in caplog.records if "jumped" in r.getMessage()]


class _RegistryWithoutLeases(_Watch, MemoryRepository):
    """A backend written before worker entries recorded a lease: the older signatures."""

    def register_worker(self, worker_id: str, host: str, pid: int, now: float) -> None:  # type: ignore[override]
        super().register_worker(worker_id, host, pid, now)

    def reap_workers(self, before: float) -> list[str]:  # type: ignore[override]
        return super().reap_workers(before)


def test_a_backend_whose_registry_records_no_leases_still_registers_and_reaps() -> None:
    # given a manager on a backend whose registry methods take no lease, and a silent
    # entry of a dead worker
    clock = FakeClock()
    started = clock.time()
    repository = _RegistryWithoutLeases()
    repository.register_worker("dead", "elsewhere", 1, started)
    manager = JobManager(repository, lease_timeout=1.0, poll_interval=0.1, clock=clock).start()
    try:
        # then it registers without one, is listed by its own lease, and reaps the
        # silent entry by its own lease too
        (entry,) = [w for w in repository.list_workers() if w.worker_id == manager.worker_id]
        assert entry.lease_timeout is None
        assert repository.looping.wait(WAIT)
        _advance(clock, 1.35, repository)
        assert repository.saw("reap", started + 0.3)
        assert [w.worker_id for w in repository.list_workers()] == [manager.worker_id]
        assert [w.worker_id for w in manager.list_workers()] == [manager.worker_id]
    finally:
        manager.close()


SPAWNED_MAIN = textwrap.dedent("""
    import multiprocessing, sys
    from jobcore import Job, JobManager

    def noop():
        return "ran"

    def work(db, stop):
        with JobManager(db) as manager:
            manager.register_function(noop)  # a function alone: under its module.qualname
            stop.wait(30)

    if __name__ == "__main__":
        db = sys.argv[1]
        producer = JobManager(db)  # not started: it only stores
        job_id = producer.enqueue(Job(function=noop))
        print(producer.poll(job_id).function_name, flush=True)
        context = multiprocessing.get_context("spawn")
        stop = context.Event()
        child = context.Process(target=work, args=(db, stop))
        child.start()
        try:
            print(producer.wait(job_id, timeout=20).result, flush=True)
        finally:
            stop.set()
            child.join(20)
            producer.close()
""")


def test_a_spawned_child_runs_the_jobs_of_a_function_of_the_main_script(tmp_path: Any) -> None:
    # given a script that enqueues Job(function=noop) ("__main__.noop"), and a child started
    # by spawn that registers noop alone: there its module is "__mp_main__", and the jobs
    # waited for ever
    script = tmp_path / "app.py"
    script.write_text(SPAWNED_MAIN)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, str(script), str(tmp_path / "jobs.db")], env=env, cwd=str(tmp_path),
                         capture_output=True, text=True, timeout=60)
    # then the child ran it
    assert run.stdout.split() == ["__main__.noop", "ran"], run.stderr
