"""OpenAI-style answers outside the narrowest reading (no usage, images as base64 data, a
refusal), end to end: each is the provider's word on work it did and billed, so the job ends on
that backend, charged once, never failed over to pay another backend for the same job.

The simulator answers as such providers do (``report_usage``, ``image_format``) to real Celery
worker processes on real Redis and PostgreSQL. A refusal, which the simulator does not make,
goes through the real job chain and adapter in this process with the provider's answer from an
``httpx.MockTransport``.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from orchestrator.api import ApiConfig
from orchestrator.backends import make_adapter
from orchestrator.backends.base import BackendAdapter
from orchestrator.client import AsyncClient, Client
from orchestrator.domain.jobs import JobSpec
from orchestrator.domain.polling import PollPolicy
from orchestrator.domain.pricing import Usage, actual_micros, estimate_micros
from orchestrator.events.retention import expire
from orchestrator.ledger.service import utcnow
from orchestrator.service.attempts import possible_cost
from orchestrator.service.runner import JobRunner
from orchestrator.simulator.openai import TINY_PNG_B64

from .api_fixture import start_api
from .e2e_support import (
    Rig,
    budgeted_rig_fixture,
    run_chain,
    runner_with_backend_at,
    simulator_fixture,
)
from .wire_fakes import WireFake, json_answer

TENANT = "acme"
_PRICE_TXT = {"model": "per_token", "usd_per_1k_input": 0.5, "usd_per_1k_output": 1.5}
CATALOGUE: dict[str, Any] = {
    "defaults": {"timeouts": {"connect_s": 2.0, "read_s": 5.0, "start_to_close_s": 120},
                 "idempotency": "none"},
    "backends": [
        # the cheaper of each pair is the plan's first choice; the other is its failover
        {"name": "chat-a", "protocol": "openai", "kinds": ["text"], "tier": "standard",
         "base_url": "${ORCH_SIMULATOR_URL}/chat-a", "price": _PRICE_TXT},
        {"name": "chat-b", "protocol": "openai", "kinds": ["text"], "tier": "standard",
         "base_url": "${ORCH_SIMULATOR_URL}/chat-b",
         "price": {**_PRICE_TXT, "usd_per_1k_output": 2.0}},
        {"name": "img-a", "protocol": "openai", "kinds": ["image"], "tier": "standard",
         "base_url": "${ORCH_SIMULATOR_URL}/img-a",
         "price": {"model": "per_image", "usd_per_image": {"1024x1024": 0.04}}},
        {"name": "img-b", "protocol": "openai", "kinds": ["image"], "tier": "standard",
         "base_url": "${ORCH_SIMULATOR_URL}/img-b",
         "price": {"model": "per_image", "usd_per_image": {"1024x1024": 0.05}}},
    ],
}


sim = simulator_fixture(CATALOGUE)
rig = budgeted_rig_fixture(CATALOGUE, TENANT)


def text_job() -> JobSpec:
    return JobSpec.model_validate({"kind": "text", "input": {"prompt": "an honest ledger",
                                                              "max_tokens": 200}})


def image_job() -> JobSpec:
    return JobSpec.model_validate({"kind": "image", "input": {"prompt": "a red kite"}})


# -- the simulator answers as such providers do -----------------------------------------------

def test_the_simulator_answers_without_usage_and_with_base64_images(rig: Rig) -> None:
    rig.control("chat-a", report_usage=False)
    rig.control("img-a", image_format="b64_json")
    chat = rig.http.post(f"{rig.sim_url}/chat-a/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "an honest ledger"}], "max_tokens": 20})
    image = rig.http.post(f"{rig.sim_url}/img-a/v1/images/generations",
                          json={"prompt": "a red kite", "n": 2, "size": "1024x1024"})
    assert chat.status_code == image.status_code == 200
    answer = chat.json()
    assert "usage" not in answer and "cost_usd" not in answer
    assert isinstance(answer["choices"][0]["message"]["content"], str)
    images = image.json()["data"]
    assert images == [{"b64_json": TINY_PNG_B64}] * 2
    assert base64.b64decode(TINY_PNG_B64).startswith(b"\x89PNG\r\n\x1a\n")
    # billed all the same
    assert len(rig.provider("chat-a")["bills"]) == 1
    assert [b["cost_micros"] for b in rig.provider("img-a")["bills"]] == [80_000]


# -- (a) no usage: kept, charged the attempt's worst case, never failed over -------------------

def test_a_chat_answer_without_usage_is_kept_and_charged_the_worst_case(rig: Rig) -> None:
    rig.control("chat-a", report_usage=False)
    rig.start_worker()
    spec = text_job()
    job_id = rig.submit(spec)
    (job,) = rig.wait_final([job_id])

    assert job.status == "succeeded" and job.backend == "chat-a", job.error_code
    assert job.result is not None and isinstance(job.result["output"]["text"], str)
    (attempt,) = rig.attempts(job_id)  # no failover
    assert attempt.backend == "chat-a" and attempt.outcome == "succeeded"
    counters = rig.provider("chat-a")["counters"]
    assert counters["created"] == counters["submissions"] == 1
    assert rig.provider("chat-b")["counters"]["submissions"] == 0
    cat = rig.container.catalogue()
    worst = estimate_micros(cat.get("chat-a"), spec)
    assert worst == possible_cost(cat, job, "chat-a")
    assert job.cost_micros == attempt.cost_micros == worst
    (bill,) = rig.provider("chat-a")["bills"]
    assert 0 < bill["cost_micros"] <= worst  # what it billed, within what it was charged
    assert rig.ledger() == (worst, 0)


# -- (b) images as base64 data: kept as files beside the job, charged their price ------------

def image_files_job(cache: bool = False) -> JobSpec:
    return JobSpec.model_validate({"kind": "image", "cache": cache,
                                   "input": {"prompt": "a red kite", "n": 2}})


def test_base64_images_are_kept_as_files_and_charged_their_price(rig: Rig) -> None:
    rig.control("img-a", image_format="b64_json")
    rig.start_worker()
    job_id = rig.submit(image_files_job())
    (job,) = rig.wait_final([job_id])

    assert job.status == "succeeded" and job.backend == "img-a", job.error_code
    # the result names each image by path; the data is kept beside the job
    assert job.result == {"output": {"images": [f"/v1/jobs/{job_id}/result/files/0",
                                                f"/v1/jobs/{job_id}/result/files/1"]}}
    with rig.engine.connect() as conn:
        kept = conn.execute(text("SELECT n, media_type, content FROM result_files "
                                 "WHERE job_id = :j ORDER BY n"), {"j": job_id}).all()
        (event,) = conn.execute(text("SELECT data::text FROM job_events WHERE job_id = :j "
                                     "AND type = 'job.succeeded'"), {"j": job_id}).one()
    png = base64.b64decode(TINY_PNG_B64)
    assert [(r.n, r.media_type, bytes(r.content)) for r in kept] == [
        (0, "image/png", png), (1, "image/png", png)]
    assert TINY_PNG_B64[:24] not in event and f"/v1/jobs/{job_id}/result/files/1" in event
    (attempt,) = rig.attempts(job_id)
    assert attempt.backend == "img-a" and attempt.outcome == "succeeded"
    counters = rig.provider("img-a")["counters"]
    assert counters["created"] == counters["submissions"] == 1
    assert rig.provider("img-b")["counters"]["submissions"] == 0
    price = actual_micros(rig.container.catalogue().get("img-a"),
                          Usage(images=2, image_size="1024x1024"))
    (bill,) = rig.provider("img-a")["bills"]
    assert job.cost_micros == attempt.cost_micros == price == bill["cost_micros"] == 80_000
    assert rig.ledger() == (price, 0)


def test_result_files_are_served_to_their_tenant_and_expire_with_the_last_result(
        rig: Rig) -> None:
    rig.control("img-a", image_format="b64_json")
    rig.start_worker()
    api = start_api(rig, ApiConfig(key_cache_s=0))
    try:
        (paid,) = rig.wait_final([rig.submit(image_files_job(cache=True))])
        (served,) = rig.wait_final([rig.submit(image_files_job(cache=True))])
        assert served.cached_from == paid.id and served.result == paid.result
        assert paid.result is not None
        path = paid.result["output"]["images"][1]
        own = api.tenant().get(path)
        assert own.status_code == 200, own.text
        assert own.content == base64.b64decode(TINY_PNG_B64)
        assert own.headers["content-type"] == "image/png"
        assert own.headers["x-content-type-options"] == "nosniff"
        assert api.tenant("globex").get(path).status_code == 404  # another tenant's
        assert api.tenant().get(f"/v1/jobs/{paid.id}/result/files/2").status_code == 404
        assert api.client(None).get(path).status_code == 401
        with Client(base_url=api.url, api_key=api.keys["acme"]) as sdk:
            assert sdk.result_file(path) == own.content
            with pytest.raises(ValueError, match="not a result file"):
                sdk.result_file("/v1/keys")

        async def fetch() -> bytes:
            async with AsyncClient(base_url=api.url, api_key=api.keys["acme"]) as sdk:
                return await sdk.result_file(path)

        assert asyncio.run(fetch()) == own.content

        # the paying job's result expires first: its files stay while the served one's lives
        with rig.engine.begin() as conn:
            conn.execute(text("UPDATE jobs SET finished_at = finished_at - interval '3 days' "
                              "WHERE id = :j"), {"j": paid.id})
        now = datetime.now(UTC)
        assert expire(rig.engine, 1, now).results == 1
        assert api.tenant().get(path).status_code == 200
        done = expire(rig.engine, 1, now + timedelta(days=2))
        assert (done.results, done.files) == (1, 2)
        gone = api.tenant().get(path)
        assert gone.status_code == 410 and gone.json()["error"]["code"] == "result_expired"
    finally:
        api.close()


# -- a refusal: the job fails for content policy, charged the refused call's bill ---------------

REFUSAL_TEXT = "I can't help with an honest ledger."


def refusal(usage: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-refused", "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": None,
                                             "refusal": REFUSAL_TEXT},
                     "finish_reason": "stop"}]}
    if usage:
        body["usage"] = {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}
    return body


def chain_with(r: Rig, handler: Callable[[httpx.Request], httpx.Response]) -> JobRunner:
    """The container's job chain, its adapters given ``handler`` for a provider."""
    c = r.container
    s = c.settings

    def adapter(name: str) -> BackendAdapter:
        return make_adapter(c.catalogue().get(name), httpx.MockTransport(handler))

    return JobRunner(c.engine, c.ledger, c.catalogue, c.health, adapter, utcnow,
                     PollPolicy(s.poll_min_s, s.poll_max_s, s.chain_grace_s))


