"""The dashboard's bounds: tag filters, log sizes, argument-free reads, idle connections,
the connection cap, tokens kept out of the log, and the Authorization scheme's case."""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

import pytest

from jobcore import Job, current_job
from jobcore.dashboard import DashboardServer
from jobcore.dashboard.connections import redact_tokens
from jobcore.dashboard.handler import DETAIL_LOGS, MAX_TAGS

from test_dashboard import WAIT, Site, call, site  # noqa: F401 (site: the fixture)

LINES = 1200


def chatty() -> None:
    for number in range(LINES):
        current_job().log(f"line {number}")


# -- tag filters -----------------------------------------------------------------------------------
def test_a_repeated_tag_filters_once(site: Site) -> None:
    # Each tag is a clause of the query: a thousand repeats made SQLite's expression tree
    # too large, which came back as a 503 (and cost seconds of CPU just below that).
    reply = call(site.server, "/api/jobs?" + "&".join(["tag=nightly"] * 1000))

    assert reply.status == 200
    assert [job["id"] for job in reply.json()["jobs"]] == [site.completed]


def test_more_distinct_tags_than_the_cap_are_a_400_naming_it(site: Site) -> None:
    at_cap = call(site.server, "/api/jobs?" + "&".join(f"tag=t{n}" for n in range(MAX_TAGS)))
    beyond = call(site.server, "/api/jobs?" + "&".join(f"tag=t{n}" for n in range(MAX_TAGS + 1)))

    assert at_cap.status == 200 and at_cap.json()["jobs"] == []
    assert beyond.status == 400
    assert beyond.json()["error"] == f"at most {MAX_TAGS} distinct tag values, got {MAX_TAGS + 1}"


