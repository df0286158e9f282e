"""The dashboard's HTTP surface, in-process on port 0: page, JSON API, CSRF, access token, metrics."""

from __future__ import annotations

import http.client
import json
import math
import os
import re
import socket
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import pytest

from jobcore import FakeClock, Job, JobManager, JobStatus, current_job
from jobcore.dashboard import DashboardServer
from dead_letter_order import fail_out_of_order

WAIT = 10.0
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATIC = os.path.join(ROOT, "jobcore", "dashboard", "static")
XSS_NAME = "<script>alert(1)</script>"


@dataclass
class Response:
    status: int
    headers: Any
    body: bytes

    def json(self) -> Any:
        assert self.headers["Content-Type"].startswith("application/json")
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


def call(server: DashboardServer, path: str, method: str = "GET", headers: Optional[dict[str, str]] = None,
         csrf: bool = False) -> Response:
    """One HTTP request to the dashboard; `csrf` sends the page's token as a browser would."""
    headers = dict(headers or {})
    if csrf:
        headers["X-CSRF-Token"] = server.csrf_token
    request = urllib.request.Request(server.url.rstrip("/") + path, method=method, headers=headers,
                                     data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=WAIT) as reply:
            return Response(reply.status, reply.headers, reply.read())
    except urllib.error.HTTPError as error:
        return Response(error.code, error.headers, error.read())


