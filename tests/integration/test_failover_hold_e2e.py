"""A failover after a billed failure never overruns the budget: before the next backend is
called the job's hold is raised to what is billed already plus that failover's worst case,
or, when a budget cannot take it, the job fails ``budget_exceeded`` having spent what it was
billed. End to end: real Celery worker processes, PostgreSQL and Redis, the simulator billing
a failed run its time as Replicate's hardware prices do."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from orchestrator.domain.jobs import JobSpec
from orchestrator.simulator import RunningSimulator

from .e2e_support import Rig, rig_for, simulator_fixture
from .ledger_helpers import assert_sound

TENANT = "acme"
# two backends billing run time at $0.01/s, each cut off at 4 s: a worst case of $0.04 each,
# so the job holds $0.04; a failed 3 s run on gpu-a is billed $0.03
CATALOGUE: dict[str, Any] = {
    "defaults": {"timeouts": {"connect_s": 2.0, "read_s": 5.0, "start_to_close_s": 4},
                 "idempotency": "completed"},
    "backends": [
        {"name": "gpu-a", "protocol": "predictions", "kinds": ["video"], "tier": "standard",
         "base_url": "${ORCH_SIMULATOR_URL}/gpu-a",
         "price": {"model": "per_compute_second", "usd_per_second": 0.01}},
        {"name": "gpu-b", "protocol": "predictions", "kinds": ["video"], "tier": "standard",
         "base_url": "${ORCH_SIMULATOR_URL}/gpu-b",
         "price": {"model": "per_compute_second", "usd_per_second": 0.01}},
    ],
}
HOLD, FAILED_RUN, RUN = 40_000, 30_000, 30_000


sim = simulator_fixture(CATALOGUE)


@pytest.fixture()
def rig(db: Engine, database_url: str, redis_url: str, sim: RunningSimulator,
        tmp_path: Path) -> Iterator[Rig]:
    with rig_for(CATALOGUE, db, database_url, redis_url, sim, tmp_path) as r:
        r.control("gpu-a", duration_ms=3000, fail_job_rate=1.0, report_usage=False)
        r.control("gpu-b", duration_ms=3000, report_usage=False)
        yield r


def video() -> JobSpec:
    return JobSpec.model_validate({"kind": "video", "input": {"prompt": "a lighthouse",
                                                               "duration_s": 4}})


def period(rig: Rig) -> tuple[int, int, int, int]:
    """(limit, committed, held, excess) of the tenant's month."""
    with rig.engine.connect() as conn:
        return tuple(conn.execute(text(
            "SELECT limit_micros, committed_micros, held_micros, excess_micros "
            "FROM budget_periods")).one())


def overages(rig: Rig) -> int:
    with rig.engine.connect() as conn:
        return int(conn.execute(text(
            "SELECT count(*) FROM ledger_entries WHERE kind = 'overage'")).scalar_one())


def test_a_failover_the_budget_cannot_cover_is_not_started(rig: Rig) -> None:
    rig.budget(HOLD, TENANT)  # room for the job's hold, not for a second run after a bill
    rig.start_worker()
    job_id = rig.submit(video())
    (job,) = rig.wait_final([job_id], timeout=60)

    assert job.status == "failed" and job.error_code == "budget_exceeded", job.error_code
    assert "tenant:acme" in (job.error_message or "")
    (attempt,) = rig.attempts(job_id)  # gpu-b was never called
    assert (attempt.backend, attempt.cost_micros) == ("gpu-a", FAILED_RUN)
    assert rig.provider("gpu-b")["bills"] == []
    assert job.cost_micros == FAILED_RUN
    # was: gpu-b billed too, $0.06 committed on a $0.04 budget, $0.02 of it an overage
    assert period(rig) == (HOLD, FAILED_RUN, 0, 0) and overages(rig) == 0
    with rig.engine.connect() as conn:  # a refused hold alerts, as a 402's does
        refusals = conn.execute(text(
            "SELECT payload FROM alerts WHERE kind = 'refusal'")).scalars().all()
    assert [(p["scope"], p["requested_usd"]) for p in refusals] == [("tenant:acme", 0.03)]
    assert_sound(rig.engine)


def test_a_failover_the_budget_can_cover_raises_the_hold_and_runs(rig: Rig) -> None:
    rig.budget(100_000, TENANT)
    rig.start_worker()
    job_id = rig.submit(video())
    (job,) = rig.wait_final([job_id], timeout=60)

    assert job.status == "succeeded" and job.backend == "gpu-b", job.error_code
    assert job.cost_micros == FAILED_RUN + RUN
    with rig.engine.connect() as conn:
        held = conn.execute(text("SELECT amount_micros FROM holds WHERE job_id = :j"),
                            {"j": job_id}).scalar_one()
        raised = conn.execute(text(
            "SELECT held_delta_micros FROM ledger_entries WHERE job_id = :j AND kind = 'hold' "
            "ORDER BY id"), {"j": job_id}).scalars().all()
    assert held == FAILED_RUN + HOLD and raised == [HOLD, FAILED_RUN]
    # both bills within the raised hold: charged in full, no overage, nothing left held
    assert period(rig) == (100_000, FAILED_RUN + RUN, 0, 0) and overages(rig) == 0
    assert_sound(rig.engine)
