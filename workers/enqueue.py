"""The EnqueuePort over Celery: ids only, the queue chosen by the job's priority.

Messages are sent by task name, so a producer (the API) needs the broker URL but not the
worker's code.
"""

from __future__ import annotations

import uuid

from celery import Celery

ADVANCE = "orchestrator.advance"


def queue_for(priority: str) -> str:
    return f"jobs.{priority}" if priority in ("high", "normal", "low") else "jobs.normal"


class CeleryEnqueue:
    def __init__(self, app: Celery | None = None) -> None:
        if app is None:
            from workers.celery_app import app as default_app

            app = default_app
        self.app = app

    def start(self, job_id: uuid.UUID, token: uuid.UUID, priority: str) -> None:
        self.poll(job_id, token, priority, 0.0)

    def poll(
        self, job_id: uuid.UUID, token: uuid.UUID, priority: str, countdown_s: float
    ) -> None:
        self._send((str(job_id), str(token), priority), priority, countdown_s)

    def resume(
        self, job_id: uuid.UUID, token: uuid.UUID, priority: str, countdown_s: float = 0.0
    ) -> None:
        self._send((str(job_id), str(token), priority, True), priority, countdown_s)

    def _send(self, args: tuple[str | bool, ...], priority: str, countdown_s: float) -> None:
        self.app.send_task(ADVANCE, args, queue=queue_for(priority),
                           countdown=countdown_s or None)
