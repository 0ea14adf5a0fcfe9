"""Each channel against a real local receiver: a signed-webhook HTTP server, a Slack-like
HTTP server and an SMTP server (aiosmtpd), all on 127.0.0.1 (which the egress policy admits
only because ``LOCAL`` lists it, as ORCH_EGRESS_ALLOW would).

The fakes here are also used by test_notify_outbox.py.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller

from orchestrator.egress import EgressPolicy
from orchestrator.notify import (
    AlertMessage,
    ChannelFactory,
    DeliveryError,
    SmtpSettings,
    parse_channel,
    verify_signature,
)
from orchestrator.notify.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER

from .raw_receiver import RawReceiver, answer

SECRET = "s3cret-webhook-key-0123456789"
LOCAL = EgressPolicy("127.0.0.1")  # the receivers below are internal on purpose


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Hit:
    headers: dict[str, str]
    body: bytes
    status: int


@dataclass
class Receiver:
    """A real HTTP server. With ``secret`` it verifies signatures like a customer would.

    ``fail_first``: answer ``fail_status`` to the first K requests; ``always_status``: answer
    that to every request; ``hang``: hold each request until released (client timeouts);
    ``reply``: the body of a non-2xx answer; ``location``: a Location header on every answer.
    """

    secret: str | None = None
    fail_first: int = 0
    fail_status: int = 503
    always_status: int | None = None
    hang: threading.Event | None = None
    reply: bytes = b"no_service"
    location: str | None = None
    clock: Callable[[], float] = time.time
    hits: list[Hit] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    @property
    def accepted(self) -> list[dict[str, Any]]:
        """Bodies answered 2xx (after signature verification where a secret is set)."""
        with self.lock:
            return [json.loads(h.body) for h in self.hits if h.status < 300]

    def decide(self, headers: dict[str, str], body: bytes) -> int:
        with self.lock:
            n = len(self.hits)
            if self.always_status is not None:
                status = self.always_status
            elif n < self.fail_first:
                status = self.fail_status
            elif self.secret is not None and not verify_signature(
                self.secret, headers.get(TIMESTAMP_HEADER), body,
                headers.get(SIGNATURE_HEADER), now=self.clock(),
            ):
                status = 401
            else:
                status = 200
            self.hits.append(Hit(headers, body, status))
            return status


def _handler(rx: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            rx.arrived.set()
            if rx.hang is not None:
                rx.hang.wait(10)
            status = rx.decide(dict(self.headers.items()), body)
            out = b"ok" if status < 300 else rx.reply
            self.send_response(status)
            if rx.location is not None:
                self.send_header("Location", rx.location)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture()
def serve() -> Iterator[Callable[..., Receiver]]:
    servers: list[tuple[ThreadingHTTPServer, Receiver]] = []

    def start(host: str = "127.0.0.1", **kw: Any) -> Receiver:
        rx = Receiver(**kw)
        srv = ThreadingHTTPServer((host, 0), _handler(rx))
        srv.daemon_threads = True
        rx.url = f"http://{host}:{srv.server_address[1]}/hooks/T000/B000/tok3n"
        threading.Thread(target=srv.serve_forever, args=(0.02,), daemon=True).start()
        servers.append((srv, rx))
        return rx

    yield start
    for srv, rx in servers:
        if rx.hang is not None:
            rx.hang.set()
        srv.shutdown()
        srv.server_close()


class SmtpSink:
    """aiosmtpd handler: keeps messages; refuses recipients on demand (code per address)."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], EmailMessage]] = []
        self.refuse: dict[str, str] = {}

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any
    ) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(
        self, server: Any, session: Any, envelope: Any
    ) -> str:
        msg = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        self.messages.append((list(envelope.rcpt_tos), msg))
        return "250 Message accepted"


@pytest.fixture()
def smtp() -> Iterator[tuple[SmtpSink, SmtpSettings]]:
    sink = SmtpSink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    settings = SmtpSettings(
        smtp_host="127.0.0.1", smtp_port=port, smtp_starttls=False,
        smtp_from="alerts@orchestrator.test", smtp_timeout_s=5,
    )
    yield sink, settings
    controller.stop()


def make_alert(**over: Any) -> AlertMessage:
    payload = {
        "scope": "tenant:acme", "period": "month",
        "period_start": "2026-11-01T00:00:00+00:00", "threshold": 0.8,
        "limit_usd": 100.0, "committed_usd": 81.25, "held_usd": 4.5,
        "at": "2026-11-22T12:00:00+00:00",
    }
    payload.update(over)
    return AlertMessage.from_alert(
        alert_id=uuid.uuid4(), kind="threshold", budget_id=7, threshold_bp=8000,
        payload=payload,
    )


