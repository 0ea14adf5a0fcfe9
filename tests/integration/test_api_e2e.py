"""One job submitted over HTTP runs to `succeeded` on a real Celery worker (simulator backend),
and the API shows the result, the attempt and the settled budget."""

from __future__ import annotations

import logging
import time
import uuid

import httpx
import pytest
from sqlalchemy import text

from orchestrator.api import ApiConfig, start_in_thread
from orchestrator.bootstrap import Container
from orchestrator.service.sweeper import sweep

from .api_fixture import Api, api_fixture, video  # noqa: F401


def test_a_job_submitted_over_http_succeeds_on_a_real_worker(api: Api) -> None:
    api.budget("tenant:acme", 10_000_000)
    api.rig.control("vid-cheap", duration_ms=200)
    api.rig.start_worker()
    c = api.tenant()
    r = c.post("/v1/jobs", json=video(duration=8), headers={"Idempotency-Key": "e2e-1"})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]

    deadline = time.monotonic() + 60
    job = c.get(f"/v1/jobs/{job_id}").json()
    while job["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, f"job still {job['status']} after 60 s"
        time.sleep(0.1)  # polling interval of a condition wait
        job = c.get(f"/v1/jobs/{job_id}").json()

    assert job["status"] == "succeeded", job
    assert job["backend"] == "vid-cheap" and job["cost_usd"] == 0.36  # 8 s x $0.03 x 1.5
    assert job["result"] and job["error"] is None and job["finished_at"]
    (attempt,) = job["attempts"]
    assert attempt["outcome"] == "succeeded" and attempt["external_id"]
    # the list reads every attempt of its page in one query: each item as GET shows it; no
    # worker runs the second job (one that started it would keep its hold past the cancel)
    api.rig.kill_workers()
    queued = c.post("/v1/jobs", json=video(duration=4), headers={"Idempotency-Key": "e2e-2"})
    listed = c.get("/v1/jobs", params={"limit": 5}).json()["items"]
    assert [item["id"] for item in listed] == [queued.json()["id"], job_id]
    assert listed[1] == job
    c.post(f"/v1/jobs/{queued.json()['id']}/cancel")
    (budget,) = c.get("/v1/budgets").json()["budgets"]
    assert budget["committed_usd"] == 0.36 and budget["held_usd"] == 0.0
    # a replay of the submission still answers with the same, now finished, job
    again = c.post("/v1/jobs", json=video(duration=8), headers={"Idempotency-Key": "e2e-1"})
    assert again.status_code == 202 and again.json()["status"] == "succeeded"
    done = c.post(f"/v1/jobs/{job_id}/cancel")
    assert done.status_code == 409 and done.json()["error"]["details"]["status"] == "succeeded"


class _BrokerDown:
    """An EnqueuePort whose broker cannot be reached: every send fails."""

    def start(self, *_: object, **__: object) -> None:
        raise ConnectionError("broker unreachable")

    poll = resume = start


def test_a_submission_whose_start_message_fails_is_202_and_the_sweeper_runs_it(
    api: Api, caplog: pytest.LogCaptureFixture,
) -> None:
    api.budget("tenant:acme", 10_000_000)
    api.rig.control("vid-cheap", duration_ms=200)
    container = Container(api.rig.container.settings, enqueue=_BrokerDown())
    running = start_in_thread(container, config=ApiConfig(key_cache_s=0))
    try:
        with caplog.at_level(logging.WARNING, logger="orchestrator.service.submission"):
            r = httpx.post(f"{running.url}/v1/jobs", json=video(duration=8), timeout=10,
                           headers={"Authorization": f"Bearer {api.keys['acme']}"})
            assert r.status_code == 202, r.text
            job_id = uuid.UUID(r.json()["id"])
            # the answer went first; the failed send is logged right after it
            api.rig.wait_for("the failed send to be logged", lambda: any(
                rec.getMessage().startswith("enqueue failed") for rec in caplog.records))
    finally:
        running.stop()
        container.engine.dispose()
    assert api.rig.job(job_id).status == "queued"
    assert "lighthouse" not in caplog.text

    api.rig.start_worker()
    c = api.rig.container
    # as if START_GRACE had passed: the sweeper reads PostgreSQL's clock
    with c.engine.begin() as conn:
        conn.execute(text("UPDATE jobs SET wake_at = now() - interval '1 second' "
                          "WHERE id = :id"), {"id": job_id})
    assert sweep(c.engine, c.ledger, c.enqueue).revived == 1
    api.rig.wait_for("the swept job to succeed",
                     lambda: api.rig.job(job_id).status == "succeeded", timeout=60)
    assert api.rig.counters("vid-cheap")["submissions"] == 1


def test_the_result_cache_over_http(api: Api) -> None:
    """A repeat with cache on is answered succeeded at $0 naming the job it came from; the
    quote shows worst case and expected cost; the report counts what the cache saved."""
    api.budget("tenant:acme", 10_000_000)
    api.rig.control("vid-cheap", duration_ms=200)
    api.rig.start_worker()
    c = api.tenant()
    body = {**video(duration=8), "cache": True}
    first = c.post("/v1/jobs", json=body).json()["id"]
    deadline = time.monotonic() + 60
    while c.get(f"/v1/jobs/{first}").json()["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, "the first job did not finish"
        time.sleep(0.1)  # polling interval of a condition wait
    r = c.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    hit = r.json()
    assert hit["status"] == "succeeded" and hit["cached_from"] == first
    assert hit["cost_usd"] == 0.0 and hit["estimated_cost_usd"] == 0.0
    assert hit["attempts"] == [] and hit["result"] == c.get(f"/v1/jobs/{first}").json()["result"]
    assert c.get(f"/v1/jobs/{hit['id']}").json()["cached_from"] == first

    quote = c.post("/v1/quotes", json=video(duration=8)).json()
    top = quote["candidates"][0]
    assert top["estimated_cost_usd"] == 0.36 and top["expected_cost_usd"] == 0.36
    assert top["calibration"] is None  # one settled job: below the minimum sample

    report = c.get("/v1/reports/costs").json()
    assert report["total_usd"] == 0.36  # paid once
    assert report["cache"] == {"cacheable_jobs": 2, "served": 1, "hit_rate": 0.5,
                               "saved_micros": 360_000, "saved_usd": 0.36}
    (acc,) = report["accuracy"]  # the hit is not an estimate's outcome
    assert acc["jobs"] == 1 and acc["calibrated"]["err_p95"] == 0.0

    bad = c.post("/v1/jobs", json={**video(duration=8), "cache": "sometimes"})
    assert bad.status_code == 422
    assert bad.json()["error"]["details"]["field"].endswith("cache")


def test_a_cancel_the_provider_missed_is_asked_again_once_it_answers(api: Api) -> None:
    """The provider was down when the job was cancelled over HTTP: the job is cancelled at
    once, and the stop is asked for again once the provider answers, not left undone while
    the work runs on to its full bill (the provider here bills nothing for a stopped run)."""
    rig = api.rig
    api.budget("tenant:acme", 10_000_000)
    rig.control("vid-cheap", duration_ms=60_000)
    rig.start_worker()
    c = api.tenant()
    job = c.post("/v1/jobs", json=video(duration=4)).json()

    def attempt() -> tuple[str | None, str | None, int | None]:
        with rig.engine.connect() as conn:
            row = conn.execute(text("SELECT external_id, outcome, cost_micros FROM attempts "
                                    "WHERE job_id = :j"), {"j": job["id"]}).one_or_none()
        return (None, None, None) if row is None else (row[0], row[1], row[2])

    rig.wait_for("the prediction to be created", lambda: attempt()[0] is not None)
    rig.control("vid-cheap", mode="down")
    cancelled = c.post(f"/v1/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert rig.counters("vid-cheap")["cancels"] >= 1  # asked, and refused (503)
    rig.control("vid-cheap", mode="up")

    # within the 30 s after which an attempt asked to stop is closed uncertain
    rig.wait_for("the attempt to conclude", lambda: attempt()[1] is not None, timeout=25)
    assert attempt()[1:] == ("cancelled", 0)
    assert [b["cost_micros"] for b in rig.provider("vid-cheap")["bills"]] == [0]
    got = c.get(f"/v1/jobs/{job['id']}").json()
    assert got["status"] == "cancelled" and got["cost_usd"] == 0
    assert rig.ledger() == (0, 0)
