"""The one small interface every backend adapter implements, and the values it returns.

A worker drives an adapter in short steps (DESIGN §3)::

    sub = adapter.submit(job_spec, idempotency_key=f"job:{job_id}:attempt:{n}")
    # record sub.external_id in PostgreSQL before anything else
    if sub.result is not None:           # synchronous backend: already final (the one-step case)
        settle(sub.result)
    else:                                # create-then-poll backend
        res = adapter.poll(sub.external_id)  # a later task; again while res.status == "running"

The idempotency key is sent as the ``Idempotency-Key`` header. What a repeat of it gets
depends on the provider (catalogue ``idempotency``: inflight, completed or none), so the job
chain repeats a submission only where that is safe, and otherwise asks the provider what became
of it (``lookup`` by that key, where the protocol can) before anything else is sent
(``orchestrator.service.reconcile``).

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

    ``unpriced``: the provider reported success, with its output, but no bill we can read (no
    usage we can price, no ``cost_usd``): a real provider's answer often carries none. The
    result is kept and the job chain charges the attempt's worst case (its estimate, which
    the hold covered): never 0 for work that was done, and never another backend's run. A
    failure the provider bills all the same (a chat model's refusal: the call ran) is
    ``unpriced`` too when its answer carries no bill, and charged alike.
    """

    status: Status
    output: Any = None
    usage: Usage | None = None
    cost_micros: int | None = None
    reported_cost_micros: int | None = None
    error: BackendError | None = None
    provider_status: str | None = None
    unpriced: bool = False

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

    @property
    def call_window_s(self) -> float:
        """The longest one call can take, in-call retries included."""
        ...

    def lookup(self, reference: str) -> Submission | None:
        """The submission made with idempotency key ``reference``, as it stands now (None:
        the provider has none). Raises LookupUnsupported where that cannot be asked."""
        ...

    def submit(self, spec: JobSpec, idempotency_key: str) -> Submission:
        """Start the job (and, for synchronous backends, finish it). Raises BackendError."""
        ...

    def poll(self, external_id: str) -> PollResult:
        """Current state of a submitted job. Raises BackendError (``poll_unsupported`` on a
        synchronous backend)."""
        ...

    def cancel(self, external_id: str) -> PollResult | None:
        """Ask the provider to stop the job: where it stands then, with what it billed (a
        finished job stays as it was); None where the protocol cannot cancel."""
        ...

    def close(self) -> None:
        """Release the HTTP transport if the adapter created it (an injected one is left
        open)."""
        ...
