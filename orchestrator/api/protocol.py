"""The API's HTTP/1.1 protocol: uvicorn's httptools protocol with the limits it lacks.

uvicorn bounds neither the time nor the size of a request head (request line and headers):
a connection that opens and sends nothing, or a header a byte at a time, is held forever, and
httptools buffers a header of any length. Nor does it bound a body the app does not read: once
the response is out it reads and discards the rest, however long and however slow. So, per
connection:

- **head deadline**: the head must be complete within ``header_timeout_s`` of the connection
  opening (on a kept-alive connection, of the request's first byte; idleness between requests
  stays uvicorn's ``timeout_keep_alive``); else ``408 request_timeout`` (or, if no byte came,
  just a close);
- **head size**: a head larger than ``max_header_bytes`` is ``431 headers_too_large``
  (checked when it is complete, and after each read while it is not, so at most one read
  past the limit is ever buffered);
- **body deadline and size**: the body must be complete within ``body_timeout_s`` (plus
  ``BODY_GRACE_S``) of the head, and at most ``max_body_bytes`` (plus ``BODY_SLACK_BYTES``),
  whether the app reads it or not; else ``408 request_timeout`` or ``413 payload_too_large``
  if no response has started, and a close in any case. A route that reads its body meets the
  middleware's limits (``BodyDeadline``, ``BodySizeLimit``) first and is answered by the app:
  these are for the body nobody reads (``GET /healthz`` with ``Content-Length: 1000000``);
- **malformed requests**: what httptools cannot parse (a bad request line or header, a
  conflicting ``Content-Length``/``Transfer-Encoding``) and an HTTP/1.1 request without
  exactly one ``Host`` (RFC 9112 §3.2: a MUST) are ``400 bad_request`` with the envelope, not
  uvicorn's text; a version other than 1.0 and 1.1 is ``505 http_version_not_supported``;
- **connection cap**: a request that arrives while more than ``limit_concurrency`` connections
  are open, or as many requests run, is answered ``503 unavailable`` at once, with the
  error envelope (uvicorn's own cap answers in plain text, so it is left off and done here).

Every refusal closes the connection.
"""

from __future__ import annotations

import asyncio
import logging
from email.utils import formatdate
from typing import Any

from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from orchestrator.api.errors import envelope_bytes

log = logging.getLogger("orchestrator.api")

# The middleware's body deadline starts at the app's first read, after the gate has looked the
# key up: the protocol's waits this much longer, so a route reading its body gets the app's 408.
BODY_GRACE_S = 1.0
# What uvicorn may hold unread ahead of an app that reads its body: it stops reading past
# HIGH_WATER_LIMIT, but only after the read in hand (at most 256 KiB, asyncio's and uvloop's).
# So such an app has seen more than the limit, and answered 413, before the protocol counts
# this much past it.
BODY_SLACK_BYTES = HIGH_WATER_LIMIT + 256 * 1024


# as every /v1 answer, errors included (docs/api.md, Caching): these come before the app's
# middleware could add them, and a refused request may be for a /v1 path
_NO_STORE = (b"cache-control: no-store\r\n", b"x-content-type-options: nosniff\r\n")


def _response(status: int, code: str, message: str,
              extra: tuple[tuple[bytes, bytes], ...] = (),
              details: dict[str, Any] | None = None) -> bytes:
    body = envelope_bytes(code, message, details)
    date = formatdate(usegmt=True).encode()  # RFC 9110 §6.6.1: an origin with a clock sends it
    head = [STATUS_LINE[status], b"date: " + date + b"\r\n",
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n", b"connection: close\r\n",
            *_NO_STORE]
    head += [name + b": " + value + b"\r\n" for name, value in extra]
    return b"".join([*head, b"\r\n", body])


async def _unavailable(scope: Any, receive: Any, send: Any) -> None:
    body = envelope_bytes("unavailable", "the API is at its connection limit; retry")
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"retry-after", b"1"), (b"connection", b"close"),
                            (b"cache-control", b"no-store"),
                            (b"x-content-type-options", b"nosniff")]})
    await send({"type": "http.response.body", "body": body})


