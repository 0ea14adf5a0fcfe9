"""Every paid call ends in the provider's word, end to end: real Celery worker processes on
real Redis, real PostgreSQL, the simulator over HTTP behaving as real providers do (no
de-duplication of requests in flight, partial bills for cancelled work, answers lost after the
work was created and billed, bills above the estimate).

Each test compares the ledger with the provider's own bills (the simulator's billing ledger,
``GET /_control/{backend}``), not with our bookkeeping.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import Engine, text

from orchestrator.domain.jobs import JobSpec
from orchestrator.errors import BudgetExceeded
from orchestrator.ledger.budgets import set_budget
from orchestrator.service.sweeper import sweep
from orchestrator.simulator import RunningSimulator
from orchestrator.store import files

from .e2e_support import Rig, rig_for, simulator_fixture

TENANT = "acme"
_PRICE_TXT = {"model": "per_token", "usd_per_1k_input": 0.5, "usd_per_1k_output": 1.5}
CATALOGUE: dict[str, Any] = {
    "defaults": {"timeouts": {"connect_s": 2.0, "read_s": 20.0, "start_to_close_s": 120}},
    "backends": [
        {"name": "txt-none", "protocol": "openai", "kinds": ["text"], "tier": "standard",
         "base_url": "${ORCH_SIMULATOR_URL}/txt-none", "idempotency": "none",
         "price": _PRICE_TXT},
        {"name": "txt-backup", "protocol": "openai", "kinds": ["text"], "tier": "standard",
         "base_url": "${ORCH_SIMULATOR_URL}/txt-backup", "idempotency": "completed",
         "price": {**_PRICE_TXT, "usd_per_1k_output": 2.0}},
        {"name": "img-none", "protocol": "openai", "kinds": ["image"], "tier": "standard",
         "base_url": "${ORCH_SIMULATOR_URL}/img-none", "idempotency": "none",
         "price": {"model": "per_image", "usd_per_image": {"1024x1024": 0.04}}},
        {"name": "vid-a", "protocol": "predictions", "kinds": ["video"], "tier": "draft",
         "base_url": "${ORCH_SIMULATOR_URL}/vid-a", "idempotency": "none",
         "price": {"model": "per_second", "usd_per_second": 0.03}},
        {"name": "vid-b", "protocol": "predictions", "kinds": ["video"], "tier": "draft",
         "base_url": "${ORCH_SIMULATOR_URL}/vid-b", "idempotency": "completed",
         "price": {"model": "per_second", "usd_per_second": 0.05}},
    ],
}


sim = simulator_fixture(CATALOGUE)


@pytest.fixture()
def rig(db: Engine, database_url: str, redis_url: str, sim: RunningSimulator,
        tmp_path: Path) -> Iterator[Rig]:
    # start_grace_s: a job not started within 2 s is the sweeper's (not 60 s), so a sweep
    # during a call shows whether the call's lease holds
    with rig_for(CATALOGUE, db, database_url, redis_url, sim, tmp_path,
                 start_grace_s=2.0) as r:
        yield r


# -- helpers -------------------------------------------------------------------------------------

def budget(r: Rig, limit_micros: int = 100_000_000) -> None:
    with r.engine.begin() as conn:
        set_budget(conn, scope=f"tenant:{TENANT}", period="month", limit_micros=limit_micros,
                   now=datetime.now(UTC))


def text_job(prompt: str = "an honest ledger", **kw: Any) -> JobSpec:
    return JobSpec.model_validate({"kind": "text", "input": {"prompt": prompt,
                                                              "max_tokens": 200}, **kw})


def image_job(**kw: Any) -> JobSpec:
    return JobSpec.model_validate({"kind": "image", "input": {"prompt": "a red kite"}, **kw})


def video_job(duration: int = 8, **kw: Any) -> JobSpec:
    return JobSpec.model_validate({"kind": "video", "tier": "draft", "input": {
        "prompt": "a lighthouse at dusk", "duration_s": duration, "resolution": "720p"}, **kw})


def bills_of(r: Rig, *backends: str) -> dict[str, int]:
    """What the providers billed, by the reference (Idempotency-Key) each job was sent with."""
    out: dict[str, int] = {}
    for b in backends:
        for bill in r.provider(b)["bills"]:
            ref = str(bill["reference"])
            out[ref] = out.get(ref, 0) + int(bill["cost_micros"])
    return out


def wait_created(r: Rig, job_id: uuid.UUID) -> None:
    """Until the job's first attempt has the provider's id (the create was answered)."""
    r.wait_for("an external id", lambda: bool(
        (a := r.attempts(job_id)) and a[0].external_id), timeout=30)


def hold_status(r: Rig, job_id: uuid.UUID) -> str:
    with r.engine.connect() as conn:
        return str(conn.execute(text("SELECT status FROM holds WHERE job_id = :j"),
                                {"j": job_id}).scalar_one())


def sweep_until(r: Rig, job_ids: list[uuid.UUID], timeout: float = 60.0) -> None:
    """Sweep as beat would, every pass of the wait, until the jobs have ended."""
    c = r.container

    def ended() -> bool:
        sweep(c.engine, c.ledger, c.enqueue, grace_s=3)
        with r.engine.connect() as conn:
            n = conn.execute(text(
                "SELECT count(*) FROM jobs WHERE id = ANY(:ids) AND wake_at IS NULL "
                "AND status IN ('succeeded', 'failed', 'cancelled')"), {"ids": job_ids})
            return int(n.scalar_one()) == len(job_ids)

    r.wait_for("the jobs to end, swept meanwhile", ended, timeout)


# -- a long call to a provider that does not de-duplicate ----------------------------------------

def test_a_long_synchronous_call_to_a_provider_without_dedup_is_paid_once(rig: Rig) -> None:
    """Two text calls take 6 s each (the catalogue allows 20 s) at a provider that answers
    every request, key or not, as new paid work. The sweeper runs all along: it must not
    revive a chain whose call may still be running, so each job is paid exactly once."""
    budget(rig)
    rig.control("txt-none", idempotency="none", latency_ms=6000)
    rig.start_worker()
    jobs = [rig.submit(text_job(f"job {i}")) for i in range(2)]
    rig.wait_for("both calls in flight",
                 lambda: rig.provider("txt-none")["submissions_in_flight"] == 2, 30)
    sweep_until(rig, jobs)

    state = rig.provider("txt-none")
    assert state["counters"]["created"] == 2 and len(state["bills"]) == 2
    bills = bills_of(rig, "txt-none")
    for job_id in jobs:
        job = rig.job(job_id)
        (attempt,) = rig.attempts(job_id)
        assert job.status == "succeeded" and job.backend == "txt-none"
        assert job.cost_micros == attempt.cost_micros == bills[f"{job_id}:1"]
    assert rig.ledger() == (sum(bills.values()), 0)


# -- a cancel while a synchronous call runs ------------------------------------------------------

def test_a_cancel_during_a_synchronous_call_charges_what_the_provider_billed(rig: Rig) -> None:
    """The call completes after the cancel: charged, and the images it made (sent inline,
    kept as files) are the cancelled job's result."""
    budget(rig)
    rig.control("img-none", idempotency="none", latency_ms=3000, image_format="b64_json")
    rig.start_worker()
    job_id = rig.submit(image_job())
    rig.wait_for("the call in flight",
                 lambda: rig.provider("img-none")["submissions_in_flight"] == 1, 30)

    cancelled = rig.container.runner.cancel(job_id, TENANT)
    assert cancelled is not None and cancelled.status == "cancelled"
    assert hold_status(rig, job_id) == "held"  # the call may still be billed
    rig.wait_for("the call's conclusion to settle the hold",
                 lambda: hold_status(rig, job_id) != "held", 30)

    bill = bills_of(rig, "img-none")[f"{job_id}:1"]
    job = rig.job(job_id)
    assert bill == 40_000 and job.status == "cancelled" and job.cost_micros == bill
    (attempt,) = rig.attempts(job_id)
    assert attempt.outcome == "succeeded" and attempt.cost_micros == bill
    assert rig.ledger() == (bill, 0)
    assert rig.job(job_id).wake_at is None
    # the paid images are the job's, as a succeeded job's are
    assert job.result == {"output": {"images": [files.path(job_id, 0)]}}
    with rig.engine.connect() as conn:
        found = files.read(conn, job_id, 0, TENANT)
    assert found is not None and found[0] == "image/png"
    assert found[1].startswith(b"\x89PNG")


