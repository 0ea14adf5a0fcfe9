"""The SDK's JobEvent reads the contract's ``at`` and the ``created_at`` of earlier servers."""

from __future__ import annotations

from datetime import UTC, datetime

from orchestrator.client import JobEvent

WHEN = "2026-12-06T10:00:00+00:00"
BASE = {"id": "e1", "type": "job.queued", "job_id": "j1", "tenant": "acme", "seq": 1, "data": {}}


def test_at_is_read_as_the_contract_names_it() -> None:
    event = JobEvent.model_validate({**BASE, "at": WHEN, "created_at": WHEN})
    assert event.at == datetime(2026, 12, 6, 10, tzinfo=UTC) == event.created_at


def test_an_earlier_servers_created_at_fills_at() -> None:
    event = JobEvent.model_validate({**BASE, "created_at": WHEN})
    assert event.at == datetime(2026, 12, 6, 10, tzinfo=UTC)
