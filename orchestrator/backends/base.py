"""The one small interface every backend adapter implements, and the values it returns.

A worker drives an adapter in short steps (DESIGN §3)::

    sub = adapter.submit(job_spec, idempotency_key=f"job:{job_id}:attempt:{n}")
    # record sub.external_id in PostgreSQL before anything else
    if sub.result is not None:           # synchronous backend: already final (the one-step case)
        settle(sub.result)
    else:                                # create-then-poll backend
        res = adapter.poll(sub.external_id)  # a later task; again while res.status == "running"

``submit`` with the same idempotency key twice creates one provider job (the key is sent as the
``Idempotency-Key`` header): a redelivered task can always call it again safely, and that is also
how a synchronous backend's result is fetched again after a crash (``poll`` is not available there).

Errors are raised as ``orchestrator.backends.errors.BackendError`` subclasses. A provider job that
ran and *ended* failed is not an exception: ``poll`` returns ``status="failed"`` with ``error`` set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from orchestrator.backends.errors import BackendError
from orchestrator.domain.catalogue import BackendSpec
from orchestrator.domain.jobs import JobSpec
from orchestrator.domain.pricing import Usage

Status = Literal["running", "succeeded", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


@dataclass(frozen=True, slots=True)
class PollResult:
    """Where a provider job stands.

    ``cost_micros`` is the actual cost: ``actual_micros(backend, usage)`` from the usage the
    provider reported (or the provider's own ``cost_usd`` when it reported no usage); 0 for a
    job that ended without being billed. ``reported_cost_micros`` is the provider's ``cost_usd``,
    kept for the cross-check (``cost_mismatch``).
    """

    status: Status
    output: Any = None
    usage: Usage | None = None
    cost_micros: int | None = None
    reported_cost_micros: int | None = None
    error: BackendError | None = None
    provider_status: str | None = None

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    @property
    def cost_mismatch(self) -> bool:
        return (
            self.cost_micros is not None
            and self.reported_cost_micros is not None
            and self.cost_micros != self.reported_cost_micros
        )


@dataclass(frozen=True, slots=True)
class Submission:
    """``external_id`` identifies the provider job; ``result`` is set (final) for synchronous
    backends and None for create-then-poll ones."""

    external_id: str
    result: PollResult | None = None


@runtime_checkable
class BackendAdapter(Protocol):
    """One provider protocol. Implementations: OpenAIAdapter, PredictionsAdapter."""

    backend: BackendSpec
    synchronous: bool

    @property
    def name(self) -> str: ...

    def submit(self, spec: JobSpec, idempotency_key: str) -> Submission:
        """Start the job (and, for synchronous backends, finish it). Raises BackendError."""
        ...

    def poll(self, external_id: str) -> PollResult:
        """Current state of a submitted job. Raises BackendError (``poll_unsupported`` on a
        synchronous backend)."""
        ...

    def cancel(self, external_id: str) -> bool:
        """Ask the provider to stop the job; False where the protocol cannot cancel."""
        ...

    def close(self) -> None:
        """Release the HTTP transport if the adapter created it (an injected one is left
        open)."""
        ...
