"""Request and response models of the HTTP API (they shape /openapi.json)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from orchestrator.domain.budgets import MAX_LIMIT_USD
from orchestrator.domain.jobs import (
    ImageInput,
    JobSpec,
    JsonNumber,
    TextInput,
    VideoInput,
    finite_number,
)
from orchestrator.domain.money import exact_usd
from orchestrator.store.engine import UNSTORABLE_TEXT
from orchestrator.store.keys import TENANT_RE


def _find_unstorable(value: Any, where: str) -> str | None:
    """``path: why`` of the first value PostgreSQL's jsonb and text types cannot store: a
    string (or key) holding a NUL character, or NaN/Infinity (which Python's JSON reader
    accepts, and which would otherwise be stored as null)."""
    if isinstance(value, str):
        return f"{where}: text may not contain NUL (\\u0000) or unpaired surrogate " \
            "characters" if UNSTORABLE_TEXT.search(value) else None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{where}: not a finite number"
    if isinstance(value, dict):
        for k, v in value.items():
            found = _find_unstorable(k, where) or _find_unstorable(
                v, f"{where}.{k}" if where else str(k))
            if found:
                return found
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            found = _find_unstorable(v, f"{where}[{i}]")
            if found:
                return found
    return None


def _reject_unstorable(model: BaseModel) -> None:
    problem = _find_unstorable(model.model_dump(), "")
    if problem is not None:
        raise ValueError(problem)


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


# -- errors ----------------------------------------------------------------------------------
class ErrorBody(BaseModel):
    code: str
    message: str
    details: dict[str, Any]


class ErrorOut(BaseModel):
    error: ErrorBody


# -- jobs ------------------------------------------------------------------------------------
def _input_schema() -> dict[str, Any]:
    shapes = []
    for kind, model in (("video", VideoInput), ("image", ImageInput), ("text", TextInput)):
        shape = model.model_json_schema()
        shape["title"] = f"{kind} input"
        shapes.append(shape)
    return {"type": "object", "anyOf": shapes,
            "description": "per kind: video {prompt, duration_s, resolution}, "
                           "image {prompt, n, size}, text {prompt, max_tokens}; other fields "
                           "as the catalogue's backends declare them (GET /v1/backends "
                           "params): a field none of the kind's backends declares is 422 "
                           "invalid_request naming it (details.field = input.<name>)"}


_EXAMPLE: dict[str, Any] = {
    "kind": "video",
    "input": {"prompt": "a lighthouse at dusk", "duration_s": 8, "resolution": "720p"},
    "tier": "standard", "max_cost_usd": 2.5, "metadata": {"project": "p1"},
}


class JobBody(JobSpec):
    """The job body (CONTRACT): :class:`JobSpec` with its ``input`` documented per kind."""

    model_config = ConfigDict(title="JobSpec", json_schema_extra={"examples": [_EXAMPLE]})

    input: Annotated[dict[str, Any], WithJsonSchema(_input_schema())]

    # here, not on JobSpec: a stored spec is validated again by the job chain, and one
    # accepted before this rule must still read
    @field_validator("max_cost_usd")
    @classmethod
    def _whole_micros(cls, v: float | None) -> float | None:
        return None if v is None else float(exact_usd(v))

    @model_validator(mode="after")
    def _storable(self) -> JobBody:
        _reject_unstorable(self)
        return self


class ErrorInfo(_Out):
    code: str
    message: str | None


class AttemptOut(_Out):
    backend: str
    external_id: str | None
    outcome: str | None = Field(
        description="null while in flight; succeeded, failed, cancelled, timeout, or "
        "uncertain: the provider may have done (and billed) it and nothing could tell")
    error: ErrorInfo | None
    cost_usd: float | None
    possible_cost_usd: float | None = Field(
        default=None, description="an uncertain attempt's possible charge (its worst case); "
        "on an attempt charged its worst case for want of a bill in the provider's answer, "
        "that charge")
    started_at: str | None
    finished_at: str | None


class CandidateOut(_Out):
    backend: str
    estimated_cost_usd: float = Field(description="the worst case (what a hold covers)")
    expected_cost_usd: float | None = Field(
        default=None, description="the calibrated expected cost (the estimate x the "
        "backend's learnt actual / estimate; the estimate while it has none)")
    calibration: dict[str, Any] | None = Field(
        default=None, description="{ratio, samples}: the factor and the settled jobs it "
        "rests on; null: none yet")
    score: float
    reasons: list[str] = Field(default_factory=list)


class ExcludedOut(_Out):
    backend: str
    reason: str


class QuoteOut(_Out):
    candidates: list[CandidateOut]
    excluded: list[ExcludedOut]


JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class JobOut(_Out):
    id: str
    status: JobStatus
    kind: str
    tier: str
    backend: str | None
    estimated_cost_usd: float
    cost_usd: float | None
    result: dict[str, Any] | None
    error: ErrorInfo | None
    attempts: list[AttemptOut]
    route: QuoteOut | None
    cached_from: str | None = Field(
        default=None, description="the job whose result this one got from the result "
        "cache, at $0")
    metadata: dict[str, Any]
    deadline_at: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None


class AttemptCostOut(_Out):
    attempt: int
    backend: str
    outcome: str | None
    cost_usd: float | None


class CostOut(_Out):
    total_usd: float
    total_micros: int
    estimated_usd: float = Field(description="the hold: the worst case over the plan")
    attempts: list[AttemptCostOut]


class ResultOut(_Out):
    job_id: str
    status: JobStatus
    backend: str | None
    output: dict[str, Any] | None = Field(description="the provider's output: URLs, text, "
                                                      "usage")
    cost: CostOut
    finished_at: str | None
    expires_at: str | None = Field(description="when the retention sweeper drops it (null: "
                                               "kept)")


class JobListOut(BaseModel):
    items: list[JobOut]
    next_cursor: str | None


# -- backends --------------------------------------------------------------------------------
class BreakerOut(_Out):
    state: Literal["closed", "open", "half_open"]
    strikes: int
    retry_at: str | None


class BackendOut(_Out):
    name: str
    protocol: str
    kinds: list[str]
    tier: str
    breaker: BreakerOut
    success_rate: float | None
    latency_ms: float | None
    in_flight: int
    waiting: int = Field(description="jobs waiting for one of its concurrency slots")
    price_model: str | None = None
    calibration: dict[str, Any] | None = Field(
        default=None, description="{ratio, samples}: the median actual / estimate of its "
        "recent settled jobs, which cheapest multiplies its estimates by; null: none yet")
    params: dict[str, dict[str, dict[str, Any]]] = Field(
        default_factory=dict,
        description="per kind, the input parameters it accepts: {name: {type, min, max, "
                    "max_length, choices, required, default, priced}}")


class BackendsOut(BaseModel):
    backends: list[BackendOut]


# -- budgets ---------------------------------------------------------------------------------
Period = Literal["day", "month", "total"]


class ChannelOut(BaseModel):
    type: str
    label: str


class BudgetOut(_Out):
    scope: str
    period: Period
    period_start: str
    period_end: str | None
    limit_usd: float
    committed_usd: float
    held_usd: float
    remaining_usd: float
    forecast_usd: float | None
    alert_thresholds: list[float]
    forecast_thresholds: list[float] = Field(default_factory=list)
    channels: list[ChannelOut] | None = Field(
        default=None, description="alert channels (type and host): admin keys only, else null")


class BudgetsOut(BaseModel):
    budgets: list[BudgetOut]


class BudgetIn(BaseModel):
    """``PUT /v1/budgets``: create or update the budget (scope, period)."""

    model_config = ConfigDict(extra="forbid")

    scope: str = Field(max_length=160, examples=["tenant:acme"])
    period: Period
    # Strict, as a job's amounts: `true` is no $1 limit, nor "1e3" one of $1000.
    limit_usd: JsonNumber = Field(ge=0, le=MAX_LIMIT_USD)
    # Left out (or null): the budget's own, so that raising a limit keeps its alerts (a new
    # budget: 0.5/0.8/1.0, no forecast thresholds, no channels). [] clears a list.
    alert_thresholds: list[JsonNumber] | None = Field(
        default=None, max_length=20,
        description="fractions of the limit; left out: the budget's own (new: [0.5, 0.8, 1.0])")
    forecast_thresholds: list[JsonNumber] | None = Field(
        default=None, max_length=20,
        description="opt-in: alert when the run-rate forecast of the period's spend passes "
                    "these fractions of the limit (e.g. [1.0]); left out: the budget's own")
    channels: list[dict[str, Any]] | None = Field(
        default=None, max_length=20,
        description="where alerts go; left out: the budget's own (new: none); [] removes all")

    _finite = field_validator("limit_usd", mode="before")(finite_number)

    @field_validator("limit_usd")
    @classmethod
    def _whole_micros(cls, v: float) -> float:
        return float(exact_usd(v))

    @model_validator(mode="after")
    def _storable(self) -> BudgetIn:
        _reject_unstorable(self)
        return self


# -- keys ------------------------------------------------------------------------------------
class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str = Field(pattern=TENANT_RE.pattern, examples=["acme"])
    admin: StrictBool = False  # "yes" or 1 must not make an admin key


class WhoAmIOut(BaseModel):
    tenant: str
    admin: bool
    key_id: int
    prefix: str


class KeyOut(BaseModel):
    id: int = Field(description="names the key from now on (GET/DELETE /v1/keys)")
    key: str = Field(description="the key itself: shown this once, stored only as a hash")
    tenant: str
    admin: bool
    prefix: str = Field(description="the key's second part: not secret, tells keys apart")


class KeyItemOut(BaseModel):
    id: int
    tenant: str
    admin: bool
    prefix: str
    created_at: str
    last_used_at: str | None = Field(
        description="when the key last authenticated, to within a minute (null: never)")
    revoked_at: str | None


class KeysOut(BaseModel):
    items: list[KeyItemOut]


# -- health ----------------------------------------------------------------------------------
class HealthOut(BaseModel):
    status: Literal["ok"]


class ReadyOut(BaseModel):
    status: Literal["ready"]
    checks: dict[str, str]
