"""Dropped answers (the ``drop_answers`` knob): a submission fully processed, its job created
and billed, whose answer never arrives whole, as when a connection breaks after the provider
did the work.

``DropAnswers`` is a raw ASGI middleware: a handler marks its request with ``drop_answer``;
the middleware then passes the answer's head on (status and a Content-Length for the body that
will not come) and withholds the body. uvicorn, seeing the app return with the answer
incomplete, closes the connection: the client sees it end before the answer (httpx:
RemoteProtocolError). uvicorn logs that as an error ("ASGI callable returned without
completing response"); for a drop made on purpose that line is filtered out and one warning
naming the backend is logged instead (never the request).
"""

from __future__ import annotations

import logging
from contextvars import ContextVar

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

_SCOPE_KEY = "orchestrator.simulator.drop"
# set in the task uvicorn runs the request in (an ASGI app runs in its caller's context), so
# its log call after the app returned sees it; other requests run in other tasks
_DROPPED: ContextVar[bool] = ContextVar("simulator_answer_dropped", default=False)
_UVICORN_INCOMPLETE = "ASGI callable returned without completing response"


class _Fate:
    __slots__ = ("backend",)

    def __init__(self) -> None:
        self.backend: str | None = None  # set: drop this request's answer


def drop_answer(request: Request, backend: str) -> None:
    """Have the answer to ``request`` dropped (the app must be wrapped in DropAnswers)."""
    fate = request.scope.get(_SCOPE_KEY)
    if not isinstance(fate, _Fate):
        raise RuntimeError("the simulator app is not wrapped in DropAnswers")
    fate.backend = backend


class DropAnswers:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        fate = _Fate()
        scope[_SCOPE_KEY] = fate

        async def send_head_only(message: Message) -> None:
            if fate.backend is None or message["type"] == "http.response.start":
                await send(message)

        await self.app(scope, receive, send_head_only)
        if fate.backend is not None:
            _DROPPED.set(True)
            log.warning("simulator dropped an answer on purpose backend=%s (drop_answers)",
                        fate.backend)


class _DroppedFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (_DROPPED.get() and str(record.msg).startswith(_UVICORN_INCOMPLETE))


_FILTER = _DroppedFilter()


def quiet_uvicorn() -> None:
    """Filter uvicorn's error line for the drops made on purpose (idempotent)."""
    logging.getLogger("uvicorn.error").addFilter(_FILTER)
