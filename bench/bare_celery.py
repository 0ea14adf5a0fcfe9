"""Bare Celery for bench/throughput.py's baseline: a plain Celery app on kombu's own Redis
transport, with none of the orchestrator's code. Its settings are the orchestrator worker's
wherever they cost per task: thread pool, late acks, prefetch 1, JSON, no results, no task
events.

    BARE_BROKER_URL=redis://… celery -A bare_celery worker --pool threads -Q bare …
"""

from __future__ import annotations

import os

from celery import Celery
from redis import Redis

QUEUE = "bare"

app = Celery("bare", broker=os.environ.get("BARE_BROKER_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    broker_transport_options={"visibility_timeout": 3600},
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    worker_send_task_events=False,
    task_default_queue=QUEUE,
)
_counter = Redis.from_url(app.conf.broker_url)


@app.task(name="bare.noop")  # type: ignore[untyped-decorator]
def noop(counter_key: str) -> None:
    """Counts itself, as orchestrator.noop does."""
    _counter.incr(counter_key)
