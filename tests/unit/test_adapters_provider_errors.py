"""What real providers' error answers mean for a paid call, through the adapters' transport
seam: gateways that took the request, a key the provider already knows, a backend's own
configuration refused, an account out of credit, and the waits providers ask for."""

from __future__ import annotations

import gzip
import json

import httpx
import pytest

from orchestrator.backends import (
    BackendFault,
    JobFault,
    RetryPolicy,
    TransientError,
    make_adapter,
)
from orchestrator.backends.errors import OutcomeUnknown
from orchestrator.domain.catalogue import parse_catalogue

from .test_adapters_mock import CHAT, TEXT, VIDEO, answer, mock


@pytest.mark.parametrize("status", [520, 524])
def test_a_cloudflare_timeout_to_a_create_is_never_sent_again(status: int) -> None:
    """524: Cloudflare gave up waiting; the origin goes on, and bills. Resent, it bills
    twice."""
    calls: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.headers.get("idempotency-key"))
        return httpx.Response(status, text="<html>cloudflare</html>")

    with pytest.raises(OutcomeUnknown) as info:
        mock("txt", handler).submit(TEXT, "k")
    assert calls == ["k"] and info.value.details["cause"] == "backend_server_error"
    calls.clear()
    with pytest.raises(OutcomeUnknown):
        mock("vid", handler).submit(VIDEO, "k")
    assert calls == ["k"]


def test_a_409_to_a_create_means_the_key_is_known_not_a_bad_job() -> None:
    """The provider already has a request under this key (in progress, or done and not
    replayed): the work may exist, so the attempt is reconciled, never failed as the job's
    fault (which would end the job after the provider billed it)."""
    with pytest.raises(OutcomeUnknown) as info:
        mock("txt", answer({"error": {"code": "idempotency_key_in_use"}}, 409)).submit(
            TEXT, "k")
    assert info.value.details["cause"] == "idempotency_conflict"
    # where the provider joins repeats of a key, the call asks again and gets the answer
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(409, json={}) if len(calls) == 1 else httpx.Response(200,
                                                                                  json=CHAT)

    res = mock("txt-joins", handler).submit(TEXT, "k").result
    assert res is not None and res.status == "succeeded" and len(calls) == 2
    # a 409 to anything but a create is still a refusal
    with pytest.raises(JobFault):
        mock("vid", answer({}, 409)).poll("p1")


@pytest.mark.parametrize("code", ["unsupported_parameter", "model_not_found"])
def test_a_refused_backend_configuration_is_the_backends_fault(code: str) -> None:
    """o-series models refuse max_tokens; a model name the provider does not know: every job
    would fail there, and any other backend can run it."""
    body = {"error": {"message": "Unsupported parameter: 'max_tokens' for this model.",
                      "type": "invalid_request_error", "param": "max_tokens", "code": code}}
    with pytest.raises(BackendFault) as info:
        mock("txt", answer(body, 400)).submit(TEXT, "k")
    assert info.value.code == "backend_config" and info.value.strike
    assert "Unsupported" not in str(info.value) and info.value.details["param"] == "max_tokens"


def test_replicates_invalid_version_is_the_backends_fault_and_its_input_refusal_the_jobs(
        ) -> None:
    """Replicate answers a version that does not exist, or that the account may not run,
    422 with a problem body and no code: every job would fail there, so it is the backend's
    configuration (a strike, failover), not each job's input. Its refusal of a job's input
    (also 422, another title) stays the job's fault."""
    version = {"title": "Invalid version or not permitted", "status": 422,
               "detail": "The specified version does not exist (or perhaps you don't have "
                         "permission to use it?)"}
    with pytest.raises(BackendFault) as info:
        mock("vid", answer(version, 422)).submit(VIDEO, "k")
    assert info.value.code == "backend_config" and info.value.strike
    assert "permission" not in str(info.value)  # the provider's words are never kept
    for uri in ("about:blank", "https://replicate.com/docs/errors#invalid-version"):
        # RFC 9457's type is a URI naming the kind of problem, not a code
        with pytest.raises(BackendFault) as info:
            mock("vid", answer({**version, "type": uri}, 422)).submit(VIDEO, "k")
        assert info.value.code == "backend_config"
    refused = {"title": "Input validation failed", "status": 422,
               "detail": "- input.prompt: Does not match pattern"}
    with pytest.raises(JobFault) as job_info:
        mock("vid", answer(refused, 422)).submit(VIDEO, "k")
    assert job_info.value.code == "invalid_input" and not job_info.value.strike


@pytest.mark.parametrize(("code", "param"), [
    ("unsupported_value", "temperature"), ("unsupported_parameter", "temperature"),
    ("unsupported_value", "max_tokens")])
def test_a_jobs_own_parameter_or_value_refused_is_the_jobs_fault_not_a_strike(
        code: str, param: str) -> None:
    """A job's own parameter, or a value a job chose (max_tokens is the job's), refused:
    three such jobs must not open the backend's breaker for every tenant."""
    body = {"error": {"type": "invalid_request_error", "param": param, "code": code}}
    with pytest.raises(JobFault) as info:
        mock("txt", answer(body, 400)).submit(TEXT, "k")
    assert info.value.code == "invalid_input" and not info.value.strike


