"""Process start-up wiring: which sinks run, from settings."""

from __future__ import annotations

import atexit
import logging
from typing import Any

from orchestrator.metrics.cloud_monitoring import MIN_SPACING_S, CloudMonitoringSink
from orchestrator.metrics.recorder import Recorder, Sink, get_recorder

log = logging.getLogger("orchestrator.metrics")
_atexit_registered = False


def configure_from_settings(role: str, settings: Any = None, *,
                            recorder: Recorder | None = None) -> list[Sink]:
    """Attach the sinks the settings ask for to the process-wide recorder and return them.

    ``role`` ("api", "worker", "beat"...) becomes the ``job`` label of the ``generic_task``
    resource; ``task_id`` is unique per process. Cloud Monitoring runs when
    ``ORCH_GCP_PROJECT`` is set (plain gRPC to ``ORCH_GCP_MONITORING_ENDPOINT`` when that is
    set). ``ORCH_GCP_FLUSH_INTERVAL_S`` (default 10) is how often the exporter thread wakes
    up; a series is still written at most every 10 s. Prometheus needs no sink: it reads the
    recorder at scrape time. Call it in each process after forking (Celery:
    ``worker_process_init``), never before.
    """
    global _atexit_registered
    if settings is None:
        from orchestrator.settings import get_settings

        settings = get_settings()
    rec = recorder or get_recorder()
    sinks: list[Sink] = []
    if settings.gcp_project:
        sinks.append(CloudMonitoringSink(
            settings.gcp_project, endpoint=settings.gcp_monitoring_endpoint, job=role,
            flush_interval_s=settings.gcp_flush_interval_s or MIN_SPACING_S))
        log.info("cloud monitoring export on for project %s (%s)", settings.gcp_project,
                 "custom endpoint" if settings.gcp_monitoring_endpoint else "googleapis")
    rec.configure(sinks)
    if not _atexit_registered:
        atexit.register(shutdown)
        _atexit_registered = True
    return sinks


def shutdown(timeout_s: float = 5.0) -> None:
    """Stop the sinks of the process-wide recorder (each does a last bounded flush)."""
    get_recorder().close(timeout_s)
