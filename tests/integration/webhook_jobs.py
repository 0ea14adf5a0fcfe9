"""A job row whose events are webhooks to send, for the tests of the webhook sender."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import Connection

from orchestrator.store import jobs as repo


def insert_job(conn: Connection, url: str | None, *, tenant: str = "acme",
               events: Sequence[str] = ("job.queued",), now: datetime | None = None
               ) -> uuid.UUID:
    """A text job of ``tenant``, queued at ``now`` (its job.queued event written with it),
    whose ``events`` go to ``url`` (None: no URL of its own, only the tenant's endpoint)."""
    now = now or datetime.now(UTC)
    job = uuid.uuid4()
    spec: dict[str, object] = {"kind": "text", "input": {"prompt": "a red kite"}}
    if url is not None:
        spec.update(webhook_url=url, webhook_events=list(events))
    repo.insert_job(conn, job_id=job, tenant=tenant, kind="text", tier="standard", spec=spec,
                    route={}, estimated_cost_micros=1, deadline_at=now,
                    chain_token=uuid.uuid4(), wake_at=now)
    return job
