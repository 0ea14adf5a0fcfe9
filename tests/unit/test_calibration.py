"""Calibrated estimates (pure): the factor converges on a backend's actual / estimate, resists
outliers, follows a change within its window, and changes the ranking but never the hold."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.domain.breaker import BackendHealth
from orchestrator.domain.calibration import (
    PPM,
    Factor,
    Sample,
    expected_micros,
    learn,
    median_ppm,
    relative_error,
)
from orchestrator.domain.catalogue import load_catalogue
from orchestrator.domain.jobs import JobSpec
from orchestrator.domain.routing import RoutePlan, plan_route

SHIPPED = load_catalogue(Path(__file__).resolve().parents[2] / "config" / "backends.yaml", env={})
MODELS = {b.name: b.price.model for b in SHIPPED.backends}


def samples(backend: str, ratios: list[float], estimate: int = 1_000_000) -> list[Sample]:
    return [Sample(backend, MODELS[backend], estimate, round(estimate * r)) for r in ratios]


def test_no_factor_below_min_samples_then_the_median() -> None:
    assert learn(samples("txt-small", [0.5] * 4), MODELS, window=50, min_samples=5) == {}
    got = learn(samples("txt-small", [0.5, 0.4, 0.6, 0.5, 0.45]), MODELS, window=50,
                min_samples=5)
    assert got == {"txt-small": Factor(500_000, 5, "per_token")}


def test_converges_on_noisy_ratios() -> None:
    """Ratios scattered around 0.62 (a text backend answering well under max_tokens): the
    factor approaches the true median as samples accumulate."""
    rng = random.Random(7)
    ratios = [min(1.0, max(0.25, rng.gauss(0.62, 0.12))) for _ in range(400)]
    errors = []
    for n in (5, 20, 50):
        f = learn(samples("txt-small", ratios[:n]), MODELS, window=n, min_samples=5)
        errors.append(abs(f["txt-small"].ratio - 0.62))
    assert errors[-1] < 0.05
    assert errors[-1] <= errors[0] + 1e-9


def test_robust_to_outliers_and_windowed() -> None:
    # newest first: ten bills at 80 % of the estimate, then two absurd ones
    ratios = [0.8] * 10 + [25.0, 0.0]
    f = learn(samples("vid-draft", ratios), MODELS, window=50, min_samples=5)["vid-draft"]
    assert f.ppm == 800_000  # the median ignores them
    # the provider changed: the 20 newest bills are at 60 %, older ones at 100 %
    changed = [0.6] * 20 + [1.0] * 100
    f = learn(samples("vid-draft", changed), MODELS, window=20, min_samples=5)["vid-draft"]
    assert f.ppm == 600_000 and f.samples == 20


def test_samples_of_another_price_model_do_not_count() -> None:
    old = [Sample("vid-draft", "per_request", 1_000_000, 300_000)] * 10
    assert learn(old, MODELS, window=50, min_samples=5) == {}


@given(st.integers(1, 10**9), st.integers(1, 3 * PPM))
def test_expected_is_the_ceiling_of_estimate_times_factor(estimate: int, ppm: int) -> None:
    got = expected_micros(estimate, Factor(ppm, 5, "per_token"))
    assert got * PPM >= estimate * ppm > (got - 1) * PPM
    assert expected_micros(estimate, None) == estimate


def test_median_and_error_helpers() -> None:
    assert median_ppm([(1, 2), (3, 4), (1, 1)]) == 750_000
    with pytest.raises(ValueError):
        median_ppm([])
    assert relative_error(99, 100) == pytest.approx(0.01)
    assert relative_error(0, 0) == 0.0


def text_job(strategy: str = "cheapest") -> JobSpec:
    return JobSpec.model_validate({"kind": "text", "tier": "standard", "strategy": strategy,
                                   "input": {"prompt": "summarise " * 200, "max_tokens": 2000}})


def test_calibration_reorders_cheapest_but_the_hold_stays_the_worst_case() -> None:
    spec = text_job()
    plain = plan_route(spec, SHIPPED, {}, now=0.0)
    assert plain.backends == ("txt-small", "txt-large")
    # txt-large turns out to bill 5 % of its worst case, txt-small all of it
    factors = {"txt-large": Factor(50_000, 50, "per_token"),
               "txt-small": Factor(PPM, 50, "per_token")}
    cal = plan_route(spec, SHIPPED, {}, now=0.0, calibration=factors)
    assert cal.backends == ("txt-large", "txt-small")
    large = cal.candidates[0]
    assert large.expected == expected_micros(large.estimate_micros, factors["txt-large"])
    assert cal.worst_case_micros == plain.worst_case_micros == max(
        c.estimate_micros for c in plain.candidates)
    quote = cal.to_quote()["candidates"][0]
    assert quote["expected_cost_micros"] == large.expected
    assert quote["calibration"] == {"ratio": 0.05, "samples": 50}
    assert any("median actual/estimate of 50 settled jobs" in r for r in quote["reasons"])
    # stored on the job and read back by the chain: same order, same expected costs
    back = RoutePlan.from_quote(cal.to_quote())
    assert back.backends == cal.backends
    assert back.candidates[0].expected == large.expected


def test_a_factor_of_another_price_model_is_ignored() -> None:
    spec = text_job()
    stale = {"txt-large": Factor(50_000, 50, "per_request")}
    assert plan_route(spec, SHIPPED, {}, now=0.0, calibration=stale).backends == (
        "txt-small", "txt-large")


def video(strategy: str) -> JobSpec:
    return JobSpec.model_validate({"kind": "video", "tier": "draft", "strategy": strategy,
                                   "input": {"prompt": "x", "duration_s": 8,
                                             "resolution": "720p"}})


@pytest.mark.parametrize("rate, winner", [(0.3, "vid-standard"), (0.9, "vid-draft")])
def test_balanced_counts_the_failover_a_flaky_cheap_backend_causes(
        rate: float, winner: str) -> None:
    health = {"vid-draft": BackendHealth(success_rate=rate, latency_ms=400.0),
              "vid-standard": BackendHealth(success_rate=1.0, latency_ms=400.0),
              "vid-standard-b": BackendHealth(success_rate=1.0, latency_ms=400.0),
              "vid-premium": BackendHealth(success_rate=1.0, latency_ms=400.0)}
    cheapest = plan_route(video("cheapest"), SHIPPED, health, now=0.0)
    assert cheapest.backends[0] == "vid-draft"  # cheapest still ranks on price
    balanced = plan_route(video("balanced"), SHIPPED, health, now=0.0)
    assert balanced.backends[0] == winner
    draft = next(c for c in balanced.candidates if c.backend == "vid-draft")
    standard = next(c for c in balanced.candidates if c.backend == "vid-standard")
    # its effective cost: its own share, plus the failover (vid-standard) for the rest
    assert draft.effective_micros == round(rate * draft.expected
                                           + (1 - rate) * standard.expected)
