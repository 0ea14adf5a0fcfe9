"""Job event types (migration 0013 writes them; ``orchestrator.events`` reads and sends them)."""

from __future__ import annotations

QUEUED = "job.queued"
STARTED = "job.started"
FAILOVER = "job.failover"
SUCCEEDED = "job.succeeded"
FAILED = "job.failed"
CANCELLED = "job.cancelled"
# an ended job's cost changed: an attempt still running at a cancel or a deadline concluded
# and was billed (migration 0017); never a default webhook event (it is not terminal)
CHARGED = "job.charged"

EVENT_TYPES: tuple[str, ...] = (QUEUED, STARTED, FAILOVER, SUCCEEDED, FAILED, CANCELLED,
                                CHARGED)
TERMINAL_EVENTS: tuple[str, ...] = (SUCCEEDED, FAILED, CANCELLED)
