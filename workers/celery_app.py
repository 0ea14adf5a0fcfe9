"""The Celery app (DESIGN §3). ``celery -A workers.celery_app worker|beat|flower``.

Settings that make "no job lost, never paid twice" hold: late acks and reject on worker loss
(a killed worker's task is redelivered), prefetch 1, a visibility timeout far above any task,
a hard time limit below it, JSON only, and task arguments that are ids only (Flower shows them).
"""

from __future__ import annotations

from celery import Celery
from kombu.entity import Queue

from orchestrator.bootstrap import resolve_urls
from orchestrator.settings import get_settings

QUEUES = ("jobs.high", "jobs.normal", "jobs.low", "maintenance")
VISIBILITY_TIMEOUT_S = 3600
TASK_TIME_LIMIT_S = 300  # one task never waits on a backend longer than one HTTP request


def _broker_url() -> str:
    return resolve_urls(get_settings())[1]


app = Celery("orchestrator", broker=_broker_url(), include=["workers.tasks"])
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_S},
    broker_connection_retry_on_startup=True,
    task_time_limit=TASK_TIME_LIMIT_S,
    task_soft_time_limit=TASK_TIME_LIMIT_S - 30,
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_default_queue="jobs.normal",
    task_queues=[Queue(q) for q in QUEUES],  # type: ignore[no-untyped-call]
    task_routes={"orchestrator.sweep": {"queue": "maintenance"},
                 "orchestrator.deliver_alerts": {"queue": "maintenance"}},
    worker_hijack_root_logger=False,
    # Task events cost three Redis publishes per task; Flower switches them on in the workers
    # while it runs (its --enable_events default), so nobody pays for them unwatched.
    worker_send_task_events=False,
    beat_schedule={
        "sweep": {"task": "orchestrator.sweep", "schedule": 10.0},
        "deliver-alerts": {"task": "orchestrator.deliver_alerts", "schedule": 10.0},
    },
)
