"""Headers on every answer under a path, whoever made it (a route, an error handler, a
middleware's refusal): ``PathHeaders``, added outside the other middlewares.

``NoStore``: every ``/v1`` answer carries ``Cache-Control: no-store`` (unless its route
chose its own caching) and ``X-Content-Type-Options: nosniff``.

A ``/v1`` answer is one tenant's data, or a secret shown once (``POST /v1/keys`` answers the
new key): no browser cache (a disk cache on a shared ops machine, the docs page's "Try it
out", which does not ask for ``no-store`` as the console does) and no proxy may keep a copy.
A route with its own ``Cache-Control`` keeps it: a result file (``private, immutable``), an
event stream (``no-cache``). Errors get it too: the gate's 401/429 and the last-line 500/503
pass through here.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PREFIX = "/v1"


class PathHeaders:
    """``defaults`` where the answer has none of its own, ``fixed`` always, on every answer
    whose path is ``prefix`` or under it."""

    def __init__(self, app: ASGIApp, prefix: str, *, defaults: Mapping[str, str] = {},
                 fixed: Mapping[str, str] = {}) -> None:
        self.app, self.prefix = app, prefix
        self.defaults, self.fixed = dict(defaults), dict(fixed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path != self.prefix and not path.startswith(self.prefix + "/"):
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self.defaults.items():
                    headers.setdefault(name, value)
                headers.update(self.fixed)
            await send(message)

        await self.app(scope, receive, with_headers)


class NoStore(PathHeaders):
    def __init__(self, app: ASGIApp) -> None:
        super().__init__(app, PREFIX, defaults={"Cache-Control": "no-store",
                                                "X-Content-Type-Options": "nosniff"})
