"""The email channel against SMTP servers that behave as real ones sometimes do: one that
trickles its replies (the per-read socket timeout never fires), one that answers QUIT badly
after it has accepted the message; and a submission relay that requires STARTTLS and AUTH."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from orchestrator.notify import ChannelFactory, DeliveryError, SmtpSettings, parse_channel

from .certs import self_signed
from .test_notify_channels import SmtpSink, free_port, make_alert

TO = {"type": "email", "to": ["ops@example.test"]}


class Trickler:
    """An SMTP server that greets with an endless multi-line ``220-`` banner, one line every
    ``every_s``: each read gets data long before a per-read timeout, so only a limit on the
    whole delivery ends it."""

    def __init__(self, every_s: float = 0.2) -> None:
        self.every_s = every_s
        self.stop = threading.Event()
        self.connected = threading.Event()
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.getsockname()[1])

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            self.connected.set()
            with conn:
                while not self.stop.wait(self.every_s):
                    try:
                        conn.sendall(b"220-still thinking\r\n")
                    except OSError:
                        break

    def close(self) -> None:
        self.stop.set()
        self._thread.join(10)
        self._server.close()


@pytest.fixture()
def trickler() -> Iterator[Trickler]:
    t = Trickler()
    yield t
    t.close()


def test_a_trickling_smtp_server_cannot_hold_a_delivery_past_its_timeout(
    trickler: Trickler,
) -> None:
    """ORCH_SMTP_TIMEOUT_S is documented as the per-delivery timeout: it must bound the whole
    conversation, not each read (the sending thread is a worker's: held, it is lost to jobs)."""
    settings = SmtpSettings(smtp_host="127.0.0.1", smtp_port=trickler.port,
                            smtp_starttls=False, smtp_timeout_s=1.0)
    errors: list[DeliveryError] = []

    def send() -> None:
        with ChannelFactory(smtp=settings) as factory:
            try:
                factory(parse_channel(TO)).send(make_alert())
            except DeliveryError as exc:
                errors.append(exc)

    started = time.monotonic()
    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    assert trickler.connected.wait(5), "the channel never connected"
    sender.join(8)
    assert not sender.is_alive(), "the delivery was still running 8 s into a 1 s timeout"
    assert time.monotonic() - started < 5
    assert [(e.summary, e.transient) for e in errors] == [("timeout", True)]



def test_a_server_that_never_greets_is_a_timeout() -> None:
    """Not ``connect_failed``: the connection was made, the server never said a word."""
    silent = Trickler(every_s=60)
    try:
        settings = SmtpSettings(smtp_host="127.0.0.1", smtp_port=silent.port,
                                smtp_starttls=False, smtp_timeout_s=0.5)
        with ChannelFactory(smtp=settings) as factory, pytest.raises(DeliveryError) as err:
            factory(parse_channel(TO)).send(make_alert())
    finally:
        silent.close()
    assert (err.value.summary, err.value.transient) == ("timeout", True)


class QuitRefusingSink(SmtpSink):
    """Accepts the message, then answers QUIT with a 421 (as a server going down does)."""

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        return "421 closing transmission channel"


def test_an_accepted_message_is_delivered_whatever_quit_answers() -> None:
    """Once DATA is answered 250 the message is the server's: a bad QUIT must not turn it into
    a failure (a transient one is sent again: a duplicate for every recipient)."""
    sink = QuitRefusingSink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        settings = SmtpSettings(smtp_host="127.0.0.1", smtp_port=port, smtp_starttls=False,
                                smtp_from="alerts@orchestrator.test", smtp_timeout_s=5)
        with ChannelFactory(smtp=settings) as factory:
            factory(parse_channel(TO)).send(make_alert())
    finally:
        controller.stop()
    assert len(sink.messages) == 1



class Accounts:
    """aiosmtpd authenticator: one user and password."""

    def __init__(self) -> None:
        self.logins: list[str] = []

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str,
                 auth_data: Any) -> AuthResult:
        ok = (auth_data.login, auth_data.password) == (b"relay-user", b"relay-pass-0123")
        if ok:
            self.logins.append(auth_data.login.decode())
        return AuthResult(success=ok, handled=False)


def trusted_server_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ssl.SSLContext:
    """A relay's TLS, with a self-signed certificate that is the trust the channel is given."""
    cert, key = self_signed(tmp_path, "127.0.0.1")
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    return server_tls