# -- a deadline that falls just after the provider finished ---------------------------------------

# the chain's polls would come long after the deadline, so its first look is the deadline's
# own (a busy machine may take seconds to claim the job; the deadline must not pass before
# the provider has it)
SLOW_POLLS = {"ORCH_POLL_MIN_S": "10", "ORCH_POLL_MAX_S": "10"}


def test_a_deadline_just_after_the_provider_finished_adopts_the_result(rig: Rig) -> None:
    """The prediction ends after 2 s, the chain's first poll would come at 10 s, and the
    deadline's look comes first, at 8 s: the finished work is adopted and charged, not thrown
    away. Its latency is the attempt's age (nearly the 8 s), not 0 ms: 0 made the backend
    look instant to routing and divided by zero in the ranking, so every later submission
    whose plan held the backend failed with a 500."""
    budget(rig)
    rig.control("vid-a", duration_ms=2000)
    rig.start_worker(env_extra=SLOW_POLLS)
    rig.wait_worker_ready()
    job_id = rig.submit(video_job(deadline_s=8))
    (job,) = rig.wait_final([job_id], timeout=30)

    bill = bills_of(rig, "vid-a")[f"{job_id}:1"]
    assert job.status == "succeeded" and job.cost_micros == bill == 240_000
    assert job.deadline_at is not None and job.finished_at is not None
    assert job.finished_at > job.deadline_at
    assert rig.ledger() == (bill, 0)
    latency = rig.container.health.snapshot(["vid-a"])["vid-a"].latency_ms
    assert latency is not None and latency >= 7000
    for strategy in ("cheapest", "fastest", "balanced"):  # the next jobs are routed
        rig.submit(video_job(strategy=strategy))


