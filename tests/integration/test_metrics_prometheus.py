"""Prometheus exposition of the recorder: the API payload and a worker's own port."""

from __future__ import annotations

import httpx
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.metrics import catalogue as m
from orchestrator.metrics.prometheus import (
    RecorderCollector,
    prometheus_payload,
    start_worker_metrics_server,
)
from orchestrator.metrics.recorder import Recorder

JOB = {"kind": "image", "tier": "draft", "backend": "sim-i", "status": "succeeded"}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_payload_has_the_same_figures() -> None:
    rec = Recorder()
    rec.counter(m.JOBS_FINISHED, 2, **JOB)
    rec.gauge(m.BUDGET_REMAINING, 7.25, scope="global", period="month")
    for v in (0.004, 0.02, 0.02):
        rec.distribution(m.JOB_COST, v, kind="image", tier="draft", backend="sim-i")
    body, content_type = prometheus_payload(rec)
    assert content_type.startswith("text/plain")
    got = samples(body.decode())
    job = tuple(sorted(JOB.items()))
    assert got[("orchestrator_jobs_finished_total", job)] == 2
    assert got[("orchestrator_budget_remaining_usd",
                (("period", "month"), ("scope", "global")))] == 7.25
    cost = (("backend", "sim-i"), ("kind", "image"), ("tier", "draft"))
    assert got[("orchestrator_job_cost_usd_count", cost)] == 3
    assert got[("orchestrator_job_cost_usd_sum", cost)] == 0.044
    assert got[("orchestrator_job_cost_usd_bucket", (*cost[:2], ("le", "0.005"), cost[2]))] == 1
    assert got[("orchestrator_job_cost_usd_bucket", (*cost[:2], ("le", "0.05"), cost[2]))] == 3
    assert got[("orchestrator_job_cost_usd_bucket", (*cost[:2], ("le", "+Inf"), cost[2]))] == 3


def test_worker_metrics_server_serves_this_process() -> None:
    rec = Recorder()
    port = start_worker_metrics_server(0, recorder=rec)
    rec.gauge(m.QUEUE_DEPTH, 11, queue="video")
    resp = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert resp.status_code == 200
    assert samples(resp.text)[("orchestrator_queue_depth", (("queue", "video"),))] == 11
    rec.gauge(m.QUEUE_DEPTH, 3, queue="video")  # read at scrape time
    resp = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert samples(resp.text)[("orchestrator_queue_depth", (("queue", "video"),))] == 3


def test_a_gauge_no_longer_set_here_is_left_out_and_totals_stay() -> None:
    """beat's publish_gauges runs in whichever worker process takes it: a breaker this one
    saw open once must not stay 2 on its /metrics for ever (panels and alerts take the max
    across processes). A counter is a total: true whenever read."""
    rec, now = Recorder(), [1000.0]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RecorderCollector(rec, clock=lambda: now[0]))

    def scraped() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return samples(generate_latest(registry).decode())

    breaker = ("orchestrator_backend_breaker_state", (("backend", "vid-a"),))
    depth = ("orchestrator_queue_depth", (("queue", "q"),))
    finished = ("orchestrator_jobs_finished_total", tuple(sorted(JOB.items())))
    rec.gauge(m.BREAKER_STATE, m.BREAKER_OPEN, backend="vid-a")  # set once, never again
    rec.counter(m.JOBS_FINISHED, **JOB)
    for _ in range(20):  # 5 minutes of scrapes every 15 s; the queue depth set before each
        rec.gauge(m.QUEUE_DEPTH, 1, queue="q")
        got = scraped()
        assert got[depth] == 1 and got[finished] == 1
        now[0] += 15
    got = scraped()
    assert breaker not in got and got[finished] == 1
    rec.gauge(m.BREAKER_STATE, m.BREAKER_CLOSED, backend="vid-a")  # set again: shown again
    assert scraped()[breaker] == m.BREAKER_CLOSED
