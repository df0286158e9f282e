"""The dashboard's request handler: checks each request, routes it and answers it; it binds no socket and holds no state.

Every request but a static file must carry the access token when one is required; while
the server is bound to loopback, the Host must be a loopback name (DNS rebinding); a POST
must carry the CSRF token; a body is read only to be discarded, up to `MAX_BODY`. Errors,
http.server's own included, are answered as JSON. Job data leaves as JSON only (the page
builds DOM with `textContent`). The `DashboardServer` it serves (`self.server.dashboard`)
holds the tokens and the action counters; binding, serving and stopping are `server`'s.
"""

from __future__ import annotations

import hmac
import io
import json
import logging
import math
import re
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from importlib import resources
from typing import TYPE_CHECKING, Any, Callable, Optional
from urllib.parse import parse_qs, unquote, urlsplit

from ..clock import SYSTEM_CLOCK, real_monotonic
from ..deadline_io import DeadlineReader
from ..dead_letters import retry_all
from ..errors import JobNotFound, RepositoryError
from ..manager import RETRY_RULES
from ..models import JobResult, JobStatus
from .checks import is_loopback, whole_number
from .connections import DashboardHTTPServer, redact_tokens
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import oldest_pending_age, render_metrics
from .views import job_detail, job_summary, log_entries, retry_all_report

if TYPE_CHECKING:  # server imports this module: the class is named in annotations only
    from .server import DashboardServer

logger = logging.getLogger("jobcore.dashboard")

CSRF_HEADER = "X-CSRF-Token"
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000
MAX_TAGS = 20  # distinct tag= filters: each is a clause of the query (SQLite's tree fails near 1,000)
DETAIL_LOGS = 500  # the last log lines a job's detail carries (with the total as log_count)
DEFAULT_LOG_LIMIT, MAX_LOG_LIMIT = 500, 5000  # lines per GET /api/jobs/ID/logs
STATIC_FILES = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self';"
            " base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
MAX_BODY = 64 * 1024


class ApiError(Exception):
    """An API request that cannot be served: an HTTP status and a one-line reason."""

    def __init__(self, status: HTTPStatus, message: str, headers: Optional[dict[str, str]] = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def _static(name: str) -> bytes:
    return resources.files(__package__).joinpath("static").joinpath(name).read_bytes()  # one name a call: 3.10


Route = Callable[["_Handler", "DashboardServer", dict[str, list[str]], str], Any]


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
        try:
            text = json.dumps(data, default=str, allow_nan=False)
        except (ValueError, TypeError):  # what a memory store keeps, JSON has no room for
            text = json.dumps(_strict_json(data), default=str, allow_nan=False)
        self._send(text.encode("utf-8"), "application/json; charset=utf-8", status, headers)

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
        results = dashboard.manager.list_job_summaries(status=status, tags=tags, owner=owner, limit=limit,
                                                       offset=offset)
        self._send_json({"jobs": [job_summary(r) for r in results], "limit": limit, "offset": offset})

    def job(self, dashboard: DashboardServer, query: dict[str, list[str]], job_id: str) -> None:
        wanted = _int_param(query, "logs", DETAIL_LOGS, DETAIL_LOGS)
        result = _poll(dashboard, job_id)
        if not wanted:  # logs=0: the fields only, without reading the log at all
            self._send_json(job_detail(result))
            return
        count = dashboard.manager.count_logs(job_id)
        # No line past `count`: one logged between the two reads, given here as well, was
        # given again by the page's next read, from `log_count` on (shown twice).
        shown = min(wanted, count)
        detail = job_detail(result, dashboard.manager.get_logs(job_id, count - shown, shown) if shown else [])
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
        result = _change(dashboard, job_id, "cancel", dashboard.manager.cancel,
                         lambda status: f"job is already {status}; it cannot be cancelled")
        self._send_json({"id": job_id, "status": result.status.value,
                         "cancel_requested": result.status is JobStatus.RUNNING})

    def retry(self, dashboard: DashboardServer, query: dict[str, list[str]], job_id: str) -> None:
        result = _change(dashboard, job_id, "retry", dashboard.manager.retry,
                         lambda status: f"job ({status}) was not re-queued: {RETRY_RULES}")
        self._send_json({"id": job_id, "status": result.status.value})

    def retry_dlq(self, dashboard: DashboardServer, query: dict[str, list[str]], _: str) -> None:
        report = retry_all(dashboard.manager)  # names the jobs it could not re-queue, and why
        dashboard.count_action("dlq_retry")
        self._send_json(retry_all_report(report))

    def no_favicon(self, dashboard: DashboardServer, query: dict[str, list[str]], _: str) -> None:
        self._send(b"", "image/x-icon", HTTPStatus.NO_CONTENT)


def _change(dashboard: DashboardServer, job_id: str, action: str, change: Callable[[str], bool],
            refused: Callable[[str], str]) -> JobResult:
    """Cancel or retry `job_id` (404 if unknown; 409 saying `refused(status)` if `change`
    refuses), count the action, and return the job as it is now."""
    _poll(dashboard, job_id)
    if not change(job_id):
        raise ApiError(HTTPStatus.CONFLICT, refused(_poll(dashboard, job_id).status.value))
    dashboard.count_action(action)
    return _poll(dashboard, job_id)


def _poll(dashboard: DashboardServer, job_id: str) -> JobResult:
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


def _strict_json(value: Any) -> Any:
    """`value` with what strict JSON cannot hold made text: a float that is NaN or
    infinite ("NaN", "Infinity", "-Infinity", as Python prints them in JSON), a dict key
    that is not a str (a memory store keeps results and details as given)."""
    if isinstance(value, float) and not math.isfinite(value):
        return json.dumps(value)
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(k): _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    return value
