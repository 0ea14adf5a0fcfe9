"""Lazily created budget period rows.

A period row is created the first time a step needs it, in its own short committed
transaction, so that creating it never holds a lock inside a ledger step (no reset races
and no deadlocks: nothing ever resets a counter, a new period is a new row).

The new row copies its budget's limit in the INSERT itself, reading the budget row under
``FOR SHARE``. A limit change (``set_budget``: the budget row, then its open periods, in one
transaction) either commits first, and the new row carries the new limit, or it waits on that
share lock until the new row has committed, and then its update of the open periods sees the
row and sets its limit too. Either way an open period's limit is the budget's current one.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine, text

from orchestrator.domain.budgets import period_window
from orchestrator.store.statement import Statement


@dataclass(frozen=True, slots=True)
class CoveringBudget:
    budget_id: int
    scope: str
    period: str


# No limit here: a new period row reads it from the budget row itself (below).
_SELECT_BUDGETS = Statement("SELECT id, scope, period FROM budgets WHERE scope = ANY(:scopes)")
_ENSURE_PERIOD = text(
    """
    INSERT INTO budget_periods (budget_id, period_start, period_end, limit_micros)
    SELECT b.id, :start, :end, b.limit_micros FROM budgets b WHERE b.id = :budget_id
    FOR SHARE
    ON CONFLICT (budget_id, period_start) DO NOTHING
    """
)
_PERIOD_ID = text(
    "SELECT id FROM budget_periods WHERE budget_id = :budget_id AND period_start = :start"
)


class PeriodResolver:
    """Maps the budgets covering a job to the ids of their current period rows."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._cache: dict[tuple[int, datetime], int] = {}
        self._lock = threading.Lock()

    def covering_budgets(self, conn: Connection, scopes: tuple[str, ...]) -> list[CoveringBudget]:
        return [CoveringBudget(*r) for r in _SELECT_BUDGETS.all(conn, {"scopes": list(scopes)})]

    def covering_period_ids(self, conn: Connection, scopes: tuple[str, ...], at: datetime
                            ) -> list[int]:
        """The current period rows of every budget covering ``scopes`` (made if missing)."""
        return self.current_period_ids(self.covering_budgets(conn, scopes), at)

    def current_period_ids(self, budgets: list[CoveringBudget], at: datetime) -> list[int]:
        ids: list[int] = []
        missing: list[tuple[CoveringBudget, datetime, datetime | None]] = []
        for b in budgets:
            window = period_window(b.period, at)
            cached = self._cache.get((b.budget_id, window.start))
            if cached is None:
                missing.append((b, window.start, window.end))
            else:
                ids.append(cached)
        if missing:
            created: dict[tuple[int, datetime], int] = {}
            with self._engine.begin() as conn:
                # the budget rows share-locked in ascending id order, like every lock the
                # ledger takes on several rows
                for b, start, end in sorted(missing, key=lambda m: m[0].budget_id):
                    params = {"budget_id": b.budget_id, "start": start}
                    conn.execute(_ENSURE_PERIOD, {**params, "end": end})
                    created[(b.budget_id, start)] = conn.execute(_PERIOD_ID, params).scalar_one()
            # Only after the commit: another thread must never see an id it cannot reference.
            with self._lock:
                self._cache.update(created)
            ids.extend(created.values())
        return sorted(ids)
