"""The guard of the ledger's one-statement steps (migrations 0005 and 0006).

A settle, release or job ending that runs as one statement committing on its own is refused
by the server exactly when the charge may owe a budget alert, which must be written in the
same transaction; a refused step has changed nothing, and the ledger then runs it in a
transaction that writes the alert.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from orchestrator.domain.budgets import crossed_thresholds
from orchestrator.domain.jobs import JobSpec
from orchestrator.ledger import Ledger
from orchestrator.ledger.budgets import set_budget
from orchestrator.ledger.endings import ClosingAttempt, end_job
from orchestrator.store import jobs as repo
from orchestrator.store.models import Base

from .e2e_support import Rig, run_chain
from .ledger_helpers import T0, FakeClock, assert_sound, counters, hold_status, make_budget

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


def _guarded_finish(db: Engine, job: uuid.UUID, status: str, charge: int) -> bool:
    """The hold's guarded settle or release, alone, as the ledger sends it: True if it
    committed, False if the server refused it for an alert owed."""
    kind = "settle" if status == "settled" else "release"
    with db.execution_options(isolation_level="AUTOCOMMIT").connect() as conn:
        try:
            conn.execute(text(
                "SELECT * FROM orch_finish_hold(:j, :s, :k, :c, :now, true)"),
                {"j": job, "s": status, "k": kind, "c": charge, "now": T0}).all()
        except DBAPIError as exc:
            assert getattr(exc.orig, "sqlstate", None) == "OR2AL"
            return False
    return True


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

    if not _guarded_finish(db, job, "settled", charge):
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
    assert _guarded_finish(db, free, "released", 0)  # charging nothing owes nothing
    assert hold_status(db, free) == "released"
    assert not _guarded_finish(db, charged, "settled", 1_000)
    assert hold_status(db, charged) == "held"
    ledger.settle(charged, 1_000)
    assert hold_status(db, charged) == "settled"


def test_a_step_in_the_callers_transaction_writes_its_alerts_there(db: Engine) -> None:
    make_budget(db, "tenant:acme", "month", 1_000)
    ledger = Ledger(db, clock=FakeClock())
    job = uuid.uuid4()
    ledger.hold(job, SCOPES, 1_000)
    with db.begin() as tx:
        receipt = ledger.settle(job, 1_000, conn=tx)  # 100 %: crosses every threshold
    assert len(receipt.alert_ids) == 3
    assert [bp for _, bp in _alerts(db)] == [5000, 8000, 10000]


def _crossing_budget(rig: Rig, estimate: int) -> tuple[int, ...]:
    """The tenant's limit set to ``estimate`` with a first threshold of 0.01 %: a job's
    charge crosses it."""
    thresholds = (1, 5000, 10000)
    with rig.engine.begin() as conn:
        set_budget(conn, scope="tenant:acme", period="month", thresholds_bp=thresholds,
                   limit_micros=estimate, now=datetime.now(UTC))
    return thresholds


def test_a_refused_job_ending_changes_nothing(rig: Rig) -> None:
    """orch_end_job refused by its guard leaves the attempt open, the job running and the
    hold held; the ledger's ending then takes the long way and does it all."""
    with rig.engine.begin() as conn:
        set_budget(conn, scope="tenant:acme", period="month", limit_micros=10**12,
                   now=datetime.now(UTC))
    job, _ = rig.container.submitter.submit("acme", _VIDEO)
    _crossing_budget(rig, job.estimated_cost_micros)
    token = job.chain_token
    assert token is not None
    rig.container.runner.advance(job.id, token)  # claimed, submitted: now it polls
    with rig.engine.begin() as conn:
        (attempt,) = repo.attempts(conn, job.id)
    closing = ClosingAttempt(attempt.id, "succeeded", "success", job.estimated_cost_micros)
    now = datetime.now(UTC)
    with rig.engine.execution_options(isolation_level="AUTOCOMMIT").connect() as conn:
        try:
            end_job(conn, job.id, "succeeded", now, guard=True, attempt=closing)
        except DBAPIError as exc:
            assert getattr(exc.orig, "sqlstate", None) == "OR2AL"
        else:
            raise AssertionError("the guard let through a charge that crosses a threshold")
    with rig.engine.begin() as conn:
        assert repo.attempts(conn, job.id)[0].outcome is None
    assert rig.job(job.id).status == "running"
    assert hold_status(rig.engine, job.id) == "held"
    assert _alerts(rig.engine) == []

    end = rig.container.ledger.end_job(job.id, "succeeded", now, attempt=closing)
    assert end is not None and end.ended and len(end.alert_ids) == 3
    assert end.charged_micros == end.cost_micros == job.estimated_cost_micros
    assert rig.job(job.id).status == "succeeded"
    assert hold_status(rig.engine, job.id) == "settled"
    assert [bp for _, bp in _alerts(rig.engine)] == [1, 5000, 10000]
    # a duplicate ending changes nothing
    assert rig.container.ledger.end_job(job.id, "succeeded", now, attempt=closing) is None
    assert_sound(rig.engine)


_VIDEO = JobSpec.model_validate({"kind": "video", "tier": "draft", "input": {
    "prompt": "a lighthouse at dusk", "duration_s": 4, "resolution": "720p"}})


def test_a_job_whose_charge_crosses_a_threshold_settles_with_its_alert(rig: Rig) -> None:
    """The runner's ending takes the long way when the server refuses the one-statement
    ending: the job succeeds, is charged once, and its alert is written."""
    with rig.engine.begin() as conn:
        set_budget(conn, scope="tenant:acme", period="month", limit_micros=10**12,
                   now=datetime.now(UTC))
    job, _ = rig.container.submitter.submit("acme", _VIDEO)
    thresholds = _crossing_budget(rig, job.estimated_cost_micros)
    runner, token = rig.container.runner, job.chain_token
    assert token is not None
    run_chain(runner, job.id, token)
    done = rig.job(job.id)
    assert done.status == "succeeded" and done.cost_micros
    assert done.cost_micros <= job.estimated_cost_micros, "the test needs no overage"
    charged = done.cost_micros  # in full (migration 0008)
    owed = crossed_thresholds(job.estimated_cost_micros, 0, charged, thresholds)
    assert owed, "the test needs a charge that crosses a threshold"
    assert _alerts(rig.engine) == [("threshold", bp) for bp in owed]
    assert hold_status(rig.engine, job.id) == "settled"
    assert_sound(rig.engine)
