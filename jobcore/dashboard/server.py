"""`DashboardServer`: binds, serves and stops the dashboard's HTTP server, and holds its tokens and action counters; it answers no request itself.

Safe by default: it binds 127.0.0.1 and, so bound, answers only requests whose Host is a
loopback name (a DNS-rebinding page cannot read it); state changes are POSTs carrying the
per-process CSRF token that the page embeds; an optional access token guards every
request but the static files. How each request is checked and answered (the page, static
files, JSON API and metrics) is `dashboard.handler`. It reads and changes jobs through a
`JobManager` and runs none.
"""

from __future__ import annotations

import html
import secrets
import threading
from typing import Optional
from urllib.parse import quote

from ..manager import JobManager
from .checks import check_port, check_token, is_loopback
from .connections import DashboardHTTPServer, DashboardHTTPServerV6
from .handler import _Handler, _static

REQUEST_TIMEOUT = 30.0  # seconds a whole request may take to arrive, or a write to go, before the connection closes
MAX_CONNECTIONS = 100  # connections served at once (a thread each); more are answered 503 and closed
SHUTDOWN_POLL = 0.05  # seconds: how soon serve_forever notices close() (the default, 0.5, slows tests)


class DashboardServer:
    """Serves the dashboard for `manager` on `host:port` (port 0: any free port).

    `token`, when given, is required on every request but the static files, as
    `?token=...` or `Authorization: Bearer ...`; bound to an address other than loopback
    without one, a random token is made (see `login_url`). A token must be printable ASCII
    without spaces, and not empty (`ValueError` otherwise), as `port` must be 0 to 65535.
    `csrf_token` (made per process) must come with every POST in the `X-CSRF-Token`
    header; the page embeds it. A connection whose request has not all come within
    `request_timeout` seconds (of the wait for it starting) is closed, however it trickles; past `max_connections` served at once, a new one is answered 503
    (`ValueError` unless both are above 0)."""

    def __init__(self, manager: JobManager, host: str = "127.0.0.1", port: int = 8080, *,
                 token: Optional[str] = None, request_timeout: float = REQUEST_TIMEOUT,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        if token is not None:
            check_token(token)  # "" would match a request without one
        check_port(port)
        if (isinstance(request_timeout, bool) or not isinstance(request_timeout, (int, float))
                or not request_timeout > 0):  # also refuses NaN
            raise ValueError(f"request_timeout must be above 0 seconds, got {request_timeout!r}")
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) or max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections!r}")
        self.manager = manager
        self.loopback_only = is_loopback(host)
        # Reachable from other machines: never without an access token.
        self.token = token if token is not None or self.loopback_only else secrets.token_urlsafe(16)
        self.csrf_token = secrets.token_urlsafe(32)
        server_class = DashboardHTTPServerV6 if ":" in host else DashboardHTTPServer
        self._httpd = server_class((host, port), _Handler, request_timeout=request_timeout,
                                   max_connections=max_connections)
        self._httpd.dashboard = self
        self._thread: Optional[threading.Thread] = None
        # _actions_lock guards _actions, counters of cancels and retries served (for /metrics).
        self._actions_lock = threading.Lock()
        self._actions = {"cancel": 0, "retry": 0, "dlq_retry": 0}

    @property
    def port(self) -> int:
        """The port listened on (useful after binding port 0)."""
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """The page's address."""
        host = str(self._httpd.server_address[0])
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/"

    @property
    def login_url(self) -> str:
        """The page's address with the access token, if one is required."""
        return self.url + (f"?token={quote(self.token)}" if self.token else "")

    def start(self) -> "DashboardServer":
        """Serve on a background thread (named `jobcore-dashboard`); returns self."""
        self._thread = threading.Thread(target=self.serve_forever, name="jobcore-dashboard", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve on this thread until `close()` is called from another."""
        self._httpd.serve_forever(poll_interval=SHUTDOWN_POLL)

    def close(self) -> None:
        """Stop serving and release the socket."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> "DashboardServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def count_action(self, action: str) -> None:
        with self._actions_lock:
            self._actions[action] = self._actions.get(action, 0) + 1

    def actions(self) -> dict[str, int]:
        with self._actions_lock:
            return dict(self._actions)

    def page(self) -> bytes:
        """index.html with this process's CSRF token filled in."""
        text = _static("index.html").decode("utf-8")
        return text.replace("{{csrf_token}}", html.escape(self.csrf_token, quote=True)).encode("utf-8")
