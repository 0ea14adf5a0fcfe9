"""The SDK and the CLI while the API is down or restarting: the real API over real HTTP,
stopped (its port refuses connections) under a waiting client and started again on the same
port, as a restart or a deploy does. The job runs on meanwhile, so a wait rides the outage
out within its timeout, and nothing makes a second job."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from orchestrator.api import ApiConfig, start_in_thread
from orchestrator.client import AsyncClient, Client, Job, RetryPolicy

from ..conditions import wait_for
from .api_fixture import Api, api_fixture, video  # noqa: F401

# a poll's retries spent within a fraction of a second, so a short outage outlasts them
QUICK = RetryPolicy(retries=1, base=0.05, cap=0.1)


def _jobs(api: Api, tenant: str = "acme") -> int:
    with api.rig.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM jobs WHERE tenant = :t"),
                                {"t": tenant}).scalar_one())


class Seen:
    """What a client's transport met: polls of the job (``GET /v1/jobs/{id}``) answered, and
    those that got no answer."""

    def __init__(self, job_id: str) -> None:
        self.poll_path = f"/v1/jobs/{job_id}"
        self.polls = 0
        self.failed_polls = 0
        self.lock = threading.Lock()

    def answered(self, request: httpx.Request, response: httpx.Response) -> None:
        if request.url.path == self.poll_path:
            with self.lock:
                self.polls += 1

    def refused(self, request: httpx.Request) -> None:
        if request.url.path == self.poll_path:
            with self.lock:
                self.failed_polls += 1


class Recording(httpx.HTTPTransport):
    def __init__(self, seen: Seen) -> None:
        super().__init__()
        self.seen = seen

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = super().handle_request(request)
        except httpx.TransportError:
            self.seen.refused(request)
            raise
        self.seen.answered(request, response)
        return response


class AsyncRecording(httpx.AsyncHTTPTransport):
    def __init__(self, seen: Seen) -> None:
        super().__init__()
        self.seen = seen

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = await super().handle_async_request(request)
        except httpx.TransportError:
            self.seen.refused(request)
            raise
        self.seen.answered(request, response)
        return response


@pytest.fixture()
def queued(api: Api) -> Iterator[Job]:
    """A job that stays queued (no worker here) until the test cancels it."""
    with Client(api.url, api.keys["acme"]) as c:
        yield c.submit(**video())


def _ride_out(api: Api, job: Job, seen: Seen, outcome: dict[str, Any],
              waiting: threading.Thread, stream: bool) -> None:
    """Down under the wait: from its start with ``stream`` (its stream refused, it polls),
    else once a poll has answered; up again once it polled on after a failed poll (each poll
    is two tries); then the job ends, and the wait returns it."""
    port = httpx.URL(api.url).port
    if stream:
        api.running.stop()
        waiting.start()
    else:
        waiting.start()
        wait_for("a poll to answer", lambda: seen.polls >= 1 or bool(outcome))
        api.running.stop()
    try:
        wait_for("a wait that found the API down to poll on",
                 lambda: seen.failed_polls >= 4 or bool(outcome), timeout=30)
        assert outcome == {}, f"the wait ended while the API was down: {outcome!r}"
    finally:
        api.running = start_in_thread(api.rig.container, config=ApiConfig(key_cache_s=0),
                                      port=port or 0)
    with Client(api.url, api.keys["acme"]) as c:
        assert c.cancel(job.id).status == "cancelled"
    waiting.join(30)
    assert not waiting.is_alive()
    assert "error" not in outcome, outcome
    assert outcome["job"].id == job.id and outcome["job"].status == "cancelled"
    assert _jobs(api) == 1


@pytest.mark.parametrize("stream", [True, False])
def test_wait_rides_out_an_api_restart(api: Api, queued: Job, stream: bool) -> None:
    seen = Seen(queued.id)
    outcome: dict[str, Any] = {}
    sdk = Client(api.url, api.keys["acme"], transport=Recording(seen), retry_policy=QUICK)

    def wait() -> None:
        try:
            outcome["job"] = sdk.wait(queued.id, timeout=60, poll_interval=0.2,
                                      max_poll_interval=0.5, stream=stream)
        except Exception as exc:  # the test reads it
            outcome["error"] = exc

    try:
        _ride_out(api, queued, seen, outcome, threading.Thread(target=wait, daemon=True),
                  stream)
    finally:
        sdk.close()


@pytest.mark.parametrize("stream", [True, False])
def test_async_wait_rides_out_an_api_restart(api: Api, queued: Job, stream: bool) -> None:
    seen = Seen(queued.id)
    outcome: dict[str, Any] = {}

    async def go() -> None:
        async with AsyncClient(api.url, api.keys["acme"], transport=AsyncRecording(seen),
                               retry_policy=QUICK) as sdk:
            outcome["job"] = await sdk.wait(queued.id, timeout=60, poll_interval=0.2,
                                            max_poll_interval=0.5, stream=stream)

    def wait() -> None:
        try:
            asyncio.run(go())
        except Exception as exc:  # the test reads it
            outcome["error"] = exc

    _ride_out(api, queued, seen, outcome, threading.Thread(target=wait, daemon=True), stream)
