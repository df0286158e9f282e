"""Checks of the values the dashboard is given — whole numbers, ports, hosts, tokens; no I/O.

Shared by the server (a bad request parameter is a 400, a bad constructor argument a
`ValueError`) and the command line (a usage error), so both refuse the same things. Each
check raises `ValueError` with a message that names the value, never a traceback's worth.
"""

from __future__ import annotations

import ipaddress

MAX_WHOLE = 2**63 - 1  # the largest SQLite INTEGER (and PostgreSQL bigint): LIMIT and OFFSET end here
MAX_PORT = 65535
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
_MAX_DIGITS = len(str(MAX_WHOLE))


def whole_number(text: str, maximum: int = MAX_WHOLE) -> int:
    """`text` as a whole number from 0 to `maximum`, written in ASCII digits only.

    `str.isdigit()` alone is not enough: it accepts '²', which `int()` refuses; and `int()`
    alone accepts non-ASCII digits ('٣'). The length is checked before converting: `int()`
    refuses (and is slow on) thousands of digits."""
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"must be a whole number >= 0, got {text!r}")
    if len(text.lstrip("0")) > _MAX_DIGITS or int(text) > maximum:
        raise ValueError(f"must be at most {maximum}, got {text}")
    return int(text)


def check_port(port: int) -> int:
    """`port` if it is a TCP port number (0 to 65535; 0: any free port)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= MAX_PORT:
        raise ValueError(f"a port is a whole number from 0 to {MAX_PORT}, got {port!r}")
    return port


def is_loopback(host: str) -> bool:
    """True for a loopback address or name (the dashboard's safe default). A name in any
    case, and with the root's dot (`LocalHost`, `localhost.`): DNS names are
    case-insensitive, and a client sends the Host header as its user typed it."""
    host = host.lower()
    if host in LOOPBACK_NAMES or (host.endswith(".") and host[:-1] in LOOPBACK_NAMES):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_token(token: str) -> str:
    """`token` if it can be an access token: one or more printable ASCII characters, no spaces.

    Empty would let every request in (an empty string matches an empty string). Anything
    beyond printable ASCII would work in `?token=` (percent-decoded as UTF-8) but never in
    `Authorization: Bearer` (HTTP headers arrive as Latin-1), and spaces around it are
    stripped from a header."""
    if not token:
        raise ValueError("the access token must not be empty")
    if not all("!" <= char <= "~" for char in token):
        raise ValueError("the access token must be printable ASCII characters without spaces")
    return token