def _unchunked(cycle: RequestResponseCycle) -> None:
    """Answer an HTTP/1.0 request as 1.0 frames a body. uvicorn sends ``Transfer-Encoding:
    chunked`` whenever an answer has no ``Content-Length`` (an event stream), whatever the
    request's version, but a 1.0 client knows no chunked coding (RFC 9112 §6.1: a server
    MUST NOT send it one): its stream would come with chunk sizes among the events. So such
    an answer is written as is and ends with the connection (which uvicorn closes after
    every 1.0 request), and a ``Connection: keep-alive`` of the app's is left out."""
    send = cycle.send
    raw = False

    async def send10(message: Any) -> None:
        nonlocal raw
        if message["type"] == "http.response.start" and not cycle.response_started:
            headers = [(n, v) for n, v in message.get("headers", ())
                       if not (n.lower() == b"connection" and b"close" not in v.lower())]
            framed = any(n.lower() in (b"content-length", b"transfer-encoding")
                         for n, v in headers)
            if not framed and cycle.scope["method"] != "HEAD" \
                    and message["status"] not in (204, 304):
                raw = True
                cycle.chunked_encoding = False  # uvicorn adds no chunked coding then
            message = {**message, "headers": headers}
        elif raw and message["type"] == "http.response.body" and not cycle.disconnected \
                and not cycle.response_complete:
            if cycle.flow.write_paused:
                await cycle.flow.drain()
            cycle.transport.write(message.get("body", b""))
            if message.get("more_body", False):
                return
            message = {"type": "http.response.body", "body": b""}  # uvicorn ends it
        await send(message)

    cycle.send = send10  # type: ignore[method-assign]


class _Refused(Exception):
    """Raised from a parser callback after answering: the parser stops (uvicorn then calls
    ``send_400_response``, which sees the connection closing and sends nothing more)."""


