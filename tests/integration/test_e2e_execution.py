"""Issue 4 end to end: real Celery worker processes over real Redis, the simulator over HTTP,
real PostgreSQL. Nothing of ours is mocked; Celery is not in eager mode."""

from __future__ import annotations

from datetime import UTC, datetime

import redis

from orchestrator.domain.breaker import BreakerStatus, shown_status
from orchestrator.domain.jobs import JobSpec
from orchestrator.domain.pricing import Usage, actual_micros, estimate_micros
from orchestrator.ledger.budgets import set_budget
from orchestrator.service.sweeper import sweep
from orchestrator.store import jobs as repo

from .e2e_support import Rig

TENANT = "acme"


def budget(r: Rig, limit_micros: int = 1_000_000_000) -> None:
    with r.engine.begin() as conn:
        set_budget(conn, scope=f"tenant:{TENANT}", period="month", limit_micros=limit_micros,
                   now=datetime.now(UTC))


def video(duration: int = 8, tier: str = "draft", **kw: object) -> JobSpec:
    return JobSpec.model_validate({
        "kind": "video", "tier": tier,
        "input": {"prompt": "a lighthouse at dusk", "duration_s": duration, "resolution": "720p"},
        **kw,
    })


def sweeping(r: Rig) -> None:
    c = r.container
    sweep(c.engine, c.ledger, c.enqueue, grace_s=3)


def test_a_job_succeeds_and_is_settled_at_the_reported_cost(rig: Rig) -> None:
    budget(rig)
    rig.control("vid-cheap", duration_ms=300)
    rig.start_worker()
    job_id = rig.submit(video())
    (job,) = rig.wait_final([job_id])

    assert job.status == "succeeded" and job.backend == "vid-cheap"
    expected = actual_micros(rig.container.catalogue().get("vid-cheap"),
                             Usage(video_seconds=8, resolution="720p"))
    assert job.cost_micros == expected == 360_000  # 8 s x $0.03 x 1.5
    assert rig.ledger() == (expected, 0)
    (attempt,) = rig.attempts(job_id)
    assert attempt.external_id and attempt.outcome == "succeeded"
    assert attempt.cost_micros == expected
    assert job.route is not None and job.route["candidates"][0]["backend"] == "vid-cheap"
    assert rig.counters("vid-cheap")["submissions"] == 1


def test_a_success_without_usage_or_cost_is_kept_and_charged_its_worst_case(rig: Rig) -> None:
    """A provider that answers as Replicate does (a success with its timings, no usage, no
    cost): the result is kept on that backend, one provider job and no failover (never paid
    twice), and the job is charged the attempt's worst case, the estimate its hold covered."""
    budget(rig)
    # the provider bills half what was asked: the charge is the worst case, not its bill
    rig.control("vid-cheap", duration_ms=300, report_usage=False, usage_factor=0.5)
    rig.start_worker()
    job_id = rig.submit(video())
    (job,) = rig.wait_final([job_id])

    assert job.status == "succeeded" and job.backend == "vid-cheap"
    assert job.result is not None and str(job.result["output"]).endswith(".mp4")
    (attempt,) = rig.attempts(job_id)  # no failover
    assert attempt.backend == "vid-cheap" and attempt.outcome == "succeeded"
    # the attempt's worst case, as service.attempts.possible_cost prices it
    worst = estimate_micros(rig.container.catalogue().get("vid-cheap"),
                            JobSpec.model_validate(job.spec))
    assert worst == 360_000  # 8 s x $0.03 x 1.5
    assert job.route is not None
    (candidate,) = [c for c in job.route["candidates"] if c["backend"] == "vid-cheap"]
    assert round(float(candidate["estimated_cost_usd"]) * 1_000_000) == worst
    assert job.cost_micros == attempt.cost_micros == worst <= job.estimated_cost_micros
    # the attempt shows the charge was a worst case
    assert attempt.possible_cost_micros == worst
    cheap = rig.counters("vid-cheap")
    assert (cheap["submissions"], cheap["created"]) == (1, 1)
    assert rig.counters("vid-mid")["submissions"] == 0
    state = rig.http.get(f"{rig.sim_url}/_control/vid-cheap").json()
    assert state["billed_micros"] == 180_000  # the provider's own bill, which we never saw
    assert rig.ledger() == (worst, 0)  # committed once, no hold left, audit clean


