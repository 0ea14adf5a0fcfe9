"""Alert rows of the ledger's transactional outbox (DESIGN §6).

- ``threshold``: committed spend crossed a threshold of the limit (once per period,
  threshold and limit: ``bucket`` = the limit in micro-USD, so a raised limit alerts again at
  its own thresholds), written in the settle/release transaction; or a budget change put the
  spend already committed past a threshold it was under, or added one it is already past
  (written with the change).
- ``forecast``: the charge moves the run-rate projection of committed spend to the period
  end (:mod:`orchestrator.domain.forecast`) past one of the budget's
  ``forecast_thresholds_bp`` (opt-in; ``[10000]``: "forecast over 100 % of the limit"); once
  per period, threshold and limit, written in the same transaction (or with a budget
  change, as for ``threshold``).
- ``refusal``: a hold was refused (402); at most once per budget per window (``bucket`` =
  the window start in unix seconds), written in its own short transaction since the refused
  hold's transaction was rolled back.
- ``overage``: a job's bill was above its hold and was charged in full, the rest as an
  ``overage:<job>`` entry that may take the period past its limit; once per job and period
  (``bucket`` = the hold's id, ``threshold_bp`` 0), written in the settle/release transaction.
  Its payload adds ``job_id``, ``hold_usd``, ``charge_usd``, ``overage_usd`` (and the exact
  amounts in micro-USD).

Uniqueness is ``(budget_period_id, kind, threshold_bp, bucket)`` and every insert is
``ON CONFLICT DO NOTHING``: concurrent steps crossing one line write one row.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import Connection, text

from orchestrator.domain.budgets import PeriodWindow, crossed_thresholds, threshold_micros
from orchestrator.domain.forecast import project_window
from orchestrator.domain.money import micros_to_usd

REFUSAL_BP = 10000  # a refusal: the limit is reached for this job


class PeriodAfterStep(NamedTuple):
    """A budget period row as a ledger step left it, joined to its budget."""

    id: int
    budget_id: int
    period_start: datetime
    period_end: datetime | None
    limit_micros: int
    committed_micros: int
    held_micros: int
    scope: str
    period: str
    alert_thresholds_bp: list[int]
    forecast_thresholds_bp: list[int]

_INSERT_ALERT = text(
    """
    INSERT INTO alerts (budget_id, budget_period_id, kind, threshold_bp, bucket, payload)
    VALUES (:budget_id, :pid, :kind, :bp, :bucket, CAST(:payload AS jsonb))
    ON CONFLICT (budget_period_id, kind, threshold_bp, bucket) DO NOTHING
    RETURNING id
    """
)
# The bucket is the job's hold id: one overage alert per job and period.
_INSERT_OVERAGE_ALERT = text(
    """
    INSERT INTO alerts (budget_id, budget_period_id, kind, threshold_bp, bucket, payload)
    SELECT :budget_id, :pid, 'overage', 0, h.id, CAST(:payload AS jsonb)
    FROM holds h WHERE h.job_id = :job
    ON CONFLICT (budget_period_id, kind, threshold_bp, bucket) DO NOTHING
    RETURNING id
    """
)
_REFUSED_PERIOD = text(
    """
    SELECT bp.id, bp.budget_id, bp.period_start, bp.period_end, bp.limit_micros,
           bp.committed_micros, bp.held_micros, b.scope, b.period
    FROM budget_periods bp JOIN budgets b ON b.id = bp.budget_id
    WHERE b.scope = :scope AND b.period = :period AND bp.period_start = :start
    """
)


def _window(p: Any) -> PeriodWindow:
    return PeriodWindow(p.period_start, p.period_end)


def alert_payload(
    p: Any, threshold_bp: int, now: datetime, forecast_micros: int | None,
    **extra: Any,
) -> str:
    """The JSON an alert row carries (``p``: a budget period row joined to its budget)."""
    return json.dumps(
        {
            "scope": p.scope,
            "period": p.period,
            "period_start": p.period_start.isoformat(),
            "threshold": threshold_bp / 10000,
            "limit_usd": micros_to_usd(p.limit_micros),
            "committed_usd": micros_to_usd(p.committed_micros),
            "held_usd": micros_to_usd(p.held_micros),
            "forecast_usd": micros_to_usd(forecast_micros) if forecast_micros is not None
            else None,
            "at": now.isoformat(),
            **extra,
        }
    )


def _insert(
    tx: Connection, p: Any, kind: str, bp: int, payload: str, bucket: int
) -> uuid.UUID | None:
    alert_id: uuid.UUID | None = tx.execute(
        _INSERT_ALERT,
        {"budget_id": p.budget_id, "pid": p.id, "kind": kind, "bp": bp, "bucket": bucket,
         "payload": payload},
    ).scalar()
    return alert_id


class BudgetBefore(NamedTuple):
    """What a budget change replaced: the period's limit and the budget's thresholds (none
    for a new budget)."""

    limit_micros: int
    alert_thresholds_bp: Collection[int]
    forecast_thresholds_bp: Collection[int]


def budget_change_alerts(
    tx: Connection, p: PeriodAfterStep, before: BudgetBefore, now: datetime
) -> list[uuid.UUID]:
    """Threshold and forecast alerts owed when a budget change (from ``before`` to ``p``'s
    limit and thresholds) leaves the spend already committed, or its run-rate forecast, past
    a threshold that it was under at the old limit or that was not there before: no charge
    will cross it now. The unique key keeps it to once per period, threshold and limit (one
    removed and added back after it alerted does not alert again)."""
    if p.committed_micros <= 0:
        return []
    forecast = project_window(p.committed_micros, _window(p), now)
    owed = [("threshold", bp, p.committed_micros, before.alert_thresholds_bp)
            for bp in p.alert_thresholds_bp]
    if forecast is not None:
        owed += [("forecast", bp, forecast, before.forecast_thresholds_bp)
                 for bp in p.forecast_thresholds_bp]
    ids: list[uuid.UUID] = []
    for kind, bp, amount, old_bps in owed:
        if amount < threshold_micros(p.limit_micros, bp):
            continue
        if bp in old_bps and amount >= threshold_micros(before.limit_micros, bp):
            continue  # already past it before the change: its crossing alerted then
        alert_id = _insert(tx, p, kind, bp, alert_payload(p, bp, now, forecast),
                           p.limit_micros)
        if alert_id is not None:
            ids.append(alert_id)
    return ids


def step_alerts(
    tx: Connection, p: PeriodAfterStep, charge: int, now: datetime
) -> list[uuid.UUID]:
    """Threshold and forecast alerts owed after ``charge`` was committed to period ``p``
    (its row as updated, joined to its budget), in the caller's transaction."""
    if charge <= 0:
        return []
    forecast = project_window(p.committed_micros, _window(p), now)
    ids: list[uuid.UUID] = []
    for bp in crossed_thresholds(
        p.limit_micros, p.committed_micros - charge, p.committed_micros,
        tuple(p.alert_thresholds_bp),
    ):
        alert_id = _insert(tx, p, "threshold", bp, alert_payload(p, bp, now, forecast),
                           p.limit_micros)
        if alert_id is not None:
            ids.append(alert_id)
    forecast_bps = tuple(p.forecast_thresholds_bp)
    if forecast is None or not forecast_bps:
        return ids
    # Crossing, like thresholds: for a fixed committed spend the projection only falls as
    # time passes, so it passes a threshold only through a charge; while it stays past,
    # later steps cost no INSERT while they hold the period row (a re-crossing after it fell
    # back meets the unique key: still one row per period and threshold).
    before = project_window(p.committed_micros - charge, _window(p), now)
    assert before is not None
    for bp in crossed_thresholds(p.limit_micros, before, forecast, forecast_bps):
        alert_id = _insert(tx, p, "forecast", bp, alert_payload(p, bp, now, forecast),
                           p.limit_micros)
        if alert_id is not None:
            ids.append(alert_id)
    return ids


