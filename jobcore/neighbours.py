"""Dead neighbours: workers on this host whose process is gone; not reaping silent workers elsewhere.

A worker registers its host (`host_identity`) and pid. One on this host whose pid names
no process (SIGKILL, OOM) holds leases nothing renews: a housekeeper ends them at once
rather than wait out `lease_timeout` (`expire_dead_neighbours`). Workers on other hosts,
or in another pid namespace, are left to the housekeeper's reaping, which waits out their
lease. No thread, no lock here: the housekeeper's thread calls in.
"""

from __future__ import annotations

import logging
import os
import socket

from .clock import Clock
from .repository.base import JobRepository

# The housekeeper's logger: these messages are its own (configurations and tests name it).
logger = logging.getLogger("jobcore.housekeeper")


def expire_dead_neighbours(repository: JobRepository, clock: Clock, host: str, pid: int) -> list[str]:
    """End the leases of workers on this host whose process is gone (SIGKILL, OOM):
    their jobs need not wait out `lease_timeout`. A reused pid only delays this.
    "This host" is `host_identity()` (`host`; `pid` is this process's, never judged
    gone): a worker in another pid namespace (another container on the machine) has
    pids this process cannot see, so it is left alone. Returns the ids of those found."""
    found: list[str] = []
    for worker in repository.list_workers():
        if worker.host != host or worker.pid == pid or _pid_alive(worker.pid):
            continue
        count = repository.expire_worker(worker.worker_id, clock.time())
        repository.unregister_worker(worker.worker_id)
        # A warning only if it held jobs: a process that ended without stopping its
        # manager (a multiprocessing child returning) leaves an entry and nothing else.
        logger.log(logging.WARNING if count else logging.INFO, "worker %s (pid %d) is gone; %d of its"
                   " jobs taken back", worker.worker_id, worker.pid, count)
        found.append(worker.worker_id)
    return found


def host_identity() -> str:
    """What a worker registers as its host: where its pid means a process this one can
    check. The host name, and on Linux this boot of the machine and the pid namespace
    (containers on one machine, even sharing its host name, each have their own pids)."""
    parts = [socket.gethostname()]
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            parts.append(f"boot:{boot.read().strip()[:8]}")
        parts.append(os.readlink("/proc/self/ns/pid"))  # "pid:[4026531836]"
    except OSError:
        pass  # not Linux, or no /proc: the host name alone
    return " ".join(parts)


def _pid_alive(pid: int) -> bool:
    """True if a process with this pid exists on this machine (or we cannot tell)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, under another user
        return True
    return True
