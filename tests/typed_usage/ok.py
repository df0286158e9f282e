"""An application's use of jobcore as SPEC and docs/ show it: `mypy --strict` must accept
all of it (tests/test_typing.py checks it; it is never run)."""

from __future__ import annotations

from fractions import Fraction
from typing import Any, Callable, Optional

import jobcore
from jobcore import (CallbackNotificationChannel, Job, JobManager, MemoryRepository, NotificationChannel,
                     current_job)
from jobcore.dashboard import DashboardServer
from jobcore.testing import RepositoryContract, make_record

manager = JobManager(MemoryRepository())


@manager.register_function("emails.send")
def send(to: str, progress_callback: Optional[Callable[..., None]] = None) -> str:
    if progress_callback is not None:
        progress_callback(Fraction(1, 3), None, step="one")  # any real number; a message of None
    return f"sent to {to}"


@jobcore.register_job_function("reports.build")
def build(user: str) -> str:
    context = current_job()
    if context is not None:
        context.progress(Fraction(1, 2), "half")
    return user


@manager.register_function
def bare(x: int) -> int:
    return x


@manager.periodic("*/15 * * * *", name="reminders.send")
def send_reminders() -> str:
    return "sent"


def double(x: int) -> int:
    return 2 * x


# The decorators give the function back with its own type: its calls are still checked.
checked: tuple[str, str, int, str, Callable[[int], int]] = (
    send("ann"), build("bob"), bare(1), send_reminders(), manager.register_function("math.double", double))

# Job fields in the forms Job's validation takes and normalises.
fetch = Job(function=build, args=("sales",), tags=["etl", "nightly"])
process = Job(function=build, args=("sales",), tags=("etl",), depends_on=[fetch])
ids: list[str] = manager.enqueue_many([fetch, process])
after = Job(function=build, args=("x",), depends_on=ids, tags=frozenset({"etl"}))
first = manager.wait(ids[0])
again = Job(function=build, args=("x",), tags=first.tags)  # JobResult.tags: a frozenset

listed = manager.list_jobs(tags=(tag for tag in ["etl"]))


def on_event(event: dict[str, Any]) -> None:
    print(event["event"])


channel: NotificationChannel = CallbackNotificationChannel(on_event)
manager.add_notification_channel(channel)

server = DashboardServer(manager, host="127.0.0.1", port=0)
url: str = server.url


class MyContract(RepositoryContract):
    """A backend's contract suite, as backends.md shows."""


record = make_record()
