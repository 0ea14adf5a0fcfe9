"""Http11Transport against a real local HTTP/1.1 server: keep-alive, a connection the server
dropped while idle, timeouts and refusals as httpx's exceptions, bodies and headers intact,
and HTTPS with a certificate the client trusts (and one it does not)."""

from __future__ import annotations

import gzip
import json
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.backends import transport as transport_module
from orchestrator.backends.transport import Http11Transport, HttpxWire, target

from .certs import self_signed


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.connections = 0
        self.closed = threading.Event()  # a connection's socket is closed, server side
        self.release = threading.Event()  # lets /hang answer nothing and return

    def shutdown_request(self, request: Any) -> None:
        super().shutdown_request(request)
        self.closed.set()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def setup(self) -> None:
        super().setup()
        self.server.connections += 1

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self._send(200, {"path": self.path, "body": json.loads(body),
                         "key": self.headers.get("Idempotency-Key"),
                         "host": self.headers.get("Host")})

    def do_HEAD(self) -> None:
        self._answer({"Content-Length": "1234"}, b"")

    def do_GET(self) -> None:
        if self.path == "/hang":
            self.server.release.wait(10)
            return
        if self.path == "/gzip":
            data = gzip.compress(b'{"zipped": true}')
            self._answer({"Content-Encoding": "gzip", "Content-Length": str(len(data))}, data)
            return
        if self.path == "/chunked":
            parts = (b'{"parts": ', b'[1, 2, ', b"3]}")
            self._answer({"Transfer-Encoding": "chunked"}, b"".join(
                b"%x\r\n%s\r\n" % (len(part), part) for part in parts) + b"0\r\n\r\n")
            return
        if self.path == "/until-close":  # no length: the body ends with the connection
            self._answer({"Connection": "close"}, b'{"until": "close"}', close=True)
            return
        if self.path == "/big":  # 64 KiB of JSON
            data = json.dumps({"pad": "x" * 65_536}).encode()
            self._answer({"Content-Length": str(len(data))}, data)
            return
        if self.path == "/cut-short":  # promises 100 bytes, sends 10, hangs up
            self._answer({"Content-Length": "100"}, b'{"cut": tr', close=True)
            return
        if self.path == "/trickle":  # a byte every 50 ms: never idle for a read timeout
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            for _ in range(100):
                if self.server.release.wait(0.05):
                    return
                self.wfile.write(b" ")
                self.wfile.flush()
            return
        if self.path.startswith("/keep-alive-"):  # the server's idle limit, as a hint
            data = json.dumps({"path": self.path}).encode()
            hint = urllib.parse.unquote(self.path.rsplit("-", 1)[1])
            self._answer({"Keep-Alive": f"timeout={hint}, max=100",
                          "Content-Length": str(len(data))}, data)
            return
        self._send(200, {"path": self.path})
        if self.path == "/then-drop":  # the server ends an idle keep-alive connection
            self.close_connection = True

    def _send(self, status: int, obj: dict[str, Any]) -> None:
        data = json.dumps(obj).encode()
        self._answer({"Content-Type": "application/json", "Content-Length": str(len(data))},
                     data, status=status)

    def _answer(self, headers: dict[str, str], body: bytes, *, status: int = 200,
                close: bool = False) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = close or self.close_connection



@pytest.fixture()
def server() -> Iterator[Server]:
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()


@pytest.fixture()
def transport() -> Iterator[Http11Transport]:
    t = Http11Transport()
    yield t
    t.close()


def url(srv: Server, path: str) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}{path}"


def send(t: httpx.BaseTransport, method: str, target: str, **kw: Any) -> httpx.Response:
    resp = t.handle_request(httpx.Request(method, target, **kw))
    resp.read()
    return resp


def test_requests_reuse_one_keep_alive_connection(server: Server,
                                                  transport: Http11Transport) -> None:
    for i in range(5):
        r = send(transport, "POST", url(server, f"/v1/x?n={i}"), json={"i": i},
                 headers={"Idempotency-Key": f"k{i}"})
        assert r.status_code == 200
        assert r.json() == {"path": f"/v1/x?n={i}", "body": {"i": i}, "key": f"k{i}",
                            "host": f"127.0.0.1:{server.server_address[1]}"}
    assert server.connections == 1


