"""Job events wake only who streams them: each event is sent on its job's channel and its
tenant's (migration 0015), and an API process listens on the channels of the jobs and
tenants it streams, so it never parses the notifications of the others."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import httpx
import psycopg

from orchestrator.events.hub import EventHub, job_channel, tenant_channel

from .api_fixture import TENANTS, Api, api_fixture, video  # noqa: F401


def _notifications(conn: psycopg.Connection[Any], count: int,
                   timeout: float = 10.0) -> list[tuple[str, dict[str, Any]]]:
    got = [(n.channel, json.loads(n.payload))
           for n in conn.notifies(timeout=timeout, stop_after=count)]
    assert len(got) >= count, got
    return got


def test_each_event_is_sent_on_its_job_and_its_tenant_channel(api: Api) -> None:
    tenant = TENANTS[0]
    dsn = api.rig.engine.url.set(drivername="postgresql").render_as_string(
        hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        other_job = job_channel(uuid.uuid4())
        conn.execute(f'LISTEN "{tenant_channel(tenant)}"; LISTEN "{other_job}"; '
                     f'LISTEN "{tenant_channel(TENANTS[1])}"')
        job = api.tenant(tenant).post("/v1/jobs", json=video()).json()
        [(channel, payload)] = _notifications(conn, 1)
        assert channel == tenant_channel(tenant)
        assert payload["j"] == job["id"] and payload["t"] == tenant and payload["s"] == 1
        conn.execute(f'LISTEN "{job_channel(uuid.UUID(job["id"]))}"')
        assert api.tenant(tenant).post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
        got = _notifications(conn, 2)
        assert sorted(c for c, _ in got) == sorted(
            [job_channel(uuid.UUID(job["id"])), tenant_channel(tenant)])
        assert {p["s"] for _, p in got} == {2}  # job.cancelled, sent once on each
        # the next notification is the next job's: nothing else was sent on these channels
        # (notifications reach a connection in commit order)
        later = api.tenant(tenant).post("/v1/jobs", json=video()).json()
        [(channel, payload)] = _notifications(conn, 1)
        assert (channel, payload["j"]) == (tenant_channel(tenant), later["id"])


class RecordingHub(EventHub):
    """An EventHub that records every notification it is handed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.heard: list[str] = []

    def _dispatch(self, payload: dict[str, Any]) -> None:
        self.heard.append(str(payload.get("j")))
        super()._dispatch(payload)


def test_a_hub_hears_the_jobs_it_streams_and_no_others(api: Api) -> None:
    client = api.tenant()
    first, last = (client.post("/v1/jobs", json=video()).json()["id"] for _ in range(2))

    async def until(condition: Any, what: str) -> None:
        deadline = time.monotonic() + 10
        while not condition():
            assert time.monotonic() < deadline, what
            await asyncio.sleep(0.01)

    async def watch_and_cancel(hub: RecordingHub, http: httpx.AsyncClient, job: str,
                               before: Any) -> None:
        """Stream ``job``; once the hub listens on its channel, run ``before`` and cancel the
        job, then wait for the stream's wake-up: a notification of ``before``'s jobs, had it
        been sent here, would have come first (a connection gets them in commit order)."""
        with hub.watch_job(uuid.UUID(job)) as wake:
            await until(lambda: job_channel(uuid.UUID(job)) in hub._heard,
                        "the hub never listened")
            wake.clear()
            await before()
            assert (await http.post(f"/v1/jobs/{job}/cancel")).status_code == 200
            await asyncio.wait_for(wake.wait(), 10)

    async def main() -> list[str]:
        hub = RecordingHub(api.rig.engine)
        others: list[str] = []
        try:
            async with httpx.AsyncClient(base_url=api.url, headers=client.headers,
                                         timeout=10) as http:

                async def submit_others() -> None:
                    for _ in range(5):
                        r = await http.post("/v1/jobs", json=video())
                        assert r.status_code == 202
                        others.append(r.json()["id"])

                async def cancel_another() -> None:
                    # its stream is gone: the hub let its channel go
                    await until(lambda: job_channel(uuid.UUID(first)) not in hub._heard,
                                "the hub kept listening")
                    r = await http.post(f"/v1/jobs/{others[0]}/cancel")
                    assert r.status_code == 200

                await watch_and_cancel(hub, http, first, submit_others)
                await watch_and_cancel(hub, http, last, cancel_another)
            return hub.heard
        finally:
            await hub.close()

    assert asyncio.run(main()) == [first, last]
