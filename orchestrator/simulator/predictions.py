"""The create-then-poll predictions protocol (Replicate-like) of the simulator:

    POST /<name>/v1/predictions               {"input": {...}}  -> 201, the prediction
    GET  /<name>/v1/predictions/{id}          -> the prediction
    POST /<name>/v1/predictions/{id}/cancel   -> the prediction
    GET  /<name>/v1/predictions?idempotency_key=<key>
                                              -> {"results": [the predictions created with that
                                                 Idempotency-Key, newest first]}

Every prediction names the Idempotency-Key it was created with (``idempotency_key``), so a
client can tell its own work from another's in a listing.
    GET  /<name>/v1/predictions               -> {"results": [the latest 100, newest first]}

The lookup by client reference answers whatever the ``idempotency`` mode (a client finds the
work whose create answer it lost); it is counted in ``lookups`` and otherwise treated as a poll
(latency, injected errors).

A create is quick (its processing time is the backend's latency); the prediction then runs
``duration_ms``, progressing by wall time since creation (no background work). Its answer
reports ``cost_usd`` and ``metrics`` (the usage) once it ended: succeeded, the full run;
failed, ``cost_usd`` 0 without metrics; canceled while running with ``cancel_bill_fraction``
f > 0, the partial usage (video_seconds x f; images, output tokens rounded down) and its price,
so that pricing the reported metrics with ``actual_micros`` gives exactly ``cost_usd``; with
f = 0, ``cost_usd`` 0 without metrics. With ``report_usage`` false (read when the answer is
made), a succeeded prediction reports ``metrics: {"predict_time": <seconds>}`` only and no
``cost_usd``, as Replicate's do; it is billed its full run all the same.

Every prediction names its ``started_at`` (its creation: it starts at once) and, once it
ended, its ``completed_at``, as Replicate's do. With ``report_run_time`` false, no answer
carries ``metrics.predict_time`` (a provider that tells the run's time by its timestamps
only); it is billed the same.

A ``per_compute_second`` backend bills the run's time, as Replicate's hardware prices do: its
``metrics.predict_time`` is ``duration_ms`` (``usage_factor`` does not change it), a failed
prediction is billed and reports it as a succeeded one does, and a cancelled one is billed
(and reports) the time it ran, whatever ``cancel_bill_fraction`` says.

With ``ignore_cancel``, a cancel is answered with the prediction as it stands and stops
nothing: it runs to its end and is billed as any other.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from orchestrator.domain.catalogue import BackendSpec, PerComputeSecondPrice
from orchestrator.domain.jobs import Kind
from orchestrator.domain.pricing import Usage, actual_micros
from orchestrator.simulator.core import (
    Outcome,
    Simulator,
    error,
    prefix_url,
    raise_injected_rejection,
)
from orchestrator.simulator.state import BackendState, Prediction
from orchestrator.simulator.work import (
    CONTENT_POLICY_MARKER,
    FAIL_MARKER,
    infer_kind,
    metrics_of,
    parse_job,
    partial_usage,
    scaled_usage,
    usage_for,
    usd,
)

LIST_LIMIT = 100  # predictions listed without a filter


def add_routes(app: FastAPI, sim: Simulator) -> None:
    def view(st: BackendState, p: Prediction, base: str) -> dict[str, Any]:
        status = p.status(sim.clock())
        out: dict[str, Any] = {
            "id": p.id, "model": st.name, "status": status, "created_at": p.created_at,
            "started_at": p.created_at, "completed_at": None,
            "idempotency_key": p.reference, "output": None, "error": None, "metrics": None,
            "urls": {"get": f"{base}/v1/predictions/{p.id}",
                     "cancel": f"{base}/v1/predictions/{p.id}/cancel"},
        }
        if status == "succeeded":
            output = None if st.control.empty_output else p.output
            if st.control.report_usage:
                out.update(output=output, cost_usd=usd(p.cost_micros),
                           metrics={**metrics_of(p.usage), "predict_time": p.duration_s})
            else:  # as Replicate answers: the run's time, no usage, no cost (billed the same)
                out.update(output=output, metrics={"predict_time": p.duration_s})
        elif status == "failed" and p.billed_by_time:  # the run's time, as on success
            out.update(error=p.failure, metrics=metrics_of(p.usage))
            if st.control.report_usage:
                out["cost_usd"] = usd(p.cost_micros)
        elif status == "failed":
            out.update(error=p.failure, cost_usd=0.0)
        elif status == "canceled":
            out.update(error=p.failure, cost_usd=usd(p.canceled_micros))
            if p.canceled_usage is not None:
                out["metrics"] = {**metrics_of(p.canceled_usage),
                                  "predict_time": p.ended() - p.created}
        if status in ("succeeded", "failed", "canceled"):
            ended = datetime.fromisoformat(p.created_at) + timedelta(seconds=p.ended() - p.created)
            out["completed_at"] = ended.isoformat()
        if not st.control.report_run_time and out["metrics"]:
            rest = {k: v for k, v in out["metrics"].items() if k != "predict_time"}
            out["metrics"] = rest or None
        return out

    def create(spec: BackendSpec, st: BackendState, base: str, body: dict[str, Any],
               key: str | None) -> Outcome:
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
        elif FAIL_MARKER in prompt or injected == "prediction_failed" or st.fails_job():
            failure = {"code": "internal_error", "message": "the model crashed"}
        by_time = isinstance(spec.price, PerComputeSecondPrice)
        usage = (Usage(compute_seconds=st.control.duration_ms / 1000) if by_time
                 else scaled_usage(usage_for(spec, job), st.control.usage_factor))
        pid = uuid.uuid4().hex
        ext = "mp4" if job.kind is Kind.VIDEO else "png" if job.kind is Kind.IMAGE else "txt"
        pred = Prediction(
            id=pid, created=sim.clock(), created_at=datetime.now(UTC).isoformat(),
            duration_s=st.control.duration_ms / 1000, usage=usage,
            cost_micros=actual_micros(spec, usage), output=f"{base}/files/{pid}.{ext}",
            reference=key, failure=failure, billed_by_time=by_time,
        )
        st.predictions[pid] = pred
        if key is not None:
            st.references.setdefault(key, []).append(pid)
        return Outcome(JSONResponse(view(st, pred, base), status_code=201), job=pid)

    @app.post("/{backend}/v1/predictions")
    async def create_prediction(backend: str, request: Request) -> Response:
        spec, st = sim.backend(backend, "predictions")
        base = prefix_url(request, backend)
        return await sim.submit(
            spec, st, request,
            lambda body, key: create(spec, st, base, body, key),
            lambda pid: JSONResponse(view(st, st.predictions[pid], base), status_code=201),
        )

    @app.get("/{backend}/v1/predictions")
    async def list_predictions(backend: str, request: Request,
                               idempotency_key: str | None = None) -> dict[str, Any]:
        spec, st = sim.backend(backend, "predictions")
        await sim.guard(spec, st, request, "lookup")
        base = prefix_url(request, backend)
        if idempotency_key is None:
            newest: Iterable[str] = islice(reversed(st.predictions), LIST_LIMIT)
        else:
            newest = reversed(st.references.get(idempotency_key, []))
        return {"results": [view(st, st.predictions[pid], base) for pid in newest]}

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
        now = sim.clock()
        if pred.status(now) in ("starting", "processing") and not st.control.ignore_cancel:
            pred.canceled_at = now
            fraction = st.control.cancel_bill_fraction
            if pred.billed_by_time:  # the time it ran
                pred.canceled_usage = Usage(compute_seconds=now - pred.created)
                pred.canceled_micros = actual_micros(spec, pred.canceled_usage)
            elif fraction > 0:
                pred.canceled_usage = partial_usage(pred.usage, fraction)
                pred.canceled_micros = actual_micros(spec, pred.canceled_usage)
        return view(st, pred, prefix_url(request, backend))
