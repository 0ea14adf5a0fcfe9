"""A job's admission (``Ledger.admit_job``): the queued job row and its hold in one statement."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import Engine, text

from orchestrator.errors import BudgetExceeded
from orchestrator.ledger import Ledger
from orchestrator.ledger.admission import NewJob

from .ledger_helpers import T0, FakeClock, assert_sound, counters, entry_count, make_budget

SCOPES = ("global", "tenant:acme")
TTL = timedelta(hours=2)


def new_job(estimate: int, key: str | None = None, tenant: str = "acme") -> NewJob:
    return NewJob(id=uuid.uuid4(), tenant=tenant, kind="video", tier="draft",
                  spec={"kind": "video"}, route={"backends": ["vid-draft"]},
                  estimated_cost_micros=estimate, deadline_at=T0 + timedelta(hours=1),
                  chain_token=uuid.uuid4(), wake_at=T0 + timedelta(minutes=1),
                  idempotency_key=key, request_hash="h" if key else None)


def jobs_and_holds(db: Engine) -> tuple[int, int]:
    with db.connect() as conn:
        return (int(conn.execute(text("SELECT count(*) FROM jobs")).scalar_one()),
                int(conn.execute(text("SELECT count(*) FROM holds")).scalar_one()))


def test_admission_writes_the_queued_job_and_holds_it_in_every_covering_budget(
    db: Engine,
) -> None:
    g = make_budget(db, "global", "day", 100_000_000)
    t = make_budget(db, "tenant:acme", "month", 10_000_000)
    make_budget(db, "tenant:other", "month", 10_000_000)
    ledger = Ledger(db, clock=FakeClock())
    job = new_job(2_500_000)

    row = ledger.admit_job(job, SCOPES, TTL)  # no period row exists yet: made, then admitted

    assert row is not None
    assert (row.id, row.status, row.tenant, row.estimated_cost_micros, row.chain_token) == (
        job.id, "queued", "acme", 2_500_000, job.chain_token)
    assert row.spec == {"kind": "video"} and row.route == {"backends": ["vid-draft"]}
    assert counters(db)[g] == (100_000_000, 0, 2_500_000)
    assert counters(db)[t] == (10_000_000, 0, 2_500_000)
    with db.connect() as conn:
        expires = conn.execute(text("SELECT expires_at FROM holds WHERE job_id = :j"),
                               {"j": job.id}).scalar_one()
    assert expires == T0 + TTL
    assert entry_count(db, "hold") == 2
    assert_sound(db)


def test_a_taken_idempotency_key_admits_nothing(db: Engine) -> None:
    b = make_budget(db, "tenant:acme", "month", 10_000_000)
    ledger = Ledger(db, clock=FakeClock())
    assert ledger.admit_job(new_job(1_000_000, key="k1"), SCOPES, TTL) is not None

    assert ledger.admit_job(new_job(3_000_000, key="k1"), SCOPES, TTL) is None

    assert jobs_and_holds(db) == (1, 1)
    assert counters(db)[b] == (10_000_000, 0, 1_000_000)
    # the same key is another tenant's own
    assert ledger.admit_job(new_job(1_000_000, key="k1", tenant="zed"), ("tenant:zed",),
                            TTL) is not None


def test_a_refusal_names_the_budget_and_leaves_no_job(db: Engine) -> None:
    make_budget(db, "global", "day", 100_000_000)
    t = make_budget(db, "tenant:acme", "month", 3_000_000)
    ledger = Ledger(db, clock=FakeClock())
    ledger.admit_job(new_job(2_000_000), SCOPES, TTL)

    with pytest.raises(BudgetExceeded) as refused:
        ledger.admit_job(new_job(1_500_000, key="k"), SCOPES, TTL)

    assert refused.value.details["scope"] == "tenant:acme"
    assert refused.value.details["remaining_micros"] == 1_000_000
    assert jobs_and_holds(db) == (1, 1)
    assert counters(db)[t] == (3_000_000, 0, 2_000_000)
    assert entry_count(db, "hold") == 2
    # the key was not used up by the refused submission
    assert ledger.admit_job(new_job(1_000_000, key="k"), SCOPES, TTL) is not None
    assert_sound(db)


def test_a_budget_created_after_earlier_admissions_covers_the_next(db: Engine) -> None:
    make_budget(db, "global", "day", 100_000_000)
    ledger = Ledger(db, clock=FakeClock())
    ledger.admit_job(new_job(1_000_000), SCOPES, TTL)

    t = make_budget(db, "tenant:acme", "month", 1_500_000)
    ledger.admit_job(new_job(1_000_000), SCOPES, TTL)

    assert counters(db)[t] == (1_500_000, 0, 1_000_000)
    with pytest.raises(BudgetExceeded):
        ledger.admit_job(new_job(1_000_000), SCOPES, TTL)


def test_a_new_period_gets_its_row_on_its_first_admission(db: Engine) -> None:
    b = make_budget(db, "tenant:acme", "day", 1_500_000)
    clock = FakeClock()
    ledger = Ledger(db, clock=clock)
    ledger.admit_job(new_job(1_000_000), SCOPES, TTL)
    with pytest.raises(BudgetExceeded):
        ledger.admit_job(new_job(1_000_000), SCOPES, TTL)

    clock.at = T0 + timedelta(days=1)
    ledger.admit_job(new_job(1_000_000), SCOPES, TTL)

    with db.connect() as conn:
        periods = conn.execute(text(
            "SELECT period_start, held_micros FROM budget_periods WHERE budget_id = :b "
            "ORDER BY period_start"), {"b": b}).all()
    assert [(p.period_start.date().isoformat(), p.held_micros) for p in periods] == [
        ("2026-11-22", 1_000_000), ("2026-11-23", 1_000_000)]


def test_a_job_no_budget_covers_is_admitted_with_an_unlined_hold(db: Engine) -> None:
    ledger = Ledger(db, clock=FakeClock())
    job = new_job(4_000_000)

    assert ledger.admit_job(job, SCOPES, TTL) is not None

    assert jobs_and_holds(db) == (1, 1)
    assert entry_count(db) == 0
    settled = ledger.settle(job.id, 1_000_000)
    assert settled.charged_micros == 1_000_000
