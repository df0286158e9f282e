"""`DashboardServer`: the dashboard's HTTP server — its page, static files, JSON API and metrics.

Safe by default: it binds 127.0.0.1 and, so bound, answers only requests whose Host is a
loopback name (a DNS-rebinding page cannot read it); state changes are POSTs carrying the
per-process CSRF token that the page embeds; an optional access token guards every
request but the static files. Job data leaves as JSON only (the page builds DOM with
`textContent`). It reads and changes jobs through a `JobManager` and runs none.
"""

from __future__ import annotations

import hmac
import html
import io
import json
import logging
import re
import secrets
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from importlib import resources
from typing import Any, Callable, Optional
from urllib.parse import parse_qs, quote, unquote, urlsplit

from ..clock import SYSTEM_CLOCK, real_monotonic
from ..deadline_io import DeadlineReader
from ..dead_letters import retry_all
from ..errors import JobNotFound, RepositoryError
from ..manager import RETRY_RULES, JobManager
from ..models import JobStatus
from .checks import check_port, check_token, is_loopback, whole_number
from .connections import DashboardHTTPServer, DashboardHTTPServerV6, redact_tokens
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import oldest_pending_age, render_metrics
from .views import job_detail, job_summary, log_entries, retry_all_report

logger = logging.getLogger("jobcore.dashboard")

CSRF_HEADER = "X-CSRF-Token"
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000
MAX_TAGS = 20  # distinct tag= filters: each is a clause of the query (SQLite's tree fails near 1,000)
DETAIL_LOGS = 500  # the last log lines a job's detail carries (with the total as log_count)
DEFAULT_LOG_LIMIT, MAX_LOG_LIMIT = 500, 5000  # lines per GET /api/jobs/ID/logs
REQUEST_TIMEOUT = 30.0  # seconds a whole request may take to arrive, or a write to go, before the connection closes
MAX_CONNECTIONS = 100  # connections served at once (a thread each); more are answered 503 and closed
STATIC_FILES = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self';"
            " base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
MAX_BODY = 64 * 1024
SHUTDOWN_POLL = 0.05  # seconds: how soon serve_forever notices close() (the default, 0.5, slows tests)


