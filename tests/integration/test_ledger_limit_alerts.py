"""Threshold alerts when an admin changes a limit mid-period: a raised limit's thresholds
alert again as spend reaches them, and a lowered limit that puts the spend already committed
past thresholds alerts for them at once (each once per period, threshold and limit)."""

from __future__ import annotations

import json
import threading
import time
import uuid

from sqlalchemy import Engine, text

from orchestrator.ledger import Ledger
from orchestrator.ledger.budgets import set_budget

from .ledger_helpers import T0, FakeClock, assert_sound, make_budget, waiting_on_lock

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


# An added threshold the spend (or its forecast) is already past alerts with the change too:
# no charge will cross it in this period.

def alerts_of(db: Engine, kind: str) -> list[tuple[int, int, float]]:
    """(threshold bp, bucket, committed_usd) of every alert of ``kind``, in order written."""
    with db.connect() as conn:
        rows = conn.execute(text(
            "SELECT threshold_bp, bucket, payload FROM alerts WHERE kind = :k "
            "ORDER BY created_at, threshold_bp"), {"k": kind}).all()
    return [(r.threshold_bp, r.bucket, r.payload["committed_usd"]) for r in rows]


def test_an_added_threshold_already_passed_alerts_once_with_the_change(db: Engine) -> None:
    make_budget(db, "tenant:acme", "month", 100 * USD, thresholds_bp=(5000,))
    ledger = Ledger(db, clock=FakeClock())
    spend(ledger, 85 * USD)
    assert threshold_alerts(db) == [(5000, 100.0, 85.0)]

    with db.begin() as conn:  # the alert is written in the change's own transaction
        set_budget(conn, scope="tenant:acme", period="month", limit_micros=100 * USD, now=T0,
                   thresholds_bp=(5000, 8000))
        assert conn.execute(text(
            "SELECT threshold_bp, bucket FROM alerts WHERE threshold_bp = 8000")).all() == [
            (8000, 100 * USD)]
    assert threshold_alerts(db)[1:] == [(8000, 100.0, 85.0)]
    make_budget(db, "tenant:acme", "month", 100 * USD, thresholds_bp=(5000, 8000))
    spend(ledger, 1 * USD)
    assert len(threshold_alerts(db)) == 2  # the same PUT, or a charge: still once
    # removed and added back at the same limit: it already alerted, it does not again
    make_budget(db, "tenant:acme", "month", 100 * USD, thresholds_bp=(5000,))
    make_budget(db, "tenant:acme", "month", 100 * USD, thresholds_bp=(5000, 8000))
    assert len(threshold_alerts(db)) == 2
    assert_sound(db)


def test_an_added_threshold_not_yet_passed_alerts_when_a_charge_crosses_it(
        db: Engine) -> None:
    make_budget(db, "tenant:acme", "month", 100 * USD, thresholds_bp=(5000,))
    ledger = Ledger(db, clock=FakeClock())
    spend(ledger, 60 * USD)
    # 60 of 100: past the added 55 %, which alerts now; not at the added 80 %
    make_budget(db, "tenant:acme", "month", 100 * USD, thresholds_bp=(5000, 5500, 8000))
    assert threshold_alerts(db) == [(5000, 100.0, 60.0), (5500, 100.0, 60.0)]
    spend(ledger, 15 * USD)
    assert len(threshold_alerts(db)) == 2
    spend(ledger, 10 * USD)  # 85 of 100: the charge crosses it
    assert threshold_alerts(db)[2:] == [(8000, 100.0, 85.0)]
    spend(ledger, 1 * USD)
    make_budget(db, "tenant:acme", "month", 100 * USD, thresholds_bp=(5000, 5500, 8000))
    assert len(threshold_alerts(db)) == 3
    assert_sound(db)


# T0 is 21.5 days into November's 30: $60 committed projects 60 * 30 / 21.5 = $83.72.

def test_an_added_forecast_threshold_already_passed_alerts_once_with_the_change(
        db: Engine) -> None:
    make_budget(db, "tenant:acme", "month", 100 * USD, forecast_thresholds_bp=(10000,))
    ledger = Ledger(db, clock=FakeClock())
    spend(ledger, 60 * USD)
    assert alerts_of(db, "forecast") == []

    make_budget(db, "tenant:acme", "month", 100 * USD, thresholds_bp=None,
                forecast_thresholds_bp=(8000, 10000))
    assert alerts_of(db, "forecast") == [(8000, 100 * USD, 60.0)]
    with db.connect() as conn:
        forecast_usd = conn.execute(text(
            "SELECT payload->>'forecast_usd' FROM alerts WHERE kind = 'forecast'")).scalar_one()
    assert 83.7 < float(forecast_usd) < 83.8
    make_budget(db, "tenant:acme", "month", 100 * USD, thresholds_bp=None,
                forecast_thresholds_bp=(8000, 10000))
    spend(ledger, 1 * USD)
    assert len(alerts_of(db, "forecast")) == 1
    assert_sound(db)


