"""The simulator's shared machinery: per-backend state lookup, the request guard (auth, modes,
latency, injected errors, counters), how a submission is processed (its Idempotency-Key
decided on arrival, then its processing time and work in a task of its own) and JSON answers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from orchestrator.domain.catalogue import BackendSpec, Catalogue
from orchestrator.simulator.drop import drop_answer
from orchestrator.simulator.state import BackendState, Control
from orchestrator.simulator.work import Rejected, content_policy

RequestKind = Literal["submit", "poll", "cancel", "lookup"]


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


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a submission's processing ended: its answer and, when it created a provider job,
    what a replay of its Idempotency-Key answers from (None: an error, nothing created)."""

    response: Response
    job: Any = None


Work = Callable[[dict[str, Any], str | None], Outcome]  # (request body, Idempotency-Key)
Replay = Callable[[Any], Response]  # an Outcome's job -> the answer to a repeat


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
        self.arrive(spec, st, request, kind)
        await self.hold(st)
        self.inject(st)

    def arrive(self, spec: BackendSpec, st: BackendState, request: Request,
               kind: RequestKind) -> None:
        """Count the request; refuse it at once without the right key or while down."""
        c = st.counters
        if kind == "submit":
            c.submissions += 1
        elif kind == "poll":
            c.polls += 1
        elif kind == "cancel":
            c.cancels += 1
        else:
            c.lookups += 1
        key = spec.api_key()
        if key and request.headers.get("authorization") != f"Bearer {key}":
            raise error(401, "invalid_api_key", "missing or wrong API key")
        ctl = st.control
        if ctl.mode == "down":
            c.injected += 1
            raise error(503, "service_unavailable", "the backend is down")

    async def hold(self, st: BackendState) -> None:
        """The processing time of a request: ``latency_ms`` (+ ``slow_ms`` in mode slow)."""
        ctl = st.control
        delay_ms = ctl.latency_ms + (ctl.slow_ms if ctl.mode == "slow" else 0)
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)

    def inject(self, st: BackendState) -> None:
        """The injected status_code and fail_rate errors (knobs as they are now)."""
        c, ctl = st.counters, st.control
        if ctl.status_code is not None:
            status = ctl.status_code
            headers = None
            if ctl.retry_after_s is not None:
                headers = {"Retry-After": f"{ctl.retry_after_s:g}"}
            st.take_injection()  # counted in injected there
            raise error(status, _INJECTED_CODES.get(status, "injected_error"),
                        f"injected HTTP {status}", headers)
        if ctl.fail_rate and st.rng.random() < ctl.fail_rate:
            c.injected += 1
            raise error(500, "server_error", "the backend had an internal error")

    async def submit(self, spec: BackendSpec, st: BackendState, request: Request, work: Work,
                     replay: Replay) -> Response:
        """Answer a submission. On arrival: count it, refuse it without auth or while down, read
        its body, and decide by its Idempotency-Key and the backend's ``idempotency`` knob
        whether it is a replay (answered from the first job made with that key, counted in
        ``replays``) or new. A new one is processed in a task of its own (processing time, then
        injected errors, then ``work``), so that it completes, creates and bills even if its
        client goes away. A successful answer (new or replayed) may then be dropped
        (``drop_answers``) or garbled (``garble_answers``)."""
        self.arrive(spec, st, request, "submit")
        body = await json_body(request)
        key = request.headers.get("idempotency-key") or None
        response, ok = await self._answer(st, body, key, work, replay)
        if ok and st.take_drop():
            drop_answer(request, st.name)
        elif ok and st.take_garble():
            return malformed().response
        return response

    async def _answer(self, st: BackendState, body: dict[str, Any], key: str | None,
                      work: Work, replay: Replay) -> tuple[Response, bool]:
        mode = st.control.idempotency
        if key is not None and mode != "none":
            if key in st.replies:
                st.counters.replays += 1
                return replay(st.replies[key]), True
            first = st.processing.get(key)
            if first is not None and mode == "inflight":
                outcome: Outcome = await asyncio.shield(first)
                if outcome.job is not None:
                    st.counters.replays += 1
                return outcome.response, outcome.job is not None
        task = asyncio.create_task(self._process(st, body, key, work))
        st.tasks.add(task)
        task.add_done_callback(st.tasks.discard)
        if key is not None and key not in st.processing:
            st.processing[key] = task
            task.add_done_callback(lambda t: _forget(st, key, t))
        # shielded: a client that goes away cancels its handler, never the provider's work
        outcome = await asyncio.shield(task)
        return outcome.response, outcome.job is not None

    async def _process(self, st: BackendState, body: dict[str, Any], key: str | None,
                       work: Work) -> Outcome:
        try:
            await self.hold(st)
            self.inject(st)
            outcome = work(body, key)
        except Answer as exc:
            return Outcome(exc.response)
        except Rejected as exc:
            return Outcome(JSONResponse(exc.body(), status_code=exc.status))
        if outcome.job is not None:
            st.counters.created += 1
            if key is not None:
                st.replies.setdefault(key, outcome.job)
        return outcome


def _forget(st: BackendState, key: str, task: asyncio.Task[Any]) -> None:
    if st.processing.get(key) is task:
        del st.processing[key]


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


def raise_injected_rejection(injected: str) -> None:
    """The injected errors both protocols answer at submission."""
    if injected == "job_fault":
        raise Rejected(422, "invalid_input", "injected: invalid input", "prompt")
    if injected == "content_policy":
        raise content_policy()
    if injected == "malformed":
        raise malformed()
