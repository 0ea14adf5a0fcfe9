"""Jobs run against a provider that answers as Replicate does (``replicate_fake``): real Celery
worker processes on real Redis and PostgreSQL, the provider over real HTTP. Each test compares
the orchestrator's ledger with the provider's own bills: no job lost, no work paid twice,
nothing charged but what the provider billed (or, where nothing can tell, shown as a
possible charge)."""

from __future__ import annotations

import base64
import email.utils
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from orchestrator.domain.jobs import JobSpec
from orchestrator.domain.pricing import Usage, actual_micros, estimate_micros
from orchestrator.simulator import RunningSimulator
from orchestrator.store import files

from .e2e_support import Rig, rig_for, simulator_for
from .replicate_fake import Answer, ReplicateFake, html_answer, json_answer

TENANT = "acme"
STOP_S = 30.0  # start_to_close_s: a per_compute_second attempt's worst case is this long


def catalogue(fake: ReplicateFake) -> dict[str, Any]:
    def backend(name: str, usd: float) -> dict[str, Any]:
        return {"name": name, "protocol": "predictions", "kinds": ["video"],
                "tier": "standard", "base_url": fake.url(name),
                "provider_model": "acme/video-model",
                "price": {"model": "per_compute_second", "usd_per_second": usd}}

    return {"defaults": {"timeouts": {"connect_s": 2.0, "read_s": 2.0,
                                      "start_to_close_s": STOP_S},
                         "idempotency": "none"},  # Replicate de-duplicates nothing
            # rep-a is the plan's first choice (cheaper worst case), rep-b its failover
            "backends": [backend("rep-a", 0.01), backend("rep-b", 0.02)]}


@pytest.fixture(scope="module")
def fake() -> Iterator[ReplicateFake]:
    with ReplicateFake(usd_per_second=0.01) as server:
        yield server


@pytest.fixture(scope="module")
def sim(fake: ReplicateFake) -> Iterator[RunningSimulator]:
    with simulator_for(catalogue(fake)) as running:  # the rig's; no job of these goes to it
        yield running


@pytest.fixture()
def rig(db: Engine, database_url: str, redis_url: str, sim: RunningSimulator,
        fake: ReplicateFake, tmp_path: Path) -> Iterator[Rig]:
    fake.reset()
    fake.run_s = 0.5
    with rig_for(catalogue(fake), db, database_url, redis_url, sim, tmp_path) as r:
        r.budget(100_000_000, TENANT)
        yield r


def video(**extra: Any) -> JobSpec:
    return JobSpec.model_validate({"kind": "video", "input": {"prompt": "a lighthouse",
                                                               "duration_s": 4}, **extra})


def charged(rig: Rig, backend: str, seconds: float) -> int:
    return actual_micros(rig.container.catalogue().get(backend),
                         Usage(compute_seconds=seconds))


def http_date(after_s: float) -> str:
    return email.utils.formatdate(time.time() + after_s, usegmt=True)


def test_a_replicate_prediction_is_charged_its_run_time_once(rig: Rig,
                                                             fake: ReplicateFake) -> None:
    """Replicate's answers as they come (fields the orchestrator does not read, timings and
    no cost in ``metrics``, an output list): the job succeeds with that output, charged
    the run time the provider billed, to the micro-dollar."""
    rig.start_worker()
    (job,) = rig.wait_final([rig.submit(video())])

    assert job.status == "succeeded" and job.backend == "rep-a", job.error_code
    (pred,) = fake.made("rep-a")
    (attempt,) = rig.attempts(job.id)
    assert attempt.external_id == pred.id
    assert pred.version == "acme/video-model"
    assert job.result is not None and job.result["output"] == pred.output
    assert fake.bills("rep-a") == [job.cost_micros] == [attempt.cost_micros]
    assert job.cost_micros == charged(rig, "rep-a", pred.ran_s(time.time()))
    assert attempt.possible_cost_micros is None  # a bill, not a worst case
    assert rig.ledger() == (job.cost_micros, 0)


def test_a_throttled_create_with_an_http_date_retry_after_is_sent_again_and_paid_once(
        rig: Rig, fake: ReplicateFake) -> None:
    """Replicate throttles a create with a problem body and a Retry-After given as an
    HTTP date: nothing was made, so the create is sent again after it, and the job is paid
    once, on its first choice."""
    throttled = json_answer(429, {"title": "Request was throttled.", "status": 429,
                                  "detail": "Request was throttled. Expected available in "
                                            "2 seconds."},
                            {"Retry-After": http_date(2)})
    fake.script.create = lambda n: (Answer(throttled.status, throttled.body,
                                           throttled.headers, after_work=False)
                                    if n == 1 else None)
    rig.start_worker()
    (job,) = rig.wait_final([rig.submit(video())])

    assert job.status == "succeeded" and job.backend == "rep-a", job.error_code
    assert fake.count("create") == 2 and len(fake.made("rep-a")) == 1
    assert fake.bills("rep-a") == [job.cost_micros]
    assert rig.ledger() == (job.cost_micros, 0)


def test_polls_answered_by_a_proxys_error_page_are_looked_at_again(
        rig: Rig, fake: ReplicateFake) -> None:
    """A proxy in front of the provider answers polls with its own 503 HTML page and a
    Retry-After date: a passing outage, not the provider's word on the work, which is
    adopted once the polls come through."""
    fake.script.poll = lambda n: (html_answer(503, {"Retry-After": http_date(1)})
                                  if n <= 2 else None)
    rig.start_worker()
    (job,) = rig.wait_final([rig.submit(video())])

    assert job.status == "succeeded" and job.backend == "rep-a", job.error_code
    assert fake.count("poll") >= 3
    (attempt,) = rig.attempts(job.id)
    assert fake.bills("rep-a") == [job.cost_micros] == [attempt.cost_micros]
    assert rig.ledger() == (job.cost_micros, 0)


