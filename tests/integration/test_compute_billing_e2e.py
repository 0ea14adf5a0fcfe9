"""Backends that bill their run time (``per_compute_second``, Replicate's hardware prices), end
to end: the provider's answer carries ``metrics.predict_time`` and no cost, and a failed or
cancelled run is billed its time as a succeeded one is. Each is charged what the provider
billed, to the micro-dollar: a success is not charged its worst case, and a failure or a
cancel is not charged nothing.

The simulator bills as such providers do, to real Celery worker processes on real Redis and
PostgreSQL.
"""

from __future__ import annotations

from typing import Any

from orchestrator.domain.jobs import JobSpec
from orchestrator.domain.pricing import Usage, actual_micros, estimate_micros
from orchestrator.events.store import job_events

from .e2e_support import Rig, budgeted_rig_fixture, simulator_fixture

TENANT = "acme"
CATALOGUE: dict[str, Any] = {
    "defaults": {"timeouts": {"connect_s": 2.0, "read_s": 5.0, "start_to_close_s": 120},
                 "idempotency": "completed"},
    "backends": [
        # the plan's first choice (its worst case, 60 s x $0.01, is the cheaper), then gpu-b
        {"name": "gpu-a", "protocol": "predictions", "kinds": ["video"], "tier": "standard",
         "base_url": "${ORCH_SIMULATOR_URL}/gpu-a", "timeouts": {"start_to_close_s": 60},
         "price": {"model": "per_compute_second", "usd_per_second": 0.01}},
        {"name": "gpu-b", "protocol": "predictions", "kinds": ["video"], "tier": "standard",
         "base_url": "${ORCH_SIMULATOR_URL}/gpu-b",
         "price": {"model": "per_compute_second", "usd_per_second": 0.02}},
        # draft tier: in no other test's plan (their jobs are standard)
        {"name": "gpu-short", "protocol": "predictions", "kinds": ["video"], "tier": "draft",
         "base_url": "${ORCH_SIMULATOR_URL}/gpu-short", "timeouts": {"start_to_close_s": 4},
         "price": {"model": "per_compute_second", "usd_per_second": 0.01}},
    ],
}


sim = simulator_fixture(CATALOGUE)
rig = budgeted_rig_fixture(CATALOGUE, TENANT)


def video(prompt: str = "a lighthouse at dusk") -> JobSpec:
    return JobSpec.model_validate({"kind": "video", "input": {"prompt": prompt,
                                                               "duration_s": 4}})


def billed(rig: Rig, backend: str) -> list[int]:
    return [b["cost_micros"] for b in rig.provider(backend)["bills"]]


def test_the_simulator_bills_run_time_as_replicate_answers_it(rig: Rig) -> None:
    rig.control("gpu-a", duration_ms=200, report_usage=False)
    created = rig.http.post(f"{rig.sim_url}/gpu-a/v1/predictions",
                            json={"input": {"prompt": "a [[fail]] run", "duration_s": 4}})
    assert created.status_code == 201
    pid = created.json()["id"]
    rig.wait_for("the prediction to end", lambda: rig.http.get(
        f"{rig.sim_url}/gpu-a/v1/predictions/{pid}").json()["status"] == "failed", timeout=10)
    answer = rig.http.get(f"{rig.sim_url}/gpu-a/v1/predictions/{pid}").json()
    assert answer["metrics"] == {"predict_time": 0.2} and "cost_usd" not in answer
    assert billed(rig, "gpu-a") == [2_000]  # 0.2 s x $0.01, failed all the same


def test_a_success_is_charged_its_run_time_not_its_worst_case(rig: Rig) -> None:
    rig.control("gpu-a", duration_ms=300, report_usage=False)
    rig.start_worker()
    spec = video()
    (job,) = rig.wait_final([rig.submit(spec)])

    assert job.status == "succeeded" and job.backend == "gpu-a", job.error_code
    (attempt,) = rig.attempts(job.id)
    backend = rig.container.catalogue().get("gpu-a")
    assert estimate_micros(backend, spec) == 600_000  # start_to_close_s 60 x $0.01
    # the hold covers the failover's worst case: gpu-b's start_to_close_s, 120 s x $0.02
    assert job.estimated_cost_micros == 2_400_000
    run = actual_micros(backend, Usage(compute_seconds=0.3))
    assert billed(rig, "gpu-a") == [run] == [3_000]
    assert job.cost_micros == attempt.cost_micros == run
    assert attempt.possible_cost_micros is None  # a bill, not a worst case
    assert rig.ledger() == (run, 0)


def test_a_failed_run_is_charged_its_time_and_the_job_fails_over(rig: Rig) -> None:
    rig.control("gpu-a", duration_ms=400, fail_job_rate=1.0, report_usage=False)
    rig.control("gpu-b", duration_ms=300, report_usage=False)
    rig.start_worker()
    (job,) = rig.wait_final([rig.submit(video())])

    assert job.status == "succeeded" and job.backend == "gpu-b", job.error_code
    first, second = rig.attempts(job.id)
    assert (first.backend, first.outcome) == ("gpu-a", "failed")
    assert (second.backend, second.outcome) == ("gpu-b", "succeeded")
    assert billed(rig, "gpu-a") == [first.cost_micros] == [4_000]  # 0.4 s x $0.01
    assert billed(rig, "gpu-b") == [second.cost_micros] == [6_000]  # 0.3 s x $0.02
    assert job.cost_micros == 10_000
    assert rig.ledger() == (10_000, 0)  # both bills, once each


