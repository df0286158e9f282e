"""Test support for jobcore users and backend authors; importing it pulls in no test framework.

`RepositoryContract` (the repository contract suite) and `make_record` live in
`jobcore.testing.contract`, which needs pytest; they load on first use, so
`import jobcore.testing` never imports pytest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # a type checker sees them typed (at run time they load on first use)
    from .contract import RepositoryContract, make_record

__all__ = ["RepositoryContract", "make_record"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import contract

        return getattr(contract, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
