"""Prometheus exposition of the recorder's figures (same series as Cloud Monitoring).

* API: ``GET /metrics`` returns :func:`prometheus_payload` (body, content type); with
  ``ORCH_METRICS_ADDR`` the API serves it on that address instead (:func:`start_metrics_server`).
* Workers: one HTTP port per worker *process* — :func:`start_worker_metrics_server`. The
  recorder aggregates in the memory of the process that records, so each recording process
  needs its own exposition. Celery workers should run ``--pool threads`` (tasks are short,
  I/O-bound HTTP calls, DESIGN §3), which makes one worker = one process = one port. With the
  prefork pool, call it from ``worker_process_init`` with ``base_port + child index`` (or rely
  on Cloud Monitoring, whose ``task_id`` is already per process). A multiprocess directory
  (``PROMETHEUS_MULTIPROC_DIR``) is not used: it only works with prometheus_client's own
  metric objects, whose per-event mmap writes would cost more than the recorder's budget.

Names: ``orchestrator_<name>`` with ``_total`` for counters, ``_seconds``/``_usd`` units;
histogram buckets are the catalogue's explicit bounds (a sample equal to a bound counts in the
next bucket, as in Cloud Monitoring).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from itertools import accumulate
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client import start_http_server as _start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from orchestrator.metrics.catalogue import Kind, MetricDef
from orchestrator.metrics.freshness import GAUGE_STALE_S, GaugeFreshness
from orchestrator.metrics.recorder import (
    Clock,
    DistributionValue,
    Point,
    Recorder,
    get_recorder,
)

log = logging.getLogger("orchestrator.metrics.prometheus")


class RecorderCollector(Collector):
    """A prometheus_client collector reading a :class:`Recorder` snapshot at scrape time;
    a gauge this process has not set for :data:`GAUGE_STALE_S` is left out
    (:mod:`orchestrator.metrics.freshness`)."""

    def __init__(self, recorder: Recorder | None = None, *,
                 clock: Clock = time.monotonic, gauge_stale_s: float = GAUGE_STALE_S) -> None:
        self._recorder = recorder
        self._clock = clock
        self._fresh = GaugeFreshness(gauge_stale_s)

    def collect(self) -> Iterable[Metric]:
        """Every family of the catalogue, with or without samples: a scraper (and a dashboard
        checked against it) sees each name with its HELP and TYPE from the process's start,
        not only after the first job."""
        recorder = self._recorder or get_recorder()
        by_metric: dict[str, list[Point]] = {}
        now = self._clock()
        for p in recorder.snapshot():
            if self._fresh.fresh(p, now):
                by_metric.setdefault(p.metric.name, []).append(p)
        catalogue = recorder.catalogue
        for name in sorted(catalogue):
            yield _family(catalogue[name], by_metric.get(name, []))


def _family(m: MetricDef, points: list[Point]) -> Metric:
    keys = list(m.labels)
    fam: Any
    if m.kind is Kind.CUMULATIVE:
        fam = CounterMetricFamily(m.prom_name, m.description, labels=keys)
    elif m.kind is Kind.GAUGE:
        fam = GaugeMetricFamily(m.prom_name, m.description, labels=keys)
    else:
        fam = HistogramMetricFamily(m.prom_name, m.description, labels=keys)
    for p in points:
        values = [v for _, v in p.labels]
        if isinstance(p.value, DistributionValue):
            d = p.value
            cum = list(accumulate(d.bucket_counts))
            buckets = [(_le(b), float(c)) for b, c in zip(d.bounds, cum, strict=False)]
            buckets.append(("+Inf", float(d.count)))
            fam.add_metric(values, buckets, d.sum)
        else:
            fam.add_metric(values, float(p.value))
    return fam  # type: ignore[no-any-return]


def _le(bound: float) -> str:
    return repr(float(bound))


def registry_for(recorder: Recorder | None = None) -> CollectorRegistry:
    """A registry exposing ``recorder`` (default: the process-wide one) and the process's own
    figures: CPU, memory, open file descriptors (``process_*``), garbage collections
    (``python_gc_*``) and the interpreter (``python_info``), read at scrape time."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RecorderCollector(recorder))
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


_default_registry: CollectorRegistry | None = None


def prometheus_payload(recorder: Recorder | None = None) -> tuple[bytes, str]:
    """The ``/metrics`` body and its content type, for the API route."""
    global _default_registry
    if recorder is None:
        if _default_registry is None:
            _default_registry = registry_for(None)
        registry = _default_registry
    else:
        registry = registry_for(recorder)
    return generate_latest(registry), CONTENT_TYPE_LATEST


def start_metrics_server(port: int, addr: str = "127.0.0.1",
                         recorder: Recorder | None = None) -> int:
    """Serve ``/metrics`` for this process on ``addr:port`` (0 = any free port) from a daemon
    thread; returns the bound port. A worker's own port, and the API's when
    ``ORCH_METRICS_ADDR`` moves its ``/metrics`` off the API's port."""
    server, _thread = _start_http_server(port, addr=addr, registry=registry_for(recorder))
    bound = int(server.server_address[1])
    log.info("metrics on http://%s:%d/metrics", addr, bound)
    return bound


start_worker_metrics_server = start_metrics_server


def iter_families(recorder: Recorder | None = None) -> Iterator[Metric]:
    yield from RecorderCollector(recorder).collect()
