"""A job's ending in one statement: its last attempt closed, its final status and cost, and
its hold settled or released, charging the cost in full (``orch_end_job``, migrations 0006,
0008 and 0009: a cost above the hold is charged too, the rest as an overage).

A job that ends (a cancel, its deadline) while an attempt may still be billed keeps its hold:
the chain concludes that attempt later through here too, and only then is the hold finished
with what the provider billed (``JobEnd.concluded``).

The runner ends every job through here. Run on a connection without an open transaction the
statement commits on its own; with ``guard`` it is refused (``AlertsOwed``, nothing changed)
when the charge may owe a budget alert, and run again inside a transaction that writes the
alerts from the period rows it returns (see ``Ledger.end_job``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from orchestrator.ledger.alerts import Overage, period_alerts
from orchestrator.store.engine import jsonb_dumps
from orchestrator.store.statement import Conn, Statement


@dataclass(frozen=True, slots=True)
class ClosingAttempt:
    """The open attempt the ending closes in the same statement."""

    attempt_id: int
    outcome: str
    fault: str
    cost_micros: int | None
    external_id: str | None = None
    possible_cost_micros: int | None = None
    error_code: str | None = None
    error_message: str | None = None


@dataclass(frozen=True, slots=True)
class JobEnd:
    """What ``end_job`` did. ``ended``: the job ended now. ``concluded``: it had ended with an
    attempt still open, and this closed the last such attempt and finished the hold. Neither:
    the job had already ended (another step or a cancel), so only the attempt was closed.
    ``pending``: it ended now, but an attempt is still open, so its hold waits for that
    attempt's conclusion. ``hold_status`` is set when the hold was no longer held (the job
    ended without a charge). Otherwise ``charged_micros`` is the job's whole cost,
    ``hold_micros`` its hold, and ``overage_micros`` what the cost went past the hold (charged
    too; callers count it: ``JobObserver.overage``). ``kept_result``: the job had ended
    (cancelled, or by its deadline) before the attempt this closed ``succeeded``, and keeps
    that attempt's output (``result``) as its result (migration 0021)."""

    ended: bool
    cost_micros: int = 0
    charged_micros: int = 0
    hold_status: str | None = None
    alert_ids: tuple[uuid.UUID, ...] = ()
    concluded: bool = False
    pending: bool = False
    hold_micros: int = 0
    overage_micros: int = 0
    kept_result: bool = False


_END_JOB = Statement(
    """
    SELECT * FROM orch_end_job(:job, :status, :now, :attempt, :outcome, :fault, :cost, :ext,
                               :a_code, :a_msg, :possible,
                               :backend, CAST(:result AS jsonb), :code, :msg, :guard,
                               CAST(:conclude_in AS float8))
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
    conclude_in_s: float = 0.0,
) -> JobEnd | None:
    """End the job (``status``: succeeded, failed or cancelled), or conclude an attempt that
    outlived its job's end. None: ``attempt`` had already been closed by a duplicate step,
    and nothing changed. ``conclude_in_s``: when an attempt is still open after the ending,
    how soon the chain should look at it again. Without ``guard`` the alerts the charge owes
    are written in ``conn``'s transaction."""
    rows = _END_JOB.all(conn, {
        "job": job_id, "status": status, "now": now,
        "attempt": attempt.attempt_id if attempt else None,
        "outcome": attempt.outcome if attempt else None,
        "fault": attempt.fault if attempt else None,
        "cost": attempt.cost_micros if attempt else None,
        "ext": attempt.external_id if attempt else None,
        "possible": attempt.possible_cost_micros if attempt else None,
        "a_code": attempt.error_code if attempt else None,
        "a_msg": attempt.error_message if attempt else None,
        "backend": backend, "result": jsonb_dumps(result) if result is not None else None,
        "code": error_code, "msg": error_message, "guard": guard,
        "conclude_in": conclude_in_s,
    })
    if not rows:
        return None
    what, cost, charged, hold_status, kept, hold = rows[0][:6]
    if what == "job_final":
        return JobEnd(ended=False, kept_result=kept)
    ended, concluded = what == "ended", what == "concluded"
    if charged is None:
        return JobEnd(ended=ended, concluded=concluded, cost_micros=cost,
                      hold_status=hold_status, pending=ended and hold_status == "held",
                      kept_result=kept)
    over = Overage(job_id, hold, charged)
    alert_ids = () if guard else period_alerts(conn, (r[6:] for r in rows), charged, now, over)
    return JobEnd(ended=ended, concluded=concluded, cost_micros=cost, charged_micros=charged,
                  alert_ids=alert_ids, hold_micros=hold, overage_micros=over.overage_micros,
                  kept_result=kept)