class EdgeProtocol(HttpToolsProtocol):
    """Set the class attributes through :func:`edge_protocol`."""

    header_timeout_s: float = 10.0
    max_header_bytes: int = 32 * 1024
    connection_cap: int | None = None
    body_timeout_s: float = 10.0
    max_body_bytes: int = 1024 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_pending = True  # a request head is due (or under way)
        self._head_begun = False
        self._head_bytes = 0
        self._body_timer: asyncio.TimerHandle | None = None  # armed while a body arrives
        self._body_bytes = 0

    # -- head deadline and size ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._disarm_body()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        was_pending = self._head_pending
        super().data_received(data)
        if not self._head_pending or self.transport.is_closing():
            return
        # A head is still incomplete. A read that began inside it is all head; a read in which
        # it began (after the end of an earlier request) is not counted: at most one read.
        if was_pending:
            self._head_bytes += len(data)
        if self._head_bytes > self.max_header_bytes:
            self._refuse(431, "headers_too_large",
                         f"request line and headers are larger than {self.max_header_bytes} "
                         "bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._head_pending:  # a later request on the connection
            self._head_pending = True
            self._head_bytes = 0
        self._head_begun = True
        if self._head_timer is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._head_pending = False
        self._head_begun = False
        self._disarm()
        malformed = self._malformed()
        if malformed is not None:
            self._refuse(*malformed)
            raise _Refused
        size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
        if size > self.max_header_bytes:  # a head that came whole in one read
            self._refuse(431, "headers_too_large",
                         f"request line and headers are larger than {self.max_header_bytes} "
                         "bytes")
            raise _Refused  # stops the parser: nothing of this request reaches the app
        cap = self.connection_cap
        if cap is not None and (len(self.connections) > cap or len(self.tasks) >= cap):
            log.warning("connection limit reached: request answered 503",
                        extra={"connections": len(self.connections), "requests": len(self.tasks)})
            app, self.app = self.app, _unavailable
            try:
                super().on_headers_complete()
            finally:
                self.app = app
        else:
            super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope and self.scope["http_version"] == "1.0":
            _unchunked(cycle)
        self._body_bytes = 0
        self._disarm_body()
        if self._declares_body() and not (self.parser.should_upgrade()
                                          and self._should_upgrade()):
            self._arm_body()  # the body is due now

    def _malformed(self) -> tuple[int, str, str] | None:
        """Why a parsed head is still no request to serve: a proxy and this server could
        otherwise disagree on which host (or which protocol) it is for."""
        version = self.parser.get_http_version()
        if version not in ("1.0", "1.1"):
            return (505, "http_version_not_supported",
                    f"HTTP/{version[:8]} is not served: send HTTP/1.1")
        hosts = sum(1 for name, _ in self.headers if name == b"host")
        if version == "1.1" and hosts != 1:
            return (400, "bad_request",
                    f"an HTTP/1.1 request needs exactly one Host header, not {hosts}")
        return None

    # -- body deadline and size ---------------------------------------------------------------
    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self.max_body_bytes + BODY_SLACK_BYTES:
            self._cut(413, "payload_too_large",
                      f"request body is larger than the limit of {self.max_body_bytes} bytes",
                      {"max_bytes": self.max_body_bytes})
            raise _Refused  # the rest of this read is not parsed
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm_body()
        super().on_message_complete()

    def _declares_body(self) -> bool:
        """Whether the request's head announces a body (chunked, or a length above 0): only
        then is a body timer armed; a request without one completes in the head's read."""
        return any(name == b"transfer-encoding" or (name == b"content-length"
                                                    and value.strip() not in (b"", b"0"))
                   for name, value in self.headers)

    def _arm_body(self) -> None:
        self._body_timer = self.loop.call_later(self.body_timeout_s + BODY_GRACE_S,
                                                self._body_timeout)

    def _disarm_body(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_timeout(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        if self.pipeline:  # queued behind a running request, and uvicorn is not reading it
            self._arm_body()
            return
        self._cut(408, "request_timeout",
                  f"the request body did not arrive within {self.body_timeout_s:g} s")

    def _cut(self, status: int, code: str, message: str,
             details: dict[str, Any] | None = None) -> None:
        """Stop the request whose body is arriving: answered if its response has not started
        (and none before it is running), else just closed. Its app may still be running: its
        reads now see ``http.disconnect`` and its sends are dropped (uvicorn's
        ``disconnected``), so nothing it writes follows this answer."""
        self._head_pending = False
        self._disarm()
        self._disarm_body()
        cycle = self.cycle
        if not self.pipeline and not cycle.response_started:
            self.transport.write(_response(status, code, message, details=details))
        cycle.disconnected = True
        cycle.message_event.set()
        self.transport.close()

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timeout)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if not self._head_pending or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm()  # a pipelined head behind a running request: no answer may cut in
            return
        if self._head_begun:
            self._refuse(408, "request_timeout",
                         f"the request line and headers did not arrive within "
                         f"{self.header_timeout_s:g} s")
        else:
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        if not self.transport.is_closing():  # else: refused above, the answer is sent
            # uvicorn's own answer is text/plain; every error of the API is the envelope
            self._refuse(400, "bad_request", "malformed HTTP request")

    def _refuse(self, status: int, code: str, message: str) -> None:
        self._head_pending = False
        self._disarm()
        self.transport.write(_response(status, code, message))
        self.transport.close()


def edge_protocol(header_timeout_s: float, max_header_bytes: int,
                  connection_cap: int | None, *, body_timeout_s: float,
                  max_body_bytes: int) -> type[EdgeProtocol]:
    """:class:`EdgeProtocol` with these limits (uvicorn's ``http=`` takes a class)."""
    return type("EdgeProtocol", (EdgeProtocol,), {
        "header_timeout_s": header_timeout_s, "max_header_bytes": max_header_bytes,
        "connection_cap": connection_cap, "body_timeout_s": body_timeout_s,
        "max_body_bytes": max_body_bytes})