def test_out_of_quota_on_a_poll_is_waited_out_like_any_429() -> None:
    """Only a create is refused for the account: a prediction already made may still
    finish (and bill), so a poll's 429 stays a rate limit."""
    body = {"error": {"code": "insufficient_quota"}}
    with pytest.raises(TransientError) as info:
        mock("vid", answer(body, 429)).poll("p1")
    assert info.value.code == "rate_limited"


def test_out_of_quota_is_the_backends_fault_and_not_retried() -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(429, json={"error": {"code": "insufficient_quota",
                                                   "type": "insufficient_quota"}})

    with pytest.raises(BackendFault) as info:
        mock("txt", handler).submit(TEXT, "k")
    assert info.value.code == "backend_payment_required" and calls == [1]


def test_a_5xx_wait_longer_than_the_in_call_retries_is_not_taken() -> None:
    waits: list[float] = []
    policy = RetryPolicy(attempts=2, initial_s=0.0, max_wait_s=0.0, sleep=waits.append)
    with pytest.raises(TransientError) as info:
        mock("vid", answer({}, 503, **{"Retry-After": "3600"}), policy).poll("p1")
    assert waits == [0.0] and info.value.retry_after_s is None
    with pytest.raises(TransientError) as info:
        mock("vid", answer({}, 429, **{"Retry-After": "1e999"}), policy).poll("p1")
    assert info.value.retry_after_s == 86_400  # a day at most: nothing JSON cannot hold


@pytest.mark.parametrize(("headers", "wait"), [
    ({"Retry-After": "2"}, 2.0), ({"retry-after-ms": "900"}, 0.9)])
def test_the_wait_a_provider_asks_for_is_taken_on_5xx_and_in_milliseconds(
        headers: dict[str, str], wait: float) -> None:
    waits: list[float] = []
    policy = RetryPolicy(attempts=2, initial_s=0.0, max_wait_s=0.0, sleep=waits.append)
    for status in (503, 429):
        waits.clear()
        with pytest.raises(TransientError):
            mock("vid", answer({}, status, **headers), policy).poll("p1")
        assert waits == [wait], status


def test_answers_are_asked_for_uncompressed() -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("accept-encoding"))
        return httpx.Response(200, json=CHAT)

    mock("txt", handler).submit(TEXT, "k")
    assert seen == ["identity"]


def test_an_answer_compressed_though_asked_for_identity_is_read_once() -> None:
    """Through another httpx transport (which inflates the body itself) a compressed answer
    is read as the real wire reads it (test_wire), not inflated twice."""
    body = gzip.compress(json.dumps(CHAT).encode())
    res = mock("txt", lambda request: httpx.Response(
        200, content=body, headers={"Content-Encoding": "gzip"})).submit(TEXT, "k").result
    assert res is not None and res.status == "succeeded"
    assert res.output == {"text": "ok", "finish_reason": "stop"}


@pytest.mark.parametrize(("base_url", "called"), [
    ("http://p.test/txt", "http://p.test/txt/v1/chat/completions"),
    ("http://p.test/txt/", "http://p.test/txt/v1/chat/completions"),
    # as OpenAI's SDKs and most compatible providers write it
    ("https://api.p.test/v1", "https://api.p.test/v1/chat/completions"),
    ("https://api.p.test/v1/", "https://api.p.test/v1/chat/completions"),
    # a gateway's query stays after the path; a fragment is never sent
    ("https://a.p.test/openai/v1?api-version=preview",
     "https://a.p.test/openai/v1/chat/completions?api-version=preview"),
    ("https://api.p.test/v1#docs", "https://api.p.test/v1/chat/completions"),
])
def test_a_base_url_is_read_as_its_provider_documents_it(base_url: str, called: str) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json=CHAT)

    spec = parse_catalogue({"backends": [
        {"name": "t", "protocol": "openai", "kinds": ["text"], "tier": "standard",
         "base_url": base_url,
         "price": {"model": "per_token", "usd_per_1k_input": 0.001,
                   "usd_per_1k_output": 0.002}}]}).get("t")
    make_adapter(spec, httpx.MockTransport(handler)).submit(TEXT, "k")
    assert seen == [called]


def test_a_base_query_joins_a_paths_own() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json={"results": []})

    spec = parse_catalogue({"backends": [
        {"name": "v", "protocol": "predictions", "kinds": ["video"], "tier": "draft",
         "base_url": "https://p.test/v1?tenant=t1",
         "price": {"model": "per_second", "usd_per_second": 0.1}}]}).get("v")
    assert make_adapter(spec, httpx.MockTransport(handler)).lookup("job:1") is None
    assert seen == ["https://p.test/v1/predictions?idempotency_key=job%3A1&tenant=t1"]
