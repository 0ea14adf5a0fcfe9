"""Creating, updating and reading budgets (admin side of the ledger)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text

from orchestrator.domain.budgets import (
    DEFAULT_THRESHOLDS_BP,
    Period,
    period_window,
    validate_scope,
)
from orchestrator.errors import InvalidAmount
from orchestrator.ledger.alerts import BudgetBefore, PeriodAfterStep, budget_change_alerts


@dataclass(frozen=True, slots=True)
class BudgetView:
    id: int
    scope: str
    period: str
    period_start: datetime
    limit_micros: int
    committed_micros: int
    held_micros: int
    alert_thresholds_bp: tuple[int, ...]
    channels: tuple[dict[str, Any], ...]
    forecast_thresholds_bp: tuple[int, ...] = ()

    @property
    def remaining_micros(self) -> int:
        return max(0, self.limit_micros - self.committed_micros - self.held_micros)


# The budget's thresholds before a change, under the row's lock (taken before the upsert),
# so that a PUT committed meanwhile is what this one replaces. NO KEY UPDATE, the lock the
# upsert itself takes: FOR UPDATE would also wait on (and hold off) the key-share lock of an
# alert's foreign key, so a settle that locked a period and then writes its alert would
# deadlock with a change waiting on that period.
_BEFORE = text(
    """
    SELECT alert_thresholds_bp, forecast_thresholds_bp FROM budgets
    WHERE scope = :scope AND period = :period
    FOR NO KEY UPDATE
    """
)
_UPSERT = text(
    """
    INSERT INTO budgets (scope, period, limit_micros, alert_thresholds_bp, channels,
                         forecast_thresholds_bp)
    VALUES (:scope, :period, :limit, CAST(:thresholds AS jsonb), CAST(:channels AS jsonb),
            CAST(:forecast AS jsonb))
    ON CONFLICT (scope, period) DO UPDATE SET
        limit_micros = EXCLUDED.limit_micros,
        alert_thresholds_bp = CASE WHEN CAST(:keep_thresholds AS boolean)
            THEN budgets.alert_thresholds_bp ELSE EXCLUDED.alert_thresholds_bp END,
        forecast_thresholds_bp = CASE WHEN CAST(:keep_forecast AS boolean)
            THEN budgets.forecast_thresholds_bp ELSE EXCLUDED.forecast_thresholds_bp END,
        channels = CASE WHEN CAST(:keep_channels AS boolean)
            THEN budgets.channels ELSE EXCLUDED.channels END,
        updated_at = now()
    RETURNING id
    """
)
# A new limit, lowered or raised, applies at once to the open periods: their limit becomes
# exactly the budget's, so every later hold is checked against it. What a lowered limit
# leaves above it (committed + held already there) is the period's excess, which the CHECK
# allows and no hold may use; it drains as those holds finish. (Same transaction as the
# budget row: a period row created meanwhile reads the limit under a share lock of that row,
# see ``ledger.periods``.)
# Each open period as updated, joined to its budget, with the limit it had before (locked in
# ascending id order, like every lock the ledger takes on several period rows).
_RELIMIT_OPEN_PERIODS = text(
    """
    WITH old AS (
        SELECT id, limit_micros FROM budget_periods
        WHERE budget_id = :id AND (period_end IS NULL OR period_end > :now)
        ORDER BY id FOR NO KEY UPDATE
    )
    UPDATE budget_periods bp
    SET limit_micros = :limit,
        excess_micros = GREATEST(0, bp.committed_micros + bp.held_micros - :limit)
    FROM old, budgets b
    WHERE bp.id = old.id AND b.id = bp.budget_id
    RETURNING bp.id, bp.budget_id, bp.period_start, bp.period_end, bp.limit_micros,
              bp.committed_micros, bp.held_micros, b.scope, b.period, b.alert_thresholds_bp,
              b.forecast_thresholds_bp, old.limit_micros AS old_limit
    """
)
_LIST = text(
    """
    SELECT b.id, b.scope, b.period, b.limit_micros AS budget_limit, b.alert_thresholds_bp,
           b.forecast_thresholds_bp, b.channels, bp.period_start, bp.limit_micros,
           bp.committed_micros, bp.held_micros
    FROM budgets b
    LEFT JOIN LATERAL (
        SELECT * FROM budget_periods p
        WHERE p.budget_id = b.id AND p.period_start <= :now
          AND (p.period_end IS NULL OR p.period_end > :now)
        ORDER BY p.period_start DESC LIMIT 1
    ) bp ON true
    WHERE (CAST(:scopes AS text[]) IS NULL OR b.scope = ANY(CAST(:scopes AS text[])))
    ORDER BY b.scope, b.period
    """
)


def set_budget(
    conn: Connection,
    *,
    scope: str,
    period: str,
    limit_micros: int,
    now: datetime,
    thresholds_bp: tuple[int, ...] | None = DEFAULT_THRESHOLDS_BP,
    channels: list[dict[str, Any]] | None = None,
    forecast_thresholds_bp: tuple[int, ...] | None = (),
) -> int:
    """Create or update the budget (scope, period). Returns its id.

    ``forecast_thresholds_bp`` (opt-in, e.g. ``(10000,)``): alert when the run-rate forecast
    of the period's spend passes these fractions of the limit (DESIGN §6).

    ``None`` for either list of thresholds, or for ``channels``, keeps the budget's own (for
    a new budget: the defaults, ``DEFAULT_THRESHOLDS_BP``, none and none). The upsert keeps
    them, not a read before it, so that a ``PUT /v1/budgets`` meanwhile is not undone; the
    thresholds it replaces are read just before it, under the row's lock.
    """
    validate_scope(scope)
    Period(period)  # ValueError names the bad period
    if limit_micros < 0:
        raise InvalidAmount(f"budget limit must be >= 0, got {limit_micros}")
    old = conn.execute(_BEFORE, {"scope": scope, "period": period}).first()
    budget_id: int = conn.execute(
        _UPSERT,
        {"scope": scope, "period": period, "limit": limit_micros,
         # a new budget's, when None: the upsert keeps an existing one's (keep_*)
         "thresholds": json.dumps(list(DEFAULT_THRESHOLDS_BP if thresholds_bp is None
                                       else thresholds_bp)),
         "keep_thresholds": thresholds_bp is None,
         "channels": json.dumps(channels or []),
         "keep_channels": channels is None,
         "forecast": json.dumps(list(forecast_thresholds_bp or ())),
         "keep_forecast": forecast_thresholds_bp is None},
    ).scalar_one()
    for row in conn.execute(
            _RELIMIT_OPEN_PERIODS, {"limit": limit_micros, "id": budget_id, "now": now}).all():
        # a lowered limit may put what is already spent past thresholds, and an added
        # threshold may be passed already: no charge would cross them any more, so they
        # alert now, with the change
        before = BudgetBefore(row.old_limit, old[0] if old else (), old[1] if old else ())
        budget_change_alerts(conn, PeriodAfterStep(*row[:-1]), before, now)
    return budget_id


def list_budgets(
    conn: Connection, *, now: datetime, scopes: tuple[str, ...] | None = None
) -> list[BudgetView]:
    """Every budget (or those in ``scopes``) with its current period's counters."""
    rows = conn.execute(
        _LIST, {"now": now, "scopes": list(scopes) if scopes is not None else None}
    ).all()
    out = []
    for r in rows:
        has_period = r.period_start is not None
        out.append(
            BudgetView(
                id=r.id, scope=r.scope, period=r.period,
                period_start=r.period_start if has_period else period_window(r.period, now).start,
                limit_micros=r.limit_micros if has_period else r.budget_limit,
                committed_micros=r.committed_micros if has_period else 0,
                held_micros=r.held_micros if has_period else 0,
                alert_thresholds_bp=tuple(r.alert_thresholds_bp),
                # an old row may hold anything: only a list is channels
                channels=tuple(r.channels) if isinstance(r.channels, list) else (),
                forecast_thresholds_bp=tuple(r.forecast_thresholds_bp),
            )
        )
    return out
