"""A Celery app on workers.broker's transport, for a worker process that tests start
(tests/integration/test_broker_worker.py): a task that waits for the test's word and then
rejects its message, and one that leaves a file behind."""

from __future__ import annotations

import os
import time
from pathlib import Path

from celery import Celery
from celery.exceptions import Reject

from workers.broker import TRANSPORT

app = Celery("broker-worker-test", broker=os.environ["BROKER_TEST_URL"])
app.conf.update(broker_transport=TRANSPORT, task_acks_late=True, worker_prefetch_multiplier=1,
                broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)


@app.task(name="broker_test.reject_when_told")  # type: ignore[untyped-decorator]
def reject_when_told(flags: str) -> None:
    """Says it started, waits (up to 2 minutes) for ``go``, then rejects its message as a
    task does whose retry could not be published."""
    Path(flags, "started").touch()
    deadline = time.monotonic() + 120
    while not Path(flags, "go").exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # the test's word is a file: it outlives the Redis restart
    raise Reject("told to", requeue=False)


@app.task(name="broker_test.touch")  # type: ignore[untyped-decorator]
def touch(path: str) -> None:
    Path(path).touch()
