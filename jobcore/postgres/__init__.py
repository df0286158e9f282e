"""jobcore on PostgreSQL: `PostgresRepository`, for queues shared by processes on many machines.

An optional extra (`pip install "jobcore[postgres]"`, which brings psycopg 3): importing
`jobcore` never imports this package, and this package is the only place psycopg is
used. It adds no behaviour of its own beyond the `JobRepository` contract.

    from jobcore import JobManager
    from jobcore.postgres import PostgresRepository

    manager = JobManager(PostgresRepository("postgresql://app@db.internal/app"))
"""

from __future__ import annotations

try:
    import psycopg  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "jobcore.postgres needs psycopg 3: pip install \"jobcore[postgres]\""
        f" (or pip install \"psycopg[binary]\"); importing it failed: {exc}"
    ) from exc

from .repository import PostgresRepository

__all__ = ["PostgresRepository"]
