from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, text

from orchestrator.ledger import Ledger
from orchestrator.ledger.admission import NewJob
from orchestrator.ledger.audit import audit
from orchestrator.ledger.budgets import set_budget

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


class FakeClock:
    """Injected time: tests move it, they never sleep."""

    def __init__(self, at: datetime = T0) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


def make_budget(engine: Engine, scope: str, period: str, limit: int, **kw: object) -> int:
    with engine.begin() as conn:
        return set_budget(
            conn, scope=scope, period=period, limit_micros=limit, now=T0, **kw  # type: ignore[arg-type]
        )


def counters(engine: Engine) -> dict[int, tuple[int, int, int]]:
    """budget id -> (limit, committed, held) summed over its periods."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT budget_id, SUM(limit_micros) l, SUM(committed_micros) c, "
                "SUM(held_micros) h FROM budget_periods GROUP BY budget_id"
            )
        ).all()
    return {r.budget_id: (int(r.l), int(r.c), int(r.h)) for r in rows}


def excesses(engine: Engine) -> dict[int, int]:
    """budget id -> excess (what is past the limit) summed over its periods."""
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT budget_id, SUM(excess_micros) e FROM budget_periods GROUP BY budget_id")
        ).all()
    return {r.budget_id: int(r.e) for r in rows}


def assert_sound(engine: Engine) -> None:
    with engine.connect() as conn:
        problems = audit(conn)
    assert problems == []


def entry_count(engine: Engine, kind: str | None = None) -> int:
    with engine.connect() as conn:
        if kind is None:
            return int(conn.execute(text("SELECT count(*) FROM ledger_entries")).scalar_one())
        return int(
            conn.execute(
                text("SELECT count(*) FROM ledger_entries WHERE kind = :k"), {"k": kind}
            ).scalar_one()
        )


def hold_status(engine: Engine, job_id: uuid.UUID) -> str:
    """held | settled | released | expired."""
    with engine.connect() as conn:
        return str(conn.execute(text("SELECT status FROM holds WHERE job_id = :j"),
                                {"j": job_id}).scalar_one())


def admitted_text_job(ledger: Ledger) -> NewJob:
    """A txt-small job of tenant acme (worst case 7,725 micro-USD), admitted under
    tenant:acme's budget and waiting for its chain."""
    job = NewJob(id=uuid.uuid4(), tenant="acme", kind="text", tier="standard",
                 spec={"kind": "text"}, route={"backends": ["txt-small"]},
                 estimated_cost_micros=7_725, deadline_at=T0 + timedelta(hours=1),
                 chain_token=uuid.uuid4(), wake_at=T0)
    assert ledger.admit_job(job, ("tenant:acme",), timedelta(hours=2)) is not None
    return job


def waiting_on_lock(engine: Engine, query_like: str) -> int:
    """Sessions (other than this one) waiting on a lock in a statement like ``query_like``."""
    with engine.connect() as conn:
        return int(conn.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
            "AND datname = current_database() "
            "AND wait_event_type = 'Lock' AND query LIKE :q"), {"q": query_like}).scalar_one())
