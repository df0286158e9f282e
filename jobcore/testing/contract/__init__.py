"""The `JobRepository` contract as pytest tests any backend runs; it never looks inside a backend.

Every test drives the public methods of `jobcore.repository.base.JobRepository` and checks
what its docstrings promise. Nothing here knows how a backend stores rows (its own tests
check that: pragmas, indexes, files) and nothing reads a clock: times are fixed numbers.

A backend runs the whole suite by subclassing `RepositoryContract` and providing a
`repository` fixture that yields a fresh, empty repository per test::

    import pytest
    from jobcore.testing.contract import RepositoryContract

    class TestMyBackend(RepositoryContract):
        @pytest.fixture
        def repository(self, tmp_path):
            repo = MyBackend(...)
            yield repo
            repo.close()

The tests are grouped by what they exercise, one mixin per module (`adding`, `reading`,
`running`, `recovering`, `settling`, `progress`, `schedules`, `workers`, `housekeeping`, `concurrency`);
`RepositoryContract` combines them and is the one class to subclass. `support` holds the
fixed times and the helpers they share.
"""

from __future__ import annotations

from .adding import _AddingContract
from .concurrency import _ConcurrencyContract
from .housekeeping import _HousekeepingContract
from .progress import _ProgressContract
from .reading import _ReadingContract
from .recovering import _RecoveringContract
from .running import _RunningContract
from .schedules import _SchedulesContract
from .settling import _SettlingContract
from .support import LEASE, NOW, claim_race, make_record
from .workers import _WorkersContract

__all__ = ["RepositoryContract", "make_record", "claim_race", "NOW", "LEASE"]


class RepositoryContract(_AddingContract, _ReadingContract, _RunningContract, _RecoveringContract,
                         _SettlingContract, _ProgressContract, _SchedulesContract, _WorkersContract,
                         _HousekeepingContract,
                         _ConcurrencyContract):
    """Every promise of `JobRepository`, as pytest tests.

    Subclass it in a `Test...` class and provide a `repository` fixture yielding a fresh,
    empty repository per test (and closing it afterwards)."""
