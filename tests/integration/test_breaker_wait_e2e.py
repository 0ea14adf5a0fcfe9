"""A job that no backend takes because their breakers refuse it (open, or half-open with a
probe in flight) waits for them, up to its deadline, instead of failing at once: an outage
of a minute must not lose the jobs that were admitted before it. Real worker processes,
Redis, PostgreSQL and the simulator over HTTP (``e2e_support``)."""

from __future__ import annotations

import time
from typing import Any

from orchestrator.domain.breaker import BreakerPolicy, BreakerStatus
from orchestrator.domain.jobs import JobSpec
from orchestrator.domain.outcomes import Outcome
from orchestrator.health.store import HealthStore

from .e2e_support import Rig

BUDGET = 1_000_000_000


def video(**kw: Any) -> JobSpec:
    return JobSpec.model_validate({
        "kind": "video", "tier": "draft",
        "input": {"prompt": "a lighthouse at dusk", "duration_s": 8, "resolution": "720p"},
        **kw})


def trip(rig: Rig, backend: str, cooldown_s: float) -> float:
    """Open ``backend``'s breaker for ``cooldown_s`` as three strikes do (the workers share
    its state in Redis); returns when the cooldown ends (epoch seconds)."""
    shared = rig.container.health
    store = HealthStore(shared.redis, prefix=shared.prefix, policy=BreakerPolicy(
        cooldown_base_s=cooldown_s, cooldown_cap_s=cooldown_s))
    for _ in range(3):
        state = store.record(backend, Outcome.BACKEND_FAULT)
    assert state.status is BreakerStatus.OPEN
    return state.retry_at


def test_a_failover_waits_for_the_next_backends_breaker_and_runs_there(rig: Rig) -> None:
    rig.budget(BUDGET)
    rig.control("vid-cheap", duration_ms=300, error="prediction_failed", times=1)
    rig.start_worker()
    rig.wait_worker_ready()
    job_id = rig.submit(video())  # its plan: vid-cheap, then vid-mid
    reopens = trip(rig, "vid-mid", cooldown_s=6)
    (job,) = rig.wait_final([job_id], timeout=60)

    assert job.status == "succeeded" and job.backend == "vid-mid", job.error_message
    first, second = rig.attempts(job_id)
    assert (first.backend, first.outcome) == ("vid-cheap", "failed")
    assert first.finished_at is not None and first.finished_at.timestamp() < reopens
    assert second.started_at.timestamp() >= reopens  # asked once the cooldown had ended
    assert rig.counters("vid-mid")["created"] == 1
    assert rig.ledger() == (job.cost_micros, 0) and job.cost_micros == second.cost_micros
    assert rig.container.health.breaker("vid-mid").status is BreakerStatus.CLOSED  # the probe


def test_a_job_whose_backends_stay_refused_fails_at_its_deadline_having_paid_nothing_more(
        rig: Rig) -> None:
    rig.budget(BUDGET)
    rig.control("vid-cheap", duration_ms=300, error="prediction_failed", times=1)
    rig.start_worker()
    rig.wait_worker_ready()  # the deadline must not be spent on the worker's start-up
    job_id = rig.submit(video(deadline_s=4))
    trip(rig, "vid-mid", cooldown_s=600)
    (job,) = rig.wait_final([job_id], timeout=30)

    assert job.status == "failed" and job.error_code == "deadline_exceeded", job.error_code
    assert job.finished_at is not None and job.deadline_at is not None
    assert job.finished_at >= job.deadline_at  # waited; not failed when vid-cheap failed
    (attempt,) = rig.attempts(job_id)
    assert attempt.backend == "vid-cheap"
    assert rig.counters("vid-mid")["submissions"] == 0
    assert rig.ledger() == (0, 0)


def test_a_queued_job_whose_backend_opened_waits_in_the_queue_then_runs(rig: Rig) -> None:
    rig.budget(BUDGET)
    rig.control("vid-cheap", duration_ms=200)
    job_id = rig.submit(video(backend="vid-cheap"))  # admitted while the breaker was closed
    reopens = trip(rig, "vid-cheap", cooldown_s=12)
    rig.start_worker()
    rig.wait_worker_ready()  # behind the job's first step in the queue
    assert time.time() < reopens  # so the job met the open breaker
    (job,) = rig.wait_final([job_id], timeout=60)

    assert job.status == "succeeded" and job.backend == "vid-cheap", job.error_message
    (attempt,) = rig.attempts(job_id)
    assert attempt.started_at.timestamp() >= reopens
    assert rig.counters("vid-cheap")["created"] == 1
    assert rig.ledger() == (job.cost_micros, 0)