class ApiError(Exception):
    """An API request that cannot be served: an HTTP status and a one-line reason."""

    def __init__(self, status: HTTPStatus, message: str, headers: Optional[dict[str, str]] = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def _static(name: str) -> bytes:
    return resources.files(__package__).joinpath("static").joinpath(name).read_bytes()  # one name a call: 3.10


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


Route = Callable[["_Handler", DashboardServer, dict[str, list[str]], str], Any]


class _Handler(BaseHTTPRequestHandler):
    server: DashboardHTTPServer
    server_version = "jobcore-dashboard"

    def setup(self) -> None:
        super().setup()
        # A write waiting longer than request_timeout raises TimeoutError, and so does a read
        # past the request's deadline (see handle_one_request): http.server logs it or ends
        # the request on it and the connection is closed. Without it an idle client, or one
        # trickling a byte at a time, holds a thread and a file descriptor for ever.
        self.connection.settimeout(self.server.request_timeout)
        self.rfile.close()
        self._reader = DeadlineReader(self.connection, real_monotonic() + self.server.request_timeout)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        # The request line, headers and body must all come within request_timeout of the
        # moment the server starts waiting for them (after the previous answer, if any).
        self._reader.deadline = real_monotonic() + self.server.request_timeout
        super().handle_one_request()

    def version_string(self) -> str:
        return self.server_version  # no Python version in the Server header

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        # Request lines carry the access token when the page is opened as /?token=...
        logger.info("%s %s", self.address_string(), redact_tokens(format % args))

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")  # answered as GET is, without the body (see _send)

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_other(self) -> None:
        """Methods HTTP defines but no path here takes: a JSON 405 (404 for an unknown path)."""
        self._dispatch(self.command)

    # A method HTTP does not define at all gets http.server's 501, as JSON (see send_error).
    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = do_other

    def send_error(self, code: int, message: Optional[str] = None, explain: Optional[str] = None) -> None:
        """http.server's own errors (a malformed request line, 414, 431, 501, 505...) as JSON too."""
        try:
            status = HTTPStatus(code)
        except ValueError:
            status = HTTPStatus.INTERNAL_SERVER_ERROR
        self.log_error("code %d, message %s", code, message)
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # still the default: the request line did not parse,
            self.request_version = "HTTP/1.0"   # and a bare body without a status would say nothing
        self._send_json({"error": message or status.phrase}, status, headers={"Connection": "close"})

    # -- dispatching ------------------------------------------------------------------------
    def _dispatch(self, method: str) -> None:
        dashboard = self.server.dashboard
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        try:
            if method not in ("GET", "HEAD"):
                self._discard_body()
            self._check_host(dashboard)
            if not parts.path.startswith("/static/"):
                self._check_access(dashboard, query)
            route, job_id = self._route(method, parts.path)
            if method == "POST":
                self._check_csrf(dashboard)
            route(self, dashboard, query, job_id)
        except ApiError as exc:
            self._send_json({"error": str(exc)}, exc.status, exc.headers)
        except (TimeoutError, ConnectionError) as exc:  # the client went quiet or away mid-request
            logger.info("dashboard request %s %s abandoned: %r", method, parts.path, exc)
            self.close_connection = True
        except RepositoryError as exc:
            logger.warning("dashboard request %s %s failed: %s", method, parts.path, exc)
            self._send_json({"error": str(exc)}, HTTPStatus.SERVICE_UNAVAILABLE)
        except Exception:
            logger.exception("dashboard request %s %s failed", method, parts.path)
            self._send_json({"error": "internal error; see the dashboard's log"},
                            HTTPStatus.INTERNAL_SERVER_ERROR)

    def _discard_body(self) -> None:
        text = self.headers.get("Content-Length") or "0"
        try:
            length = whole_number(text)
        except ValueError:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"bad Content-Length {text!r}") from None
        if length > MAX_BODY:
            raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "request body too large")
        if length:
            self.rfile.read(length)

    def _check_csrf(self, dashboard: DashboardServer) -> None:
        if not hmac.compare_digest(self.headers.get(CSRF_HEADER, "").encode(), dashboard.csrf_token.encode()):
            raise ApiError(HTTPStatus.FORBIDDEN, f"missing or wrong {CSRF_HEADER} header (reload the page)")

    def _check_host(self, dashboard: DashboardServer) -> None:
        if not dashboard.loopback_only:
            return
        host = self.headers.get("Host", "")
        name = host[1:host.find("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
        if not is_loopback(name):
            raise ApiError(HTTPStatus.FORBIDDEN, f"Host {host!r} is not allowed; use {dashboard.url}")

    def _check_access(self, dashboard: DashboardServer, query: dict[str, list[str]]) -> None:
        if dashboard.token is None:
            return
        scheme, _, credentials = self.headers.get("Authorization", "").strip().partition(" ")
        # The scheme is case-insensitive (RFC 7235 section 2.1): "bearer" is "Bearer".
        given = credentials.strip() if scheme.lower() == "bearer" else (query.get("token") or [""])[0]
        if not hmac.compare_digest(given.encode(), dashboard.token.encode()):
            raise ApiError(HTTPStatus.UNAUTHORIZED,
                           "an access token is required (?token=... or Authorization: Bearer)")

    def _route(self, method: str, path: str) -> tuple[Route, str]:
        allowed: list[str] = []
        for route_method, pattern, route in ROUTES:
            match = pattern.fullmatch(path)
            if match:
                if route_method == method or (route_method, method) == ("GET", "HEAD"):
                    return route, unquote(match.group("id")) if "id" in pattern.groupindex else ""
                allowed += ["GET", "HEAD"] if route_method == "GET" else [route_method]
        if allowed:
            raise ApiError(HTTPStatus.METHOD_NOT_ALLOWED, f"{method} not allowed here; use {', '.join(allowed)}",
                           {"Allow": ", ".join(allowed)})
        raise ApiError(HTTPStatus.NOT_FOUND, f"no such page: {path}")

    # -- responses ------------------------------------------------------------------------------
    def _send(self, body: bytes, content_type: str, status: HTTPStatus = HTTPStatus.OK,
              headers: Optional[dict[str, str]] = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":  # HEAD: GET's status and headers, Content-Length included
            self.wfile.write(body)

    def _send_json(self, data: Any, status: HTTPStatus = HTTPStatus.OK,
                   headers: Optional[dict[str, str]] = None) -> None:
        body = json.dumps(data, default=str).encode("utf-8")
        self._send(body, "application/json; charset=utf-8", status, headers)

    # -- pages ----------------------------------------------------------------------------------
    def page(self, dashboard: DashboardServer, query: dict[str, list[str]], _: str) -> None:
        self._send(dashboard.page(), "text/html; charset=utf-8",
                   headers={"Content-Security-Policy": PAGE_CSP, "X-Frame-Options": "DENY"})

    def static(self, dashboard: DashboardServer, query: dict[str, list[str]], name: str) -> None:
        if name not in STATIC_FILES:
            raise ApiError(HTTPStatus.NOT_FOUND, f"no such file: {name}")
        self._send(_static(name), STATIC_FILES[name])

    def metrics(self, dashboard: DashboardServer, query: dict[str, list[str]], _: str) -> None:
        text = render_metrics(dashboard.manager, SYSTEM_CLOCK.time(), dashboard.actions())
        self._send(text.encode("utf-8"), METRICS_CONTENT_TYPE)

    # -- reading --------------------------------------------------------------------------------
    def stats(self, dashboard: DashboardServer, query: dict[str, list[str]], _: str) -> None:
        stats: dict[str, Any] = dict(dashboard.manager.get_stats())
        stats["queue_size"] = stats["pending"] + stats["scheduled"]
        stats["workers"] = len(dashboard.manager.list_workers())
        stats["oldest_pending_age"] = oldest_pending_age(dashboard.manager, stats["pending"],
                                                         SYSTEM_CLOCK.time())
        self._send_json(stats)

    def jobs(self, dashboard: DashboardServer, query: dict[str, list[str]], _: str) -> None:
        status = (query.get("status") or [""])[0].lower() or None  # any case, as list_jobs takes it
        if status is not None and status not in {s.value for s in JobStatus}:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"unknown status {status!r}")
        owner = (query.get("owner") or [""])[0] or None
        tags = list(dict.fromkeys(tag for tag in query.get("tag", []) if tag)) or None  # repeats once
        if tags is not None and len(tags) > MAX_TAGS:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"at most {MAX_TAGS} distinct tag values, got {len(tags)}")
        limit = _int_param(query, "limit", DEFAULT_LIMIT, MAX_LIMIT)
        offset = _int_param(query, "offset", 0, None)
        results = dashboard.manager.list_jobs(status=status, tags=tags, owner=owner, limit=limit,
                                              offset=offset)
        self._send_json({"jobs": [job_summary(r) for r in results], "limit": limit, "offset": offset})

    def job(self, dashboard: DashboardServer, query: dict[str, list[str]], job_id: str) -> None:
        wanted = _int_param(query, "logs", DETAIL_LOGS, DETAIL_LOGS)
        result = _poll(dashboard, job_id)
        if not wanted:  # logs=0: the fields only, without reading the log at all
            self._send_json(job_detail(result))
            return
        count = dashboard.manager.count_logs(job_id)
        detail = job_detail(result, dashboard.manager.get_logs(job_id, max(0, count - wanted), wanted))
        detail["log_count"] = count
        self._send_json(detail)

    def logs(self, dashboard: DashboardServer, query: dict[str, list[str]], job_id: str) -> None:
        after = _int_param(query, "after", 0, None)
        limit = _int_param(query, "limit", DEFAULT_LOG_LIMIT, MAX_LOG_LIMIT)
        _poll(dashboard, job_id)
        total = dashboard.manager.count_logs(job_id)
        entries = dashboard.manager.get_logs(job_id, after, limit) if after < total else []
        self._send_json({"logs": log_entries(entries), "after": after, "total": total})

    def dlq(self, dashboard: DashboardServer, query: dict[str, list[str]], _: str) -> None:
        limit = _int_param(query, "limit", DEFAULT_LIMIT, MAX_LIMIT)
        # list_dead_letters reads no arguments: get_dead_letter_queue would decode every
        # failed job's (a megabyte each, say) to return these same summaries.
        results = dashboard.manager.list_dead_letters(limit)
        self._send_json({"jobs": [job_summary(result) for result in results]})

    # -- changing -------------------------------------------------------------------------------
    def cancel(self, dashboard: DashboardServer, query: dict[str, list[str]], job_id: str) -> None:
        _poll(dashboard, job_id)
        if not dashboard.manager.cancel(job_id):
            status = _poll(dashboard, job_id).status.value
            raise ApiError(HTTPStatus.CONFLICT, f"job is already {status}; it cannot be cancelled")
        dashboard.count_action("cancel")
        result = _poll(dashboard, job_id)
        self._send_json({"id": job_id, "status": result.status.value,
                         "cancel_requested": result.status is JobStatus.RUNNING})

    def retry(self, dashboard: DashboardServer, query: dict[str, list[str]], job_id: str) -> None:
        _poll(dashboard, job_id)
        if not dashboard.manager.retry(job_id):
            status = _poll(dashboard, job_id).status.value
            raise ApiError(HTTPStatus.CONFLICT, f"job ({status}) was not re-queued: {RETRY_RULES}")
        dashboard.count_action("retry")
        self._send_json({"id": job_id, "status": _poll(dashboard, job_id).status.value})

    def retry_dlq(self, dashboard: DashboardServer, query: dict[str, list[str]], _: str) -> None:
        report = retry_all(dashboard.manager)  # names the jobs it could not re-queue, and why
        dashboard.count_action("dlq_retry")
        self._send_json(retry_all_report(report))

    def no_favicon(self, dashboard: DashboardServer, query: dict[str, list[str]], _: str) -> None:
        self._send(b"", "image/x-icon", HTTPStatus.NO_CONTENT)


def _poll(dashboard: DashboardServer, job_id: str) -> Any:
    result = dashboard.manager.poll(job_id)
    if result is None:
        raise ApiError(HTTPStatus.NOT_FOUND, str(JobNotFound(job_id)))
    return result


def _int_param(query: dict[str, list[str]], name: str, default: int, clamp: Optional[int]) -> int:
    """The whole number `name` (below 2**63), at most `clamp`; a 400 if it is not one."""
    text = (query.get(name) or [""])[0]
    if not text:
        return default
    try:
        value = whole_number(text)
    except ValueError as exc:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"{name} {exc}") from None
    return value if clamp is None else min(value, clamp)


_JOB = r"/api/jobs/(?P<id>[^/]+)"
ROUTES: list[tuple[str, re.Pattern[str], Route]] = [
    ("GET", re.compile(r"/|/index\.html"), _Handler.page),
    ("GET", re.compile(r"/static/(?P<id>[\w.-]+)"), _Handler.static),
    ("GET", re.compile(r"/favicon\.ico"), _Handler.no_favicon),
    ("GET", re.compile(r"/metrics"), _Handler.metrics),
    ("GET", re.compile(r"/api/stats"), _Handler.stats),
    ("GET", re.compile(r"/api/jobs"), _Handler.jobs),
    ("GET", re.compile(_JOB), _Handler.job),
    ("GET", re.compile(_JOB + "/logs"), _Handler.logs),
    ("POST", re.compile(_JOB + "/cancel"), _Handler.cancel),
    ("POST", re.compile(_JOB + "/retry"), _Handler.retry),
    ("GET", re.compile(r"/api/dlq"), _Handler.dlq),
    ("POST", re.compile(r"/api/dlq/retry"), _Handler.retry_dlq),
]