def test_text_job_on_a_synchronous_backend(rig: Rig) -> None:
    budget(rig)
    rig.start_worker()
    spec = JobSpec.model_validate({"kind": "text", "input": {"prompt": "hello", "max_tokens": 50}})
    (job,) = rig.wait_final([rig.submit(spec)])
    assert job.status == "succeeded" and job.backend == "txt-one"
    assert job.cost_micros is not None and 0 < job.cost_micros <= job.estimated_cost_micros
    assert rig.ledger() == (job.cost_micros, 0)


def test_cheapest_down_fails_over_opens_breaker_and_a_probe_closes_it(rig: Rig) -> None:
    budget(rig)
    rig.control("vid-cheap", mode="down")
    rig.control("vid-mid", duration_ms=200)
    rig.start_worker()
    # draft jobs may use both; the cheap one is tried first while its breaker is closed
    for _ in range(3):
        (job,) = rig.wait_final([rig.submit(video())], timeout=90)
        assert job.status == "succeeded" and job.backend == "vid-mid"
        assert [a.backend for a in rig.attempts(job.id)] == ["vid-cheap", "vid-mid"]
    health = rig.container.health
    assert health.breaker("vid-cheap").status is BreakerStatus.OPEN
    cheap_submissions = rig.counters("vid-cheap")["submissions"]

    (job,) = rig.wait_final([rig.submit(video())])
    assert [a.backend for a in rig.attempts(job.id)] == ["vid-mid"]  # no longer tried
    assert rig.counters("vid-cheap")["submissions"] == cheap_submissions

    rig.control("vid-cheap", mode="up", duration_ms=200)
    rig.wait_for("the cooldown to end", lambda: shown_status(
        health.breaker("vid-cheap"), health.clock()) is BreakerStatus.HALF_OPEN, timeout=30)
    (probe,) = rig.wait_final([rig.submit(video())])
    assert probe.backend == "vid-cheap"
    assert health.breaker("vid-cheap").status is BreakerStatus.CLOSED
    assert rig.ledger()[1] == 0


def test_sigkill_mid_flight_then_a_new_worker_finishes_every_job_once(rig: Rig) -> None:
    budget(rig)
    rig.control("vid-cheap", duration_ms=4000)
    rig.start_worker()
    ids = [rig.submit(video()) for _ in range(6)]

    def all_submitted() -> bool:
        return all(any(a.external_id for a in rig.attempts(j)) for j in ids)

    rig.wait_for("every job to be submitted", all_submitted)
    rig.kill_workers()  # SIGKILL while every job waits on the slow backend
    rig.start_worker()

    def done() -> bool:
        sweeping(rig)  # what beat does every 10 s
        with rig.engine.connect() as conn:
            return all(repo.get_job(conn, j).is_final for j in ids)  # type: ignore[union-attr]

    rig.wait_for("every job to finish", done, timeout=90)
    jobs = [rig.job(j) for j in ids]
    assert {j.status for j in jobs} == {"succeeded"}
    assert rig.counters("vid-cheap")["submissions"] == 6  # exactly one per job
    assert rig.ledger() == (sum(j.cost_micros or 0 for j in jobs), 0)  # charged once


def test_redis_flushed_with_jobs_in_flight_the_sweeper_gets_them_done(rig: Rig) -> None:
    budget(rig)
    rig.control("vid-cheap", duration_ms=3000)
    rig.start_worker()
    ids = [rig.submit(video()) for _ in range(5)]
    rig.wait_for("every job to be submitted",
                 lambda: all(any(a.external_id for a in rig.attempts(j)) for j in ids))
    rig.kill_workers()
    redis.Redis.from_url(rig.redis_url).flushdb()  # every message and breaker state gone
    rig.start_worker()

    def done() -> bool:
        sweeping(rig)
        with rig.engine.connect() as conn:
            return all(repo.get_job(conn, j).is_final for j in ids)  # type: ignore[union-attr]

    rig.wait_for("every job to finish", done, timeout=90)
    assert {rig.job(j).status for j in ids} == {"succeeded"}
    assert rig.counters("vid-cheap")["submissions"] == 5
    assert rig.ledger()[1] == 0


def test_deadline_fails_the_job_cancels_at_backend_and_releases_the_hold(rig: Rig) -> None:
    budget(rig)
    rig.control("vid-cheap", duration_ms=60_000)
    rig.start_worker()
    rig.wait_worker_ready()  # the 2 s deadline must not be spent on the worker's start-up
    (job,) = rig.wait_final([rig.submit(video(deadline_s=2))], timeout=30)
    assert job.status == "failed" and job.error_code == "deadline_exceeded"
    assert rig.counters("vid-cheap")["cancels"] == 1
    assert rig.ledger() == (0, 0)


