"""``NoStore``: every ``/v1`` answer carries ``Cache-Control: no-store`` (unless its route
chose its own caching) and ``X-Content-Type-Options: nosniff``.

A ``/v1`` answer is one tenant's data, or a secret shown once (``POST /v1/keys`` answers the
new key): no browser cache (a disk cache on a shared ops machine, the docs page's "Try it
out", which does not ask for ``no-store`` as the console does) and no proxy may keep a copy.
A route with its own ``Cache-Control`` keeps it: a result file (``private, immutable``), an
event stream (``no-cache``). Errors get it too: the gate's 401/429 and the last-line 500/503
pass through here.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PREFIX = "/v1"


class NoStore:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path != PREFIX and not path.startswith(PREFIX + "/"):
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("Cache-Control", "no-store")
                headers.setdefault("X-Content-Type-Options", "nosniff")
            await send(message)

        await self.app(scope, receive, with_headers)
