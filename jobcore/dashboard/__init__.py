"""The jobcore web dashboard: one page and a small JSON API over `http.server`.

`DashboardServer(manager).start()` serves it; `jobcore dashboard` runs it from the command
line. It reads and changes jobs only through a `JobManager`, and runs none.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # a type checker sees the class itself (at run time it loads on first use)
    from .server import DashboardServer

__all__ = ["DashboardServer"]


def __getattr__(name: str) -> Any:
    # Lazy: the CLI imports `dashboard.views` for every command; http.server only when serving.
    if name == "DashboardServer":
        from .server import DashboardServer
        return DashboardServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
