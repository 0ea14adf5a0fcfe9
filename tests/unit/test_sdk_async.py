"""The AsyncClient against scripted HTTP answers: same behaviour as the sync client."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Coroutine
from typing import Any, TypeVar

import httpx
import pytest

from orchestrator.client import (
    ApiConnectionError,
    AsyncClient,
    BudgetExceeded,
    InvalidRequest,
    NotFound,
    RateLimited,
    RetryPolicy,
    Unavailable,
    WaitTimeout,
)

from .sdk_fakes import BASE, FakeClock, Script, envelope, hangs, job_json

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def make(script: Script, clock: FakeClock, **kw: Any) -> AsyncClient:
    return AsyncClient(BASE, "orch_secret_key", transport=script.transport(),
                       sleep=clock.asleep, clock=clock, **kw)


def test_async_submit_retries_429_and_503_with_one_idempotency_key() -> None:
    clock = FakeClock()
    script = Script([envelope(429, "rate_limited", "slow", {"Retry-After": "3"}),
                     envelope(503, "unavailable", "busy"),
                     httpx.Response(202, json=job_json("j-9"))])

    async def go() -> str:
        async with make(script, clock, retry_policy=RetryPolicy(rng=lambda: 1.0)) as c:
            job = await c.submit(kind="video", input={"prompt": "x", "duration_s": 8},
                                 tier="premium", deadline_s=60)
            return job.id

    assert run(go()) == "j-9"
    assert clock.sleeps == [3.0, 1.0]
    keys = {r.headers["Idempotency-Key"] for r in script.requests}
    assert len(script.requests) == 3 and len(keys) == 1
    assert script.body(2) == {"kind": "video", "input": {"prompt": "x", "duration_s": 8},
                              "tier": "premium", "deadline_s": 60}


def test_async_errors_are_typed() -> None:
    clock = FakeClock()
    script = Script([envelope(402, "budget_exceeded", "no money", scope="tenant:a"),
                     envelope(404, "not_found", "no such job"),
                     envelope(429, "rate_limited", "slow", {"Retry-After": "1"})])

    async def go() -> None:
        async with make(script, clock, retries=0) as c:
            with pytest.raises(BudgetExceeded) as b:
                await c.submit(kind="text", input={"prompt": "x"})
            assert b.value.scope == "tenant:a" and b.value.status == 402
            with pytest.raises(NotFound):
                await c.get("nope")
            with pytest.raises(RateLimited) as r:
                await c.cancel("j-1")
            assert r.value.retry_after == 1.0

    run(go())
    assert clock.sleeps == []


def test_async_connection_error_after_retries() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    clock = FakeClock()
    script = Script([refuse])

    async def go() -> None:
        async with make(script, clock, retries=2) as c:
            await c.backends()

    with pytest.raises(ApiConnectionError):
        run(go())
    assert len(script.requests) == 3 and len(clock.sleeps) == 2


def test_async_wait_backs_off_and_times_out() -> None:
    clock = FakeClock()
    done = Script([httpx.Response(200, json=job_json(status=s))
                   for s in ("queued", "running", "failed")])
    stuck = Script([httpx.Response(200, json=job_json(status="queued"))])

    async def go() -> str:
        async with make(done, clock) as c:
            job = await c.wait("j-1", poll_interval=2.0, stream=False)
        async with make(stuck, clock) as c2:
            with pytest.raises(WaitTimeout) as info:
                await c2.wait("j-1", timeout=5, poll_interval=2.0, stream=False)
            assert info.value.job is not None and info.value.job.status == "queued"
        return job.status

    assert run(go()) == "failed"
    assert clock.sleeps == [2.0, 3.0, 2.0, 3.0]


def test_async_wait_refuses_a_nan_timeout_before_any_request() -> None:
    script = Script([httpx.Response(200, json=job_json(status="running"))])

    async def go() -> None:
        async with make(script, FakeClock()) as c:
            with pytest.raises(ValueError, match="timeout must be a finite number"):
                await c.wait("j-1", timeout=math.nan)

    run(go())
    assert script.requests == []


def test_async_iterates_over_all_pages() -> None:
    clock = FakeClock()
    pages = {None: {"items": [job_json("a")], "next_cursor": "c1"},
             "c1": {"items": [job_json("b")], "next_cursor": "c2"},
             "c2": {"items": [], "next_cursor": None}}
    script = Script([lambda r: httpx.Response(200, json=pages[r.url.params.get("cursor")])])

    async def go() -> list[str]:
        async with make(script, clock) as c:
            return [j.id async for j in c.iter_jobs(status="succeeded")]

    assert run(go()) == ["a", "b"]
    assert all(r.url.params["status"] == "succeeded" for r in script.requests)


def test_async_quote_takes_the_same_body_as_submit() -> None:
    clock = FakeClock()
    script = Script([httpx.Response(200, json={"candidates": [], "excluded": []})])

    async def go() -> None:
        async with make(script, clock) as c:
            await c.quote(kind="text", input={"prompt": "x"},
                          webhook_events=["job.succeeded"])

    run(go())
    assert script.body(0)["webhook_events"] == ["job.succeeded"]


def test_async_undecodable_answers_and_bad_keys_are_api_errors() -> None:
    def broken_gzip(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=b"not gzip")

    clock = FakeClock()
    script = Script([broken_gzip])

    async def go() -> None:
        async with make(script, clock, retries=1) as c:
            with pytest.raises(ApiConnectionError):
                await c.get("j-1")
            with pytest.raises(InvalidRequest):
                await c.submit(kind="text", input={"prompt": "x"}, idempotency_key="clé")

    run(go())
    assert len(script.requests) == 2  # the get and its retry; the submit never went out


def test_async_failed_submission_carries_its_idempotency_key() -> None:
    clock = FakeClock()
    script = Script([envelope(503, "unavailable", "busy")])

    async def go() -> None:
        async with make(script, clock, retries=1) as c:
            with pytest.raises(Unavailable) as info:
                await c.submit(kind="text", input={"prompt": "x"})
            assert info.value.idempotency_key == script.requests[0].headers["Idempotency-Key"]

    run(go())
    assert len(script.requests) == 2


def test_async_wait_is_bounded_by_its_timeout_when_the_api_hangs() -> None:
    clock = FakeClock()
    script = Script([httpx.Response(200, json=job_json(status="running")), hangs(clock)])

    async def go() -> WaitTimeout:
        async with make(script, clock) as c:
            with pytest.raises(WaitTimeout) as info:
                await c.wait("j-1", timeout=5, poll_interval=2.0, stream=False)
            return info.value

    err = run(go())
    assert err.job is not None and err.job.status == "running"
    assert isinstance(err.__cause__, ApiConnectionError)
    assert [r.extensions["timeout"]["read"] for r in script.requests] == [5.0, 3.0]
    assert clock.now == 1005.0
