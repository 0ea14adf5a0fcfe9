"""The run-rate forecast (pure): one function for the API's forecast_usd and the alerts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.domain.budgets import PeriodWindow, crossed_thresholds, period_window
from orchestrator.domain.forecast import MIN_ELAPSED, forecast_micros, project_window

NOV = period_window("month", datetime(2026, 11, 15, tzinfo=UTC))  # 30 days
DAY = period_window("day", datetime(2026, 11, 15, 7, tzinfo=UTC))

instants = st.datetimes(
    min_value=datetime(2026, 10, 25), max_value=datetime(2026, 12, 5), timezones=st.just(UTC)
)
amounts = st.integers(min_value=0, max_value=10**12)


def test_run_rate_is_committed_over_the_elapsed_fraction() -> None:
    # a third of November gone, $10 spent: $30 by the end of the month
    at = NOV.start + timedelta(days=10)
    assert project_window(10_000_000, NOV, at) == 30_000_000
    # a quarter of the day gone, $1 spent: $4
    assert forecast_micros(1_000_000, "day", DAY.start + timedelta(hours=6)) == 4_000_000


def test_an_early_job_is_projected_over_at_least_the_minimum_window() -> None:
    ten_seconds_in = DAY.start + timedelta(seconds=10)
    # without the floor: 1 $ * 8640 = $8640; with one hour counted: $24
    assert project_window(1_000_000, DAY, ten_seconds_in) == 24_000_000
    assert project_window(1_000_000, DAY, DAY.start) == 24_000_000
    assert project_window(1_000_000, DAY, ten_seconds_in, min_elapsed=timedelta(hours=6)) == (
        4_000_000
    )
    assert timedelta(hours=1) == MIN_ELAPSED


def test_total_periods_have_no_forecast_and_a_past_period_forecasts_what_it_spent() -> None:
    assert forecast_micros(5, "total", datetime(2026, 11, 1, tzinfo=UTC)) is None
    assert project_window(7_654_321, NOV, NOV.start + timedelta(days=45)) == 7_654_321
    assert project_window(7_654_321, NOV, NOV.start - timedelta(days=1)) == 7_654_321 * 720


def test_invalid_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        project_window(1, NOV, datetime(2026, 11, 2))
    with pytest.raises(ValueError, match=">= 0"):
        project_window(-1, NOV, NOV.start)


@given(amounts, instants)
def test_matches_the_real_valued_formula_to_a_micro_dollar(committed: int, at: datetime) -> None:
    assert NOV.end is not None
    length = (NOV.end - NOV.start).total_seconds()
    elapsed = min(max((at - NOV.start).total_seconds(), MIN_ELAPSED.total_seconds()), length)
    expected = committed * length / elapsed
    got = project_window(committed, NOV, at)
    assert got is not None
    assert abs(got - expected) <= 0.5 + expected * 1e-12
    assert got >= committed


@given(amounts, amounts, instants, instants)
def test_falls_as_time_passes_and_rises_with_spend(
    c1: int, c2: int, t1: datetime, t2: datetime
) -> None:
    lo, hi = sorted((c1, c2))
    early, late = sorted((t1, t2))
    f = project_window
    assert f(hi, NOV, early) >= f(hi, NOV, late)  # type: ignore[operator]
    assert f(hi, NOV, early) >= f(lo, NOV, early)  # type: ignore[operator]


@given(st.lists(st.tuples(st.integers(0, 50_000_000), st.integers(0, 3600 * 24 * 40)),
                min_size=1, max_size=30),
       st.integers(1, 200_000_000))
def test_a_forecast_threshold_is_crossed_by_some_charge_iff_the_projection_reaches_it(
    steps: list[tuple[int, int]], limit: int
) -> None:
    """What the ledger relies on: checking only 'crossed by this charge, at this instant' on
    each step misses no overrun (the projection only falls between charges). It may cross
    again after falling back, which the alerts' unique key turns into one row."""
    window = PeriodWindow(NOV.start, NOV.end)
    committed, crossings, ever = 0, 0, False
    for charge, offset in sorted(steps, key=lambda s: s[1]):
        at = NOV.start + timedelta(seconds=offset)
        before = project_window(committed, window, at)
        committed += charge
        after = project_window(committed, window, at)
        assert before is not None and after is not None
        crossings += len(crossed_thresholds(limit, before, after, (10000,)))
        ever = ever or after >= limit
    assert (crossings >= 1) == ever
