"""SDK (sync Client) against scripted HTTP answers: request shape, error mapping, retries,
idempotency keys and wait() backoff. Nothing really sleeps: sleep and clock are injected."""

from __future__ import annotations

import logging
import math
import subprocess
import sys
from datetime import datetime
from typing import Any

import httpx
import pytest

from orchestrator.client import (
    ApiConnectionError,
    ApiError,
    AsyncClient,
    BudgetExceeded,
    Client,
    Conflict,
    Forbidden,
    InvalidRequest,
    NoEligibleBackend,
    NotFound,
    NotReadyYet,
    RateLimited,
    ResultExpired,
    RetryPolicy,
    ServerError,
    Unauthorized,
    Unavailable,
    WaitTimeout,
)

from .sdk_fakes import BASE, FakeClock, Script, envelope, hangs, job_json


def make(script: Script, clock: FakeClock | None = None, **kw: Any) -> Client:
    clock = clock or FakeClock()
    return Client(BASE, "orch_secret_key", transport=script.transport(), sleep=clock.sleep,
                  clock=clock, **kw)


def test_submit_sends_the_job_body_auth_and_a_fresh_idempotency_key() -> None:
    script = Script([httpx.Response(202, json=job_json())])
    c = make(script)
    job = c.submit(kind="video", input={"prompt": "a cat", "duration_s": 8}, tier="standard",
                   max_cost_usd=2.5, metadata={"project": "p1"})
    c.submit(kind="text", input={"prompt": "hi"})
    assert job.id == "j-1" and job.status == "queued" and not job.is_final
    first, _ = script.requests
    assert first.method == "POST" and first.url.path == "/v1/jobs"
    assert first.headers["Authorization"] == "Bearer orch_secret_key"
    assert script.body(0) == {"kind": "video", "input": {"prompt": "a cat", "duration_s": 8},
                              "tier": "standard", "max_cost_usd": 2.5,
                              "metadata": {"project": "p1"}}
    assert script.body(1) == {"kind": "text", "input": {"prompt": "hi"}}
    keys = {r.headers["Idempotency-Key"] for r in script.requests}
    assert len(keys) == 2 and all(len(k) == 36 for k in keys)


def test_explicit_idempotency_key_is_sent_as_given() -> None:
    script = Script([httpx.Response(202, json=job_json())])
    make(script).submit(kind="text", input={"prompt": "x"}, idempotency_key="order-42")
    assert script.requests[0].headers["Idempotency-Key"] == "order-42"


