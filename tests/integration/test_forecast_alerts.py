"""Forecast alerts against real PostgreSQL: written in the settle's own transaction when the
run rate projects past the limit by the period end (time injected, never slept), once per
budget period, and delivered once to a signed webhook."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text

import orchestrator.notify.models  # noqa: F401  (alert_deliveries truncated by the db fixture)
from orchestrator.domain.forecast import forecast_micros
from orchestrator.domain.money import micros_to_usd
from orchestrator.ledger import Ledger
from orchestrator.ledger.budgets import set_budget
from orchestrator.notify import ChannelFactory, DeliveryReport, deliver_pending

from .api_fixture import Api, api_fixture  # noqa: F401
from .ledger_helpers import FakeClock, assert_sound, make_budget
from .test_notify_channels import LOCAL, SECRET, Receiver, serve

__all__ = ["serve"]

NOV_1 = datetime(2026, 11, 1, tzinfo=UTC)
LIMIT = 100_000_000  # $100 a month
SCOPE = ("tenant:acme",)


def budget(db: Engine, forecast: tuple[int, ...] = (10000,), **kw: Any) -> int:
    return make_budget(db, "tenant:acme", "month", LIMIT, forecast_thresholds_bp=forecast,
                       **kw)


def spend(ledger: Ledger, micros: int) -> tuple[uuid.UUID, ...]:
    job = uuid.uuid4()
    ledger.hold(job, SCOPE, micros)
    return ledger.settle(job, micros).alert_ids


def alerts(db: Engine, kind: str | None = None) -> list[Any]:
    with db.connect() as conn:
        return list(conn.execute(
            text("SELECT id, kind, threshold_bp, bucket, payload, budget_period_id "
                 "FROM alerts WHERE CAST(:k AS text) IS NULL OR kind = :k "
                 "ORDER BY created_at, kind"), {"k": kind}).all())


def test_a_steep_run_rate_alerts_and_a_flat_one_does_not(db: Engine) -> None:
    budget(db, thresholds_bp=())  # forecast alerts only
    clock = FakeClock(NOV_1)
    ledger = Ledger(db, clock=clock)
    # flat: $2 a day, each late in the day, projects at most $62.61 of $100
    for day in range(20):
        clock.at = NOV_1 + timedelta(days=day, hours=23)
        assert spend(ledger, 2_000_000) == ()
    assert alerts(db) == []
    # steep: $20 more on day 21 projects (40 + 20) / (20.5 / 30) = $87.8; $10 more: $102.4
    clock.at = NOV_1 + timedelta(days=20, hours=12)
    assert spend(ledger, 20_000_000) == ()
    written = spend(ledger, 10_000_000)
    [row] = alerts(db)
    assert written == (row.id,) and row.kind == "forecast" and row.threshold_bp == 10000
    expected = forecast_micros(70_000_000, "month", clock.at)
    assert expected is not None and expected > LIMIT
    assert row.payload["forecast_usd"] == micros_to_usd(expected)
    assert row.payload["committed_usd"] == 70.0 and row.payload["threshold"] == 1.0
    # still over: no second row for the period
    assert spend(ledger, 1_000_000) == ()
    assert [a.kind for a in alerts(db)] == ["forecast"]
    assert_sound(db)


def test_one_early_job_projects_over_the_minimum_window_not_seconds(db: Engine) -> None:
    budget(db)
    clock = FakeClock(NOV_1 + timedelta(seconds=30))
    ledger = Ledger(db, clock=clock)
    # 30 s in, $0.10 would project $8,640 over 30 s; over the one-hour floor it is $72
    assert spend(ledger, 100_000) == ()
    # $0.14 projects $100.80 even over the floor: that run rate is steep
    assert len(spend(ledger, 40_000)) == 1
    assert alerts(db)[0].payload["forecast_usd"] == 100.8


def test_forecast_alerts_are_opt_in_and_threshold_alerts_carry_the_forecast(
    db: Engine,
) -> None:
    budget(db, forecast=())
    clock = FakeClock(NOV_1 + timedelta(days=2))
    written = spend(Ledger(db, clock=clock), 60_000_000)  # projects $900
    rows = alerts(db)
    assert [(r.kind, r.threshold_bp) for r in rows] == [("threshold", 5000)]
    assert list(written) == [rows[0].id]
    assert rows[0].payload["forecast_usd"] == 900.0


def test_charges_into_a_period_that_has_ended_do_not_forecast(db: Engine) -> None:
    budget(db)
    clock = FakeClock(NOV_1 + timedelta(days=29, hours=23))
    ledger = Ledger(db, clock=clock)
    job = uuid.uuid4()
    ledger.hold(job, SCOPE, 90_000_000)  # held in November
    clock.at = NOV_1 + timedelta(days=31)  # settled in December: November's run is over
    assert [r.kind for r in alerts(db)] == []
    ledger.settle(job, 90_000_000)
    assert [(r.kind, r.threshold_bp) for r in alerts(db)] == [
        ("threshold", 5000), ("threshold", 8000)]


def test_a_period_gets_one_forecast_alert_however_many_settles_race(db: Engine) -> None:
    budget(db)
    clock = FakeClock(NOV_1 + timedelta(days=3))  # a tenth of the month
    ledger = Ledger(db, clock=clock)
    spend(ledger, 9_000_000)  # projects $90
    jobs = [uuid.uuid4() for _ in range(50)]
    for j in jobs:
        ledger.hold(j, SCOPE, 100_000)
    go = threading.Barrier(50)
    errors: list[BaseException] = []

    def settle(j: uuid.UUID) -> None:
        try:
            go.wait(10)
            ledger.settle(j, 100_000)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=settle, args=(j,)) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == [] and not any(t.is_alive() for t in threads)
    [row] = alerts(db, "forecast")  # $14 projects $140: crossed once, by one settle
    assert 90_000_000 < round(row.payload["forecast_usd"] * 1e6) <= 140_000_000
    assert_sound(db)


def test_a_forecast_alert_is_delivered_once_to_a_signed_webhook(
    db: Engine, serve: Callable[..., Receiver],
) -> None:
    hook = serve(secret=SECRET)
    budget(db, thresholds_bp=(), channels=[{"type": "webhook", "url": hook.url,
                                            "secret": SECRET}])
    clock = FakeClock(NOV_1 + timedelta(days=1))
    [alert_id] = spend(Ledger(db, clock=clock), 5_000_000)  # projects $150
    with ChannelFactory(policy=LOCAL, http_timeout_s=5) as factory:
        report = deliver_pending(db, factory, clock.at + timedelta(seconds=5))
        assert report.alerts_delivered == (alert_id,) and len(report.delivered) == 1
        again = deliver_pending(db, factory, clock.at + timedelta(hours=2))
        assert again == DeliveryReport()
    assert len(hook.hits) == 1 and hook.hits[0].status == 200  # signature verified
    [body] = hook.accepted
    assert body["alert_id"] == str(alert_id) and body["kind"] == "forecast"
    assert body["forecast_usd"] == 150.0 and body["threshold"] == 1.0
    assert body["scope"] == "tenant:acme" and body["budget"]["period"] == "month"
    with db.connect() as conn:
        assert conn.execute(text("SELECT status FROM alerts")).scalar_one() == "delivered"


@pytest.mark.parametrize("period", ["day", "total"])
def test_day_budgets_forecast_and_total_budgets_never_do(db: Engine, period: str) -> None:
    make_budget(db, "tenant:acme", period, LIMIT, forecast_thresholds_bp=(10000,))
    clock = FakeClock(NOV_1 + timedelta(hours=6))
    written = spend(Ledger(db, clock=clock), 30_000_000)  # a quarter of the day: $120
    kinds = [r.kind for r in alerts(db)]
    assert kinds == (["forecast"] if period == "day" else [])
    assert len(written) == len(kinds)


def test_forecast_thresholds_are_set_and_shown_through_the_api(api: Api) -> None:
    body = {"scope": "tenant:acme", "period": "month", "limit_usd": 50,
            "forecast_thresholds": [1.0, 0.9]}
    put = api.admin().put("/v1/budgets", json=body)
    assert put.status_code == 200, put.text
    assert put.json()["forecast_thresholds"] == [0.9, 1.0]
    [shown] = api.tenant().get("/v1/budgets").json()["budgets"]
    assert shown["forecast_thresholds"] == [0.9, 1.0]
    with api.rig.engine.connect() as conn:
        assert conn.execute(text("SELECT forecast_thresholds_bp FROM budgets")).scalar_one() == [
            9000, 10000]
    bad = api.admin().put("/v1/budgets", json={**body, "forecast_thresholds": [0]})
    assert bad.status_code == 422


def test_a_lowered_limit_below_the_forecast_alerts_with_the_change(db: Engine) -> None:
    """No charge would cross the line after the limit moved below the projection: the
    change writes the forecast alert itself (the limit is the alert's bucket)."""
    budget(db, thresholds_bp=())
    clock = FakeClock(NOV_1 + timedelta(days=14, hours=12))
    ledger = Ledger(db, clock=clock)
    spend(ledger, 40_000_000)  # projects 40 / (14.5 / 30) = $82.76 of $100
    assert alerts(db) == []
    with db.begin() as conn:
        set_budget(conn, scope="tenant:acme", period="month", limit_micros=60_000_000,
                   now=clock.at, thresholds_bp=None, forecast_thresholds_bp=None)
    [row] = alerts(db)
    assert (row.kind, row.threshold_bp, row.bucket) == ("forecast", 10000, 60_000_000)
    assert row.payload["limit_usd"] == 60.0 and row.payload["forecast_usd"] > 60.0
    assert spend(ledger, 1_000_000) == ()  # once per period, threshold and limit
    assert len(alerts(db)) == 1
    assert_sound(db)
