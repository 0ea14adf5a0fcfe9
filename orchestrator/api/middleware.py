"""ASGI middleware: bound request bodies in size (413) and time (408); the last-line 500;
``HEAD`` answered as ``GET`` without the body (``HeadAsGet``).

``BodySizeLimit``: a declared ``Content-Length`` above the limit is refused before any byte
is read; a chunked body is counted as it streams and refused as soon as it passes the limit.

``RequestMetrics``: every request counted and timed by method, route *template* and status
(``orchestrator_http_*``), whatever answered it: a route, the gate's 401/429, a limit's
413/408 or the last-line 500.

``BodyDeadline``: the whole body must arrive within ``timeout_s`` of the app's first read of
it, else ``408 request_timeout`` and the connection is closed, so a client trickling a body
holds neither a worker thread nor a connection for long.

Both refusals close the connection: the rest of the body is not read. Both bound only a body
the app reads; one it never reads (``GET /healthz`` with a body) is bounded by the protocol
(:mod:`orchestrator.api.protocol`), a little past these same limits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

from starlette.routing import BaseRoute, Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator import metrics
from orchestrator.api.errors import BodyRefused, envelope_bytes, log_outage
from orchestrator.api.paths import STREAM_PATHS, flat_routes
from orchestrator.metrics import catalogue as m
from orchestrator.outage import unavailable

log = logging.getLogger("orchestrator.api")


async def send_error(send: Send, status: int, code: str, message: str,
                     details: dict[str, Any] | None = None,
                     headers: Iterable[tuple[bytes, bytes]] = (), close: bool = True) -> None:
    """Answer with the error envelope from ASGI middleware; ``close``: the connection is closed
    after it (a body that was not read must not be taken for the next request)."""
    body = envelope_bytes(code, message, details)
    head: list[Any] = [(b"content-type", b"application/json"),
                       (b"content-length", str(len(body)).encode()), *headers]
    if close:
        head.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


class _TooLarge(BodyRefused):
    """Raised from ``receive``: FastAPI re-raises HTTPExceptions met while reading the body,
    so the app's handler answers 413 with the envelope (``details.max_bytes``) and closes."""


class _TooSlow(BodyRefused):
    """Raised from ``receive`` when the body's deadline passes; answered 408 like _TooLarge."""


class HeadAsGet:
    """``HEAD`` on a GET route answers as ``GET`` would, without the body (RFC 9110 §9.3.2:
    uptime monitors and load balancers probe ``/healthz`` so). FastAPI routes answer only the
    methods they name."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["method"] != "HEAD"
                or STREAM_PATHS.fullmatch(scope["path"])):
            await self.app(scope, receive, send)
            return

        async def head_send(message: Message) -> None:
            if message["type"] == "http.response.body":
                if not message.get("more_body", False):
                    await send({"type": "http.response.body", "body": b""})
                return
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, head_send)


class _TrackedSend:
    """``send`` that remembers whether the response has started: after that, an error can no
    longer be answered with a response of its own."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.started = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        await self.send(message)


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    await self._refuse(send)
                    return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge(413, self._message(), {"max_bytes": self.max_bytes})
            return message

        tracked = _TrackedSend(send)
        try:
            await self.app(scope, limited_receive, tracked)
        except _TooLarge:
            if not tracked.started:
                await self._refuse(send)

    def _message(self) -> str:
        return f"request body is larger than the limit of {self.max_bytes} bytes"

    async def _refuse(self, send: Send) -> None:
        await send_error(send, 413, "payload_too_large", self._message(),
                         {"max_bytes": self.max_bytes})


class BodyDeadline:
    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        complete = False

        async def timed_receive() -> Message:
            nonlocal deadline, complete
            if complete:  # the body is in: later reads wait for a disconnect, untimed
                return await receive()
            if deadline is None:
                deadline = loop.time() + self.timeout_s
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise _TooSlow(408, self._message()) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                complete = True
            return message

        tracked = _TrackedSend(send)
        try:
            await self.app(scope, timed_receive, tracked)
        except _TooSlow:
            if not tracked.started:
                await send_error(send, 408, "request_timeout", self._message())

    def _message(self) -> str:
        return f"the request body did not arrive within {self.timeout_s:g} s"


class CatchAll:
    """The last line: an exception no handler took becomes a 500 ``internal_error`` without
    details, and only its type is logged (its message may quote a prompt, e.g. a SQL error
    echoing parameters), so nothing reaches the server's traceback log. An outage of
    PostgreSQL or Redis met outside the routes (the gate's key lookup) is ``503 unavailable``
    with ``Retry-After``, as the routes answer it (orchestrator.outage)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tracked = _TrackedSend(send)
        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            down = unavailable(exc)
            if down is not None:
                log_outage(down, exc)
                if not tracked.started:
                    await send_error(send, 503, down.code, down.message, dict(down.details),
                                     [(b"retry-after", str(down.retry_after_s).encode())],
                                     close=False)
                return
            log.error("unhandled error in %s %s: %s", scope.get("method"), scope.get("path"),
                      type(exc).__name__)
            if tracked.started:
                return
            await send_error(send, 500, "internal_error", "internal error", close=False)


UNMATCHED = "unmatched"


def route_template(scope: Scope, routes: Sequence[BaseRoute]) -> str:
    """The template of the route that serves ``scope`` (``/v1/jobs/{job_id}``), never the raw
    path: a label per job id would grow a series per job. A request answered before routing
    (the gate's 401, a 413) is matched against ``routes`` (:func:`flat_routes`) here; no
    route: ``unmatched``."""
    route = scope.get("route")
    if route is None:
        partial = None
        for candidate in routes:
            match, _ = candidate.matches(scope)
            if match is Match.FULL:
                route = candidate
                break
            if match is Match.PARTIAL and partial is None:
                partial = candidate  # the path matches, the method does not (405)
        route = route or partial
    if isinstance(route, Mount):
        return route.path + "/{path}"
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class RequestMetrics:
    """Outermost: counts and times every HTTP request (``metrics`` recorder, so the figures
    reach Prometheus and Cloud Monitoring alike). Recording never raises."""

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self._routes = routes
        self._flat: list[BaseRoute] | None = None

    @property
    def routes(self) -> list[BaseRoute]:
        if self._flat is None:  # on the first request: every route is there by then
            self._flat = flat_routes(self._routes)
        return self._flat

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception past CatchAll (none expected) counts as a 500
        # routing rewrites the scope (a mount moves its prefix into root_path): a request no
        # route marked is matched as it arrived
        arrived = dict(scope)

        answered: float | None = None

        async def send_status(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                # the answer is out: a background task after it (a job's start message) is
                # not the client's wait
                answered = time.perf_counter()

        try:
            await self.app(scope, receive, send_status)
        finally:
            method = str(scope.get("method", ""))
            route = route_template({**arrived, "route": scope.get("route")}, self.routes)
            metrics.distribution(m.HTTP_LATENCY, (answered or time.perf_counter()) - started,
                                 method=method, route=route)
            metrics.counter(m.HTTP_REQUESTS, method=method, route=route, status=status)
            if status >= 400:
                metrics.counter(m.HTTP_ERRORS, method=method, route=route, status=status)
