"""A webhook receiver over a bare socket, for the receivers an HTTP server library will not
play: one that trickles its answer, never answers, hangs up mid-request, answers with an
endless body. Each request is read whole (head and ``Content-Length`` body) and kept; then
the test's ``behave`` writes whatever answer it likes to the socket."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

Behaviour = Callable[[socket.socket, "Request"], None]


@dataclass(frozen=True)
class Request:
    head: str
    headers: dict[str, str]
    body: bytes

    @property
    def path(self) -> str:
        return self.head.split(" ")[1]


def answer(status: int, body: bytes = b"", extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
            f"{extra}\r\n").encode() + body


def ok(sock: socket.socket, _: Request) -> None:
    sock.sendall(answer(200))


@dataclass
class RawReceiver:
    behave: Behaviour = ok
    host: str = "127.0.0.1"
    tls: ssl.SSLContext | None = None  # a server context: https, its answers over TLS
    requests: list[Request] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)  # ends every behaviour
    _sock: socket.socket | None = None
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def port(self) -> int:
        assert self._sock is not None
        return int(self._sock.getsockname()[1])

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def got(self) -> list[Request]:
        with self._lock:
            return list(self.requests)

    def start(self) -> RawReceiver:
        self._sock = socket.create_server((self.host, 0))
        self._sock.settimeout(0.2)
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def close(self) -> None:
        self.stop.set()
        for t in list(self._threads):
            t.join(timeout=10)
        if self._sock is not None:
            self._sock.close()

    def _accept(self) -> None:
        assert self._sock is not None
        while not self.stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            with self._lock:
                self._threads.append(t)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            data = b""
            try:
                if self.tls is not None:
                    conn = self.tls.wrap_socket(conn, server_side=True)
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip()
                           for k, _, v in (line.partition(":") for line in lines[1:])}
                want = int(headers.get("content-length", "0"))
                while len(body) < want:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    body += chunk
                request = Request(lines[0], headers, body)
                with self._lock:
                    self.requests.append(request)
                self.behave(conn, request)
            except OSError:
                pass  # the sender hung up: what several tests make it do
