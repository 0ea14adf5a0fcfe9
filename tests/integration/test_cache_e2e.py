"""The result cache end to end (issue 22): real Celery worker processes, the simulator over
HTTP, real PostgreSQL and Redis. Provider calls are counted at the simulator."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from orchestrator.domain.jobs import JobSpec
from orchestrator.errors import BudgetExceeded
from orchestrator.ledger.audit import audit
from orchestrator.ledger.budgets import set_budget
from orchestrator.metrics import catalogue as m
from orchestrator.metrics.recorder import get_recorder
from orchestrator.reports import cache_summary
from orchestrator.simulator import RunningSimulator

from .e2e_support import E2E_CATALOGUE, Rig, rig_for

TENANT = "acme"


@pytest.fixture()
def crig(db: Engine, database_url: str, redis_url: str, e2e_sim: RunningSimulator,
         tmp_path: Path) -> Iterator[Rig]:
    """The e2e rig; this process's Submitter uses the cache for tenant ``acme`` by default."""
    with rig_for(E2E_CATALOGUE, db, database_url, redis_url, e2e_sim, tmp_path,
                 cache_default_tenants=TENANT) as r:
        for tenant in (TENANT, "other"):
            with r.engine.begin() as conn:
                set_budget(conn, scope=f"tenant:{tenant}", period="month",
                           limit_micros=1_000_000_000, now=datetime.now(UTC))
        yield r


def video(prompt: str = "a lighthouse at dusk", **kw: object) -> JobSpec:
    return JobSpec.model_validate({
        "kind": "video", "tier": "draft",
        "input": {"prompt": prompt, "duration_s": 8, "resolution": "720p"}, **kw})


def submit(r: Rig, spec: JobSpec, tenant: str = TENANT) -> uuid.UUID:
    job, created = r.container.submitter.submit(tenant, spec)
    assert created
    return job.id


def entries(r: Rig, job_id: uuid.UUID) -> list[tuple[str, int, int]]:
    with r.engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT kind, held_delta_micros, committed_delta_micros FROM ledger_entries "
            "WHERE job_id = :j ORDER BY id"), {"j": job_id}).all()
    return [(k, int(h), int(c)) for k, h, c in rows]


def committed(r: Rig) -> int:
    with r.engine.connect() as conn:
        assert audit(conn) == []
        return int(conn.execute(text(
            "SELECT COALESCE(SUM(committed_micros), 0) FROM budget_periods")).scalar_one())


def test_a_hit_gets_the_result_at_zero_with_cached_from(crig: Rig) -> None:
    crig.control("vid-cheap", duration_ms=200)
    crig.start_worker()
    first = submit(crig, video())
    (paid,) = crig.wait_final([first])
    assert paid.status == "succeeded" and paid.cost_micros == 360_000
    assert paid.cached_from is None

    def counted(name: str, **labels: str) -> float:
        value = get_recorder().value(name, kind="video", **labels)
        assert value is None or isinstance(value, int | float)
        return float(value or 0)

    hits, saved = counted(m.CACHE_LOOKUPS, outcome="hit"), counted(m.CACHE_SAVED)
    job, created = crig.container.submitter.submit(TENANT, video())
    assert created and job.status == "succeeded"  # served at submission, no worker step
    assert counted(m.CACHE_LOOKUPS, outcome="hit") == hits + 1
    assert counted(m.CACHE_SAVED) == pytest.approx(saved + 0.36)
    assert job.cached_from == first and job.cost_micros == 0
    assert job.result == paid.result and job.backend == "vid-cheap"
    assert crig.counters("vid-cheap")["submissions"] == 1  # one provider call for both
    assert crig.attempts(job.id) == []
    # held 0, settled 0: a ledger entry of 0 in the tenant's budget
    assert entries(crig, job.id) == [("hold", 0, 0), ("settle", 0, 0)]
    assert committed(crig) == 360_000
    # the key is a hash: the prompt is nowhere in it
    assert job.cache_key is not None and len(job.cache_key) == 64
    assert "lighthouse" not in job.cache_key
    with crig.engine.connect() as conn:
        summary = cache_summary(conn, tenant=TENANT)
    assert (summary.cacheable_jobs, summary.served, summary.saved_micros) == (2, 1, 360_000)