# -- the dead-letter queue -----------------------------------------------------------------------
def test_the_dead_letter_queue_is_listed_without_reading_job_arguments(site: Site,
                                                                      monkeypatch: Any) -> None:
    def read_with_arguments(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the dead-letter queue read every failed job's arguments")

    expected = call(site.server, "/api/jobs?status=failed").json()["jobs"]
    for method in ("list", "list_dead_letters"):
        monkeypatch.setattr(site.manager.repository, method, read_with_arguments)

    reply = call(site.server, "/api/dlq")

    assert reply.status == 200 and reply.json() == {"jobs": expected}
    assert [job["id"] for job in expected] == [site.failed]


# -- logs ------------------------------------------------------------------------------------------
@pytest.fixture
def long_log(site: Site, make_manager: Any, db_path: str) -> str:
    """A completed job that logged LINES lines, "line 0" first."""
    worker = make_manager(db_path, max_workers=1)
    worker.register_function("chatty", chatty)
    with worker:
        job_id = worker.enqueue(Job(function_name="chatty"))
        worker.wait(job_id, timeout=WAIT)
    return str(job_id)


def messages(reply: Any) -> list[str]:
    return [entry["message"] for entry in reply["logs"]]


def test_a_jobs_detail_carries_the_last_lines_of_its_log_and_their_count(site: Site, long_log: str) -> None:
    detail = call(site.server, f"/api/jobs/{long_log}").json()
    fewer = call(site.server, f"/api/jobs/{long_log}?logs=3").json()
    none = call(site.server, f"/api/jobs/{long_log}?logs=0").json()

    assert detail["log_count"] == LINES
    assert messages(detail) == [f"line {n}" for n in range(LINES - DETAIL_LOGS, LINES)]
    assert messages(fewer) == ["line 1197", "line 1198", "line 1199"] and fewer["log_count"] == LINES
    assert "logs" not in none and "log_count" not in none and none["status"] == "completed"


def test_a_line_logged_between_the_details_two_reads_waits_for_the_next_page(site: Site, monkeypatch: Any) -> None:
    # given a job with one line in its log, and another line landing just after the
    # dashboard counted them (the job logs meanwhile, in another process say)
    manager = site.manager
    manager.repository.add_log(site.completed, "info", "first", 1.0)
    counted = manager.count_logs

    def count_then_a_line_lands(job_id: str) -> int:
        count = counted(job_id)
        monkeypatch.setattr(manager, "count_logs", counted)
        manager.repository.add_log(site.completed, "info", "second", 2.0)
        return count

    monkeypatch.setattr(manager, "count_logs", count_then_a_line_lands)
    # when the page reads the job's detail, then the lines after its `log_count`
    detail = call(site.server, f"/api/jobs/{site.completed}").json()
    page = call(site.server, f"/api/jobs/{site.completed}/logs?after={detail['log_count']}").json()
    # then each line comes once: the detail's lines are the `log_count` it counted (the
    # second line came in both, and the page showed it twice)
    assert len(detail["logs"]) == detail["log_count"]
    assert messages(detail)[-1] == "first" and messages(page) == ["second"]


def test_the_log_comes_in_pages_after_a_line_number(site: Site, long_log: str) -> None:
    first = call(site.server, f"/api/jobs/{long_log}/logs").json()
    later = call(site.server, f"/api/jobs/{long_log}/logs?after=1190&limit=4").json()
    tail = call(site.server, f"/api/jobs/{long_log}/logs?after=1198&limit=99999999").json()
    beyond = call(site.server, f"/api/jobs/{long_log}/logs?after={2**63 - 1}").json()

    assert messages(first) == [f"line {n}" for n in range(500)] and first["total"] == LINES
    assert messages(later) == ["line 1190", "line 1191", "line 1192", "line 1193"]
    assert later["after"] == 1190 and later["total"] == LINES
    assert messages(tail) == ["line 1198", "line 1199"]
    assert beyond["logs"] == [] and beyond["total"] == LINES


@pytest.mark.parametrize("query", ["/logs?after=-1", "/logs?limit=abc", "?logs=x"])
def test_bad_log_parameters_are_a_400(site: Site, query: str) -> None:
    reply = call(site.server, f"/api/jobs/{site.completed}{query}")

    assert reply.status == 400 and reply.json()["error"]


# -- connections -----------------------------------------------------------------------------------
@pytest.mark.parametrize("sent", [b"", b"GET /api/stats HTTP/1.1\r\nHost: 127.0.0.1\r\n"])
def test_an_idle_or_half_sent_connection_is_closed_after_the_request_timeout(site: Site, sent: bytes) -> None:
    with DashboardServer(site.manager, port=0, request_timeout=0.2) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as sock:
            sock.sendall(sent)
            closed = sock.recv(1024)  # blocks until the server closes (bounded by WAIT)
        served = call(server, "/api/stats")

    assert closed == b""
    assert served.status == 200


def test_connections_past_the_cap_are_answered_503_until_one_ends(site: Site) -> None:
    with DashboardServer(site.manager, port=0, max_connections=2) as server:
        idle = [socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) for _ in range(2)]
        try:
            refused = call(server, "/api/stats")  # accepted after both: the listen queue is FIFO
        finally:
            for sock in idle:
                sock.close()
        # The idle connections' threads notice the close and give their slots back.
        deadline = time.monotonic() + WAIT
        served = call(server, "/api/stats")
        while served.status == 503 and time.monotonic() < deadline:
            time.sleep(0.02)
            served = call(server, "/api/stats")

    assert refused.status == 503 and "too many connections" in refused.json()["error"]
    assert served.status == 200


def _trickle(sock: socket.socket, stop: threading.Event) -> None:
    """Send a request a byte every 0.1 s (never whole within a test) until stopped or cut."""
    for byte in b"GET /api/stats HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 1000:
        if stop.wait(0.1):
            return
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return


def test_a_request_trickled_a_byte_at_a_time_is_cut_at_the_request_timeout(site: Site) -> None:
    # Each byte comes well within the timeout: only a deadline for the whole request ends it.
    timeout, stop = 0.5, threading.Event()
    with DashboardServer(site.manager, port=0, request_timeout=timeout, max_connections=2) as server:
        started = time.monotonic()
        socks = [socket.create_connection(("127.0.0.1", server.port), timeout=5.0) for _ in range(2)]
        threads = [threading.Thread(target=_trickle, args=(sock, stop), daemon=True) for sock in socks]
        for thread in threads:
            thread.start()
        try:
            refused = call(server, "/api/stats")  # both slots held by the tricklers
            answers = []
            for sock in socks:
                try:
                    answers.append(sock.recv(1024))  # b"" once the server closes (5 s at most)
                except ConnectionResetError:
                    answers.append(b"")
            cut_after = time.monotonic() - started
        finally:
            stop.set()
            for thread in threads:
                thread.join(WAIT)
            for sock in socks:
                sock.close()
        deadline = time.monotonic() + WAIT  # the threads give their slots back as they end
        served = call(server, "/api/stats")
        while served.status == 503 and time.monotonic() < deadline:
            time.sleep(0.02)
            served = call(server, "/api/stats")

    assert refused.status == 503
    assert answers == [b"", b""] and cut_after < timeout + 1.5
    assert served.status == 200


