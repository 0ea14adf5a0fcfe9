"""In-memory state of the simulator: per-backend control knobs, counters, predictions,
idempotency keys, the submissions being processed and the provider's bills. Everything is
touched from the event loop only (async handlers and the tasks they start), so no locks.

Bills: every provider job created is billed what the provider charges, in integer micro-USD
equal to the ``cost_usd`` its answer reports (x 1e6): an OpenAI call when it completes (even
if its client has gone away); a prediction when it ends: succeeded, its full cost; failed, 0;
canceled while running, ``cancel_bill_fraction`` of its usage priced by the catalogue. On a
``per_compute_second`` backend a prediction is billed the time it ran, however it ended. A
running prediction is not billed yet. ``snapshot`` lists them, in the order they were billed.
"""

from __future__ import annotations

import asyncio
import random
import zlib
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.domain.pricing import Usage

Mode = Literal["up", "down", "slow"]
InjectedError = Literal["job_fault", "content_policy", "malformed", "prediction_failed"]
Idempotency = Literal["inflight", "completed", "none"]
ImageFormat = Literal["url", "b64_json"]


class Control(BaseModel):
    """The knobs of one simulated backend (``POST /_control/{backend}`` sets any subset).

    - ``mode``: up; down (503 for every request); slow (``slow_ms`` more latency).
    - ``latency_ms``: added to every request; ``fail_rate``: share of requests answered 500,
      drawn from a RNG seeded by ``seed`` (default: from the backend name).
    - ``duration_ms``: how long a prediction runs before it ends (fixed at creation).
    - ``error``: submissions are answered with job_fault (422 invalid input), content_policy
      (400), malformed (200 with a body that is not JSON), or prediction_failed (the prediction
      is created and then ends ``failed``).
    - ``status_code`` (+ ``retry_after_s`` as a Retry-After header): every request answered
      with that HTTP status, e.g. 429 or 502.
    - ``times``: how many more requests the ``error``/``status_code`` injection applies to
      (null: until changed); when it runs out both are cleared.
    - ``idempotency``: what a submission whose ``Idempotency-Key`` was already seen on this
      backend gets, decided when it arrives: ``inflight`` replays the first (waiting for it
      while it is still being processed); ``completed`` replays it once it completed but
      processes a repeat that arrives meanwhile as a new request (created and billed again);
      ``none`` processes every request as new.
    - ``cancel_bill_fraction``: the share of its usage a prediction canceled while running is
      billed (0: nothing, as before; a per-request price bills the whole request if above 0).
    - ``ignore_cancel``: true: a cancel of a running prediction is answered with the
      prediction as it stands and does not stop it: it runs on, and ends and is billed as
      if never cancelled (a provider that ignores cancels, or whose model finishes anyway).
    - ``usage_factor``: the provider reports (and bills) this times the usage the request
      asked for: video seconds x f, images, input and output tokens rounded up (1.0: as
      asked). Above 1 it bills more than the orchestrator's worst-case estimate, as a
      provider that bills in coarser units or raised its prices does.
    - ``fail_job_rate``: share of the jobs a submission would create that fail instead (drawn
      from the backend's RNG): a prediction is created and ends ``failed``, unbilled (but
      for its run time on a ``per_compute_second`` backend); an
      OpenAI call is answered 500 after its processing time. Unlike ``fail_rate`` it spares
      polls and cancels: the provider is up, its model fails that often.
    - ``drop_answers``: how many of the next submissions answered with success (a new job or a
      replay) lose their answer: processed in full (created, billed, remembered under their
      key), then the connection is closed after the answer's head, before its body (null or
      0: none). Counts down; null when it runs out.
    - ``garble_answers``: as ``drop_answers``, but the answer arrives whole, as a 200 whose
      body is not JSON (a proxy's error page, a truncated body): the work was created and
      billed all the same.
    - ``report_usage``: false: a success's answer carries no usage and no ``cost_usd``, as
      many real providers' do (Replicate's predictions report only ``metrics.predict_time``;
      OpenAI-compatible servers may omit ``usage``); the work is billed all the same.
    - ``image_format``: ``b64_json``: images come back as base64 data, not URLs (OpenAI's
      gpt-image models answer only so).
    - ``empty_output``: true: a prediction that succeeds answers ``output: null`` (read when
      the answer is made; billed all the same), and an OpenAI image call answers ``data: []``
      (no image: billed nothing): a provider that says done and delivers nothing.
    - ``report_run_time``: false: predictions answer no ``metrics.predict_time``; their
      ``started_at`` and ``completed_at`` still tell the run's time (billed all the same).
    """

    model_config = ConfigDict(extra="forbid")

    mode: Mode = "up"
    fail_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    latency_ms: int = Field(default=0, ge=0, le=600_000)
    slow_ms: int = Field(default=2000, ge=0, le=600_000)
    duration_ms: int = Field(default=1000, ge=0, le=86_400_000)
    error: InjectedError | None = None
    status_code: int | None = Field(default=None, ge=400, le=599)
    retry_after_s: float | None = Field(default=None, ge=0)
    times: int | None = Field(default=None, ge=0)
    seed: int | None = None
    idempotency: Idempotency = "completed"
    cancel_bill_fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    ignore_cancel: bool = False
    usage_factor: float = Field(default=1.0, ge=0.0, le=100.0)
    drop_answers: int | None = Field(default=None, ge=0)
    garble_answers: int | None = Field(default=None, ge=0)
    fail_job_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    report_usage: bool = True
    image_format: ImageFormat = "url"
    empty_output: bool = False
    report_run_time: bool = True


