"""An httpx transport on the standard library's ``http.client``: the adapters' wire in
production.

The adapters speak httpx (``Client``, ``Request``, ``Response``, its exceptions, and
``MockTransport`` in tests); only the bytes on the wire go through here. httpx's own transport
(httpcore over h11) spent about 430 µs of CPU per call to the simulator on the bench machine;
``http.client`` about 170 µs. The worker makes one or two such calls per job step, all under
one GIL, so that difference is worker throughput.

Keep-alive: one stack of idle connections per origin, shared by the worker's threads. A
connection serves one request at a time and goes back on the stack once its response has been
read whole. One the server closed while it sat idle is noticed before reuse (its socket polls
readable) and dropped. Failures are httpx's exceptions, so callers handle them as before:

    ConnectTimeout / ConnectError   the connection could not be made
    ReadTimeout / WriteTimeout      no progress within the request's read timeout
    ReadError / RemoteProtocolError the connection broke, or the answer was not HTTP/1.1
"""

from __future__ import annotations

import http.client
import select
import socket
import ssl
import threading
from collections import deque
from typing import Any

import httpx

_Origin = tuple[str, str, int]
_DEFAULT_PORTS = {"http": 80, "https": 443}


class StdlibTransport(httpx.BaseTransport):
    """HTTP/1.1 over ``http.client`` with per-origin keep-alive (``max_idle`` per origin)."""

    def __init__(self, *, max_idle: int = 64, ssl_context: ssl.SSLContext | None = None
                 ) -> None:
        self._max_idle = max_idle
        self._ssl = ssl_context
        self._idle: dict[_Origin, deque[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.scheme
        if scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}",
                                            request=request)
        origin = (scheme, url.host, url.port or _DEFAULT_PORTS[scheme])
        timeout: dict[str, Any] = request.extensions.get("timeout", {})
        conn = self._reuse(origin) or self._connect(origin, timeout.get("connect"), request)
        try:
            if conn.sock is not None:
                conn.sock.settimeout(timeout.get("read"))
            conn.putrequest(request.method, url.raw_path.decode("ascii"), skip_host=True,
                            skip_accept_encoding=True)
            for name, value in request.headers.raw:
                conn.putheader(name.decode("latin-1"), value.decode("latin-1"))
            conn.endheaders(request.read() or None)
            resp = conn.getresponse()
            content = resp.read()
        except TimeoutError as exc:
            conn.close()
            raise httpx.ReadTimeout(f"no answer within the read timeout ({exc})",
                                    request=request) from None
        except http.client.HTTPException as exc:
            conn.close()
            raise httpx.RemoteProtocolError(f"{type(exc).__name__}: {exc}",
                                            request=request) from None
        except OSError as exc:
            conn.close()
            raise httpx.ReadError(f"{type(exc).__name__}: {exc}", request=request) from None
        if resp.will_close:
            conn.close()
        else:
            self._park(origin, conn)
        return httpx.Response(resp.status, headers=resp.getheaders(), content=content,
                              extensions={"http_version": b"HTTP/1.1"}, request=request)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for stack in idle.values():
            for conn in stack:
                conn.close()

    # -- connections ---------------------------------------------------------------------------
    def _connect(self, origin: _Origin, connect_timeout: float | None,
                 request: httpx.Request) -> http.client.HTTPConnection:
        scheme, host, port = origin
        conn: http.client.HTTPConnection
        if scheme == "https":
            if self._ssl is None:  # loading the trust store costs milliseconds: once
                self._ssl = ssl.create_default_context()
            conn = http.client.HTTPSConnection(host, port, timeout=connect_timeout,
                                               context=self._ssl)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=connect_timeout)
        try:
            conn.connect()
        except TimeoutError:
            conn.close()
            raise httpx.ConnectTimeout(f"could not connect to {host}:{port} in time",
                                       request=request) from None
        except OSError as exc:
            conn.close()
            raise httpx.ConnectError(f"could not connect to {host}:{port} "
                                     f"({type(exc).__name__})", request=request) from None
        if conn.sock is not None:
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def _reuse(self, origin: _Origin) -> http.client.HTTPConnection | None:
        stack = self._idle.get(origin)
        while stack:
            try:
                conn = stack.pop()
            except IndexError:  # another thread took the last one
                return None
            if _still_open(conn):
                return conn
            conn.close()
        return None

    def _park(self, origin: _Origin, conn: http.client.HTTPConnection) -> None:
        stack = self._idle.get(origin)
        if stack is None:
            with self._lock:
                stack = self._idle.setdefault(origin, deque())
        if len(stack) >= self._max_idle:
            conn.close()
        else:
            stack.append(conn)


def _still_open(conn: http.client.HTTPConnection) -> bool:
    """An idle keep-alive connection has nothing to read; if its socket polls readable the
    server has closed it (or sent something unasked), so it must not carry a request."""
    sock = conn.sock
    if sock is None:
        return False
    try:
        if hasattr(select, "poll"):  # select() cannot watch descriptors above 1023
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            return not poller.poll(0)
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable
