"""A bill above its hold is charged in full (migration 0008): the settle/release entry moves
the hold, an ``overage:<job>`` entry adds the rest, past the limit if need be (the period's
excess), an ``overage`` alert is written in the same transaction, and later holds see it."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from orchestrator.errors import BudgetExceeded
from orchestrator.ledger import Ledger
from orchestrator.ledger.admission import NewJob
from orchestrator.ledger.endings import ClosingAttempt
from orchestrator.store import jobs as repo

from .ledger_helpers import T0, FakeClock, assert_sound, counters, entry_count, make_budget

SCOPES = ("global", "tenant:acme")


def entries(db: Engine, job: uuid.UUID) -> list[tuple[Any, ...]]:
    """(kind, key, period id, held delta, committed delta) of the job's entries."""
    with db.connect() as conn:
        return [tuple(r) for r in conn.execute(text(
            "SELECT kind, idempotency_key, budget_period_id, held_delta_micros, "
            "committed_delta_micros FROM ledger_entries WHERE job_id = :j "
            "ORDER BY kind, budget_period_id"), {"j": job})]


def alert_rows(db: Engine, kind: str | None = None) -> list[tuple[Any, ...]]:
    """(kind, threshold_bp, bucket, payload) of the alert rows, oldest first."""
    with db.connect() as conn:
        return [tuple(r) for r in conn.execute(text(
            "SELECT kind, threshold_bp, bucket, payload FROM alerts "
            "WHERE CAST(:k AS text) IS NULL OR kind = :k ORDER BY created_at, kind, "
            "budget_period_id"), {"k": kind})]


def excess(db: Engine, budget_id: int) -> int:
    with db.connect() as conn:
        return int(conn.execute(text(
            "SELECT SUM(excess_micros) FROM budget_periods WHERE budget_id = :b"),
            {"b": budget_id}).scalar_one())


def hold_id(db: Engine, job: uuid.UUID) -> int:
    with db.connect() as conn:
        return int(conn.execute(text("SELECT id FROM holds WHERE job_id = :j"),
                                {"j": job}).scalar_one())


def test_a_bill_above_the_hold_is_charged_in_full_with_an_overage_entry_and_alert(
    db: Engine,
) -> None:
    g = make_budget(db, "global", "total", 100_000_000)
    t = make_budget(db, "tenant:acme", "month", 10_000_000)
    ledger = Ledger(db, clock=FakeClock())
    job = uuid.uuid4()
    periods = ledger.hold(job, SCOPES, 2_000_000).budget_period_ids

    receipt = ledger.settle(job, 3_000_000)

    assert (receipt.charged_micros, receipt.released_micros, receipt.overage_micros) == (
        3_000_000, 0, 1_000_000)
    assert counters(db)[g] == (100_000_000, 3_000_000, 0)
    assert counters(db)[t] == (10_000_000, 3_000_000, 0)
    assert entries(db, job) == sorted(
        [("hold", f"hold:{job}", p, 2_000_000, 0) for p in periods]
        + [("settle", f"settle:{job}", p, -2_000_000, 2_000_000) for p in periods]
        + [("overage", f"overage:{job}", p, 0, 1_000_000) for p in periods]
    )
    overages = alert_rows(db, "overage")
    assert len(overages) == 2 == len(receipt.alert_ids)  # one per covering period
    for kind, bp, bucket, payload in overages:
        assert (kind, bp, bucket) == ("overage", 0, hold_id(db, job))
        assert payload["job_id"] == str(job)
        assert (payload["hold_usd"], payload["charge_usd"], payload["overage_usd"]) == (
            2.0, 3.0, 1.0)
        assert (payload["hold_micros"], payload["charge_micros"],
                payload["overage_micros"]) == (2_000_000, 3_000_000, 1_000_000)
    assert excess(db, t) == excess(db, g) == 0  # within the limits: nothing past them
    assert_sound(db)

    replay = ledger.settle(job, 3_000_000)
    assert replay.replayed and replay.overage_micros == 1_000_000
    assert replay.alert_ids == ()
    assert entry_count(db, "overage") == 2 and len(alert_rows(db, "overage")) == 2
    assert_sound(db)


def test_an_overage_past_the_limit_is_excess_and_later_holds_see_it(db: Engine) -> None:
    t = make_budget(db, "tenant:acme", "month", 5_000_000)
    ledger = Ledger(db, clock=FakeClock())
    job = uuid.uuid4()
    ledger.hold(job, SCOPES, 4_000_000)
    ledger.hold(uuid.uuid4(), SCOPES, 1_000_000)  # the budget is full

    receipt = ledger.release(job, charge_micros=6_500_000)

    assert receipt.overage_micros == 2_500_000
    assert counters(db)[t] == (5_000_000, 6_500_000, 1_000_000)  # past the limit
    assert excess(db, t) == 2_500_000
    # the charge crossed 50, 80 and 100 %: threshold alerts as usual, and the overage's
    assert sorted((k, bp) for k, bp, _, _ in alert_rows(db)) == [
        ("overage", 0), ("threshold", 5000), ("threshold", 8000), ("threshold", 10000)]
    assert len(receipt.alert_ids) == 4
    with pytest.raises(BudgetExceeded) as refused:
        ledger.hold(uuid.uuid4(), SCOPES, 1)
    assert refused.value.remaining_micros == 0
    assert_sound(db)

    make_budget(db, "tenant:acme", "month", 10_000_000)  # raised: room again, no excess
    assert excess(db, t) == 0
    ledger.hold(uuid.uuid4(), SCOPES, 2_500_000)
    with pytest.raises(BudgetExceeded):  # 6.5 committed + 3.5 held = 10
        ledger.hold(uuid.uuid4(), SCOPES, 1)
    assert_sound(db)