def test_another_tenant_cache_false_and_other_input_miss(crig: Rig) -> None:
    crig.control("vid-cheap", duration_ms=200)
    crig.start_worker()
    first = submit(crig, video())
    crig.wait_final([first])
    other_tenant = submit(crig, video(cache=True), tenant="other")
    opted_out = submit(crig, video(cache=False))
    other_input = submit(crig, video("a lighthouse at dawn"))
    jobs = crig.wait_final([other_tenant, opted_out, other_input])
    assert all(j.status == "succeeded" and j.cached_from is None and j.cost_micros == 360_000
               for j in jobs)
    assert crig.counters("vid-cheap")["submissions"] == 4
    assert jobs[1].cache_key is None  # cache: false: not even a key
    assert committed(crig) == 4 * 360_000


def test_a_result_older_than_the_ttl_is_a_miss(db: Engine, database_url: str, redis_url: str,
                                               e2e_sim: RunningSimulator,
                                               tmp_path: Path) -> None:
    with rig_for(E2E_CATALOGUE, db, database_url, redis_url, e2e_sim, tmp_path,
                 cache_ttl_s=1.0) as r:
        r.control("vid-cheap", duration_ms=100)
        r.start_worker()
        first = submit(r, video(cache=True))
        r.wait_final([first])
        within = r.container.submitter.submit(TENANT, video(cache=True))[0]
        assert within.cached_from == first  # within the TTL: a hit

        def expired() -> bool:  # by PostgreSQL's clock, the one the look-up uses
            with r.engine.connect() as conn:
                return bool(conn.execute(text(
                    "SELECT now() - finished_at > interval '1 second' FROM jobs "
                    "WHERE id = :j"), {"j": first}).scalar_one())

        r.wait_for("the cached result to expire", expired, timeout=10)
        after = submit(r, video(cache=True))
        (job,) = r.wait_final([after])
        assert job.cached_from is None and job.cost_micros == 360_000
        assert r.counters("vid-cheap")["submissions"] == 2


def test_concurrent_identical_submissions_make_one_provider_call(crig: Rig) -> None:
    crig.control("vid-cheap", duration_ms=1500)  # the leader is in flight while all arrive
    crig.start_worker()
    n = 6
    with ThreadPoolExecutor(n) as pool:
        ids = list(pool.map(lambda _: submit(crig, video()), range(n)))
    jobs = crig.wait_final(ids, timeout=60)
    assert all(j.status == "succeeded" for j in jobs)
    leaders = [j for j in jobs if j.cached_from is None]
    assert len(leaders) == 1
    (leader,) = leaders
    assert leader.cost_micros == 360_000
    followers = [j for j in jobs if j is not leader]
    assert all(j.cached_from == leader.id and j.cost_micros == 0 for j in followers)
    assert all(j.result == leader.result for j in followers)
    counters = crig.counters("vid-cheap")
    assert counters["submissions"] == 1 and counters["created"] == 1
    assert committed(crig) == 360_000  # one paid
    for j in followers:  # each held its own worst case while it waited, then settled 0
        worst = j.estimated_cost_micros
        assert worst == 840_000  # the plan's worst case: failover to vid-mid
        assert entries(crig, j.id) == [("hold", worst, 0), ("settle", -worst, 0)]