def test_a_cancelled_run_is_charged_the_time_it_ran(rig: Rig) -> None:
    rig.control("gpu-a", duration_ms=60_000, report_usage=False)
    rig.start_worker()
    job_id = rig.submit(video())
    rig.wait_for("the job to be submitted",
                 lambda: any(a.external_id for a in rig.attempts(job_id)))
    cancelled = rig.container.runner.cancel(job_id, TENANT)

    assert cancelled is not None and cancelled.status == "cancelled"
    (bill,) = billed(rig, "gpu-a")
    assert 0 < bill < 600_000  # some of a minute at $0.01/s
    (attempt,) = rig.attempts(job_id)
    assert attempt.outcome == "cancelled" and attempt.cost_micros == bill
    assert rig.job(job_id).cost_micros == bill
    assert rig.ledger() == (bill, 0)
    # the job ended before its attempt concluded: the bill comes as a late charge, which a
    # consumer of the events counting spend hears of (the cancel's event said $0)
    with rig.engine.connect() as conn:
        events = job_events(conn, job_id)
    assert [e.type for e in events] == ["job.queued", "job.started", "job.cancelled",
                                        "job.charged"]
    cancel, charged = events[2].data["cost"], events[3].data["cost"]
    assert cancel["total_micros"] == 0 and cancel["attempts"][0]["outcome"] is None
    assert charged["total_micros"] == bill and charged["previous_total_usd"] == 0
    assert charged["attempts"] == [{"attempt": 1, "backend": "gpu-a", "outcome": "cancelled",
                                    "cost_usd": bill / 1e6}]


def test_a_run_past_its_limit_is_stopped_at_the_limit_not_a_poll_later(rig: Rig) -> None:
    """The hold of a backend billed by run time covers ``start_to_close_s`` of it: the run is
    asked to stop when it reaches that, not at the first poll after it (polls 3 s apart
    here: at 3 s, then 6 s), or its bill passes the hold, and the budget."""
    rig.env.update(ORCH_POLL_MIN_S="3", ORCH_POLL_MAX_S="3")
    rig.control("gpu-short", duration_ms=60_000, report_usage=False)
    rig.start_worker()
    spec = JobSpec.model_validate({"kind": "video", "tier": "draft", "backend": "gpu-short",
                                   "input": {"prompt": "a long take", "duration_s": 4}})
    (job,) = rig.wait_final([rig.submit(spec)], timeout=60)

    hold = estimate_micros(rig.container.catalogue().get("gpu-short"), spec)
    assert hold == 40_000 == job.estimated_cost_micros  # 4 s x $0.01
    (attempt,) = rig.attempts(job.id)
    assert (job.status, attempt.error_code) == ("failed", "start_to_close_timeout")
    (bill,) = billed(rig, "gpu-short")
    # stopped at 4 s and the cancel's trip, not at the 6 s poll (60_000) nor the 3 s one
    # (30_000). The provider's clock starts when the create reaches it, after ours: its run
    # can be a moment short of 4 s when the stop arrives (39_999 seen once).
    assert 38_000 <= bill < 50_000, bill
    assert attempt.cost_micros == bill and rig.ledger() == (bill, 0)


def test_a_run_that_succeeds_without_output_is_charged_its_time_and_fails_over(
        rig: Rig) -> None:
    """A provider that says ``succeeded`` and delivers nothing (``output: null``) billed the
    run: the attempt fails as the backend's fault, charged that bill, and another backend
    does the job. It is not taken for an unreadable answer (closed uncertain, charged
    nothing)."""
    rig.control("gpu-a", duration_ms=400, report_usage=False, empty_output=True)
    rig.control("gpu-b", duration_ms=300, report_usage=False)
    rig.start_worker()
    (job,) = rig.wait_final([rig.submit(video())])

    assert job.status == "succeeded" and job.backend == "gpu-b", job.error_code
    first, second = rig.attempts(job.id)
    assert (first.backend, first.outcome, first.error_code) == ("gpu-a", "failed",
                                                                "empty_output")
    assert first.possible_cost_micros is None  # a bill, not a worst case
    assert billed(rig, "gpu-a") == [first.cost_micros] == [4_000]  # 0.4 s x $0.01
    assert billed(rig, "gpu-b") == [second.cost_micros] == [6_000]
    assert rig.ledger() == (10_000, 0)


def test_without_predict_time_the_run_is_charged_by_its_timestamps(rig: Rig) -> None:
    """A provider whose answers tell the run's time only by ``started_at`` and
    ``completed_at`` (no ``metrics.predict_time``): a failed run is charged that time, not
    nothing, and a success that time, not its worst case."""
    rig.control("gpu-a", duration_ms=400, fail_job_rate=1.0, report_usage=False,
                report_run_time=False)
    rig.control("gpu-b", duration_ms=300, report_usage=False, report_run_time=False)
    rig.start_worker()
    (job,) = rig.wait_final([rig.submit(video())])

    assert job.status == "succeeded" and job.backend == "gpu-b", job.error_code
    first, second = rig.attempts(job.id)
    assert (first.outcome, second.outcome) == ("failed", "succeeded")
    assert billed(rig, "gpu-a") == [first.cost_micros] == [4_000]  # 0.4 s x $0.01
    assert billed(rig, "gpu-b") == [second.cost_micros] == [6_000]  # 0.3 s x $0.02
    assert second.possible_cost_micros is None  # a bill, not a worst case
    assert rig.ledger() == (10_000, 0)
