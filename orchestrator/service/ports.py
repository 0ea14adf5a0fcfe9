"""The small interfaces the use cases need from the edges (implemented in health/, workers/),
and the chain's steps its helpers call back (implemented by ``runner.JobRunner``)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Protocol

from orchestrator.backends.base import PollResult, Submission
from orchestrator.backends.errors import BackendError
from orchestrator.domain.breaker import BackendHealth, BreakerState
from orchestrator.domain.outcomes import Outcome
from orchestrator.health.store import Ticket
from orchestrator.service.attempts import Closing, Next
from orchestrator.store import jobs as repo


class HealthPort(Protocol):
    """Implemented by orchestrator.health.HealthStore (shared breaker state in Redis)."""

    def snapshot(self, names: Iterable[str]) -> dict[str, BackendHealth]: ...

    def acquire(self, name: str, *, max_concurrency: int, lease_s: float) -> Ticket: ...

    def record_and_wake(
        self, name: str, outcome: Outcome, *, latency_ms: float | None = None,
        probe: bool = False, slot: str | None = None, wake: bool = True,
    ) -> tuple[BreakerState, str | None]: ...

    def renew_probe(self, name: str, slot: str | None = None) -> bool: ...

    def wait_for_slot(self, names: Iterable[str], member: str, since: float) -> None: ...

    def stop_waiting(self, names: Iterable[str], member: str) -> None: ...


class EnqueuePort(Protocol):
    """Schedules the next step of a job's chain (Celery in production)."""

    def start(self, job_id: uuid.UUID, token: uuid.UUID, priority: str,
              backend: str | None = None) -> None:
        """The chain's first step. ``backend``: the first choice of the job's plan, where
        that step may claim the job and open its attempt in one statement."""
        ...

    def poll(
        self, job_id: uuid.UUID, token: uuid.UUID, priority: str, countdown_s: float
    ) -> None: ...

    def resume(
        self, job_id: uuid.UUID, token: uuid.UUID, priority: str, countdown_s: float = 0.0
    ) -> None:
        """A step for a job waiting for a slot, that does nothing once the job has one."""
        ...


class Chain(Protocol):
    """The job chain's own steps that reconciliation, conclusion and watching call back: the
    runner's, not for other callers (hence their names)."""

    def _submit(self, job: repo.JobRow, attempt: repo.AttemptRow, token: uuid.UUID) -> Next:
        """Call the backend with the attempt (checkpointed) and go on from its answer."""
        ...

    def _submitted(self, job: repo.JobRow, attempt: repo.AttemptRow, sub: Submission,
                   token: uuid.UUID, latency_ms: float, *, found: bool = False) -> Next:
        """The provider named the attempt's work (``found``: by a lookup): record it, then
        conclude or poll it."""
        ...

    def _failover(self, job: repo.JobRow, attempt: repo.AttemptRow, token: uuid.UUID,
                  closing: Closing) -> Next:
        """Close the attempt and open the job's next one (or end the job)."""
        ...

    def _concluded(
        self, job: repo.JobRow, attempt: repo.AttemptRow, res: PollResult, token: uuid.UUID,
        latency_ms: float, *, error: BackendError | None = None,
    ) -> Next:
        """The provider says the attempt's work ended: settle the job, or fail it over."""
        ...

    def _lease_s(self, backend: str) -> float:
        """How far the chain's wake moves when a call to ``backend`` starts."""
        ...

    def _poll_delay(self, attempt: repo.AttemptRow, age_s: float) -> float:
        """How long until the attempt, ``age_s`` old, is looked at again."""
        ...