def test_a_connection_the_server_dropped_while_idle_is_not_reused(
    server: Server, transport: Http11Transport
) -> None:
    assert send(transport, "GET", url(server, "/then-drop")).status_code == 200
    assert server.closed.wait(5)  # the server has hung up on the idle connection
    assert send(transport, "GET", url(server, "/after")).json() == {"path": "/after"}
    assert server.connections == 2


def test_a_connection_idle_longer_than_the_servers_hint_or_the_limit_is_not_reused(
    server: Server
) -> None:
    """A server may close an idle connection just as a request goes out on it (a paid
    submission's outcome then unknown, though it never saw it): the transport drops one
    idle for longer than the server's Keep-Alive timeout less a second, or max_idle_s."""
    transport = Http11Transport(max_idle_s=1.0)
    try:
        send(transport, "GET", url(server, "/keep-alive-1"))  # 1 s, less 1 s: not kept
        send(transport, "GET", url(server, "/keep-alive-30"))
        send(transport, "GET", url(server, "/next"))  # reuses the one kept
        assert server.connections == 2
        time.sleep(1.2)  # idle past max_idle_s: what is tested, not a wait for something
        send(transport, "GET", url(server, "/after-idle"))
        assert server.connections == 3
    finally:
        transport.close()


def test_a_compressed_answer_is_decoded(server: Server, transport: Http11Transport) -> None:
    assert send(transport, "GET", url(server, "/gzip")).json() == {"zipped": True}


def test_chunked_and_until_close_bodies_are_read_whole(
    server: Server, transport: Http11Transport
) -> None:
    assert send(transport, "GET", url(server, "/chunked")).json() == {"parts": [1, 2, 3]}
    assert send(transport, "GET", url(server, "/until-close")).json() == {"until": "close"}
    assert send(transport, "GET", url(server, "/after")).json() == {"path": "/after"}
    assert server.connections == 2  # the chunked answer's connection was kept, not the other


def test_an_answer_cut_short_is_a_protocol_error(server: Server,
                                                 transport: Http11Transport) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        send(transport, "GET", url(server, "/cut-short"))
    assert send(transport, "GET", url(server, "/after")).json() == {"path": "/after"}


def test_an_answer_past_the_size_limit_is_refused_not_held_in_memory(
        server: Server, transport: Http11Transport, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport_module, "MAX_ANSWER_BYTES", 16_384)
    with pytest.raises(httpx.RemoteProtocolError, match="larger than"):
        send(transport, "GET", url(server, "/big"))
    assert send(transport, "GET", url(server, "/after")).json() == {"path": "/after"}
    monkeypatch.setattr(transport_module, "MAX_ANSWER_BYTES", 1_000_000)
    assert len(send(transport, "GET", url(server, "/big")).json()["pad"]) == 65_536


def test_a_head_answer_ends_with_its_headers(server: Server,
                                             transport: Http11Transport) -> None:
    r = send(transport, "HEAD", url(server, "/h"))
    assert r.status_code == 200 and r.headers["content-length"] == "1234"
    assert send(transport, "GET", url(server, "/after")).json() == {"path": "/after"}
    assert server.connections == 1


def test_no_answer_within_the_read_timeout_is_a_read_timeout(
    server: Server, transport: Http11Transport
) -> None:
    timeout = httpx.Timeout(connect=1.0, read=0.2, write=0.2, pool=1.0)
    with pytest.raises(httpx.ReadTimeout):
        send(transport, "GET", url(server, "/hang"), extensions={"timeout": timeout.as_dict()})
    server.release.set()
    assert send(transport, "GET", url(server, "/fine")).json() == {"path": "/fine"}


def test_an_answer_trickling_past_the_total_deadline_is_a_read_timeout(
    server: Server, transport: Http11Transport,
) -> None:
    """Each piece comes well within the read timeout, but the whole answer is due within
    ``total`` (without it, the 5 s answer would be read whole): a call never outlives the
    lease the job chain gave it."""
    with pytest.raises(httpx.ReadTimeout):
        send(transport, "GET", url(server, "/trickle"),
             extensions={"timeout": {"connect": 1.0, "read": 1.0, "total": 0.5}})


def test_a_refused_connection_is_a_connect_error(transport: Http11Transport) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    with pytest.raises(httpx.ConnectError):
        send(transport, "GET", f"http://127.0.0.1:{port}/")


