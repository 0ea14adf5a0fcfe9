"""Raising a held job's hold before a failover (``Ledger.raise_hold``).

A job's hold is the highest estimate of its plan: enough for any one backend's run, not for
a failed attempt's bill plus the next backend's run. A provider may bill a failure (a run's
time, a cancelled run's part), so before a failover the hold must cover what is billed
already plus the worst case of what is left, or that failover is an overage past the
budget, knowingly started. The extra is reserved like any hold (``orch_reserve``, refused
past a limit: SQLSTATE OR402) in the periods the hold already holds in, with a ``hold``
entry keyed ``hold:<job>:<new amount>`` (a replayed step adds nothing).

Locks: the hold's row, then its lines, then its periods in ascending id order, as a hold and
its settle take them. The periods are locked last, by the reservation sent with the COMMIT
in one message (as ``orch_hold``): every admission of the budget needs those rows, so they
stay locked for the server's work only, never across this client's round trips.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Connection

from orchestrator.errors import HoldNotActive, HoldNotFound
from orchestrator.store.statement import Statement

# a job admitted below its worst case (a cache hit's 0) that must run after all: its
# estimate becomes what its hold now covers, as a fresh job's is (the job row first, as
# ``orch_end_job`` locks it before the hold)
_ESTIMATE = Statement(
    "UPDATE jobs SET estimated_cost_micros = GREATEST(estimated_cost_micros, :amount) "
    "WHERE id = :job"
)
_LOCK_HOLD = Statement(
    "SELECT id, amount_micros, status FROM holds WHERE job_id = :job FOR UPDATE"
)
_PERIODS = Statement(
    "SELECT budget_period_id FROM hold_lines WHERE hold_id = :hold ORDER BY budget_period_id"
)
_RESERVE = Statement("SELECT orch_reserve(CAST(:pids AS bigint[]), :extra)")
_RAISE = Statement(
    """
    WITH lines AS (
        UPDATE hold_lines SET amount_micros = amount_micros + :extra WHERE hold_id = :hold
    )
    UPDATE holds SET amount_micros = :amount WHERE id = :hold
    """
)
_ENTRIES = Statement(
    """
    INSERT INTO ledger_entries
        (budget_period_id, job_id, kind, idempotency_key, held_delta_micros,
         committed_delta_micros, created_at)
    SELECT pid, :job, 'hold', 'hold:' || CAST(:job AS text) || ':' || CAST(:amount AS text),
           :extra, 0, :now
    FROM unnest(CAST(:pids AS bigint[])) AS pid
    """
)


def raise_hold(tx: Connection, job_id: uuid.UUID, amount_micros: int, now: datetime, *,
               estimate: bool = False) -> int:
    """Make the job's hold at least ``amount_micros``; returns what it added (0: it was
    already). With ``estimate`` the job's ``estimated_cost_micros`` becomes at least that
    too, in the same transaction (what an unpriced ending is charged is bounded by it:
    ``service.attempts.unpriced_charge``). Commits ``tx`` when the hold covers periods.
    Raises the database's OR402 when a covering period cannot take the extra (the caller
    rolls back), ``HoldNotActive`` when the hold is no longer held."""
    if estimate:
        _ESTIMATE.run(tx, {"job": job_id, "amount": amount_micros})
    row = _LOCK_HOLD.first(tx, {"job": job_id})
    if row is None:
        raise HoldNotFound(f"no hold for job {job_id}", job_id=str(job_id))
    hold_id, held, status = row
    if status != "held":
        raise HoldNotActive(f"hold for job {job_id} is already {status}", status=status)
    extra: int = amount_micros - held
    if extra <= 0:
        return 0
    pids = [r[0] for r in _PERIODS.all(tx, {"hold": hold_id})]
    _RAISE.run(tx, {"extra": extra, "hold": hold_id, "amount": amount_micros})
    if pids:
        _ENTRIES.run(tx, {"job": job_id, "amount": amount_micros, "extra": extra,
                          "pids": pids, "now": now})
        # a refusal aborts the transaction before its COMMIT: nothing above is kept
        _RESERVE.first_and_commit(tx, {"pids": pids, "extra": extra})
    return extra
