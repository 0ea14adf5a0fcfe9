"""What work a provider did without saying what it cost is charged: the attempt's worst case
as the route estimated it when the hold was made, never above the job's hold."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from orchestrator.domain.catalogue import parse_catalogue
from orchestrator.service.attempts import unpriced_charge
from orchestrator.store.jobs import JobRow

# priced now at $0.10/s: 8 s is 800_000 micro-USD
CATALOGUE = parse_catalogue({"backends": [
    {"name": "vid", "protocol": "predictions", "kinds": ["video"], "tier": "draft",
     "base_url": "http://provider.test/vid",
     "price": {"model": "per_second", "usd_per_second": 0.1}}]})


def job(route: dict[str, Any] | None, hold: int) -> JobRow:
    return JobRow(
        id=uuid.uuid4(), tenant="t", status="running", kind="video", tier="draft",
        spec={"kind": "video", "input": {"prompt": "p", "duration_s": 8}}, route=route,
        backend="vid", estimated_cost_micros=hold, cost_micros=None, result=None,
        error_code=None, error_message=None, idempotency_key=None, request_hash=None,
        deadline_at=None, chain_token=None, wake_at=None, created_at=datetime.now(UTC),
        started_at=None, finished_at=None)


def test_the_routes_estimate_is_charged_not_todays_price() -> None:
    """The catalogue's price rose after admission: the hold was made of the old one."""
    route = {"candidates": [{"backend": "vid", "estimated_cost_micros": 400_000}]}
    assert unpriced_charge(CATALOGUE, job(route, 1_000_000), "vid") == 400_000


def test_without_a_route_figure_it_is_priced_now_and_never_above_the_hold() -> None:
    assert unpriced_charge(CATALOGUE, job(None, 1_000_000), "vid") == 800_000
    assert unpriced_charge(CATALOGUE, job(None, 500_000), "vid") == 500_000
    route = {"candidates": [{"backend": "vid", "estimated_cost_micros": 900_000}]}
    assert unpriced_charge(CATALOGUE, job(route, 600_000), "vid") == 600_000