@pytest.fixture()
def tls_relay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
              ) -> Iterator[tuple[SmtpSink, Accounts, int]]:
    """A relay as a real submission server (port 587) is: STARTTLS required before anything,
    AUTH only over TLS."""
    server_tls = trusted_server_tls(tmp_path, monkeypatch)
    sink, accounts, port = SmtpSink(), Accounts(), free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port, tls_context=server_tls,
                            require_starttls=True, authenticator=accounts,
                            auth_require_tls=True)
    controller.start()
    yield sink, accounts, port
    controller.stop()


@pytest.mark.parametrize(("password", "delivered"), [("relay-pass-0123", True),
                                                     ("wrong-pass-4567", False)])
def test_starttls_and_auth_against_a_submission_relay(
    tls_relay: tuple[SmtpSink, Accounts, int], password: str, delivered: bool,
) -> None:
    sink, accounts, port = tls_relay
    settings = SmtpSettings(smtp_host="127.0.0.1", smtp_port=port, smtp_user="relay-user",
                            smtp_password=password, smtp_from="alerts@orchestrator.test",
                            smtp_timeout_s=5)
    with ChannelFactory(smtp=settings) as factory:
        channel = factory(parse_channel(TO))
        if delivered:
            channel.send(make_alert())
        else:
            with pytest.raises(DeliveryError) as err:
                channel.send(make_alert())
            assert (err.value.summary, err.value.transient) == ("smtp_535", False)
            assert password not in str(err.value)
    assert len(sink.messages) == int(delivered)
    assert accounts.logins == (["relay-user"] if delivered else [])



def test_implicit_tls_and_auth_against_an_smtps_relay(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relay that speaks TLS from its first byte (SMTPS, port 465), as many hosted relays
    offer: ORCH_SMTP_SSL reaches it and logs in; STARTTLS alone never gets a greeting."""
    server_tls = trusted_server_tls(tmp_path, monkeypatch)
    sink, accounts, port = SmtpSink(), Accounts(), free_port()
    # aiosmtpd's auth_require_tls knows STARTTLS only; this connection is TLS throughout
    controller = Controller(sink, hostname="127.0.0.1", port=port, ssl_context=server_tls,
                            authenticator=accounts, auth_require_tls=False)
    controller.start()
    try:
        settings = SmtpSettings(smtp_host="127.0.0.1", smtp_port=port, smtp_user="relay-user",
                                smtp_password="relay-pass-0123", smtp_ssl=True,
                                smtp_from="alerts@orchestrator.test", smtp_timeout_s=5)
        with ChannelFactory(smtp=settings) as factory:
            factory(parse_channel(TO)).send(make_alert())
        assert len(sink.messages) == 1 and accounts.logins == ["relay-user"]
        starttls = settings.model_copy(update={"smtp_ssl": False, "smtp_timeout_s": 1})
        with ChannelFactory(smtp=starttls) as factory, pytest.raises(DeliveryError) as err:
            factory(parse_channel(TO)).send(make_alert())
        assert err.value.transient and "relay-pass" not in str(err.value)
        assert len(sink.messages) == 1
    finally:
        controller.stop()


@pytest.fixture()
def plain_relay() -> Iterator[tuple[SmtpSink, SmtpSettings]]:
    """A server offering neither STARTTLS nor SMTPUTF8 (an internal relay often does not)."""
    sink, port = SmtpSink(), free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port, enable_SMTPUTF8=False)
    controller.start()
    yield sink, SmtpSettings(smtp_host="127.0.0.1", smtp_port=port, smtp_timeout_s=5,
                             smtp_from="alerts@orchestrator.test")
    controller.stop()


@pytest.mark.parametrize(
    ("starttls", "to", "summary", "transient"),
    [(True, "ops@example.test", "smtp_unsupported: STARTTLS", True),
     (False, "jürgen@example.test", "smtp_unsupported: SMTPUTF8", False)],
)
def test_a_server_without_an_extension_the_delivery_needs_says_which(
    plain_relay: tuple[SmtpSink, SmtpSettings], starttls: bool, to: str, summary: str,
    transient: bool,
) -> None:
    """Not a connection failure: the operator is told what the server lacks. An address it
    cannot take never will be: final, not retried for an hour."""
    sink, settings = plain_relay
    with ChannelFactory(smtp=settings.model_copy(update={"smtp_starttls": starttls})) as f, \
            pytest.raises(DeliveryError) as err:
        f(parse_channel({"type": "email", "to": [to]})).send(make_alert())
    assert (err.value.summary, err.value.transient) == (summary, transient)
    assert sink.messages == []
