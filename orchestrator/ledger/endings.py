"""A job's ending in one statement: its last attempt closed, its final status and cost, and
its hold settled or released, charging the cost in full (``orch_end_job``, migrations 0006
and 0008: a cost above the hold is charged too, the rest as an overage).

The runner ends every job through here. Run on a connection without an open transaction the
statement commits on its own; with ``guard`` it is refused (``AlertsOwed``, nothing changed)
when the charge may owe a budget alert, and run again inside a transaction that writes the
alerts from the period rows it returns (see ``Ledger.end_job``).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from orchestrator.ledger.alerts import Overage, period_alerts
from orchestrator.store.statement import Conn, Statement


@dataclass(frozen=True, slots=True)
class ClosingAttempt:
    """The open attempt a success closes in the same statement."""

    attempt_id: int
    outcome: str
    fault: str
    cost_micros: int
    external_id: str | None = None


@dataclass(frozen=True, slots=True)
class JobEnd:
    """What ``end_job`` did. ``ended`` False: the job had already ended (another step or a
    cancel), so only the attempt was closed. ``hold_status`` is set when the hold was no
    longer held (the job ended without a charge). Otherwise ``charged_micros`` is the job's
    whole cost, ``hold_micros`` its hold, and ``overage_micros`` what the cost went past the
    hold (charged too; callers count it: ``JobObserver.overage``)."""

    ended: bool
    cost_micros: int = 0
    charged_micros: int = 0
    hold_status: str | None = None
    alert_ids: tuple[uuid.UUID, ...] = ()
    hold_micros: int = 0
    overage_micros: int = 0


_END_JOB = Statement(
    """
    SELECT * FROM orch_end_job(:job, :status, :now, :attempt, :outcome, :fault, :cost, :ext,
                               :backend, CAST(:result AS jsonb), :code, :msg, :guard)
    """
)


def end_job(
    conn: Conn,
    job_id: uuid.UUID,
    status: str,
    now: datetime,
    *,
    guard: bool,
    attempt: ClosingAttempt | None = None,
    backend: str | None = None,
    result: dict[str, Any] | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
) -> JobEnd | None:
    """End the job (``status``: succeeded, failed or cancelled). None: ``attempt`` had
    already been closed by a duplicate step, and nothing changed. Without ``guard`` the
    alerts the charge owes are written in ``conn``'s transaction."""
    rows = _END_JOB.all(conn, {
        "job": job_id, "status": status, "now": now,
        "attempt": attempt.attempt_id if attempt else None,
        "outcome": attempt.outcome if attempt else None,
        "fault": attempt.fault if attempt else None,
        "cost": attempt.cost_micros if attempt else None,
        "ext": attempt.external_id if attempt else None,
        "backend": backend, "result": json.dumps(result) if result is not None else None,
        "code": error_code, "msg": error_message, "guard": guard,
    })
    if not rows:
        return None
    ended, cost, charged, hold_status, hold = rows[0][:5]
    if ended != "ended":
        return JobEnd(ended=False)
    if charged is None:
        return JobEnd(ended=True, cost_micros=cost, hold_status=hold_status)
    over = Overage(job_id, hold, charged)
    alert_ids = () if guard else period_alerts(conn, (r[5:] for r in rows), charged, now, over)
    return JobEnd(ended=True, cost_micros=cost, charged_micros=charged, alert_ids=alert_ids,
                  hold_micros=hold, overage_micros=over.overage_micros)
