"""Routing (pure): which backends may run a job, in which order, and why (DESIGN §4).

1. Filter: supports the kind, tier >= requested, accepts the job's input (declares every
   field, with a range that admits its value, and the job sets every field it requires:
   ``domain.params``), priceable, estimate <= max_cost_usd, breaker not open (nor a probe in
   flight). A backend at its concurrency limit stays a candidate
   (its ``in_flight``/``max_concurrency`` are shown): capacity is taken when the job runs,
   where a job that finds every candidate full waits in the queue for a slot instead of
   being refused at the door (``service.runner``).
2. Rank by the strategy (``domain.ranking``):
   - ``cheapest`` (default): lowest *expected* cost first (the worst-case estimate times the
     backend's calibration, ``domain.calibration``; the estimate itself while a backend has
     none; ties: lower estimate, more reliable, then faster);
   - ``fastest``: lowest latency first (observed EWMA, else the catalogue's hint; unknown last);
   - ``balanced``: highest weighted score of cost, reliability, speed and quality surplus,
     where cost and speed are *effective*: a backend that fails with probability 1 - s sends
     that share of its jobs on to the failover (the cheapest other candidate), so its
     expected cost is s x expected + (1 - s) x the failover's expected cost, and its
     latency its own plus (1 - s) x the failover's.
3. Return a plan with every candidate's estimate and score components and every excluded
   backend's reason. A pinned backend is the only candidate (its tier is the caller's choice)
   but the breaker and max_cost_usd still apply.

Holds stay on the worst case: ``RoutePlan.worst_case_micros`` is the highest *estimate* of the
plan, whatever the calibration says.

Score components are all in [0, 1], higher is better: ``cost`` = cheapest expected cost / this
expected cost (effective costs under ``balanced``), ``reliability`` = observed success rate
(1.0 with no data), ``speed`` = fastest latency / this latency (effective under
``balanced``; 0.5 unknown), ``quality`` = tiers above the requested one / 2.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

from orchestrator.domain.breaker import UNKNOWN, BackendHealth, BreakerStatus, Refusal, refusal
from orchestrator.domain.calibration import Factor
from orchestrator.domain.catalogue import BackendSpec, Catalogue
from orchestrator.domain.jobs import JobSpec, Kind, Strategy
from orchestrator.domain.money import format_usd, micros_to_usd, usd_to_micros
from orchestrator.domain.params import checker
from orchestrator.domain.pricing import NotPriceable, price_quantities, quantities
from orchestrator.domain.ranking import BalancedWeights, Candidate, rank

__all__ = ["BalancedWeights", "Candidate", "Exclusion", "ExclusionCode", "RoutePlan",
           "plan_route"]


class ExclusionCode(StrEnum):
    UNKNOWN_BACKEND = "unknown_backend"
    NOT_PINNED = "not_pinned"
    WRONG_KIND = "wrong_kind"
    TIER_TOO_LOW = "tier_too_low"
    INPUT_NOT_ACCEPTED = "input_not_accepted"
    INPUT_REFUSED = "input_refused"
    INPUT_MISSING = "input_missing"
    NOT_PRICEABLE = "not_priceable"
    OVER_MAX_COST = "over_max_cost"
    BREAKER_OPEN = "breaker_open"
    PROBE_IN_FLIGHT = "probe_in_flight"
    AT_CAPACITY = "at_capacity"  # no longer produced; read back from plans stored before


class Exclusion(NamedTuple):
    """An excluded backend. ``info`` holds the figures; ``reason`` renders them (lazily, so
    routing itself formats no strings)."""

    backend: str
    code: ExclusionCode
    info: tuple[Any, ...] = ()

    @property
    def reason(self) -> str:
        code, i = self.code, self.info
        if code is ExclusionCode.NOT_PINNED:
            return f"job is pinned to {i[0]}"
        if code is ExclusionCode.WRONG_KIND:
            return f"does not run {i[0]} jobs"
        if code is ExclusionCode.TIER_TOO_LOW:
            return f"tier {i[0]} is below {i[1]}"
        if code is ExclusionCode.INPUT_NOT_ACCEPTED:
            return f"does not accept input.{i[0]}"
        if code is ExclusionCode.INPUT_REFUSED:
            return str(i[2].refusal(i[0], i[1]))
        if code is ExclusionCode.INPUT_MISSING:
            return f"requires input.{i[0]}"
        if code is ExclusionCode.OVER_MAX_COST:
            return (f"estimate {format_usd(i[0])} is over max_cost_usd {format_usd(i[1])}")
        if code is ExclusionCode.BREAKER_OPEN:
            return f"breaker open ({i[0]} strikes) for {i[1]:.1f} s more"
        if code is ExclusionCode.PROBE_IN_FLIGHT:
            return (f"breaker half-open with its probe in flight ({i[0]} strikes) "
                    f"for {i[1]:.1f} s more")
        if code is ExclusionCode.AT_CAPACITY:
            return f"at capacity: {i[0]}/{i[1]} in flight"
        if code is ExclusionCode.UNKNOWN_BACKEND:
            return f"no backend {i[0]!r} in the catalogue"
        return str(i[0]) if i else code.value  # not_priceable, or a reason read back


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

    def nothing_eligible(self) -> str:
        """Why a plan without candidates has none, in one line: a pinned backend's own reason
        (one the catalogue does not have, above all), else that none could run the job."""
        if self.pinned is not None:
            why = next((e.reason for e in self.excluded if e.backend == self.pinned
                        and e.code is not ExclusionCode.NOT_PINNED), None)
            if why is not None:
                return f"the job is pinned to {self.pinned!r}: {why}"
        return "no backend can run this job"

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
                    "expected_cost_usd": micros_to_usd(c.expected),
                    "expected_cost_micros": c.expected,
                    "calibration": None if c.calibration_ppm is None else {
                        "ratio": c.calibration_ppm / 1e6, "samples": c.calibration_samples},
                    "price_model": c.price_model,
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
                cost=float(c.get("components", {}).get("cost", 0.0)),
                reliability=float(c.get("components", {}).get("reliability", 0.0)),
                speed=float(c.get("components", {}).get("speed", 0.0)),
                quality=float(c.get("components", {}).get("quality", 0.0)),
                expected_micros=int(c.get("expected_cost_micros", -1)),
                price_model=str(c.get("price_model", "")),
            )
            for c in data.get("candidates", [])
        )
        excl = tuple(
            Exclusion(e["backend"], ExclusionCode.NOT_PRICEABLE, (e["reason"],))
            if e.get("code") in (None, ExclusionCode.NOT_PRICEABLE.value) else
            _Readback(e["backend"], ExclusionCode(e["code"]), (e["reason"],))
            for e in data.get("excluded", [])
        )
        return cls(Strategy(data.get("strategy", "cheapest")), cands, excl, data.get("pinned"))


class _Readback(Exclusion):
    """An exclusion read back from a stored quote: its reason is the stored text."""

    @property
    def reason(self) -> str:
        return str(self.info[0])


class _Row:
    """A backend's routing facts, precomputed once per catalogue."""

    __slots__ = ("hint", "inputs", "kinds", "max_conc", "name", "rank", "spec", "tier")

    def __init__(self, b: BackendSpec) -> None:
        self.name = b.name
        self.kinds = frozenset(b.kinds)
        self.rank = b.tier.rank
        self.tier = b.tier.value
        self.spec = b
        self.max_conc = b.max_concurrency
        self.hint = b.expected_latency_ms
        # per kind: a predicate per accepted parameter, and the names a job must set
        self.inputs: dict[Kind, tuple[dict[str, Callable[[Any], bool]], tuple[str, ...]]] = {
            k: ({n: checker(p) for n, p in t.items()},
                tuple(n for n, p in t.items() if p.required))
            for k, t in b.accepts.items()
        }


