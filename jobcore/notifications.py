"""Notification channels (callback, email, webhook) and event formatting; never creates events.

The engine decides which events happen and when, builds their dicts, and calls
`NotificationDispatcher.publish` (in `notify_dispatch`), which calls each channel's
`send` on a thread of its own; this module only formats and sends. An event
has at least `event` ("job.dead_lettered", "job.completed", "job.retrying",
"job.cancelled", ...), `job_id`, `name`, `function_name`, `status`, `error`, `error_type`,
`attempts` and `timestamp` (ISO 8601), and may carry `traceback`. Timeouts are float
seconds.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable

from jobcore.clock import as_seconds
from jobcore.errors import JobcoreError
from jobcore.notify_dispatch import NotificationDispatcher

# smtplib, ssl, email and urllib.request are imported where a channel uses them: together
# they cost about 30 ms of every process's start-up, and most processes send no mail.
if TYPE_CHECKING:
    import ssl
    from email.message import EmailMessage

__all__ = [
    "DEAD_LETTERED",
    "EVENT_NAMES",
    "CallbackNotificationChannel",
    "EmailNotificationChannel",
    "NotificationChannel",
    "NotificationDispatcher",
    "NotificationError",
    "WebhookNotificationChannel",
    "format_event_text",
]

logger = logging.getLogger("jobcore.notifications")

DEAD_LETTERED = "job.dead_lettered"
"""The event published when a job enters the dead-letter queue (ends FAILED)."""
EVENT_NAMES = frozenset({"job.completed", "job.retrying", DEAD_LETTERED, "job.cancelled"})
"""Every event name the engine publishes; a channel's `events` must name some of these."""

_BODY_FIELDS = ("event", "job_id", "name", "function_name", "status", "attempts",
                "error_type", "error", "timestamp")
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")   # an RFC 9110 token
_URL_SAFE = "/%:@!$&'()*+,;="   # kept as they are in a webhook URL's path (RFC 3986 pchar)