def test_a_deadline_whose_stop_finds_the_work_finished_adopts_the_result(rig: Rig) -> None:
    """At the deadline the last look fails (a 404 once), so the chain asks the provider to
    stop, and the cancel's answer shows the prediction had succeeded: it is adopted."""
    budget(rig)
    rig.control("vid-a", duration_ms=2000)
    rig.start_worker(env_extra=SLOW_POLLS)
    rig.wait_worker_ready()
    job_id = rig.submit(video_job(deadline_s=8))
    wait_created(rig, job_id)
    rig.control("vid-a", status_code=404, times=1)  # the deadline's look, nothing else
    (job,) = rig.wait_final([job_id], timeout=30)

    assert rig.provider("vid-a")["counters"]["cancels"] == 1
    bill = bills_of(rig, "vid-a")[f"{job_id}:1"]
    assert job.status == "succeeded" and job.cost_micros == bill == 240_000
    assert rig.ledger() == (bill, 0)


def test_a_deadline_while_the_provider_still_works_charges_its_partial_bill(rig: Rig) -> None:
    budget(rig)
    rig.control("vid-a", duration_ms=60_000, cancel_bill_fraction=0.5)
    rig.start_worker(env_extra=SLOW_POLLS)
    rig.wait_worker_ready()
    job_id = rig.submit(video_job(deadline_s=8))
    rig.wait_for("the hold to be finished", lambda: hold_status(rig, job_id) != "held", 30)

    bill = bills_of(rig, "vid-a")[f"{job_id}:1"]
    job = rig.job(job_id)
    assert job.status == "failed" and job.error_code == "deadline_exceeded"
    assert bill == 120_000 and job.cost_micros == bill  # half of 8 s at $0.03
    (attempt,) = rig.attempts(job_id)
    assert attempt.outcome == "timeout" and attempt.cost_micros == bill
    assert rig.provider("vid-a")["counters"]["cancels"] == 1
    assert rig.ledger() == (bill, 0)


# -- an answer lost after the provider created the work -------------------------------------------

def test_a_lost_answer_from_a_provider_without_dedup_fails_over_as_uncertain(rig: Rig) -> None:
    budget(rig)
    rig.control("txt-none", idempotency="none", drop_answers=1)
    rig.start_worker()
    job_id = rig.submit(text_job())
    (job,) = rig.wait_final([job_id], timeout=30)

    assert rig.provider("txt-none")["counters"]["created"] == 1  # never sent again
    first, second = rig.attempts(job_id)
    assert first.backend == "txt-none" and first.outcome == "uncertain"
    assert first.error_code == "outcome_unknown" and first.cost_micros is None
    lost = bills_of(rig, "txt-none")[f"{job_id}:1"]
    assert first.possible_cost_micros is not None and first.possible_cost_micros >= lost
    assert second.backend == "txt-backup" and second.outcome == "succeeded"
    paid = bills_of(rig, "txt-backup")[f"{job_id}:2"]
    assert job.status == "succeeded" and job.cost_micros == second.cost_micros == paid
    assert rig.ledger() == (paid, 0)


