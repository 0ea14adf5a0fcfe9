"""Connect-time egress against real local servers (HTTP and HTTPS): the connection goes to the
address the policy just checked, never to a second lookup; TLS still sends and verifies the
original name; a name that rebinds inside between the save and the send is refused.

Names are resolved by the policy's injected resolver (the DNS seam): there is no DNS here, so
a request that reached a server by name went to the address the policy handed over."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.egress import EgressPolicy, EgressRefused, egress_client, post_pinned
from orchestrator.notify import ChannelFactory, DeliveryError, parse_channel

from .certs import self_signed
from .test_notify_channels import SECRET, Receiver, make_alert, serve

__all__ = ["serve"]

PUBLIC = "93.184.216.34"


def resolver(answers: dict[str, list[list[str]]]) -> Callable[[str, int], Sequence[str]]:
    """Each lookup of a name takes its next answer (the last one repeats)."""
    def resolve(host: str, port: int) -> Sequence[str]:
        queue = answers[host]
        return queue.pop(0) if len(queue) > 1 else queue[0]
    return resolve


@dataclass
class TlsServer:
    port: int
    sni: list[str | None] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)


@pytest.fixture()
def tls(tmp_path: Path) -> Iterator[tuple[TlsServer, ssl.SSLContext]]:
    """An HTTPS server on 127.0.0.1 whose certificate names ``receiver.test``, and a client
    context that trusts that certificate."""
    cert, key = self_signed(tmp_path, "receiver.test")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    srv = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    state = TlsServer(srv.server_address[1])

    def sni(sock: Any, name: str | None, ctx: Any) -> None:
        state.sni.append(name)

    context.sni_callback = sni

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            state.hosts.append(self.headers["Host"])
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    srv.RequestHandlerClass = Handler
    srv.socket = context.wrap_socket(srv.socket, server_side=True)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, args=(0.02,), daemon=True).start()
    try:
        yield state, ssl.create_default_context(cafile=str(cert))
    finally:
        srv.shutdown()
        srv.server_close()


def test_tls_sends_and_verifies_the_name_while_connecting_to_the_checked_address(
    tls: tuple[TlsServer, ssl.SSLContext],
) -> None:
    server, trust = tls
    policy = EgressPolicy("receiver.test,other.test", resolver=resolver(
        {"receiver.test": [["127.0.0.1"]], "other.test": [["127.0.0.1"]]}))
    with egress_client(httpx.Timeout(5.0), verify=trust) as client:
        r = post_pinned(client, policy, f"https://receiver.test:{server.port}/hook", b"{}", {})
        assert r.status_code == 204
        assert server.sni == ["receiver.test"]
        assert server.hosts == [f"receiver.test:{server.port}"]
        # the same address under a name the certificate does not cover: refused by TLS,
        # so the certificate is checked against the name, not the address connected to
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            post_pinned(client, policy, f"https://other.test:{server.port}/hook", b"{}", {})
    assert server.hosts == [f"receiver.test:{server.port}"]


def test_the_connection_goes_to_the_address_checked_not_to_a_second_lookup(
    serve: Callable[..., Receiver],
) -> None:
    rx = serve(host="127.0.0.2")
    port = rx.url.split(":")[2].split("/")[0]
    # only the policy's resolver knows this name: reaching the server proves the address
    # came from the check
    policy = EgressPolicy("127.0.0.2", resolver=resolver({"pinned.test": [["127.0.0.2"]]}))
    with egress_client(httpx.Timeout(5.0)) as client:
        url = f"http://pinned.test:{port}/hooks/x"
        with pytest.raises(EgressRefused, match="must use https"):  # its address is listed,
            post_pinned(client, policy, url, b"{}", {})  # not its name: no plain http
        listed = EgressPolicy("pinned.test", resolver=resolver({"pinned.test": [["127.0.0.2"]]}))
        r = post_pinned(client, listed, url, b"{}", {})
    assert r.status_code == 200
    assert [h.headers["Host"] for h in rx.hits] == [f"pinned.test:{port}"]


def test_a_name_that_rebinds_inside_after_the_save_is_never_called(
    serve: Callable[..., Receiver],
) -> None:
    rx = serve(secret=SECRET)
    port = rx.url.split(":")[2].split("/")[0]
    url = f"https://rebind.test:{port}/hooks/x"
    policy = EgressPolicy("", resolver=resolver(
        {"rebind.test": [[PUBLIC], ["127.0.0.1"]]}))
    assert [str(a) for a in policy.check(url).addresses] == [PUBLIC]  # at save: public
    with ChannelFactory(policy=policy) as factory, pytest.raises(DeliveryError) as err:
        factory(parse_channel({"type": "webhook", "url": url, "secret": SECRET})).send(
            make_alert())
    assert err.value.reason == "egress_refused" and err.value.transient is False
    assert err.value.summary.startswith("egress_refused: rebind.test resolves to a loopback")
    assert rx.hits == []


def test_every_address_of_a_name_is_checked_and_a_dead_one_is_skipped(
    serve: Callable[..., Receiver],
) -> None:
    rx = serve(host="127.0.0.2")
    port = rx.url.split(":")[2].split("/")[0]
    dead = "127.0.0.3"  # nothing listens there: the connection fails, nothing was sent
    names = {"two.test": [[dead, "127.0.0.2"]]}
    policy = EgressPolicy("127.0.0.0/8,two.test", resolver=resolver(names))
    with egress_client(httpx.Timeout(5.0)) as client:
        r = post_pinned(client, policy, f"http://two.test:{port}/hooks/x", b"{}", {})
    assert r.status_code == 200 and len(rx.hits) == 1
    inside = EgressPolicy("", resolver=resolver({"two.test": [[PUBLIC, "127.0.0.2"]]}))
    with pytest.raises(EgressRefused, match="loopback"):  # one inside address refuses it
        inside.check(f"https://two.test:{port}/hooks/x")
