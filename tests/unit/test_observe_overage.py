"""``JobObserver.overage``: a bill above the job's hold is one warning (ids and amounts, never
the prompt) and one sample of ``jobs/overage``."""

from __future__ import annotations

import io
import json
import logging
import uuid
from datetime import UTC, datetime

from orchestrator.logs import configure_logging
from orchestrator.metrics import catalogue as m
from orchestrator.metrics.recorder import DistributionValue, Recorder
from orchestrator.service.observe import JobObserver
from orchestrator.store.jobs import JobRow

PROMPT = "a lighthouse at dusk, secret storyboard"


def job_row() -> JobRow:
    now = datetime(2026, 11, 22, 12, tzinfo=UTC)
    return JobRow(
        id=uuid.uuid4(), tenant="acme", status="succeeded", kind="video", tier="draft",
        spec={"kind": "video", "input": {"prompt": PROMPT}}, route=None, backend="vid-cheap",
        estimated_cost_micros=2_000_000, cost_micros=2_750_000, result=None, error_code=None,
        error_message=None, idempotency_key=None, request_hash=None, deadline_at=None,
        chain_token=None, wake_at=None, created_at=now, started_at=now, finished_at=now)


def test_an_overage_is_logged_as_a_warning_and_counted() -> None:
    rec, stream = Recorder(), io.StringIO()
    logger = logging.getLogger("test.observe.overage")
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    handler = configure_logging("INFO", "json", stream=stream)
    try:
        job = job_row()
        observer = JobObserver(rec, logger)
        observer.overage(job, "vid-cheap", 750_000, charged_micros=2_750_000)
        observer.overage(job, "vid-cheap", 0)  # nothing above the hold: nothing to say
    finally:
        root.removeHandler(handler)
        root.handlers[:] = before
        root.setLevel(level)

    value = rec.value(m.JOB_OVERAGE, kind="video", tier="draft", backend="vid-cheap")
    assert isinstance(value, DistributionValue)
    assert value.count == 1 and value.sum == 0.75
    (line,) = stream.getvalue().splitlines()
    event = json.loads(line)
    assert event == {**event, "level": "WARNING", "event": "job_overage", "job_id": str(job.id),
                     "tenant": "acme", "backend": "vid-cheap", "hold_micros": 2_000_000,
                     "cost_micros": 2_750_000, "overage_micros": 750_000}
    assert "secret storyboard" not in stream.getvalue()
