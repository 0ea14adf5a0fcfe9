"""PollPolicy: when a running attempt is looked at next (pure)."""

from __future__ import annotations

import pytest

from orchestrator.domain.polling import PollPolicy

POLICY = PollPolicy(min_s=1.0, max_s=10.0)


@pytest.mark.parametrize(("age_s", "expected_s", "next_s"), [
    (0.0, 0.4, 0.5),  # a quarter of a short expectation after it
    (0.1, 0.4, 0.4),
    (0.0, 0.1, 0.15),  # at least 50 ms after it
    (0.0, 60.0, 61.0),  # at most min_s after a long one
    (59.5, 60.0, 1.5),
])
def test_before_the_expected_latency_the_look_comes_just_after_it(
    age_s: float, expected_s: float, next_s: float
) -> None:
    assert POLICY.interval(age_s, expected_s) == pytest.approx(next_s)


@pytest.mark.parametrize(("age_s", "next_s"), [(0.0, 1.0), (5.0, 1.0), (30.0, 3.0),
                                               (500.0, 10.0)])
def test_past_it_or_without_one_every_tenth_of_the_age_clamped(age_s: float,
                                                               next_s: float) -> None:
    assert POLICY.interval(age_s) == pytest.approx(next_s)
    assert POLICY.interval(age_s, expected_s=age_s / 2 or None) == pytest.approx(next_s)


def test_the_slot_wait_timer_is_max_s_spread_over_plus_minus_20_percent() -> None:
    assert POLICY.slot_wait(0.0) == pytest.approx(8.0)
    assert POLICY.slot_wait(0.5) == pytest.approx(10.0)
    assert POLICY.slot_wait(0.999) == pytest.approx(11.996)


@pytest.mark.parametrize(("retry_in_s", "jitter", "wait_s"), [
    (4.0, 0.0, 4.0),  # until the cooldown ends
    (4.0, 0.5, 4.5),  # plus up to min_s of jitter
    (0.2, 0.0, 1.0),  # at least min_s
    (-3.0, 0.0, 1.0),  # already over (another job's probe may have taken it)
    (290.0, 0.0, 10.0),  # at most max_s: a probe's verdict usually comes sooner
])
def test_the_breaker_wait_is_the_refusals_end_within_min_s_and_max_s(
        retry_in_s: float, jitter: float, wait_s: float) -> None:
    assert POLICY.breaker_wait(retry_in_s, jitter) == pytest.approx(wait_s)
