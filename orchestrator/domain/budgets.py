"""Budget scopes, periods and threshold arithmetic (pure)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum

TOTAL_PERIOD_START = datetime(1970, 1, 1, tzinfo=UTC)
DEFAULT_THRESHOLDS_BP: tuple[int, ...] = (5000, 8000, 10000)
# The largest budget limit PUT /v1/budgets and `orchestrator budgets set` take: far above any
# real budget, and far below what the ledger's bigint micro-dollars hold (9.2e12 USD).
MAX_LIMIT_USD = 1_000_000_000

_SCOPE_RE = re.compile(r"^(global|tenant:[A-Za-z0-9_.-]{1,64}(/project:[A-Za-z0-9_.-]{1,64})?)$")


class Period(StrEnum):
    DAY = "day"
    MONTH = "month"
    TOTAL = "total"


@dataclass(frozen=True, slots=True)
class PeriodWindow:
    start: datetime
    end: datetime | None  # None: the "total" period never ends


def validate_scope(scope: str) -> str:
    if not _SCOPE_RE.match(scope):
        raise ValueError(
            f"invalid budget scope {scope!r}: expected 'global', 'tenant:<id>' or "
            "'tenant:<id>/project:<name>' (letters, digits, '_', '.', '-')"
        )
    return scope


def covering_scopes(tenant: str, project: str | None = None) -> tuple[str, ...]:
    """Every scope whose budgets cover a job of ``tenant`` (and ``project``)."""
    scopes = ["global", f"tenant:{tenant}"]
    if project:
        scopes.append(f"tenant:{tenant}/project:{project}")
    return tuple(scopes)


def period_window(period: Period | str, at: datetime) -> PeriodWindow:
    """The UTC window of ``period`` that contains the instant ``at``."""
    if at.tzinfo is None:
        raise ValueError("period_window needs an aware datetime")
    at = at.astimezone(UTC)
    p = Period(period)
    if p is Period.DAY:
        start = at.replace(hour=0, minute=0, second=0, microsecond=0)
        return PeriodWindow(start, start + timedelta(days=1))
    if p is Period.MONTH:
        start = at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        nxt = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(
            month=start.month + 1
        )
        return PeriodWindow(start, nxt)
    return PeriodWindow(TOTAL_PERIOD_START, None)


def thresholds_to_bp(fractions: list[float] | tuple[float, ...]) -> tuple[int, ...]:
    """[0.5, 0.8, 1.0] -> (5000, 8000, 10000); validated, sorted, de-duplicated."""
    out: set[int] = set()
    for f in fractions:
        if not 0 < f <= 10:
            raise ValueError(f"threshold {f} must be in (0, 10] (a fraction of the limit)")
        # Kept in whole basis points: rounding would move the line an admin drew, and one
        # under half a point (0.00004) would become 0, which no spend ever crosses.
        bp = Decimal(str(f)) * 10000
        if bp != bp.to_integral_value():
            raise ValueError(f"threshold {f} must have at most 4 decimal places "
                             "(thresholds are kept in whole basis points)")
        out.add(int(bp))
    return tuple(sorted(out))


def threshold_micros(limit_micros: int, threshold_bp: int) -> int:
    """The committed amount at which a threshold counts as reached (rounded up)."""
    return -(-limit_micros * threshold_bp // 10000)


def crossed_thresholds(
    limit_micros: int, before_micros: int, after_micros: int, thresholds_bp: tuple[int, ...]
) -> list[int]:
    """Thresholds reached by moving committed spend from ``before`` to ``after``."""
    return [
        bp
        for bp in thresholds_bp
        if before_micros < threshold_micros(limit_micros, bp) <= after_micros
    ]
