"""Dependency bookkeeping shared by in-process repositories: messages and graph checks.

Only pure helpers: no storage and no locks.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Container, Optional, Sequence

from ..errors import DependencyError
from .base import JobRecord


def dependency_error_message(failed_id: str, failed_name: str, status: str) -> str:
    """The error a dependent job carries when a dependency will never complete."""
    return f"dependency {failed_id} ({failed_name}) ended {status}"


def check_batch_dependencies(records: Sequence[Any], exists: Container[str]) -> None:
    """Raise `DependencyError` for an unknown dependency or a cycle inside the batch.

    `exists` answers `job_id in exists` for jobs already stored."""
    batch = {record.id: record for record in records}
    for record in records:
        for dep in record.depends_on:
            if dep == record.id:
                raise DependencyError(f"job {record.id} depends on itself")
            if dep not in batch and dep not in exists:
                raise DependencyError(f"job {record.id} depends on unknown job {dep!r}")
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
               unfinished_with_key: Callable[[str], Optional[str]]) -> tuple[list[str], list[JobRecord]]:
    """Check a batch for `insert` and decide what of it to store.

    Returns the id each record resolves to, in order (a record whose `unique_key` is held
    by an unfinished job, or by an earlier record of the batch, resolves to that job), and
    the records to store. A dependency on a record that is not stored is renamed (in a
    copy) to the job standing in for it, so the dependent waits for that job.
    Raises `DependencyError` for an unknown dependency or a cycle."""
    if all(not record.depends_on and record.unique_key is None for record in records):
        return [record.id for record in records], list(records)  # nothing to check or resolve
    check_batch_dependencies(records, exists)
    stand_in: dict[str, str] = {}
    batch_unique: dict[str, str] = {}
    for record in records:
        if record.unique_key is None:
            continue
        holder = batch_unique.get(record.unique_key) or unfinished_with_key(record.unique_key)
        if holder is None:
            batch_unique[record.unique_key] = record.id
        else:
            stand_in[record.id] = holder
    stored = []
    for record in records:
        if record.id in stand_in:
            continue
        depends_on = tuple(dict.fromkeys(stand_in.get(dep, dep) for dep in record.depends_on))
        if depends_on != tuple(record.depends_on):
            record = dataclasses.replace(record, depends_on=depends_on)
        stored.append(record)
    if stand_in:
        check_batch_dependencies(stored, exists)  # a stand-in can close a cycle
    return [stand_in.get(record.id, record.id) for record in records], stored