@dataclass(frozen=True, slots=True)
class Overage:
    """A job charged above its hold: ``charge_micros`` in full, ``hold_micros`` of it from the
    hold, the rest (``overage_micros``) past it."""

    job_id: uuid.UUID
    hold_micros: int
    charge_micros: int

    @property
    def overage_micros(self) -> int:
        return max(0, self.charge_micros - self.hold_micros)


def overage_alert(
    tx: Connection, p: PeriodAfterStep, overage: Overage, now: datetime
) -> uuid.UUID | None:
    """The ``overage`` alert of this job in period ``p`` (its row as updated, joined to its
    budget); None when the job already has one there."""
    forecast = project_window(p.committed_micros, _window(p), now)
    payload = alert_payload(
        p, 0, now, forecast, job_id=str(overage.job_id),
        hold_usd=micros_to_usd(overage.hold_micros),
        charge_usd=micros_to_usd(overage.charge_micros),
        overage_usd=micros_to_usd(overage.overage_micros),
        hold_micros=overage.hold_micros, charge_micros=overage.charge_micros,
        overage_micros=overage.overage_micros,
    )
    alert_id: uuid.UUID | None = tx.execute(
        _INSERT_OVERAGE_ALERT,
        {"budget_id": p.budget_id, "pid": p.id, "job": overage.job_id, "payload": payload},
    ).scalar()
    return alert_id