class ControlUpdate(BaseModel):
    """A partial update of Control: only the fields sent are changed. Strict: a knob's value
    must be of its JSON type, not coerced to it (``true`` is no fail_rate of 1.0, ``"0.5"``
    no number); a JSON integer is still a number for the float knobs."""

    model_config = ConfigDict(extra="forbid", strict=True)

    mode: Mode | None = None
    fail_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    latency_ms: int | None = Field(default=None, ge=0, le=600_000)
    slow_ms: int | None = Field(default=None, ge=0, le=600_000)
    duration_ms: int | None = Field(default=None, ge=0, le=86_400_000)
    error: InjectedError | None = None
    status_code: int | None = Field(default=None, ge=400, le=599)
    retry_after_s: float | None = Field(default=None, ge=0)
    times: int | None = Field(default=None, ge=0)
    seed: int | None = None
    idempotency: Idempotency | None = None
    cancel_bill_fraction: float | None = Field(default=None, ge=0.0, le=1.0)
    ignore_cancel: bool | None = None
    usage_factor: float | None = Field(default=None, ge=0.0, le=100.0)
    drop_answers: int | None = Field(default=None, ge=0)
    garble_answers: int | None = Field(default=None, ge=0)
    fail_job_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    report_usage: bool | None = None
    image_format: ImageFormat | None = None
    empty_output: bool | None = None
    report_run_time: bool | None = None


@dataclass(slots=True)
class Counters:
    submissions: int = 0  # submit requests received (any answer)
    polls: int = 0
    cancels: int = 0
    created: int = 0  # provider jobs actually created (replays excluded)
    replays: int = 0  # submissions answered with an earlier one's job (same Idempotency-Key)
    # injections that fired: requests answered with an injected error (mode down,
    # status_code, fail_rate, error) and jobs made to fail (error prediction_failed,
    # fail_job_rate); never a prompt's [[fail]] marker, which is the request's own doing
    injected: int = 0
    dropped: int = 0  # submissions whose answer was dropped (drop_answers)
    lookups: int = 0  # prediction list requests (by idempotency_key or not)

    def as_dict(self) -> dict[str, int]:
        return {
            "submissions": self.submissions, "polls": self.polls, "cancels": self.cancels,
            "created": self.created, "replays": self.replays, "injected": self.injected,
            "dropped": self.dropped, "lookups": self.lookups,
        }


@dataclass(frozen=True, slots=True)
class Bill:
    at: float  # monotonic seconds: when it was billed
    reference: str | None  # the Idempotency-Key the job was created with
    id: str  # the provider's job id
    cost_micros: int

    def as_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "id": self.id, "cost_micros": self.cost_micros}


