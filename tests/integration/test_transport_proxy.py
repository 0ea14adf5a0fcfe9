"""Http11Transport through a real local HTTP proxy, as httpx goes by default: ``HTTP_PROXY`` /
``HTTPS_PROXY`` / ``ALL_PROXY`` (lower case too) and ``NO_PROXY`` from the environment; an
http origin with absolute-form request targets, an https origin through a ``CONNECT`` tunnel
with TLS to the origin's name (its certificate trusted through ``SSL_CERT_FILE``); the proxy
URL's credentials as ``Proxy-Authorization``; keep-alive per (origin, proxy); failures
classified as on the direct path."""

from __future__ import annotations

import base64
import http.client
import select
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from orchestrator.backends.transport import Http11Transport, target

from .certs import self_signed
from .test_transport import Server, send

PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "REQUEST_METHOD")
_HOP = {"proxy-authorization", "proxy-connection", "connection", "keep-alive"}


class Proxy(ThreadingHTTPServer):
    """A forward proxy: absolute-form requests relayed to their origin (one upstream
    connection per client connection, kept alive), ``CONNECT`` tunnels piped both ways.
    Counts what it relayed; wants ``auth`` (user, password) when given."""

    daemon_threads = True

    def __init__(self, auth: tuple[str, str] | None = None) -> None:
        super().__init__(("127.0.0.1", 0), ProxyHandler)
        self.auth = auth
        self.relayed: list[tuple[str, str]] = []  # (method, request target)
        self.credentials: list[str | None] = []  # Proxy-Authorization of each request
        self.connections = 0

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def wanted(self) -> str | None:
        if self.auth is None:
            return None
        return "Basic " + base64.b64encode(":".join(self.auth).encode()).decode()


class ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Proxy

    def setup(self) -> None:
        super().setup()
        self.server.connections += 1
        self.upstream: http.client.HTTPConnection | None = None

    def log_message(self, *args: Any) -> None:
        pass

    def _admitted(self) -> bool:
        self.server.relayed.append((self.command, self.path))
        given = self.headers.get("Proxy-Authorization")
        self.server.credentials.append(given)
        if self.server.auth is not None and given != self.server.wanted():
            self.send_response(407)
            self.send_header("Proxy-Authenticate", 'Basic realm="test"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return False
        return True

    def do_CONNECT(self) -> None:
        if not self._admitted():
            return
        host, _, port = self.path.rpartition(":")
        try:
            upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
        except OSError:
            self.send_error(502)
            return
        self.send_response(200, "Connection established")
        self.end_headers()
        self.close_connection = True
        with upstream:
            self._pipe(upstream)

    def _pipe(self, upstream: socket.socket) -> None:
        client = self.connection
        while True:
            readable, _, _ = select.select([client, upstream], [], [], 10)
            if not readable:
                return
            for sock in readable:
                data = sock.recv(65536)
                if not data:
                    return
                (upstream if sock is client else client).sendall(data)

    def _relay(self) -> None:
        if not self._admitted():
            return
        url = urlsplit(self.path)
        if url.scheme != "http" or not url.hostname:  # origin-form: not a proxy request
            self.send_error(400)
            return
        if self.upstream is None:
            self.upstream = http.client.HTTPConnection(url.hostname, url.port or 80,
                                                       timeout=10)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        path = url.path + (f"?{url.query}" if url.query else "")
        self.upstream.request(self.command, path, body=body, headers=headers)
        resp = self.upstream.getresponse()
        data = resp.read()
        self.send_response(resp.status)
        for name, value in resp.getheaders():
            if name.lower() not in _HOP | {"transfer-encoding", "content-length"}:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _relay


@pytest.fixture(autouse=True)
def no_proxy_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test names its own proxy settings (and only them)."""
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def serve(srv: ThreadingHTTPServer) -> Iterator[Any]:
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture()
def proxy() -> Iterator[Proxy]:
    yield from serve(Proxy(auth=("relay-user", "relay p@ss")))


@pytest.fixture()
def origin() -> Iterator[Server]:
    srv = Server()
    yield from serve(srv)
    srv.release.set()


def proxy_url(proxy: Proxy, host: str = "127.0.0.1") -> str:
    return f"http://relay-user:relay%20p%40ss@{host}:{proxy.port}"


def test_an_http_origin_goes_through_the_proxy_in_absolute_form(
    monkeypatch: pytest.MonkeyPatch, proxy: Proxy, origin: Server,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy_url(proxy))
    base = f"http://127.0.0.1:{origin.server_address[1]}"
    transport = Http11Transport()
    try:
        for i in range(3):
            reply = transport.exchange("POST", target(f"{base}/v1/x?n={i}"),
                                       [(b"Idempotency-Key", b"k")], b'{"i": %d}' % i,
                                       {"read": 5.0})
            assert reply.json() == {"path": f"/v1/x?n={i}", "body": {"i": i}, "key": "k",
                                    "host": f"127.0.0.1:{origin.server_address[1]}"}
        assert send(transport, "GET", f"{base}/via-httpx").json() == {"path": "/via-httpx"}
    finally:
        transport.close()
    assert proxy.relayed == [("POST", f"{base}/v1/x?n={i}") for i in range(3)] + [
        ("GET", f"{base}/via-httpx")]
    assert proxy.credentials == [proxy.wanted()] * 4  # the URL's user:password, decoded
    assert proxy.connections == 1  # kept alive to the proxy


def test_an_https_origin_goes_through_a_connect_tunnel(
    monkeypatch: pytest.MonkeyPatch, proxy: Proxy, tmp_path: Path,
) -> None:
    """Lower-case ``https_proxy``; the proxy named ``localhost`` while the certificate is for
    127.0.0.1 only: TLS checks the origin's name, not the proxy's. Trust comes from
    SSL_CERT_FILE alone."""
    cert, key = self_signed(tmp_path, "127.0.0.1")
    srv = Server()
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(cert, key)
    srv.socket = server_side.wrap_socket(srv.socket, server_side=True)
    port = srv.server_address[1]
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    monkeypatch.setenv("https_proxy", proxy_url(proxy, "localhost"))
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    transport = Http11Transport()
    try:
        for i in range(3):
            r = send(transport, "POST", f"https://127.0.0.1:{port}/v1/s", json={"i": i})
            assert r.json()["body"] == {"i": i}
            assert r.json()["host"] == f"127.0.0.1:{port}"
        assert proxy.relayed == [("CONNECT", f"127.0.0.1:{port}")]  # one tunnel, kept alive
        with pytest.raises(httpx.ReadTimeout):  # sent through the tunnel, then no answer
            send(transport, "GET", f"https://127.0.0.1:{port}/hang",
                 extensions={"timeout": {"connect": 5.0, "read": 0.3}})
        assert send(transport, "GET", f"https://127.0.0.1:{port}/after").json() == {
            "path": "/after"}  # a new tunnel: the timed-out one was closed
    finally:
        transport.close()
        srv.release.set()
        srv.shutdown()
        srv.server_close()
    assert proxy.relayed == [("CONNECT", f"127.0.0.1:{port}")] * 2
    assert proxy.credentials == [proxy.wanted()] * 2
    assert srv.connections == 2


def test_a_proxy_refusing_the_tunnel_is_a_connect_error(
    monkeypatch: pytest.MonkeyPatch, proxy: Proxy, origin: Server,
) -> None:
    """Without the credentials the proxy answers CONNECT with 407: nothing reached the
    origin, so it is a Connect* failure (safe to repeat), not a Read* one."""
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
    transport = Http11Transport()
    try:
        with pytest.raises(httpx.ConnectError, match=r"refused CONNECT .* 407"):
            send(transport, "GET", f"https://127.0.0.1:{origin.server_address[1]}/x")
    finally:
        transport.close()
    assert origin.connections == 0


def test_an_unreachable_proxy_is_a_connect_error(monkeypatch: pytest.MonkeyPatch,
                                                 origin: Server) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    monkeypatch.setenv("ALL_PROXY", f"http://user:secret-word@127.0.0.1:{dead}")
    transport = Http11Transport()
    try:
        with pytest.raises(httpx.ConnectError, match=f"proxy 127.0.0.1:{dead}") as err:
            send(transport, "GET", f"http://127.0.0.1:{origin.server_address[1]}/x")
    finally:
        transport.close()
    assert "secret-word" not in str(err.value)
    assert origin.connections == 0


def test_no_proxy_hosts_are_reached_directly(
    monkeypatch: pytest.MonkeyPatch, proxy: Proxy, origin: Server,
) -> None:
    """``ALL_PROXY`` for everything but what ``NO_PROXY`` names: 127.0.0.1 goes direct, the
    same server named ``localhost`` goes through the proxy."""
    monkeypatch.setenv("ALL_PROXY", proxy_url(proxy))
    monkeypatch.setenv("NO_PROXY", "example.internal, 127.0.0.1")
    port = origin.server_address[1]
    transport = Http11Transport()
    try:
        assert send(transport, "GET", f"http://127.0.0.1:{port}/direct").json() == {
            "path": "/direct"}
        assert proxy.relayed == []
        assert send(transport, "GET", f"http://localhost:{port}/proxied").json() == {
            "path": "/proxied"}
        assert proxy.relayed == [("GET", f"http://localhost:{port}/proxied")]
    finally:
        transport.close()


def test_trust_env_false_ignores_the_environment(
    monkeypatch: pytest.MonkeyPatch, proxy: Proxy, origin: Server,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy_url(proxy))
    transport = Http11Transport(trust_env=False)
    try:
        assert send(transport, "GET", f"http://127.0.0.1:{origin.server_address[1]}/d"
                    ).json() == {"path": "/d"}
    finally:
        transport.close()
    assert proxy.relayed == []
