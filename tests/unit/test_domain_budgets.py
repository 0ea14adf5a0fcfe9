from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.domain.budgets import (
    TOTAL_PERIOD_START,
    covering_scopes,
    crossed_thresholds,
    period_window,
    threshold_micros,
    thresholds_to_bp,
    validate_scope,
)
from orchestrator.domain.money import format_usd, usd_to_micros


def test_usd_to_micros_is_exact_for_decimal_inputs() -> None:
    assert usd_to_micros(0.1) == 100_000
    assert usd_to_micros("2.5") == 2_500_000
    assert usd_to_micros(1e-6) == 1
    assert usd_to_micros(0.0000005) == 1  # half up at the micro-dollar
    with pytest.raises(ValueError):
        usd_to_micros("nan")
    assert format_usd(1_234_567) == "$1.234567"
    assert format_usd(-5) == "-$0.000005"


def test_period_windows_are_utc_calendar_periods() -> None:
    at = datetime(2026, 12, 31, 23, 30, tzinfo=timezone(timedelta(hours=-5)))  # Jan 1 UTC
    day = period_window("day", at)
    assert day.start == datetime(2027, 1, 1, tzinfo=UTC)
    assert day.end == datetime(2027, 1, 2, tzinfo=UTC)
    month = period_window("month", datetime(2026, 12, 15, tzinfo=UTC))
    assert (month.start, month.end) == (
        datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC),
    )
    total = period_window("total", at)
    assert (total.start, total.end) == (TOTAL_PERIOD_START, None)
    with pytest.raises(ValueError):
        period_window("week", at)
    with pytest.raises(ValueError):
        period_window("day", datetime(2026, 1, 1))


@given(st.datetimes(timezones=st.just(UTC)), st.sampled_from(["day", "month"]))
def test_every_instant_lies_in_its_window(at: datetime, period: str) -> None:
    w = period_window(period, at)
    assert w.end is not None and w.start <= at < w.end


def test_scopes() -> None:
    assert covering_scopes("acme") == ("global", "tenant:acme")
    assert covering_scopes("acme", "p1")[-1] == "tenant:acme/project:p1"
    assert validate_scope("tenant:acme/project:p-1") == "tenant:acme/project:p-1"
    for bad in ("tenant:", "project:x", "tenant:a b", "GLOBAL"):
        with pytest.raises(ValueError, match="invalid budget scope"):
            validate_scope(bad)


def test_thresholds() -> None:
    assert thresholds_to_bp([1.0, 0.5, 0.8, 0.5]) == (5000, 8000, 10000)
    with pytest.raises(ValueError):
        thresholds_to_bp([0])
    # never rounded: to 0 it would never fire, and 0.50004 is not the line asked for
    for finer in (0.00001, 0.50004):
        with pytest.raises(ValueError, match="at most 4 decimal places"):
            thresholds_to_bp([finer])
    assert thresholds_to_bp([0.0001, 0.9999, 10]) == (1, 9999, 100000)
    assert threshold_micros(10_000_001, 5000) == 5_000_001  # rounds up: never early
    assert crossed_thresholds(100, 40, 85, (5000, 8000, 10000)) == [5000, 8000]
    assert crossed_thresholds(100, 50, 60, (5000,)) == []  # already reached before
