"""Ranking (pure): the order of a job's candidates under its strategy, with each one's
figures (``domain.routing`` filters the backends and explains the plan).

* ``cheapest``: lowest calibrated expected cost (``domain.calibration``; the estimate while
  a backend has no factor); ties: lower estimate, more reliable, faster, name.
* ``fastest``: lowest latency (observed EWMA, else the catalogue's hint; unknown last).
* ``balanced``: highest weighted score of cost, reliability, speed and quality surplus, where
  cost and speed are *effective*: a backend that fails with probability 1 - s sends that
  share of its jobs on to the failover (the cheapest other candidate), so its expected cost
  is s x expected + (1 - s) x the failover's expected cost (plus, where its price model
  bills failed runs, what such a run costs: see :func:`_effective`), and its latency its own
  plus (1 - s) x the failover's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from orchestrator.domain.breaker import BackendHealth
from orchestrator.domain.calibration import Factor, expected_micros
from orchestrator.domain.catalogue import BILLS_FAILED_RUNS, BackendSpec
from orchestrator.domain.jobs import JobSpec, Strategy
from orchestrator.domain.money import format_usd


class Row(Protocol):
    """What ranking reads of a backend (routing's precomputed row)."""

    name: str
    rank: int
    hint: float | None
    spec: BackendSpec
    max_conc: int


@dataclass(frozen=True, slots=True)
class BalancedWeights:
    cost: float = 0.55
    reliability: float = 0.25
    speed: float = 0.10
    quality: float = 0.10


class Candidate(NamedTuple):
    backend: str
    estimate_micros: int
    score: float
    cost: float = 0.0  # score components, each in [0, 1]
    reliability: float = 0.0
    speed: float = 0.0
    quality: float = 0.0
    success_rate: float | None = None  # observed (None: no data yet)
    latency_ms: float | None = None  # observed EWMA or the catalogue's hint
    latency_source: str = "unknown"  # observed | hint | unknown
    quality_surplus: int = 0
    in_flight: int = 0
    max_concurrency: int = 0
    expected_micros: int = -1  # calibrated expected cost (-1: none recorded: the estimate)
    calibration_ppm: int | None = None  # actual / estimate learnt, in ppm (None: none yet)
    calibration_samples: int = 0
    price_model: str = ""
    effective_micros: int = -1  # balanced: the expected cost with the failover it causes

    @property
    def expected(self) -> int:
        """The calibrated expected cost (the estimate when none was recorded)."""
        return self.estimate_micros if self.expected_micros < 0 else self.expected_micros

    @property
    def components(self) -> dict[str, float]:
        return {"cost": self.cost, "reliability": self.reliability, "speed": self.speed,
                "quality": self.quality}

    def reasons(self, strategy: Strategy, weights: BalancedWeights) -> list[str]:
        c = self.components
        out = [
            f"estimate {format_usd(self.estimate_micros)} (worst case)",
            f"expected {format_usd(self.expected)} ("
            + ("no calibration yet" if self.calibration_ppm is None else
               f"x {self.calibration_ppm / 1e6:.4f}, median actual/estimate of "
               f"{self.calibration_samples} settled jobs")
            + ")",
            f"quality surplus {self.quality_surplus} tier(s) over the request",
            "success rate "
            + ("no data (prior 1.0)" if self.success_rate is None
               else f"{self.success_rate:.3f} observed"),
            "latency " + ("unknown" if self.latency_ms is None
                          else f"{self.latency_ms:.0f} ms ({self.latency_source})"),
            f"in flight {self.in_flight}/{self.max_concurrency}",
        ]
        if self.max_concurrency == 0:  # read back from a stored quote: figures only
            return out[:2]
        if strategy is Strategy.BALANCED:
            out.append(f"effective cost {format_usd(self.effective_micros)} ("
                       + ("with its failures' bill and the failover they cause)"
                          if self.price_model in BILLS_FAILED_RUNS
                          else "with the failover its failures cause)"))
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



def rank(
    spec: JobSpec, passed: Sequence[tuple[Row, int, BackendHealth, Factor | None]],
    w: BalancedWeights,
) -> tuple[Candidate, ...]:
    if not passed:
        return ()
    rows = [(r, est, h, f, expected_micros(est, f), _latency(r, h)) for r, est, h, f in passed]
    strategy = spec.strategy
    balanced = strategy is Strategy.BALANCED
    effective = _effective(rows) if balanced else {}
    min_exp = min((effective[r.name][0] if balanced else exp) for r, _, _, _, exp, _ in rows)
    lats = [(effective[r.name][1] if balanced else lat[0]) for r, *_, lat in rows]
    known = [x for x in lats if x is not None]
    min_lat = min(known) if known else None
    want_rank = spec.tier.rank
    inf = float("inf")
    out: list[tuple[tuple[Any, ...], Candidate]] = []
    for (r, est, h, f, exp, (lat, source)), eff_lat in zip(rows, lats, strict=True):
        eff = effective[r.name][0] if balanced else exp
        cost = 1.0 if eff <= min_exp else min_exp / eff
        rel = 1.0 if h.success_rate is None else h.success_rate
        # a latency of 0 (none should be recorded, but a store may hold one) is the fastest
        speed = (0.5 if eff_lat is None or min_lat is None
                 else 1.0 if eff_lat <= min_lat else min_lat / eff_lat)
        surplus = r.rank - want_rank if r.rank > want_rank else 0
        quality = surplus / 2.0
        lat_key = inf if lat is None else lat
        if strategy is Strategy.CHEAPEST:
            score = cost
            key: tuple[Any, ...] = _cheapest_key(r, est, h, exp, lat)
        elif strategy is Strategy.FASTEST:
            score = speed
            key = (lat_key, exp, -rel, r.name)
        else:
            score = (w.cost * cost + w.reliability * rel + w.speed * speed
                     + w.quality * quality)
            key = (-score, exp, r.name)
        out.append((key, Candidate(
            r.name, est, score, cost, rel, speed, quality,
            h.success_rate, lat, source, surplus, h.in_flight, r.max_conc,
            exp, None if f is None else f.ppm, 0 if f is None else f.samples,
            r.spec.price.model, eff if balanced else -1,
        )))
    out.sort(key=_first)
    return tuple(c for _, c in out)


def _latency(r: Row, h: BackendHealth) -> tuple[float | None, str]:
    if h.latency_ms is not None:
        return h.latency_ms, "observed"
    if r.hint is not None:
        return r.hint, "hint"
    return None, "unknown"


def _effective(
    rows: list[tuple[Row, int, BackendHealth, Factor | None, int, tuple[float | None, str]]],
) -> dict[str, tuple[int, float | None]]:
    """Per backend: (expected cost, latency) counting the failover its failures cause. A job
    that fails there (probability 1 - observed success rate; 0 with no data) goes on to the
    cheapest other candidate, paying that one's expected cost and adding its latency to the
    time already spent. A lone candidate has no failover: its figures are its own.

    A backend whose price model bills failed runs (``BILLS_FAILED_RUNS``: per_compute_second)
    also pays for the failed run itself, counted as its own expected cost:
    s x expected + (1 - s) x (expected + the failover's expected). Nothing records what failed
    attempts were billed (calibration learns from succeeded jobs only, health holds no cost),
    and a run may fail at the end of its work, so a failure is taken to cost what a success
    does: a run that fails early bills less, one cut off at ``start_to_close_s`` more (up to
    the estimate, the worst case). Other models bill a failure nothing here."""
    out: dict[str, tuple[int, float | None]] = {}
    # the failover: the other candidate ``cheapest`` would rank first (its ties broken the
    # same way, so the catalogue's order changes nothing)
    by_cost = sorted(rows, key=lambda x: _cheapest_key(x[0], x[1], x[2], x[4], x[5][0]))
    for r, _, h, _, exp, (lat, _) in rows:
        fo = next((o for o in by_cost if o[0] is not r), None)
        s = 1.0 if h.success_rate is None else min(1.0, max(0.0, h.success_rate))
        if fo is None or s >= 1.0:
            out[r.name] = (exp, lat)
            continue
        f_exp, f_lat = fo[4], fo[5][0]
        failed = exp if r.spec.price.model in BILLS_FAILED_RUNS else 0
        eff = round(s * exp + (1.0 - s) * (failed + f_exp))
        eff_lat = None if lat is None else lat + (1.0 - s) * (f_lat if f_lat is not None else lat)
        out[r.name] = (eff, eff_lat)
    return out


def _cheapest_key(r: Row, est: int, h: BackendHealth, exp: int, lat: float | None
                  ) -> tuple[Any, ...]:
    """``cheapest``'s order: expected cost; ties: lower estimate, more reliable, faster,
    name."""
    rel = 1.0 if h.success_rate is None else h.success_rate
    return (exp, est, -rel, float("inf") if lat is None else lat, r.name)


def _first(kc: tuple[tuple[Any, ...], Candidate]) -> tuple[Any, ...]:
    return kc[0]
