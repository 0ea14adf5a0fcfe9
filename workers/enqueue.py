"""The EnqueuePort over Celery: ids only, the queue chosen by the job's priority.

Messages are sent by task name, so a producer (the API) needs the broker URL but not the
worker's code.
"""

from __future__ import annotations

import uuid
from typing import Any

from celery import Celery

from workers.broker import TRANSPORT

ADVANCE = "orchestrator.advance"


def queue_for(priority: str) -> str:
    return f"jobs.{priority}" if priority in ("high", "normal", "low") else "jobs.normal"


class CeleryEnqueue:
    def __init__(self, app: Celery | None = None) -> None:
        if app is None:
            from workers.celery_app import app as default_app

            app = default_app
        self.app = app
        # Per message, Celery would declare the queue (a Redis queue needs none: a message to
        # the default exchange is an LPUSH on the queue's list) and build the arguments'
        # repr for monitoring with its safe repr: about a fifth of a send's CPU.
        self._options: dict[str, Any] = (
            {"declare": []} if app.conf.broker_transport == TRANSPORT else {})

    def start(self, job_id: uuid.UUID, token: uuid.UUID, priority: str,
              backend: str | None = None) -> None:
        if backend is None:
            self.poll(job_id, token, priority, 0.0)
        else:  # a catalogue name, not a prompt: an id like the others
            self._send((str(job_id), str(token), priority, False, backend), priority, 0.0)

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
                           countdown=countdown_s or None, argsrepr=repr(args), kwargsrepr="{}",
                           **self._options)
