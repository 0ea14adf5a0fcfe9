"""A provider that misbehaves on the wire, for the adapters' tests: a raw-socket HTTP/1.1
server on 127.0.0.1 whose every answer is a script of bytes, pauses and hang-ups, so that a
test can send what no well-behaved server framework would (a reset after the request, a body
cut short, bytes after the body, a trickle, a redirect).

    with WireFake() as fake:
        fake.route("POST", "/v1/predictions", json_answer(201, {"id": "p-1"}))
        adapter = make_adapter(backend_at(fake.url), Http11Transport())

A route is called with the connection's socket and the parsed request and writes whatever it
likes; ``fake.requests`` records every request received whole (method, path, headers, body).
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from orchestrator.domain.catalogue import BackendSpec, parse_catalogue


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


Route = Callable[[socket.socket, Request], None]


@dataclass
class WireFake:
    """The server; a context manager. Routes match on method and the path before ``?``;
    an unrouted request is answered 404."""

    routes: dict[tuple[str, str], Route] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def route(self, method: str, path: str, answer: Route) -> None:
        self.routes[(method, path)] = answer

    def received(self, method: str, path: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests
                    if r.method == method and r.path.partition("?")[0] == path]

    def __enter__(self) -> WireFake:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(5)
        self._sock.close()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        buf = b""
        try:
            while not self.stop.is_set():
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                line, *lines = head.decode("latin-1").split("\r\n")
                method, path, _ = line.split(" ", 2)
                headers = {}
                for h in lines:
                    k, _, v = h.partition(":")
                    headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length", "0"))
                while len(buf) < length:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                body, buf = buf[:length], buf[length:]
                req = Request(method, path, headers, body)
                with self._lock:
                    self.requests.append(req)
                answer = self.routes.get((method, path.partition("?")[0]), not_found)
                answer(conn, req)
                if conn.fileno() < 0:
                    return
        except OSError:
            return
        finally:
            conn.close()


# -- answers ------------------------------------------------------------------------------------

def raw(data: bytes, *, close: bool = False) -> Route:
    """Send ``data`` as it is; then hang up when ``close``."""

    def answer(conn: socket.socket, _: Request) -> None:
        conn.sendall(data)
        if close:
            conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    return answer


def json_bytes(status: int, obj: Any, headers: dict[str, str] | None = None,
               reason: str = "OK") -> bytes:
    body = json.dumps(obj).encode()
    lines = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json",
             f"Content-Length: {len(body)}", *[f"{k}: {v}" for k, v in (headers or {}).items()]]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def json_answer(status: int, obj: Any, headers: dict[str, str] | None = None) -> Route:
    return raw(json_bytes(status, obj, headers))


def reset() -> Route:
    """The request was read whole; the connection is then reset (RST), no answer."""

    def answer(conn: socket.socket, _: Request) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    return answer


def not_found(conn: socket.socket, _: Request) -> None:
    conn.sendall(json_bytes(404, {"error": {"code": "not_found"}}, reason="Not Found"))


def backend_at(url: str, name: str = "wire", protocol: str = "predictions",
               kind: str = "video", **extra: Any) -> BackendSpec:
    """A catalogue entry for a backend served by the fake at ``url``."""
    price: dict[str, Any] = (
        {"model": "per_second", "usd_per_second": 0.05} if kind == "video" else
        {"model": "per_token", "usd_per_1k_input": 0.0005, "usd_per_1k_output": 0.0015})
    entry = {"name": name, "protocol": protocol, "kinds": [kind], "tier": "draft",
             "base_url": url, "price": price,
             "timeouts": {"connect_s": 2.0, "read_s": 3.0}, **extra}
    return parse_catalogue({"backends": [entry]}, env={}).get(name)
