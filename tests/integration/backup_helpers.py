"""A database with a bit of everything, made through the real ledger, and its contents
as comparable values (for the backup tests)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text

from orchestrator.backup import PgTools
from orchestrator.backup.pgtools import wheel_bin_dir
from orchestrator.domain.budgets import covering_scopes
from orchestrator.embedded.scratch import scratch_database
from orchestrator.ledger import Ledger
from orchestrator.ledger.admission import NewJob
from orchestrator.ledger.budgets import set_budget
from orchestrator.ledger.endings import ClosingAttempt
from orchestrator.store import jobs as repo
from orchestrator.store.engine import make_engine
from orchestrator.store.keys import create_key

from .ledger_helpers import FakeClock

TOOLS = PgTools.at(wheel_bin_dir())
SCOPES = covering_scopes("acme")
# every table the migrations make, and the sequences behind their ids
TABLES = ("alembic_version", "budgets", "budget_periods", "holds", "hold_lines",
          "ledger_entries", "alerts", "alert_deliveries", "api_keys", "jobs", "attempts")
SEQUENCES = ("budgets_id_seq", "budget_periods_id_seq", "holds_id_seq",
             "ledger_entries_id_seq", "api_keys_id_seq", "attempts_id_seq")


def run_jobs(engine: Engine, ledger: Ledger, n: int, now: datetime) -> None:
    """``n`` jobs admitted with a hold; of each four, one settled below its hold, one
    charged above it (an overage), one failed with nothing billed, one left queued."""
    for i in range(n):
        token = uuid.uuid4()
        job = NewJob(id=uuid.uuid4(), tenant="acme", kind="video", tier="draft",
                     spec={"kind": "video", "input": {"duration_s": 4}},
                     route={"backends": ["vid-draft"]}, estimated_cost_micros=2_000_000,
                     deadline_at=now + timedelta(hours=1), chain_token=token,
                     wake_at=now + timedelta(minutes=1), idempotency_key=f"k{i}-{token}",
                     request_hash="h")
        assert ledger.admit_job(job, SCOPES, timedelta(hours=6)) is not None
        if i % 4 == 3:
            continue
        with engine.begin() as conn:
            assert repo.claim_or_get(conn, job.id, token, now) is not None
            attempt = repo.open_attempt(conn, job.id, token, 1, "vid-draft", now, lease_s=60)
        assert attempt is not None
        status, outcome, cost = [("succeeded", "succeeded", 1_500_000),
                                 ("succeeded", "succeeded", 2_600_000),
                                 ("failed", "failed", 0)][i % 4]
        ended = ledger.end_job(job.id, status, now, backend="vid-draft", attempt=ClosingAttempt(
            attempt.id, outcome, "success" if cost else "backend", cost, external_id=f"p-{i}"))
        assert ended is not None and ended.ended


def populate(engine: Engine, jobs: int = 12) -> None:
    now = datetime.now(UTC)
    with engine.begin() as conn:
        set_budget(conn, scope="global", period="month", limit_micros=10**10, now=now)
        set_budget(conn, scope="tenant:acme", period="month", limit_micros=30_000_000, now=now)
        create_key(conn, "admin", admin=True)
        create_key(conn, "acme")
    ledger = Ledger(engine, clock=FakeClock(now))
    run_jobs(engine, ledger, jobs, now)
    loose = uuid.uuid4()  # a hold without a job row, settled
    ledger.hold(loose, SCOPES, 100_000)
    ledger.settle(loose, 90_000)


def contents(engine: Engine) -> dict[str, Any]:
    """Every row of every table (as JSON text, sorted) and every sequence's position; then
    the engine's connections are closed (a restore refuses a database with sessions)."""
    out: dict[str, Any] = {}
    with engine.connect() as conn:
        for table in TABLES:
            out[table] = conn.execute(text(
                f"SELECT to_jsonb(t)::text AS r FROM {table} t ORDER BY r")).scalars().all()
        for seq in SEQUENCES:
            out[seq] = conn.execute(text(f"SELECT last_value, is_called FROM {seq}")).one()
    engine.dispose()
    return out


@pytest.fixture(name="occupied")
def occupied_fixture(servers: tuple[str, str]) -> Iterator[tuple[str, Engine]]:
    """A database with other contents (4 jobs), and an engine on it (disposed: no session)."""
    with scratch_database(servers[0]) as url:
        engine = make_engine(url, pool_size=2)
        populate(engine, jobs=4)
        engine.dispose()
        yield url, engine
        engine.dispose()