@pytest.mark.parametrize("knob", ["drop_answers", "garble_answers"])
def test_a_lost_or_unreadable_create_answer_is_found_by_its_key_and_not_paid_twice(
        rig: Rig, knob: str) -> None:
    budget(rig)
    rig.control("vid-a", idempotency="none", duration_ms=500, **{knob: 1})
    rig.start_worker()
    job_id = rig.submit(video_job())
    (job,) = rig.wait_final([job_id], timeout=30)

    state = rig.provider("vid-a")
    assert state["counters"]["created"] == 1 and state["counters"]["lookups"] >= 1
    (attempt,) = rig.attempts(job_id)
    assert attempt.outcome == "succeeded" and attempt.external_id
    bill = bills_of(rig, "vid-a")[f"{job_id}:1"]
    assert job.status == "succeeded" and job.cost_micros == bill
    assert rig.ledger() == (bill, 0)


def test_an_unreadable_answer_from_a_provider_without_dedup_fails_over_as_uncertain(
        rig: Rig) -> None:
    budget(rig)
    rig.control("txt-none", idempotency="none", garble_answers=1)
    rig.start_worker()
    job_id = rig.submit(text_job())
    (job,) = rig.wait_final([job_id], timeout=30)

    assert rig.provider("txt-none")["counters"]["created"] == 1  # never sent again
    first, second = rig.attempts(job_id)
    assert first.outcome == "uncertain" and first.error_code == "outcome_unknown"
    lost = bills_of(rig, "txt-none")[f"{job_id}:1"]
    assert first.possible_cost_micros is not None and first.possible_cost_micros >= lost
    assert second.backend == "txt-backup" and second.outcome == "succeeded"
    assert job.status == "succeeded" and job.cost_micros == second.cost_micros


def test_a_new_prediction_the_provider_does_not_know_yet_is_looked_at_again(rig: Rig) -> None:
    """Two 404s just after the create (a provider slow to know a new id): polled on, not
    stopped; the job ends on the same backend, charged once."""
    budget(rig)
    rig.control("vid-a", idempotency="none", duration_ms=2500)
    rig.start_worker()
    job_id = rig.submit(video_job())
    wait_created(rig, job_id)
    rig.control("vid-a", status_code=404, times=2)
    (job,) = rig.wait_final([job_id], timeout=60)

    (attempt,) = rig.attempts(job_id)
    assert attempt.outcome == "succeeded" and attempt.cancel_requested_at is None
    assert rig.provider("vid-a")["counters"]["cancels"] == 0
    bill = bills_of(rig, "vid-a")[f"{job_id}:1"]
    assert job.status == "succeeded" and job.cost_micros == bill
    assert rig.ledger() == (bill, 0)


def test_a_poll_answered_429_waits_for_its_retry_after(rig: Rig) -> None:
    """A Retry-After above what a call sleeps on (10 s) is the chain's to honour: the next
    look comes no sooner, though polls otherwise come every 0.5 s here."""
    budget(rig)
    rig.control("vid-a", duration_ms=1000)
    rig.start_worker()
    job_id = rig.submit(video_job())
    wait_created(rig, job_id)
    rig.control("vid-a", status_code=429, retry_after_s=11, times=1)
    asked = datetime.now(UTC)
    (job,) = rig.wait_final([job_id], timeout=60)

    assert job.status == "succeeded" and job.finished_at is not None
    assert (job.finished_at - asked).total_seconds() >= 11
    assert rig.provider("vid-a")["counters"]["injected"] == 1


def test_work_the_provider_stops_knowing_is_stopped_and_uncertain_not_dropped(
        rig: Rig) -> None:
    """A poll answered 404 for the provider's own id: the work may still run and bill, so
    it is asked to stop and looked at through the grace; then it is uncertain with its
    possible charge, and only then does the job fail over."""
    budget(rig)
    rig.control("vid-a", idempotency="none", duration_ms=1500)
    rig.start_worker()
    job_id = rig.submit(video_job())
    wait_created(rig, job_id)
    rig.control("vid-a", status_code=404)  # every request from now on, until changed
    (job,) = rig.wait_final([job_id], timeout=60)

    first, second = rig.attempts(job_id)
    assert first.backend == "vid-a" and first.outcome == "uncertain"
    assert first.error_code == "backend_not_found" and first.cancel_requested_at is not None
    billed = bills_of(rig, "vid-a")[f"{job_id}:1"]  # it ran to its end at the provider
    assert first.possible_cost_micros is not None and first.possible_cost_micros >= billed
    assert second.backend == "vid-b" and second.outcome == "succeeded"
    assert job.status == "succeeded" and job.cost_micros == second.cost_micros