@pytest.mark.parametrize("keyword, value", [("request_timeout", 0), ("request_timeout", float("nan")),
                                            ("max_connections", 0)])
def test_a_timeout_or_cap_below_one_is_refused(site: Site, keyword: str, value: Any) -> None:
    with pytest.raises(ValueError, match=keyword):
        DashboardServer(site.manager, port=0, **{keyword: value})


# -- tokens ----------------------------------------------------------------------------------------
def test_the_access_token_is_never_logged(site: Site, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="jobcore.dashboard")
    with DashboardServer(site.manager, port=0, token="S3cr3t-tok") as server:
        page = call(server, "/?token=S3cr3t-tok")
        encoded = call(server, "/api/stats?limit=1&%74oken=S3cr3t-tok")
        wrong = call(server, "/api/stats?token=guess-one")

    assert [page.status, encoded.status, wrong.status] == [200, 200, 401]
    assert "GET /?token=[redacted] HTTP/1.1" in caplog.text
    assert "S3cr3t" not in caplog.text and "guess-one" not in caplog.text


def test_a_token_holding_a_semicolon_is_accepted_and_never_logged(site: Site, caplog: Any) -> None:
    # browsers and curl send `;` in a query unencoded; `parse_qs` keeps it in the value
    caplog.set_level(logging.INFO, logger="jobcore.dashboard")
    with DashboardServer(site.manager, port=0, token="pub;S3cr3t") as server:
        whole = call(server, "/api/stats?token=pub;S3cr3t")
        first_part = call(server, "/api/stats?token=pub")
    assert [whole.status, first_part.status] == [200, 401]
    assert "GET /api/stats?token=[redacted] HTTP/1.1" in caplog.text
    assert "S3cr3t" not in caplog.text


def test_redaction_touches_only_token_parameters() -> None:
    assert redact_tokens('"GET /x?a=1&token=s&b=2 HTTP/1.1" 200 -') == '"GET /x?a=1&token=[redacted]&b=2 HTTP/1.1" 200 -'
    assert redact_tokens("GET /x?tokens=1&my_token=2") == "GET /x?tokens=1&my_token=2"
    assert redact_tokens("GET /?%74oken=s") == "GET /?%74oken=[redacted]"
    # a token may hold quotes (sent unencoded by curl or a script): all of it is hidden
    assert redact_tokens('"GET /?token=pub\'SEC"RET&x=1 HTTP/1.1" 200 -') == '"GET /?token=[redacted]&x=1 HTTP/1.1" 200 -'
    # and `;`, which `parse_qs` takes as part of a value, as it does in `?x=1;token=s`
    assert redact_tokens('"GET /?token=pub;SECRET&x=1 HTTP/1.1" 200 -') == '"GET /?token=[redacted]&x=1 HTTP/1.1" 200 -'
    assert redact_tokens("GET /?x=1;token=s") == "GET /?x=1;token=s"


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_authorization_scheme_is_case_insensitive(site: Site, scheme: str) -> None:
    with DashboardServer(site.manager, port=0, token="s3cret") as server:
        reply = call(server, "/api/stats", headers={"Authorization": f"{scheme} s3cret"})
        wrong = call(server, "/api/stats", headers={"Authorization": f"{scheme} nope"})

    assert reply.status == 200 and wrong.status == 401


# -- what strict JSON cannot hold -----------------------------------------------------------------
def test_values_a_memory_store_keeps_that_json_cannot_hold_are_sent_as_strict_json() -> None:
    # (a bare NaN token broke the page's JSON.parse; a tuple key was a 500)
    import json

    from jobcore import JobManager, MemoryRepository

    def odd() -> dict[Any, Any]:
        current_job().progress(0.5, "half", rate=float("inf"))
        return {"ratio": float("nan"), (1, 2): "tuple key", "low": float("-inf")}

    manager = JobManager(MemoryRepository())
    manager.register_function("odd", odd)
    job_id = manager.enqueue(Job(function_name="odd"))
    assert manager.run_pending() == 1
    with DashboardServer(manager, port=0) as server:
        reply = call(server, f"/api/jobs/{job_id}")

    def refuse(token: str) -> None:
        raise ValueError(f"not strict JSON: {token}")

    assert reply.status == 200
    detail = json.loads(reply.body, parse_constant=refuse)
    assert detail["result"] == {"ratio": "NaN", "(1, 2)": "tuple key", "low": "-Infinity"}
    assert detail["progress_details"] == {"rate": "Infinity"}
    manager.close()