def run(r: Rig, runner: JobRunner, job_id: uuid.UUID) -> None:
    token = r.job(job_id).chain_token
    assert token is not None
    run_chain(runner, job_id, token, timeout=20)


@pytest.mark.parametrize("usage", [True, False], ids=["usage", "no-usage"])
def test_a_refusal_fails_the_job_without_failover_charged_its_bill(rig: Rig,
                                                                   usage: bool) -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(200, json=refusal(usage))

    spec = text_job()
    job_id = rig.submit(spec)
    run(rig, chain_with(rig, handler), job_id)

    job = rig.job(job_id)
    assert job.status == "failed" and job.error_code == "content_policy"
    assert calls == ["/chat-a/v1/chat/completions"]  # no failover
    (attempt,) = rig.attempts(job_id)
    assert attempt.outcome == "failed" and attempt.fault == "job_fault"
    assert attempt.external_id == "chatcmpl-refused"
    cat = rig.container.catalogue()
    bill = (actual_micros(cat.get("chat-a"), Usage(input_tokens=100, output_tokens=10))
            if usage else estimate_micros(cat.get("chat-a"), spec))  # no bill: its worst case
    assert job.cost_micros == attempt.cost_micros == bill > 0
    # a worst case charged for want of a bill is marked so; a bill read is not
    assert attempt.possible_cost_micros == (None if usage else bill)
    assert REFUSAL_TEXT not in f"{job.error_message} {attempt.error_message} {job.result}"
    assert rig.ledger() == (bill, 0)


