"""Threshold alerts when an admin changes a limit mid-period: a raised limit's thresholds
alert again as spend reaches them, and a lowered limit that puts the spend already committed
past thresholds alerts for them at once (each once per period, threshold and limit)."""

from __future__ import annotations

import json
import uuid

from sqlalchemy import Engine, text

from orchestrator.ledger import Ledger

from .ledger_helpers import FakeClock, assert_sound, make_budget

SCOPES = ("tenant:acme",)
USD = 1_000_000


def spend(ledger: Ledger, micros: int) -> None:
    job = uuid.uuid4()
    ledger.hold(job, SCOPES, micros)
    ledger.settle(job, micros)


def threshold_alerts(db: Engine) -> list[tuple[int, float, float]]:
    """(threshold bp, limit_usd, committed_usd) of every threshold alert, in order written."""
    with db.connect() as conn:
        rows = conn.execute(text(
            "SELECT threshold_bp, payload FROM alerts WHERE kind = 'threshold' "
            "ORDER BY created_at, threshold_bp")).all()
    return [(r.threshold_bp, r.payload["limit_usd"], r.payload["committed_usd"])
            for r in rows]


def test_a_raised_limit_alerts_at_its_own_thresholds(db: Engine) -> None:
    make_budget(db, "tenant:acme", "month", 100 * USD)
    ledger = Ledger(db, clock=FakeClock())
    spend(ledger, 85 * USD)
    assert threshold_alerts(db) == [(5000, 100.0, 85.0), (8000, 100.0, 85.0)]

    make_budget(db, "tenant:acme", "month", 200 * USD)  # raised after the 80 % alert
    assert len(threshold_alerts(db)) == 2  # 42.5 % of the new limit: nothing owed
    spend(ledger, 20 * USD)  # 105 of 200: past its 50 %
    spend(ledger, 60 * USD)  # 165 of 200: past its 80 %
    assert threshold_alerts(db)[2:] == [(5000, 200.0, 105.0), (8000, 200.0, 165.0)]
    spend(ledger, 1 * USD)  # each still once
    assert len(threshold_alerts(db)) == 4
    assert_sound(db)


def test_a_limit_lowered_below_the_spend_alerts_for_what_it_passed(db: Engine) -> None:
    make_budget(db, "tenant:acme", "month", 100 * USD)
    ledger = Ledger(db, clock=FakeClock())
    spend(ledger, 60 * USD)
    assert threshold_alerts(db) == [(5000, 100.0, 60.0)]

    make_budget(db, "tenant:acme", "month", 50 * USD)  # 60 of 50: over the limit
    assert threshold_alerts(db)[1:] == [(8000, 50.0, 60.0), (10000, 50.0, 60.0)]
    with db.connect() as conn:
        payloads = [r.payload for r in conn.execute(text(
            "SELECT payload FROM alerts WHERE threshold_bp = 10000"))]
    assert [json.loads(json.dumps(p))["threshold"] for p in payloads] == [1.0]
    make_budget(db, "tenant:acme", "month", 50 * USD)  # the same limit again: nothing new
    assert len(threshold_alerts(db)) == 3
    assert_sound(db)