def test_the_overage_and_its_alert_commit_with_the_step_or_not_at_all(db: Engine) -> None:
    t = make_budget(db, "tenant:acme", "month", 5_000_000, thresholds_bp=(10000,))
    ledger = Ledger(db, clock=FakeClock())
    job = uuid.uuid4()
    ledger.hold(job, SCOPES, 1_000_000)

    with db.connect() as conn:
        tx = conn.begin()
        receipt = ledger.settle(job, 1_500_000, conn=conn)
        assert receipt.overage_micros == 500_000 and len(receipt.alert_ids) == 1
        assert conn.execute(text("SELECT count(*) FROM alerts")).scalar_one() == 1
        tx.rollback()
    assert alert_rows(db) == [] and entry_count(db, "overage") == 0
    assert counters(db)[t] == (5_000_000, 0, 1_000_000)

    with db.begin() as conn:
        ledger.settle(job, 1_500_000, conn=conn)
    assert [k for k, _, _, _ in alert_rows(db)] == ["overage"]
    assert counters(db)[t] == (5_000_000, 1_500_000, 0)
    assert_sound(db)


def test_the_one_statement_step_is_refused_for_any_overage(db: Engine) -> None:
    """No threshold crossed, no forecast: the overage alert alone takes the long way."""
    t = make_budget(db, "tenant:acme", "total", 10**12, thresholds_bp=(10000,))
    ledger = Ledger(db, clock=FakeClock())
    job = uuid.uuid4()
    ledger.hold(job, SCOPES, 1_000)
    with db.execution_options(isolation_level="AUTOCOMMIT").connect() as conn:
        with pytest.raises(DBAPIError) as refused:
            conn.execute(text(
                "SELECT * FROM orch_finish_hold(:j, 'settled', 'settle', 1001, :now, true)"),
                {"j": job, "now": T0}).all()
        assert getattr(refused.value.orig, "sqlstate", None) == "OR2AL"
    assert counters(db)[t] == (10**12, 0, 1_000) and alert_rows(db) == []

    assert ledger.settle(job, 1_001).overage_micros == 1
    assert [k for k, _, _, _ in alert_rows(db)] == ["overage"]
    assert_sound(db)


def test_a_job_ending_charges_its_cost_in_full(db: Engine) -> None:
    t = make_budget(db, "tenant:acme", "month", 10_000_000, thresholds_bp=(10000,))
    ledger = Ledger(db, clock=FakeClock())
    job = NewJob(id=uuid.uuid4(), tenant="acme", kind="video", tier="draft",
                 spec={"kind": "video"}, route={"backends": ["vid-draft"]},
                 estimated_cost_micros=2_000_000, deadline_at=T0 + timedelta(hours=1),
                 chain_token=uuid.uuid4(), wake_at=T0)
    assert ledger.admit_job(job, SCOPES, timedelta(hours=2)) is not None
    with db.begin() as conn:
        opened = repo.claim_and_open(conn, job.id, job.chain_token, T0, "vid-draft",
                                         lease_s=60)
    assert opened is not None
    closing = ClosingAttempt(opened[1].id, "succeeded", "success", 2_750_000)

    end = ledger.end_job(job.id, "succeeded", T0, attempt=closing, backend="vid-draft")

    assert end is not None and end.ended
    assert (end.cost_micros, end.charged_micros, end.hold_micros, end.overage_micros) == (
        2_750_000, 2_750_000, 2_000_000, 750_000)
    assert len(end.alert_ids) == 1  # the overage's (no threshold crossed)
    assert counters(db)[t] == (10_000_000, 2_750_000, 0)
    assert entries(db, job.id)[1][0] == "overage"
    assert ledger.end_job(job.id, "succeeded", T0, attempt=closing) is None  # a duplicate
    assert entry_count(db, "overage") == 1 and len(alert_rows(db)) == 1
    assert_sound(db)


def test_a_job_no_budget_covers_reports_its_overage_too(db: Engine) -> None:
    ledger = Ledger(db, clock=FakeClock())
    job = uuid.uuid4()
    ledger.hold(job, ("tenant:nobody",), 5)
    receipt = ledger.settle(job, 8)
    assert (receipt.charged_micros, receipt.overage_micros, receipt.alert_ids) == (8, 3, ())
    assert entry_count(db) == 0


def test_the_check_still_refuses_going_past_the_limit_any_other_way(db: Engine) -> None:
    make_budget(db, "tenant:acme", "month", 1_000)
    Ledger(db, clock=FakeClock()).hold(uuid.uuid4(), SCOPES, 1_000)
    with pytest.raises(DBAPIError, match="within_limit"), db.begin() as conn:
        conn.execute(text("UPDATE budget_periods SET held_micros = held_micros + 1"))
    with pytest.raises(DBAPIError, match="excess_nonnegative"), db.begin() as conn:
        conn.execute(text("UPDATE budget_periods SET excess_micros = -1"))