def _input_refusal(
    r: _Row, kind: Kind, inp: dict[str, Any]
) -> tuple[ExclusionCode, tuple[Any, ...]] | None:
    """Why ``r`` refuses the job's input (the first field it refuses), or None."""
    checks, required = r.inputs[kind]
    for key, value in inp.items():
        ok = checks.get(key)
        if ok is None:
            return ExclusionCode.INPUT_NOT_ACCEPTED, (key,)
        if not ok(value):
            return ExclusionCode.INPUT_REFUSED, (key, value, r.spec.accepts[kind][key])
    for key in required:
        if key not in inp:
            return ExclusionCode.INPUT_MISSING, (key,)
    return None


_ROWS: dict[int, tuple[tuple[BackendSpec, ...], list[_Row]]] = {}


def _rows(backends: Iterable[BackendSpec]) -> list[_Row]:
    """Rows for ``backends``; memoised for immutable tuples (a Catalogue's ``backends``)."""
    if isinstance(backends, Catalogue):
        backends = backends.backends
    if not isinstance(backends, tuple):
        return [_Row(b) for b in backends]
    hit = _ROWS.get(id(backends))
    if hit is not None and hit[0] is backends:
        return hit[1]
    rows = [_Row(b) for b in backends]
    if len(_ROWS) >= 64:
        _ROWS.clear()
    _ROWS[id(backends)] = (backends, rows)
    return rows


