"""The OpenAI-compatible protocol of the simulator (synchronous: one call returns the result):

    POST /<name>/v1/chat/completions    {"messages": [...], "max_tokens"}
    POST /<name>/v1/images/generations  {"prompt", "n", "size"}

A call's processing time is the backend's latency; the job is created, and billed the
``cost_usd`` its answer reports, when the call completes (even if the client has gone away).
With the control ``report_usage`` false the answer carries no ``usage`` and no ``cost_usd``
(billed all the same); with ``image_format`` ``b64_json`` each image comes back as
``{"b64_json": <a tiny PNG, base64>}`` instead of a ``url``, as gpt-image models answer.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from orchestrator.domain.catalogue import BackendSpec
from orchestrator.domain.jobs import Kind
from orchestrator.domain.pricing import Usage, actual_micros
from orchestrator.simulator.core import (
    Outcome,
    Simulator,
    error,
    prefix_url,
    raise_injected_rejection,
)
from orchestrator.simulator.state import BackendState, Bill
from orchestrator.simulator.work import (
    CONTENT_POLICY_MARKER,
    Rejected,
    content_policy,
    digest_id,
    parse_job,
    scaled_usage,
    usage_for,
    usd,
)

# every b64_json image the simulator returns: a 1x1 white PNG, base64
TINY_PNG_B64 = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4//8/AAX+Av4N70a4"
                "AAAAAElFTkSuQmCC")


def add_routes(app: FastAPI, sim: Simulator) -> None:
    def injected(st: BackendState) -> None:
        kind = st.control.error
        if kind is not None:
            st.take_injection()
            raise_injected_rejection(kind)
            raise error(500, "server_error", "injected: the model crashed")
        if st.fails_job():
            raise error(500, "server_error", "the model crashed")

    def made(st: BackendState, key: str | None, micros: int, answer: dict[str, Any]) -> Outcome:
        if st.control.report_usage:
            answer["cost_usd"] = usd(micros)
        else:  # billed all the same, without saying what
            answer.pop("usage", None)
        st.bills.append(Bill(sim.clock(), key, str(answer["id"]), micros))
        return Outcome(JSONResponse(answer), job=answer)

    def chat(spec: BackendSpec, st: BackendState, body: dict[str, Any],
             key: str | None) -> Outcome:
        injected(st)
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
        usage = scaled_usage(usage_for(spec, job), st.control.usage_factor)
        max_tokens = int(job.input["max_tokens"])
        tin, tout = int(usage.input_tokens or 0), int(usage.output_tokens or 0)
        text = f"[{st.name}] simulated reply {digest_id('', st.name, prompt)[:16]} ({tout} tokens)"
        return made(st, key, actual_micros(spec, usage), {
            "id": "chatcmpl-" + uuid.uuid4().hex, "object": "chat.completion",
            "created": int(time.time()), "model": str(body.get("model") or st.name),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "length" if tout >= max_tokens else "stop"}],
            "usage": {"prompt_tokens": tin, "completion_tokens": tout,
                      "total_tokens": tin + tout},
        })

    def images(spec: BackendSpec, st: BackendState, base: str, body: dict[str, Any],
               key: str | None) -> Outcome:
        injected(st)
        prompt = body.get("prompt")
        if isinstance(prompt, str) and CONTENT_POLICY_MARKER in prompt:
            raise content_policy()
        raw = {k: body[k] for k in ("prompt", "n", "size") if k in body}
        job = parse_job(spec, Kind.IMAGE, raw)
        usage = scaled_usage(usage_for(spec, job), st.control.usage_factor)
        iid = "img-" + uuid.uuid4().hex
        b64 = st.control.image_format == "b64_json"
        if st.control.empty_output:  # no image returned, none billed
            usage = Usage(images=0, image_size=usage.image_size)
        return made(st, key, actual_micros(spec, usage), {
            "id": iid, "created": int(time.time()),
            "data": [{"b64_json": TINY_PNG_B64} if b64 else {"url": f"{base}/files/{iid}-{i}.png"}
                     for i in range(usage.images or 0)],
        })

    def replay(answer: Any) -> Response:
        return JSONResponse(answer)

    @app.post("/{backend}/v1/chat/completions")
    async def chat_completions(backend: str, request: Request) -> Response:
        spec, st = sim.backend(backend, "openai")
        return await sim.submit(spec, st, request,
                                lambda body, key: chat(spec, st, body, key), replay)

    @app.post("/{backend}/v1/images/generations")
    async def images_generations(backend: str, request: Request) -> Response:
        spec, st = sim.backend(backend, "openai")
        base = prefix_url(request, backend)
        return await sim.submit(spec, st, request,
                                lambda body, key: images(spec, st, base, body, key), replay)
