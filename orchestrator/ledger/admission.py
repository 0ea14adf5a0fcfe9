"""A job's admission in one statement: the queued job row and its budget hold
(``orch_admit_job``, migration 0007).

The API admits every job through here. Run on a connection without an open transaction the
statement commits on its own: a submission is one round trip, and the period rows every hold
and ending of a tenant's jobs lock stay locked for the server's work only. A refusal raises
SQLSTATE ``OR402`` and leaves no job row behind; ``OR4PM`` means a covering budget has no row
for its current period yet, and nothing changed (``Ledger.admit_job`` creates it and calls
again).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from orchestrator.domain.budgets import Period, period_window
from orchestrator.store.jobs import JOB_COLUMNS, JobRow
from orchestrator.store.statement import Conn, Statement

PERIOD_MISSING = "OR4PM"


@dataclass(frozen=True, slots=True)
class NewJob:
    """A queued job's row as the API writes it."""

    id: uuid.UUID
    tenant: str
    kind: str
    tier: str
    spec: dict[str, Any]
    route: dict[str, Any]
    estimated_cost_micros: int
    deadline_at: datetime
    chain_token: uuid.UUID
    wake_at: datetime
    idempotency_key: str | None = None
    request_hash: str | None = None


_ADMIT_JOB = Statement(
    f"""
    SELECT {JOB_COLUMNS} FROM orch_admit_job(
        :id, :tenant, :kind, :tier, CAST(:spec AS jsonb), CAST(:route AS jsonb), :estimate,
        :deadline, :token, :wake, :ikey, :rhash, CAST(:scopes AS text[]),
        CAST(:period_kinds AS text[]), CAST(:period_starts AS timestamptz[]), :hold_expires,
        :now)
    """
)
_PERIOD_KINDS = [p.value for p in Period]


def admit_job(conn: Conn, job: NewJob, scopes: tuple[str, ...], hold_expires: datetime,
              now: datetime) -> JobRow | None:
    """Insert ``job`` and hold its estimate in every budget covering ``scopes``. None: the
    tenant's idempotency key is taken, and nothing changed."""
    row = _ADMIT_JOB.first(conn, {
        "id": job.id, "tenant": job.tenant, "kind": job.kind, "tier": job.tier,
        "spec": json.dumps(job.spec), "route": json.dumps(job.route),
        "estimate": job.estimated_cost_micros, "deadline": job.deadline_at,
        "token": job.chain_token, "wake": job.wake_at, "ikey": job.idempotency_key,
        "rhash": job.request_hash, "scopes": list(scopes), "period_kinds": _PERIOD_KINDS,
        "period_starts": [period_window(p, now).start for p in _PERIOD_KINDS],
        "hold_expires": hold_expires, "now": now,
    })
    return None if row is None else JobRow(*row)
