"""A settle or release sent together with its COMMIT (migration 0005's ``orch_apply`` guard).

The server refuses the shortcut exactly when the charge may owe a budget alert, which must be
written in the same transaction; a refused step has changed nothing, and run again without the
shortcut it writes the alert.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from orchestrator.domain.budgets import crossed_thresholds
from orchestrator.domain.jobs import JobSpec
from orchestrator.errors import AlertsOwed
from orchestrator.ledger import Ledger
from orchestrator.ledger.budgets import set_budget
from orchestrator.store.models import Base

from .e2e_support import Rig, run_chain
from .ledger_helpers import FakeClock, assert_sound, counters, hold_status, make_budget

SCOPES = ("tenant:acme",)


def _truncate(db: Engine) -> None:
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with db.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


def _alerts(db: Engine) -> list[tuple[str, int]]:
    """(kind, threshold) of every alert row, sorted."""
    with db.connect() as conn:
        return sorted((r.kind, r.threshold_bp) for r in conn.execute(
            text("SELECT kind, threshold_bp FROM alerts")))


@st.composite
def steps(draw: st.DrawFn) -> tuple[int, tuple[int, ...], int, int]:
    limit = draw(st.integers(1, 10**13))
    thresholds = tuple(sorted(draw(st.sets(st.integers(1, 100_000), min_size=1, max_size=4))))
    before = draw(st.integers(0, limit - 1))
    charge = draw(st.integers(1, limit - before))
    return limit, thresholds, before, charge


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(step=steps())
def test_the_server_refuses_the_shortcut_exactly_when_a_threshold_is_crossed(
    db: Engine, step: tuple[int, tuple[int, ...], int, int]
) -> None:
    limit, thresholds, before, charge = step
    _truncate(db)
    budget = make_budget(db, "tenant:acme", "total", limit, thresholds_bp=thresholds)
    ledger = Ledger(db, clock=FakeClock())
    spent, job = uuid.uuid4(), uuid.uuid4()
    if before:
        ledger.hold(spent, SCOPES, before)
        ledger.settle(spent, before)
    ledger.hold(job, SCOPES, charge)
    alerts_before = _alerts(db)
    owed = crossed_thresholds(limit, before, before + charge, thresholds)

    try:
        with db.begin() as tx:
            ledger.settle(job, charge, conn=tx, commit=True)
    except AlertsOwed:
        assert owed, "refused although no threshold is crossed"
        # nothing of the refused transaction is left
        assert hold_status(db, job) == "held"
        assert counters(db)[budget] == (limit, before, charge)
        assert _alerts(db) == alerts_before
        ledger.settle(job, charge)  # the ledger's own retry: the alerts are written
        assert _alerts(db) == sorted(alerts_before + [("threshold", bp) for bp in owed])
    else:
        assert not owed, f"committed without the alerts for {owed}"
        assert _alerts(db) == alerts_before
    assert hold_status(db, job) == "settled"
    assert counters(db)[budget] == (limit, before + charge, 0)
    assert_sound(db)


def test_any_charge_to_a_budget_with_forecast_thresholds_takes_the_long_way(
    db: Engine,
) -> None:
    make_budget(db, "tenant:acme", "month", 10_000_000, thresholds_bp=(10000,),
                forecast_thresholds_bp=(10000,))
    ledger = Ledger(db, clock=FakeClock())
    free, charged = uuid.uuid4(), uuid.uuid4()
    for job in (free, charged):
        ledger.hold(job, SCOPES, 1_000)
    with db.begin() as tx:  # charging nothing owes nothing: committed with the step
        ledger.release(free, conn=tx, commit=True)
    assert hold_status(db, free) == "released"
    with pytest.raises(AlertsOwed), db.begin() as tx:
        ledger.settle(charged, 1_000, conn=tx, commit=True)
    assert hold_status(db, charged) == "held"
    ledger.settle(charged, 1_000)
    assert hold_status(db, charged) == "settled"


def test_a_refused_shortcut_rolls_back_the_callers_whole_transaction(db: Engine) -> None:
    make_budget(db, "tenant:acme", "month", 1_000)
    ledger = Ledger(db, clock=FakeClock())
    job = uuid.uuid4()
    ledger.hold(job, SCOPES, 1_000)
    with pytest.raises(AlertsOwed), db.begin() as tx:
        tx.execute(text("UPDATE holds SET expires_at = expires_at WHERE job_id = :j"),
                   {"j": job})
        tx.execute(text("CREATE TABLE written_before_the_step (x int)"))
        ledger.settle(job, 1_000, conn=tx, commit=True)  # 100 %: crosses every threshold
    with db.connect() as conn:
        assert conn.execute(text("SELECT to_regclass('written_before_the_step')")
                            ).scalar() is None
    with db.begin() as tx:
        receipt = ledger.settle(job, 1_000, conn=tx)
    assert len(receipt.alert_ids) == 3
    assert [bp for _, bp in _alerts(db)] == [5000, 8000, 10000]


def test_a_job_whose_charge_crosses_a_threshold_settles_with_its_alert(rig: Rig) -> None:
    """The runner's ending transaction takes the long way when the server refuses the
    shortcut: the job succeeds, is charged once, and its alert is written."""
    spec = JobSpec.model_validate({"kind": "video", "tier": "draft", "input": {
        "prompt": "a lighthouse at dusk", "duration_s": 4, "resolution": "720p"}})
    with rig.engine.begin() as conn:
        set_budget(conn, scope="tenant:acme", period="month", limit_micros=10**12,
                   now=datetime.now(UTC))
    job, _ = rig.container.submitter.submit("acme", spec)
    # the limit is the hold, and the first threshold is 0.01 % of it: the settle crosses it
    thresholds = (1, 5000, 10000)
    with rig.engine.begin() as conn:
        set_budget(conn, scope="tenant:acme", period="month", thresholds_bp=thresholds,
                   limit_micros=job.estimated_cost_micros, now=datetime.now(UTC))
    runner, token = rig.container.runner, job.chain_token
    assert token is not None
    run_chain(runner, job.id, token)
    done = rig.job(job.id)
    assert done.status == "succeeded" and done.cost_micros
    charged = min(done.cost_micros, job.estimated_cost_micros)
    owed = crossed_thresholds(job.estimated_cost_micros, 0, charged, thresholds)
    assert owed, "the test needs a charge that crosses a threshold"
    assert _alerts(rig.engine) == [("threshold", bp) for bp in owed]
    assert hold_status(rig.engine, job.id) == "settled"
    assert_sound(rig.engine)