def test_cancel_reaches_the_backend_and_releases_the_hold(rig: Rig) -> None:
    budget(rig)
    rig.control("vid-cheap", duration_ms=60_000)
    rig.start_worker()
    job_id = rig.submit(video())
    rig.wait_for("the job to be submitted",
                 lambda: any(a.external_id for a in rig.attempts(job_id)))
    cancelled = rig.container.runner.cancel(job_id, TENANT)
    assert cancelled is not None and cancelled.status == "cancelled"
    assert rig.counters("vid-cheap")["cancels"] == 1
    assert rig.attempts(job_id)[0].outcome == "cancelled"
    assert rig.ledger() == (0, 0)


def test_a_job_fault_fails_fast_without_a_strike(rig: Rig) -> None:
    budget(rig)
    rig.control("vid-cheap", error="job_fault")
    rig.start_worker()
    (job,) = rig.wait_final([rig.submit(video())])
    assert job.status == "failed" and job.error_code == "invalid_input"
    assert [a.backend for a in rig.attempts(job.id)] == ["vid-cheap"]  # no failover
    assert rig.container.health.breaker("vid-cheap").strikes == 0
    assert rig.ledger() == (0, 0)


def test_a_rate_limited_backend_is_asked_again_once_its_limit_allows(rig: Rig) -> None:
    """A 429 that outlasts the call's own retries made nothing: a job with no other backend
    left (pinned here) waits and asks the same backend again, instead of failing at once;
    one provider job is made and charged once."""
    budget(rig)
    rig.control("vid-cheap", duration_ms=200, status_code=429, times=4)  # the call's 4 tries
    rig.start_worker()
    (job,) = rig.wait_final([rig.submit(video(backend="vid-cheap"))], timeout=60)

    assert job.status == "succeeded" and job.backend == "vid-cheap", job.error_code
    first, second = rig.attempts(job.id)
    assert (first.backend, first.outcome, first.error_code, first.external_id) == (
        "vid-cheap", "failed", "rate_limited", None)
    assert (second.backend, second.outcome) == ("vid-cheap", "succeeded")
    assert (second.started_at - first.started_at).total_seconds() >= 2  # waited, then asked
    counters = rig.counters("vid-cheap")
    assert counters["created"] == 1 and counters["submissions"] == 5
    assert rig.ledger() == (job.cost_micros, 0) and job.cost_micros == second.cost_micros
    assert rig.container.health.breaker("vid-cheap").strikes == 0  # no strike for a 429


def test_a_backend_rate_limited_past_the_deadline_fails_the_job_at_its_deadline(
        rig: Rig) -> None:
    """Retry-After beyond the job's deadline: the job waits until the deadline, then fails
    ``deadline_exceeded``, having made and paid nothing."""
    budget(rig)
    rig.control("vid-cheap", status_code=429, retry_after_s=600)
    rig.start_worker()
    rig.wait_worker_ready()  # the deadline must not be spent on the worker's start-up
    (job,) = rig.wait_final([rig.submit(video(backend="vid-cheap", deadline_s=3))], timeout=30)

    assert job.status == "failed" and job.error_code == "deadline_exceeded"
    assert job.finished_at is not None and job.deadline_at is not None
    assert job.finished_at >= job.deadline_at  # not failed at the first 429
    (attempt,) = rig.attempts(job.id)
    assert attempt.error_code == "rate_limited"
    assert rig.counters("vid-cheap")["created"] == 0
    assert rig.ledger() == (0, 0)


def test_backends_that_all_turned_a_job_away_are_asked_in_turn(rig: Rig) -> None:
    """Every backend of the plan refused for its rate limit: the one asked longest ago is
    asked next, so a backend whose limit lifts first is not passed over for the plan's first
    (which here stays limited longer)."""
    budget(rig)
    rig.control("vid-cheap", duration_ms=200, status_code=429, times=8)  # two calls of 4 tries
    rig.control("vid-mid", duration_ms=200, status_code=429, times=4)  # one call
    rig.start_worker()
    (job,) = rig.wait_final([rig.submit(video())], timeout=90)

    assert job.status == "succeeded" and job.backend == "vid-mid", job.error_code
    attempts = rig.attempts(job.id)
    assert [a.backend for a in attempts] == ["vid-cheap", "vid-mid", "vid-cheap", "vid-mid"]
    assert [a.error_code for a in attempts[:3]] == ["rate_limited"] * 3
    assert rig.counters("vid-cheap")["created"] == 0 and rig.counters("vid-mid")["created"] == 1
    assert rig.ledger() == (job.cost_micros, 0)
