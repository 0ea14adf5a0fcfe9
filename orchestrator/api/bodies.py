"""JSON request bodies read with every object's names unique.

RFC 8259 §4 leaves an object with a name given twice to each reader: Python keeps the last,
others the first. A proxy, WAF or audit log in front of the API that reads
``{"kind": "text", "kind": "video"}`` as a text job would then disagree with what was
admitted, so such a body is refused (``422 invalid_request``, ``body: the name 'kind' is
given twice in one object``) rather than read one way here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute


class DuplicateName(ValueError):
    """Raised by the reader; FastAPI answers a body it cannot read 400 with this as the
    cause, which :func:`orchestrator.api.errors.unreadable_body` names."""

    def __init__(self, name: str) -> None:
        super().__init__(f"the name {name[:60]!r} is given twice in one object")


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in pairs:
        if name in out:
            raise DuplicateName(name)
        out[name] = value
    return out


class _UniqueJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            # decoded here: json.loads(bytes) would also read UTF-16 and UTF-32, which
            # docs/api.md says are not JSON to this API (RFC 8259 §8.1: UTF-8; a BOM skipped)
            text = (await self.body()).decode("utf-8-sig")
            self._json = json.loads(text, object_pairs_hook=_unique)
        return self._json


class UniqueKeysRoute(APIRoute):
    """An ``APIRoute`` whose JSON body is read by :class:`_UniqueJSONRequest`
    (``APIRouter(route_class=UniqueKeysRoute)``)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            return await handler(_UniqueJSONRequest(request.scope, request.receive))

        return handle