def test_a_refusal_answered_after_a_cancel_settles_the_hold_with_its_bill(rig: Rig) -> None:
    """The job is cancelled while its call runs; the refused call's bill is what the ending
    charges, at once (not the attempt's worst case once the call window has passed)."""
    job_id = rig.submit(text_job())

    def handler(request: httpx.Request) -> httpx.Response:
        cancelled = rig.container.runner.cancel(job_id, TENANT)
        assert cancelled is not None and cancelled.status == "cancelled"
        return httpx.Response(200, json=refusal())

    run(rig, chain_with(rig, handler), job_id)

    job = rig.job(job_id)
    bill = actual_micros(rig.container.catalogue().get("chat-a"),
                         Usage(input_tokens=100, output_tokens=10))
    assert job.status == "cancelled" and job.cost_micros == bill
    (attempt,) = rig.attempts(job_id)
    assert attempt.outcome == "failed" and attempt.cost_micros == bill
    with rig.engine.connect() as conn:
        assert conn.execute(text("SELECT status FROM holds WHERE job_id = :j"),
                            {"j": job_id}).scalar_one() != "held"  # finished now
    assert rig.ledger() == (bill, 0)


def test_a_chat_answer_with_no_choice_fails_over_charged_its_bill(rig: Rig) -> None:
    """chat-a, over the real wire, answers 200 with ``choices: []`` and the usage it bills:
    its attempt is the backend's failure charged that bill (not a lost answer, closed
    uncertain and uncharged), and the job fails over to chat-b (the simulator)."""
    with WireFake() as fake:
        fake.route("POST", "/v1/chat/completions", json_answer(200, {
            "id": "chatcmpl-empty", "choices": [],
            "usage": {"prompt_tokens": 100, "completion_tokens": 0}}))
        c = rig.container
        job_id = rig.submit(text_job())
        with runner_with_backend_at(rig, "chat-a", fake.url) as runner:
            run(rig, runner, job_id)
        assert len(fake.received("POST", "/v1/chat/completions")) == 1

    job = rig.job(job_id)
    assert job.status == "succeeded"
    first, second = rig.attempts(job_id)
    assert (first.backend, first.outcome, first.error_code) == ("chat-a", "failed",
                                                                "empty_output")
    assert first.fault == "backend_fault" and first.external_id == "chatcmpl-empty"
    bill = actual_micros(c.catalogue().get("chat-a"), Usage(input_tokens=100, output_tokens=0))
    assert first.cost_micros == bill > 0 and first.possible_cost_micros is None
    assert second.backend == "chat-b" and second.outcome == "succeeded"
    assert second.cost_micros is not None
    assert job.cost_micros == bill + second.cost_micros
    assert rig.ledger() == (bill + second.cost_micros, 0)


