"""Tests for jobcore.notifications: real threads, a real HTTP server and a real SMTP listener.

Nothing is mocked. Waits are on events and conditions with bounded timeouts, never sleeps.
"""

from __future__ import annotations

import base64
import gc
import json
import logging
import re
import shutil
import socketserver
import ssl
import subprocess
import threading
import time
import weakref
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

import pytest

from jobcore import notify_dispatch
from jobcore.notifications import (
    DEAD_LETTERED,
    CallbackNotificationChannel,
    EmailNotificationChannel,
    NotificationChannel,
    NotificationDispatcher,
    NotificationError,
    WebhookNotificationChannel,
    format_event_text,
)

WAIT = 5.0   # upper bound for anything that should happen "at once"
LOGGER = "jobcore.notifications"


def make_event(**overrides: Any) -> dict:
    event = {
        "event": "job.dead_lettered",
        "job_id": "5f0c2a9d8e7b4c1a9f3e2d1c0b9a8f7e",
        "name": "nightly report",
        "function_name": "reports.nightly",
        "status": "failed",
        "error": "bad row 17",
        "error_type": "ValueError",
        "attempts": 4,
        "timestamp": "2030-01-01T03:00:00+00:00",
        "traceback": ('Traceback (most recent call last):\n  File "reports.py", line 9\n'
                      "ValueError: bad row 17\n"),
    }
    event.update(overrides)
    return event


class Recorder:
    """A channel's callback that records events and lets a test wait for a count of them."""

    def __init__(self) -> None:
        self._cond = threading.Condition()   # guards events and threads
        self.events: list[dict] = []
        self.threads: list[threading.Thread] = []

    def __call__(self, event: dict) -> None:
        with self._cond:
            self.events.append(event)
            self.threads.append(threading.current_thread())
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = WAIT) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.events) >= count, timeout)


class Gate:
    """A callback that blocks in send until released, telling the test when it entered."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.seen = Recorder()

    def __call__(self, event: dict) -> None:
        self.seen(event)
        self.entered.set()
        assert self.release.wait(WAIT), "test never released the gate"


# --- a real HTTP server ---------------------------------------------------------------

@dataclass
class HTTPRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class WebhookServer(ThreadingHTTPServer):
    """Records every request; answers `status`, or never answers while `hang` is set, or
    trickles the first `trickle` answers a header line every 0.1 s (never ending them)."""

    def __init__(self, status: int = 200, hang: bool = False, location: str | None = None,
                 trickle: int = 0) -> None:
        super().__init__(("127.0.0.1", 0), WebhookHandler)
        self.status, self.hang, self.location, self.trickle = status, hang, location, trickle
        self.cond = threading.Condition()   # guards requests and trickle
        self.requests: list[HTTPRequest] = []
        self.release = threading.Event()    # lets hanging handlers return
        self.thread = threading.Thread(target=self.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hooks/secret-token?x=1"

    def wait_for_requests(self, count: int, timeout: float = WAIT) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.requests) >= count, timeout)

    def stop(self) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()
        self.thread.join(WAIT)


class WebhookHandler(BaseHTTPRequestHandler):
    server: WebhookServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.server.cond:
            self.server.requests.append(
                HTTPRequest(self.command, self.path, dict(self.headers.items()), body))
            self.server.cond.notify_all()
            trickled, self.server.trickle = self.server.trickle > 0, max(0, self.server.trickle - 1)
        if trickled:
            self._trickle()
            return
        if self.server.hang:
            self.server.release.wait(WAIT)
            self.close_connection = True
            return
        answer = b'{"ok": false}' if self.server.status >= 300 else b'{"ok": true}'
        self.send_response(self.server.status)
        if self.server.location:
            self.send_header("Location", self.server.location)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def _trickle(self) -> None:
        """A status line, then a header line every 0.1 s until stopped (WAIT at most)."""
        self.close_connection = True
        try:
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            for _ in range(int(WAIT / 0.1)):
                if self.server.release.wait(0.1):
                    return
                self.wfile.write(b"X-Slow: 1\r\n")
        except OSError:   # the client gave up and closed
            pass

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def webhook_server() -> Iterator[Callable[..., WebhookServer]]:
    servers: list[WebhookServer] = []

    def start(**options: Any) -> WebhookServer:
        servers.append(WebhookServer(**options))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep a proxy configured in the environment away from 127.0.0.1."""
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")


# --- a real SMTP listener -------------------------------------------------------------

@dataclass
class Mail:
    mail_from: str
    rcpt_to: list[str]
    message: EmailMessage


