"""The one metric recorder: cheap, thread-safe, never raises into the caller.

Events are aggregated in memory, keyed by (metric, labels): a counter adds, a gauge keeps the
last value, a distribution adds the value to its buckets. Sinks read :meth:`Recorder.snapshot`
(Cloud Monitoring from its own flush thread, Prometheus on scrape); nothing a sink does can
block or fail a recording call.

Hot path cost is one dict lookup and one uncontended lock; validation against the catalogue
happens only when a new series is first seen.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from bisect import bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from orchestrator.metrics.catalogue import CATALOGUE, RECORDER_DROPPED, Kind, MetricDef

log = logging.getLogger("orchestrator.metrics")

Clock = Callable[[], float]
DEFAULT_MAX_SERIES = 20_000
_INF = float("inf")
_SNAPSHOT_SLICE = 256


@dataclass(frozen=True, slots=True)
class DistributionValue:
    count: int
    mean: float
    sum: float
    sum_of_squared_deviation: float
    bucket_counts: tuple[int, ...]  # len(bounds) + 1: underflow ... overflow
    bounds: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Point:
    """One series as read by a sink: metric, labels, start time, value and change version."""

    metric: MetricDef
    labels: tuple[tuple[str, str], ...]
    start_time: float
    value: int | float | DistributionValue
    version: int

    @property
    def key(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        return (self.metric.name, self.labels)


@runtime_checkable
class Sink(Protocol):
    """Something that exports what a recorder aggregated. Must never block the recorder."""

    name: str

    def start(self, recorder: Recorder) -> None: ...

    def close(self, timeout_s: float = 5.0) -> None: ...


class _Series:
    __slots__ = ("bounds", "buckets", "count", "kind", "labels", "m2", "mean", "metric",
                 "start", "total", "value", "version")

    def __init__(self, metric: MetricDef, labels: tuple[tuple[str, str], ...], start: float):
        self.metric = metric
        self.kind = metric.kind
        self.labels = labels
        self.start = start
        self.value: float = 0
        self.version = 0
        self.bounds = metric.buckets
        self.buckets = [0] * (len(metric.buckets) + 1)
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.total = 0.0


class Recorder:
    """Aggregates metric events in memory. See the module docstring."""

    def __init__(
        self, *, clock: Clock = time.time, max_series: int = DEFAULT_MAX_SERIES,
        catalogue: dict[str, MetricDef] | None = None,
    ) -> None:
        self._clock = clock
        self._max_series = max_series
        self._catalogue = catalogue if catalogue is not None else CATALOGUE
        self._lock = threading.Lock()
        self._by_raw: dict[tuple[Any, ...], _Series] = {}
        self._by_norm: dict[tuple[str, tuple[tuple[str, str], ...]], _Series] = {}
        self._sinks: list[Sink] = []
        self._warned: set[str] = set()

    # -- hot path ---------------------------------------------------------------------------
    def counter(self, name: str, value: int | float = 1, /, **labels: Any) -> None:
        """Add ``value`` (>= 0, finite) to a CUMULATIVE metric."""
        try:
            s = self._by_raw.get((name, *labels.items()))
            if s is None and (s := self._new(name, labels, Kind.CUMULATIVE)) is None:
                return
            # NaN and infinities are refused here: Cloud Monitoring refuses them (and a
            # non-finite total could never be written again)
            if s.kind is not Kind.CUMULATIVE or not 0 <= value < _INF:
                self._drop("bad_value", name)
                return
            with self._lock:
                s.value += value
                s.version += 1
        except Exception:
            self._drop("error", name)

    def gauge(self, name: str, value: int | float, /, **labels: Any) -> None:
        """Set a GAUGE metric to ``value`` (finite)."""
        try:
            s = self._by_raw.get((name, *labels.items()))
            if s is None and (s := self._new(name, labels, Kind.GAUGE)) is None:
                return
            if s.kind is not Kind.GAUGE or not isinstance(value, int | float) or not (
                    -_INF < value < _INF):
                self._drop("bad_value", name)
                return
            with self._lock:
                s.value = value
                s.version += 1
        except Exception:
            self._drop("error", name)

    def distribution(self, name: str, value: int | float, /, **labels: Any) -> None:
        """Add one sample (finite) to a DISTRIBUTION metric."""
        try:
            s = self._by_raw.get((name, *labels.items()))
            if s is None and (s := self._new(name, labels, Kind.DISTRIBUTION)) is None:
                return
            if s.kind is not Kind.DISTRIBUTION or not -_INF < value < _INF:
                self._drop("bad_value", name)
                return
            i = bisect_right(s.bounds, value)
            with self._lock:
                s.buckets[i] += 1
                s.count += 1
                delta = value - s.mean
                s.mean += delta / s.count
                s.m2 += delta * (value - s.mean)
                s.total += value
                s.version += 1
        except Exception:
            self._drop("error", name)

    # -- slow path --------------------------------------------------------------------------
    def _new(self, name: str, labels: dict[str, Any], kind: Kind) -> _Series | None:
        metric = self._catalogue.get(name)
        if metric is None:
            self._warn_once(f"unknown:{name}", "unknown metric %r dropped", name)
            self._drop("unknown_metric", name)
            return None
        if metric.kind is not kind:
            self._warn_once(f"kind:{name}", "metric %r is %s, not %s", name, metric.kind.value,
                            kind.value)
            self._drop("wrong_kind", name)
            return None
        extra = set(labels) - set(metric.labels)
        if extra:
            self._warn_once(f"labels:{name}:{sorted(extra)}", "metric %r: unknown labels %s",
                            name, sorted(extra))
            self._drop("bad_labels", name)
            return None
        norm = tuple((k, str(labels.get(k, ""))) for k in metric.labels)
        raw = (name, *labels.items())
        with self._lock:
            s = self._by_norm.get((name, norm))
            if s is None:
                if len(self._by_norm) >= self._max_series:
                    over = True
                else:
                    over = False
                    s = _Series(metric, norm, self._clock())
                    self._by_norm[(name, norm)] = s
            else:
                over = False
            if s is not None and len(self._by_raw) < 4 * self._max_series:
                self._by_raw[raw] = s
        if over:
            self._warn_once("max_series", "more than %d metric series; new ones dropped",
                            self._max_series)
            self._drop("too_many_series", name)
        return s

    def _drop(self, reason: str, name: str) -> None:
        if name == RECORDER_DROPPED:
            return
        self.counter(RECORDER_DROPPED, 1, reason=reason)  # never raises

    def _warn_once(self, key: str, msg: str, *args: object) -> None:
        if key not in self._warned and len(self._warned) < 1000:
            self._warned.add(key)
            log.warning(msg, *args)

    # -- reading ----------------------------------------------------------------------------
    def snapshot(self) -> list[Point]:
        """A copy of every series, each one consistent (safe from any thread). The lock is
        taken in short slices so recording callers never wait for a whole large copy."""
        out: list[Point] = []
        with self._lock:
            series = list(self._by_norm.values())
        for i in range(0, len(series), _SNAPSHOT_SLICE):
            with self._lock:
                for s in series[i : i + _SNAPSHOT_SLICE]:
                    value: int | float | DistributionValue
                    if s.kind is Kind.DISTRIBUTION:
                        value = DistributionValue(s.count, s.mean, s.total, s.m2,
                                                  tuple(s.buckets), s.bounds)
                    else:
                        value = s.value
                    out.append(Point(s.metric, s.labels, s.start, value, s.version))
        return out

    def value(self, name: str, /, **labels: Any) -> int | float | DistributionValue | None:
        """The current value of one series (labels as recorded), or None. For tests and CLI."""
        metric = self._catalogue.get(name)
        if metric is None:
            return None
        norm = tuple((k, str(labels.get(k, ""))) for k in metric.labels)
        for p in self.snapshot():
            if p.metric.name == name and p.labels == norm:
                return p.value
        return None

    @property
    def catalogue(self) -> dict[str, MetricDef]:
        """The metric definitions this recorder accepts (every family an exposition lists)."""
        return self._catalogue

    def series_count(self) -> int:
        return len(self._by_norm)

    # -- sinks ------------------------------------------------------------------------------
    @property
    def sinks(self) -> list[Sink]:
        return list(self._sinks)

    def configure(self, sinks: Iterable[Sink], *, close_timeout_s: float = 5.0) -> None:
        """Replace the sinks: close the old ones, start the new ones."""
        old, self._sinks = self._sinks, list(sinks)
        for sink in old:
            _safe(sink.close, close_timeout_s)
        for sink in self._sinks:
            _safe(sink.start, self)

    def close(self, timeout_s: float = 5.0) -> None:
        self.configure([], close_timeout_s=timeout_s)

    def _after_fork(self) -> None:
        """In a forked child: fresh lock, no inherited series, no (dead) sink threads."""
        self._lock = threading.Lock()
        self._by_raw = {}
        self._by_norm = {}
        self._sinks = []


def _safe(fn: Callable[..., object], *args: object) -> None:
    try:
        fn(*args)
    except Exception:
        log.exception("metrics sink %s failed", getattr(fn, "__qualname__", fn))


_default = Recorder()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _default._after_fork())


def get_recorder() -> Recorder:
    return _default


def configure(sinks: Iterable[Sink]) -> Recorder:
    """Attach ``sinks`` to the process-wide recorder (closing any previous ones)."""
    _default.configure(sinks)
    return _default


# Module-level shortcuts to the process-wide recorder (bound methods: no extra call layer).
counter = _default.counter
gauge = _default.gauge
distribution = _default.distribution
