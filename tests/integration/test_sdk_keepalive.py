"""The SDK's event iteration across keep-alive comments: a stream that has sent an event and
then only pings (a job that runs longer than ``ORCH_EVENTS_PING_S``) goes on being read until
its next event or the timeout, in the sync and the async client, and so in ``jobs watch`` and
``wait()``. Real API (a second one, over the same database, pinging every 0.2 s), real HTTP."""

from __future__ import annotations

import asyncio
import time

import httpx
import httpx_sse
import pytest

from orchestrator.api import RunningApi
from orchestrator.client import AsyncClient, Client, JobEvent

from .api_fixture import Api, api_fixture, pinging_fixture, video  # noqa: F401


def _queued_job(api: Api) -> str:
    """A job that stays queued (no worker runs here): its stream sends job.queued, then pings."""
    r = api.tenant().post("/v1/jobs", json=video())
    assert r.status_code == 202, r.text
    job_id: str = r.json()["id"]
    return job_id


def test_sync_events_read_on_across_keep_alive_pings(api: Api, pinging: RunningApi) -> None:
    job_id = _queued_job(api)
    got: list[JobEvent] = []
    with (Client(base_url=pinging.url, api_key=api.keys["acme"]) as sdk,
          pytest.raises(httpx.ReadTimeout)):  # the timeout ends it, not a ping
        for event in sdk.events(job_id, timeout=1.5):
            got.append(event)
    assert [e.type for e in got] == ["job.queued"]


def test_async_events_read_on_across_keep_alive_pings(api: Api, pinging: RunningApi) -> None:
    job_id = _queued_job(api)

    async def go() -> list[JobEvent]:
        got: list[JobEvent] = []
        async with AsyncClient(base_url=pinging.url, api_key=api.keys["acme"]) as sdk:
            with pytest.raises(httpx.ReadTimeout):
                async for event in sdk.events(job_id, timeout=1.5):
                    got.append(event)
        return got

    assert [e.type for e in asyncio.run(go())] == ["job.queued"]


def test_a_keep_alive_is_a_comment_line_no_sse_client_reads_as_a_message(
        api: Api, pinging: RunningApi) -> None:
    """Any client, not only ours: the pings are comment lines with no blank line after them
    (a blank line ends a message), so httpx-sse, which hands over a message without data at
    every blank line once an ``id:`` came, yields the job's event and nothing else."""
    job_id = _queued_job(api)
    raw = b""
    with httpx.Client(base_url=pinging.url, timeout=5.0,
                      headers={"Authorization": f"Bearer {api.keys['acme']}"}) as http, \
            http.stream("GET", f"/v1/jobs/{job_id}/events") as r:
        until = time.monotonic() + 1.5  # pings every 0.2 s: a chunk comes at least that often
        for chunk in r.iter_raw():
            raw += chunk
            if time.monotonic() > until:
                break
    pings = raw.split(b"\r\n\r\n", 1)[1]  # after the job's one event
    assert pings.count(b": ping - ") >= 3
    assert b"\r\n\r\n" not in pings
    stream = httpx.Response(200, content=raw, headers={"content-type": "text/event-stream"})
    got = list(httpx_sse.EventSource(stream).iter_sse())
    assert [(m.event, bool(m.data)) for m in got] == [("job.queued", True)]