class SMTPServer(socketserver.ThreadingTCPServer):
    """Speaks enough SMTP for smtplib: EHLO/HELO, STARTTLS, AUTH PLAIN/LOGIN, MAIL, RCPT,
    DATA, RSET, NOOP, QUIT. Records mails and logins."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, *, auth: bool = False, tls: ssl.SSLContext | None = None,
                 implicit_tls: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), SMTPHandler)
        self.auth, self.tls, self.implicit_tls = auth, tls, implicit_tls
        self.cond = threading.Condition()   # guards mails, logins and sessions
        self.mails: list[Mail] = []
        self.logins: list[tuple[str, str]] = []
        self.sessions: list[list[str]] = []   # the commands of each connection
        self.thread = threading.Thread(target=self.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join(WAIT)


class SMTPHandler(socketserver.StreamRequestHandler):
    server: SMTPServer

    def handle(self) -> None:
        self.connection.settimeout(WAIT)
        self.encrypted = False
        if self.server.implicit_tls:
            self._start_tls()
        commands: list[str] = []
        with self.server.cond:
            self.server.sessions.append(commands)
        self.reply("220 127.0.0.1 jobcore-test ESMTP")
        mail_from, rcpt_to = "", list[str]()
        while True:
            line = self.read_line()
            if line is None:
                return
            verb, _, arg = line.partition(" ")
            verb = verb.upper()
            commands.append(verb)
            if verb == "EHLO":
                extensions = ["127.0.0.1 hello", "8BITMIME"]
                if self.server.auth:
                    extensions.append("AUTH PLAIN LOGIN")
                if self.server.tls and not self.encrypted:
                    extensions.append("STARTTLS")
                self.reply("\r\n".join(f"250-{e}" for e in extensions[:-1])
                           + f"\r\n250 {extensions[-1]}")
            elif verb == "HELO":
                self.reply("250 127.0.0.1")
            elif verb == "STARTTLS" and self.server.tls and not self.encrypted:
                self.reply("220 2.0.0 ready to start TLS")
                self._start_tls()
            elif verb == "AUTH" and self.server.auth:
                self._auth(arg)
            elif verb == "MAIL":
                mail_from, rcpt_to = self._address(arg), []
                self.reply("250 2.1.0 OK")
            elif verb == "RCPT":
                rcpt_to.append(self._address(arg))
                self.reply("250 2.1.5 OK")
            elif verb == "DATA":
                self.reply("354 end data with <CR><LF>.<CR><LF>")
                self._data(mail_from, rcpt_to)
                self.reply("250 2.0.0 queued")
            elif verb in ("RSET", "NOOP"):
                if verb == "RSET":
                    mail_from, rcpt_to = "", []
                self.reply("250 2.0.0 OK")
            elif verb == "QUIT":
                self.reply("221 2.0.0 bye")
                return
            else:
                self.reply("502 5.5.2 command not recognized")

    def reply(self, text: str) -> None:
        self.connection.sendall(text.encode("ascii") + b"\r\n")

    def read_line(self) -> str | None:
        line = self.rfile.readline(65536)
        return line.decode("utf-8").rstrip("\r\n") if line else None

    def _start_tls(self) -> None:
        assert self.server.tls is not None
        self.connection = self.server.tls.wrap_socket(self.connection, server_side=True)
        self.rfile.close()
        self.rfile = self.connection.makefile("rb")
        self.encrypted = True

    def finish(self) -> None:
        super().finish()
        if self.encrypted:   # the server closes only the plain socket it accepted
            self.connection.close()

    def _auth(self, arg: str) -> None:
        mechanism, _, initial = arg.partition(" ")
        if mechanism.upper() == "PLAIN":
            if not initial:
                self.reply("334 ")
                initial = self.read_line() or ""
            _, user, password = base64.b64decode(initial).decode().split("\0")
        else:
            if not initial:
                self.reply("334 " + base64.b64encode(b"Username:").decode())
                initial = self.read_line() or ""
            user = base64.b64decode(initial).decode()
            self.reply("334 " + base64.b64encode(b"Password:").decode())
            password = base64.b64decode(self.read_line() or "").decode()
        with self.server.cond:
            self.server.logins.append((user, password))
        self.reply("235 2.7.0 authentication successful")

    def _data(self, mail_from: str, rcpt_to: list[str]) -> None:
        lines = []
        while (line := self.rfile.readline(65536)) not in (b".\r\n", b""):
            lines.append(line[1:] if line.startswith(b"..") else line)   # undo dot-stuffing
        message = BytesParser(policy=policy.default).parsebytes(b"".join(lines))
        with self.server.cond:
            self.server.mails.append(Mail(mail_from, rcpt_to, message))   # type: ignore[arg-type]

    @staticmethod
    def _address(arg: str) -> str:
        found = re.search(r"<([^>]*)>", arg)
        return found.group(1) if found else arg


@pytest.fixture
def smtp_server() -> Iterator[Callable[..., SMTPServer]]:
    servers: list[SMTPServer] = []

    def start(**options: Any) -> SMTPServer:
        servers.append(SMTPServer(**options))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def tls_contexts(
        tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) contexts around a throw-away self-signed certificate for 127.0.0.1."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext",
         "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    return server, ssl.create_default_context(cafile=str(cert))


@pytest.fixture
def dispatchers() -> Iterator[Callable[..., NotificationDispatcher]]:
    made: list[NotificationDispatcher] = []

    def make(*channels: Any, **options: Any) -> NotificationDispatcher:
        made.append(NotificationDispatcher(channels, **options))
        return made[-1]

    yield make
    for dispatcher in made:
        dispatcher.close(timeout=1.0)


def warnings_from(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]


# --- format_event_text ------------------------------------------------------------------

def test_subject_names_the_job_its_attempts_and_error_type() -> None:
    subject, _ = format_event_text(make_event())

    assert subject == "[jobcore] job 'nightly report' dead-lettered after 4 attempts: ValueError"


def test_body_lists_the_fields_then_the_traceback() -> None:
    _, body = format_event_text(make_event(metadata={"team": "data"}))

    assert body.startswith("Job 'nightly report' dead-lettered after 4 attempts: ValueError.\n")
    for line in ("job_id:         5f0c2a9d8e7b4c1a9f3e2d1c0b9a8f7e",
                 "function_name:  reports.nightly", "error:          bad row 17",
                 "attempts:       4", "timestamp:      2030-01-01T03:00:00+00:00",
                 "metadata:       {'team': 'data'}"):
        assert line in body
    assert body.index("Traceback:\nTraceback (most recent call last):") > body.index("error:")


def test_subject_is_one_line_singular_and_without_missing_parts() -> None:
    event = make_event(event="job.completed", name="two\nlines", attempts=1, error_type=None)

    subject, body = format_event_text(event, subject_prefix="")

    assert subject == "job 'two lines' completed after 1 attempt"
    assert "job.completed" in body
    assert "error_type" not in body   # fields without a value are left out


# --- CallbackNotificationChannel ---------------------------------------------------------

def test_callback_channel_calls_its_function_with_the_events_it_wants() -> None:
    recorder = Recorder()
    channel = CallbackNotificationChannel(recorder, events={"job.completed"})

    channel.send(make_event(event="job.completed"))
    channel.send(make_event(event="job.retrying"))

    assert [e["event"] for e in recorder.events] == ["job.completed"]
    assert isinstance(channel, NotificationChannel)
    assert not isinstance(object(), NotificationChannel)
    assert CallbackNotificationChannel(recorder).wants("anything")
    # and log lines name it by its function (its __repr__ was dead code inside a coroutine)
    assert repr(CallbackNotificationChannel(make_event)) == "CallbackNotificationChannel('make_event')"


# --- NotificationDispatcher ---------------------------------------------------------------

def test_publish_delivers_on_a_named_daemon_thread_started_lazily(dispatchers) -> None:
    recorder = Recorder()
    before = set(threading.enumerate())
    dispatcher = dispatchers(CallbackNotificationChannel(recorder))
    started = set(threading.enumerate()) - before
    assert not any(t.name.startswith("jobcore-notify-") for t in started)

    dispatcher.publish(make_event())

    assert recorder.wait_for(1)
    thread = recorder.threads[0]
    assert re.fullmatch(r"jobcore-notify-\d+", thread.name)
    assert thread.daemon and thread is not threading.current_thread()


def test_an_idle_delivery_thread_keeps_serving_and_ends_once_its_dispatcher_is_gone(monkeypatch) -> None:
    # given a dispatcher whose idle delivery threads look every 50 ms whether it still
    # exists (a thread holding it kept a dropped manager's dispatcher and channels alive)
    monkeypatch.setattr(notify_dispatch, "GONE_CHECK_EVERY", 0.05)
    recorder = Recorder()
    dispatcher = NotificationDispatcher([CallbackNotificationChannel(recorder)])
    dispatcher.publish(make_event(job_id="first"))
    assert recorder.wait_for(1)
    thread = recorder.threads[0]
    # when it stays idle for several looks, then the same thread serves the next event
    # (none is started then: Python 3.12 refuses new threads while the interpreter exits)
    time.sleep(0.3)
    dispatcher.publish(make_event(job_id="second"))
    assert recorder.wait_for(2)
    assert recorder.threads[1] is thread and thread.is_alive()
    assert dispatcher.flush(WAIT) and dispatcher.dropped == 0
    # and once the dispatcher is dropped (never closed), the thread ends
    gone = weakref.ref(dispatcher)
    del dispatcher
    gc.collect()
    assert gone() is None
    thread.join(WAIT)
    assert not thread.is_alive()
    assert [e["job_id"] for e in recorder.events] == ["first", "second"]


@pytest.mark.parametrize("raised", [ZeroDivisionError("channel bug"), SystemExit(3)])
def test_a_raising_channel_is_logged_and_the_others_get_every_event(dispatchers, caplog, raised) -> None:
    # (SystemExit, say from sys.exit() in a channel, ended the delivery thread unlogged)
    def broken(event: dict) -> None:
        raise raised

    recorder = Recorder()
    dispatcher = dispatchers(CallbackNotificationChannel(broken),
                             CallbackNotificationChannel(recorder))

    for n in range(3):
        dispatcher.publish(make_event(job_id=f"job-{n}"))

    assert dispatcher.flush(WAIT)
    assert [e["job_id"] for e in recorder.events] == ["job-0", "job-1", "job-2"]
    errors = warnings_from(caplog)
    assert len(errors) == 3
    assert all(r.exc_info and r.exc_info[0] is type(raised) for r in errors)
    assert "job-2" in errors[-1].getMessage()


def test_publish_never_blocks_on_a_hung_channel_and_drops_when_its_queue_is_full(
        dispatchers, caplog) -> None:
    gate = Gate()
    dispatcher = dispatchers(CallbackNotificationChannel(gate), queue_size=2)
    dispatcher.publish(make_event(job_id="in-flight"))
    assert gate.entered.wait(WAIT)

    publisher = threading.Thread(
        target=lambda: [dispatcher.publish(make_event(job_id=f"job-{n}")) for n in range(7)])
    publisher.start()
    publisher.join(WAIT)

    assert not publisher.is_alive()
    assert dispatcher.dropped == 5   # two fit in the hung channel's queue
    full = [r.getMessage() for r in warnings_from(caplog)]
    assert any("dropped 4 events in a row" in m for m in full)
    gate.release.set()
    assert dispatcher.flush(WAIT)
    assert [e["job_id"] for e in gate.seen.events] == ["in-flight", "job-0", "job-1"]


def test_flush_waits_for_every_event_published_before_it(dispatchers) -> None:
    assert dispatchers().flush(timeout=0)   # nothing to wait for
    recorder = Recorder()
    dispatcher = dispatchers(CallbackNotificationChannel(recorder))

    for n in range(100):
        dispatcher.publish(make_event(job_id=str(n)))

    assert dispatcher.flush(WAIT)
    assert len(recorder.events) == 100


def test_flush_returns_false_on_timeout_while_a_channel_is_stuck(dispatchers) -> None:
    gate = Gate()
    dispatcher = dispatchers(CallbackNotificationChannel(gate))
    dispatcher.publish(make_event())
    assert gate.entered.wait(WAIT)

    assert dispatcher.flush(timeout=0.1) is False

    gate.release.set()
    assert dispatcher.flush(WAIT) is True


def test_close_delivers_what_is_queued_then_ignores_events(dispatchers) -> None:
    gate, recorder = Gate(), Recorder()
    dispatcher = dispatchers(CallbackNotificationChannel(gate))
    dispatcher.add(CallbackNotificationChannel(recorder))
    for n in range(3):
        dispatcher.publish(make_event(job_id=str(n)))
    assert gate.entered.wait(WAIT)
    gate.release.set()

    assert dispatcher.close(timeout=WAIT) is True

    assert len(gate.seen.events) == len(recorder.events) == 3
    dispatcher.publish(make_event())
    assert len(recorder.events) == 3
    with pytest.raises(RuntimeError, match="closed"):
        dispatcher.add(CallbackNotificationChannel(recorder))
    assert dispatcher.close() is True   # closing twice is harmless


def test_close_gives_up_on_a_hung_channel_after_its_timeout(dispatchers, caplog) -> None:
    gate = Gate()
    dispatcher = dispatchers(CallbackNotificationChannel(gate))
    dispatcher.publish(make_event())
    dispatcher.publish(make_event())
    assert gate.entered.wait(WAIT)

    assert dispatcher.close(timeout=0.1) is False

    messages = [r.getMessage() for r in warnings_from(caplog)]
    assert any("still busy at close; 1 queued events" in m for m in messages)
    gate.release.set()


def test_removed_channel_gets_no_more_events(dispatchers) -> None:
    kept, removed = Recorder(), Recorder()
    removed_channel = CallbackNotificationChannel(removed)
    dispatcher = dispatchers(CallbackNotificationChannel(kept), removed_channel)
    dispatcher.publish(make_event())
    assert dispatcher.flush(WAIT)

    dispatcher.remove(removed_channel)
    dispatcher.publish(make_event())

    assert dispatcher.flush(WAIT)
    assert (len(kept.events), len(removed.events)) == (2, 1)
    assert removed_channel not in dispatcher.channels
    with pytest.raises(ValueError, match="not added"):
        dispatcher.remove(removed_channel)


def test_close_returns_once_a_removed_channels_send_under_way_ends() -> None:
    # given a channel removed while its thread is inside its send
    gate = Gate()
    channel = CallbackNotificationChannel(gate)
    dispatcher = NotificationDispatcher([channel])
    dispatcher.publish(make_event())
    assert gate.entered.wait(WAIT)
    dispatcher.remove(channel)
    # when close waits (without a limit) for the delivery threads, and that send then ends
    closed = threading.Event()
    closing = threading.Thread(target=lambda: dispatcher.close(timeout=None) and closed.set(), daemon=True)
    closing.start()
    time.sleep(0.05)  # (close is waiting: it would return at once without the thread)
    assert not closed.is_set()
    gate.release.set()
    # then close returns (the thread's end woke it no more: it waited for ever, or out its
    # timeout, 5 s by default)
    assert closed.wait(WAIT)
    assert len(gate.seen.events) == 1


def test_each_channel_gets_its_own_copy_of_the_event(dispatchers) -> None:
    def vandal(event: dict) -> None:
        event["error"] = "overwritten"

    recorder = Recorder()
    dispatcher = dispatchers(CallbackNotificationChannel(vandal),
                             CallbackNotificationChannel(recorder))
    event = make_event()

    dispatcher.publish(event)
    event["error"] = "changed by the publisher"

    assert dispatcher.flush(WAIT)
    assert recorder.events[0]["error"] == "bad row 17"


def test_a_channel_calling_flush_gets_an_error_instead_of_a_deadlock(dispatchers, caplog) -> None:
    dispatcher = dispatchers()
    dispatcher.add(CallbackNotificationChannel(lambda event: dispatcher.flush()))

    dispatcher.publish(make_event())

    assert dispatcher.flush(WAIT)
    [record] = warnings_from(caplog)
    assert record.exc_info and "would wait for itself" in str(record.exc_info[1])


def test_dispatcher_checks_its_arguments() -> None:
    dispatcher = NotificationDispatcher()
    channel = CallbackNotificationChannel(print)
    dispatcher.add(channel)
    with pytest.raises(TypeError, match="send"):
        dispatcher.add(object())
    with pytest.raises(TypeError, match="send"):
        dispatcher.add(type("NotCallable", (), {"send": 5})())
    with pytest.raises(ValueError, match="already added"):
        dispatcher.add(channel)
    with pytest.raises(TypeError, match="mapping"):
        dispatcher.publish(["not", "an", "event"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="queue_size"):
        NotificationDispatcher(queue_size=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="queue_size"):
        NotificationDispatcher(queue_size=0)
    assert dispatcher.channels == (channel,)


@pytest.mark.parametrize("build", [
    lambda timeout: WebhookNotificationChannel("http://127.0.0.1:9/hook", timeout=timeout),
    lambda timeout: EmailNotificationChannel("127.0.0.1", 25, "a@example.com", ["b@example.com"], timeout=timeout),
], ids=["webhook", "email"])
def test_a_channel_timeout_past_a_floats_range_is_refused_naming_it(build: Callable[[Any], Any]) -> None:
    # was a bare "OverflowError: int too large to convert to float" from math.isfinite
    with pytest.raises(ValueError, match="timeout must be a finite number"):
        build(10**400)


# --- WebhookNotificationChannel -----------------------------------------------------------

def test_webhook_posts_the_event_as_json(webhook_server, dispatchers) -> None:
    server = webhook_server()
    channel = WebhookNotificationChannel(server.url, headers={"Authorization": "Bearer t0k3n"})
    dispatcher = dispatchers(channel)

    dispatcher.publish(make_event(note="ünïcode"))

    assert dispatcher.flush(WAIT)
    [request] = server.requests
    assert (request.method, request.path) == ("POST", "/hooks/secret-token?x=1")
    assert json.loads(request.body) == make_event(note="ünïcode")
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"] == "jobcore"
    assert request.headers["Authorization"] == "Bearer t0k3n"
    assert "secret-token" not in repr(channel)
    hidden = WebhookNotificationChannel("https://user:pw@hooks.example.com:8443/T0/B1?k=v")
    assert repr(hidden) == "WebhookNotificationChannel('https://hooks.example.com:8443/...')"


def test_webhook_error_status_is_logged_and_delivery_goes_on(webhook_server, dispatchers,
                                                              caplog) -> None:
    server = webhook_server(status=500)
    channel = WebhookNotificationChannel(server.url)
    dispatcher = dispatchers(channel)

    dispatcher.publish(make_event(job_id="first"))
    dispatcher.publish(make_event(job_id="second"))

    assert dispatcher.flush(WAIT)
    assert len(server.requests) == 2
    messages = [r.getMessage() for r in warnings_from(caplog)]
    assert len(messages) == 2
    assert "job second" in messages[1] and "HTTP 500" in messages[1]
    assert "secret-token" not in messages[1]
    with pytest.raises(NotificationError) as raised:
        channel.send(make_event())
    assert raised.value.status == 500


def test_webhook_does_not_follow_a_redirect(webhook_server) -> None:
    server = webhook_server(status=302, location="/elsewhere")

    with pytest.raises(NotificationError, match="HTTP 302"):
        WebhookNotificationChannel(server.url).send(make_event())

    assert [r.path for r in server.requests] == ["/hooks/secret-token?x=1"]


def test_a_hung_webhook_delays_only_its_own_channel(webhook_server, dispatchers, caplog) -> None:
    server = webhook_server(hang=True)
    recorder = Recorder()
    dispatcher = dispatchers(WebhookNotificationChannel(server.url, timeout=0.5),
                             CallbackNotificationChannel(recorder))

    dispatcher.publish(make_event())

    assert server.wait_for_requests(1)
    assert recorder.wait_for(1, timeout=1.0)   # while the webhook still hangs
    assert not server.release.is_set()
    assert dispatcher.flush(WAIT)             # the webhook gave up after its 0.5 s
    assert "timed out" in warnings_from(caplog)[0].getMessage()


def test_a_webhook_trickling_its_answer_is_given_up_at_the_timeout(webhook_server, dispatchers,
                                                                    caplog) -> None:
    # Each header line comes well within the timeout: only a deadline for the whole
    # delivery ends the first one.
    server = webhook_server(trickle=1)
    dispatcher = dispatchers(WebhookNotificationChannel(server.url, timeout=0.5))
    started = time.monotonic()

    dispatcher.publish(make_event(job_id="first"))
    dispatcher.publish(make_event(job_id="second"))

    assert dispatcher.flush(WAIT)
    took = time.monotonic() - started
    assert [json.loads(r.body)["job_id"] for r in server.requests] == ["first", "second"]
    [warning] = [r.getMessage() for r in warnings_from(caplog)]
    assert "job first" in warning and "timed out" in warning
    assert took < 0.5 + 1.5   # the second answered at once, after the first gave up


def test_credentials_in_a_webhook_url_are_sent_as_basic_authorization(webhook_server, dispatchers,
                                                                       caplog) -> None:
    server = webhook_server(status=500)   # an error, so that the channel logs its URL
    port = server.server_address[1]
    channel = WebhookNotificationChannel(f"http://us%C3%A9r:pa%40ss@127.0.0.1:{port}/hook?x=1")
    overridden = WebhookNotificationChannel(f"http://user:pw@127.0.0.1:{port}/hook",
                                            headers={"authorization": "Bearer t0k3n"})
    dispatcher = dispatchers(channel, overridden)

    dispatcher.publish(make_event())

    assert dispatcher.flush(WAIT)
    assert sorted(r.headers["Authorization"] for r in server.requests) == [
        "Basic " + base64.b64encode("usér:pa@ss".encode()).decode(), "Bearer t0k3n"]
    assert {r.path for r in server.requests} == {"/hook?x=1", "/hook"}
    shown = repr(channel) + repr(vars(channel)) + caplog.text
    assert "HTTP 500" in caplog.text and "pa%40ss" not in shown and "pa@ss" not in shown
    with pytest.raises(ValueError, match="port") as refused:
        WebhookNotificationChannel("http://user:s3cret@127.0.0.1:0/hook")
    assert "s3cret" not in str(refused.value)


def test_a_non_ascii_webhook_path_is_percent_encoded_once(webhook_server) -> None:
    server = webhook_server()
    port = server.server_address[1]

    WebhookNotificationChannel(f"http://127.0.0.1:{port}/café/a b?q=né#top").send(make_event())
    WebhookNotificationChannel(f"http://127.0.0.1:{port}/caf%C3%A9?q=n%C3%A9").send(make_event())

    assert [r.path for r in server.requests] == ["/caf%C3%A9/a%20b?q=n%C3%A9", "/caf%C3%A9?q=n%C3%A9"]


def test_webhook_posts_only_the_events_it_wants(webhook_server) -> None:
    server = webhook_server()
    channel = WebhookNotificationChannel(server.url, events={"job.dead_lettered"})

    channel.send(make_event(event="job.completed"))
    channel.send(make_event())

    assert [json.loads(r.body)["event"] for r in server.requests] == ["job.dead_lettered"]
    assert WebhookNotificationChannel(server.url).wants("job.completed")


@pytest.mark.parametrize("arguments, error, match", [
    (("ftp://example.com/hook",), ValueError, "http"),
    (("example.com/hook",), ValueError, "http"),
    (("https://",), ValueError, "host"),
    (("https://example.com:http/hook",), ValueError, "port"),
    (("https://example.com:0/hook",), ValueError, "port"),
    ((42,), TypeError, "webhook_url"),
    (("https://example.com/", {"timeout": 0}), ValueError, "timeout"),
    (("https://example.com/", {"timeout": "5"}), TypeError, "timeout"),
    (("https://example.com/", {"headers": {"Bad Name": "x"}}), ValueError, "header name"),
    (("https://example.com/", {"headers": {"X-Ok": "a\r\nX: 1"}}), ValueError, "line breaks"),
    (("https://example.com/", {"headers": {"X-Ok": "\u6708"}}), ValueError, "Latin-1"),
    (("https://example.com/", {"events": "job.completed"}), TypeError, "events"),
    (("https://example.com/", {"events": set()}), ValueError, "events"),
])
def test_webhook_checks_its_arguments(arguments, error, match) -> None:
    url, *rest = arguments
    with pytest.raises(error, match=match):
        WebhookNotificationChannel(url, **(rest[0] if rest else {}))


# --- EmailNotificationChannel -------------------------------------------------------------

def test_email_is_sent_to_every_recipient(smtp_server) -> None:
    server = smtp_server()
    channel = EmailNotificationChannel("127.0.0.1", server.port, "jobs@example.com",
                                       ["ops@example.com", "dev@example.com"])

    channel.send(make_event(name="rapport nocturne é"))

    [mail] = server.mails
    assert mail.mail_from == "jobs@example.com"
    assert mail.rcpt_to == ["ops@example.com", "dev@example.com"]
    message = mail.message
    assert message["From"] == "jobs@example.com"
    assert message["To"] == "ops@example.com, dev@example.com"
    assert message["Subject"] == ("[jobcore] job 'rapport nocturne é' dead-lettered after 4 attempts:"
                                  " ValueError")
    assert message["X-Jobcore-Job-Id"] == "5f0c2a9d8e7b4c1a9f3e2d1c0b9a8f7e"
    body = message.get_content()
    assert "error:          bad row 17" in body
    assert "ValueError: bad row 17" in body   # the traceback
    assert server.logins == []


def test_email_logs_in_when_given_credentials(smtp_server) -> None:
    server = smtp_server(auth=True)
    channel = EmailNotificationChannel("127.0.0.1", server.port, "jobs@example.com",
                                       "ops@example.com", username="jobs", password="s3cret")

    channel.send(make_event())

    assert server.logins == [("jobs", "s3cret")]
    assert [m.rcpt_to for m in server.mails] == [["ops@example.com"]]


def test_email_mails_only_dead_lettered_jobs_by_default(smtp_server, dispatchers) -> None:
    server = smtp_server()
    dispatcher = dispatchers(EmailNotificationChannel("127.0.0.1", server.port, "jobs@example.com",
                                                      "ops@example.com"))

    for kind in ("job.completed", "job.retrying", "job.dead_lettered", "job.cancelled"):
        dispatcher.publish(make_event(event=kind))

    assert dispatcher.flush(WAIT)
    assert [m.message["X-Jobcore-Event"] for m in server.mails] == ["job.dead_lettered"]


def test_email_failures_are_logged_by_the_dispatcher(smtp_server, dispatchers, caplog) -> None:
    server = smtp_server()   # offers neither STARTTLS nor AUTH
    dispatcher = dispatchers(
        EmailNotificationChannel("127.0.0.1", server.port, "jobs@example.com", "ops@example.com",
                                 starttls=True),
        EmailNotificationChannel("127.0.0.1", server.port, "jobs@example.com", "ops@example.com",
                                 username="jobs", password="s3cret"))

    dispatcher.publish(make_event())

    assert dispatcher.flush(WAIT)
    messages = sorted(r.getMessage() for r in warnings_from(caplog))
    assert len(messages) == 2
    assert "SMTP AUTH extension not supported" in messages[0]
    assert "STARTTLS extension not supported" in messages[1]
    assert server.mails == []
    assert "s3cret" not in " ".join(messages)


def test_email_upgrades_with_starttls_before_logging_in(smtp_server, tls_contexts) -> None:
    server_context, client_context = tls_contexts
    server = smtp_server(auth=True, tls=server_context)
    channel = EmailNotificationChannel("127.0.0.1", server.port, "jobs@example.com",
                                       "ops@example.com", username="jobs", password="s3cret",
                                       starttls=True, ssl_context=client_context)

    channel.send(make_event())

    [commands] = server.sessions
    assert commands.index("STARTTLS") < commands.index("AUTH") < commands.index("DATA")
    assert server.logins == [("jobs", "s3cret")]
    assert len(server.mails) == 1


def test_email_over_implicit_tls(smtp_server, tls_contexts) -> None:
    server_context, client_context = tls_contexts
    server = smtp_server(tls=server_context, implicit_tls=True)
    channel = EmailNotificationChannel("127.0.0.1", server.port, "jobs@example.com",
                                       "ops@example.com", use_ssl=True, ssl_context=client_context)

    channel.send(make_event())

    assert len(server.mails) == 1


@pytest.mark.parametrize("changes, error, match", [
    ({"to_addrs": []}, ValueError, "to_addrs"),
    ({"to_addrs": [""]}, ValueError, "to_addrs"),
    ({"to_addrs": [7]}, TypeError, "to_addrs"),
    ({"to_addrs": None}, TypeError, "to_addrs"),
    ({"smtp_port": "25"}, TypeError, "smtp_port"),
    ({"smtp_port": 0}, ValueError, "smtp_port"),
    ({"smtp_host": ""}, ValueError, "smtp_host"),
    ({"from_addr": "a@b\r\nBcc: x@y"}, ValueError, "from_addr"),
    ({"username": "jobs"}, ValueError, "username and password"),
    ({"password": "s3cret"}, ValueError, "username and password"),
    ({"starttls": True, "use_ssl": True}, ValueError, "not both"),
    ({"timeout": -1}, ValueError, "timeout"),
    ({"timeout": float("inf")}, ValueError, "timeout"),
    ({"events": ["job.completed", 3]}, TypeError, "events"),
    ({"ssl_context": "yes"}, TypeError, "ssl_context"),
])
def test_email_checks_its_arguments(changes, error, match) -> None:
    arguments = {"smtp_host": "smtp.example.com", "smtp_port": 587,
                 "from_addr": "jobs@example.com", "to_addrs": "ops@example.com", **changes}
    with pytest.raises(error, match=match):
        EmailNotificationChannel(**arguments)


def test_callback_channel_checks_its_function() -> None:
    with pytest.raises(TypeError, match="callable"):
        CallbackNotificationChannel("print")  # type: ignore[arg-type]


def _fail() -> None:
    raise ValueError("no")


def test_a_channel_may_stop_the_manager_but_not_close_it(make_manager, db_path) -> None:
    # A circuit breaker: the first dead-lettered job stops the workers.
    from jobcore import Job, JobStatus

    outcome: dict[str, Any] = {}
    handled = threading.Event()
    manager = make_manager(db_path, max_workers=1)

    def breaker(event: dict[str, Any]) -> None:
        try:
            manager.close()
        except RuntimeError as exc:
            outcome["close"] = str(exc)
        outcome["running after close"] = manager.running
        manager.stop()
        outcome["running after stop"] = manager.running
        handled.set()

    manager.add_notification_channel(CallbackNotificationChannel(breaker, events=[DEAD_LETTERED]))
    manager.start()
    job_id = manager.enqueue(Job(function=_fail, max_retries=0))
    assert manager.wait(job_id, timeout=WAIT).status is JobStatus.FAILED
    assert handled.wait(WAIT)
    assert "close() called from a notification channel" in outcome["close"]
    assert outcome["running after close"] is True  # refused before anything changed
    assert outcome["running after stop"] is False
    assert manager.poll(job_id).status is JobStatus.FAILED  # the repository is still open


def test_a_stop_that_leaves_events_undelivered_says_so(make_manager, db_path, caplog) -> None:
    # given a manager whose channel hangs on the first of three dead-lettered jobs' events
    from jobcore import Job, JobStatus

    gate = Gate()
    manager = make_manager(db_path, max_workers=1)
    manager.add_notification_channel(CallbackNotificationChannel(gate, events=[DEAD_LETTERED]))
    manager.start()
    ids = [manager.enqueue(Job(function=_fail, max_retries=0)) for _ in range(3)]
    assert all(manager.wait(job_id, timeout=WAIT).status is JobStatus.FAILED for job_id in ids)
    assert gate.entered.wait(WAIT)
    # when the manager stops (not waiting for the jobs: its flush waits 0.5 s)
    manager.stop(wait=False)
    # then the events not handled yet are told of (a `with` block's stop, then the
    # process's exit, lost them without a word; only close() said so)
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("still busy as the manager stops: 3 events not handled yet" in m for m in messages), messages
    gate.release.set()


def test_a_channel_refuses_event_names_the_engine_never_publishes() -> None:
    from jobcore.notifications import EVENT_NAMES
    from jobcore.settle import EVENTS

    assert EVENT_NAMES == set(EVENTS.values())  # the names the engine publishes
    for make in (lambda events: CallbackNotificationChannel(print, events=events),
                 lambda events: WebhookNotificationChannel("http://127.0.0.1:9/", events=events),
                 lambda events: EmailNotificationChannel("localhost", 25, "a@example.com", "b@example.com",
                                                         events=events)):
        with pytest.raises(ValueError, match="'job.failed'.*job.dead_lettered"):
            make(["job.dead_lettered", "job.failed"])
        assert make(["job.retrying"]).wants("job.retrying")


def test_a_coroutine_callback_is_run_to_its_end(dispatchers) -> None:
    import asyncio

    got: list[str] = []

    async def on_event(event: dict[str, Any]) -> None:
        await asyncio.sleep(0)
        got.append(event["job_id"])

    dispatcher = dispatchers(CallbackNotificationChannel(on_event))
    dispatcher.publish(make_event(job_id="j1"))
    assert dispatcher.flush(WAIT)
    assert got == ["j1"]
