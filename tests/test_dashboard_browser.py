"""The dashboard in a real headless Chromium: a running job's bar moves, Cancel cancels it,
the dead-letter queue is shown and retried.

Chromium is driven through `chromedriver` with the W3C WebDriver protocol spoken over
urllib (no third-party package). Needs Debian's `chromium` and `chromium-driver`:
    apt-get install -y chromium chromium-driver
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Iterator, Optional

import pytest

from jobcore import FakeClock, Job, JobStatus, current_job
from jobcore.dashboard import DashboardServer
from dead_letter_order import fail_out_of_order

WAIT = 10.0  # bound on every wait for the page; normally a few hundred milliseconds
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C key of an element reference
CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM = next((path for path in ["/usr/lib/chromium/chromium", shutil.which("chromium"),
                                   shutil.which("chromium-browser")] if path and os.path.exists(path)), None)

pytestmark = pytest.mark.skipif(
    CHROMEDRIVER is None or CHROMIUM is None,
    reason="BROWSER TEST SKIPPED: Chromium or chromedriver is missing;"
           " install them with `apt-get install -y chromium chromium-driver`")


class WebDriver:
    """The few WebDriver commands the test needs, over HTTP to a chromedriver."""

    def __init__(self, base: str, profile_dir: str) -> None:
        self.base = base
        options = {"binary": CHROMIUM, "args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={profile_dir}", "--window-size=1280,900"]}
        capabilities = {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": options}}
        self.session = self._call("POST", "/session", {"capabilities": capabilities})["sessionId"]

    def _call(self, method: str, path: str, payload: Optional[dict[str, Any]] = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as reply:
                return json.loads(reply.read())["value"]
        except urllib.error.HTTPError as error:
            with error:  # (it holds the connection's socket)
                detail = error.read().decode()[:500]
            raise AssertionError(f"WebDriver {method} {path}: {detail}") from None

    def command(self, method: str, path: str, payload: Optional[dict[str, Any]] = None) -> Any:
        return self._call(method, f"/session/{self.session}{path}", payload)

    def get(self, url: str) -> None:
        self.command("POST", "/url", {"url": url})

    def script(self, source: str, *args: Any) -> Any:
        return self.command("POST", "/execute/sync", {"script": source, "args": list(args)})

    def find(self, css: str) -> str:
        return self.command("POST", "/element", {"using": "css selector", "value": css})[ELEMENT]

    def click(self, element: str) -> None:
        self.command("POST", f"/element/{element}/click", {})

    def wait_for(self, what: str, read: Callable[[], Any], accept: Callable[[Any], bool]) -> Any:
        """Read the page until `accept(value)`, for at most WAIT seconds (bounded polling)."""
        deadline = time.monotonic() + WAIT
        value = read()
        while not accept(value):
            assert time.monotonic() < deadline, f"timed out waiting for {what}; last value {value!r}"
            time.sleep(0.05)
            value = read()
        return value

    def quit(self) -> None:
        try:
            self._call("DELETE", f"/session/{self.session}")
        except (OSError, AssertionError):
            pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def browser(tmp_path: Any) -> Iterator[WebDriver]:
    """A headless Chromium behind a chromedriver on a free local port, both ended after."""
    port = free_port()
    assert CHROMEDRIVER is not None
    driver = subprocess.Popen([CHROMEDRIVER, f"--port={port}"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + WAIT
        while True:
            try:
                with urllib.request.urlopen(base + "/status", timeout=1) as reply:
                    if json.loads(reply.read())["value"]["ready"]:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "chromedriver did not start"
            time.sleep(0.05)
        web = WebDriver(base, str(tmp_path / "chromium-profile"))
        try:
            yield web
        finally:
            web.quit()
    finally:
        driver.terminate()
        driver.wait(WAIT)


@contextlib.contextmanager
def open_gates_after(gates: list[threading.Event]) -> Iterator[None]:
    """Open every gate on the way out, so a failing test never leaves the job blocking stop()."""
    try:
        yield
    finally:
        for gate in gates:
            gate.set()


def test_a_running_jobs_bar_moves_and_cancel_cancels_it(browser: WebDriver, db_path: str,
                                                       make_manager: Any) -> None:
    steps = [threading.Event() for _ in range(3)]

    def stepped(progress_callback: Any) -> None:
        # Each step waits for the test to open its gate; meanwhile it honours cancel requests.
        for number, gate in enumerate(steps, start=1):
            while not gate.wait(0.02):
                current_job().check_cancelled()
            progress_callback(number / 4, f"step {number}")

    worker = make_manager(db_path, poll_interval=0.05).start()
    job_id = worker.enqueue(Job(function=stepped, name="three <b>steps</b>"))
    dashboard = make_manager(db_path, producer=True)
    row = f'tr[data-job-id="{job_id}"]'

    def cell(selector: str, attribute: Optional[str] = None) -> Any:
        read = f"el.getAttribute({json.dumps(attribute)})" if attribute else "el.textContent"
        return browser.script(f"const el = document.querySelector(arguments[0]); return el ? {read} : null;",
                              f"{row} {selector}")

    with DashboardServer(dashboard, port=0) as server, open_gates_after(steps):
        browser.get(server.url + "?refresh=100")

        steps[0].set()
        first = browser.wait_for("the bar to show step 1", lambda: cell(".bar", "aria-valuenow"),
                                 lambda value: value == "25")
        assert cell(".status") == "running"
        assert cell(".name") == "three <b>steps</b>"  # shown as text, not markup
        steps[1].set()
        second = browser.wait_for("the bar to move", lambda: cell(".bar", "aria-valuenow"),
                                  lambda value: value == "50")
        assert int(second) > int(first)
        assert cell(".bar .label") == "50%"

        browser.click(browser.find(f"{row} button.cancel"))
        browser.wait_for("the status to become cancelled", lambda: cell(".status"),
                         lambda value: value == "cancelled")
        assert worker.poll(job_id).status is JobStatus.CANCELLED
        assert browser.script("return document.querySelector('#connection').textContent").startswith("live")
        browser.wait_for("the cancelled count", lambda: browser.script(
            "return document.querySelector('[data-stat=cancelled]').textContent"), lambda value: value == "1")
        assert cell("button.retry", "hidden") is None  # a cancelled job offers Retry


COUNT_FETCHES = """
window.jobcoreFetches = 0;
const original = window.fetch;
window.fetch = (...args) => { window.jobcoreFetches += 1; return original(...args); };
"""


def wait_for_fetches(browser: WebDriver, count: int) -> None:
    """Let the page make `count` more requests (several refreshes at ?refresh=100)."""
    start = browser.script("return window.jobcoreFetches")
    browser.wait_for(f"{count} more requests", lambda: browser.script("return window.jobcoreFetches"),
                     lambda value: value >= start + count)


SELECT = """
const range = document.createRange();
range.selectNodeContents(document.querySelector(arguments[0]));
getSelection().removeAllRanges();
getSelection().addRange(range);
return getSelection().toString();
"""


def test_the_detail_shows_every_field_and_the_logs_tail_growing_in_place(browser: WebDriver, db_path: str,
                                                                          make_manager: Any) -> None:
    gates = [threading.Event() for _ in range(2)]

    def chatty() -> None:
        for number in range(600):
            current_job().log(f"line {number}")
        current_job().progress(0.5, "half", stage={"nested": True})
        while not gates[0].wait(0.02):
            current_job().check_cancelled()
        current_job().log("line 600")
        while not gates[1].wait(0.02):
            current_job().check_cancelled()

    worker = make_manager(db_path, poll_interval=0.05)
    worker.register_function("chatty", chatty)
    worker.start()
    job_id = worker.enqueue(Job(function_name="chatty", name="chatty one"))
    schedule_id = worker.enqueue(Job(function_name="chatty", name="nightly", cron="0 3 * * *"))
    dashboard = make_manager(db_path, producer=True)

    def logs() -> Any:
        return browser.script("return Array.from(document.querySelectorAll('#detail-logs li .message'),"
                              " (node) => node.textContent)")

    def labels() -> Any:
        return browser.script("return Array.from(document.querySelectorAll('#detail-fields dt'),"
                              " (node) => node.textContent)")

    with DashboardServer(dashboard, port=0) as server, open_gates_after(gates):
        browser.get(server.url + "?refresh=100")
        browser.wait_for("the job's progress", lambda: browser.script(
            "const el = document.querySelector(arguments[0]); return el && el.getAttribute('aria-valuenow');",
            f'tr[data-job-id="{job_id}"] .bar'), lambda value: value == "50")
        browser.click(browser.find(f'tr[data-job-id="{job_id}"] button.job-id'))

        shown = browser.wait_for("the log's tail", logs, lambda value: value and value[-1] == "line 599")
        assert shown == [f"line {n}" for n in range(100, 600)]
        assert browser.script("return document.querySelector('#detail-logs-note').textContent") == \
            "the last 500 of 600 lines"
        assert "progress details" in labels()
        assert '{"stage":{"nested":true}}' in browser.script("return document.querySelector('#detail').innerText")

        # A new line is appended to the list on show; the lines already there stay (same nodes).
        browser.script("document.querySelector('#detail-logs li:last-child').dataset.mark = 'kept'")
        gates[0].set()
        grown = browser.wait_for("the new line", logs, lambda value: value[-1] == "line 600")
        assert grown == [f"line {n}" for n in range(101, 601)]
        assert browser.script("return document.querySelector('#detail-logs li[data-mark=kept] .message')"
                              ".textContent") == "line 599"
        assert browser.script("return document.querySelector('#detail-logs-note').textContent") == \
            "the last 500 of 601 lines"

        browser.click(browser.find(f'tr[data-job-id="{schedule_id}"] button.job-id'))
        browser.wait_for("the schedule's cron", labels, lambda value: "cron" in value)
        assert "0 3 * * *" in browser.script("return document.querySelector('#detail-fields').textContent")


def test_refreshes_keep_a_text_selection(browser: WebDriver, db_path: str, make_manager: Any) -> None:
    def fails() -> None:
        current_job().progress(0.3, "partly", rows=3)
        raise ValueError("nope: a long message worth copying")

    worker = make_manager(db_path, poll_interval=0.05)
    worker.register_function("fails", fails)
    with worker:
        job_id = worker.enqueue(Job(function_name="fails", name="copy me", max_retries=0))
        worker.wait(job_id, timeout=WAIT)
    dashboard = make_manager(db_path, producer=True)
    row = f'tr[data-job-id="{job_id}"]'

    with DashboardServer(dashboard, port=0) as server:
        browser.get(server.url + "?refresh=100")
        browser.wait_for("the job's row", lambda: browser.script(
            "return document.querySelector(arguments[0]) !== null", f"{row} button.job-id"), bool)
        browser.click(browser.find(f"{row} button.job-id"))
        browser.wait_for("the traceback", lambda: browser.script(
            "return document.querySelector('#detail-traceback').textContent"), lambda value: "nope" in value)
        browser.script(COUNT_FETCHES)

        for selector in ["#detail-traceback", f"{row} td.name", "#detail-fields dd:last-of-type",
                         "[data-stat=failed]"]:
            selected = browser.script(SELECT, selector)
            wait_for_fetches(browser, 6)  # the stats, the table and the detail, three times over

            assert selected and browser.script("return getSelection().toString()") == selected, selector


def test_show_them_lists_the_dead_letter_queue_by_failure_and_retry_all_names_what_it_skipped(
        browser: WebDriver, db_path: str, make_manager: Any) -> None:
    # given failed jobs whose failure order is not their enqueue order (see
    # fail_out_of_order), and, failed last, a job whose unique_key a job enqueued since holds
    clock = FakeClock()
    worker = make_manager(db_path, clock=clock)
    order = fail_out_of_order(worker, clock)
    blocked = worker.enqueue(Job(function_name="fails", name="nightly", unique_key="nightly-1", max_retries=0))
    worker.run_pending()
    dashboard = make_manager(db_path, producer=True)
    dashboard.enqueue(Job(function_name="elsewhere.task", unique_key="nightly-1"))

    def rows() -> Any:
        return browser.script("return Array.from(document.querySelectorAll('#jobs tbody tr'),"
                              " (row) => row.dataset.jobId)")

    def text(selector: str) -> Any:
        return browser.script("const el = document.querySelector(arguments[0]); return el && el.textContent;",
                              selector)

    with DashboardServer(dashboard, port=0) as server:
        browser.get(server.url + "?refresh=100")
        browser.wait_for("the failed count", lambda: text("#dlq-count"), lambda value: value == "5")

        # when "Show them" is clicked, then the table is the queue, the latest failure first,
        # with when each failed
        browser.click(browser.find("#dlq-show"))
        browser.wait_for("the dead-letter queue", rows, lambda value: value == [blocked, *order.by_failure])
        assert text("#time-heading") == "Failed"
        assert text(f'tr[data-job-id="{order.by_failure[0]}"] td.time') not in (None, "–")
        # (choosing a filter by hand lists jobs by enqueue order again)
        browser.script("const select = document.querySelector('#filter-status');"
                       " select.dispatchEvent(new Event('change', { bubbles: true }));")
        browser.wait_for("the failed jobs by enqueue order", rows,
                         lambda value: value == [blocked, *order.by_enqueue])
        assert text("#time-heading") == "Created"
        browser.click(browser.find("#dlq-show"))
        browser.wait_for("the dead-letter queue again", rows, lambda value: value == [blocked, *order.by_failure])

        # when "Retry all failed" is clicked (and confirmed), then the page says how many were
        # re-queued and names the one skipped, with why; it stays in the queue
        browser.script("window.confirm = () => true;")
        browser.click(browser.find("#dlq-retry"))
        browser.wait_for("the retry's answer", lambda: text("#flash-text"),
                         lambda value: value == "re-queued 4 failed job(s); not re-queued, 1:")
        skipped = browser.script("return Array.from(document.querySelectorAll('#flash-skipped li'),"
                                 " (item) => [item.dataset.jobId, item.textContent])")
        assert skipped == [[blocked, f"{blocked[:8]} (nightly): another unfinished job holds its"
                                     " unique_key 'nightly-1'"]]
        browser.wait_for("the queue left", rows, lambda value: value == [blocked])
        assert dashboard.poll(blocked).status is JobStatus.FAILED  # type: ignore[union-attr]

        # and its id opens its detail
        browser.click(browser.find("#flash-skipped li button.job-id"))
        browser.wait_for("the skipped job's detail", lambda: text("#detail-id"), lambda value: value == blocked)


def test_the_detail_shows_integers_too_large_for_a_double_exactly(browser: WebDriver, db_path: str,
                                                                  make_manager: Any) -> None:
    # A 19-digit order id read by response.json() became 1234567890123456800 on the page.
    big = 1234567890123456789

    def order() -> dict[str, int]:
        current_job().progress(0.5, "half", row=-big)
        return {"order_id": big}

    worker = make_manager(db_path, poll_interval=0.05)
    worker.register_function("order", order)
    with worker:
        job_id = worker.enqueue(Job(function_name="order", name="big ids", metadata={"ref": big * 10},
                                    priority=2**63 - 1))
        worker.wait(job_id, timeout=WAIT)
    dashboard = make_manager(db_path, producer=True)

    with DashboardServer(dashboard, port=0) as server:
        browser.get(server.url + "?refresh=100")
        browser.wait_for("the job's row", lambda: browser.script(
            "return document.querySelector(arguments[0]) !== null", f'tr[data-job-id="{job_id}"] button.job-id'),
            bool)
        browser.click(browser.find(f'tr[data-job-id="{job_id}"] button.job-id'))
        fields = browser.wait_for("the detail", lambda: browser.script(
            "return Object.fromEntries(Array.from(document.querySelectorAll('#detail-fields dt'),"
            " (dt) => [dt.textContent, dt.nextElementSibling.textContent]))"), lambda value: "result" in value)
        assert fields["result"] == '{"order_id":1234567890123456789}'
        assert fields["metadata"] == '{"ref":12345678901234567890}'
        assert fields["progress details"] == '{"row":-1234567890123456789}'
        assert fields["attempts"] == "1 (max retries 3)"
        assert fields["priority"] == "9223372036854775807"  # (a priority is any 64-bit int)


def test_a_filter_changed_while_a_refresh_is_in_flight_is_shown_at_once(browser: WebDriver, db_path: str,
                                                                        make_manager: Any) -> None:
    # given a completed and a failed job, and a page refreshing every 10 minutes
    def boom() -> None:
        raise KeyError("boom")

    worker = make_manager(db_path, poll_interval=0.05)
    worker.register_function("ok", lambda: 1)
    worker.register_function("boom", boom)
    with worker:
        done = worker.enqueue(Job(function_name="ok", name="completed one"))
        failed = worker.enqueue(Job(function_name="boom", name="failed one", max_retries=0))
        worker.wait(done, timeout=WAIT)
        worker.wait(failed, timeout=WAIT)
    dashboard = make_manager(db_path, producer=True)
    armed, entered, release = threading.Event(), threading.Event(), threading.Event()
    list_jobs = dashboard.list_job_summaries  # (what the job table reads)

    def slow_list_jobs(*args: Any, **kwargs: Any) -> Any:
        if armed.is_set() and kwargs.get("status") is None:  # the unfiltered table, held
            entered.set()
            assert release.wait(WAIT)
        return list_jobs(*args, **kwargs)

    dashboard.list_job_summaries = slow_list_jobs  # type: ignore[method-assign]

    def names() -> Any:
        return browser.script("return Array.from(document.querySelectorAll('#jobs td.name'),"
                              " (node) => node.textContent).sort()")

    with DashboardServer(dashboard, port=0) as server, open_gates_after([release]):
        browser.get(server.url + "?refresh=600000")
        browser.wait_for("the whole table", names, lambda value: value == ["completed one", "failed one"])

        # when a refresh of the unfiltered table is in flight (the filters' reset asks for one)
        armed.set()
        browser.script("document.querySelector('#filters').reset();")
        assert entered.wait(WAIT)
        # and the status filter changes meanwhile
        browser.script("const select = document.querySelector('#filter-status'); select.value = 'failed';"
                       " select.dispatchEvent(new Event('change', { bubbles: true }));")
        release.set()

        # then the table shows the filter's jobs at once, not ten minutes later
        browser.wait_for("the failed job alone", names, lambda value: value == ["failed one"])


def test_a_refresh_period_past_what_timers_hold_does_not_refresh_nonstop(browser: WebDriver, db_path: str,
                                                                         make_manager: Any) -> None:
    # setTimeout runs a delay above 2**31 - 1 ms at once: ?refresh= of 35 days polled nonstop
    dashboard = make_manager(db_path, producer=True)
    dashboard.enqueue(Job(function_name="later.task", name="queued"))
    with DashboardServer(dashboard, port=0) as server:
        browser.get(server.url + "?refresh=3000000000")
        browser.wait_for("the table", lambda: browser.script(
            "return document.querySelectorAll('#jobs tbody tr').length"), lambda value: value == 1)
        browser.script(COUNT_FETCHES)
        time.sleep(0.5)  # nonstop refreshing made hundreds of requests in this time
        assert browser.script("return window.jobcoreFetches") == 0