class NotificationError(JobcoreError):
    """Raised by a channel whose recipient refused an event (a webhook's non-2xx answer).

    `status` is the HTTP status when there was one."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@runtime_checkable
class NotificationChannel(Protocol):
    """Anything with `send(event)` is a channel.

    `send` receives its own shallow copy of the event dict and may block (the dispatcher
    calls it on the channel's own thread) or raise (the dispatcher logs it). A channel may
    also define `wants(event_name) -> bool`, which must be fast; without it, it gets every
    event.
    """

    def send(self, event: dict[str, Any]) -> None:
        """Deliver one event."""


def format_event_text(event: Mapping[str, Any], *,
                      subject_prefix: str = "[jobcore]") -> tuple[str, str]:
    """Return `(subject, body)` describing `event` in plain text.

    The subject is one line, e.g. "[jobcore] job 'nightly report' dead-lettered after
    4 attempts: ValueError"; the body lists the fields that have a value, then the
    traceback if any.
    """
    kind = str(event.get("event") or "job.event")
    label = event.get("name") or event.get("function_name") or event.get("job_id") or "?"
    summary = f"job {_one_line(label)!r} {kind.removeprefix('job.').replace('_', '-')}"
    attempts = event.get("attempts")
    if isinstance(attempts, int) and not isinstance(attempts, bool) and attempts > 0:
        summary += f" after {attempts} attempt{'' if attempts == 1 else 's'}"
    if event.get("error_type"):
        summary += f": {_one_line(event['error_type'])}"
    subject = _one_line(f"{subject_prefix} {summary}" if subject_prefix else summary, 250)

    lines = [f"{summary[0].upper()}{summary[1:]}.", ""]
    extra = sorted((k for k in event if k not in _BODY_FIELDS and k != "traceback"), key=str)
    for key in [k for k in _BODY_FIELDS if k in event] + extra:
        if event[key] is None:   # e.g. error and traceback of a completed job
            continue
        value = str(event[key]).replace("\n", "\n" + " " * 16)
        lines.append(f"{str(key) + ':':<15} {value}")
    if event.get("traceback"):
        lines += ["", "Traceback:", str(event["traceback"]).rstrip("\n")]
    return subject, "\n".join(lines) + "\n"


class CallbackNotificationChannel:
    """Calls `fn(event)` for each event (every event, or only those named in `events`).

    A coroutine function (or any `fn` returning an awaitable) is run to its end with
    `asyncio.run` on the delivery thread."""

    def __init__(self, fn: Callable[[dict[str, Any]], Any], *,
                 events: Iterable[str] | None = None) -> None:
        if not callable(fn):
            raise TypeError(f"CallbackNotificationChannel needs a callable, got {fn!r}")
        self.fn = fn
        self.events = _event_names(events)

    def wants(self, event_name: str) -> bool:
        """True if this channel delivers events named `event_name`."""
        return self.events is None or event_name in self.events

    def send(self, event: dict[str, Any]) -> None:
        """Call the function with `event`, unless this channel does not want it."""
        if self.wants(event.get("event", "")):
            result = self.fn(event)
            if inspect.isawaitable(result):
                import asyncio  # only for channels that need it: it costs start-up time
                asyncio.run(_awaited(result))

    def __repr__(self) -> str:
        return f"CallbackNotificationChannel({getattr(self.fn, '__qualname__', self.fn)!r})"


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


class EmailNotificationChannel:
    """Sends one plain-text email per event through an SMTP server, with `smtplib`.

    By default only dead-lettered jobs are mailed; pass `events` to choose others.
    `use_ssl` connects with TLS from the start (port 465); `starttls` upgrades a plain
    connection (port 587). `ssl_context` defaults to `ssl.create_default_context()`.
    `timeout` bounds connecting and each read, in seconds. Arguments are checked here:
    a wrong type is a `TypeError`, a wrong value a `ValueError`.
    """

    def __init__(self, smtp_host: str, smtp_port: int, from_addr: str,
                 to_addrs: str | Iterable[str], *, username: str | None = None,
                 password: str | None = None, starttls: bool = False, use_ssl: bool = False,
                 timeout: float = 10.0, subject_prefix: str = "[jobcore]",
                 events: Iterable[str] | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.smtp_host = _text("smtp_host", smtp_host)
        if not isinstance(smtp_port, int) or isinstance(smtp_port, bool):
            raise TypeError(f"smtp_port must be an int, got {type(smtp_port).__name__}")
        if not 0 < smtp_port < 65536:
            raise ValueError(f"smtp_port must be in 1..65535, got {smtp_port}")
        self.smtp_port = smtp_port
        self.from_addr = _text("from_addr", from_addr)
        addrs = [to_addrs] if isinstance(to_addrs, str) else _iterable("to_addrs", to_addrs)
        self.to_addrs = tuple(_text("to_addrs", addr) for addr in addrs)
        if not self.to_addrs:
            raise ValueError("to_addrs must name at least one recipient")
        if (username is None) != (password is None):
            raise ValueError("give both username and password to log in, or neither")
        self.username = None if username is None else _text("username", username)
        # Private, so the password shows in no repr, vars() dump or log.
        self._login = None if username is None else (username, _text("password", password))
        if starttls and use_ssl:
            raise ValueError("use either starttls (port 587) or use_ssl (port 465), not both")
        self.starttls, self.use_ssl = bool(starttls), bool(use_ssl)
        self.timeout = _positive("timeout", timeout)
        if not isinstance(subject_prefix, str):
            raise TypeError(f"subject_prefix must be a str, got {type(subject_prefix).__name__}")
        self.subject_prefix = subject_prefix
        self.events = frozenset({DEAD_LETTERED}) if events is None else _event_names(events)
        if ssl_context is not None and not _is_ssl_context(ssl_context):
            raise TypeError(f"ssl_context must be an ssl.SSLContext, got {ssl_context!r}")
        self.ssl_context = ssl_context

    def wants(self, event_name: str) -> bool:
        """True if this channel mails events named `event_name`."""
        return self.events is None or event_name in self.events

    def build_message(self, event: Mapping[str, Any]) -> EmailMessage:
        """The email this channel sends for `event`."""
        from email.message import EmailMessage
        from email.utils import format_datetime, make_msgid

        subject, body = format_event_text(event, subject_prefix=self.subject_prefix)
        message = EmailMessage()
        message["Subject"] = subject
        message["From"] = self.from_addr
        message["To"] = ", ".join(self.to_addrs)
        # A domain of our own: make_msgid() would otherwise look up this host's FQDN.
        message["Message-ID"] = make_msgid(domain=self.from_addr.rpartition("@")[2] or "jobcore")
        happened_at = _parse_timestamp(event.get("timestamp"))
        if happened_at is not None:
            message["Date"] = format_datetime(happened_at)
        for header, key in (("X-Jobcore-Event", "event"), ("X-Jobcore-Job-Id", "job_id")):
            if event.get(key):
                message[header] = _one_line(event[key])
        # Quoted-printable keeps non-ASCII text 7-bit for servers without 8BITMIME.
        message.set_content(body, cte=None if body.isascii() else "quoted-printable")
        return message

    def send(self, event: dict[str, Any]) -> None:
        """Mail `event` unless this channel does not want it; raises `smtplib` and
        `OSError` errors (refused login, STARTTLS not offered, connection failures)."""
        import smtplib
        import ssl

        if not self.wants(event.get("event", "")):
            return
        message = self.build_message(event)
        context = self.ssl_context
        if (self.use_ssl or self.starttls) and context is None:
            context = ssl.create_default_context()
        if self.use_ssl:
            client: smtplib.SMTP = smtplib.SMTP_SSL(
                self.smtp_host, self.smtp_port, timeout=self.timeout, context=context)
        else:
            client = smtplib.SMTP(self.smtp_host, self.smtp_port, timeout=self.timeout)
        with client:
            if self.starttls:
                client.starttls(context=context)
            if self._login is not None:
                client.login(*self._login)
            refused = client.send_message(message, self.from_addr, list(self.to_addrs))
        if refused:
            logger.warning("mail server %s refused recipients %s", self.smtp_host,
                           sorted(refused))

    def __repr__(self) -> str:
        server = f"{self.smtp_host}:{self.smtp_port}"
        return f"EmailNotificationChannel({server!r} -> {list(self.to_addrs)})"


def _is_ssl_context(value: Any) -> bool:
    import ssl
    return isinstance(value, ssl.SSLContext)


class WebhookNotificationChannel:
    """POSTs each event as JSON to a URL with `urllib`; a non-2xx answer raises.

    Headers sent: `Content-Type: application/json`, `User-Agent: jobcore`, then `headers`
    (which win on a clash); credentials in the URL go as `Authorization: Basic`. Values
    JSON cannot encode are sent as `str(value)`. Redirects
    are not followed. `timeout` (seconds) bounds each delivery as a whole: connecting,
    sending the event and reading the answer, however slowly the server trickles it
    (not the host name's lookup).
    `events` limits which events are posted; None means all.
    """

    def __init__(self, webhook_url: str, *, timeout: float = 5.0,
                 headers: Mapping[str, str] | None = None,
                 events: Iterable[str] | None = None) -> None:
        parts = urllib.parse.urlsplit(_text("webhook_url", webhook_url))
        try:
            has_host = bool(parts.hostname) and parts.port != 0
        except ValueError:   # urlsplit checks the port only when it is read
            has_host = False
        userinfo, _, host_port = parts.netloc.rpartition("@")
        if parts.scheme.lower() not in ("http", "https") or not has_host:
            shown = urllib.parse.urlunsplit(parts._replace(netloc=host_port))  # no credentials
            raise ValueError("webhook_url must be an http:// or https:// URL with a host and"
                             f" a valid port, got {shown!r}")
        # Credentials in the URL are sent as Basic authorization (urllib would take
        # "user:pass@host" for a host name), and kept private: no repr, vars() or log shows them.
        self._authorization = _basic_authorization(userinfo) if userinfo else None
        # Sent as is, a non-ASCII path or query fails every delivery: percent-encoded here,
        # once (escapes already in it are kept). The fragment is never sent.
        self.webhook_url = urllib.parse.urlunsplit((
            parts.scheme, host_port, urllib.parse.quote(parts.path, safe=_URL_SAFE),
            urllib.parse.quote(parts.query, safe=_URL_SAFE + "?"), ""))
        # The URL itself may be the secret (Slack-style hooks): logs show scheme, host and
        # port only, never the path, query or user info.
        self._shown_url = f"{parts.scheme}://{host_port}/..."
        self.timeout = _positive("timeout", timeout)
        if headers is not None and not isinstance(headers, Mapping):
            raise TypeError(
                f"headers must be a mapping of str to str, got {type(headers).__name__}")
        self.headers = {"Content-Type": "application/json", "User-Agent": "jobcore"}
        for key, value in (headers or {}).items():
            if not (isinstance(key, str) and _HEADER_NAME.fullmatch(key)):
                raise ValueError(f"invalid HTTP header name {key!r}")
            self.headers[key] = _text(f"header {key!r}", value, empty_ok=True)
            if max(map(ord, value), default=0) > 255:  # http.client would fail every delivery on it
                raise ValueError(f"header {key!r} must be Latin-1 text (as HTTP sends it), got {value!r}")
        self.events = _event_names(events)
        from jobcore.deadline_io import deadline_opener  # imports urllib.request: see above
        self._opener = deadline_opener()

    def wants(self, event_name: str) -> bool:
        """True if this channel posts events named `event_name`."""
        return self.events is None or event_name in self.events

    def send(self, event: dict[str, Any]) -> None:
        """POST `event` unless this channel does not want it; raises `NotificationError`
        on a non-2xx answer and `OSError` (`urllib.error.URLError`, `TimeoutError`) when
        the server cannot be reached or has not answered within `timeout`."""
        import urllib.error
        import urllib.request

        if not self.wants(event.get("event", "")):
            return
        data = json.dumps(event, default=str).encode("utf-8")
        request = urllib.request.Request(self.webhook_url, data=data, headers=self.headers,
                                         method="POST")
        if self._authorization is not None and not request.has_header("Authorization"):
            request.add_header("Authorization", self._authorization)  # `headers` win on a clash
        try:
            with self._opener.open(request, timeout=self.timeout):
                pass
        except urllib.error.HTTPError as exc:
            with exc:
                answer = exc.read(1024).decode("utf-8", "replace")
            raise NotificationError(
                f"webhook {self._shown_url} answered HTTP {exc.code} {exc.reason}: "
                f"{_one_line(answer, 200)!r}", status=exc.code) from None

    def __repr__(self) -> str:
        return f"WebhookNotificationChannel({self._shown_url!r})"


def _basic_authorization(userinfo: str) -> str:
    """An `Authorization: Basic` value for a URL's `user:password` (percent-decoded, UTF-8)."""
    import base64

    user, _, password = userinfo.partition(":")
    pair = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}"
    return "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")