# -- a backend removed from the catalogue while a job runs there ----------------------------------

def test_a_job_on_a_backend_removed_from_the_catalogue_ends_within_one_sweep(
    rig: Rig, tmp_path: Path,
) -> None:
    budget(rig)
    rig.control("vid-a", duration_ms=120_000)
    rig.control("vid-b", duration_ms=300)
    rig.start_worker()
    job_id = rig.submit(video_job())
    rig.wait_for("the prediction to be created",
                 lambda: bool(rig.attempts(job_id) and rig.attempts(job_id)[0].external_id))
    rig.kill_workers()
    smaller = {**CATALOGUE, "backends": [b for b in CATALOGUE["backends"]
                                         if b["name"] != "vid-a"]}
    Path(rig.env["ORCH_BACKENDS_FILE"]).write_text(yaml.safe_dump(smaller))
    rig.start_worker()
    rig.wait_worker_ready()
    with rig.engine.begin() as conn:  # as if the chain had gone silent past its grace
        conn.execute(text("UPDATE jobs SET wake_at = now() - interval '1 second' "
                          "WHERE id = :id"), {"id": job_id})
    c = rig.container
    assert sweep(c.engine, c.ledger, c.enqueue, grace_s=3).revived == 1
    (job,) = rig.wait_final([job_id], timeout=30)  # no second sweep

    removed, replacement = rig.attempts(job_id)
    assert removed.backend == "vid-a" and removed.outcome == "uncertain"
    assert removed.error_code == "backend_removed"
    assert removed.possible_cost_micros == 240_000
    assert replacement.backend == "vid-b" and replacement.outcome == "succeeded"
    assert job.status == "succeeded" and job.cost_micros == replacement.cost_micros
    assert rig.ledger() == (replacement.cost_micros, 0)
    assert rig.job(job_id).wake_at is None


# -- real spend is always recorded ----------------------------------------------------------------

def test_a_bill_above_the_hold_is_charged_in_full_and_raises_an_alert(rig: Rig) -> None:
    """The provider reports (and bills) twice the seconds asked for: the whole bill is
    charged, past the hold, as an overage with its budget alert."""
    budget(rig)
    rig.control("vid-a", duration_ms=300, usage_factor=2.0)
    rig.start_worker()
    job_id = rig.submit(video_job())
    (job,) = rig.wait_final([job_id])

    bill = bills_of(rig, "vid-a")[f"{job_id}:1"]
    assert job.status == "succeeded" and bill == 480_000 > job.estimated_cost_micros
    assert job.cost_micros == bill
    assert rig.ledger() == (bill, 0)
    with rig.engine.connect() as conn:
        overage = conn.execute(text(
            "SELECT committed_delta_micros FROM ledger_entries "
            "WHERE job_id = :j AND kind = 'overage'"), {"j": job_id}).scalar_one()
        alert = conn.execute(text(
            "SELECT payload FROM alerts WHERE kind = 'overage'")).scalar_one()
    assert overage == bill - job.estimated_cost_micros
    assert alert["job_id"] == str(job_id) and alert["overage_micros"] == overage


def test_a_lowered_limit_refuses_the_next_hold_after_earlier_holds_drained(rig: Rig) -> None:
    budget(rig, 2_000_000)
    rig.control("vid-a", duration_ms=60_000)
    rig.start_worker()
    first = rig.submit(video_job())  # holds 400 000 (vid-b's worst case)
    rig.wait_for("the prediction to run",
                 lambda: bool(rig.attempts(first) and rig.attempts(first)[0].external_id))
    budget(rig, 100_000)  # below what is held
    rig.container.runner.cancel(first, TENANT)
    rig.wait_for("the hold to drain", lambda: hold_status(rig, first) != "held")
    assert rig.ledger() == (0, 0)

    with pytest.raises(BudgetExceeded):  # 300 000 against the limit of 100 000
        rig.container.submitter.submit(TENANT, video_job(duration=6))
    budget(rig, 2_000_000)
    rig.submit(video_job(duration=6))
