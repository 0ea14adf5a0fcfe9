"""A job cancelled while its provider works: charged what the provider billed, and, when the
provider finished the work anyway, given its output as the job's result (the job stays
``cancelled``). End to end: the API over real HTTP, real Celery workers on real Redis, real
PostgreSQL, the simulator as the provider; the charge is compared with the provider's bills.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from orchestrator.client import Client, NotReadyYet
from orchestrator.events.retention import expire

from .api_fixture import Api, api_fixture, video  # noqa: F401
from .e2e_support import Rig

BACKEND = "vid-cheap"
# the chain's first poll comes 10 s after the create: a prediction that ends in 1 s is found
# finished by the cancel's own answer, not by a poll
SLOW_POLLS = {"ORCH_POLL_MIN_S": "10", "ORCH_POLL_MAX_S": "10"}


def hold_status(rig: Rig, job_id: str) -> str:
    with rig.engine.connect() as conn:
        return str(conn.execute(text("SELECT status FROM holds WHERE job_id = :j"),
                                {"j": job_id}).scalar_one())


def bill_of(rig: Rig, job_id: str) -> int:
    """What the provider billed the job's first attempt (sent with key ``<job>:1``)."""
    bills = [int(b["cost_micros"]) for b in rig.provider(BACKEND)["bills"]
             if b["reference"] == f"{job_id}:1"]
    assert len(bills) == 1, bills
    return bills[0]


def submitted(api: Api, **kw: Any) -> str:
    """A video job, once the provider has created its prediction."""
    job_id: str = api.tenant().post("/v1/jobs", json=video(**kw)).json()["id"]
    api.rig.wait_for("the prediction to be created", lambda: any(
        a.external_id for a in api.rig.attempts(uuid.UUID(job_id))), 30)
    return job_id


def event_types(rig: Rig, job_id: str) -> list[str]:
    with rig.engine.connect() as conn:
        return list(conn.execute(text(
            "SELECT type FROM job_events WHERE job_id = :j ORDER BY seq"), {"j": job_id}
        ).scalars())


def paid_in_full_with_its_output(rig: Rig, job_id: str, status: str, code: str
                                 ) -> tuple[Any, int, str]:
    """Once its attempt concluded: the job, still ``status`` (``code``), charged the whole
    bill of an attempt that succeeded, and its result that attempt's output. (job, bill,
    output)."""
    rig.wait_for("the attempt's conclusion to settle the hold",
                 lambda: hold_status(rig, job_id) != "held", 30)
    bill = bill_of(rig, job_id)
    job = rig.job(uuid.UUID(job_id))
    (attempt,) = rig.attempts(uuid.UUID(job_id))
    assert job.status == status and job.error_code == code
    assert attempt.outcome == "succeeded" and job.cost_micros == attempt.cost_micros == bill
    assert bill == 180_000  # the whole video: 4 s at $0.03 x 1.5 (720p)
    assert rig.ledger() == (bill, 0)
    output = job.result["output"] if job.result else None
    assert isinstance(output, str) and output.endswith(f"/{attempt.external_id}.mp4")
    return job, bill, output


def test_a_cancelled_job_whose_provider_finishes_anyway_keeps_the_output(api: Api) -> None:
    """The provider ignores the stop and finishes: the job stays cancelled, is charged the
    whole bill, and its result is the provider's output, read as a succeeded job's is. The
    result cache does not serve it, and retention drops it as any other."""
    rig = api.rig
    api.budget("tenant:acme", 100_000_000)
    rig.control(BACKEND, duration_ms=4000, ignore_cancel=True)
    rig.start_worker()
    t = api.tenant()
    job_id = submitted(api, cache=True)

    answer = t.post(f"/v1/jobs/{job_id}/cancel")
    assert answer.status_code == 200 and answer.json()["status"] == "cancelled"
    assert answer.json()["result"] is None
    early = t.get(f"/v1/jobs/{job_id}/result")  # asked to stop, still running
    assert early.status_code == 409 and early.json()["error"]["code"] == "not_ready_yet"
    assert early.json()["error"]["details"]["status"] == "cancelled"
    assert "may still end" in early.json()["error"]["message"]
    job, bill, output = paid_in_full_with_its_output(rig, job_id, "cancelled", "cancelled")
    assert job.result == {"output": output}
    # one terminal event, then the charge; the status never changed
    assert event_types(rig, job_id) == ["job.queued", "job.started", "job.cancelled",
                                        "job.charged"]

    shown = t.get(f"/v1/jobs/{job_id}").json()
    assert shown["status"] == "cancelled" and shown["result"] == {"output": output}
    got = t.get(f"/v1/jobs/{job_id}/result")
    assert got.status_code == 200, got.text
    res = got.json()
    assert res["status"] == "cancelled" and res["output"] == {"output": output}
    assert res["cost"]["total_micros"] == bill and res["expires_at"] is not None
    with Client(api.url, api.keys["acme"]) as sdk:
        assert sdk.result(job_id).output == {"output": output}

    # an identical job is no cache hit of it: it runs itself
    again = t.post("/v1/jobs", json=video(cache=True)).json()
    assert again["status"] in ("queued", "running") and again["cached_from"] is None

    # retention drops it as it drops a succeeded job's
    assert expire(rig.engine, 1, datetime.now(UTC) + timedelta(days=2)).results >= 1
    gone = t.get(f"/v1/jobs/{job_id}/result")
    assert gone.status_code == 410 and gone.json()["error"]["code"] == "result_expired"
    assert rig.job(uuid.UUID(job_id)).result is None


