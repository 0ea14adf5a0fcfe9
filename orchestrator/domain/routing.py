"""Routing (pure): which backends may run a job, in which order, and why (DESIGN §4).

1. Filter: supports the kind, tier >= requested, priceable, estimate <= max_cost_usd, breaker
   not open (nor a probe in flight), under its concurrency limit.
2. Rank by the strategy:
   - ``cheapest`` (default): lowest estimate first (ties: more reliable, then faster);
   - ``fastest``: lowest latency first (observed EWMA, else the catalogue's hint; unknown last);
   - ``balanced``: highest weighted score of cost, reliability, speed and quality surplus.
3. Return a plan with every candidate's estimate and score components and every excluded
   backend's reason. A pinned backend is the only candidate (its tier is the caller's choice)
   but the breaker, capacity and max_cost_usd still apply.

Score components are all in [0, 1], higher is better: ``cost`` = cheapest estimate / this
estimate, ``reliability`` = observed success rate (1.0 with no data), ``speed`` = fastest
latency / this latency (0.5 unknown), ``quality`` = tiers above the requested one / 2.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from orchestrator.domain.breaker import UNKNOWN, BackendHealth, Refusal, refusal
from orchestrator.domain.catalogue import BackendSpec
from orchestrator.domain.jobs import JobSpec, Strategy
from orchestrator.domain.money import format_usd, micros_to_usd, usd_to_micros
from orchestrator.domain.pricing import NotPriceable, price_quantities, quantities


class ExclusionCode(StrEnum):
    UNKNOWN_BACKEND = "unknown_backend"
    NOT_PINNED = "not_pinned"
    WRONG_KIND = "wrong_kind"
    TIER_TOO_LOW = "tier_too_low"
    NOT_PRICEABLE = "not_priceable"
    OVER_MAX_COST = "over_max_cost"
    BREAKER_OPEN = "breaker_open"
    PROBE_IN_FLIGHT = "probe_in_flight"
    AT_CAPACITY = "at_capacity"


@dataclass(frozen=True, slots=True)
class BalancedWeights:
    cost: float = 0.55
    reliability: float = 0.25
    speed: float = 0.10
    quality: float = 0.10


@dataclass(frozen=True, slots=True)
class Candidate:
    backend: str
    estimate_micros: int
    score: float
    components: dict[str, float]
    success_rate: float | None = None  # observed (None: no data yet)
    latency_ms: float | None = None  # observed EWMA or the catalogue's hint
    latency_source: str = "unknown"  # observed | hint | unknown
    quality_surplus: int = 0
    in_flight: int = 0
    max_concurrency: int = 0

    def reasons(self, strategy: Strategy, weights: BalancedWeights) -> list[str]:
        c = self.components
        out = [
            f"estimate {format_usd(self.estimate_micros)} (worst case)",
            f"quality surplus {self.quality_surplus} tier(s) over the request",
            "success rate "
            + ("no data (prior 1.0)" if self.success_rate is None
               else f"{self.success_rate:.3f} observed"),
            "latency " + ("unknown" if self.latency_ms is None
                          else f"{self.latency_ms:.0f} ms ({self.latency_source})"),
            f"in flight {self.in_flight}/{self.max_concurrency}",
        ]
        if strategy is Strategy.BALANCED:
            out.append(
                f"score {self.score:.4f} = {weights.cost}*cost {c['cost']:.3f} + "
                f"{weights.reliability}*reliability {c['reliability']:.3f} + "
                f"{weights.speed}*speed {c['speed']:.3f} + "
                f"{weights.quality}*quality {c['quality']:.3f}"
            )
        else:
            key = "cost" if strategy is Strategy.CHEAPEST else "speed"
            out.append(f"score {self.score:.4f} = {key} {c[key]:.3f} ({strategy.value})")
        return out


@dataclass(frozen=True, slots=True)
class Exclusion:
    backend: str
    code: ExclusionCode
    reason: str


@dataclass(frozen=True, slots=True)
class RoutePlan:
    strategy: Strategy
    candidates: tuple[Candidate, ...]
    excluded: tuple[Exclusion, ...]
    pinned: str | None = None
    weights: BalancedWeights = field(default_factory=BalancedWeights)

    @property
    def backends(self) -> tuple[str, ...]:
        """Candidate names, best first: the failover order."""
        return tuple(c.backend for c in self.candidates)

    @property
    def worst_case_micros(self) -> int:
        """The most the job may cost on any backend it may use (what a budget hold covers);
        0 when there is no candidate."""
        return max((c.estimate_micros for c in self.candidates), default=0)

    def to_quote(self) -> dict[str, Any]:
        """JSON-ready CONTRACT quote shape (plus a few extra fields)."""
        return {
            "strategy": self.strategy.value,
            "pinned": self.pinned,
            "worst_case_usd": micros_to_usd(self.worst_case_micros),
            "candidates": [
                {
                    "backend": c.backend,
                    "estimated_cost_usd": micros_to_usd(c.estimate_micros),
                    "estimated_cost_micros": c.estimate_micros,
                    "score": round(c.score, 6),
                    "components": {k: round(v, 6) for k, v in c.components.items()},
                    "reasons": c.reasons(self.strategy, self.weights),
                }
                for c in self.candidates
            ],
            "excluded": [
                {"backend": e.backend, "code": e.code.value, "reason": e.reason}
                for e in self.excluded
            ],
        }

    @classmethod
    def from_quote(cls, data: Mapping[str, Any]) -> RoutePlan:
        """Rebuild the ranked plan stored on a job (reason strings are not kept)."""
        cands = tuple(
            Candidate(
                backend=c["backend"],
                estimate_micros=int(c["estimated_cost_micros"])
                if "estimated_cost_micros" in c else usd_to_micros(c["estimated_cost_usd"]),
                score=float(c.get("score", 0.0)),
                components=dict(c.get("components", {})),
            )
            for c in data.get("candidates", [])
        )
        excl = tuple(
            Exclusion(e["backend"], ExclusionCode(e.get("code", "not_priceable")), e["reason"])
            for e in data.get("excluded", [])
        )
        return cls(Strategy(data.get("strategy", "cheapest")), cands, excl, data.get("pinned"))


_REFUSAL_CODE = {
    Refusal.BREAKER_OPEN: ExclusionCode.BREAKER_OPEN,
    Refusal.PROBE_IN_FLIGHT: ExclusionCode.PROBE_IN_FLIGHT,
}


def plan_route(
    spec: JobSpec,
    backends: Iterable[BackendSpec],
    health: Mapping[str, BackendHealth] | None = None,
    *,
    now: float,
    weights: BalancedWeights = BalancedWeights(),
) -> RoutePlan:
    """The ranked plan for ``spec`` over ``backends`` given their ``health`` at ``now``."""
    health = health or {}
    pin = spec.backend
    want_rank = spec.tier.rank
    max_cost = spec.max_cost_micros
    q = quantities(spec)
    kind = spec.kind
    excluded: list[Exclusion] = []
    passed: list[tuple[BackendSpec, int, BackendHealth]] = []
    pin_seen = False
    for b in backends:
        name = b.name
        if pin is not None and name != pin:
            excluded.append(Exclusion(name, ExclusionCode.NOT_PINNED, f"job is pinned to {pin}"))
            continue
        pin_seen = True
        if kind not in b.kinds:
            excluded.append(Exclusion(name, ExclusionCode.WRONG_KIND,
                                      f"does not run {kind.value} jobs"))
            continue
        if pin is None and b.tier.rank < want_rank:
            excluded.append(Exclusion(name, ExclusionCode.TIER_TOO_LOW,
                                      f"tier {b.tier.value} is below {spec.tier.value}"))
            continue
        try:
            est = price_quantities(b, q)
        except NotPriceable as exc:
            excluded.append(Exclusion(name, ExclusionCode.NOT_PRICEABLE, str(exc)))
            continue
        if max_cost is not None and est > max_cost:
            excluded.append(Exclusion(
                name, ExclusionCode.OVER_MAX_COST,
                f"estimate {format_usd(est)} is over max_cost_usd {format_usd(max_cost)}",
            ))
            continue
        h = health.get(name, UNKNOWN)
        why = refusal(h.breaker, now)
        if why is not None:
            until = h.breaker.retry_at if why is Refusal.BREAKER_OPEN else h.breaker.probe_until
            text = ("breaker open" if why is Refusal.BREAKER_OPEN else
                    "breaker half-open with its probe in flight")
            excluded.append(Exclusion(name, _REFUSAL_CODE[why],
                                      f"{text} ({h.breaker.strikes} strikes) for "
                                      f"{max(0.0, until - now):.1f} s more"))
            continue
        if h.in_flight >= b.max_concurrency:
            excluded.append(Exclusion(name, ExclusionCode.AT_CAPACITY,
                                      f"at capacity: {h.in_flight}/{b.max_concurrency} in flight"))
            continue
        passed.append((b, est, h))
    if pin is not None and not pin_seen:
        excluded.append(Exclusion(pin, ExclusionCode.UNKNOWN_BACKEND,
                                  f"no backend {pin!r} in the catalogue"))
    return RoutePlan(spec.strategy, _rank(spec, passed, weights), tuple(excluded), pin, weights)


def _rank(
    spec: JobSpec, passed: list[tuple[BackendSpec, int, BackendHealth]], w: BalancedWeights
) -> tuple[Candidate, ...]:
    if not passed:
        return ()
    min_est = min(est for _, est, _ in passed)
    lats: list[tuple[float | None, str]] = []
    for b, _, h in passed:
        if h.latency_ms is not None:
            lats.append((h.latency_ms, "observed"))
        elif b.expected_latency_ms is not None:
            lats.append((b.expected_latency_ms, "hint"))
        else:
            lats.append((None, "unknown"))
    known = [lat for lat, _ in lats if lat is not None]
    min_lat = min(known) if known else None
    strategy = spec.strategy
    want_rank = spec.tier.rank
    out: list[tuple[tuple[Any, ...], Candidate]] = []
    for (b, est, h), (lat, source) in zip(passed, lats, strict=True):
        cost = 1.0 if est <= min_est else min_est / est
        rel = 1.0 if h.success_rate is None else h.success_rate
        speed = 0.5 if lat is None or min_lat is None else min(1.0, min_lat / lat)
        surplus = max(0, b.tier.rank - want_rank)
        quality = surplus / 2.0
        comps = {"cost": cost, "reliability": rel, "speed": speed, "quality": quality}
        lat_key = float("inf") if lat is None else lat
        if strategy is Strategy.CHEAPEST:
            score = cost
            key: tuple[Any, ...] = (est, -rel, lat_key, b.name)
        elif strategy is Strategy.FASTEST:
            score = speed
            key = (lat_key, est, -rel, b.name)
        else:
            score = (w.cost * cost + w.reliability * rel + w.speed * speed
                     + w.quality * quality)
            key = (-score, est, b.name)
        out.append((key, Candidate(
            b.name, est, score, comps, h.success_rate, lat, source, surplus, h.in_flight,
            b.max_concurrency,
        )))
    out.sort(key=lambda kc: kc[0])
    return tuple(c for _, c in out)
