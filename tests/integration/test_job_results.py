"""Results and the command line's view of events: ``orchestrator jobs watch`` prints each
event as it comes, ``submit --wait`` ends with the job, ``jobs result`` shows the output and
cost; the retention sweeper drops results (and events) and keeps the ledger."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime, timedelta

import typer
from sqlalchemy import text

from orchestrator.client import Client
from orchestrator.events.retention import expire

from .api_fixture import Api, api_fixture, video  # noqa: F401
from .test_cli_client import VIDEO, run


def test_watch_prints_each_event_and_result_shows_output_and_cost(
        cli: typer.Typer, api: Api) -> None:
    api.rig.start_worker()
    submitted = run(cli, api, *VIDEO, "--json")
    assert submitted.exit_code == 0, submitted.output
    job_id = json.loads(submitted.output)["id"]
    watched = run(cli, api, "jobs", "watch", job_id)
    assert watched.exit_code == 0, watched.output
    lines = watched.output.strip().splitlines()
    assert [ln.split()[2] for ln in lines] == ["job.queued", "job.started", "job.succeeded"]
    assert "lighthouse" not in watched.output
    # resumed after the first event: the rest only, as JSON lines
    rest = run(cli, api, "jobs", "watch", job_id, "--after", "1", "--json")
    assert [json.loads(x)["seq"] for x in rest.output.strip().splitlines()] == [2, 3]
    shown = run(cli, api, "jobs", "result", job_id, "--json")
    assert shown.exit_code == 0, shown.output
    res = json.loads(shown.output)
    assert res["output"] and res["cost"]["attempts"][0]["backend"] == res["backend"]
    waited = run(cli, api, *VIDEO, "--wait", "--json")
    assert waited.exit_code == 0 and json.loads(waited.output)["status"] == "succeeded"


def test_results_expire_after_the_retention_and_the_ledger_stays(api: Api) -> None:
    sut = api.rig
    api.budget("tenant:acme", 100_000_000)  # the ledger has entries to keep
    sut.start_worker()
    t = api.tenant()
    job_id = t.post("/v1/jobs", json=video()).json()["id"]
    assert t.get(f"/v1/jobs/{job_id}/result").json()["error"]["code"] == "not_ready_yet"
    sut.wait_final([uuid.UUID(job_id)])
    before = t.get(f"/v1/jobs/{job_id}/result")
    assert before.status_code == 200 and before.json()["output"]
    with sut.engine.connect() as conn:
        ledger = conn.execute(text("SELECT count(*) FROM ledger_entries WHERE job_id = :j"),
                              {"j": job_id}).scalar_one()
    # a pass now keeps it (it is younger than a day); a pass two days on drops it
    assert expire(sut.engine, 1, datetime.now(UTC)).results == 0
    done = expire(sut.engine, 1, datetime.now(UTC) + timedelta(days=2))
    assert done.results == 1 and done.events == 3
    gone = t.get(f"/v1/jobs/{job_id}/result")
    assert gone.status_code == 410 and gone.json()["error"]["code"] == "result_expired"
    job = t.get(f"/v1/jobs/{job_id}").json()
    assert job["result"] is None and job["cost_usd"] > 0
    with sut.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM ledger_entries WHERE job_id = :j"),
                            {"j": job_id}).scalar_one() == ledger > 0
        assert conn.execute(text("SELECT count(*) FROM job_events WHERE job_id = :j"),
                            {"j": job_id}).scalar_one() == 0
    assert expire(sut.engine, 0, datetime.now(UTC) + timedelta(days=999)).results == 0


def test_a_job_that_outlives_the_retention_keeps_counting_its_events(api: Api) -> None:
    """Retention deletes a running job's early events; the events that come after them go
    on from their seq, so a stream following the job (its cursor a seq) still gets them and
    a resumption after them is not told that nothing more comes."""
    sut = api.rig
    sut.start_worker()
    sut.control("vid-cheap", duration_ms=60_000)
    t = api.tenant()
    job_id = t.post("/v1/jobs", json=video()).json()["id"]
    sut.wait_for("running", lambda: t.get(f"/v1/jobs/{job_id}").json()["status"] == "running")
    seen: list[tuple[int, str]] = []
    ended = threading.Event()

    def follow() -> None:
        with Client(api.url, api.keys["acme"]) as sdk:
            seen.extend((e.seq, e.type) for e in sdk.events(job_id, timeout=30))
        ended.set()

    threading.Thread(target=follow, daemon=True).start()
    sut.wait_for("the stream's first events", lambda: len(seen) == 2)
    # a pass two days on, with a retention of one day: the job has run "longer" than it
    assert expire(sut.engine, 1, datetime.now(UTC) + timedelta(days=2)).events >= 1
    assert t.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    assert ended.wait(30)
    # the cancellation came as seq 1 before (max of the seqs left + 1): behind the stream's
    # cursor, never shown; and a resumption after seq 2 was a 204
    assert seen == [(1, "job.queued"), (2, "job.started"), (3, "job.cancelled")]
    assert t.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "2"}).status_code == 200