def test_followers_run_themselves_when_the_leader_fails(crig: Rig) -> None:
    # pinned, so the leader has no failover: its one prediction fails, the next ones work
    crig.control("vid-cheap", duration_ms=1200, error="prediction_failed", times=1)
    crig.start_worker()
    spec = video(backend="vid-cheap")
    leader = submit(crig, spec)
    followers = [submit(crig, spec) for _ in range(2)]
    with crig.engine.connect() as conn:
        waiting = conn.execute(text("SELECT count(*) FROM jobs WHERE cache_leader = :l"),
                               {"l": leader}).scalar_one()
    assert waiting == 2
    jobs = crig.wait_final([leader, *followers], timeout=60)
    assert jobs[0].status == "failed" and jobs[0].error_code == "all_backends_failed"
    assert all(j.status == "succeeded" and j.cached_from is None
               and j.cost_micros == 360_000 for j in jobs[1:])
    assert crig.counters("vid-cheap")["submissions"] == 3
    assert committed(crig) == 2 * 360_000


def test_followers_run_themselves_when_the_leader_is_cancelled(crig: Rig) -> None:
    crig.control("vid-cheap", duration_ms=3000)
    crig.start_worker()
    leader = submit(crig, video())
    follower = submit(crig, video())
    crig.wait_for("the leader to reach the provider",
                  lambda: crig.counters("vid-cheap")["submissions"] == 1)
    cancelled = crig.container.runner.cancel(leader, TENANT)
    assert cancelled is not None and cancelled.status == "cancelled"
    crig.control("vid-cheap", duration_ms=200)
    (job,) = crig.wait_final([follower], timeout=60)
    assert job.status == "succeeded" and job.cached_from is None
    assert job.cost_micros == 360_000


def test_a_hit_needs_no_budget_left_and_a_refused_job_writes_nothing(
        db: Engine, database_url: str, redis_url: str, e2e_sim: RunningSimulator,
        tmp_path: Path) -> None:
    """A hit holds 0, so it is served from a budget that could not hold its worst case;
    a cache-enabled job the budget refuses leaves no job and no link behind."""
    with rig_for(E2E_CATALOGUE, db, database_url, redis_url, e2e_sim, tmp_path) as r:
        with r.engine.begin() as conn:  # room for one draft job's worst case (0.84), not two
            set_budget(conn, scope=f"tenant:{TENANT}", period="month", limit_micros=1_000_000,
                       now=datetime.now(UTC))
        r.control("vid-cheap", duration_ms=100)
        r.start_worker()
        first = submit(r, video(cache=True))
        r.wait_final([first])  # charged 0.36: 0.64 left, under the 0.84 worst case
        hit, created = r.container.submitter.submit(TENANT, video(cache=True))
        assert created and hit.cached_from == first and hit.cost_micros == 0
        with r.engine.connect() as conn:
            before = conn.execute(text("SELECT count(*) FROM jobs")).scalar_one()
        for spec in (video("another prompt", cache=True), video(cache=False)):
            with pytest.raises(BudgetExceeded):
                r.container.submitter.submit(TENANT, spec)
        with r.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM jobs")).scalar_one() == before
        assert committed(r) == 360_000


def test_a_follower_whose_leader_ended_before_it_was_admitted_is_started(crig: Rig) -> None:
    """The leader ends between a follower's look-up and its commit, so the leader's end
    woke followers without it: the follower's own start (sent after its answer) sees the
    leader final and starts it; no sweeper runs here."""
    crig.control("vid-cheap", duration_ms=100)
    submitter = crig.container.submitter
    leader = submitter.admit(TENANT, video())  # no worker yet: it stays queued
    submitter.start(leader)
    follower = submitter.admit(TENANT, video())
    assert follower.from_cache and follower.job.cache_leader == leader.job.id
    # the leader ends without waking anyone (as if its wake had read before this commit)
    crig.container.ledger.end_job(leader.job.id, "cancelled", datetime.now(UTC),
                                  error_code="cancelled", error_message="test")
    submitter.start(follower)
    crig.start_worker()
    (job,) = crig.wait_final([follower.job.id], timeout=30)
    assert job.status == "succeeded" and job.cached_from is None  # it ran itself
    assert crig.counters("vid-cheap")["submissions"] == 1
