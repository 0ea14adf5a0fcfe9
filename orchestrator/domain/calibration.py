"""Calibrated estimates (pure): what a job is expected to cost on a backend, learnt from what
that backend's settled jobs actually cost against their worst-case estimates.

Estimates (``domain.pricing``) are worst cases: a text job's estimate assumes every
``max_tokens`` comes back and a pessimistic tokenizer, a provider may bill less than it
advertises. Holds must stay on the worst case (no budget overrun), but ranking on it favours
backends whose worst case is close to their bill over ones that are cheaper in fact. So per
backend and price model we keep the ratio ``actual / estimate`` of its most recent settled
jobs (a window of ``window`` samples) and take their **median**: one odd bill (a retry billed
twice, a very long answer) moves it little, and an old price or behaviour leaves the window
after ``window`` new jobs. Below ``min_samples`` samples there is no calibration (factor
None: the expected cost is the estimate).

The expected cost is ``ceil(estimate x factor)`` micro-USD, computed in integers (the factor
is kept in parts per million) so every process derives the same figure from the same data.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

PPM = 1_000_000


@dataclass(frozen=True, slots=True)
class Sample:
    """One settled job: the worst-case estimate routing made for the backend that ran it,
    what it was charged, and the price model of that estimate."""

    backend: str
    price_model: str
    estimate_micros: int
    actual_micros: int


@dataclass(frozen=True, slots=True)
class Factor:
    """A backend's learnt ratio actual / estimate, in parts per million, and how many
    samples it rests on."""

    ppm: int
    samples: int
    price_model: str

    @property
    def ratio(self) -> float:
        return self.ppm / PPM


def median_ppm(ratios: Iterable[tuple[int, int]]) -> int:
    """The median of ``actual / estimate`` over (actual, estimate) pairs, in ppm (rounded
    half up). Empty input: ValueError."""
    values = [PPM * a / e for a, e in ratios if e > 0]
    if not values:
        raise ValueError("no samples")
    return int(statistics.median(values) + 0.5)


def learn(samples: Iterable[Sample], price_models: Mapping[str, str], *, window: int,
          min_samples: int) -> dict[str, Factor]:
    """Factors per backend from ``samples`` (newest first per backend). Only samples priced
    with the backend's current price model (``price_models``: backend -> model) count, and
    at most the ``window`` newest of them; a backend with fewer than ``min_samples`` gets
    none."""
    if window < 1 or min_samples < 1:
        raise ValueError("window and min_samples must be >= 1")
    kept: dict[str, list[tuple[int, int]]] = {}
    for s in samples:
        model = price_models.get(s.backend)
        if model is None or s.price_model != model or s.estimate_micros <= 0:
            continue
        bucket = kept.setdefault(s.backend, [])
        if len(bucket) < window:
            bucket.append((s.actual_micros, s.estimate_micros))
    return {
        name: Factor(median_ppm(pairs), len(pairs), price_models[name])
        for name, pairs in kept.items() if len(pairs) >= min_samples
    }


def expected_micros(estimate_micros: int, factor: Factor | None) -> int:
    """The calibrated expected cost: ``ceil(estimate x factor)``; the estimate itself
    without a factor."""
    if factor is None:
        return estimate_micros
    return -(-estimate_micros * factor.ppm // PPM)


def relative_error(actual_micros: int, predicted_micros: int) -> float:
    """|actual - predicted| / predicted (the report's and the benchmark's error measure);
    0 when both are 0, infinite when only the prediction is."""
    if predicted_micros <= 0:
        return 0.0 if actual_micros == 0 else float("inf")
    return abs(actual_micros - predicted_micros) / predicted_micros