@dataclass(slots=True)
class Prediction:
    id: str
    created: float  # monotonic seconds
    created_at: str
    duration_s: float
    usage: Usage  # of a full run
    cost_micros: int  # of a full run
    output: str
    reference: str | None = None
    failure: dict[str, str] | None = None
    canceled_at: float | None = None
    canceled_usage: Usage | None = None  # what a cancel billed (None: nothing)
    canceled_micros: int = 0
    billed_by_time: bool = False  # per_compute_second: a failed run is billed its time too

    def ended(self) -> float:
        """When it ended (or will end, if it is running)."""
        return self.canceled_at if self.canceled_at is not None else self.created + self.duration_s

    def bill(self, now: float) -> Bill | None:
        """The provider's bill for it: None while it runs."""
        status = self.status(now)
        cost = {"succeeded": self.cost_micros,
                "failed": self.cost_micros if self.billed_by_time else 0,
                "canceled": self.canceled_micros}.get(status)
        return None if cost is None else Bill(self.ended(), self.reference, self.id, cost)

    def status(self, now: float) -> str:
        if self.canceled_at is not None:
            return "canceled"
        elapsed = now - self.created
        if elapsed >= self.duration_s:
            return "failed" if self.failure else "succeeded"
        return "starting" if elapsed < self.duration_s * 0.1 else "processing"


@dataclass(slots=True)
class BackendState:
    name: str
    control: Control = field(default_factory=Control)
    counters: Counters = field(default_factory=Counters)
    predictions: dict[str, Prediction] = field(default_factory=dict)  # in creation order
    # Idempotency-Key -> every prediction created with it, oldest first (whatever the mode)
    references: dict[str, list[str]] = field(default_factory=dict)
    # Idempotency-Key -> what a replay answers from (a prediction id, or a reply body): the
    # first submission with that key that completed and created a job
    replies: dict[str, Any] = field(default_factory=dict)
    # Idempotency-Key -> the first submission with that key still being processed
    processing: dict[str, asyncio.Task[Any]] = field(default_factory=dict)
    # every submission being processed (referenced so that none is collected half-way)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    bills: list[Bill] = field(default_factory=list)  # OpenAI calls' (predictions: see bill())
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        seed = self.control.seed
        self.rng.seed(seed if seed is not None else zlib.crc32(self.name.encode()))

    def update(self, change: ControlUpdate) -> None:
        """Apply the fields sent; pydantic ValidationError if the result is invalid."""
        sent = change.model_dump(exclude_unset=True)
        self.control = Control.model_validate({**self.control.model_dump(), **sent})
        if "seed" in sent:
            self.reseed()

    def take_injection(self) -> None:
        """Count one use of the error/status_code injection (in ``injected``, and against
        ``times``); clear it when ``times`` runs out."""
        self.counters.injected += 1
        times = self.control.times
        if times is None:
            return
        times -= 1
        update: dict[str, Any] = {"times": times}
        if times <= 0:
            update.update(times=None, error=None, status_code=None, retry_after_s=None)
        self.control = self.control.model_copy(update=update)

    def fails_job(self) -> bool:
        """Whether the job this submission creates fails (``fail_job_rate``; counted in
        ``injected`` when it does)."""
        rate = self.control.fail_job_rate
        fails = bool(rate) and self.rng.random() < rate
        if fails:
            self.counters.injected += 1
        return fails

    def take_garble(self) -> bool:
        """Whether to garble this answer (``garble_answers`` counts down)."""
        left = self.control.garble_answers
        if not left:
            return False
        self.control = self.control.model_copy(update={"garble_answers": left - 1 or None})
        return True

    def take_drop(self) -> bool:
        """Whether to drop this answer (``drop_answers`` counts down; counted in dropped)."""
        left = self.control.drop_answers
        if not left:
            return False
        self.control = self.control.model_copy(update={"drop_answers": left - 1 or None})
        self.counters.dropped += 1
        return True

    def all_bills(self, now: float) -> list[Bill]:
        """Every bill so far, in the order they were billed (predictions' from their state)."""
        ended = (p.bill(now) for p in self.predictions.values())
        return sorted([*self.bills, *(b for b in ended if b is not None)], key=lambda b: b.at)

    def snapshot(self, now: float) -> dict[str, Any]:
        in_flight = sum(
            1 for p in self.predictions.values()
            if p.status(now) in ("starting", "processing")
        )
        bills = self.all_bills(now)
        return {
            "backend": self.name,
            **self.control.model_dump(),
            "counters": self.counters.as_dict(),
            "predictions": len(self.predictions),
            "in_flight": in_flight,
            "submissions_in_flight": len(self.tasks),
            "billed_micros": sum(b.cost_micros for b in bills),
            "bills": [b.as_dict() for b in bills],
        }
