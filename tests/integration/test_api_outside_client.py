"""The API as a client written outside this project meets it: plain httpx and raw sockets,
read against docs/api.md and the WHATWG Server-Sent Events rules only (never our SDK). Real
API, PostgreSQL and Redis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from orchestrator.events.retention import expire

from .api_fixture import Api, api_fixture, video  # noqa: F401


def test_a_finished_jobs_stream_with_no_event_left_is_204_not_an_empty_stream(api: Api) -> None:
    """An EventSource reconnects after every 200 stream that ends, and without a
    Last-Event-ID when the stream gave it no id: a 200 with nothing in it, for a job that is
    over and whose events retention deleted, would have it reconnect every few seconds for
    ever. Only a 204 stops it (as after the terminal event)."""
    c = api.tenant()
    job_id = c.post("/v1/jobs", json=video()).json()["id"]  # no worker: it waits
    assert c.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    gone = expire(api.rig.engine, 30, datetime.now(UTC) + timedelta(days=31))
    assert gone.events >= 2
    with api.rig.engine.connect() as conn:
        left = conn.execute(text("SELECT count(*) FROM job_events WHERE job_id = :j"),
                            {"j": job_id}).scalar_one()
    assert left == 0
    first = c.get(f"/v1/jobs/{job_id}/events", headers={"Accept": "text/event-stream"})
    assert first.status_code == 204 and first.content == b"", first.text
    # as after the terminal event, a seq resumed after is 204 too
    assert c.get(f"/v1/jobs/{job_id}/events", params={"after": 1}).status_code == 204
    # the job itself says how it ended
    assert c.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
