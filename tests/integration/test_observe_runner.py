"""The job chain's metrics and log events: the real JobRunner (driven in this process, step by
step, as a worker would) against the simulator over HTTP, PostgreSQL and Redis, with a real
JobObserver on its own Recorder."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from orchestrator.domain.jobs import JobSpec
from orchestrator.errors import BudgetExceeded, NoEligibleBackend
from orchestrator.ledger.budgets import set_budget
from orchestrator.logs import configure_logging
from orchestrator.metrics import catalogue as m
from orchestrator.metrics.recorder import DistributionValue, Recorder, get_recorder
from orchestrator.service.observe import JobObserver
from orchestrator.service.runner import JobRunner
from orchestrator.service.submission import Submitter

from .e2e_support import Rig, run_chain

TENANT = "acme"
PROMPT = "a lighthouse at dusk, secret storyboard"


@dataclass
class Observed:
    rig: Rig
    rec: Recorder
    logs: io.StringIO

    @property
    def runner(self) -> JobRunner:
        return self.rig.container.runner

    def events(self, event: str, job_id: uuid.UUID | None = None) -> list[dict[str, object]]:
        out = []
        for line in self.logs.getvalue().splitlines():
            obj = json.loads(line)
            if obj.get("event") == event and (job_id is None or obj["job_id"] == str(job_id)):
                out.append(obj)
        return out

    def submit(self, **kw: object) -> uuid.UUID:
        spec = JobSpec.model_validate({
            "kind": "video", "tier": "draft",
            "input": {"prompt": PROMPT, "duration_s": 8, "resolution": "720p"}, **kw})
        job, created = self.rig.container.submitter.submit(TENANT, spec)
        assert created
        return job.id

    def run(self, job_id: uuid.UUID, timeout: float = 30.0) -> None:
        """Run the job's chain to its end, as the worker's tasks would (a step, then the
        next after the delay the step asked for)."""
        token = self.rig.job(job_id).chain_token
        assert token is not None
        run_chain(self.runner, job_id, token, timeout)


@pytest.fixture()
def observed(rig: Rig) -> Iterator[Observed]:
    with rig.engine.begin() as conn:
        set_budget(conn, scope=f"tenant:{TENANT}", period="month", limit_micros=50_000_000,
                   now=datetime.now(UTC))
    rec, stream = Recorder(), io.StringIO()
    logger = logging.getLogger("test.observe.jobs")
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    handler = configure_logging("INFO", "json", stream=stream)
    rig.container.observer = JobObserver(rec, logger)  # type: ignore[misc]
    rig.control("vid-cheap", duration_ms=0)
    rig.control("vid-mid", duration_ms=0)
    try:
        yield Observed(rig, rec, stream)
    finally:
        root.removeHandler(handler)
        root.handlers[:] = before
        root.setLevel(level)


def dist(rec: Recorder, name: str, **labels: str) -> DistributionValue:
    value = rec.value(name, **labels)
    assert isinstance(value, DistributionValue), (name, labels, value)
    return value


def test_a_succeeded_job_is_counted_timed_costed_and_logged(observed: Observed) -> None:
    o = observed
    job_id = o.submit()
    o.run(job_id)
    job = o.rig.job(job_id)
    assert job.status == "succeeded" and job.cost_micros == 360_000
    labels = {"kind": "video", "tier": "draft", "backend": "vid-cheap", "status": "succeeded"}
    assert o.rec.value(m.JOBS_FINISHED, **labels) == 1
    latency = dist(o.rec, m.JOB_LATENCY, **labels)
    assert job.finished_at is not None and latency.count == 1
    assert latency.sum == pytest.approx((job.finished_at - job.created_at).total_seconds())
    queue = dist(o.rec, m.JOB_QUEUE_LATENCY, kind="video", tier="draft")
    assert job.started_at is not None and queue.count == 1
    assert queue.sum == pytest.approx((job.started_at - job.created_at).total_seconds())
    cost = dist(o.rec, m.JOB_COST, kind="video", tier="draft", backend="vid-cheap")
    assert cost.count == 1 and cost.sum == pytest.approx(0.36)

    (started,) = o.events("job_started", job_id)
    (attempt,) = o.events("attempt_ended", job_id)
    (finished,) = o.events("job_finished", job_id)
    assert started["tenant"] == TENANT and isinstance(started["queue_ms"], int)
    assert attempt == {**attempt, "tenant": TENANT, "backend": "vid-cheap", "attempt": 1,
                       "outcome": "succeeded", "cost_micros": 360_000}
    assert isinstance(attempt["duration_ms"], int) and attempt["duration_ms"] >= 0
    assert finished == {**finished, "tenant": TENANT, "backend": "vid-cheap",
                        "outcome": "succeeded", "cost_micros": 360_000}
    assert finished["duration_ms"] == round(latency.sum * 1000)
    assert "secret storyboard" not in o.logs.getvalue()


def test_failover_is_counted_from_and_to_and_each_attempt_logged(observed: Observed) -> None:
    o = observed
    o.rig.control("vid-cheap", mode="down")
    job_id = o.submit()
    o.run(job_id)
    assert o.rig.job(job_id).backend == "vid-mid"
    assert o.rec.value(m.JOB_FAILOVERS, kind="video", from_backend="vid-cheap",
                       to_backend="vid-mid") == 1
    assert o.rec.value(m.JOBS_FINISHED, kind="video", tier="draft", backend="vid-mid",
                       status="succeeded") == 1
    failed, succeeded = o.events("attempt_ended", job_id)
    assert (failed["backend"], failed["attempt"], failed["outcome"]) == ("vid-cheap", 1, "failed")
    assert failed["fault"] == "backend_fault" and failed["error_code"]
    assert failed["level"] == "WARNING"
    assert (succeeded["backend"], succeeded["attempt"], succeeded["outcome"]) == (
        "vid-mid", 2, "succeeded")
    (fo,) = o.events("failover", job_id)
    assert (fo["from_backend"], fo["backend"], fo["attempt"]) == ("vid-cheap", "vid-mid", 2)


def test_job_fault_and_cancel_are_counted_by_status(observed: Observed) -> None:
    o = observed
    o.rig.control("vid-cheap", error="job_fault", times=1)
    failed_id = o.submit(backend="vid-cheap")
    o.run(failed_id)
    assert o.rig.job(failed_id).status == "failed"
    assert o.rec.value(m.JOBS_FINISHED, kind="video", tier="draft", backend="vid-cheap",
                       status="failed") == 1
    (end,) = o.events("job_finished", failed_id)
    assert end["outcome"] == "failed" and end["error_code"] == "invalid_input"
    assert end["cost_micros"] == 0

    o.rig.control("vid-cheap", duration_ms=60_000)
    cancelled_id = o.submit()
    token = o.rig.job(cancelled_id).chain_token
    assert token is not None
    assert not o.runner.advance(cancelled_id, token).done  # submitted, now running
    o.runner.cancel(cancelled_id)
    assert o.rec.value(m.JOBS_FINISHED, kind="video", tier="draft", backend="vid-cheap",
                       status="cancelled") == 1
    (cancel_end,) = o.events("job_finished", cancelled_id)
    (cancel_attempt,) = o.events("attempt_ended", cancelled_id)
    assert cancel_end["outcome"] == cancel_attempt["outcome"] == "cancelled"


def test_transient_poll_errors_count_as_retries_of_that_backend(observed: Observed) -> None:
    o = observed
    o.rig.control("vid-cheap", duration_ms=300)
    job_id = o.submit()
    token = o.rig.job(job_id).chain_token
    assert token is not None
    assert not o.runner.advance(job_id, token).done  # submitted
    o.rig.control("vid-cheap", status_code=503, times=100)  # every poll now fails, transiently
    o.rig.wait_for("a retried poll", lambda: (
        o.runner.advance(job_id, token).done
        or (o.rec.value(m.JOB_RETRIES, backend="vid-cheap", reason="backend_unavailable")
            or 0) >= 1), timeout=30)
    o.rig.control("vid-cheap", status_code=None, times=0)
    o.run(job_id)
    assert o.rig.job(job_id).status == "succeeded"


def test_submissions_are_counted_accepted_and_refused(observed: Observed) -> None:
    """``Submitter.submit`` counts into the process-wide recorder; the counts are compared
    before and after."""
    c = observed.rig.container
    rec = get_recorder()
    submitter = Submitter(c.engine, c.ledger, c.catalogue, c.health, c.enqueue, c.runner.clock)
    submit = Submitter.submit
    def video(tier: str = "draft", duration_s: int = 8) -> JobSpec:
        return JobSpec.model_validate({"kind": "video", "tier": tier,
                                       "input": {"prompt": PROMPT, "duration_s": duration_s}})

    spec, big, premium = video(), video(duration_s=600), video(tier="premium")

    def count(status: str, backend: str = "vid-cheap", tier: str = "draft") -> float:
        value = rec.value(m.JOBS_SUBMITTED, kind="video", tier=tier, backend=backend,
                          status=status)
        assert not isinstance(value, DistributionValue)
        return value or 0

    before = (count("accepted"), count("budget_exceeded", "none"),
              count("no_eligible_backend", "none", "premium"))
    submit(submitter, TENANT, spec)
    submit(submitter, TENANT, spec, idempotency_key="k1")
    submit(submitter, TENANT, spec, idempotency_key="k1")  # a replay: not a new submission
    with pytest.raises(BudgetExceeded):
        submit(submitter, TENANT, big)  # worst case 600 s x $0.07 x 1.5 > the $50 budget
    with pytest.raises(NoEligibleBackend):
        submit(submitter, TENANT, premium)  # no premium video backend in the catalogue
    after = (count("accepted"), count("budget_exceeded", "none"),
             count("no_eligible_backend", "none", "premium"))
    assert [a - b for a, b in zip(after, before, strict=True)] == [2, 1, 1]