def plan_route(
    spec: JobSpec,
    backends: Iterable[BackendSpec],
    health: Mapping[str, BackendHealth] | None = None,
    *,
    now: float,
    weights: BalancedWeights = BalancedWeights(),
    calibration: Mapping[str, Factor] | None = None,
) -> RoutePlan:
    """The ranked plan for ``spec`` over ``backends`` given their ``health`` at ``now`` and
    their ``calibration`` (backend -> learnt factor; a missing one ranks on the estimate)."""
    health = health or {}
    calibration = calibration or {}
    pin = spec.backend
    tier = spec.tier
    want_rank = tier.rank
    max_cost = spec.max_cost_micros
    q = quantities(spec)
    kind = spec.kind
    inp = spec.input
    excluded: list[Exclusion] = []
    passed: list[tuple[_Row, int, BackendHealth, Factor | None]] = []
    pin_seen = False
    for r in _rows(backends):
        name = r.name
        if pin is not None and name != pin:
            excluded.append(Exclusion(name, ExclusionCode.NOT_PINNED, (pin,)))
            continue
        pin_seen = True
        if kind not in r.kinds:
            excluded.append(Exclusion(name, ExclusionCode.WRONG_KIND, (kind.value,)))
            continue
        if pin is None and r.rank < want_rank:
            excluded.append(Exclusion(name, ExclusionCode.TIER_TOO_LOW, (r.tier, tier.value)))
            continue
        refused = _input_refusal(r, kind, inp)
        if refused is not None:
            excluded.append(Exclusion(name, *refused))
            continue
        try:
            est = price_quantities(r.spec, q)
        except NotPriceable as exc:
            excluded.append(Exclusion(name, ExclusionCode.NOT_PRICEABLE, (str(exc),)))
            continue
        if max_cost is not None and est > max_cost:
            excluded.append(Exclusion(name, ExclusionCode.OVER_MAX_COST, (est, max_cost)))
            continue
        h = health.get(name, UNKNOWN)
        br = h.breaker
        if br.status is not BreakerStatus.CLOSED:
            why = refusal(br, now)
            if why is not None:
                if why is Refusal.BREAKER_OPEN:
                    code, until = ExclusionCode.BREAKER_OPEN, br.retry_at
                else:
                    code, until = ExclusionCode.PROBE_IN_FLIGHT, br.probe_until
                excluded.append(Exclusion(name, code, (br.strikes, max(0.0, until - now))))
                continue
        factor = calibration.get(name)
        if factor is not None and factor.price_model != r.spec.price.model:
            factor = None  # learnt under another price model
        passed.append((r, est, h, factor))
    if pin is not None and not pin_seen:
        excluded.append(Exclusion(pin, ExclusionCode.UNKNOWN_BACKEND, (pin,)))
    return RoutePlan(spec.strategy, rank(spec, passed, weights), tuple(excluded), pin, weights)
