"""Ledger steps one at a time: amounts, refusals, idempotency, state rules, alerts."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from orchestrator.errors import BudgetExceeded, HoldNotActive, HoldNotFound, InvalidAmount
from orchestrator.ledger import Ledger
from orchestrator.ledger.budgets import list_budgets
from orchestrator.store.engine import autocommit, make_engine

from .ledger_helpers import T0, FakeClock, assert_sound, counters, entry_count, make_budget

SCOPES = ("global", "tenant:acme")


def test_hold_then_settle_charges_actual_and_releases_rest(db: Engine) -> None:
    b = make_budget(db, "tenant:acme", "month", 10_000_000)
    ledger = Ledger(db, clock=FakeClock())
    job = uuid.uuid4()
    receipt = ledger.hold(job, SCOPES, 2_500_000)
    assert receipt.amount_micros == 2_500_000 and len(receipt.budget_period_ids) == 1
    assert counters(db)[b] == (10_000_000, 0, 2_500_000)

    settled = ledger.settle(job, 1_234_567)
    assert (settled.charged_micros, settled.released_micros) == (1_234_567, 1_265_433)
    assert counters(db)[b] == (10_000_000, 1_234_567, 0)
    assert_sound(db)


def test_refusal_names_budget_remaining_and_ask_and_holds_nothing(db: Engine) -> None:
    g = make_budget(db, "global", "day", 100_000_000)
    t = make_budget(db, "tenant:acme", "month", 3_000_000)
    ledger = Ledger(db, clock=FakeClock())
    ledger.hold(uuid.uuid4(), SCOPES, 2_000_000)

    with pytest.raises(BudgetExceeded) as err:
        ledger.hold(uuid.uuid4(), SCOPES, 1_500_000)
    assert err.value.scope == "tenant:acme"
    assert err.value.remaining_micros == 1_000_000
    assert err.value.requested_micros == 1_500_000
    assert "tenant:acme" in str(err.value) and "$1.000000" in str(err.value)
    # the global budget, reserved first in the same transaction, was rolled back too
    assert counters(db)[g] == (100_000_000, 0, 2_000_000)
    assert counters(db)[t] == (3_000_000, 0, 2_000_000)
    with db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM holds")).scalar_one() == 1
    assert_sound(db)


def test_replayed_steps_add_no_entries(db: Engine) -> None:
    make_budget(db, "global", "total", 50_000_000)
    make_budget(db, "tenant:acme", "day", 50_000_000)
    ledger = Ledger(db, clock=FakeClock())
    job = uuid.uuid4()
    first = ledger.hold(job, SCOPES, 1_000_000)
    again = ledger.hold(job, SCOPES, 1_000_000)
    assert again.replayed and again.budget_period_ids == first.budget_period_ids
    assert entry_count(db, "hold") == 2  # one per budget, once

    ledger.settle(job, 600_000)
    replay = ledger.settle(job, 600_000)
    assert replay.replayed and replay.charged_micros == 600_000
    assert entry_count(db, "settle") == 2

    other = uuid.uuid4()
    ledger.hold(other, SCOPES, 1_000_000)
    ledger.release(other)
    assert ledger.release(other).replayed
    assert entry_count(db, "release") == 2
    assert entry_count(db) == 8
    assert_sound(db)


def test_settle_after_release_and_release_after_settle_are_refused(db: Engine) -> None:
    make_budget(db, "tenant:acme", "month", 50_000_000)
    ledger = Ledger(db, clock=FakeClock())
    a, b = uuid.uuid4(), uuid.uuid4()
    ledger.hold(a, SCOPES, 1_000_000)
    ledger.hold(b, SCOPES, 1_000_000)
    ledger.release(a)
    ledger.settle(b, 500_000)
    before = counters(db), entry_count(db)

    with pytest.raises(HoldNotActive) as e1:
        ledger.settle(a, 500_000)
    assert e1.value.status == "released"
    with pytest.raises(HoldNotActive) as e2:
        ledger.release(b)
    assert e2.value.status == "settled"
    with pytest.raises(HoldNotActive):
        ledger.settle(b, 400_000)  # a second settle with another amount is no replay
    assert (counters(db), entry_count(db)) == before
    assert_sound(db)


def test_bad_amounts_are_refused_and_change_nothing(db: Engine) -> None:
    make_budget(db, "tenant:acme", "month", 50_000_000)
    ledger = Ledger(db, clock=FakeClock())
    job = uuid.uuid4()
    with pytest.raises(InvalidAmount):
        ledger.hold(job, SCOPES, -1)
    ledger.hold(job, SCOPES, 1_000_000)
    before = counters(db)
    with pytest.raises(InvalidAmount):
        ledger.settle(job, -1)
    with pytest.raises(InvalidAmount):
        ledger.release(job, charge_micros=-5)
    with pytest.raises(HoldNotFound):
        ledger.settle(uuid.uuid4(), 1)
    assert counters(db) == before
    assert_sound(db)


def test_release_can_charge_a_partial_cost(db: Engine) -> None:
    b = make_budget(db, "tenant:acme", "month", 50_000_000)
    ledger = Ledger(db, clock=FakeClock())
    job = uuid.uuid4()
    ledger.hold(job, SCOPES, 2_000_000)
    r = ledger.release(job, charge_micros=300_000)
    assert (r.charged_micros, r.released_micros) == (300_000, 1_700_000)
    assert counters(db)[b] == (50_000_000, 300_000, 0)
    assert_sound(db)


def test_expire_releases_stale_holds_only(db: Engine) -> None:
    b = make_budget(db, "tenant:acme", "month", 50_000_000)
    clock = FakeClock()
    ledger = Ledger(db, clock=clock, hold_ttl=timedelta(minutes=10))
    old, fresh = uuid.uuid4(), uuid.uuid4()
    ledger.hold(old, SCOPES, 1_000_000)
    clock.at = T0 + timedelta(minutes=5)
    ledger.hold(fresh, SCOPES, 2_000_000)
    clock.at = T0 + timedelta(minutes=11)
    assert ledger.expire_stale() == [old]
    assert ledger.expire_stale() == []
    assert counters(db)[b] == (50_000_000, 0, 2_000_000)
    with pytest.raises(HoldNotActive) as err:
        ledger.settle(old, 1)
    assert err.value.status == "expired"
    assert_sound(db)


def test_periods_are_separate_rows_per_utc_day(db: Engine) -> None:
    b = make_budget(db, "tenant:acme", "day", 1_000_000)
    clock = FakeClock()
    ledger = Ledger(db, clock=clock)
    ledger.hold(uuid.uuid4(), SCOPES, 1_000_000)
    with pytest.raises(BudgetExceeded):
        ledger.hold(uuid.uuid4(), SCOPES, 1)
    clock.at = T0 + timedelta(days=1)
    ledger.hold(uuid.uuid4(), SCOPES, 1_000_000)  # a new day, a new period row
    with db.connect() as conn:
        starts = conn.execute(
            text("SELECT period_start FROM budget_periods WHERE budget_id = :b ORDER BY 1"),
            {"b": b},
        ).scalars().all()
    assert [s.isoformat() for s in starts] == [
        "2026-11-22T00:00:00+00:00", "2026-11-23T00:00:00+00:00",
    ]
    assert_sound(db)


def test_threshold_alerts_are_written_once_in_the_step_that_crosses(db: Engine) -> None:
    make_budget(db, "tenant:acme", "month", 10_000_000)
    ledger = Ledger(db, clock=FakeClock())
    jobs = [uuid.uuid4() for _ in range(4)]
    for j in jobs:
        ledger.hold(j, SCOPES, 2_500_000)
    assert ledger.settle(jobs[0], 2_500_000).alert_ids == ()  # 25 %
    crossed = ledger.settle(jobs[1], 2_500_000)  # 50 %
    assert len(crossed.alert_ids) == 1
    assert len(ledger.settle(jobs[2], 2_500_000).alert_ids) == 0  # 75 %
    assert len(ledger.settle(jobs[3], 2_500_000).alert_ids) == 2  # 100 % passes 80 and 100
    with db.connect() as conn:
        rows = conn.execute(
            text("SELECT threshold_bp, payload FROM alerts ORDER BY threshold_bp")
        ).all()
    assert [r.threshold_bp for r in rows] == [5000, 8000, 10000]
    assert rows[0].payload["scope"] == "tenant:acme"
    assert rows[2].payload["committed_usd"] == 10.0


def test_ledger_entries_are_append_only(db: Engine) -> None:
    make_budget(db, "tenant:acme", "month", 10_000_000)
    Ledger(db, clock=FakeClock()).hold(uuid.uuid4(), SCOPES, 1)
    for stmt in ("UPDATE ledger_entries SET held_delta_micros = 0", "DELETE FROM ledger_entries"):
        with pytest.raises(DBAPIError, match="append-only"), db.begin() as conn:
            conn.execute(text(stmt))


def test_lowering_a_limit_below_what_is_held_blocks_new_holds(db: Engine) -> None:
    make_budget(db, "tenant:acme", "month", 10_000_000)
    ledger = Ledger(db, clock=FakeClock())
    ledger.hold(uuid.uuid4(), SCOPES, 4_000_000)
    make_budget(db, "tenant:acme", "month", 1_000_000)
    with db.connect() as conn:
        (view,) = list_budgets(conn, now=T0)
    # the open period takes the new limit itself; what is held above it is its excess
    assert (view.limit_micros, view.held_micros, view.remaining_micros) == (1_000_000, 4_000_000, 0)
    with pytest.raises(BudgetExceeded):
        ledger.hold(uuid.uuid4(), SCOPES, 1)
    assert_sound(db)


def test_a_job_no_budget_covers_still_gets_a_hold_record(db: Engine) -> None:
    ledger = Ledger(db, clock=FakeClock())
    job = uuid.uuid4()
    assert ledger.hold(job, ("tenant:nobody",), 5).budget_period_ids == ()
    assert ledger.settle(job, 5).charged_micros == 5
    assert entry_count(db) == 0


def test_an_engine_disposed_and_used_again_gets_a_new_autocommit_pool(
    db: Engine, database_url: str
) -> None:
    """Settles commit through the engine's autocommit pool; ``dispose()`` closes that pool,
    and the next step opens a new one instead of failing on the closed one."""
    engine = make_engine(database_url, pool_size=2)
    try:
        b = make_budget(engine, "tenant:acme", "month", 10_000_000)
        ledger = Ledger(engine, clock=FakeClock())
        first, second = uuid.uuid4(), uuid.uuid4()
        for job in (first, second):
            ledger.hold(job, SCOPES, 1_000)
        ledger.settle(first, 600)
        closed = autocommit(engine)
        engine.dispose()
        assert closed.closed
        ledger.settle(second, 400)
        assert autocommit(engine) is not closed
        assert counters(engine)[b] == (10_000_000, 1_000, 0)
    finally:
        engine.dispose()
