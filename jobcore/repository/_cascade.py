"""Dependency bookkeeping shared by in-process repositories: messages and graph checks.

Only pure helpers: no storage and no locks.
"""

from __future__ import annotations

from typing import Any, Container, Sequence

from ..errors import DependencyError


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
