"""``IdentityBodies``: a request body in a content coding (``Content-Encoding: gzip``) is
refused with ``415 unsupported_media_type`` before any of it is read.

The API does not decode bodies (a compressed body would bypass the size limit until
inflated), and reading one as if it were not encoded turns a client's gzip into a misleading
``422 body: not readable as UTF-8 JSON``, or worse, reads ``br``-labelled plain JSON as a
valid job. RFC 9110 §15.5.16: the 415 names what is accepted in ``Accept-Encoding``.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from orchestrator.api.middleware import send_error

IDENTITY = b"identity"


def _codings(scope: Scope) -> list[bytes]:
    """Every content coding the request names, in order, ``identity`` left out."""
    found: list[bytes] = []
    for name, value in scope.get("headers", ()):
        if name == b"content-encoding":
            found += [c.strip().lower() for c in value.split(b",")]
    return [c for c in found if c and c != IDENTITY]


def _declares_body(scope: Scope) -> bool:
    return any(name == b"transfer-encoding"
               or (name == b"content-length" and value.strip() not in (b"", b"0"))
               for name, value in scope.get("headers", ()))


class IdentityBodies:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _declares_body(scope):
            codings = _codings(scope)
            if codings:
                named = codings[0].decode("latin-1")[:40]
                await send_error(send, 415, "unsupported_media_type",
                                 f"the body must not be compressed or otherwise encoded "
                                 f"(Content-Encoding: {named}); send it as is",
                                 {"field": "header.Content-Encoding"},
                                 headers=[(b"accept-encoding", IDENTITY)])
                return
        await self.app(scope, receive, send)
