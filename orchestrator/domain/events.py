"""Job event types (migration 0013 writes them; ``orchestrator.events`` reads and sends them)."""

from __future__ import annotations

QUEUED = "job.queued"
STARTED = "job.started"
FAILOVER = "job.failover"
SUCCEEDED = "job.succeeded"
FAILED = "job.failed"
CANCELLED = "job.cancelled"

EVENT_TYPES: tuple[str, ...] = (QUEUED, STARTED, FAILOVER, SUCCEEDED, FAILED, CANCELLED)
TERMINAL_EVENTS: tuple[str, ...] = (SUCCEEDED, FAILED, CANCELLED)