def period_alerts(
    conn: object, periods: Iterable[Sequence[Any]], charge: int, now: datetime,
    overage: Overage | None = None,
) -> tuple[uuid.UUID, ...]:
    """``step_alerts`` for each period row a settle-like step returned (``orch_apply``'s
    columns; a NULL id stands for a hold no budget covers), and the ``overage`` alert where
    the charge went past the hold, in ``conn``'s transaction, which must be a SQLAlchemy one:
    the alerts commit with the step or not at all. ``charge`` is all that the step added to
    committed (an overage included)."""
    assert isinstance(conn, Connection), "alerts are written in a SQLAlchemy transaction"
    ids: list[uuid.UUID] = []
    for row in periods:
        if row[0] is None:
            continue
        p = PeriodAfterStep(*row)
        ids += step_alerts(conn, p, charge, now)
        if overage is not None and overage.overage_micros > 0:
            alert_id = overage_alert(conn, p, overage, now)
            if alert_id is not None:
                ids.append(alert_id)
    return tuple(ids)


def refusal_bucket(now: datetime, window: timedelta) -> int:
    """The start of the window holding ``now``, in unix seconds (the refusal's ``bucket``)."""
    seconds = int(window.total_seconds())
    if seconds <= 0:
        raise ValueError("the refusal window must be at least one second")
    at = int(now.astimezone(UTC).timestamp())
    return at - at % seconds


def insert_refusal(
    tx: Connection, *, scope: str, period: str, period_start: datetime, now: datetime,
    bucket: int, requested_micros: int, remaining_micros: int,
) -> uuid.UUID | None:
    """The refusal alert of this budget period and window; None when the window already has
    one (or the period row is gone)."""
    p = tx.execute(
        _REFUSED_PERIOD, {"scope": scope, "period": period, "start": period_start}
    ).first()
    if p is None:
        return None
    forecast = project_window(p.committed_micros, _window(p), now)
    payload = alert_payload(
        p, REFUSAL_BP, now, forecast,
        requested_usd=micros_to_usd(requested_micros),
        remaining_usd=micros_to_usd(remaining_micros),
        window_start=datetime.fromtimestamp(bucket, UTC).isoformat(),
    )
    return _insert(tx, p, "refusal", REFUSAL_BP, payload, bucket)
