"""The simulator's FastAPI app: every catalogue backend under ``/<name>``, speaking its protocol.

    openai       POST /<name>/v1/chat/completions, POST /<name>/v1/images/generations
    predictions  POST /<name>/v1/predictions, GET /<name>/v1/predictions/{id},
                 POST /<name>/v1/predictions/{id}/cancel
    control      POST|GET /_control/{backend}, GET /_control, POST /_control/_reset
    health       GET /healthz

Successful answers carry ``cost_usd`` = ``actual_micros(backend, usage) / 1e6`` (predictions
also ``metrics`` with the usage). An ``Idempotency-Key`` header makes a submission replayable:
the same key on the same backend answers with the first submission's job, created once.
Predictions progress by wall time since creation against ``duration_ms`` (no background work).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from orchestrator.domain.catalogue import Catalogue
from orchestrator.domain.jobs import Kind
from orchestrator.simulator.core import Answer, Simulator, error, json_body, malformed, prefix_url
from orchestrator.simulator.state import BackendState, ControlUpdate, Prediction
from orchestrator.simulator.work import (
    CONTENT_POLICY_MARKER,
    FAIL_MARKER,
    Rejected,
    content_policy,
    cost_usd,
    digest_id,
    infer_kind,
    metrics_of,
    parse_job,
    usage_for,
)


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

    # -- control ----------------------------------------------------------------------------

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
    async def control_set(backend: str, change: ControlUpdate) -> Any:
        st = sim.state(backend)
        try:
            st.update(change)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise error(422, "invalid_control", f"{where}: {first['msg']}") from None
        return st.snapshot(sim.clock())

    # -- predictions ------------------------------------------------------------------------

    def view(st: BackendState, p: Prediction, base: str) -> dict[str, Any]:
        status = p.status(sim.clock())
        out: dict[str, Any] = {
            "id": p.id, "model": st.name, "status": status, "created_at": p.created_at,
            "output": None, "error": None, "metrics": None,
            "urls": {"get": f"{base}/v1/predictions/{p.id}",
                     "cancel": f"{base}/v1/predictions/{p.id}/cancel"},
        }
        if status == "succeeded":
            out.update(output=p.output, cost_usd=p.cost_usd,
                       metrics={**p.metrics, "predict_time": p.duration_s})
        elif status in ("failed", "canceled"):
            out.update(error=p.failure, cost_usd=0.0)
        return out

    def raise_injected_rejection(injected: str) -> None:
        """The injected errors both protocols answer at submission."""
        if injected == "job_fault":
            raise Rejected(422, "invalid_input", "injected: invalid input", "prompt")
        if injected == "content_policy":
            raise content_policy()
        if injected == "malformed":
            raise malformed()

    @app.post("/{backend}/v1/predictions", status_code=201)
    async def create_prediction(backend: str, request: Request) -> dict[str, Any]:
        spec, st = sim.backend(backend, "predictions")
        await sim.guard(spec, st, request, "submit")
        body = await json_body(request)
        base = prefix_url(request, backend)
        key = request.headers.get("idempotency-key")
        if key and key in st.replies:
            st.counters.replays += 1
            return view(st, st.predictions[st.replies[key]], base)
        injected = st.control.error
        if injected is not None:
            st.take_injection()
            raise_injected_rejection(injected)
        job = parse_job(spec, infer_kind(spec, body.get("input")), body.get("input"))
        prompt = str(job.input["prompt"])
        failure = None
        if CONTENT_POLICY_MARKER in prompt:
            failure = {"code": "content_policy_violation",
                       "message": "the output was flagged by the content policy"}
        elif FAIL_MARKER in prompt or injected == "prediction_failed":
            failure = {"code": "internal_error", "message": "the model crashed"}
        usage = usage_for(spec, job)
        pid = uuid.uuid4().hex
        ext = "mp4" if job.kind is Kind.VIDEO else "png" if job.kind is Kind.IMAGE else "txt"
        pred = Prediction(
            id=pid, created=sim.clock(), created_at=datetime.now(UTC).isoformat(),
            duration_s=st.control.duration_ms / 1000, metrics=metrics_of(usage),
            cost_usd=cost_usd(spec, usage), output=f"{base}/files/{pid}.{ext}", failure=failure,
        )
        st.predictions[pid] = pred
        if key:
            st.replies[key] = pid
        st.counters.created += 1
        return view(st, pred, base)

    def find(st: BackendState, pid: str) -> Prediction:
        pred = st.predictions.get(pid)
        if pred is None:
            raise error(404, "not_found", "no such prediction")
        return pred

    @app.get("/{backend}/v1/predictions/{pid}")
    async def get_prediction(backend: str, pid: str, request: Request) -> dict[str, Any]:
        spec, st = sim.backend(backend, "predictions")
        await sim.guard(spec, st, request, "poll")
        return view(st, find(st, pid), prefix_url(request, backend))

    @app.post("/{backend}/v1/predictions/{pid}/cancel")
    async def cancel_prediction(backend: str, pid: str, request: Request) -> dict[str, Any]:
        spec, st = sim.backend(backend, "predictions")
        await sim.guard(spec, st, request, "cancel")
        pred = find(st, pid)
        if pred.status(sim.clock()) in ("starting", "processing"):
            pred.canceled_at = sim.clock()
        return view(st, pred, prefix_url(request, backend))

    # -- openai -----------------------------------------------------------------------------

    async def openai_prelude(backend: str, request: Request) -> tuple[Any, BackendState,
                                                                       dict[str, Any], str | None]:
        spec, st = sim.backend(backend, "openai")
        await sim.guard(spec, st, request, "submit")
        body = await json_body(request)
        key = request.headers.get("idempotency-key")
        if key and key in st.replies:
            st.counters.replays += 1
            raise Answer(JSONResponse(st.replies[key]))
        injected = st.control.error
        if injected is not None:
            st.take_injection()
            raise_injected_rejection(injected)
            raise error(500, "server_error", "injected: the model crashed")
        return spec, st, body, key

    def remember(st: BackendState, key: str | None, answer: dict[str, Any]) -> dict[str, Any]:
        if key:
            st.replies[key] = answer
        st.counters.created += 1
        return answer

    @app.post("/{backend}/v1/chat/completions")
    async def chat(backend: str, request: Request) -> dict[str, Any]:
        spec, st, body, key = await openai_prelude(backend, request)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages
        ):
            raise Rejected(400, "invalid_input", "messages must be a non-empty list", "messages")
        prompt = "\n".join(m["content"] for m in messages)
        if CONTENT_POLICY_MARKER in prompt:
            raise content_policy()
        raw = {"prompt": prompt, "max_tokens": body.get("max_tokens", 512)}
        job = parse_job(spec, Kind.TEXT, raw)
        usage = usage_for(spec, job)
        max_tokens = int(job.input["max_tokens"])
        tin, tout = int(usage.input_tokens or 0), int(usage.output_tokens or 0)
        text = f"[{backend}] simulated reply {digest_id('', backend, prompt)[:16]} ({tout} tokens)"
        return remember(st, key, {
            "id": "chatcmpl-" + uuid.uuid4().hex, "object": "chat.completion",
            "created": int(time.time()), "model": str(body.get("model") or backend),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "length" if tout >= max_tokens else "stop"}],
            "usage": {"prompt_tokens": tin, "completion_tokens": tout,
                      "total_tokens": tin + tout},
            "cost_usd": cost_usd(spec, usage),
        })

    @app.post("/{backend}/v1/images/generations")
    async def images(backend: str, request: Request) -> dict[str, Any]:
        spec, st, body, key = await openai_prelude(backend, request)
        prompt = body.get("prompt")
        if isinstance(prompt, str) and CONTENT_POLICY_MARKER in prompt:
            raise content_policy()
        raw = {k: body[k] for k in ("prompt", "n", "size") if k in body}
        job = parse_job(spec, Kind.IMAGE, raw)
        usage = usage_for(spec, job)
        iid = "img-" + uuid.uuid4().hex
        base = prefix_url(request, backend)
        return remember(st, key, {
            "id": iid, "created": int(time.time()),
            "data": [{"url": f"{base}/files/{iid}-{i}.png"} for i in range(int(job.input["n"]))],
            "cost_usd": cost_usd(spec, usage),
        })

    return app