def test_an_added_forecast_threshold_not_yet_passed_alerts_when_a_charge_crosses_it(
        db: Engine) -> None:
    make_budget(db, "tenant:acme", "month", 100 * USD, forecast_thresholds_bp=(10000,))
    ledger = Ledger(db, clock=FakeClock())
    spend(ledger, 60 * USD)
    # $83.72 of $100: past the added 80 %, which alerts now; not at the added 90 %
    make_budget(db, "tenant:acme", "month", 100 * USD, thresholds_bp=None,
                forecast_thresholds_bp=(8000, 9000, 10000))
    assert alerts_of(db, "forecast") == [(8000, 100 * USD, 60.0)]
    spend(ledger, 5 * USD)  # $65 projects $90.70: the charge crosses it
    assert alerts_of(db, "forecast")[1:] == [(9000, 100 * USD, 65.0)]
    spend(ledger, 1 * USD)  # $92.09
    assert len(alerts_of(db, "forecast")) == 2
    assert_sound(db)


def test_a_change_that_keeps_the_thresholds_alerts_for_none_it_already_passed(
        db: Engine) -> None:
    make_budget(db, "tenant:acme", "month", 100 * USD, thresholds_bp=(5000,),
                forecast_thresholds_bp=(10000,))
    ledger = Ledger(db, clock=FakeClock())
    spend(ledger, 85 * USD)  # projects $118.60
    assert alerts_of(db, "threshold") == [(5000, 100 * USD, 85.0)]
    assert alerts_of(db, "forecast") == [(10000, 100 * USD, 85.0)]
    make_budget(db, "tenant:acme", "month", 100 * USD, thresholds_bp=(5000, 8000),
                forecast_thresholds_bp=(9000, 10000))
    assert alerts_of(db, "threshold")[1:] == [(8000, 100 * USD, 85.0)]
    assert alerts_of(db, "forecast")[1:] == [(9000, 100 * USD, 85.0)]

    # None keeps both lists: raised to $110, what was passed at $100 still is (77 % and
    # 108 %) and alerted then; nothing is owed (the 80 % is not reached at $110)
    make_budget(db, "tenant:acme", "month", 110 * USD, thresholds_bp=None,
                forecast_thresholds_bp=None)
    make_budget(db, "tenant:acme", "month", 110 * USD, thresholds_bp=None,
                forecast_thresholds_bp=None)
    assert len(alerts_of(db, "threshold")) == 2 and len(alerts_of(db, "forecast")) == 2
    with db.connect() as conn:
        kept = conn.execute(text(
            "SELECT alert_thresholds_bp, forecast_thresholds_bp FROM budgets")).one()
    assert tuple(kept) == ([5000, 8000], [9000, 10000])
    assert_sound(db)


def test_the_thresholds_replaced_are_those_a_concurrent_change_committed(db: Engine) -> None:
    """A change waiting on another's lock compares with the thresholds that one committed,
    not those its statement began with: 80 % removed meanwhile, then added back at $105
    (81 % there), is an added threshold already passed, and alerts."""
    make_budget(db, "tenant:acme", "month", 100 * USD, thresholds_bp=(5000, 8000))
    ledger = Ledger(db, clock=FakeClock())
    spend(ledger, 85 * USD)
    assert len(threshold_alerts(db)) == 2
    errors: list[BaseException] = []

    def add_back() -> None:
        try:
            make_budget(db, "tenant:acme", "month", 105 * USD, thresholds_bp=(5000, 8000))
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    with db.begin() as tx:
        set_budget(tx, scope="tenant:acme", period="month", limit_micros=100 * USD, now=T0,
                   thresholds_bp=(5000,))
        adder = threading.Thread(target=add_back)
        adder.start()
        deadline = time.monotonic() + 10
        while waiting_on_lock(db, "%FROM budgets%FOR NO KEY UPDATE%") == 0:
            assert adder.is_alive(), "the second change did not wait for the first"
            assert time.monotonic() < deadline, "the second change never waited"
            time.sleep(0.01)
    adder.join(timeout=10)
    assert not adder.is_alive() and errors == []
    assert threshold_alerts(db)[2:] == [(8000, 105.0, 85.0)]
    assert_sound(db)


def test_a_change_waiting_on_a_period_lets_its_settle_write_the_alert(db: Engine) -> None:
    """A settle locks its period, then writes its alert, whose foreign key takes a key-share
    lock on the budget row; a change meanwhile locks the budget row, then waits on the
    period. The change's lock must not hold off that key-share lock (a deadlock: one of
    them failed). Here the settle's two steps are its own statements, in its order."""
    make_budget(db, "tenant:acme", "month", 100 * USD)
    spend(Ledger(db, clock=FakeClock()), 10 * USD)  # the open period exists
    errors: list[BaseException] = []

    def change() -> None:
        try:
            make_budget(db, "tenant:acme", "month", 90 * USD, thresholds_bp=(5000, 8000))
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    with db.begin() as settle:
        budget_id, period_id = settle.execute(text(
            "SELECT budget_id, id FROM budget_periods FOR NO KEY UPDATE")).one()
        changer = threading.Thread(target=change)
        changer.start()
        deadline = time.monotonic() + 10
        while not waiting_on_lock(db, "%UPDATE budget_periods%"):
            assert changer.is_alive() and time.monotonic() < deadline, errors
            time.sleep(0.01)
        settle.execute(text(
            "INSERT INTO alerts (budget_id, budget_period_id, kind, threshold_bp, bucket, "
            "payload) VALUES (:b, :p, 'threshold', 9000, 1, '{}')"),
            {"b": budget_id, "p": period_id})
    changer.join(timeout=10)
    assert not changer.is_alive() and errors == []
