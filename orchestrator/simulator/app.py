"""The simulator's FastAPI app: every catalogue backend under ``/<name>``, speaking its protocol.

    openai       POST /<name>/v1/chat/completions, POST /<name>/v1/images/generations
    predictions  POST /<name>/v1/predictions, GET /<name>/v1/predictions/{id},
                 POST /<name>/v1/predictions/{id}/cancel,
                 GET /<name>/v1/predictions[?idempotency_key=<key>] (lookup, newest first)
    control      POST|GET /_control/{backend}, GET /_control, POST /_control/_reset
    health       GET /healthz

Successful answers carry ``cost_usd`` = ``actual_micros(backend, usage) / 1e6`` (predictions
also ``metrics`` with the usage; see predictions.py for canceled ones).

A submission (a chat completion, an image generation, a prediction create) is decided on
arrival: auth and mode down are answered at once; then its ``Idempotency-Key``, if it was
already seen on that backend, makes it a replay or a new request according to the backend's
``idempotency`` knob (see state.Control). A new request is then processed: its processing time
(``latency_ms``, plus ``slow_ms`` in mode slow) while it counts as in flight under its key, then
the injected errors (``status_code``, ``fail_rate``, ``error``) and validation, answered as
errors that create nothing, then the work: an OpenAI call's result, or a prediction that then
runs ``duration_ms``. Processing runs to its end even when the client has gone away. Only a
submission that created a job claims its key (the first one to complete, if several did); a
repeat of one that ended in an error is processed anew (repeats waiting on it in mode inflight
get the same error). ``drop_answers`` then loses the answers of the next successful
submissions after their work was done: the connection closes before the answer's body (see
drop.py); ``garble_answers`` answers them with a 200 that is not JSON instead.

``GET /_control/{backend}`` answers its knobs (state.Control) and ``counters`` (submissions,
polls, cancels, lookups, created, replays, injected, dropped; see state.Counters),
``predictions`` (created so far), ``in_flight`` (predictions running),
``submissions_in_flight`` (submissions being processed), ``billed_micros`` and ``bills``
(``[{reference, id, cost_micros}]``, see state.py).
A bad knob (out of range, unknown, or of the wrong JSON type: values are not coerced) is
answered 422 ``invalid_control`` and nothing of the update is applied. ``POST
/_control/_reset`` puts every backend back to its defaults and forgets its jobs, keys and
bills.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from orchestrator.domain.catalogue import Catalogue
from orchestrator.simulator import openai, predictions
from orchestrator.simulator.core import Answer, Simulator, error, json_body
from orchestrator.simulator.drop import DropAnswers, quiet_uvicorn
from orchestrator.simulator.state import ControlUpdate
from orchestrator.simulator.work import Rejected


def create_app(catalogue: Catalogue, *, clock: Callable[[], float] = time.monotonic) -> FastAPI:
    sim = Simulator(catalogue, clock)
    app = FastAPI(title="orchestrator simulator", docs_url=None, redoc_url=None)
    app.state.simulator = sim

    @app.exception_handler(Answer)
    async def _answer(request: Request, exc: Answer) -> Response:
        return exc.response

    @app.exception_handler(Rejected)
    async def _rejected(request: Request, exc: Rejected) -> Response:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "backends": list(catalogue.names)}

    @app.post("/_control/_reset")
    async def reset() -> dict[str, Any]:
        sim.reset()
        return {"reset": True, "backends": list(catalogue.names)}

    @app.get("/_control")
    async def control_all() -> dict[str, Any]:
        now = sim.clock()
        return {name: st.snapshot(now) for name, st in sim.states.items()}

    @app.get("/_control/{backend}")
    async def control_get(backend: str) -> dict[str, Any]:
        return sim.state(backend).snapshot(sim.clock())

    @app.post("/_control/{backend}")
    async def control_set(backend: str, request: Request) -> Any:
        st = sim.state(backend)
        body = await json_body(request)
        try:  # validated here, not by FastAPI: every bad knob is answered invalid_control
            st.update(ControlUpdate.model_validate(body))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise error(422, "invalid_control", f"{where}: {first['msg']}") from None
        return st.snapshot(sim.clock())

    predictions.add_routes(app, sim)
    openai.add_routes(app, sim)
    app.add_middleware(DropAnswers)
    quiet_uvicorn()
    return app
