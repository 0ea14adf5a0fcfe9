"""Periodic gauges (budgets, breakers, queues) and a real Celery worker process's own metrics:
the worker configures its recorder at start (``worker_init``) and serves Prometheus on
``ORCH_WORKER_METRICS_PORT``; the beat task ``orchestrator.publish_gauges`` runs in it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.domain.breaker import BreakerPolicy
from orchestrator.domain.jobs import JobSpec
from orchestrator.domain.outcomes import Outcome
from orchestrator.embedded._ports import free_port
from orchestrator.health.store import HealthStore
from orchestrator.ledger.budgets import set_budget
from orchestrator.metrics import catalogue as m
from orchestrator.metrics.recorder import Recorder
from orchestrator.service.observe import publish_gauges
from workers.enqueue import queue_for

from .e2e_support import Rig

QUEUES = ("jobs.high", "jobs.normal", "jobs.low", "maintenance")  # as workers.celery_app
TENANT = "acme"
LIMIT = 20_000_000

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """The worker's /metrics, as {(sample name, sorted labels): value}; {} if not up yet."""
    try:
        resp = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    except httpx.TransportError:
        return {}
    resp.raise_for_status()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(resp.text) for s in fam.samples}


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def submit(r: Rig, priority: str = "normal") -> uuid.UUID:
    spec = JobSpec.model_validate({
        "kind": "video", "tier": "draft", "priority": priority,
        "input": {"prompt": "a lighthouse", "duration_s": 8, "resolution": "720p"}})
    job, created = r.container.submitter.submit(TENANT, spec)
    assert created
    return job.id


def open_breaker(r: Rig, backend: str) -> None:
    """Three backend faults with a long cooldown: open for the rest of the test."""
    store = HealthStore.from_url(r.redis_url, policy=BreakerPolicy(cooldown_base_s=600))
    for _ in range(3):
        store.record(backend, Outcome.BACKEND_FAULT)


def test_gauges_read_budgets_breakers_and_queues(rig: Rig) -> None:
    with rig.engine.begin() as conn:
        set_budget(conn, scope=f"tenant:{TENANT}", period="month", limit_micros=LIMIT,
                   now=datetime.now(UTC))
    open_breaker(rig, "vid-mid")
    rig.container.health.wait_for_slot(["vid-cheap"], f"{uuid.uuid4()} {uuid.uuid4()} normal",
                                       since=1.0)
    ids = [submit(rig), submit(rig), submit(rig, "high")]  # no worker: all stay queued
    held = sum(rig.job(j).estimated_cost_micros for j in ids)
    rec = Recorder()
    c = rig.container
    # late enough in the month for a run-rate forecast, still inside the budget's period
    now = max(datetime.now(UTC), datetime.now(UTC).replace(day=15, hour=12))
    with rig.engine.connect() as conn:
        n = publish_gauges(conn, redis.Redis.from_url(rig.redis_url), c.health,
                           c.catalogue().names, QUEUES, now, queue_for, rec)
    assert n == 5 + 3 * 3 + 2 * len(QUEUES)
    budget = {"scope": f"tenant:{TENANT}", "period": "month"}
    assert rec.value(m.BUDGET_SPEND, **budget) == 0
    assert rec.value(m.BUDGET_HELD, **budget) == held / 1e6
    assert rec.value(m.BUDGET_REMAINING, **budget) == (LIMIT - held) / 1e6
    assert rec.value(m.BUDGET_UTILIZATION, **budget) == 0
    assert rec.value(m.BUDGET_FORECAST_RATIO, **budget) == 0  # nothing spent yet
    assert rec.value(m.BREAKER_STATE, backend="vid-mid") == m.BREAKER_OPEN
    assert rec.value(m.BREAKER_STRIKES, backend="vid-mid") == 3
    assert rec.value(m.BREAKER_STATE, backend="vid-cheap") == m.BREAKER_CLOSED
    assert rec.value(m.BACKEND_WAITING, backend="vid-cheap") == 1
    assert rec.value(m.BACKEND_WAITING, backend="vid-mid") == 0
    assert rec.value(m.QUEUE_DEPTH, queue="jobs.normal") == 2
    assert rec.value(m.QUEUE_DEPTH, queue="jobs.high") == 1
    assert rec.value(m.QUEUE_DEPTH, queue="jobs.low") == 0
    oldest = rec.value(m.QUEUE_OLDEST_AGE, queue="jobs.normal")
    assert isinstance(oldest, float) and oldest > 0
    assert rec.value(m.QUEUE_OLDEST_AGE, queue="jobs.low") == 0


def test_worker_serves_its_job_metrics_and_the_beat_gauges(rig: Rig) -> None:
    with rig.engine.begin() as conn:
        set_budget(conn, scope=f"tenant:{TENANT}", period="month", limit_micros=LIMIT,
                   now=datetime.now(UTC))
    open_breaker(rig, "vid-mid")
    rig.control("vid-cheap", duration_ms=200)
    port = free_port()
    rig.start_worker(env_extra={"ORCH_WORKER_METRICS_PORT": str(port)})
    ids = [submit(rig) for _ in range(3)]
    jobs = rig.wait_final(ids)
    assert all(j.status == "succeeded" for j in jobs)
    spent = sum(j.cost_micros or 0 for j in jobs)

    # what beat sends every 15 s, sent now
    broker = rig.container.enqueue.app  # type: ignore[attr-defined]
    broker.send_task("orchestrator.publish_gauges", queue="maintenance")
    budget = {"scope": f"tenant:{TENANT}", "period": "month"}
    rig.wait_for("the gauges on the worker's /metrics", lambda: sample(
        scrape(port), "orchestrator_budget_spend_usd", **budget) == spent / 1e6, timeout=30)

    got = scrape(port)
    job = {"kind": "video", "tier": "draft", "backend": "vid-cheap", "status": "succeeded"}
    assert sample(got, "orchestrator_jobs_finished_total", **job) == 3
    assert sample(got, "orchestrator_job_latency_seconds_count", **job) == 3
    assert sample(got, "orchestrator_job_queue_latency_seconds_count",
                  kind="video", tier="draft") == 3
    assert sample(got, "orchestrator_job_cost_usd_sum", kind="video", tier="draft",
                  backend="vid-cheap") == spent / 1e6
    assert sample(got, "orchestrator_backend_breaker_state", backend="vid-mid") == m.BREAKER_OPEN
    assert sample(got, "orchestrator_backend_breaker_state", backend="vid-cheap") == 0
    assert sample(got, "orchestrator_budget_held_usd", **budget) == 0
    assert sample(got, "orchestrator_budget_utilization_ratio", **budget) == spent / LIMIT
    assert sample(got, "orchestrator_queue_depth", queue="jobs.normal") == 0
    assert sample(got, "orchestrator_queue_oldest_age_seconds", queue="jobs.normal") == 0
