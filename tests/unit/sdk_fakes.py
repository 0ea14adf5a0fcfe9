"""Helpers for the SDK unit tests: a scripted httpx transport that records every request,
a fake clock whose sleep advances time (so nothing really sleeps), and a real HTTP handler
that answers with fixed JSON."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx

BASE = "http://api.test"

Responder = Callable[[httpx.Request], httpx.Response]


def job_json(job_id: str = "j-1", status: str = "queued", **extra: Any) -> dict[str, Any]:
    return {"id": job_id, "status": status, "kind": "video", "tier": "standard",
            "backend": None, "estimated_cost_usd": 0.4, "cost_usd": None, "result": None,
            "error": None, "attempts": [], "route": None, "created_at": "2024-05-01T00:00:00Z",
            "started_at": None, "finished_at": None, **extra}


def envelope(status: int, code: str, message: str, headers: dict[str, str] | None = None,
             **details: Any) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message,
                                                  "details": details}}, headers=headers)


@dataclass
class Script:
    """Answers requests in order from ``steps`` (each a response or a callable taking the
    request, which may raise an httpx transport error); repeats the last step when exhausted."""

    steps: list[httpx.Response | Responder]
    requests: list[httpx.Request] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.steps[min(len(self.requests), len(self.steps)) - 1]
        return step(request) if callable(step) else step

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)

    def body(self, i: int) -> Any:
        return json.loads(self.requests[i].content)


@dataclass
class FakeClock:
    now: float = 1000.0
    sleeps: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)


def hangs(clock: FakeClock) -> Responder:
    """An API that never answers: each request takes the read timeout it was given (on the
    fake clock), then raises ReadTimeout, as httpx does against a hung server."""

    def respond(request: httpx.Request) -> httpx.Response:
        clock.now += request.extensions["timeout"]["read"]
        raise httpx.ReadTimeout("timed out", request=request)

    return respond


class JsonAnswers(BaseHTTPRequestHandler):
    """Answers every GET 200 with ``body`` (JSON), whatever the path; logs nothing."""

    body: bytes = b"{}"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *_: object) -> None:
        pass