def _event_names(events: Iterable[str] | None) -> frozenset[str] | None:
    if events is None:
        return None
    if isinstance(events, str):
        raise TypeError(f"events must be a collection of event names, not the string {events!r}")
    names = frozenset(_text("events", name) for name in _iterable("events", events))
    if not names:
        raise ValueError("events must name at least one event (or be None)")
    unknown = sorted(names - EVENT_NAMES)
    if unknown:  # a misspelt name would silently deliver nothing
        raise ValueError(f"events names no event jobcore publishes: {', '.join(map(repr, unknown))};"
                         f" the events are {', '.join(sorted(EVENT_NAMES))}")
    return names


def _iterable(what: str, value: Any) -> list[Any]:
    try:
        return list(value)
    except TypeError:
        raise TypeError(
            f"{what} must be a str or an iterable of str, got {type(value).__name__}") from None


def _text(what: str, value: Any, *, empty_ok: bool = False) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    if not value.strip() and not empty_ok:
        raise ValueError(f"{what} must not be empty")
    if "\r" in value or "\n" in value:
        raise ValueError(f"{what} must not contain line breaks, got {value!r}")
    return value


def _positive(what: str, value: Any) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{what} must be a number of seconds, got {type(value).__name__}")
    seconds = as_seconds(value)
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"{what} must be a finite number > 0 of seconds, got {value!r}")
    return seconds


def _one_line(value: Any, limit: int = 120) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _parse_timestamp(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            # Before Python 3.11, fromisoformat() does not read a "Z" suffix.
            text = str(value)
            moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
        except ValueError:
            return None
    # A naive time is local wall time; astimezone() attaches the local offset.
    return moment if moment.tzinfo is not None else moment.astimezone()
