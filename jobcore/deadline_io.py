"""Socket I/O bounded by one deadline for a whole exchange, not per call; knows no jobs.

A socket timeout bounds each read, so a peer sending a byte at a time holds the exchange
for ever. `DeadlineReader` (the dashboard's request reader) reads a socket until a
deadline and no longer; `deadline_opener` is a urllib opener (redirects not followed)
whose every request, connecting, sending and reading the answer, ends by its `timeout`
(the webhook channel's). Deadlines are `real_monotonic()` times: they pace real I/O.
"""

from __future__ import annotations

import http.client
import io
import socket
from typing import TYPE_CHECKING, Any, Optional

from jobcore.clock import real_monotonic

if TYPE_CHECKING:
    import urllib.request


def time_left(deadline: float) -> float:
    """Seconds from now until `deadline`; `TimeoutError` if it has passed."""
    left = deadline - real_monotonic()
    if left <= 0:
        raise TimeoutError("timed out")  # the message a socket timeout has
    return left


class DeadlineReader(io.RawIOBase):
    """Reads `sock` (wrap it in an `io.BufferedReader`) until `deadline` and no later.

    Before each read the socket's timeout is cut to the time left (then put back, so
    writes keep their own); once `deadline` has passed a read raises `TimeoutError`.
    The owner moves `deadline` (say, as each request on a connection begins). Closing
    this reader leaves the socket open, as `socket.makefile` does."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._raw = sock.makefile("rb", buffering=0)  # keeps sock's descriptor while this is open
        self.deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> Optional[int]:
        left = time_left(self.deadline)
        timeout = self._sock.gettimeout()
        self._sock.settimeout(left if timeout is None else min(left, timeout))
        try:
            return self._raw.readinto(buffer)
        finally:
            self._sock.settimeout(timeout)

    def close(self) -> None:
        self._raw.close()
        super().close()


class _DeadlineSocket:
    """A connected socket whose writes and reads (through `makefile`) end by `deadline`;
    what http.client calls on a connected socket, the rest passed through."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline

    def sendall(self, data: Any) -> None:
        self._sock.settimeout(time_left(self._deadline))  # sendall: one timeout for all of it
        self._sock.sendall(data)

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(DeadlineReader(self._sock, self._deadline))

    def close(self) -> None:
        self._sock.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _DeadlineConnection(http.client.HTTPConnection):
    """An HTTP connection whose exchange ends `timeout` seconds after it was made (urllib
    makes one per request, giving it the request's timeout)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        timeout = self.timeout if isinstance(self.timeout, (int, float)) else 0.0
        self._deadline = real_monotonic() + timeout

    def connect(self) -> None:
        self.timeout = time_left(self._deadline)  # bounds connecting (and a TLS handshake)
        super().connect()
        self.sock = _DeadlineSocket(self.sock, self._deadline)


class _DeadlineHTTPSConnection(_DeadlineConnection, http.client.HTTPSConnection):
    """`_DeadlineConnection` over TLS (wrapped in `connect` after the handshake)."""


def deadline_opener() -> urllib.request.OpenerDirector:
    """A urllib opener whose `open(request, timeout=...)` ends by `timeout` as a whole
    (`TimeoutError` past it, an `OSError`) and follows no redirect. Proxies set in the
    environment are used as urllib's default opener uses them."""
    import urllib.request  # here: it costs start-up time, and the dashboard needs none of it

    class _HTTPHandler(urllib.request.HTTPHandler):
        def http_open(self, req: Any) -> Any:
            return self.do_open(_DeadlineConnection, req)

    class _HTTPSHandler(urllib.request.HTTPSHandler):
        def https_open(self, req: Any) -> Any:
            return self.do_open(_DeadlineHTTPSConnection, req)

    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        """A redirect becomes an `HTTPError`: urllib would re-send a POST as a body-less GET."""

        def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any,
                             newurl: str) -> None:
            return None

    return urllib.request.build_opener(_NoRedirect, _HTTPHandler, _HTTPSHandler)
