"""The Celery app (DESIGN §3). ``celery -A workers.celery_app worker|beat|flower`` (Flower on
127.0.0.1 behind basic auth by default: workers.flower_defaults).

Settings that make "no job lost, never paid twice" hold: late acks and reject on worker loss
(a killed worker's task is redelivered), prefetch 1, a visibility timeout far above any task,
JSON only, and task arguments that are ids only (Flower shows them).

No Celery time limit: ``orchestrator worker`` runs the thread pool, which enforces none. A step
is bounded by its one provider call's window instead (the catalogue's ``timeouts``, in-call
retries included), which the attempt's lease covers. The shipped catalogue's longest window
is minutes, far below the hour; a catalogue whose ``read_s`` comes near the hour gets a
running step's message handed out again, and that second step finds the call in flight
and only looks again once its window has passed (the attempt's lease; transitions are
guarded, so the two steps cannot both act).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import click
from celery import Celery, signals
from kombu.entity import Queue
from pydantic import ValidationError

from orchestrator.errors import ConfigurationError
from orchestrator.settings import get_settings, resolve_redis_url, setting_error
from workers.broker import transport_for
from workers.flower_defaults import for_flower_command

log = logging.getLogger(__name__)

QUEUES = ("jobs.high", "jobs.normal", "jobs.low", "maintenance")
GAUGES_EVERY_S = 15.0
VISIBILITY_TIMEOUT_S = 3600


def _broker_url() -> str:
    # the broker only: Flower (`celery -A workers.celery_app flower`) needs no database
    try:
        return resolve_redis_url(get_settings())
    except (ConfigurationError, ValidationError) as exc:
        if click.get_current_context(silent=True) is None:  # imported, not `celery -A`
            raise
        # `celery -A` prints any error loading the app under its traceback: say it in a line
        error = setting_error(exc) if isinstance(exc, ValidationError) else exc
        raise SystemExit(f"error: {error}") from None


BROKER_URL = _broker_url()
app = Celery("orchestrator", broker=BROKER_URL, include=["workers.tasks"])
app.conf.update(
    broker_transport=transport_for(BROKER_URL),  # one redis client per channel, not per message
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_S},
    broker_connection_retry_on_startup=True,
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_default_queue="jobs.normal",
    task_queues=[Queue(q) for q in QUEUES],  # type: ignore[no-untyped-call]
    task_routes={"orchestrator.sweep": {"queue": "maintenance"},
                 "orchestrator.deliver_alerts": {"queue": "maintenance"},
                 "orchestrator.deliver_webhooks": {"queue": "maintenance"},
                 "orchestrator.expire_results": {"queue": "maintenance"},
                 "orchestrator.publish_gauges": {"queue": "maintenance"}},
    worker_hijack_root_logger=False,
    # Task events cost three Redis publishes per task; Flower switches them on in the workers
    # while it runs (its --enable_events default), so nobody pays for them unwatched.
    worker_send_task_events=False,
    beat_schedule={
        "sweep": {"task": "orchestrator.sweep", "schedule": 10.0},
        "deliver-alerts": {"task": "orchestrator.deliver_alerts", "schedule": 10.0,
                           "options": {"expires": 10.0}},
        # a run sends for up to one interval; a run not started by the next is dropped
        "deliver-webhooks": {"task": "orchestrator.deliver_webhooks",
                             "schedule": get_settings().webhook_interval_s,
                             "options": {"expires": get_settings().webhook_interval_s}},
        "expire-results": {"task": "orchestrator.expire_results", "schedule": 300.0,
                           "options": {"expires": 300.0}},
        "publish-gauges": {"task": "orchestrator.publish_gauges", "schedule": GAUGES_EVERY_S,
                           "options": {"expires": GAUGES_EVERY_S}},
    },
)

# ``celery -A workers.celery_app flower``: 127.0.0.1 and basic auth unless told otherwise
for_flower_command(get_settings())


# -- per-process start-up: logs and metrics (DESIGN §7) ---------------------------------------

@signals.setup_logging.connect  # type: ignore[untyped-decorator]
def _setup_logging(loglevel: int | str | None = None, **_: Any) -> None:
    """Celery leaves logging to us: structured (JSON) lines with secrets redacted."""
    from orchestrator.logs import configure_logging

    s = get_settings()
    configure_logging(loglevel or s.log_level, s.log_format)


def _is_prefork(worker: Any) -> bool:
    pool = getattr(worker, "pool_cls", None)
    return "prefork" in f"{getattr(pool, '__module__', '')}.{pool}"


def configure_worker_metrics(index: int | None = None) -> int | None:
    """Attach this process's metric sinks (Cloud Monitoring when ORCH_GCP_PROJECT is set) and,
    when ``ORCH_WORKER_METRICS_PORT`` is set, serve Prometheus ``/metrics`` on that port plus
    ``index`` (a prefork child's index; 0 picks a free port). Returns the bound port."""
    from orchestrator import metrics

    s = get_settings()
    metrics.configure_from_settings("worker", s)
    base = s.worker_metrics_port
    if base is None:
        return None
    try:
        return metrics.start_worker_metrics_server(
            base + (index or 0) if base else 0, addr=s.worker_metrics_addr)
    except OSError as exc:  # a busy port must not stop the worker
        log.warning("worker metrics port %s unavailable: %s", base, exc)
        return None


@signals.worker_init.connect  # type: ignore[untyped-decorator]
def _worker_init(sender: Any = None, **_: Any) -> None:
    """Thread (or solo) pool: this process runs the tasks. Prefork: the children do, and
    configure themselves in ``worker_process_init`` (threads do not survive a fork)."""
    if not _is_prefork(sender):
        configure_worker_metrics()


@signals.worker_process_init.connect  # type: ignore[untyped-decorator]
def _worker_process_init(**_: Any) -> None:
    from billiard.process import current_process

    configure_worker_metrics(int(getattr(current_process(), "index", 0) or 0))


def _say_ready() -> None:
    """Touch ORCH_READY_FILE, if set: how ``orchestrator up`` knows this process works."""
    path = os.environ.get("ORCH_READY_FILE")
    if path:
        Path(path).touch()


@signals.worker_ready.connect  # type: ignore[untyped-decorator]
def _worker_ready(**_: Any) -> None:
    """Consuming from now on: what start-up built lives as long as the worker (see
    orchestrator.runtime.heap)."""
    from orchestrator.runtime.heap import freeze_startup_heap

    freeze_startup_heap()
    _say_ready()


@signals.beat_init.connect  # type: ignore[untyped-decorator]
def _beat_init(**_: Any) -> None:
    _say_ready()


@signals.worker_shutdown.connect  # type: ignore[untyped-decorator]
def _worker_shutdown(**_: Any) -> None:
    from orchestrator import metrics

    metrics.shutdown()


@signals.worker_process_shutdown.connect  # type: ignore[untyped-decorator]
def _worker_process_shutdown(**_: Any) -> None:
    from orchestrator import metrics

    metrics.shutdown(timeout_s=2.0)
