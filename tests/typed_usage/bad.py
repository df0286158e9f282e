"""Mistakes `mypy --strict` must catch in an application's use of jobcore (each line
marked with "E:" and a code is an error of that code; tests/test_typing.py checks it; never run)."""

from __future__ import annotations

from typing import Any

import jobcore
from jobcore import JobManager, MemoryRepository
from jobcore.dashboard import DashboardServer

manager = JobManager(MemoryRepository())


@manager.register_function("emails.send")
def send(to: str) -> str:
    return to


@manager.register_function
def bare(x: int) -> int:
    return x


@jobcore.register_job_function("reports.build")
def build(user: str) -> str:
    return user


@manager.periodic("*/15 * * * *")
def send_reminders() -> str:
    return "sent"


def on_event(event: dict[str, Any]) -> None:
    print(event)


send(42)  # E: arg-type
bare("not an int")  # E: arg-type
build(7)  # E: arg-type
send_reminders(1, 2, 3)  # E: call-arg
manager.add_notification_channel(on_event)  # E: arg-type
DashboardServer(manager, hots="127.0.0.1")  # E: call-arg