def test_an_unknown_scheme_is_refused(transport: Http11Transport) -> None:
    with pytest.raises(httpx.UnsupportedProtocol):
        send(transport, "GET", "ftp://127.0.0.1/x")


def test_an_adapter_call_through_it_reaches_the_server_once(
    server: Server, transport: Http11Transport
) -> None:
    """Through httpx.Client too (what the SDK-style callers use), the same wire."""
    with httpx.Client(transport=transport) as client:
        r = client.post(url(server, "/v1/y"), json={"a": 1})
    assert r.json()["body"] == {"a": 1}
    assert server.connections == 1


def test_exchange_sends_host_and_length_and_reads_a_reply(
    server: Server, transport: Http11Transport
) -> None:
    """The adapters' seam: their own headers plus Host and Content-Length go out; the
    answer comes back whole, headers as sent, on the same keep-alive connection."""
    to = target(url(server, "/v1/x?q=1"))
    own = [(b"Idempotency-Key", b"k-1"), (b"Content-Type", b"application/json")]
    for _ in range(2):
        reply = transport.exchange("POST", to, own, b'{"a": 1}', {"read": 5.0})
        assert reply.status_code == 200
        assert reply.json() == {"path": "/v1/x?q=1", "body": {"a": 1}, "key": "k-1",
                                "host": f"127.0.0.1:{server.server_address[1]}"}
        assert reply.header("CONTENT-TYPE") == "application/json"
        assert reply.header("Retry-After") is None
    assert server.connections == 1
    got = transport.exchange("GET", target(url(server, "/chunked")), [], b"", {"read": 5.0})
    assert got.json() == {"parts": [1, 2, 3]}  # a GET carries no Content-Length


def test_any_httpx_transport_is_a_wire_that_sees_httpx_requests() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(429, headers={"Retry-After": "3"}, json={"busy": True})

    reply = HttpxWire(httpx.MockTransport(handler)).exchange(
        "POST", target("http://example.test/v1/y"), [(b"Idempotency-Key", b"k-2")], b"{}",
        {"read": 1.0})
    assert (reply.status_code, reply.header("retry-after"), reply.json()) == (
        429, "3", {"busy": True})
    [request] = seen
    assert request.url == "http://example.test/v1/y" and request.content == b"{}"
    assert request.headers["Idempotency-Key"] == "k-2"
    assert request.extensions["timeout"] == {"read": 1.0}


def test_https_with_a_trusted_certificate_and_a_refusal_without(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "127.0.0.1")
    srv = Server()
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(cert, key)
    srv.socket = server_side.wrap_socket(srv.socket, server_side=True)
    port = srv.server_address[1]
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    trusting = Http11Transport(ssl_context=ssl.create_default_context(cafile=str(cert)))
    untrusting = Http11Transport()
    try:
        for i in range(3):
            r = send(trusting, "POST", f"https://127.0.0.1:{port}/v1/s", json={"i": i})
            assert r.json()["body"] == {"i": i}
        assert srv.connections == 1
        with pytest.raises(httpx.ConnectError):  # the system's trust store knows no such CA
            send(untrusting, "GET", f"https://127.0.0.1:{port}/x")
    finally:
        trusting.close()
        untrusting.close()
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize("hint", ["0.9", "%220.9%22"])  # a fraction, bare or quoted
def test_a_fractional_idle_hint_is_read(server: Server, hint: str) -> None:
    """0.9 s less a second: not kept at all (read as a whole number, it was ignored)."""
    transport = Http11Transport(max_idle_s=30.0)
    try:
        send(transport, "GET", url(server, f"/keep-alive-{hint}"))
        send(transport, "GET", url(server, "/after"))
        assert server.connections == 2
    finally:
        transport.close()


def test_a_servers_idle_hint_below_the_limit_is_kept_to(server: Server) -> None:
    """keep-alive-2: 2 s less a second, under max_idle_s: reused within it, not after."""
    transport = Http11Transport(max_idle_s=30.0)
    try:
        send(transport, "GET", url(server, "/keep-alive-2"))
        send(transport, "GET", url(server, "/keep-alive-2"))  # at once: reused
        assert server.connections == 1
        time.sleep(1.2)  # idle past the hint's second: what is tested, not a race
        send(transport, "GET", url(server, "/after"))
        assert server.connections == 2
    finally:
        transport.close()
