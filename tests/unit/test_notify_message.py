"""Alert messages: the webhook payload is exactly the CONTRACT's; retry delays are bounded."""

from __future__ import annotations

import json
import random
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.notify import AlertMessage
from orchestrator.notify.backoff import retry_delay_s
from orchestrator.notify.slack import slack_message
from orchestrator.notify.webhook import webhook_body

CONTRACT_KEYS = [
    "alert_id", "kind", "budget", "scope", "period_start", "threshold", "limit_usd",
    "committed_usd", "held_usd", "forecast_usd", "at",
]
LEDGER_PAYLOAD = {  # as orchestrator.ledger.service writes it
    "scope": "tenant:acme/project:p1", "period": "day",
    "period_start": "2026-11-22T00:00:00+00:00", "threshold": 1.0, "limit_usd": 5.0,
    "committed_usd": 5.0, "held_usd": 0.0, "at": "2026-11-22T12:00:00+00:00",
}


def test_webhook_body_has_exactly_the_contract_keys() -> None:
    alert_id = uuid.uuid4()
    msg = AlertMessage.from_alert(
        alert_id=alert_id, kind="threshold", budget_id=4, threshold_bp=10000,
        payload=LEDGER_PAYLOAD,
    )
    body = json.loads(webhook_body(msg))
    assert list(body) == CONTRACT_KEYS
    assert body == {
        "alert_id": str(alert_id), "kind": "threshold", "budget": {"id": 4, "period": "day"},
        "scope": "tenant:acme/project:p1", "period_start": "2026-11-22T00:00:00+00:00",
        "threshold": 1.0, "limit_usd": 5.0, "committed_usd": 5.0, "held_usd": 0.0,
        "forecast_usd": None, "at": "2026-11-22T12:00:00+00:00",
    }


def test_forecast_alert_text() -> None:
    msg = AlertMessage.from_alert(
        alert_id=uuid.uuid4(), kind="forecast", budget_id=1, threshold_bp=10000,
        payload={**LEDGER_PAYLOAD, "forecast_usd": 7.5, "committed_usd": 2.0},
    )
    assert msg.webhook_payload()["forecast_usd"] == 7.5
    assert "forecast to exceed 100% of its limit" in msg.title
    assert ("Forecast", "$7.50") in msg.facts()
    assert "$2.00 committed" in slack_message(msg)["text"]


def test_an_overage_alert_adds_its_job_and_amounts_after_the_contract_keys() -> None:
    job = str(uuid.uuid4())
    msg = AlertMessage.from_alert(
        alert_id=uuid.uuid4(), kind="overage", budget_id=4, threshold_bp=0,
        payload={**LEDGER_PAYLOAD, "threshold": 0.0, "committed_usd": 5.5, "job_id": job,
                 "hold_usd": 2.0, "charge_usd": 2.5, "overage_usd": 0.5,
                 "hold_micros": 2_000_000, "charge_micros": 2_500_000,
                 "overage_micros": 500_000},
    )
    body = json.loads(webhook_body(msg))
    assert list(body) == [*CONTRACT_KEYS, "overage"]
    assert body["kind"] == "overage"
    assert body["overage"] == {"job_id": job, "hold_usd": 2.0, "charge_usd": 2.5,
                               "overage_usd": 0.5}
    assert "billed $0.50 above its hold, charged in full" in msg.title
    assert ("Job", job) in msg.facts() and ("Overage", "$0.50") in msg.facts()
    assert slack_message(msg)["text"].startswith(":money_with_wings:")


def test_an_overage_alert_without_its_amounts_is_refused() -> None:
    with pytest.raises(KeyError):
        AlertMessage.from_alert(alert_id=uuid.uuid4(), kind="overage", budget_id=1,
                                threshold_bp=0, payload=LEDGER_PAYLOAD)


def test_malformed_payload_is_refused() -> None:
    with pytest.raises(KeyError):
        AlertMessage.from_alert(alert_id=uuid.uuid4(), kind="threshold", budget_id=1,
                                threshold_bp=5000, payload={"scope": "global"})


@given(attempt=st.integers(1, 80), seed=st.integers(0, 2**32))
def test_retry_delay_grows_within_equal_jitter_bounds(attempt: int, seed: int) -> None:
    ceiling = min(600.0, 30.0 * 2 ** (attempt - 1))
    d = retry_delay_s(attempt, base_s=30, cap_s=600, rng=random.Random(seed))
    assert ceiling / 2 <= d <= ceiling


def test_retry_delay_rejects_attempt_zero() -> None:
    with pytest.raises(ValueError):
        retry_delay_s(0)
