"""The result cache at its edges (an outside review): a result the retention sweeper dropped,
a follower cancelled or past its deadline while it waits. Real Celery workers, the simulator
over HTTP, real PostgreSQL and Redis; provider calls counted at the simulator, the ledger
audited after each scenario."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text

from orchestrator.events.retention import expire
from orchestrator.ledger.budgets import set_budget
from orchestrator.service.cache import Match
from orchestrator.store import jobs as repo

from .e2e_support import Rig
from .test_cache_e2e import TENANT, committed, crig, entries, submit, video  # noqa: F401

RETENTION_DAYS = 30.0


def expire_every_result(r: Rig) -> None:
    """The retention sweeper's pass as it will run once every finished job is old enough."""
    expire(r.engine, RETENTION_DAYS, datetime.now(UTC) + timedelta(days=RETENTION_DAYS + 1))


def leader_succeeded_unannounced(r: Rig) -> tuple[Any, Any]:
    """A leader and its follower; the leader then ends succeeded without waking anyone (as
    when its wake was lost), so the follower is started later by its own submission."""
    submitter = r.container.submitter
    leader = submitter.admit(TENANT, video())  # no worker yet: it stays queued
    follower = submitter.admit(TENANT, video())
    assert follower.from_cache and follower.job.cache_leader == leader.job.id
    r.container.ledger.end_job(leader.job.id, "succeeded", datetime.now(UTC),
                               backend="vid-cheap", result={"output": {"url": "x"}})
    return leader, follower


def test_a_follower_does_not_adopt_a_result_that_has_expired(crig: Rig) -> None:  # noqa: F811
    """Its leader's result is gone when the follower looks: it must not end succeeded with
    no result; it runs itself, on its own hold, and is charged for that run."""
    crig.control("vid-cheap", duration_ms=100)
    _, follower = leader_succeeded_unannounced(crig)
    expire_every_result(crig)
    crig.container.submitter.start(follower)
    crig.start_worker()
    (job,) = crig.wait_final([follower.job.id], timeout=30)
    assert job.status == "succeeded" and job.result is not None
    assert job.cached_from is None and job.cost_micros == 360_000
    assert crig.counters("vid-cheap")["submissions"] == 1
    assert committed(crig) == 360_000


def serve_after_expiry(r: Rig) -> None:
    """The retention sweeper runs between a hit's look-up and its serving."""
    submitter = r.container.submitter
    serve = submitter.serve_hit

    def late(job: repo.JobRow, match: Match) -> repo.JobRow:
        expire_every_result(r)
        return serve(job, match)

    submitter.serve_hit = late  # type: ignore[method-assign]


def test_a_hit_whose_result_expired_before_serving_runs_itself_under_its_budget(
        crig: Rig) -> None:  # noqa: F811
    crig.control("vid-cheap", duration_ms=100)
    crig.start_worker()
    first = submit(crig, video())
    crig.wait_final([first])
    serve_after_expiry(crig)
    hit, created = crig.container.submitter.submit(TENANT, video())
    assert created
    (job,) = crig.wait_final([hit.id], timeout=30)
    # not "succeeded" with no result at $0: it ran itself and paid for it
    assert job.status == "succeeded" and job.result is not None
    assert job.cached_from is None and job.cost_micros == 360_000
    assert crig.counters("vid-cheap")["submissions"] == 2
    # its hold of 0 was raised to the worst case before it ran
    held = entries(crig, hit.id)
    assert held[:2] == [("hold", 0, 0), ("hold", 840_000, 0)]
    assert held[2][0] == "settle" and held[2][2] == 360_000 and len(held) == 3
    assert committed(crig) == 2 * 360_000


def test_a_hit_that_must_run_itself_is_refused_by_a_budget_that_cannot_hold_it(
        crig: Rig) -> None:  # noqa: F811
    crig.control("vid-cheap", duration_ms=100)
    crig.start_worker()
    first = submit(crig, video())
    crig.wait_final([first])
    with crig.engine.begin() as conn:  # 0.36 spent, 0.14 left: under the 0.84 worst case
        set_budget(conn, scope=f"tenant:{TENANT}", period="month", limit_micros=500_000,
                   now=datetime.now(UTC))
    serve_after_expiry(crig)
    hit, created = crig.container.submitter.submit(TENANT, video())
    assert created
    (job,) = crig.wait_final([hit.id], timeout=30)
    assert job.status == "failed" and job.error_code == "budget_exceeded"
    assert job.result is None and job.cost_micros in (0, None)
    assert crig.counters("vid-cheap")["submissions"] == 1  # never ran
    assert committed(crig) == 360_000


def test_a_follower_cancelled_while_it_waits_never_runs_and_pays_nothing(
        crig: Rig) -> None:  # noqa: F811
    crig.control("vid-cheap", duration_ms=1500)
    crig.start_worker()
    leader = submit(crig, video())
    follower = submit(crig, video())
    cancelled = crig.container.runner.cancel(follower, TENANT)
    assert cancelled is not None and cancelled.status == "cancelled"
    jobs = crig.wait_final([leader, follower], timeout=30)
    assert jobs[0].status == "succeeded" and jobs[0].cost_micros == 360_000
    assert jobs[1].status == "cancelled" and jobs[1].cached_from is None
    assert crig.attempts(follower) == []
    worst = jobs[1].estimated_cost_micros
    assert entries(crig, follower) == [("hold", worst, 0), ("release", -worst, 0)]
    assert crig.counters("vid-cheap")["submissions"] == 1
    assert committed(crig) == 360_000


def test_a_follower_past_its_deadline_fails_and_releases_its_hold(crig: Rig) -> None:  # noqa: F811
    crig.control("vid-cheap", duration_ms=4000)
    crig.start_worker()
    leader = submit(crig, video())
    follower = submit(crig, video(deadline_s=1))
    jobs = crig.wait_final([leader, follower], timeout=30)
    assert jobs[1].status == "failed" and jobs[1].error_code == "deadline_exceeded"
    assert crig.attempts(follower) == []
    assert jobs[0].status == "succeeded"
    with crig.engine.connect() as conn:
        kinds = conn.execute(text("SELECT kind FROM ledger_entries WHERE job_id = :j "
                                  "ORDER BY id"), {"j": follower}).scalars().all()
    assert kinds[0] == "hold" and kinds[-1] in ("release", "settle")
    assert crig.counters("vid-cheap")["submissions"] == 1
    assert committed(crig) == 360_000