def test_a_cancel_the_provider_obeys_leaves_no_result(api: Api) -> None:
    """The provider stops the work and bills half of it: that is charged, and the job has no
    result; its result answers why."""
    rig = api.rig
    api.budget("tenant:acme", 100_000_000)
    rig.control(BACKEND, duration_ms=60_000, cancel_bill_fraction=0.5)
    rig.start_worker()
    t = api.tenant()
    job_id = submitted(api)

    assert t.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    rig.wait_for("the attempt's conclusion to settle the hold",
                 lambda: hold_status(rig, job_id) != "held", 30)
    bill = bill_of(rig, job_id)
    job = rig.job(uuid.UUID(job_id))
    (attempt,) = rig.attempts(uuid.UUID(job_id))
    assert job.status == "cancelled" and attempt.outcome == "cancelled"
    assert job.cost_micros == attempt.cost_micros == bill == 90_000  # half of 4 s
    assert rig.ledger() == (bill, 0)
    assert job.result is None and t.get(f"/v1/jobs/{job_id}").json()["result"] is None

    refused = t.get(f"/v1/jobs/{job_id}/result")
    assert refused.status_code == 409
    error = refused.json()["error"]
    assert error["code"] == "not_ready_yet" and error["details"]["status"] == "cancelled"
    assert error["message"] == (f"job {job_id} is cancelled and has no result; no provider "
                                "finished its work")
    with Client(api.url, api.keys["acme"]) as sdk, pytest.raises(NotReadyYet):
        sdk.result(job_id)


def test_a_cancel_answered_with_the_finished_work_keeps_the_output(api: Api) -> None:
    """The prediction has finished, unpolled yet: the cancel's own answer says it succeeded.
    The cancel concludes it there and then: charged, and its output kept."""
    rig = api.rig
    api.budget("tenant:acme", 100_000_000)
    rig.control(BACKEND, duration_ms=1000)
    rig.start_worker(env_extra=SLOW_POLLS)
    t = api.tenant()
    job_id = submitted(api)
    rig.wait_for("the provider to finish (and bill) it", lambda: any(
        b["reference"] == f"{job_id}:1" for b in rig.provider(BACKEND)["bills"]), 30)
    assert rig.attempts(uuid.UUID(job_id))[0].outcome is None  # not polled since

    answer = t.post(f"/v1/jobs/{job_id}/cancel").json()
    assert answer["status"] == "cancelled"
    assert rig.counters(BACKEND)["cancels"] == 1
    # concluded by the cancel itself, before it answered
    bill = bill_of(rig, job_id)
    assert round(answer["cost_usd"] * 1_000_000) == bill and hold_status(rig, job_id) != "held"
    (attempt,) = rig.attempts(uuid.UUID(job_id))
    assert attempt.outcome == "succeeded" and attempt.cost_micros == bill
    assert answer["result"] is not None
    output = answer["result"]["output"]
    assert isinstance(output, str) and output.endswith(f"/{attempt.external_id}.mp4")
    assert t.get(f"/v1/jobs/{job_id}/result").json()["output"] == {"output": output}
    assert rig.ledger() == (bill, 0)


def test_a_job_failed_by_its_deadline_whose_provider_finishes_anyway_keeps_the_output(
        api: Api) -> None:
    """The deadline passes while the prediction runs; the provider ignores the stop and
    finishes: the job stays failed (``deadline_exceeded``), is charged the whole bill, and its
    result is the provider's output."""
    rig = api.rig
    api.budget("tenant:acme", 100_000_000)
    rig.control(BACKEND, duration_ms=5000, ignore_cancel=True)
    rig.start_worker()
    rig.wait_worker_ready()  # the 2 s deadline must not be spent on the worker's start-up
    t = api.tenant()
    job_id = submitted(api, deadline_s=2)

    rig.wait_for("the deadline to fail the job", lambda: rig.job(
        uuid.UUID(job_id)).status == "failed", 30)
    early = t.get(f"/v1/jobs/{job_id}/result")  # asked to stop, still running
    assert early.status_code == 409, early.text
    assert "may still end" in early.json()["error"]["message"]
    _, _, output = paid_in_full_with_its_output(rig, job_id, "failed", "deadline_exceeded")
    got = t.get(f"/v1/jobs/{job_id}/result")
    assert got.status_code == 200, got.text
    assert got.json()["status"] == "failed" and got.json()["output"] == {"output": output}
