"""The SDK (sync and async) against the real API over HTTP on the real stack (PostgreSQL,
Redis, the simulator; a Celery worker where a job must actually run)."""

from __future__ import annotations

import asyncio
import math
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from orchestrator.client import (
    ApiConnectionError,
    AsyncClient,
    BudgetExceeded,
    Client,
    Forbidden,
    InvalidRequest,
    NoEligibleBackend,
    NotFound,
    Unauthorized,
)

from .api_fixture import Api, api_fixture  # noqa: F401

VIDEO: dict[str, Any] = {"kind": "video", "tier": "draft",
                         "input": {"prompt": "a lighthouse at dusk", "duration_s": 4,
                                   "resolution": "720p"}}


def _job_count(a: Api, tenant: str = "acme") -> int:
    with a.rig.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM jobs WHERE tenant = :t"),
                                {"t": tenant}).scalar_one())


class LoseFirstJobResponse(httpx.BaseTransport):
    """Forwards every request to the real server, but drops the answer to the first
    ``POST /v1/jobs`` after the server processed it (a connection reset on the way back)."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.keys: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.method == "POST" and request.url.path == "/v1/jobs":
            self.keys.append(request.headers["Idempotency-Key"])
            if len(self.keys) == 1:
                response.read()
                response.close()
                raise httpx.ReadError("connection reset by peer", request=request)
        return response

    def close(self) -> None:
        self.inner.close()


class AsyncLoseFirstJobResponse(httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.keys: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method == "POST" and request.url.path == "/v1/jobs":
            self.keys.append(request.headers["Idempotency-Key"])
            if len(self.keys) == 1:
                await response.aread()
                await response.aclose()
                raise httpx.ReadError("connection reset by peer", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def _no_sleep(_: float) -> None:
    return None


async def _no_asleep(_: float) -> None:
    return None


def test_sync_submit_get_list_cancel_quote_backends_budgets(api: Api) -> None:
    api.budget("tenant:acme", 50_000_000)
    with Client(api.url, api.keys["acme"]) as c:
        job = c.submit(**VIDEO, metadata={"project": "p1"})
        assert job.status == "queued" and job.kind == "video" and job.tier == "draft"
        assert job.estimated_cost_usd is not None and job.estimated_cost_usd > 0
        assert job.route is not None and job.route.candidates[0].backend == "vid-cheap"
        assert c.get(job.id).id == job.id

        second = c.submit(**VIDEO)
        page = c.list(limit=1)
        assert [j.id for j in page.items] == [second.id] and page.next_cursor
        assert [j.id for j in c.iter_jobs(page_size=1)] == [second.id, job.id]

        cancelled = c.cancel(job.id)
        assert cancelled.status == "cancelled" and cancelled.is_final
        assert [j.id for j in c.list(status="cancelled").items] == [job.id]
        assert c.wait(job.id, timeout=5).status == "cancelled"

        quote = c.quote(kind="video", input=VIDEO["input"], tier="standard")
        assert [x.backend for x in quote.candidates] == ["vid-mid"]
        assert {x.backend for x in quote.excluded} >= {"vid-cheap", "txt-one"}

        names = {b.name: b for b in c.backends()}
        assert set(names) == {"vid-cheap", "vid-mid", "txt-one"}
        assert names["vid-cheap"].breaker.state == "closed" and names["vid-cheap"].kinds == [
            "video"]

        [budget] = c.budgets()
        assert budget.scope == "tenant:acme" and budget.limit_usd == 50.0
        # one job still queued holds its worst case; the cancelled one released its hold
        assert budget.held_usd == pytest.approx(second.estimated_cost_usd)
    assert _job_count(api) == 2


def test_async_submit_get_list_cancel_quote_backends_budgets(api: Api) -> None:
    api.budget("tenant:acme", 50_000_000)

    async def go() -> None:
        async with AsyncClient(api.url, api.keys["acme"]) as c:
            jobs = await asyncio.gather(*(c.submit(**VIDEO) for _ in range(3)))
            assert len({j.id for j in jobs}) == 3
            got = await c.get(jobs[0].id)
            assert got.id == jobs[0].id and got.status == "queued"
            listed = [j.id async for j in c.iter_jobs(page_size=2)]
            assert sorted(listed) == sorted(j.id for j in jobs)
            assert (await c.cancel(jobs[1].id)).status == "cancelled"
            assert (await c.wait(jobs[1].id, timeout=5)).status == "cancelled"
            assert [j.id for j in (await c.list(status="cancelled")).items] == [jobs[1].id]
            quote = await c.quote(**VIDEO)
            assert [x.backend for x in quote.candidates] == ["vid-cheap", "vid-mid"]
            assert len(await c.backends()) == 3
            [budget] = await c.budgets()
            assert budget.held_usd == pytest.approx(
                sum(j.estimated_cost_usd or 0 for j in (jobs[0], jobs[2])))

    asyncio.run(go())
    assert _job_count(api) == 3


def test_refusals_are_typed(api: Api) -> None:
    api.budget("tenant:acme", 100_000)  # $0.10: less than any video's worst case
    with Client(api.url, api.keys["acme"]) as c:
        with pytest.raises(BudgetExceeded) as info:
            c.submit(**VIDEO)
        e = info.value
        assert e.status == 402 and e.code == "budget_exceeded" and e.scope == "tenant:acme"
        assert e.remaining_usd == 0.1 and e.requested_usd is not None and e.requested_usd > 0.1
        assert "tenant:acme" in e.message
        with pytest.raises(InvalidRequest, match="duration_s"):
            c.submit(kind="video", input={"prompt": "x"})
        with pytest.raises(NoEligibleBackend):
            c.submit(kind="image", input={"prompt": "x"})
        assert c.quote(kind="image", input={"prompt": "x"}).candidates == []
        with pytest.raises(NotFound):
            c.get(str(uuid.uuid4()))
        with pytest.raises(Forbidden):
            c.create_key("acme")
    with Client(api.url, "orch_00000000_" + "x" * 40) as bad, pytest.raises(Unauthorized):
        bad.backends()
    assert _job_count(api) == 0


def test_a_nan_or_an_infinity_is_refused_naming_its_field_before_anything_is_sent(
        api: Api) -> None:
    # httpx refused such a body with a bare ValueError ("Out of range float values are not
    # JSON compliant"), naming no field; the API answers a 422 naming it for what it can read
    nan, inf = math.nan, math.inf
    refused = {"max_cost_usd": lambda c: c.submit(**VIDEO, max_cost_usd=nan),
               "input.duration_s": lambda c: c.submit(
                   kind="video", input={"prompt": "x", "duration_s": inf}),
               "metadata.score[1]": lambda c: c.quote(**VIDEO, metadata={"score": [1, -inf]})}
    with Client(api.url, api.keys["acme"]) as c, Client(api.url, api.admin_key) as admin:
        for field, call in refused.items():
            with pytest.raises(InvalidRequest) as info:
                call(c)
            assert info.value.details == {"field": field}, field
            assert info.value.message.startswith(f"{field}: "), info.value.message
        with pytest.raises(InvalidRequest) as info:
            admin.set_budget("tenant:acme", "month", 5.0, alert_thresholds=[0.5, nan])
        assert info.value.details == {"field": "alert_thresholds[1]"}
        assert c.budgets() == []

    async def go() -> None:
        async with AsyncClient(api.url, api.keys["acme"]) as ac:
            with pytest.raises(InvalidRequest) as info:
                await ac.submit(**VIDEO, max_cost_usd=inf)
            assert info.value.details == {"field": "max_cost_usd"}

    asyncio.run(go())
    assert _job_count(api) == 0


def test_admin_helpers_create_keys_and_budgets(api: Api) -> None:
    with Client(api.url, api.admin_key) as admin:
        created = admin.create_key("initech")
        assert created.tenant == "initech" and not created.admin
        budget = admin.set_budget("tenant:initech", "day", 3.0, alert_thresholds=[0.5, 1.0],
                                  forecast_thresholds=[1.0])
        assert budget.limit_usd == 3.0 and budget.alert_thresholds == [0.5, 1.0]
        assert budget.forecast_thresholds == [1.0]
        kept = admin.set_budget("tenant:initech", "day", 3.0)  # None keeps both lists
        assert (kept.alert_thresholds, kept.forecast_thresholds) == ([0.5, 1.0], [1.0])
    with Client(api.url, created.key) as c:
        [b] = c.budgets()
        assert (b.scope, b.period, b.limit_usd, b.remaining_usd) == ("tenant:initech", "day",
                                                                     3.0, 3.0)


def test_a_lost_response_is_retried_with_the_same_key_and_makes_one_job(
    api: Api,
) -> None:
    transport = LoseFirstJobResponse()
    with Client(api.url, api.keys["acme"], transport=transport, sleep=_no_sleep) as c:
        job = c.submit(**VIDEO)
        assert c.get(job.id).status == "queued"
    assert len(transport.keys) == 2 and transport.keys[0] == transport.keys[1]
    assert _job_count(api) == 1

    atransport = AsyncLoseFirstJobResponse()

    async def go() -> str:
        async with AsyncClient(api.url, api.keys["globex"], transport=atransport,
                               sleep=_no_asleep) as ac:
            return (await ac.submit(**VIDEO)).id

    assert asyncio.run(go()) != job.id
    assert len(atransport.keys) == 2 and atransport.keys[0] == atransport.keys[1]
    assert _job_count(api, "globex") == 1


def test_without_retries_a_lost_response_surfaces_and_the_key_replays_the_job(
    api: Api,
) -> None:
    transport = LoseFirstJobResponse()
    with Client(api.url, api.keys["acme"], transport=transport, retries=0) as c:
        with pytest.raises(ApiConnectionError):
            c.submit(**VIDEO, idempotency_key="order-7")
        replay = c.submit(**VIDEO, idempotency_key="order-7")
    assert _job_count(api) == 1
    assert [j.id for j in Client(api.url, api.keys["acme"]).list().items] == [replay.id]


def test_wait_returns_a_job_a_worker_ran(api: Api) -> None:
    api.rig.start_worker(concurrency=2)
    with Client(api.url, api.keys["acme"]) as c:
        job = c.submit(kind="text", input={"prompt": "hello", "max_tokens": 16})
        done = c.wait(job.id, timeout=60, poll_interval=0.1, max_poll_interval=0.5)
    assert done.status == "succeeded", done.error
    assert done.backend == "txt-one" and done.cost_usd is not None and done.cost_usd > 0
    assert [a.outcome for a in done.attempts] == ["succeeded"]
