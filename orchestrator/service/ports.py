"""The small interfaces the use cases need from the edges (implemented in health/, workers/)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Protocol

from orchestrator.domain.breaker import BackendHealth, BreakerState
from orchestrator.domain.outcomes import Outcome
from orchestrator.health.store import Ticket


class HealthPort(Protocol):
    """Implemented by orchestrator.health.HealthStore (shared breaker state in Redis)."""

    def snapshot(self, names: Iterable[str]) -> dict[str, BackendHealth]: ...

    def acquire(self, name: str, *, max_concurrency: int, lease_s: float) -> Ticket: ...

    def record_and_wake(
        self, name: str, outcome: Outcome, *, latency_ms: float | None = None,
        probe: bool = False, slot: str | None = None, wake: bool = True,
    ) -> tuple[BreakerState, str | None]: ...

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