# -- webhook -----------------------------------------------------------------------------------


def test_webhook_posts_the_contract_payload_signed(serve: Callable[..., Receiver]) -> None:
    rx = serve(secret=SECRET)
    alert = make_alert()
    with ChannelFactory(policy=LOCAL) as factory:
        factory(parse_channel({"type": "webhook", "url": rx.url, "secret": SECRET})).send(alert)
    assert len(rx.accepted) == 1
    body = rx.accepted[0]
    assert list(body) == [
        "alert_id", "kind", "budget", "scope", "period_start", "threshold", "limit_usd",
        "committed_usd", "held_usd", "forecast_usd", "at",
    ]
    assert body["alert_id"] == str(alert.alert_id)
    assert (body["scope"], body["threshold"], body["committed_usd"]) == ("tenant:acme", 0.8, 81.25)
    assert body["budget"] == {"id": 7, "period": "month"} and body["forecast_usd"] is None
    hit = rx.hits[0]
    assert hit.headers["Content-Type"] == "application/json"
    assert abs(int(hit.headers[TIMESTAMP_HEADER]) - time.time()) < 60
    assert hit.headers[SIGNATURE_HEADER].startswith("sha256=")


def test_receiver_rejects_altered_replayed_and_wrongly_signed(
    serve: Callable[..., Receiver],
) -> None:
    rx = serve(secret=SECRET)
    with ChannelFactory(policy=LOCAL) as factory:
        factory(parse_channel({"type": "webhook", "url": rx.url, "secret": SECRET})).send(
            make_alert()
        )
    original = rx.hits[0]
    assert original.status == 200
    sent = {k: v for k, v in original.headers.items() if k.startswith("X-Orchestrator")}

    altered = original.body.replace(b'"committed_usd":81.25', b'"committed_usd":1.25')
    assert altered != original.body
    assert httpx.post(rx.url, content=altered, headers=sent).status_code == 401

    # the same request, captured and replayed six minutes later
    rx.clock = lambda: time.time() + 360
    assert httpx.post(rx.url, content=original.body, headers=sent).status_code == 401
    rx.clock = time.time

    other = serve(secret="another-secret-of-the-receiver")
    with ChannelFactory(policy=LOCAL) as factory, pytest.raises(DeliveryError) as err:
        factory(parse_channel({"type": "webhook", "url": other.url, "secret": SECRET})).send(
            make_alert()
        )
    assert other.hits[0].status == 401 and err.value.transient is False
    assert len(rx.accepted) == 1


@pytest.mark.parametrize(
    ("status", "transient"), [(500, True), (503, True), (429, True), (400, False),
                              (404, False), (410, False)],
)
def test_http_status_classification(
    serve: Callable[..., Receiver], status: int, transient: bool
) -> None:
    rx = serve(always_status=status)
    with ChannelFactory(policy=LOCAL) as factory, pytest.raises(DeliveryError) as err:
        factory(parse_channel({"type": "slack", "url": rx.url})).send(make_alert())
    assert err.value.transient is transient
    assert err.value.summary == f"http_{status}"
    assert "no_service" not in err.value.message  # the reply body is never kept
    assert "tok3n" not in err.value.message and "/hooks" not in err.value.message


def test_connection_refused_and_timeout_are_transient(serve: Callable[..., Receiver]) -> None:
    dead = f"http://127.0.0.1:{free_port()}/hook?token=tok3n"
    rx = serve(hang=threading.Event())
    with ChannelFactory(policy=LOCAL, http_timeout_s=0.3) as factory:
        for url in (dead, rx.url):
            with pytest.raises(DeliveryError) as err:
                factory(parse_channel({"type": "slack", "url": url})).send(make_alert())
            assert err.value.transient is True
            assert "tok3n" not in str(err.value)
            assert err.value.__cause__ is None and err.value.__suppress_context__


# -- slack -------------------------------------------------------------------------------------


def test_slack_message_is_readable_and_carries_the_alert_id(
    serve: Callable[..., Receiver],
) -> None:
    rx = serve()
    alert = make_alert(scope="tenant:<acme&co>")
    with ChannelFactory(policy=LOCAL) as factory:
        channel = factory(parse_channel({"type": "slack", "url": rx.url}))
        assert "tok3n" not in channel.label and "/hooks" not in channel.label
        channel.send(alert)
    msg = rx.accepted[0]
    assert str(alert.alert_id) in msg["text"]
    assert "reached 80% of its limit" in msg["text"] and "$81.25" in msg["text"]
    assert "tenant:&lt;acme&amp;co&gt;" in msg["text"]
    kinds = [b["type"] for b in msg["blocks"]]
    assert kinds == ["header", "section", "context"]
    fields = " ".join(f["text"] for f in msg["blocks"][1]["fields"])
    assert "*Limit*\n$100.00" in fields and "*Held*\n$4.50" in fields
    assert str(alert.alert_id) in msg["blocks"][2]["elements"][0]["text"]


