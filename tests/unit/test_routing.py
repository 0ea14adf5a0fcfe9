"""Routing: property tests over random catalogues and health, plus worked examples."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.domain.breaker import BackendHealth, BreakerState, BreakerStatus, refusal
from orchestrator.domain.calibration import Factor
from orchestrator.domain.catalogue import (
    BackendSpec,
    PerImagePrice,
    PerRequestPrice,
    PerSecondPrice,
    load_catalogue,
)
from orchestrator.domain.jobs import JobSpec, Kind, Strategy, Tier
from orchestrator.domain.pricing import NotPriceable, estimate_micros
from orchestrator.domain.routing import ExclusionCode, RoutePlan, plan_route

NOW = 1_000_000.0
SHIPPED = load_catalogue(Path(__file__).resolve().parents[2] / "config" / "backends.yaml", env={})

_PRICES = {
    Kind.VIDEO: st.builds(
        lambda r, m: {"model": "per_second", "usd_per_second": r,
                      "resolution_multipliers": m},
        st.integers(0, 500).map(lambda c: c / 1000),
        st.dictionaries(st.sampled_from(["480p", "720p", "1080p"]),
                        st.sampled_from([1, 1.5, 2, 2.5]), min_size=1),
    ),
    Kind.IMAGE: st.builds(
        lambda p: {"model": "per_image", "usd_per_image": p},
        st.dictionaries(st.sampled_from(["512x512", "1024x1024"]),
                        st.integers(0, 100).map(lambda c: c / 1000), min_size=1),
    ),
    Kind.TEXT: st.builds(
        lambda i, o: {"model": "per_token", "usd_per_1k_input": i, "usd_per_1k_output": o},
        st.integers(0, 50).map(lambda c: c / 10000), st.integers(0, 50).map(lambda c: c / 10000),
    ),
}


@st.composite
def backend_st(draw: st.DrawFn, i: int) -> BackendSpec:
    kind = draw(st.sampled_from(list(Kind)))
    flat = draw(st.booleans()) and draw(st.booleans())
    price = ({"model": "per_request", "usd_per_request": draw(st.integers(0, 3000)) / 1000}
             if flat else draw(_PRICES[kind]))
    kinds = list(Kind) if flat else [kind]
    return BackendSpec.model_validate({
        "name": f"b{i}", "protocol": "openai", "base_url": "http://127.0.0.1:1",
        "kinds": kinds, "tier": draw(st.sampled_from(list(Tier))), "price": price,
        "max_concurrency": draw(st.integers(1, 5)),
        "expected_latency_ms": draw(st.none() | st.floats(1, 5000)),
    })


@st.composite
def health_st(draw: st.DrawFn) -> BackendHealth:
    status = draw(st.sampled_from(list(BreakerStatus)))
    return BackendHealth(
        breaker=BreakerState(status, draw(st.integers(0, 5)), draw(st.integers(0, 3)),
                             NOW + draw(st.sampled_from([-10.0, 0.0, 10.0])),
                             NOW + draw(st.sampled_from([-10.0, 0.0, 10.0]))),
        success_rate=draw(st.none() | st.floats(0, 1)),
        latency_ms=draw(st.none() | st.floats(1, 5000)),
        in_flight=draw(st.integers(0, 6)),
    )


@st.composite
def world(draw: st.DrawFn) -> tuple[JobSpec, list[BackendSpec], dict[str, BackendHealth]]:
    n = draw(st.integers(1, 12))
    backends = [draw(backend_st(i)) for i in range(n)]
    health = {b.name: draw(health_st()) for b in backends if draw(st.booleans())}
    kind = draw(st.sampled_from(list(Kind)))
    inp: dict[str, Any] = {"prompt": draw(st.text(min_size=1, max_size=40).filter(str.strip))}
    if kind is Kind.VIDEO:
        inp |= {"duration_s": draw(st.integers(1, 60)),
                "resolution": draw(st.sampled_from(["480p", "720p", "1080p"]))}
    elif kind is Kind.IMAGE:
        inp |= {"n": draw(st.integers(1, 4)), "size": draw(st.sampled_from(["512x512",
                                                                             "1024x1024"]))}
    else:
        inp |= {"max_tokens": draw(st.integers(1, 4000))}
    spec = JobSpec(
        kind=kind, input=inp, tier=draw(st.sampled_from(list(Tier))),
        strategy=draw(st.sampled_from(list(Strategy))),
        max_cost_usd=draw(st.none() | st.integers(1, 3000).map(lambda c: c / 1000)),
        backend=draw(st.none() | st.sampled_from([*(b.name for b in backends), "ghost"])),
    )
    return spec, backends, health


def first_failure(spec: JobSpec, b: BackendSpec, h: BackendHealth) -> ExclusionCode | None:
    """An independent statement of the filters, in order."""
    if spec.backend is not None and b.name != spec.backend:
        return ExclusionCode.NOT_PINNED
    if spec.kind not in b.kinds:
        return ExclusionCode.WRONG_KIND
    if spec.backend is None and b.tier.rank < spec.tier.rank:
        return ExclusionCode.TIER_TOO_LOW
    # no declared params: a backend accepts the resolutions and sizes its price lists
    price = b.price
    if isinstance(price, PerSecondPrice) and (
            spec.input["resolution"] not in price.resolution_multipliers):
        return ExclusionCode.INPUT_REFUSED
    if isinstance(price, PerImagePrice) and spec.input["size"] not in price.usd_per_image:
        return ExclusionCode.INPUT_REFUSED
    try:
        est = estimate_micros(b, spec)
    except NotPriceable:
        return ExclusionCode.NOT_PRICEABLE
    if spec.max_cost_micros is not None and est > spec.max_cost_micros:
        return ExclusionCode.OVER_MAX_COST
    if refusal(h.breaker, NOW) is not None:
        return ExclusionCode(refusal(h.breaker, NOW).value)  # type: ignore[union-attr]
    return None  # at capacity or not: a full backend is waited for, not excluded


@settings(max_examples=200, deadline=None)
@given(world())
def test_plan_respects_every_filter_and_names_every_exclusion(
    w: tuple[JobSpec, list[BackendSpec], dict[str, BackendHealth]],
) -> None:
    spec, backends, health = w
    plan = plan_route(spec, backends, health, now=NOW)
    by_name = {b.name: b for b in backends}
    cand = {c.backend for c in plan.candidates}
    excl = {e.backend: e for e in plan.excluded}
    assert len(cand) == len(plan.candidates)
    assert not cand & set(excl)
    expected_excl = set(by_name) - cand
    if spec.backend == "ghost":
        expected_excl.add("ghost")
        assert excl["ghost"].code is ExclusionCode.UNKNOWN_BACKEND
    assert set(excl) == expected_excl  # every backend is accounted for exactly once
    for c in plan.candidates:
        b = by_name[c.backend]
        assert first_failure(spec, b, health.get(b.name, BackendHealth())) is None
        assert c.estimate_micros == estimate_micros(b, spec)
    for name, e in excl.items():
        if name in by_name:
            assert e.code == first_failure(spec, by_name[name], health.get(name, BackendHealth()))
        assert e.reason and name in json.dumps(plan.to_quote())
    if spec.backend is not None:
        assert cand <= {spec.backend}
        assert all(e.code is ExclusionCode.NOT_PINNED for n, e in excl.items()
                   if n != spec.backend)
    if spec.strategy is Strategy.CHEAPEST and plan.candidates:
        ests = [c.estimate_micros for c in plan.candidates]
        assert ests[0] == min(ests) and ests == sorted(ests)
    assert plan.worst_case_micros == max((c.estimate_micros for c in plan.candidates),
                                         default=0)
    quote = json.loads(json.dumps(plan.to_quote()))
    assert [c["backend"] for c in quote["candidates"]] == [c.backend for c in plan.candidates]
    back = RoutePlan.from_quote(quote)
    assert back.backends == plan.backends
    assert [(e.backend, e.code, e.reason) for e in back.excluded] == [
        (e.backend, e.code, e.reason) for e in plan.excluded]
    assert [c.components for c in back.candidates] == [
        {k: round(v, 6) for k, v in c.components.items()} for c in plan.candidates]
    assert [c.estimate_micros for c in RoutePlan.from_quote(quote).candidates] == [
        c.estimate_micros for c in plan.candidates]


def video(**kw: Any) -> JobSpec:
    return JobSpec.model_validate({"kind": "video", "input": {"prompt": "a cat", "duration_s": 8,
                                                              "resolution": "720p"}, **kw})


def test_shipped_catalogue_cheapest_standard_video() -> None:
    plan = plan_route(video(), SHIPPED, {}, now=NOW)
    assert plan.backends == ("vid-standard", "vid-standard-b", "vid-premium")
    assert [c.estimate_micros for c in plan.candidates] == [1_200_000, 1_440_000, 3_600_000]
    assert plan.worst_case_micros == 3_600_000
    codes = {e.backend: e.code for e in plan.excluded}
    assert codes["vid-draft"] is ExclusionCode.TIER_TOO_LOW
    assert codes["txt-small"] is ExclusionCode.WRONG_KIND
    quote = plan.to_quote()
    first = quote["candidates"][0]
    assert first["estimated_cost_usd"] == 1.2 and first["score"] == 1.0
    assert "estimate $1.200000 (worst case)" in first["reasons"]
    vid_draft = next(e for e in quote["excluded"] if e["backend"] == "vid-draft")
    assert vid_draft["reason"] == "tier draft is below standard"


def test_max_cost_and_breaker_exclude_but_capacity_does_not() -> None:
    health = {
        "vid-standard": BackendHealth(BreakerState(BreakerStatus.OPEN, 3, 1, NOW + 30)),
        "vid-standard-b": BackendHealth(in_flight=50),
    }
    plan = plan_route(video(max_cost_usd=3), SHIPPED, health, now=NOW)
    # a full backend stays a candidate (the job waits for a slot when it runs)
    assert plan.backends == ("vid-standard-b",)
    full = plan.candidates[0]
    assert (full.in_flight, full.max_concurrency) == (50, 50)
    assert "in flight 50/50" in full.reasons(plan.strategy, plan.weights)
    reasons = {e.backend: e.reason for e in plan.excluded}
    assert reasons["vid-standard"] == "breaker open (3 strikes) for 30.0 s more"
    assert reasons["vid-premium"] == "estimate $3.600000 is over max_cost_usd $3.000000"
    # once the cooldown is over the backend is a candidate again (for the probe)
    later = plan_route(video(max_cost_usd=3), SHIPPED, health, now=NOW + 30)
    assert later.backends == ("vid-standard", "vid-standard-b")


def test_pin_overrides_tier_but_not_breaker() -> None:
    plan = plan_route(video(backend="vid-draft"), SHIPPED, {}, now=NOW)
    assert plan.backends == ("vid-draft",) and plan.pinned == "vid-draft"
    assert len(plan.excluded) == len(SHIPPED) - 1
    opened = {"vid-draft": BackendHealth(BreakerState(BreakerStatus.OPEN, 3, 1, NOW + 5))}
    plan = plan_route(video(backend="vid-draft"), SHIPPED, opened, now=NOW)
    assert plan.backends == ()
    assert {e.code for e in plan.excluded} == {ExclusionCode.NOT_PINNED,
                                               ExclusionCode.BREAKER_OPEN}


def test_an_observed_latency_of_zero_ranks_fastest_and_raises_nothing() -> None:
    """A health store holding 0 ms for a backend (a result adopted without a latency, before
    that was fixed) must not divide by zero: every plan with the backend would fail."""
    health = {"vid-standard": BackendHealth(success_rate=1.0, latency_ms=0.0),
              "vid-standard-b": BackendHealth(success_rate=0.5, latency_ms=0.0),
              "vid-premium": BackendHealth(success_rate=1.0, latency_ms=600.0)}
    for strategy in ("cheapest", "fastest", "balanced"):
        plan = plan_route(video(strategy=strategy), SHIPPED, health, now=NOW)
        assert set(plan.backends) == {"vid-standard", "vid-standard-b", "vid-premium"}
    fastest = plan_route(video(strategy="fastest"), SHIPPED, health, now=NOW)
    assert fastest.candidates[0].components["speed"] == 1.0


def test_fastest_and_balanced() -> None:
    health = {
        "vid-standard": BackendHealth(success_rate=0.5, latency_ms=900.0),
        "vid-standard-b": BackendHealth(success_rate=1.0, latency_ms=300.0),
        "vid-premium": BackendHealth(success_rate=1.0, latency_ms=600.0),
    }
    fastest = plan_route(video(strategy="fastest"), SHIPPED, health, now=NOW)
    assert fastest.backends == ("vid-standard-b", "vid-premium", "vid-standard")
    assert fastest.candidates[0].latency_source == "observed"
    balanced = plan_route(video(strategy="balanced"), SHIPPED, health, now=NOW)
    # vid-standard is cheapest but fails half its calls and is slow: b wins on balance.
    # vid-standard's effective cost counts the failover to b its failures cause:
    # 0.5 x 1.20 + 0.5 x 1.44 = 1.32
    assert balanced.backends[0] == "vid-standard-b"
    top = balanced.candidates[0]
    assert balanced.candidates[1].effective_micros == 1_320_000
    assert top.components == {"cost": 1_320_000 / 1_440_000, "reliability": 1.0, "speed": 1.0,
                              "quality": 0.0}
    assert abs(top.score - (0.55 * 1_320_000 / 1_440_000 + 0.25 + 0.10)) < 1e-12
    assert balanced.candidates[-1].components["quality"] == 0.5  # premium over standard
    assert any("score" in r and "reliability" in r
               for r in balanced.to_quote()["candidates"][0]["reasons"])


def test_unknown_pin() -> None:
    plan = plan_route(video(backend="nope"), SHIPPED, {}, now=NOW)
    assert plan.backends == () and plan.worst_case_micros == 0
    assert plan.excluded[-1].code is ExclusionCode.UNKNOWN_BACKEND
    assert plan.nothing_eligible() == (
        "the job is pinned to 'nope': no backend 'nope' in the catalogue")


def test_why_nothing_is_eligible_names_the_pinned_backends_own_reason() -> None:
    opened = {"vid-draft": BackendHealth(BreakerState(BreakerStatus.OPEN, 3, 1, NOW + 5))}
    pinned = plan_route(video(backend="vid-draft"), SHIPPED, opened, now=NOW)
    assert pinned.nothing_eligible() == (
        "the job is pinned to 'vid-draft': breaker open (3 strikes) for 5.0 s more")
    unpinned = plan_route(video(max_cost_usd=0.000001), SHIPPED, {}, now=NOW)
    assert unpinned.backends == ()
    assert unpinned.nothing_eligible() == "no backend can run this job"


def text_backend(name: str, usd_per_1k: float, tier: str = "standard") -> BackendSpec:
    return BackendSpec.model_validate({
        "name": name, "protocol": "openai", "base_url": "http://127.0.0.1:1", "kinds": ["text"],
        "tier": tier, "max_concurrency": 1,
        "price": {"model": "per_token", "usd_per_1k_input": usd_per_1k,
                  "usd_per_1k_output": usd_per_1k}})


def test_balanced_failover_ties_do_not_follow_the_catalogues_order() -> None:
    """A flaky cheap backend's effective figures count its failover, the candidate cheapest
    ranks first: of two at the same price, the faster one (the tie-break), wherever each is
    listed. Picked by listing order, the choice of backend changed with the YAML's order."""
    a, b, c = text_backend("a", 0.001), text_backend("b", 0.002), text_backend("c", 0.002)
    spec = JobSpec.model_validate({"kind": "text", "strategy": "balanced",
                                   "input": {"prompt": "hi", "max_tokens": 1000}})
    health = {"a": BackendHealth(success_rate=0.62, latency_ms=300.0),
              "b": BackendHealth(success_rate=1.0, latency_ms=100.0),
              "c": BackendHealth(success_rate=1.0, latency_ms=3000.0)}
    plans = [plan_route(spec, order, health, now=NOW) for order in ([a, b, c], [a, c, b])]
    assert plans[0].backends == plans[1].backends == ("a", "b", "c")
    assert plans[0].candidates == plans[1].candidates
    flaky, fast = plans[0].candidates[:2]
    assert abs(flaky.effective_micros - (0.62 * flaky.expected + 0.38 * fast.expected)) <= 0.5
    assert abs(flaky.speed - 100.0 / (300.0 + 0.38 * 100.0)) < 1e-12  # b's latency, not c's


