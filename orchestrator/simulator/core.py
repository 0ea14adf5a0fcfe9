"""The simulator's shared machinery: per-backend state lookup, the request guard (auth, modes,
latency, injected errors, counters) and JSON answers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from orchestrator.domain.catalogue import BackendSpec, Catalogue
from orchestrator.simulator.state import BackendState, Control

RequestKind = Literal["submit", "poll", "cancel"]


class Answer(Exception):
    """Raised by a handler to answer at once with ``response`` (errors, mostly)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None,
          **extra: Any) -> Answer:
    body = {"error": {"code": code, "type": _TYPES.get(status, "api_error"), "message": message,
                      **extra}}
    return Answer(JSONResponse(body, status_code=status, headers=headers))


_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          422: "invalid_request_error", 429: "rate_limit_error", 503: "service_unavailable"}
_INJECTED_CODES = {429: "rate_limit_exceeded", 500: "server_error", 502: "bad_gateway",
                   503: "service_unavailable", 504: "gateway_timeout"}


class Simulator:
    """Every backend of a catalogue, each with its own state. ``clock`` is monotonic seconds."""

    def __init__(self, catalogue: Catalogue, clock: Callable[[], float] = time.monotonic) -> None:
        self.catalogue = catalogue
        self.clock = clock
        self.states: dict[str, BackendState] = {}
        self.reset()

    def reset(self) -> None:
        """Every backend back to its defaults: a prediction runs for the catalogue's
        ``expected_latency_ms`` where it gives one (the backend behaves as its entry says)."""
        self.states = {
            b.name: BackendState(b.name, Control(duration_ms=round(b.expected_latency_ms))
                                 if b.expected_latency_ms is not None else Control())
            for b in self.catalogue
        }

    def state(self, name: str) -> BackendState:
        st = self.states.get(name)
        if st is None:
            raise error(404, "not_found", f"no simulated backend {name!r}")
        return st

    def backend(self, name: str, protocol: str) -> tuple[BackendSpec, BackendState]:
        st = self.state(name)
        spec = self.catalogue.get(name)
        if str(spec.protocol) != protocol:
            raise error(404, "not_found", f"{name} does not speak the {protocol} protocol")
        return spec, st

    async def guard(self, spec: BackendSpec, st: BackendState, request: Request,
                    kind: RequestKind) -> None:
        """Count the request, then apply auth, mode, latency and injected failures."""
        c = st.counters
        if kind == "submit":
            c.submissions += 1
        elif kind == "poll":
            c.polls += 1
        else:
            c.cancels += 1
        key = spec.api_key()
        if key and request.headers.get("authorization") != f"Bearer {key}":
            raise error(401, "invalid_api_key", "missing or wrong API key")
        ctl = st.control
        if ctl.mode == "down":
            c.injected += 1
            raise error(503, "service_unavailable", "the backend is down")
        delay_ms = ctl.latency_ms + (ctl.slow_ms if ctl.mode == "slow" else 0)
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
            ctl = st.control
        if ctl.status_code is not None:
            status = ctl.status_code
            headers = None
            if ctl.retry_after_s is not None:
                headers = {"Retry-After": f"{ctl.retry_after_s:g}"}
            st.take_injection()
            c.injected += 1
            raise error(status, _INJECTED_CODES.get(status, "injected_error"),
                        f"injected HTTP {status}", headers)
        if ctl.fail_rate and st.rng.random() < ctl.fail_rate:
            c.injected += 1
            raise error(500, "server_error", "the backend had an internal error")


async def json_body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise error(400, "invalid_json", "the request body is not JSON") from None
    if not isinstance(body, dict):
        raise error(400, "invalid_json", "the request body must be a JSON object")
    return body


def prefix_url(request: Request, name: str) -> str:
    return f"{str(request.base_url).rstrip('/')}/{name}"


def malformed() -> Answer:
    return Answer(Response(b"<html>upstream hiccup</html>", status_code=200,
                           media_type="application/json"))