def test_a_failed_submission_carries_its_idempotency_key_and_a_resubmission_reuses_it() -> None:
    def lost(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("no answer", request=request)

    # the retries run out, and the job may exist: the key is how to ask again safely
    script = Script([lost])
    c = make(script)
    with pytest.raises(ApiConnectionError) as info:
        c.submit(kind="text", input={"prompt": "x"})
    key = info.value.idempotency_key
    assert key is not None and len(script.requests) == 4
    assert {r.headers["Idempotency-Key"] for r in script.requests} == {key}
    script.steps = [httpx.Response(200, json=job_json())]  # a replay of the first one
    assert c.submit(kind="text", input={"prompt": "x"}, idempotency_key=key).id == "j-1"
    assert script.requests[-1].headers["Idempotency-Key"] == key


def test_every_error_of_a_submission_carries_its_key_and_no_other_call_has_one() -> None:
    script = Script([envelope(502, "bad_gateway", "upstream"),
                     httpx.Response(202, text="<html>proxy</html>"),
                     envelope(404, "not_found", "no such job")])
    c = make(script, retries=0)
    with pytest.raises(ServerError) as failed:
        c.submit(kind="text", input={"prompt": "x"}, idempotency_key="order-42")
    with pytest.raises(ApiError, match="no JSON") as unreadable:  # it was made, unread
        c.submit(kind="text", input={"prompt": "x"}, idempotency_key="order-43")
    with pytest.raises(NotFound) as other:
        c.get("j-1")
    assert failed.value.idempotency_key == "order-42"
    assert unreadable.value.idempotency_key == "order-43"
    assert other.value.idempotency_key is None


def test_base_url_and_key_default_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_API_URL", BASE + "/")
    monkeypatch.setenv("ORCH_API_KEY", "orch_env_key")
    script = Script([httpx.Response(200, json={"backends": []})])
    c = Client(transport=script.transport())
    assert c.backends() == []
    assert str(script.requests[0].url) == BASE + "/v1/backends"
    assert script.requests[0].headers["Authorization"] == "Bearer orch_env_key"
    monkeypatch.delenv("ORCH_API_URL")
    with pytest.raises(ValueError, match="ORCH_API_URL"):
        Client()


@pytest.mark.parametrize("cls", [Client, AsyncClient])
def test_a_key_no_header_can_carry_is_refused_at_once_and_never_quoted(
    cls: type[Client] | type[AsyncClient], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """httpx refuses such a header at every request (after the retries) with a message that
    quotes it whole, ``Bearer`` and key: a key read from a file with its newline would end up
    in the caller's logs."""
    for bad in ("orch_0123abcd_SECRETKEY\n", " orch_0123abcd_SECRETKEY",
                "orch_0123abcd_SECRET KEY", "orch_0123abcd_SECRETK\u00c9Y"):
        with pytest.raises(ValueError, match=r"^api_key is not an API key") as info:
            cls(BASE, bad)
        assert "SECRET" not in str(info.value)
    monkeypatch.setenv("ORCH_API_KEY", "orch_0123abcd_SECRETKEY\r\n")
    with pytest.raises(ValueError, match=r"^ORCH_API_KEY is not an API key") as info:
        cls(BASE)
    assert "SECRET" not in str(info.value)


@pytest.mark.parametrize("cls", [Client, AsyncClient])
def test_a_base_url_that_is_no_http_url_is_refused_at_once_and_never_quoted(
    cls: type[Client] | type[AsyncClient], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not a ``cannot reach ://`` from the first request (after its retries), nor httpx's
    own InvalidURL, which is no ValueError and may quote the URL's password."""
    for bad in ("127.0.0.1:8000", "localhost:8000", "ftp://host/", "http://", "https:///v1",
                " http://127.0.0.1:8000", "http://me:SECRETPW@127.0.0.1:8000\n",
                "http://me:SECRETPW@[::1", "http://127.0.0.1:99999"):
        with pytest.raises(ValueError, match=r"^base_url is not an http\(s\) URL") as info:
            cls(bad, "k")
        assert "SECRET" not in str(info.value), bad
    monkeypatch.setenv("ORCH_API_URL", "127.0.0.1:8000")
    with pytest.raises(ValueError, match=r"^ORCH_API_URL is not an http"):
        cls(api_key="k")


def test_a_base_url_with_a_path_prefix_keeps_it_for_every_route() -> None:
    """An API behind a reverse proxy at https://host/orchestrator/: every call, the event
    stream and a result file included, goes under the prefix, with or without its slash."""
    stream = ('id: e1\nevent: job.succeeded\ndata: {"id": "e1", "type": "job.succeeded", '
              '"job_id": "j-1", "seq": 1, "at": "2024-05-01T00:00:00Z"}\n\n')
    for base in ("https://host/orchestrator", "https://host/orchestrator/"):
        script = Script([
            httpx.Response(202, json=job_json()),
            httpx.Response(200, text=stream, headers={"Content-Type": "text/event-stream"}),
            httpx.Response(200, content=b"PNG"),
        ])
        c = Client(base, "k", transport=script.transport())
        c.submit(kind="text", input={"prompt": "x"})
        assert [e.type for e in c.events("j-1")] == ["job.succeeded"]
        assert c.result_file("/v1/jobs/j-1/result/files/0") == b"PNG"
        assert [str(r.url) for r in script.requests] == [
            "https://host/orchestrator/v1/jobs", "https://host/orchestrator/v1/jobs/j-1/events",
            "https://host/orchestrator/v1/jobs/j-1/result/files/0"]


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (422, "invalid_request", InvalidRequest),
        (401, "unauthorized", Unauthorized),
        (402, "budget_exceeded", BudgetExceeded),
        (403, "forbidden", Forbidden),
        (404, "not_found", NotFound),
        (409, "conflict", Conflict),
        (422, "no_eligible_backend", NoEligibleBackend),
        (429, "rate_limited", RateLimited),
        (500, "internal_error", ServerError),
        (503, "unavailable", Unavailable),
        (418, "teapot", ApiError),
    ],
)
def test_error_envelope_maps_to_typed_errors(status: int, code: str, cls: type[ApiError]) -> None:
    script = Script([envelope(status, code, f"the {code} message", field="x")])
    with pytest.raises(cls) as info:
        make(script, retries=0).get("j-1")
    err = info.value
    assert type(err) is cls
    assert (err.status, err.code, err.message) == (status, code, f"the {code} message")
    assert err.details == {"field": "x"}
    assert str(err) == f"the {code} message"


def test_status_is_the_fallback_when_the_body_is_not_an_envelope() -> None:
    script = Script([httpx.Response(404, text="<html>nope</html>")])
    with pytest.raises(NotFound) as info:
        make(script).get("j-1")
    assert info.value.message == "HTTP 404 Not Found" and info.value.code == "not_found"


def test_a_redirect_says_where_to_by_its_origin_and_is_not_followed() -> None:
    """A proxy that sends http to https: the SDK follows no redirect (a submission must not
    become a GET elsewhere), and says which URL to give instead."""
    script = Script([httpx.Response(301, headers={
        "Location": "https://api.example.com:8443/orchestrator/v1/jobs?token=SECRET"})])
    with pytest.raises(ApiError) as info:
        make(script).submit(kind="text", input={"prompt": "x"})
    assert str(info.value) == (
        "HTTP 301 Moved Permanently: the API URL redirects to https://api.example.com:8443, "
        "and the SDK follows no redirect (give the URL it redirects to)")
    assert len(script.requests) == 1
    script = Script([httpx.Response(308, headers={"Location": "/elsewhere"})])
    with pytest.raises(ApiError, match=f"redirects to {BASE}, "):
        make(script).backends()


def test_budget_exceeded_carries_the_budget_figures() -> None:
    script = Script([envelope(402, "budget_exceeded", "budget tenant:acme has $0.50 remaining",
                              scope="tenant:acme", period="month", remaining_usd=0.5,
                              requested_usd=1.2)])
    with pytest.raises(BudgetExceeded) as info:
        make(script).submit(kind="text", input={"prompt": "x"})
    e = info.value
    assert (e.scope, e.period, e.remaining_usd, e.requested_usd) == ("tenant:acme", "month",
                                                                      0.5, 1.2)
    assert len(script.requests) == 1  # a 402 is final: never retried


def test_429_is_retried_after_retry_after_then_succeeds() -> None:
    clock = FakeClock()
    script = Script([envelope(429, "rate_limited", "slow down", {"Retry-After": "7"}),
                     httpx.Response(202, json=job_json())])
    job = make(script, clock).submit(kind="text", input={"prompt": "x"})
    assert job.id == "j-1"
    assert clock.sleeps == [7.0]
    keys = [r.headers["Idempotency-Key"] for r in script.requests]
    assert len(keys) == 2 and keys[0] == keys[1]


def test_429_gives_up_with_retry_after_when_retries_run_out() -> None:
    clock = FakeClock()
    script = Script([envelope(429, "rate_limited", "slow down", {"Retry-After": "2"})])
    with pytest.raises(RateLimited) as info:
        make(script, clock, retries=2).backends()
    assert info.value.retry_after == 2.0
    assert len(script.requests) == 3 and clock.sleeps == [2.0, 2.0]


def test_a_retry_after_longer_than_the_policy_allows_is_raised_at_once() -> None:
    clock = FakeClock()
    script = Script([envelope(429, "rate_limited", "slow down", {"Retry-After": "3600"})])
    with pytest.raises(RateLimited) as info:
        make(script, clock).backends()
    assert info.value.retry_after == 3600.0 and clock.sleeps == []


@pytest.mark.parametrize("key", ["retry_after_s", "retry_after"])
def test_retry_after_falls_back_to_the_envelope_when_the_header_is_gone(key: str) -> None:
    # the server sends details.retry_after_s; a proxy may strip the Retry-After header
    script = Script([envelope(429, "rate_limited", "slow down", **{key: 7}, limit=10,
                              window_s=60)])
    with pytest.raises(RateLimited) as info:
        make(script, retries=0).backends()
    assert info.value.retry_after == 7.0


def test_503_unavailable_is_retried_after_its_retry_after() -> None:
    clock = FakeClock()
    script = Script([envelope(503, "unavailable", "the database is unavailable",
                              {"Retry-After": "2"}, dependency="database"),
                     envelope(503, "unavailable", "the database is unavailable",
                              {"Retry-After": "2"}, dependency="database"),
                     httpx.Response(202, json=job_json())])
    job = make(script, clock).submit(kind="text", input={"prompt": "x"})
    assert job.id == "j-1" and clock.sleeps == [2.0, 2.0]
    keys = {r.headers["Idempotency-Key"] for r in script.requests}
    assert len(script.requests) == 3 and len(keys) == 1


def test_503_secret_key_missing_is_a_setting_to_fix_and_not_retried() -> None:
    clock = FakeClock()
    script = Script([envelope(503, "secret_key_missing", "no ORCH_SECRET_KEY to seal with"),
                     httpx.Response(202, json=job_json())])
    with pytest.raises(ServerError) as info:
        make(script, clock).submit(kind="text", input={"prompt": "x"},
                                   webhook_url="https://hooks.example.com/o")
    assert info.value.code == "secret_key_missing"
    assert len(script.requests) == 1 and clock.sleeps == []


def test_503_unavailable_gives_up_as_unavailable_when_retries_run_out() -> None:
    clock = FakeClock()
    script = Script([envelope(503, "unavailable", "the redis is unavailable",
                              {"Retry-After": "2"}, dependency="redis")])
    with pytest.raises(Unavailable) as info:
        make(script, clock, retries=1).backends()
    e = info.value
    assert isinstance(e, ServerError) and e.retry_after == 2.0
    assert e.details == {"dependency": "redis"} and clock.sleeps == [2.0]


def test_503_then_success_resends_the_same_idempotency_key_and_yields_one_job() -> None:
    jobs: dict[str, dict[str, Any]] = {}
    calls = {"n": 0}

    def server(request: httpx.Request) -> httpx.Response:
        # the first request is processed, then its answer is lost behind a 503
        key = request.headers["Idempotency-Key"]
        job = jobs.setdefault(key, job_json(f"j-{len(jobs) + 1}"))
        calls["n"] += 1
        if calls["n"] == 1:
            return envelope(503, "unavailable", "try again")
        return httpx.Response(202, json=job)

    clock = FakeClock()
    script = Script([server])
    job = make(script, clock, retry_policy=RetryPolicy(retries=3, rng=lambda: 1.0)).submit(
        kind="text", input={"prompt": "x"})
    assert job.id == "j-1" and len(jobs) == 1
    assert len(script.requests) == 2 and clock.sleeps == [0.5]


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    clock = FakeClock()
    script = Script([envelope(502, "bad_gateway", "upstream")])
    policy = RetryPolicy(retries=6, base=0.5, cap=4.0, rng=lambda: 1.0)
    with pytest.raises(ServerError):
        make(script, clock, retry_policy=policy).budgets()
    assert clock.sleeps == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    low = RetryPolicy(retries=1, base=1.0, rng=lambda: 0.0)
    assert low.delay(0, ServerError("x", status=503)) == 0.5


def test_connection_errors_are_retried_and_raised_typed() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    clock = FakeClock()
    script = Script([refuse, refuse, httpx.Response(200, json={"budgets": []})])
    assert make(script, clock).budgets() == []
    assert len(clock.sleeps) == 2

    script = Script([refuse])
    with pytest.raises(ApiConnectionError, match="connection refused"):
        make(script, retries=1).get("j-1")
    assert len(script.requests) == 2


@pytest.mark.parametrize("cls", [Client, AsyncClient])
@pytest.mark.parametrize("where", ["base_url", "ORCH_API_URL"])
def test_a_base_url_with_credentials_is_refused_at_once_and_never_quoted(
        cls: type[Client] | type[AsyncClient], where: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """httpx would send them as Basic authentication in place of the key (every call a
    401 ``missing API key``) and log the password with every request."""
    url = "http://me:SECRETPW@127.0.0.1:8000"
    monkeypatch.setenv("ORCH_API_URL", url)
    with pytest.raises(ValueError, match=rf"^{where} carries a user name or password") as info:
        cls(url if where == "base_url" else None, "k")
    assert "SECRET" not in str(info.value)


def test_a_connection_error_names_the_apis_origin_never_credentials_in_its_url() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    c = Client("http://127.0.0.1:1/base?k=SECRETQ", "orch_secret_key",
               transport=Script([refuse]).transport(), retries=0)
    with pytest.raises(ApiConnectionError) as info:
        c.get("j-1")
    assert str(info.value).startswith("cannot reach http://127.0.0.1:1: ")
    assert "SECRET" not in str(info.value)


def broken_gzip(request: httpx.Request) -> httpx.Response:
    # a proxy's broken body: httpx raises DecodingError, a RequestError but no TransportError
    return httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=b"not gzip")


def test_an_undecodable_answer_is_an_api_error_retried_only_when_idempotent() -> None:
    script = Script([broken_gzip, httpx.Response(200, json=job_json())])
    assert make(script).get("j-1").id == "j-1"
    assert len(script.requests) == 2

    script = Script([broken_gzip])
    with pytest.raises(ApiConnectionError, match="no readable answer") as info:
        make(script).cancel("j-1")  # it went out: a cancel is not resent
    assert isinstance(info.value.__cause__, httpx.DecodingError)
    assert len(script.requests) == 1


@pytest.mark.parametrize("key", ["", "clé", "order 42", "tab\tkey", "k" * 201])
def test_an_idempotency_key_the_api_refuses_is_refused_before_sending(key: str) -> None:
    script = Script([httpx.Response(202, json=job_json())])
    with pytest.raises(InvalidRequest, match="idempotency_key") as info:
        make(script).submit(kind="text", input={"prompt": "x"}, idempotency_key=key)
    assert info.value.details == {"field": "header.Idempotency-Key"}
    assert script.requests == []


def test_the_longest_and_oddest_idempotency_keys_the_api_takes_are_sent() -> None:
    script = Script([httpx.Response(202, json=job_json())])
    for key in ("k" * 200, "!~", "order-42:attempt/1"):
        make(script).submit(kind="text", input={"prompt": "x"}, idempotency_key=key)
    assert [r.headers["Idempotency-Key"] for r in script.requests] == [
        "k" * 200, "!~", "order-42:attempt/1"]


def test_cancel_is_not_resent_after_a_5xx_or_a_lost_response() -> None:
    def lost(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadError("connection reset", request=request)

    script = Script([envelope(503, "unavailable", "x"), httpx.Response(200, json=job_json())])
    with pytest.raises(ServerError):
        make(script).cancel("j-1")
    assert len(script.requests) == 1

    script = Script([lost, httpx.Response(200, json=job_json())])
    with pytest.raises(ApiConnectionError):
        make(script).cancel("j-1")
    assert len(script.requests) == 1

    # a 429 was refused before any work, so even a cancel is resent
    script = Script([envelope(429, "rate_limited", "x", {"Retry-After": "1"}),
                     httpx.Response(200, json=job_json(status="cancelled"))])
    assert make(script).cancel("j-1").status == "cancelled"
    assert script.requests[1].url.path == "/v1/jobs/j-1/cancel"


def test_wait_polls_with_growing_interval_until_final() -> None:
    clock = FakeClock()
    statuses = ["queued", "running", "running", "running", "succeeded"]
    script = Script([httpx.Response(200, json=job_json(status=s, cost_usd=0.3 if
                                                       s == "succeeded" else None))
                     for s in statuses])
    job = make(script, clock).wait("j-1", timeout=600, poll_interval=1.0, max_poll_interval=2.0,
                                     stream=False)
    assert job.status == "succeeded" and job.is_final and job.cost_usd == 0.3
    assert clock.sleeps == [1.0, 1.5, 2.0, 2.0]
    assert all(r.url.path == "/v1/jobs/j-1" for r in script.requests)


@pytest.mark.parametrize("bad", [{"timeout": math.nan}, {"timeout": -5},
                                 {"timeout": math.inf}, {"poll_interval": 0},
                                 {"max_poll_interval": math.nan}])
def test_wait_refuses_a_timeout_it_could_never_reach_before_any_request(
        bad: dict[str, float]) -> None:
    script = Script([httpx.Response(200, json=job_json(status="running"))])
    with pytest.raises(ValueError, match=f"{next(iter(bad))} must be a finite number"):
        make(script, FakeClock()).wait("j-1", **bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout must be a finite number"):
        next(iter(make(script, FakeClock()).events("j-1", timeout=math.nan)))
    assert script.requests == []


def test_wait_raises_a_typed_timeout_with_the_last_job() -> None:
    clock = FakeClock()
    script = Script([httpx.Response(200, json=job_json(status="running"))])
    with pytest.raises(WaitTimeout) as info:
        make(script, clock).wait("j-1", timeout=10, poll_interval=4.0, max_poll_interval=4.0,
                              stream=False)
    assert isinstance(info.value, TimeoutError)
    assert info.value.job is not None and info.value.job.status == "running"
    assert clock.sleeps == [4.0, 4.0, 2.0]  # never sleeps past the deadline
    assert clock.now == 1010.0


def test_wait_is_bounded_by_its_timeout_when_the_api_hangs() -> None:
    # before: every poll ran the whole retry loop, 4 tries of 30 s: ApiConnectionError at 152 s
    clock = FakeClock()
    script = Script([hangs(clock)])
    with pytest.raises(WaitTimeout) as info:
        make(script, clock).wait("j-1", timeout=5, stream=False)
    assert clock.now == 1005.0 and len(script.requests) == 1
    assert info.value.job is None  # no poll ever answered
    cause = info.value.__cause__
    assert isinstance(cause, ApiConnectionError)
    assert isinstance(cause.__cause__, httpx.ReadTimeout)


def test_wait_gives_each_poll_and_retry_only_the_time_left() -> None:
    clock = FakeClock()
    script = Script([httpx.Response(200, json=job_json(status="running")),
                     envelope(503, "unavailable", "busy", {"Retry-After": "2"}),
                     hangs(clock)])
    with pytest.raises(WaitTimeout) as info:
        make(script, clock).wait("j-1", timeout=10, poll_interval=4.0, stream=False)
    assert info.value.job is not None and info.value.job.status == "running"  # the last seen
    assert isinstance(info.value.__cause__, ApiConnectionError)
    reads = [r.extensions["timeout"]["read"] for r in script.requests]
    assert reads == [10.0, 6.0, 4.0]  # what was left of the 10 s at each try, never 30 s
    assert clock.sleeps == [4.0, 2.0] and clock.now == 1010.0


def test_a_retry_after_past_the_deadline_waits_only_until_it() -> None:
    clock = FakeClock()
    script = Script([envelope(429, "rate_limited", "slow down", {"Retry-After": "60"})])
    with pytest.raises(WaitTimeout) as info:
        make(script, clock).wait("j-1", timeout=10, stream=False)
    assert isinstance(info.value.__cause__, RateLimited)
    assert clock.sleeps == [10.0] and len(script.requests) == 1


def test_wait_raises_an_error_that_is_no_matter_of_time_as_it_is() -> None:
    clock = FakeClock()
    script = Script([envelope(404, "not_found", "no such job")])
    with pytest.raises(NotFound):
        make(script, clock).wait("j-1", timeout=10, stream=False)
    # a 500 is a fault of the API, no outage to wait out
    script = Script([envelope(500, "internal_error", "boom")])
    with pytest.raises(ServerError):
        make(script, clock, retries=0).wait("j-1", timeout=10, stream=False)


def test_wait_polls_on_through_an_outage_after_a_polls_retries_are_spent() -> None:
    clock = FakeClock()
    script = Script([envelope(503, "unavailable", "restarting", {"Retry-After": "5"}),
                     envelope(502, "http_error", "bad gateway"),
                     httpx.Response(200, json=job_json(status="succeeded"))])
    job = make(script, clock, retries=0).wait("j-1", timeout=60, stream=False)
    assert job.status == "succeeded"
    assert clock.sleeps == [5.0, 1.5]  # the Retry-After it asked for, then the interval
    # an outage past the deadline: the WaitTimeout, from the last poll's error
    script = Script([envelope(503, "unavailable", "restarting", {"Retry-After": "1"})])
    with pytest.raises(WaitTimeout) as info:
        make(script, FakeClock(), retries=0).wait("j-1", timeout=3, stream=False)
    assert isinstance(info.value.__cause__, Unavailable) and info.value.job is None


def test_list_pages_and_iterates_over_every_page() -> None:
    pages = {None: {"items": [job_json("a"), job_json("b")], "next_cursor": "c1"},
             "c1": {"items": [job_json("c")], "next_cursor": None}}
    script = Script([lambda r: httpx.Response(200, json=pages[r.url.params.get("cursor")])])
    c = make(script)
    page = c.list(status="queued", limit=2)
    assert [j.id for j in page.items] == ["a", "b"] and page.next_cursor == "c1"
    assert dict(script.requests[0].url.params) == {"status": "queued", "limit": "2"}
    assert [j.id for j in c.iter_jobs(page_size=2)] == ["a", "b", "c"]


def test_resources_parse_and_keep_unknown_fields() -> None:
    backend = {"name": "sim-video-std", "protocol": "predictions", "kinds": ["video"],
               "tier": "standard", "breaker": {"state": "open", "strikes": 3,
                                               "retry_at": "2024-05-01T00:00:30Z"},
               "success_rate": 0.9, "latency_ms": 120.0, "in_flight": 2, "region": "eu"}
    budget = {"scope": "tenant:acme", "period": "month", "period_start": "2024-05-01T00:00:00Z",
              "limit_usd": 10.0, "committed_usd": 1.0, "held_usd": 0.5, "remaining_usd": 8.5,
              "forecast_usd": None, "alert_thresholds": [0.5, 0.8, 1.0], "channels": []}
    quote = {"candidates": [{"backend": "b1", "estimated_cost_usd": 0.4, "score": 0.1,
                             "reasons": ["cheapest"]}],
             "excluded": [{"backend": "b2", "reason": "tier draft < standard"}]}
    script = Script([httpx.Response(200, json={"backends": [backend]}),
                     httpx.Response(200, json={"budgets": [budget]}),
                     httpx.Response(200, json=quote),
                     httpx.Response(200, json=budget),
                     httpx.Response(201, json={"key": "orch_abc_SECRET", "tenant": "acme",
                                               "admin": True, "prefix": "abc"})])
    c = make(script)
    [b] = c.backends()
    assert b.breaker.state == "open" and b.breaker.strikes == 3 and b.region == "eu"  # type: ignore[attr-defined]
    [bu] = c.budgets()
    assert bu.remaining_usd == 8.5 and bu.alert_thresholds == [0.5, 0.8, 1.0]
    q = c.quote(kind="video", input={"prompt": "x", "duration_s": 4})
    assert [x.backend for x in q.candidates] == ["b1"] and q.excluded[0].reason
    assert "Idempotency-Key" not in script.requests[2].headers
    assert c.set_budget("tenant:acme", "month", 10.0, alert_thresholds=[0.9]).limit_usd == 10.0
    assert script.requests[3].method == "PUT"
    assert script.body(3) == {"scope": "tenant:acme", "period": "month", "limit_usd": 10.0,
                              "alert_thresholds": [0.9]}
    key = c.create_key("acme", admin=True)
    assert key.key == "orch_abc_SECRET" and key.admin
    assert "SECRET" not in repr(key) and "SECRET" not in str(key)


def test_quote_takes_the_same_body_as_submit() -> None:
    # POST /v1/quotes takes a job's body: the kwargs of a submit() can be quoted unchanged
    script = Script([httpx.Response(200, json={"candidates": [], "excluded": []})])
    kw: dict[str, Any] = {"kind": "video", "input": {"prompt": "x"},
                          "webhook_events": ["job.failed"]}
    make(script).quote(**kw)
    assert script.body(0)["webhook_events"] == ["job.failed"]


def test_unexpected_response_shapes_raise_api_error() -> None:
    script = Script([httpx.Response(200, text="not json"), httpx.Response(200, json={"x": 1})])
    c = make(script)
    with pytest.raises(ApiError, match="no JSON"):
        c.get("j-1")
    with pytest.raises(ApiError, match="unexpected response shape"):
        c.get("j-1")


def test_an_answer_of_another_shape_is_an_api_error_that_never_quotes_it() -> None:
    """A JSON answer from something else than the API (a wrong URL, a proxy's page) is no
    empty page, no secret "None" and no ValueError; the message names the field, never the
    answer's values (a job's metadata and result are the tenant's)."""
    script = Script([httpx.Response(200, json={"status": "ok"})])
    c = make(script)
    for call in (c.list, c.webhook_deliveries):
        with pytest.raises(ApiError, match=r"\(items: Field required\); is the API URL right"):
            call()
    for answer, method in (({"secret": None}, "webhook_secret"),
                           ({"requeued": "12"}, "redeliver_failed"),
                           ({"requeued": True}, "redeliver_failed")):
        other = make(Script([httpx.Response(200, json=answer)]))
        with pytest.raises(ApiError, match="unexpected response shape") as info:
            getattr(other, method)()
        assert info.value.code == "invalid_response"
    page = make(Script([httpx.Response(200, json={"items": [job_json(), {"status": "x"}]})]))
    with pytest.raises(ApiError, match=r"\(items\[1\]\.id: Field required\)"):
        page.list()
    job = {"status": "queued", "metadata": {"order": "TENANT-DATA"}, "result": "OUTPUT"}
    with pytest.raises(ApiError) as info:
        make(Script([httpx.Response(200, json=job)])).get("j-1")
    assert str(info.value) == ("GET /v1/jobs/j-1: unexpected response shape (id: Field "
                               "required); is the API URL right?")


def test_job_ids_are_escaped_into_the_path() -> None:
    script = Script([httpx.Response(200, json=job_json())])
    make(script).get("../keys")
    assert script.requests[0].url.raw_path == b"/v1/jobs/..%2Fkeys"


def test_logs_never_contain_the_key_or_the_prompt(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    script = Script([envelope(503, "unavailable", "x"), httpx.Response(202, json=job_json())])
    make(script).submit(kind="text", input={"prompt": "my secret prompt"})
    text = caplog.text
    assert "POST /v1/jobs -> 503" in text
    assert "orch_secret_key" not in text and "my secret prompt" not in text


def test_result_errors_are_typed_not_ready_yet_and_expired() -> None:
    script = Script([httpx.Response(409, json={"error": {
                         "code": "not_ready_yet", "message": "job j-1 is running",
                         "details": {"status": "running"}}}),
                     envelope(410, "result_expired", "dropped after 30 days")])
    c = make(script)
    with pytest.raises(NotReadyYet) as early:
        c.result("j-1")
    assert isinstance(early.value, Conflict) and early.value.details == {"status": "running"}
    with pytest.raises(ResultExpired) as late:
        c.result("j-1")
    assert late.value.status == 410 and late.value.code == "result_expired"
    assert [r.url.path for r in script.requests] == ["/v1/jobs/j-1/result"] * 2


def test_the_sdk_imports_nothing_of_the_orchestrator_outside_its_package() -> None:
    # so that orchestrator/client/ can be vendored alone (with httpx, httpx-sse, pydantic)
    code = ("import sys, orchestrator.client; print(sorted(m for m in sys.modules "
            "if m.split('.')[0] == 'orchestrator' and not m.startswith('orchestrator.client')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "['orchestrator']"


def test_every_time_the_api_sends_is_a_datetime_in_the_sdk() -> None:
    # a time left undeclared came back as the extra field's str beside its siblings'
    # datetimes (Job.deadline_at, Budget.period_end): one resource, two types of time
    from orchestrator.api import schemas
    from orchestrator.client import models

    pairs: list[tuple[type[Any], type[Any], dict[str, Any]]] = [
        (models.Attempt, schemas.AttemptOut, {}),
        (models.Job, schemas.JobOut, {"id": "j", "status": "queued"}),
        (models.JobResult, schemas.ResultOut, {"job_id": "j", "status": "succeeded"}),
        (models.Breaker, schemas.BreakerOut, {}),
        (models.Budget, schemas.BudgetOut, {"scope": "global", "period": "day", "limit_usd": 1}),
    ]
    for sdk, api, required in pairs:
        times = [n for n in api.model_fields if n.endswith("_at") or n.startswith("period_")]
        assert times, api
        parsed = sdk.model_validate({**required, **{n: "2024-05-01T00:00:00+00:00"
                                                     for n in times}})
        for name in times:
            assert name in sdk.model_fields, (sdk.__name__, name)
            assert isinstance(getattr(parsed, name), datetime), (sdk.__name__, name)