def exchange(server: DashboardServer, request: bytes) -> Response:
    """Send `request` as raw bytes (what urllib would refuse to send) and read the answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as sock:
        sock.sendall(request)
        reply = http.client.HTTPResponse(sock)
        reply.begin()
        return Response(reply.status, reply.headers, reply.read())


def boom() -> None:
    raise KeyError("missing thing")


def noisy() -> str:
    current_job().log("step one")
    current_job().log("careful", level="warning")
    return "ok"


@dataclass
class Site:
    server: DashboardServer
    manager: JobManager
    completed: str
    failed: str
    pending: str
    xss: str


@pytest.fixture
def site(db_path: str, make_manager: Any) -> Iterator[Site]:
    """Given a database with a completed job with logs (owner alice, tag nightly), a failed
    job (owner bob), a pending job and a pending job named like a script tag, and a
    dashboard serving it through a producer manager that is never started."""
    worker = make_manager(db_path, max_workers=1)
    worker.register_function("noisy", noisy)
    worker.register_function("boom", boom)
    with worker:
        completed = worker.enqueue(Job(function_name="noisy", owner="alice", tags={"nightly"}))
        failed = worker.enqueue(Job(function_name="boom", owner="bob", max_retries=0))
        worker.wait(completed, timeout=WAIT)
        worker.wait(failed, timeout=WAIT)
    manager = make_manager(db_path, producer=True)
    pending = manager.enqueue(Job(function_name="remote.task", name="pending one", owner="alice"))
    xss = manager.enqueue(Job(function_name="remote.task", name=XSS_NAME))
    server = DashboardServer(manager, port=0).start()
    yield Site(server, manager, completed, failed, pending, xss)
    server.close()


# -- the page ------------------------------------------------------------------------------------
def test_page_embeds_the_csrf_token_and_a_strict_content_security_policy(site: Site) -> None:
    page = call(site.server, "/")

    assert page.status == 200 and page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert f'<meta name="jobcore-csrf-token" content="{site.server.csrf_token}">' in page.text
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert "unsafe-inline" not in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY"
    assert '<script src="/static/app.js" defer></script>' in page.text


def test_static_files_are_served_with_their_types(site: Site) -> None:
    script = call(site.server, "/static/app.js")
    style = call(site.server, "/static/style.css")
    other = call(site.server, "/static/../server.py")

    assert script.status == 200 and script.headers["Content-Type"].startswith("text/javascript")
    assert b"X-CSRF-Token" in script.body
    assert style.status == 200 and style.headers["Content-Type"].startswith("text/css")
    assert other.status == 404


def test_the_page_builds_dom_from_job_data_with_text_never_markup() -> None:
    with open(os.path.join(STATIC, "app.js"), encoding="utf-8") as source:
        script = source.read()
    with open(os.path.join(STATIC, "index.html"), encoding="utf-8") as source:
        page = source.read()

    for sink in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"]:
        assert sink not in script, sink
    assert "textContent" in script
    assert "<script>" not in page and "onclick" not in page  # no inline script for the CSP to allow


# -- reading ---------------------------------------------------------------------------------------
def test_api_stats_counts_jobs_and_the_queue(site: Site) -> None:
    stats = call(site.server, "/api/stats").json()

    counts = {key: stats[key] for key in ["total", "pending", "completed", "failed", "running", "queue_size",
                                          "workers"]}
    assert counts == {"total": 4, "pending": 2, "completed": 1, "failed": 1, "running": 0, "queue_size": 2,
                      "workers": 0}
    assert 0 <= stats["oldest_pending_age"] < 60


def test_api_jobs_lists_newest_first(site: Site) -> None:
    reply = call(site.server, "/api/jobs")

    assert reply.status == 200 and reply.headers["Cache-Control"] == "no-store"
    listed = reply.json()["jobs"]
    assert [job["id"] for job in listed] == [site.xss, site.pending, site.failed, site.completed]
    assert [job["status"] for job in listed] == ["pending", "pending", "failed", "completed"]


@pytest.mark.parametrize("query, expected", [
    ("?status=failed", ["failed"]),
    ("?status=Failed", ["failed"]),  # any case, as list_jobs takes it (a 400 before)
    ("?owner=alice", ["pending", "completed"]),
    ("?tag=nightly", ["completed"]),
    ("?owner=alice&status=completed", ["completed"]),
    ("?status=&owner=&tag=", ["xss", "pending", "failed", "completed"]),
    ("?limit=1&offset=1", ["pending"]),
])
def test_api_jobs_filters(site: Site, query: str, expected: list[str]) -> None:
    listed = call(site.server, "/api/jobs" + query).json()["jobs"]

    assert [job["id"] for job in listed] == [getattr(site, name) for name in expected]


@pytest.mark.parametrize("query", [
    "?status=bogus", "?limit=abc", "?offset=-1",
    "?offset=99999999999999999999", "?limit=99999999999999999999",  # beyond the database's integers
    "?limit=%C2%B2",  # '²': str.isdigit() says yes, int() says no
    "?offset=%D9%A3",  # an Arabic-Indic 3: int() takes it, the API takes ASCII digits only
    "?offset=" + "9" * 5000,  # more digits than int() converts
])
def test_api_jobs_rejects_bad_parameters(site: Site, query: str) -> None:
    reply = call(site.server, "/api/jobs" + query)

    assert reply.status == 400 and reply.json()["error"]


def test_api_jobs_takes_the_largest_offset_and_caps_the_limit(site: Site) -> None:
    beyond = call(site.server, f"/api/jobs?offset={2**63 - 1}")
    capped = call(site.server, f"/api/jobs?limit={2**63 - 1}")

    assert beyond.status == 200 and beyond.json()["jobs"] == []
    assert capped.status == 200 and capped.json()["limit"] == 1000 and len(capped.json()["jobs"]) == 4


@pytest.mark.parametrize("query", ["?limit=%C2%B2", "?limit=-1", "?limit=99999999999999999999"])
def test_api_dlq_rejects_a_bad_limit(site: Site, query: str) -> None:
    reply = call(site.server, "/api/dlq" + query)

    assert reply.status == 400 and "limit must be" in reply.json()["error"]


@pytest.mark.parametrize("length", [b"\xb2", b"abc", b"-1", b"99999999999999999999"])
def test_a_post_with_a_bad_content_length_is_400_and_changes_nothing(site: Site, length: bytes) -> None:
    reply = exchange(site.server, b"POST /api/dlq/retry HTTP/1.1\r\nHost: 127.0.0.1\r\nX-CSRF-Token: "
                     + site.server.csrf_token.encode() + b"\r\nContent-Length: " + length + b"\r\n\r\n")

    assert reply.status == 400 and "Content-Length" in reply.json()["error"]
    assert site.manager.poll(site.failed).status is JobStatus.FAILED


def test_api_job_detail_has_error_type_traceback_and_logs(site: Site) -> None:
    failed = call(site.server, f"/api/jobs/{site.failed}").json()
    completed = call(site.server, f"/api/jobs/{site.completed}").json()
    logs = call(site.server, f"/api/jobs/{site.completed}/logs").json()["logs"]

    assert failed["status"] == "failed" and failed["error_type"] == "KeyError"
    assert failed["traceback"].startswith("Traceback (most recent call last)")
    assert completed["result"] == "ok" and completed["progress"] == 1.0
    assert [(entry["level"], entry["message"]) for entry in completed["logs"]] == [
        ("info", "step one"), ("warning", "careful")]
    assert logs == completed["logs"]


def test_unknown_jobs_and_pages_are_404(site: Site) -> None:
    for path, method in [("/api/jobs/nope", "GET"), ("/api/jobs/nope/logs", "GET"),
                         ("/api/jobs/nope/cancel", "POST"), ("/api/jobs/nope/retry", "POST"),
                         ("/nowhere", "GET")]:
        reply = call(site.server, path, method, csrf=True)
        assert reply.status == 404, path
        assert reply.json()["error"]
    assert call(site.server, "/api/jobs/nope").json()["error"] == "no job with id 'nope'"


def test_wrong_methods_are_405(site: Site) -> None:
    assert call(site.server, f"/api/jobs/{site.pending}/cancel").status == 405
    assert call(site.server, "/api/stats", "POST", csrf=True).status == 405


@pytest.mark.parametrize("method, path, allow", [
    ("DELETE", "/api/jobs/{pending}", "GET, HEAD"),
    ("PUT", "/api/jobs/{pending}/cancel", "POST"),
    ("PATCH", "/api/stats", "GET, HEAD"),
    ("OPTIONS", "/api/dlq/retry", "POST"),
    ("HEAD", "/api/jobs/{pending}/cancel", "POST"),
])
def test_every_other_method_is_a_json_405_naming_the_allowed_ones(site: Site, method: str, path: str,
                                                                   allow: str) -> None:
    reply = call(site.server, path.format(pending=site.pending), method, csrf=True)

    assert reply.status == 405 and reply.headers["Allow"] == allow
    assert reply.headers["Content-Type"] == "application/json; charset=utf-8"
    if method != "HEAD":
        assert reply.json() == {"error": f"{method} not allowed here; use {allow}"}
    assert site.manager.poll(site.pending).status is JobStatus.PENDING


def test_head_answers_as_get_without_the_body(site: Site) -> None:
    script = call(site.server, "/static/app.js")
    head = call(site.server, "/static/app.js", "HEAD")
    stats = call(site.server, "/api/stats", "HEAD")
    missing = call(site.server, "/api/jobs/nope", "HEAD")

    assert head.status == 200 and head.body == b""
    assert head.headers["Content-Type"] == script.headers["Content-Type"]
    assert int(head.headers["Content-Length"]) == len(script.body) > 0
    assert stats.status == 200 and stats.headers["Content-Type"].startswith("application/json")
    assert missing.status == 404 and missing.body == b""


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET / HTTP/1.1 extra\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\n\r\n", 505),
    (b"BREW /api/stats HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 501),
    (b"GET /" + b"a" * (65537 - 5), 414),  # exactly what the server reads: no unread bytes to reset on
])
def test_malformed_requests_get_json_errors_too(site: Site, request_bytes: bytes, status: int) -> None:
    reply = exchange(site.server, request_bytes)

    assert reply.status == status
    assert reply.headers["X-Content-Type-Options"] == "nosniff"
    error = reply.json()["error"]
    assert error and "\n" not in error and "<" not in error


def test_job_data_comes_back_as_json_data_not_markup(site: Site) -> None:
    reply = call(site.server, f"/api/jobs/{site.xss}")

    assert reply.headers["Content-Type"] == "application/json; charset=utf-8"
    assert reply.headers["X-Content-Type-Options"] == "nosniff"
    assert reply.json()["name"] == XSS_NAME
    assert XSS_NAME not in call(site.server, "/").text


# -- changing --------------------------------------------------------------------------------------
def test_cancel_needs_the_csrf_token(site: Site) -> None:
    without = call(site.server, f"/api/jobs/{site.pending}/cancel", "POST")
    wrong = call(site.server, f"/api/jobs/{site.pending}/cancel", "POST", headers={"X-CSRF-Token": "guess"})
    assert site.manager.poll(site.pending).status is JobStatus.PENDING

    with_token = call(site.server, f"/api/jobs/{site.pending}/cancel", "POST", csrf=True)
    again = call(site.server, f"/api/jobs/{site.pending}/cancel", "POST", csrf=True)

    assert without.status == 403 and wrong.status == 403
    assert "X-CSRF-Token" in without.json()["error"]
    assert with_token.status == 200
    assert with_token.json() == {"id": site.pending, "status": "cancelled", "cancel_requested": False}
    assert site.manager.poll(site.pending).status is JobStatus.CANCELLED
    assert again.status == 409 and "already cancelled" in again.json()["error"]


def test_retry_needs_the_csrf_token_and_a_failed_or_cancelled_job(site: Site) -> None:
    without = call(site.server, f"/api/jobs/{site.failed}/retry", "POST")
    assert site.manager.poll(site.failed).status is JobStatus.FAILED

    retried = call(site.server, f"/api/jobs/{site.failed}/retry", "POST", csrf=True)
    refused = call(site.server, f"/api/jobs/{site.completed}/retry", "POST", csrf=True)

    assert without.status == 403
    assert retried.status == 200 and retried.json() == {"id": site.failed, "status": "pending"}
    assert site.manager.poll(site.failed).status is JobStatus.PENDING
    assert refused.status == 409


def test_dead_letter_queue_lists_failed_jobs_and_retries_them_all(site: Site) -> None:
    listed = call(site.server, "/api/dlq").json()["jobs"]
    without = call(site.server, "/api/dlq/retry", "POST")
    retried = call(site.server, "/api/dlq/retry", "POST", csrf=True).json()

    assert [job["id"] for job in listed] == [site.failed]
    assert without.status == 403
    assert retried == {"retried": [site.failed], "count": 1, "skipped": []}
    assert call(site.server, "/api/dlq").json()["jobs"] == []


def test_dead_letter_queue_lists_the_most_recently_failed_first(db_path: str, make_manager: Any) -> None:
    # given failed jobs whose failure order is not their enqueue order (see fail_out_of_order)
    clock = FakeClock()
    order = fail_out_of_order(make_manager(db_path, clock=clock), clock)
    manager = make_manager(db_path, producer=True)

    with DashboardServer(manager, port=0) as server:
        listed = call(server, "/api/dlq").json()["jobs"]
        first = call(server, "/api/dlq?limit=1").json()["jobs"]
        by_status = call(server, "/api/jobs?status=failed").json()["jobs"]

    # then the queue is by failure time (the oldest job failed last); the job list is not
    assert [job["id"] for job in listed] == order.by_failure
    assert [job["id"] for job in first] == order.by_failure[:1] and first[0]["name"] == "old"
    assert [job["id"] for job in by_status] == order.by_enqueue


def test_retrying_the_dead_letter_queue_names_the_jobs_it_could_not_re_queue(site: Site, db_path: str,
                                                                             make_manager: Any) -> None:
    # given, beside the site's failed job, a failed job whose unique_key a job enqueued
    # since holds: retry refuses it
    worker = make_manager(db_path)
    worker.register_function("boom", boom)
    blocked = worker.enqueue(Job(function_name="boom", name="nightly", unique_key="nightly-1", max_retries=0))
    worker.run_pending()
    site.manager.enqueue(Job(function_name="remote.task", unique_key="nightly-1"))

    reply = call(site.server, "/api/dlq/retry", "POST", csrf=True)

    # then the answer names it and why, beside the job re-queued, and it stays failed
    assert reply.status == 200 and reply.json() == {
        "retried": [site.failed], "count": 1,
        "skipped": [{"id": blocked, "name": "nightly",
                     "reason": "another unfinished job holds its unique_key 'nightly-1'"}]}
    assert site.manager.poll(blocked).status is JobStatus.FAILED
    assert site.manager.poll(site.failed).status is JobStatus.PENDING


def test_cancelling_a_running_job_asks_it_to_stop(db_path: str, make_manager: Any) -> None:
    started = threading.Event()
    release = threading.Event()

    def patient() -> None:
        started.set()
        while not release.wait(0.01):
            current_job().check_cancelled()

    worker = make_manager(db_path, poll_interval=0.05).start()
    job_id = worker.enqueue(Job(function=patient))
    assert started.wait(WAIT)
    with DashboardServer(make_manager(db_path, producer=True), port=0) as server:
        workers = call(server, "/api/stats").json()["workers"]
        reply = call(server, f"/api/jobs/{job_id}/cancel", "POST", csrf=True).json()
        result = worker.wait(job_id, timeout=WAIT)
        metrics = call(server, "/metrics").text

    assert workers == 1
    assert reply == {"id": job_id, "status": "running", "cancel_requested": True}
    assert result.status is JobStatus.CANCELLED
    assert 'jobcore_dashboard_actions_total{action="cancel"} 1' in metrics


def test_metrics_carry_run_times_and_retries_per_function(db_path: str, make_manager: Any) -> None:
    worker = make_manager(db_path)
    worker.register_function("quick", lambda: None)
    calls: list[int] = []

    def flaky() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("connection reset")

    worker.register_function("flaky", flaky)
    ids = [worker.enqueue(Job(function_name="quick")) for _ in range(3)]
    ids.append(worker.enqueue(Job(function_name="flaky", retry_delay=0.01)))
    worker.start()
    for job_id in ids:
        worker.wait(job_id, timeout=WAIT)
    with DashboardServer(make_manager(db_path, producer=True), port=0) as server:
        metrics = call(server, "/metrics").text

    assert 'jobcore_job_run_seconds_count{function="quick"} 3' in metrics
    assert 'jobcore_job_run_seconds_bucket{function="quick",le="+Inf"} 3' in metrics
    assert 'jobcore_recent_jobs{function="flaky",status="completed"} 1' in metrics
    assert 'jobcore_recent_retries{function="flaky"} 1' in metrics


# -- safety ------------------------------------------------------------------------------------------
def test_a_foreign_host_header_is_refused_on_loopback(site: Site) -> None:
    rebound = call(site.server, "/api/jobs", headers={"Host": f"attacker.example:{site.server.port}"})
    local = call(site.server, "/api/jobs", headers={"Host": f"localhost:{site.server.port}"})

    assert rebound.status == 403 and "not allowed" in rebound.json()["error"]
    assert rebound.json()["error"].endswith(f"; use http://127.0.0.1:{site.server.port}/")
    assert local.status == 200
    # a host name's case is not part of it (RFC 3986 section 3.2.2), nor its root's dot
    for name in ("LOCALHOST", "LocalHost", "localhost."):
        assert call(site.server, "/api/jobs", headers={"Host": f"{name}:{site.server.port}"}).status == 200
    assert call(site.server, "/api/jobs", headers={"Host": f"LOCALHOST.attacker.example:{site.server.port}"}).status == 403


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
def test_bound_to_ipv6_loopback_a_foreign_host_is_told_the_bound_address(site: Site) -> None:
    with DashboardServer(site.manager, host="::1", port=0) as server:
        rebound = call(server, "/api/stats", headers={"Host": "attacker.example"})
        local = call(server, "/api/stats")

    assert server.url == f"http://[::1]:{server.port}/"
    assert rebound.status == 403
    assert rebound.json()["error"] == f"Host 'attacker.example' is not allowed; use {server.url}"
    assert local.status == 200 and local.json()["total"] == 4


def test_an_access_token_guards_everything_but_static_files(site: Site) -> None:
    with DashboardServer(site.manager, port=0, token="s3cret") as server:
        page = call(server, "/")
        stats = call(server, "/api/stats")
        metrics = call(server, "/metrics")
        wrong = call(server, "/api/stats", headers={"Authorization": "Bearer nope"})
        by_query = call(server, "/api/stats?token=s3cret")
        by_header = call(server, "/metrics", headers={"Authorization": "Bearer s3cret"})
        script = call(server, "/static/app.js")
        post = call(server, f"/api/jobs/{site.pending}/cancel", "POST", csrf=True)

    assert [page.status, stats.status, metrics.status, wrong.status, post.status] == [401] * 5
    assert server.csrf_token not in page.text
    assert by_query.status == 200 and by_query.json()["total"] == 4
    assert by_header.status == 200 and script.status == 200
    assert site.manager.poll(site.pending).status is JobStatus.PENDING


def test_a_token_of_printable_ascii_punctuation_works_by_query_and_by_header(site: Site) -> None:
    token = "a+b/c=d~!%&#?"
    with DashboardServer(site.manager, port=0, token=token) as server:
        by_login_url = urllib.request.urlopen(server.login_url.replace("/?", "/api/stats?"), timeout=WAIT)
        by_header = call(server, "/api/stats", headers={"Authorization": f"Bearer {token}"})

    with by_login_url:
        assert by_login_url.status == 200
    assert by_header.status == 200


@pytest.mark.parametrize("token", ["", "ключ", "two words", " padded", "tab\there"])
def test_a_token_that_is_empty_or_not_printable_ascii_is_refused(site: Site, token: str) -> None:
    for host in ["127.0.0.1", "0.0.0.0"]:
        with pytest.raises(ValueError, match="access token must"):
            DashboardServer(site.manager, host=host, port=0, token=token)


@pytest.mark.parametrize("port", [-1, 65536, 2**64, "8080", 80.0, True])
def test_a_port_beyond_tcp_is_refused(site: Site, port: int) -> None:
    # (a port given as text raised a TypeError from a comparison)
    with pytest.raises(ValueError, match="a port is a whole number from 0 to 65535"):
        DashboardServer(site.manager, port=port)


@pytest.mark.parametrize("limits", [{"request_timeout": "30"}, {"request_timeout": math.nan},
                                    {"max_connections": "5"}, {"max_connections": 0}])
def test_bad_connection_limits_are_refused(site: Site, limits: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(limits))):
        DashboardServer(site.manager, port=0, **limits)


# -- metrics -------------------------------------------------------------------------------------------
SAMPLE = re.compile(r'^[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? -?[0-9.e+-]+$')


def test_metrics_are_prometheus_text(site: Site) -> None:
    reply = call(site.server, "/metrics")

    assert reply.status == 200
    assert reply.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    samples = {}
    for line in reply.text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) [a-z_]+ .+$", line), line
        else:
            assert SAMPLE.match(line), line
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    assert samples['jobcore_jobs{status="pending"}'] == 2
    assert samples['jobcore_jobs{status="failed"}'] == 1
    assert samples['jobcore_jobs{status="completed"}'] == 1
    assert samples["jobcore_jobs_stored"] == 4
    assert samples["jobcore_queue_depth"] == 2
    assert samples["jobcore_dead_letter_jobs"] == 1
    assert samples["jobcore_workers"] == 0
    assert 0 <= samples["jobcore_oldest_pending_age_seconds"] < 60
    assert "# TYPE jobcore_dashboard_actions_total counter" in reply.text


def test_oldest_pending_age_is_zero_without_pending_jobs(db_path: str, make_manager: Any) -> None:
    manager = make_manager(db_path, producer=True)
    with DashboardServer(manager, port=0) as server:
        assert "jobcore_oldest_pending_age_seconds 0.0\n" in call(server, "/metrics").text
        assert call(server, "/api/stats").json()["oldest_pending_age"] is None


def test_bound_beyond_loopback_it_makes_an_access_token_of_its_own(db_path: str, make_manager: Any) -> None:
    with DashboardServer(make_manager(db_path, producer=True), host="0.0.0.0", port=0) as server:
        assert server.token and server.login_url.endswith(f"/?token={server.token}")
        local = server.url.replace("0.0.0.0", "127.0.0.1")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(local + "api/stats", timeout=WAIT)
        with urllib.request.urlopen(f"{local}api/stats?token={server.token}", timeout=WAIT) as reply:
            assert json.loads(reply.read())["total"] == 0

    assert refused.value.code == 401