def test_balanced_counts_what_a_flaky_backends_billed_failures_cost() -> None:
    """A per_compute_second backend bills its failed runs too: under ``balanced`` a job that
    fails there pays for that run *and* for the failover. Counted, the flaky one (cheaper,
    faster, failing 20 %) costs more than the steady one and loses; without the failures'
    bill (0.8 x 0.09 + 0.2 x 0.10 = $0.092, below the steady $0.10) it would win."""
    flaky = BackendSpec.model_validate({
        "name": "flaky", "protocol": "predictions", "base_url": "http://127.0.0.1:1",
        "kinds": ["text"], "tier": "standard", "max_concurrency": 1,
        "timeouts": {"start_to_close_s": 100},
        "price": {"model": "per_compute_second", "usd_per_second": 0.0009}})
    steady = BackendSpec.model_validate({
        "name": "steady", "protocol": "openai", "base_url": "http://127.0.0.1:1",
        "kinds": ["text"], "tier": "standard", "max_concurrency": 1,
        "price": {"model": "per_request", "usd_per_request": 0.10}})
    spec = JobSpec.model_validate({"kind": "text", "strategy": "balanced",
                                   "input": {"prompt": "hi", "max_tokens": 100}})
    health = {"flaky": BackendHealth(success_rate=0.8, latency_ms=100.0),
              "steady": BackendHealth(success_rate=1.0, latency_ms=1000.0)}
    plan = plan_route(spec, [flaky, steady], health, now=NOW)
    assert plan.backends == ("steady", "flaky")
    first, second = plan.candidates
    assert (second.expected, first.expected) == (90_000, 100_000)
    # 0.8 x 0.09 + 0.2 x (0.09 billed for the failed run + 0.10 on the failover) = $0.11
    assert second.effective_micros == 110_000
    assert first.effective_micros == 100_000
    assert first.components["cost"] == 1.0
    assert abs(second.components["cost"] - 100_000 / 110_000) < 1e-12
    assert "effective cost $0.110000 (with its failures' bill and the failover they cause)" \
        in plan.to_quote()["candidates"][1]["reasons"]
    # the same backend priced per request (a failure bills nothing) still wins: $0.092
    free = flaky.model_copy(update={"protocol": "openai", "price": PerRequestPrice(
        model="per_request", usd_per_request=Decimal("0.09"))})
    unbilled = plan_route(spec, [free, steady], health, now=NOW)
    assert unbilled.backends == ("flaky", "steady")
    assert unbilled.candidates[0].effective_micros == 92_000
    # cheapest ranks on price alone, billed failures or not
    cheap = plan_route(spec.model_copy(update={"strategy": Strategy.CHEAPEST}),
                       [flaky, steady], health, now=NOW)
    assert cheap.backends == ("flaky", "steady")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0.001, 0.002, 0.003]),
                          st.sampled_from(["draft", "standard", "premium"]),
                          st.none() | st.sampled_from([0.3, 0.6, 0.62, 0.9, 1.0]),
                          st.none() | st.sampled_from([100.0, 300.0, 3000.0]),
                          st.none() | st.sampled_from([500_000, 1_000_000])),
                min_size=2, max_size=5),
       st.sampled_from(list(Strategy)), st.randoms(use_true_random=False))
def test_the_catalogues_order_changes_no_plan(
        rows: list[tuple[float, str, float | None, float | None, int | None]],
        strategy: Strategy, rnd: Any) -> None:
    """Same prices, health and calibration, backends listed in another order: same plan."""
    backends = [text_backend(f"b{i}", p, t) for i, (p, t, *_) in enumerate(rows)]
    health = {f"b{i}": BackendHealth(success_rate=s, latency_ms=lat)
              for i, (_, _, s, lat, _) in enumerate(rows)}
    cal = {f"b{i}": Factor(f, 5, "per_token") for i, (*_, f) in enumerate(rows) if f is not None}
    spec = JobSpec.model_validate({"kind": "text", "tier": "draft", "strategy": strategy,
                                   "input": {"prompt": "hi", "max_tokens": 1000}})
    shuffled = list(backends)
    rnd.shuffle(shuffled)
    plan = plan_route(spec, backends, health, now=NOW, calibration=cal)
    again = plan_route(spec, shuffled, health, now=NOW, calibration=cal)
    assert again.candidates == plan.candidates
