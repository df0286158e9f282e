"""Dependency bookkeeping shared by in-process repositories: messages and graph checks.

Only pure helpers: no storage and no locks.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Container, Optional, Sequence

from ..errors import DependencyError
from ..models import JobStatus
from .base import JobRecord


# The statuses of a dependency that will never complete (as text; JobStatus members match too).
ENDED = (JobStatus.FAILED.value, JobStatus.CANCELLED.value)


def dependency_error_message(failed_id: str, failed_name: str, status: str) -> str:
    """The error a dependent job carries when a dependency will never complete."""
    return f"dependency {failed_id} ({failed_name}) ended {status}"


def check_batch_dependencies(records: Sequence[Any], exists: Container[str],
                             schedule: Callable[[str], bool] = lambda job_id: False) -> None:
    """Raise `DependencyError` for an unknown dependency, a cron schedule (which never
    completes: its runs are jobs of their own) or a cycle inside the batch.

    `exists` answers `job_id in exists` for jobs already stored; `schedule(job_id)`
    whether such a job is a cron schedule."""
    batch = {record.id: record for record in records}
    for record in records:
        for dep in record.depends_on:
            if dep == record.id:
                raise DependencyError(f"job {record.id} depends on itself")
            if dep in batch:
                is_schedule = batch[dep].cron is not None
            elif dep in exists:
                is_schedule = schedule(dep)
            else:
                raise DependencyError(f"job {record.id} depends on unknown job {dep!r}")
            if is_schedule:
                raise DependencyError(f"job {record.id} depends on cron schedule {dep!r}, which never"
                                      " completes (each of its runs is a job of its own)")
    # Depth-first search for a cycle among batch members (stored jobs cannot depend on
    # batch members, so a cycle can only run through the batch).
    state: dict[str, int] = {}
    for start in batch:
        if state.get(start):
            continue
        stack = [(start, iter(batch[start].depends_on))]
        state[start] = 1
        while stack:
            node, deps = stack[-1]
            for dep in deps:
                if dep not in batch:
                    continue
                if state.get(dep) == 1:
                    raise DependencyError(f"dependency cycle through jobs {node} and {dep}")
                if not state.get(dep):
                    state[dep] = 1
                    stack.append((dep, iter(batch[dep].depends_on)))
                    break
            else:
                state[node] = 2
                stack.pop()


def plan_batch(records: Sequence[JobRecord], exists: Container[str],
               unfinished_with_key: Callable[[str], Optional[str]],
               ended: Callable[[str], bool],
               schedule: Callable[[str], bool]) -> tuple[list[str], list[JobRecord], dict[str, str]]:
    """Check a batch for `insert` and decide what of it to store, and how.

    Returns the id each record resolves to, in order (a record whose `unique_key` is held
    by an unfinished job, or by an earlier record of the batch, resolves to that job); the
    records to store, where a dependency on a record not stored is renamed (in a copy) to
    the job standing in for it, so the dependent waits for that job; and, for each record
    to store CANCELLED, the dependency that will never complete: a stored job that
    `ended(job_id)` says ended FAILED or CANCELLED, or a record of the batch stored
    cancelled. Such a record holds no `unique_key`, so a later record of the batch with its
    key is stored in its own right, as if each had been enqueued in turn.
    Raises `DependencyError` for an unknown dependency, one on a cron schedule
    (`schedule(job_id)` tells whether a stored job is one) or a cycle."""
    if all(not record.depends_on and record.unique_key is None for record in records):
        return [record.id for record in records], list(records), {}  # nothing to check or resolve
    check_batch_dependencies(records, exists, schedule)
    stand_in, cancelled_by = _plan(records, unfinished_with_key, ended)
    stored = []
    for record in records:
        if record.id in stand_in:
            continue
        depends_on = tuple(dict.fromkeys(stand_in.get(dep, dep) for dep in record.depends_on))
        if depends_on != tuple(record.depends_on):
            record = dataclasses.replace(record, depends_on=depends_on)
        stored.append(record)
    if stand_in:
        check_batch_dependencies(stored, exists, schedule)  # a stand-in can close a cycle, or be a schedule
    return [stand_in.get(record.id, record.id) for record in records], stored, cancelled_by


def _plan(records: Sequence[JobRecord], unfinished_with_key: Callable[[str], Optional[str]],
          ended: Callable[[str], bool]) -> tuple[dict[str, str], dict[str, str]]:
    """For each record not to be stored, the job standing in for it: the holder of its
    unique_key, an unfinished stored job or the first record of the batch with that key
    not stored cancelled. For each record stored cancelled, the dependency that dooms it.

    Whether a record is stored cancelled depends on its dependencies (and on the jobs
    standing in for them), and which record holds a key on whether the earlier ones with
    that key are: each record is decided after its dependencies and the previous record
    with its key, in that order (Kahn's algorithm, iterative: batches may be long chains)."""
    batch = {record.id: record for record in records}
    previous: dict[str, str] = {}  # record id -> the previous record with its unique_key
    last_with: dict[str, str] = {}
    for record in records:
        if record.unique_key is not None:
            if record.unique_key in last_with:
                previous[record.id] = last_with[record.unique_key]
            last_with[record.unique_key] = record.id
    needs = {record.id: [dep for dep in record.depends_on if dep in batch] + (
        [previous[record.id]] if record.id in previous else []) for record in records}
    waiting_on = {job_id: len(set(deps)) for job_id, deps in needs.items()}
    needed_by: dict[str, list[str]] = {}
    for job_id, deps in needs.items():
        for dep in set(deps):
            needed_by.setdefault(dep, []).append(job_id)
    ready = [job_id for job_id, count in waiting_on.items() if count == 0]
    holders: dict[str, Optional[str]] = {}  # unique_key -> unfinished stored job holding it
    holder_before: dict[str, Optional[str]] = {}  # record id -> the job holding its key before it
    cancelled_by: dict[str, str] = {}  # record id -> the stored, ended job that dooms it
    stand_in: dict[str, str] = {}
    decided = 0
    while ready:
        job_id = ready.pop()
        decided += 1
        record = batch[job_id]
        key = record.unique_key
        holder: Optional[str] = None
        if key is not None:
            if key not in holders:
                holders[key] = unfinished_with_key(key)
            holder = holders[key]
            before = previous.get(job_id)
            if holder is None and before is not None:
                holder = holder_before[before] or (None if before in cancelled_by else before)
            holder_before[job_id] = holder
        if holder is not None:  # its dependents wait for the holder, which is unfinished
            stand_in[job_id] = holder
        else:
            for dep in record.depends_on:
                dep = stand_in.get(dep, dep)
                if dep in cancelled_by if dep in batch else ended(dep):
                    # The stored job that ended, as a cascade at run time names it (a
                    # dependency of this batch doomed by it passes it on).
                    cancelled_by[job_id] = cancelled_by.get(dep, dep)
                    break
        for dependent in needed_by.get(job_id, ()):
            waiting_on[dependent] -= 1
            if waiting_on[dependent] == 0:
                ready.append(dependent)
    if decided < len(records):
        raise DependencyError("dependency cycle through jobs sharing a unique_key")
    return stand_in, cancelled_by
