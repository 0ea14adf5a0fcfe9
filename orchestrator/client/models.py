"""Typed resources of the HTTP API. Every model tolerates fields added by newer servers
(``extra="allow"``: they are kept and reachable as attributes and in ``model_dump()``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

FINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})

Kind = Literal["video", "image", "text"]
Tier = Literal["draft", "standard", "premium"]
Strategy = Literal["cheapest", "fastest", "balanced"]
Priority = Literal["low", "normal", "high"]
Period = Literal["day", "month", "total"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class ErrorInfo(_Model):
    code: str | None = None
    message: str | None = None


class Attempt(_Model):
    backend: str | None = None
    external_id: str | None = None
    outcome: str | None = None
    error: ErrorInfo | None = None
    cost_usd: float | None = None
    # an uncertain attempt's possible charge; equal to cost_usd: charged a worst case
    possible_cost_usd: float | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


class Candidate(_Model):
    backend: str
    estimated_cost_usd: float | None = None  # the worst case
    expected_cost_usd: float | None = None  # calibrated
    score: float | None = None
    reasons: list[Any] = Field(default_factory=list)


class Excluded(_Model):
    backend: str
    reason: str | None = None


class Quote(_Model):
    """Ranked candidates (best first) with estimates and reasons, and the excluded backends."""

    candidates: list[Candidate] = Field(default_factory=list)
    excluded: list[Excluded] = Field(default_factory=list)


class Job(_Model):
    id: str
    status: str
    kind: str | None = None
    tier: str | None = None
    backend: str | None = None
    estimated_cost_usd: float | None = None
    cost_usd: float | None = None
    result: Any = None
    error: ErrorInfo | None = None
    attempts: list[Attempt] = Field(default_factory=list)
    route: Quote | None = None
    cached_from: str | None = None  # the job whose result this one got at $0
    metadata: dict[str, Any] = Field(default_factory=dict)
    deadline_at: datetime | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES


class Page(_Model):
    items: list[Job]  # required: an answer without it is not a page (a wrong URL's JSON)
    next_cursor: str | None = None


class Breaker(_Model):
    state: str = "closed"
    strikes: int = 0
    retry_at: datetime | float | None = None


class Backend(_Model):
    name: str
    protocol: str | None = None
    kinds: list[str] = Field(default_factory=list)
    tier: str | None = None
    breaker: Breaker = Field(default_factory=Breaker)
    success_rate: float | None = None
    latency_ms: float | None = None
    in_flight: int | None = None
    waiting: int | None = None
    price_model: str | None = None
    calibration: dict[str, Any] | None = None  # {ratio, samples}; None: none yet
    # per kind, the input parameters it accepts: {name: {type, min, max, ..., priced}}
    params: dict[str, dict[str, dict[str, Any]]] = Field(default_factory=dict)


class Budget(_Model):
    scope: str
    period: str
    period_start: datetime | None = None
    period_end: datetime | None = None  # None: a `total` budget's period never ends
    limit_usd: float
    committed_usd: float = 0.0
    held_usd: float = 0.0
    remaining_usd: float | None = None
    forecast_usd: float | None = None
    alert_thresholds: list[float] = Field(default_factory=list)
    forecast_thresholds: list[float] = Field(default_factory=list)


class WebhookDelivery(_Model):
    """One webhook delivery (``GET /v1/webhooks/deliveries``): an event to an endpoint
    (``target``: the job's ``webhook_url`` or the tenant's endpoint), ``pending``,
    ``delivered`` or ``failed``; ``last_error`` is the orchestrator's own code, never the
    receiver's answer."""

    id: int
    event_id: str
    event_type: str
    job_id: str
    seq: int
    target: str
    status: str
    attempts: int = 0
    last_error: str | None = None
    next_attempt_at: datetime | None = None
    created_at: datetime | None = None
    delivered_at: datetime | None = None
    requeued_at: datetime | None = None


class DeliveryPage(_Model):
    items: list[WebhookDelivery]  # required, as Page.items
    next_cursor: str | None = None


class ApiKey(_Model):
    """A new API key; ``key`` is shown only once, by the response that created it."""

    key: str = Field(repr=False)  # never printed by accident
    tenant: str
    admin: bool = False


class JobEvent(_Model):
    """One event of a job (``GET /v1/jobs/{id}/events``, webhooks): ``type`` is
    ``job.queued``, ``job.started``, ``job.failover``, ``job.succeeded``, ``job.failed``,
    ``job.cancelled`` or, after one of the last three, ``job.charged`` (a late bill);
    ``seq`` counts the job's events from 1; ``at`` is when it happened (``created_at``: the
    same, as servers before ``at`` named it)."""

    id: str
    type: str
    job_id: str
    tenant: str | None = None
    seq: int
    at: datetime
    created_at: datetime | None = None
    data: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _at_from_created_at(cls, data: Any) -> Any:
        if isinstance(data, dict) and "at" not in data and "created_at" in data:
            return {**data, "at": data["created_at"]}
        return data

    @property
    def is_terminal(self) -> bool:
        return self.type in ("job.succeeded", "job.failed", "job.cancelled")


class JobResult(_Model):
    """``GET /v1/jobs/{id}/result``: the provider's output and what the job cost."""

    job_id: str
    status: str
    backend: str | None = None
    output: dict[str, Any] | None = None
    cost: dict[str, Any] = Field(default_factory=dict)
    finished_at: datetime | None = None
    expires_at: datetime | None = None
