"""Calibration and outcome-aware ranking end to end (issue 22): settled jobs change the
ranking, holds stay on the worst case; a flaky cheap backend stops winning under balanced.
Real Celery worker processes, the simulator over HTTP, real PostgreSQL and Redis."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from orchestrator.api.views import backend_resource
from orchestrator.domain.jobs import JobSpec
from orchestrator.ledger.audit import audit
from orchestrator.ledger.budgets import set_budget
from orchestrator.reports import estimate_accuracy
from orchestrator.simulator import RunningSimulator

from .e2e_support import E2E_CATALOGUE, Rig, rig_for, simulator_fixture, simulator_for

TENANT = "acme"


def _video(name: str, usd_per_second: float) -> dict[str, Any]:
    return {"name": name, "protocol": "predictions", "kinds": ["video"], "tier": "draft",
            "base_url": "${ORCH_SIMULATOR_URL}/" + name,
            "price": {"model": "per_second", "usd_per_second": usd_per_second,
                      "resolution_multipliers": {"720p": 1.0}}}


# vid-b's worst case is dearer than vid-a's, but its provider bills half of what is asked
CATALOGUE: dict[str, Any] = {
    "defaults": {"timeouts": {"connect_s": 2.0, "read_s": 5.0, "start_to_close_s": 120},
                 "idempotency": "completed"},
    "backends": [_video("vid-a", 0.03), _video("vid-b", 0.035)],
}


sim = simulator_fixture(CATALOGUE)


@pytest.fixture()
def crig(db: Engine, database_url: str, redis_url: str, sim: RunningSimulator,
         tmp_path: Path) -> Iterator[Rig]:
    with rig_for(CATALOGUE, db, database_url, redis_url, sim, tmp_path,
                 calibration_min_samples=3, calibration_refresh_s=0) as r:
        with r.engine.begin() as conn:
            set_budget(conn, scope=f"tenant:{TENANT}", period="month",
                       limit_micros=1_000_000_000, now=datetime.now(UTC))
        yield r


def video(**kw: Any) -> JobSpec:
    return JobSpec.model_validate({"kind": "video", "tier": "draft",
                                   "input": {"prompt": "tide pools", "duration_s": 10}, **kw})


def run(r: Rig, spec: JobSpec) -> uuid.UUID:
    job, created = r.container.submitter.submit(TENANT, spec)
    assert created
    r.wait_final([job.id])
    return job.id


def test_settled_jobs_change_the_ranking_and_holds_stay_worst_case(crig: Rig) -> None:
    crig.control("vid-a", duration_ms=100)
    crig.control("vid-b", duration_ms=100, usage_factor=0.5)
    crig.start_worker()
    before = crig.container.submitter.quote(video())
    assert before.backends == ("vid-a", "vid-b")  # 0.30 < 0.35 worst case
    assert all(c.calibration_ppm is None and c.expected == c.estimate_micros
               for c in before.candidates)

    for _ in range(3):  # three jobs on vid-b settle at half their estimate
        job = crig.job(run(crig, video(backend="vid-b")))
        assert job.status == "succeeded" and job.cost_micros == 175_000

    after = crig.container.submitter.quote(video())
    assert after.backends == ("vid-b", "vid-a")
    b = after.candidates[0]
    assert (b.calibration_ppm, b.calibration_samples) == (500_000, 3)
    assert b.estimate_micros == 350_000 and b.expected == 175_000
    # GET /v1/backends shows the factor too
    cat, c = crig.container.catalogue(), crig.container
    shown = [backend_resource(cat.get(n), c.health.snapshot([n])[n], time.time(),
                              c.calibrator.factors().get(n)) for n in ("vid-a", "vid-b")]
    assert [x["calibration"] for x in shown] == [None, {"ratio": 0.5, "samples": 3}]

    job = crig.job(run(crig, video()))
    assert job.status == "succeeded" and job.backend == "vid-b"
    assert job.estimated_cost_micros == 350_000  # the hold: the plan's worst case, not 175k
    assert job.cost_micros == 175_000
    with crig.engine.connect() as conn:
        assert audit(conn) == []
        (acc,) = estimate_accuracy(conn, tenant=TENANT)
        held = conn.execute(text(
            "SELECT amount_micros FROM holds WHERE job_id = :j"), {"j": job.id}).scalar_one()
    assert held == 350_000
    # before calibration every job was 50 % off its estimate; the job routed after it was
    # exactly on its calibrated expected cost
    assert acc.backend == "vid-b" and acc.jobs == 4
    assert acc.within_tolerance == 0 and acc.err_p95 == pytest.approx(0.5)
    assert acc.calibrated_within == 1


def test_balanced_avoids_a_flaky_cheap_backend(db: Engine, database_url: str, redis_url: str,
                                               tmp_path: Path) -> None:
    with (simulator_for(E2E_CATALOGUE) as sim,
          rig_for(E2E_CATALOGUE, db, database_url, redis_url, sim, tmp_path) as r):
        r.control("vid-cheap", duration_ms=100)
        r.control("vid-mid", duration_ms=100)
        r.start_worker()
        # vid-cheap fails two jobs of every three: never three in a row, so its breaker
        # stays closed and only its observed success rate tells
        for _ in range(2):
            r.control("vid-cheap", error="prediction_failed", times=2)
            outcomes = [r.job(run(r, video(backend="vid-cheap"))).status
                        for _ in range(3)]
            assert outcomes == ["failed", "failed", "succeeded"]
        health = r.container.health.snapshot(["vid-cheap"])["vid-cheap"]
        assert health.success_rate is not None and health.success_rate < 0.5
        assert health.breaker.strikes < 3

        cheapest = r.container.submitter.quote(video())
        assert cheapest.backends[0] == "vid-cheap"  # on price alone it still wins
        balanced = r.container.submitter.quote(video(strategy="balanced"))
        assert balanced.backends == ("vid-mid", "vid-cheap")
        flaky = balanced.candidates[1]
        assert flaky.effective_micros > flaky.expected  # the failover it causes
        calls = r.counters("vid-cheap")["submissions"]
        job = r.job(run(r, video(strategy="balanced")))
        assert job.status == "succeeded" and job.backend == "vid-mid"
        assert r.counters("vid-cheap")["submissions"] == calls


def test_a_factor_that_made_a_backend_too_dear_fades_with_its_samples_age(crig: Rig) -> None:
    # vid-a's provider billed 1.5x its worst case for a while: it fell behind vid-b, and
    # cheapest sent it no more jobs, so no newer bill could ever replace those. Once they are
    # older than ORCH_CALIBRATION_MAX_AGE_S, vid-a ranks on its estimate again.
    crig.control("vid-a", duration_ms=100, usage_factor=1.5)
    crig.start_worker()
    ids = [run(crig, video(backend="vid-a")) for _ in range(3)]
    assert crig.container.submitter.quote(video()).backends == ("vid-b", "vid-a")

    max_age = crig.container.settings.calibration_max_age_s
    with crig.engine.begin() as conn:  # as if they had settled just within the age limit
        conn.execute(text(
            "UPDATE jobs SET finished_at = now() - make_interval(secs => :s) "
            "WHERE id = ANY(:ids)"), {"s": max_age - 600, "ids": ids})
    assert crig.container.submitter.quote(video()).backends == ("vid-b", "vid-a")
    with crig.engine.begin() as conn:  # and now just beyond it
        conn.execute(text(
            "UPDATE jobs SET finished_at = now() - make_interval(secs => :s) "
            "WHERE id = ANY(:ids)"), {"s": max_age + 1, "ids": ids})
    again = crig.container.submitter.quote(video())
    assert again.backends == ("vid-a", "vid-b")
    assert again.candidates[0].calibration_ppm is None
