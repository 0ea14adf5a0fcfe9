"""An httpx transport for HTTP/1.1 on plain sockets, with httptools' C parser reading the
answers: the adapters' wire in production.

The adapters speak httpx (``Request``, ``Response``, its exceptions, and ``MockTransport`` in
tests); only the bytes on the wire go through here. CPU per call to the simulator on the bench
machine, in a loop of calls: httpx's own transport (httpcore over h11) about 430 µs,
``http.client`` behind this same interface about 260 µs (it parses headers with the ``email``
package), this about 120 µs. The worker makes one or two such calls per job step, all under
one GIL, so that difference is worker throughput.

Keep-alive: one stack of idle connections per origin, shared by the worker's threads. A
connection serves one request at a time and goes back on the stack once its answer has been
read whole and the server did not ask to close. One the server closed while it sat idle is
noticed before reuse (its socket polls readable) and dropped. Failures are httpx's
exceptions, so callers handle them as before:

    UnsupportedProtocol             not http or https
    ConnectTimeout / ConnectError   the connection (or its TLS handshake) could not be made
    ReadTimeout                     no progress within the request's read timeout
    ReadError                       the connection broke
    RemoteProtocolError             the answer was not HTTP/1.1, or ended early
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
from collections import deque
from typing import Any

import httptools
import httpx

_Origin = tuple[str, str, int]
_DEFAULT_PORTS = {"http": 80, "https": 443}
_RECV = 65536


class _Answer:
    """httptools' callbacks: the status line's headers and body of one answer (a 1xx
    interim answer is skipped)."""

    __slots__ = ("body", "complete", "headers", "headers_done", "keep_alive", "parser")

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.parser: Any = None

    def on_message_begin(self) -> None:
        self.headers, self.body, self.headers_done = [], [], False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.headers_done = True
        self.keep_alive = self.parser.should_keep_alive()  # read while the parser has it

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.parser.get_status_code() >= 200:
            self.complete = True

    def ends_at_close(self) -> bool:
        """The body runs to the end of the connection (no length, not chunked)."""
        names = {name.lower() for name, _ in self.headers}
        return b"content-length" not in names and b"transfer-encoding" not in names


class Http11Transport(httpx.BaseTransport):
    """HTTP/1.1 with per-origin keep-alive (``max_idle`` idle connections per origin)."""

    def __init__(self, *, max_idle: int = 64, ssl_context: ssl.SSLContext | None = None
                 ) -> None:
        self._max_idle = max_idle
        self._ssl = ssl_context
        self._idle: dict[_Origin, deque[socket.socket]] = {}
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.scheme
        if scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}",
                                            request=request)
        origin = (scheme, url.host, url.port or _DEFAULT_PORTS[scheme])
        timeout: dict[str, Any] = request.extensions.get("timeout", {})
        sock = self._reuse(origin) or self._connect(origin, timeout.get("connect"), request)
        try:
            sock.settimeout(timeout.get("read"))
            sock.sendall(_head(request) + request.read())
            answer, parser = _read_answer(sock, request)
        except TimeoutError as exc:
            sock.close()
            raise httpx.ReadTimeout(f"no answer within the read timeout ({exc})",
                                    request=request) from None
        except httptools.HttpParserError as exc:
            sock.close()
            raise httpx.RemoteProtocolError(f"{type(exc).__name__}: {exc}",
                                            request=request) from None
        except httpx.RemoteProtocolError:
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            raise httpx.ReadError(f"{type(exc).__name__}: {exc}", request=request) from None
        if answer.complete and answer.keep_alive:
            self._park(origin, sock)
        else:
            sock.close()
        return httpx.Response(parser.get_status_code(), headers=answer.headers,
                              content=b"".join(answer.body),
                              extensions={"http_version": b"HTTP/1.1"}, request=request)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for stack in idle.values():
            for sock in stack:
                sock.close()

    # -- connections ---------------------------------------------------------------------------
    def _connect(self, origin: _Origin, connect_timeout: float | None,
                 request: httpx.Request) -> socket.socket:
        scheme, host, port = origin
        try:
            sock = socket.create_connection((host, port), timeout=connect_timeout)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"could not connect to {host}:{port} in time",
                                       request=request) from None
        except OSError as exc:
            raise httpx.ConnectError(f"could not connect to {host}:{port} "
                                     f"({type(exc).__name__})", request=request) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if scheme != "https":
            return sock
        if self._ssl is None:  # loading the trust store costs milliseconds: once
            self._ssl = ssl.create_default_context()
        try:
            return self._ssl.wrap_socket(sock, server_hostname=host)
        except TimeoutError:
            sock.close()
            raise httpx.ConnectTimeout(f"no TLS handshake with {host}:{port} in time",
                                       request=request) from None
        except OSError as exc:  # ssl.SSLError among them: an untrusted certificate
            sock.close()
            raise httpx.ConnectError(f"TLS with {host}:{port} failed "
                                     f"({type(exc).__name__})", request=request) from None

    def _reuse(self, origin: _Origin) -> socket.socket | None:
        stack = self._idle.get(origin)
        while stack:
            try:
                sock = stack.pop()
            except IndexError:  # another thread took the last one
                return None
            if _still_open(sock):
                return sock
            sock.close()
        return None

    def _park(self, origin: _Origin, sock: socket.socket) -> None:
        stack = self._idle.get(origin)
        if stack is None:
            with self._lock:
                stack = self._idle.setdefault(origin, deque())
        if len(stack) >= self._max_idle:
            sock.close()
        else:
            stack.append(sock)


def _head(request: httpx.Request) -> bytes:
    """The request line and headers (httpx's Request carries Host and Content-Length)."""
    lines = [b"%s %s HTTP/1.1" % (request.method.encode("ascii"), request.url.raw_path)]
    lines += [b"%s: %s" % pair for pair in request.headers.raw]
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


def _read_answer(sock: socket.socket, request: httpx.Request) -> tuple[_Answer, Any]:
    """Read one whole answer (for HEAD, its head); raise RemoteProtocolError if the
    connection ends before it does."""
    answer = _Answer()
    parser = answer.parser = httptools.HttpResponseParser(answer)
    head_only = request.method == "HEAD"
    while not answer.complete:
        data = sock.recv(_RECV)
        if not data:
            if answer.headers_done and answer.ends_at_close():
                break  # the end of the connection is the end of the body
            raise httpx.RemoteProtocolError("the server closed the connection before the "
                                            "answer ended", request=request)
        parser.feed_data(data)
        if head_only and answer.headers_done:
            answer.complete = True
    return answer, parser


def _still_open(sock: socket.socket) -> bool:
    """An idle keep-alive connection has nothing to read; if its socket polls readable the
    server has closed it (or sent something unasked), so it must not carry a request."""
    try:
        if hasattr(select, "poll"):  # select() cannot watch descriptors above 1023
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            return not poller.poll(0)
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable
