"""Run-rate forecast of a budget period's spend (pure).

Like the cloud providers' forecasted-spend budgets: committed spend so far, divided by the
fraction of the period that has elapsed, projects the spend at the period end. One function
serves both the API's ``forecast_usd`` and the ledger's ``forecast`` alerts, so what an alert
says is what ``GET /v1/budgets`` shows. A budget's ``forecast_thresholds`` (opt-in, like the
cloud providers' forecasted-spend thresholds) are crossed by the projection the way its
``alert_thresholds`` are crossed by actual spend (``domain.budgets.crossed_thresholds``).

A period younger than ``MIN_ELAPSED`` is projected as if that much had passed, so one early
job does not forecast a spend hundreds of times the limit. Integer arithmetic throughout
(micro-USD and microseconds): the same inputs give the same forecast everywhere.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from orchestrator.domain.budgets import PeriodWindow, period_window

MIN_ELAPSED = timedelta(hours=1)

_US = timedelta(microseconds=1)


def project_window(
    committed_micros: int,
    window: PeriodWindow,
    now: datetime,
    *,
    min_elapsed: timedelta = MIN_ELAPSED,
) -> int | None:
    """Committed spend projected to the end of ``window`` at the run rate since its start.

    None for a period without an end (``total``). Past the end the projection is the
    committed spend itself (the elapsed fraction is capped at 1).
    """
    if committed_micros < 0:
        raise ValueError(f"committed must be >= 0, got {committed_micros}")
    if now.tzinfo is None:
        raise ValueError("project_window needs an aware datetime")
    if window.end is None:
        return None
    length = (window.end - window.start) // _US
    if length <= 0:
        return committed_micros
    elapsed = max((now.astimezone(UTC) - window.start) // _US, min_elapsed // _US, 1)
    elapsed = min(elapsed, length)
    # committed * length / elapsed, rounded half up, in integers
    return (2 * committed_micros * length + elapsed) // (2 * elapsed)


def forecast_micros(
    committed_micros: int, period: str, now: datetime, *, min_elapsed: timedelta = MIN_ELAPSED
) -> int | None:
    """Projection for the current window of ``period`` (``day``, ``month``; None for total)."""
    return project_window(
        committed_micros, period_window(period, now), now, min_elapsed=min_elapsed
    )