# -- email -------------------------------------------------------------------------------------


def test_email_is_multipart_with_alert_id(smtp: tuple[SmtpSink, SmtpSettings]) -> None:
    sink, settings = smtp
    alert = make_alert(scope="tenant:<b>acme</b>")
    to = ["ops@example.test", "cfo@example.test"]
    with ChannelFactory(smtp=settings) as factory:
        factory(parse_channel({"type": "email", "to": to})).send(alert)
    assert len(sink.messages) == 1
    rcpts, msg = sink.messages[0]
    assert sorted(rcpts) == sorted(to)
    assert str(alert.alert_id) in msg["Subject"] and "reached 80%" in msg["Subject"]
    assert msg["X-Orchestrator-Alert-Id"] == str(alert.alert_id)
    assert msg["Message-ID"] == f"<alert-{alert.alert_id}@orchestrator.test>"
    assert msg["From"] == "alerts@orchestrator.test"
    assert msg.get_content_type() == "multipart/alternative"
    plain = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert plain is not None and html is not None
    plain_text = plain.get_content()
    html_text = html.get_content()
    assert "Committed: $81.25" in plain_text and f"Alert id: {alert.alert_id}" in plain_text
    assert "<td>$81.25</td>" in html_text and str(alert.alert_id) in html_text
    assert "&lt;b&gt;acme&lt;/b&gt;" in html_text and "<b>acme</b>" not in html_text


@pytest.mark.parametrize(("reply", "transient"), [("550 no such user", False),
                                                  ("451 try later", True)])
def test_email_refused_recipients(
    smtp: tuple[SmtpSink, SmtpSettings], reply: str, transient: bool
) -> None:
    sink, settings = smtp
    sink.refuse["ops@example.test"] = reply
    with ChannelFactory(smtp=settings) as factory, pytest.raises(DeliveryError) as err:
        factory(parse_channel({"type": "email", "to": ["ops@example.test"]})).send(make_alert())
    assert err.value.transient is transient and sink.messages == []


def test_email_partly_refused_is_delivered_to_the_rest(
    smtp: tuple[SmtpSink, SmtpSettings],
) -> None:
    sink, settings = smtp
    sink.refuse["gone@example.test"] = "550 no such user"
    with ChannelFactory(smtp=settings) as factory:
        factory(
            parse_channel({"type": "email", "to": ["gone@example.test", "ops@example.test"]})
        ).send(make_alert())
    assert [r for r, _ in sink.messages] == [["ops@example.test"]]


def test_email_unreachable_is_transient_and_unconfigured_is_permanent() -> None:
    down = SmtpSettings(smtp_host="127.0.0.1", smtp_port=free_port(), smtp_starttls=False,
                        smtp_timeout_s=2)
    cfg = parse_channel({"type": "email", "to": ["ops@example.test"]})
    with ChannelFactory(smtp=down) as factory, pytest.raises(DeliveryError) as err:
        factory(cfg).send(make_alert())
    assert err.value.transient is True
    with ChannelFactory(smtp=SmtpSettings(smtp_host=None)) as factory, pytest.raises(
        DeliveryError
    ) as err:
        factory(cfg).send(make_alert())
    assert err.value.transient is False and "ORCH_SMTP_HOST" in err.value.message


def test_a_429_with_a_retry_after_date_is_honoured() -> None:
    """RFC 9110 lets Retry-After be an HTTP date as well as seconds: a receiver asking for an
    hour, either way, is not retried after the 30 s backoff."""
    when = format_datetime(datetime.now(UTC) + timedelta(hours=2), usegmt=True)
    for value in ("7200", when):
        rx = RawReceiver(lambda sock, _, v=value: sock.sendall(
            answer(429, extra=f"Retry-After: {v}\r\n"))).start()
        try:
            with ChannelFactory(policy=LOCAL) as factory, pytest.raises(DeliveryError) as err:
                factory(parse_channel({"type": "slack", "url": f"{rx.url}/hooks"})).send(
                    make_alert())
        finally:
            rx.close()
        assert (err.value.summary, err.value.transient) == ("http_429", True)
        assert err.value.retry_after_s == 3600, value  # capped at MAX_RETRY_AFTER_S
