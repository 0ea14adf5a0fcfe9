"""What a simulated backend does with a request: validate it as the provider would, and derive
the usage (hence the cost) deterministically from the request alone.

    video  video_seconds = duration_s requested, resolution as requested (default 720p)
    image  images = n, image_size = size
    text   input_tokens = ceil(UTF-8 bytes of the prompt / 4) (never above the orchestrator's
           worst case of a token per byte); output_tokens = a hash of (backend, prompt, max_tokens)
           mapped into [max(1, max_tokens // 4), max_tokens]

Prompt markers, for end-to-end tests: a prompt containing ``[[content-policy]]`` is refused
by content policy (openai: HTTP 400 at once; predictions: the prediction ends ``failed`` with a
content-policy error); ``[[fail]]`` makes a prediction end ``failed`` with a generic error.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import fields, replace
from fractions import Fraction
from typing import Any

from pydantic import ValidationError

from orchestrator.domain.catalogue import BackendSpec
from orchestrator.domain.jobs import JobSpec, Kind
from orchestrator.domain.money import MICROS_PER_USD
from orchestrator.domain.pricing import NotPriceable, Usage, actual_micros, estimate_micros

CONTENT_POLICY_MARKER = "[[content-policy]]"
FAIL_MARKER = "[[fail]]"
_PARAM_RE = re.compile(r"^input\.([A-Za-z0-9_]+)")


class Rejected(Exception):
    """The provider refuses the request (answered 400/422 with an OpenAI-style error body)."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error"
        return {"error": {"code": self.code, "type": kind, "param": self.param,
                          "message": self.message}}


def content_policy() -> Rejected:
    return Rejected(400, "content_policy_violation",
                    "the request was rejected by the content policy")


def parse_job(backend: BackendSpec, kind: Kind, raw: Any) -> JobSpec:
    """The request as a validated job this backend can run; Rejected(422) otherwise."""
    if not isinstance(raw, dict):
        raise Rejected(422, "invalid_input", "input must be an object", "input")
    if kind not in backend.kinds:
        raise Rejected(422, "invalid_input", f"this model does not make {kind.value}")
    try:
        spec = JobSpec(kind=kind, input=raw)
    except ValidationError as exc:
        msg = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
        m = _PARAM_RE.match(msg)
        raise Rejected(422, "invalid_input", msg, m.group(1) if m else None) from None
    try:
        estimate_micros(backend, spec)
    except NotPriceable as exc:
        raise Rejected(422, "invalid_input", str(exc)) from None
    return spec


def infer_kind(backend: BackendSpec, raw: Any) -> Kind:
    """The kind of a predictions request: the backend's only kind, or guessed from the input."""
    if len(backend.kinds) == 1:
        return backend.kinds[0]
    if isinstance(raw, dict) and "duration_s" in raw:
        return Kind.VIDEO
    if isinstance(raw, dict) and ("size" in raw or "n" in raw):
        return Kind.IMAGE
    return Kind.TEXT


def text_tokens(backend: str, prompt: str, max_tokens: int) -> tuple[int, int]:
    input_tokens = max(1, -(-len(prompt.encode("utf-8")) // 4))
    digest = hashlib.sha256(f"{backend}\x00{max_tokens}\x00{prompt}".encode()).digest()
    low = max(1, max_tokens // 4)
    output_tokens = low + int.from_bytes(digest[:8], "big") % (max_tokens - low + 1)
    return input_tokens, output_tokens


def usage_for(backend: BackendSpec, spec: JobSpec) -> Usage:
    inp = spec.input
    if spec.kind is Kind.VIDEO:
        return Usage(video_seconds=float(inp["duration_s"]), resolution=str(inp["resolution"]))
    if spec.kind is Kind.IMAGE:
        return Usage(images=int(inp["n"]), image_size=str(inp["size"]))
    tin, tout = text_tokens(backend.name, str(inp["prompt"]), int(inp["max_tokens"]))
    return Usage(input_tokens=tin, output_tokens=tout)


def cost_usd(backend: BackendSpec, usage: Usage) -> float:
    """The reported cost: exactly ``actual_micros`` micro-dollars (exact through JSON)."""
    return usd(actual_micros(backend, usage))


def usd(micros: int) -> float:
    """Micro-USD as the reported ``cost_usd`` (``round(usd * 1e6) == micros``)."""
    return micros / MICROS_PER_USD


def scaled_usage(usage: Usage, factor: float) -> Usage:
    """``factor`` times the usage asked for, as a provider reports and bills it (whole
    images and tokens rounded up)."""
    if factor == 1.0:
        return usage
    share = Fraction(repr(factor))
    out = usage
    if usage.video_seconds is not None:
        out = replace(out, video_seconds=float(Fraction(repr(usage.video_seconds)) * share))
    if usage.images is not None:
        out = replace(out, images=math.ceil(usage.images * share))
    if usage.input_tokens is not None:
        out = replace(out, input_tokens=math.ceil(usage.input_tokens * share))
    if usage.output_tokens is not None:
        out = replace(out, output_tokens=math.ceil(usage.output_tokens * share))
    return out


def partial_usage(usage: Usage, fraction: float) -> Usage:
    """``fraction`` of a run's usage, as a cancel bills it: video seconds x fraction, whole
    images and output tokens rounded down (the input tokens were all read)."""
    # decimal as written (0.7 is 7/10, not the float just below it: 10 images x 0.7 are 7)
    share = Fraction(repr(fraction))
    out = usage
    if usage.video_seconds is not None:
        seconds = Fraction(repr(usage.video_seconds)) * share
        out = replace(out, video_seconds=float(seconds))
    if usage.images is not None:
        out = replace(out, images=math.floor(usage.images * share))
    if usage.output_tokens is not None:
        out = replace(out, output_tokens=math.floor(usage.output_tokens * share))
    return out


def metrics_of(usage: Usage) -> dict[str, Any]:
    values = {_METRIC.get(f.name, f.name): getattr(usage, f.name) for f in fields(usage)}
    return {k: v for k, v in values.items() if v is not None}


_METRIC = {"compute_seconds": "predict_time"}  # the run time, as Replicate names it


def digest_id(prefix: str, *parts: str) -> str:
    return prefix + hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:24]
