"""Metrics: one recorder for the API, workers and ledger; sinks behind it.

Record (cheap, thread-safe, never raises)::

    from orchestrator import metrics
    from orchestrator.metrics import catalogue as m

    metrics.counter(m.JOBS_FINISHED, kind="video", tier="standard", backend="b1",
                    status="succeeded")
    metrics.distribution(m.JOB_LATENCY, 42.0, kind="video", tier="standard", backend="b1",
                         status="succeeded")
    metrics.gauge(m.QUEUE_DEPTH, 17, queue="default")

Export, once per process at start-up (after any fork)::

    metrics.configure_from_settings(role="api")   # Cloud Monitoring when ORCH_GCP_PROJECT
    body, content_type = metrics.prometheus_payload()   # GET /metrics
    metrics.shutdown()                             # at exit: last flush, bounded

Sinks: :class:`CloudMonitoringSink` (background flush thread), Prometheus exposition
(:func:`prometheus_payload`, :func:`start_worker_metrics_server`). Policies, SLOs, dashboard:
:func:`apply_monitoring` (``orchestrator monitoring apply``).
"""

from __future__ import annotations

from orchestrator.metrics.recorder import (
    DistributionValue,
    Point,
    Recorder,
    Sink,
    configure,
    counter,
    distribution,
    gauge,
    get_recorder,
)

__all__ = [
    "CloudMonitoringSink",
    "DistributionValue",
    "Point",
    "Recorder",
    "Sink",
    "apply_monitoring",
    "configure",
    "configure_from_settings",
    "counter",
    "distribution",
    "gauge",
    "get_recorder",
    "prometheus_payload",
    "shutdown",
    "start_metrics_server",
    "start_worker_metrics_server",
]

from orchestrator.metrics.apply import apply_monitoring
from orchestrator.metrics.cloud_monitoring import CloudMonitoringSink
from orchestrator.metrics.prometheus import (
    prometheus_payload,
    start_metrics_server,
    start_worker_metrics_server,
)
from orchestrator.metrics.setup import configure_from_settings, shutdown
