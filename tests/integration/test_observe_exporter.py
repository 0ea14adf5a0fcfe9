"""A dead or hanging Cloud Monitoring endpoint leaves jobs alone (DESIGN §7: "a failing exporter
never slows or fails a job"). Real Celery worker processes export to a closed port, or to the
fake MetricService told to hang; every job still succeeds within its normal bound, the
exporter's failures are counted on the worker's Prometheus port, and the jobs' own metrics are
all recorded."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from orchestrator.domain.jobs import JobSpec
from orchestrator.embedded._ports import free_port
from orchestrator.ledger.budgets import set_budget
from orchestrator.metrics.catalogue import METRIC_PREFIX
from orchestrator.metrics.fake_gcm import FakeMonitoringServer

from .e2e_support import Rig
from .test_observe_worker import sample, scrape

TENANT = "acme"
JOBS = 6
# A job here normally ends ~1 s after submission (a 300 ms prediction polled every <= 0.5 s);
# the bound is generous. (That no step waits on the exporter is shown structurally below.)
NORMAL_BOUND_S = 8.0
FAILURES = "orchestrator_exporter_failures_total"


def exporter_env(endpoint: str, metrics_port: int) -> dict[str, str]:
    return {"ORCH_GCP_PROJECT": "test-project", "ORCH_GCP_MONITORING_ENDPOINT": endpoint,
            "ORCH_GCP_FLUSH_INTERVAL_S": "0.5", "ORCH_WORKER_METRICS_PORT": str(metrics_port)}


def failures(port: int, reason: str | None = None) -> float:
    return sum(v for (name, labels), v in scrape(port).items()
               if name == FAILURES and ("sink", "cloud_monitoring") in labels
               and (reason is None or ("reason", reason) in labels))


def budget(r: Rig) -> None:
    with r.engine.begin() as conn:
        set_budget(conn, scope=f"tenant:{TENANT}", period="month", limit_micros=100_000_000,
                   now=datetime.now(UTC))


def run_jobs(r: Rig) -> None:
    """Submit JOBS jobs; every one succeeds within its normal bound."""
    ids: list[uuid.UUID] = []
    for _ in range(JOBS):
        spec = JobSpec.model_validate({"kind": "video", "tier": "draft", "input": {
            "prompt": "a lighthouse", "duration_s": 8, "resolution": "720p"}})
        job, _ = r.container.submitter.submit(TENANT, spec)
        ids.append(job.id)
    jobs = r.wait_final(ids, timeout=60)
    assert [j.status for j in jobs] == ["succeeded"] * JOBS
    for j in jobs:
        assert j.finished_at is not None
        took = (j.finished_at - j.created_at).total_seconds()
        assert took < NORMAL_BOUND_S, f"job {j.id} took {took:.1f} s"


def jobs_recorded(port: int) -> float | None:
    return sample(scrape(port), "orchestrator_jobs_finished_total", kind="video", tier="draft",
                  backend="vid-cheap", status="succeeded")


def test_dead_exporter_endpoint(rig: Rig) -> None:
    budget(rig)
    rig.control("vid-cheap", duration_ms=300)
    port, dead = free_port(), free_port()  # nothing listens on `dead`
    rig.start_worker(env_extra=exporter_env(f"127.0.0.1:{dead}", port))
    run_jobs(rig)  # the first figures: now the exporter has something to send
    rig.wait_for("the exporter to fail", lambda: failures(port, "UNAVAILABLE") >= 1)
    before = failures(port)

    run_jobs(rig)  # with the exporter known dead

    assert jobs_recorded(port) == 2 * JOBS
    rig.wait_for("the exporter to keep failing", lambda: failures(port) > before)


@pytest.fixture()
def hanging() -> Iterator[FakeMonitoringServer]:
    with FakeMonitoringServer() as fake:
        fake.hang()
        yield fake


def test_hanging_exporter_endpoint(rig: Rig, hanging: FakeMonitoringServer) -> None:
    budget(rig)
    rig.control("vid-cheap", duration_ms=300)
    port = free_port()
    rig.start_worker(env_extra=exporter_env(hanging.endpoint, port))
    run_jobs(rig)  # the first figures: now the exporter has something to send
    rig.wait_for("an export call to hang", lambda: len(hanging.requests) >= 1)
    hung = len(hanging.requests)

    run_jobs(rig)  # while the exporter waits for an answer that does not come

    # The exporter is still inside that one call (a failure is counted only after three
    # 10 s attempts, and no new request was sent): every job above ran start to finish while
    # the exporter hung, so no job step waited on it.
    assert failures(port) == 0 and len(hanging.requests) == hung
    assert jobs_recorded(port) == 2 * JOBS

    hanging.release()  # the endpoint answers again: the figures arrive, complete
    finished = METRIC_PREFIX + "jobs/finished"
    rig.wait_for("jobs/finished in Cloud Monitoring", lambda: any(
        key[0] == finished and ts.points[0].value.int64_value == 2 * JOBS
        for key, ts in list(hanging.series.items())))
