"""Putting webhook deliveries back in the queue: what a consumer does once its receiver is
fixed, for a delivery that failed for good (the receiver refused it, or it ran out of its
retry window) or one it wants again (it lost what it had received).

A requeued delivery is ``pending`` again, due now, with its attempts counted from 0 and
``requeued_at`` set: its retry window counts from then. It goes out in the job's order among
the deliveries still pending to the same target, so a redelivered ``job.started`` still
comes before a pending ``job.succeeded``; one sent again after a later event was delivered
reaches the receiver after it, which de-duplicates by event id and orders by ``seq``.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import text

from orchestrator.errors import Conflict, NotFound

_ONE = text(
    """
    UPDATE webhook_deliveries d
    SET status = 'pending', attempts = 0, next_attempt_at = :now, requeued_at = :now,
        claim_token = NULL, updated_at = :now
    FROM webhook_deliveries old
    WHERE d.id = :id AND old.id = d.id AND d.tenant = :t AND d.status <> 'pending'
    RETURNING d.id, old.status AS was
    """
)
_STATUS = text("SELECT status, next_attempt_at FROM webhook_deliveries "
               "WHERE id = :id AND tenant = :t")
_FAILED = text(
    """
    UPDATE webhook_deliveries
    SET status = 'pending', attempts = 0, next_attempt_at = :now, requeued_at = :now,
        claim_token = NULL, updated_at = :now
    WHERE tenant = :t AND status = 'failed' AND (CAST(:j AS uuid) IS NULL OR job_id = :j)
    """
)


def requeue(conn: Any, tenant: str, delivery_id: int, now: datetime) -> str:
    """Queue the tenant's delivery ``delivery_id`` again; returns the status it had
    (``failed`` or ``delivered``). :class:`NotFound` if the tenant has no such delivery,
    :class:`Conflict` if it is pending already (it will be sent without being asked)."""
    row = conn.execute(_ONE, {"id": delivery_id, "t": tenant, "now": now}).first()
    if row is not None:
        return str(row.was)
    current = conn.execute(_STATUS, {"id": delivery_id, "t": tenant}).first()
    if current is None:
        raise NotFound(f"no webhook delivery {delivery_id}", delivery_id=delivery_id)
    raise Conflict(f"webhook delivery {delivery_id} is pending already: its next attempt is "
                   f"at {current.next_attempt_at.isoformat()}", delivery_id=delivery_id)


def requeue_failed(conn: Any, tenant: str, job_id: uuid.UUID | None, now: datetime) -> int:
    """Queue every ``failed`` delivery of the tenant (of one job, if given) again; returns
    how many."""
    return int(conn.execute(_FAILED, {"t": tenant, "j": job_id, "now": now}).rowcount)