# what reasoning models' servers answer beside (or instead of) a string of content
VLLM_OUT_OF_TOKENS = ({"content": None, "reasoning_content": "Let me think about ledgers"},
                      "length", "")
MAGISTRAL = ({"content": [
    {"type": "thinking", "thinking": [{"type": "text", "text": "Let me think about ledgers"}]},
    {"type": "text", "text": "Balanced, "}, {"type": "text", "text": "to the cent."}]},
    "stop", "Balanced, to the cent.")


@pytest.mark.parametrize(("message", "finish_reason", "text"), [VLLM_OUT_OF_TOKENS, MAGISTRAL],
                         ids=["vllm-content-null", "mistral-content-chunks"])
def test_a_reasoning_models_answer_is_kept_charged_its_bill(
        rig: Rig, message: dict[str, Any], finish_reason: str, text: str) -> None:
    """chat-a, over the real wire, answers as servers of reasoning models do: vLLM (and
    the providers that serve models with it) ``content: null`` with the reasoning beside
    it when ``max_tokens`` ran out before the reasoning ended; Mistral's Magistral models
    ``content`` as a list of ``thinking`` and ``text`` chunks. The call was made and billed:
    the job keeps its text (empty when there is none, as OpenAI's own ``content: ""`` for
    the same ending) with the finish reason, charged that bill once. Taken for an
    unreadable answer, the attempt was closed uncertain, its bill uncharged, and the job
    paid again on chat-b."""
    with WireFake() as fake:
        fake.route("POST", "/v1/chat/completions", json_answer(200, {
            "id": "chatcmpl-thinking", "object": "chat.completion",
            "choices": [{"index": 0, "finish_reason": finish_reason,
                         "message": {"role": "assistant", **message}}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 200, "total_tokens": 300}}))
        job_id = rig.submit(text_job())
        with runner_with_backend_at(rig, "chat-a", fake.url) as runner:
            run(rig, runner, job_id)
        assert len(fake.received("POST", "/v1/chat/completions")) == 1

    job = rig.job(job_id)
    assert job.status == "succeeded" and job.backend == "chat-a", job.error_code
    # the answer only: a model's reasoning is no part of it
    assert job.result == {"output": {"text": text, "finish_reason": finish_reason}}
    (attempt,) = rig.attempts(job_id)  # no failover
    bill = actual_micros(rig.container.catalogue().get("chat-a"),
                         Usage(input_tokens=100, output_tokens=200))
    assert attempt.outcome == "succeeded" and attempt.external_id == "chatcmpl-thinking"
    assert job.cost_micros == attempt.cost_micros == bill > 0
    assert attempt.possible_cost_micros is None
    assert rig.provider("chat-b")["counters"]["submissions"] == 0
    assert rig.ledger() == (bill, 0)


def test_synchronous_answers_that_repeat_one_id_each_stay_their_jobs(rig: Rig) -> None:
    """A provider answering every call, done at once, with the same id (a constant some
    OpenAI-compatible servers send): the id is no reason to doubt any answer. Each job keeps
    its own, success or refusal, charged its own bill; nothing is looked up or failed over."""
    answers = [
        {"id": "chatcmpl-same", "object": "chat.completion",
         "choices": [{"index": 0, "message": {"role": "assistant", "content": "balanced"},
                      "finish_reason": "stop"}],
         "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}},
        {**refusal(), "id": "chatcmpl-same"}]
    sent: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(1)
        return httpx.Response(200, json=answers[0] if len(sent) <= 2 else answers[1])

    runner = chain_with(rig, handler)
    jobs = [rig.submit(text_job()) for _ in range(3)]
    for job_id in jobs:
        run(rig, runner, job_id)

    bill = actual_micros(rig.container.catalogue().get("chat-a"),
                         Usage(input_tokens=100, output_tokens=10))
    assert [rig.job(j).status for j in jobs] == ["succeeded", "succeeded", "failed"]
    for job_id in jobs:
        (attempt,) = rig.attempts(job_id)
        assert attempt.external_id == "chatcmpl-same" and attempt.cost_micros == bill
    assert len(sent) == 3
    assert rig.ledger() == (3 * bill, 0)
