"""Expiry never drops a live job's hold: only a hold whose job is gone, or final with no
attempt still open, expires; a live job's hold is left for its chain to settle."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import Engine, text

from orchestrator.ledger import Ledger
from orchestrator.ledger.admission import NewJob
from orchestrator.store import jobs as repo

from .ledger_helpers import T0, FakeClock, assert_sound, counters, hold_status, make_budget

SCOPES = ("tenant:acme",)
TTL = timedelta(minutes=10)


def admit(ledger: Ledger, estimate: int) -> NewJob:
    job = NewJob(id=uuid.uuid4(), tenant="acme", kind="video", tier="draft",
                 spec={"kind": "video"}, route={"backends": ["vid-draft"]},
                 estimated_cost_micros=estimate, deadline_at=T0 + timedelta(days=1),
                 chain_token=uuid.uuid4(), wake_at=T0)
    assert ledger.admit_job(job, SCOPES, TTL) is not None
    return job


def set_status(db: Engine, job: NewJob, status: str) -> None:
    with db.begin() as conn:
        conn.execute(text("UPDATE jobs SET status = :s WHERE id = :j"),
                     {"s": status, "j": job.id})


def test_a_live_jobs_hold_outlives_its_expiry_and_a_final_jobs_leftover_expires(
    db: Engine,
) -> None:
    b = make_budget(db, "tenant:acme", "month", 50_000_000)
    clock = FakeClock()
    ledger = Ledger(db, clock=clock)
    queued, running, failed = admit(ledger, 1_000_000), admit(ledger, 2_000_000), admit(
        ledger, 4_000_000)
    with db.begin() as conn:
        assert repo.claim_and_open(conn, running.id, running.chain_token, T0, "vid-draft",
                                     lease_s=60)
    set_status(db, failed, "failed")  # final, its hold somehow left held

    clock.at = T0 + timedelta(hours=3)  # long past every hold's expiry
    assert ledger.expire_stale() == [failed.id]

    assert [hold_status(db, j.id) for j in (queued, running, failed)] == [
        "held", "held", "expired"]
    assert counters(db)[b] == (50_000_000, 0, 3_000_000)
    # the running job's chain settles its hold as ever
    assert ledger.settle(running.id, 1_500_000).charged_micros == 1_500_000
    assert ledger.expire_stale() == []
    assert hold_status(db, queued.id) == "held"
    assert_sound(db)


def test_a_final_job_with_an_attempt_still_open_keeps_its_hold_until_it_closes(
    db: Engine,
) -> None:
    """A cancelled job whose attempt may still be billed: its hold waits for the attempt."""
    b = make_budget(db, "tenant:acme", "month", 50_000_000)
    clock = FakeClock()
    ledger = Ledger(db, clock=clock)
    job = admit(ledger, 2_000_000)
    with db.begin() as conn:
        opened = repo.claim_and_open(conn, job.id, job.chain_token, T0, "vid-draft",
                                         lease_s=60)
    assert opened is not None
    set_status(db, job, "cancelled")

    clock.at = T0 + timedelta(hours=1)
    assert ledger.expire_stale() == []
    assert hold_status(db, job.id) == "held"

    with db.begin() as conn:
        assert repo.close_attempt(conn, opened[1].id, "cancelled", clock.at, fault="cancelled")
    assert ledger.expire_stale() == [job.id]
    assert counters(db)[b] == (50_000_000, 0, 0)
    assert_sound(db)


def test_a_hold_whose_job_is_gone_expires(db: Engine) -> None:
    make_budget(db, "tenant:acme", "month", 50_000_000)
    clock = FakeClock()
    ledger = Ledger(db, clock=clock)
    job = admit(ledger, 1_000_000)
    with db.begin() as conn:
        conn.execute(text("DELETE FROM jobs WHERE id = :j"), {"j": job.id})
    clock.at = T0 + TTL
    assert ledger.expire_stale() == [job.id]
    assert_sound(db)