def test_a_create_whose_answer_is_lost_is_never_sent_again_nor_charged_twice(
        rig: Rig, fake: ReplicateFake) -> None:
    """Replicate makes the prediction and its answer comes after the read timeout. Replicate
    de-duplicates nothing and its listing ignores the idempotency_key filter: nothing can
    tell whether the work exists, so it is not sent to rep-a again; the attempt shows its
    possible charge (not charged), and the job is paid once, on rep-b."""
    late = json_answer(201, {"id": "late"}, delay_s=3.0)  # past read_s (2 s)
    fake.script.create = lambda n: late if n == 1 else None
    rig.start_worker()
    (job,) = rig.wait_final([rig.submit(video())], timeout=90)

    assert job.status == "succeeded" and job.backend == "rep-b", job.error_code
    assert len(fake.made("rep-a")) == 1  # never sent again
    first, second = rig.attempts(job.id)
    assert (first.backend, first.outcome, first.error_code) == ("rep-a", "uncertain",
                                                                 "outcome_unknown")
    assert first.cost_micros is None
    assert first.possible_cost_micros == estimate_micros(
        rig.container.catalogue().get("rep-a"), video())
    (pred_b,) = fake.made("rep-b")
    assert second.external_id == pred_b.id
    assert job.cost_micros == second.cost_micros
    assert rig.ledger() == (job.cost_micros, 0)


def test_a_cancelled_prediction_is_charged_the_time_it_ran(rig: Rig,
                                                           fake: ReplicateFake) -> None:
    """A job cancelled while its prediction runs: Replicate's cancel answers ``canceled``
    with the time it ran, which is what it bills and what the job is charged."""
    fake.run_s = 60.0
    rig.start_worker()
    job_id = rig.submit(video())
    rig.wait_for("the prediction to run", lambda: any(
        a.external_id and fake.predictions[a.external_id].status(time.time()) == "processing"
        for a in rig.attempts(job_id)))
    cancelled = rig.container.runner.cancel(job_id, TENANT)

    assert cancelled is not None and cancelled.status == "cancelled"
    rig.wait_for("the attempt to conclude",
                 lambda: all(a.outcome for a in rig.attempts(job_id)))
    (attempt,) = rig.attempts(job_id)
    (bill,) = fake.bills("rep-a")
    assert attempt.outcome == "cancelled" and attempt.cost_micros == bill > 0
    assert rig.job(job_id).cost_micros == bill
    assert rig.ledger() == (bill, 0)



@pytest.mark.parametrize(("deadline_s", "poll_s"), [(2, "5"), (4, "3")])
def test_a_run_past_the_deadline_is_stopped_at_the_deadline_not_at_the_next_poll(
        rig: Rig, fake: ReplicateFake, deadline_s: int, poll_s: str) -> None:
    """Polls seconds apart (ORCH_POLL_MAX_S is 10 s by default) and a deadline before the
    first poll (2 s, polls every 5 s) or between two (4 s, polls every 3 s): the job fails at
    its deadline, and the run, billed by its time until it is asked to stop, is stopped then,
    not at the next poll (which billed it 5 or 6 s for a deadline of 2 or 4)."""
    fake.run_s = 60.0
    rig.start_worker(env_extra={"ORCH_POLL_MIN_S": poll_s, "ORCH_POLL_MAX_S": poll_s})
    rig.wait_worker_ready()
    (job,) = rig.wait_final([rig.submit(video(deadline_s=deadline_s))])

    assert (job.status, job.error_code) == ("failed", "deadline_exceeded")
    assert job.finished_at is not None and job.deadline_at is not None
    assert (job.finished_at - job.deadline_at).total_seconds() < 1.0
    rig.wait_for("the attempt to conclude",
                 lambda: all(a.outcome for a in rig.attempts(job.id)))
    (pred,) = fake.made("rep-a")
    assert pred.canceled and pred.ran_s(time.time()) < deadline_s
    (bill,) = fake.bills("rep-a")
    (attempt,) = rig.attempts(job.id)
    assert attempt.cost_micros == bill == rig.job(job.id).cost_micros
    assert rig.ledger() == (bill, 0)


def test_a_video_given_as_a_data_url_with_line_breaks_is_kept_as_a_file(
        rig: Rig, fake: ReplicateFake) -> None:
    """A model that answers its video inline, base64 with a line break every 76 characters
    (as Python's ``base64.encodebytes`` writes it): kept as the job's file, named by path in
    its result, not carried whole in the job, its events and its webhooks."""
    video_bytes = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 64
    fake.output = [f"data:video/mp4;base64,{base64.encodebytes(video_bytes).decode()}"]
    rig.start_worker()
    (job,) = rig.wait_final([rig.submit(video())])

    assert job.status == "succeeded" and job.backend == "rep-a", job.error_code
    assert job.result == {"output": [files.path(job.id, 0)]}
    with rig.engine.connect() as conn:
        assert files.read(conn, job.id, 0, TENANT) == ("video/mp4", video_bytes)
    assert fake.bills("rep-a") == [job.cost_micros]
    assert rig.ledger() == (job.cost_micros, 0)
