"""The dashboard's listening socket: a thread per connection, a bounded number of them; no routing.

`DashboardHTTPServer` caps the connections served at once (past the cap a new one is
answered `503` and closed at once, so idle clients cannot exhaust the process's file
descriptors, which the job store needs too); the handler's request deadline (see
`handler._Handler.setup`) closes a connection idle, half-sent or trickling for too long.
`redact_tokens` keeps access tokens out of logged request lines. It knows nothing of jobs.
"""

from __future__ import annotations

import re
import socket
import threading
from http.server import ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import unquote_plus

TOKEN_PARAMETER = "token"
REDACTED = "[redacted]"
_BUSY_BODY = b'{"error": "too many connections to the dashboard; try again"}'
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
         b"Content-Length: %d\r\nConnection: close\r\nRetry-After: 1\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY))
# A query parameter in a logged request line: its separator, name and value.
# A value runs to the next `&` or space: a token may hold quotes and `;` (`check_token`),
# so a value stopping at one showed the rest of the token. `parse_qs` splits on `&` alone
# (Python 3.10), so `;` separates no parameters and ends no value.
_PARAMETER = re.compile(r"([?&])([^=&\s\"'#]*)=([^&\s#]*)")


def redact_tokens(text: str) -> str:
    """`text` with the value of every `token=` query parameter replaced by `[redacted]`.

    The name is compared percent-decoded, as `parse_qs` decodes it (`?%74oken=` is the
    token too)."""
    def one(match: re.Match[str]) -> str:
        separator, name, _ = match.groups()
        return f"{separator}{name}={REDACTED}" if unquote_plus(name) == TOKEN_PARAMETER else match.group(0)
    return _PARAMETER.sub(one, text)


class DashboardHTTPServer(ThreadingHTTPServer):
    """A `ThreadingHTTPServer` serving at most `max_connections` connections at once.

    `request_timeout` (seconds) is how long the handler waits for a whole request (or for
    one write) before it closes the connection; `dashboard` is the `DashboardServer` the handler serves."""

    daemon_threads = True
    dashboard: Any  # the DashboardServer; typed in server.py, which imports this module

    def __init__(self, address: tuple[str, int], handler: Callable[..., Any], *,
                 request_timeout: float, max_connections: int) -> None:
        super().__init__(address, handler)
        self.request_timeout = request_timeout
        # One slot per connection being served: taken on the accept thread, given back by the
        # connection's own thread when it ends (or at once if that thread does not start).
        self._slots = threading.BoundedSemaphore(max_connections)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse(self, request: socket.socket) -> None:
        """Answer 503 without reading the request and close, never blocking the accept loop."""
        try:
            request.setblocking(False)
            request.send(_BUSY)  # a fresh socket's send buffer takes these few bytes whole
        except OSError:
            pass
        self.shutdown_request(request)


class DashboardHTTPServerV6(DashboardHTTPServer):
    """`DashboardHTTPServer` on an IPv6 address."""

    address_family = socket.AF_INET6
