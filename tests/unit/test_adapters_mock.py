"""Adapter behaviour the simulator cannot produce (malformed or odd provider answers), through
the adapters' one transport seam: an httpx.MockTransport."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from orchestrator.backends import (
    BackendAdapter,
    BackendError,
    BackendFault,
    JobFault,
    RetryPolicy,
    TransientError,
    make_adapter,
)
from orchestrator.backends import answers as answers_module
from orchestrator.backends.answers import safe_token
from orchestrator.backends.errors import LookupUnsupported, OutcomeUnknown
from orchestrator.backends.http import HttpAdapter
from orchestrator.domain.catalogue import BackendSpec, parse_catalogue
from orchestrator.domain.jobs import JobSpec
from orchestrator.domain.outcomes import Outcome
from orchestrator.retry_after import parse_retry_after

CATALOGUE = parse_catalogue({
    "backends": [
        {"name": "vid", "protocol": "predictions", "kinds": ["video"], "tier": "draft",
         "base_url": "http://provider.test/vid", "api_key_env": "ORCH_TEST_MOCK_KEY",
         "timeouts": {"connect_s": 1.5, "read_s": 7.0},
         "price": {"model": "per_second", "usd_per_second": 0.1,
                   "resolution_multipliers": {"720p": 1.0, "1080p": 2.0}}},
        {"name": "txt-pred", "protocol": "predictions", "kinds": ["text"], "tier": "standard",
         "base_url": "http://provider.test/txt-pred",
         "price": {"model": "per_token", "usd_per_1k_input": 0.001, "usd_per_1k_output": 0.002}},
        {"name": "txt", "protocol": "openai", "kinds": ["text"], "tier": "standard",
         "base_url": "http://provider.test/txt",
         "price": {"model": "per_token", "usd_per_1k_input": 0.001, "usd_per_1k_output": 0.002}},
        {"name": "txt-joins", "protocol": "openai", "kinds": ["text"], "tier": "standard",
         "base_url": "http://provider.test/txt-joins", "idempotency": "inflight",
         "price": {"model": "per_token", "usd_per_1k_input": 0.001, "usd_per_1k_output": 0.002}},
        {"name": "img", "protocol": "openai", "kinds": ["image"], "tier": "standard",
         "base_url": "http://provider.test/img",
         "price": {"model": "per_image", "usd_per_image": {"1024x1024": 0.04}}},
        {"name": "gpu", "protocol": "predictions", "kinds": ["video"], "tier": "standard",
         "base_url": "http://provider.test/gpu",
         "price": {"model": "per_compute_second", "usd_per_second": 0.0014}},
    ]
})
VIDEO = JobSpec.model_validate(
    {"kind": "video", "input": {"prompt": "top secret prompt", "duration_s": 4}}
)
TEXT = JobSpec.model_validate({"kind": "text", "input": {"prompt": "top secret prompt"}})
IMAGE = JobSpec.model_validate({"kind": "image", "input": {"prompt": "top secret prompt"}})

Handler = Callable[[httpx.Request], httpx.Response]
NO_SLEEP = RetryPolicy(attempts=3, initial_s=0.0, max_wait_s=0.0, sleep=lambda s: None)


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees the warnings said once per backend (warn_once) anew."""
    monkeypatch.setattr(answers_module, "_WARNED", set())


def mock(name: str, handler: Handler, retry: RetryPolicy = NO_SLEEP) -> BackendAdapter:
    spec: BackendSpec = CATALOGUE.get(name)
    return make_adapter(spec, httpx.MockTransport(handler), retry=retry)


def answer(body: Any, status: int = 200, **headers: str) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(body, bytes):
            return httpx.Response(status, content=body, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    return handler


def prediction(**fields: Any) -> dict[str, Any]:
    return {"id": "p1", "status": "succeeded", "output": "http://x/v.mp4",
            "metrics": {"video_seconds": 4, "resolution": "720p"}, "cost_usd": 0.4, **fields}


CHAT = {"id": "c1", "choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 20}, "cost_usd": 0.00005}


@pytest.mark.parametrize(
    ("name", "job", "body", "what"),
    [
        ("vid", VIDEO, b"<html>bad gateway</html>", "not JSON"),
        ("vid", VIDEO, [1, 2], "not a JSON object"),
        ("vid", VIDEO, {"status": "starting"}, "no readable prediction id"),
        # an id we could not store (attempts.external_id: 200 characters, no NUL)
        ("vid", VIDEO, {"id": "p\x001", "status": "starting"}, "no readable prediction id"),
        ("vid", VIDEO, {"id": "p" * 201, "status": "starting"}, "no readable prediction id"),
        ("vid", VIDEO, b"[" * 100_000, "not JSON"),  # nested beyond what can be read
        ("txt", TEXT, {**CHAT, "cost_usd": 1e30}, "cost_usd"),
        ("txt", TEXT, {**CHAT, "cost_usd": 1e13}, "out of range"),
        # (an empty list is an answer without a choice: test_wire, the backend's failure)
        ("txt", TEXT, {**CHAT, "choices": None}, "no choices"),
        ("txt", TEXT, {**CHAT, "choices": ["ok"]}, "no choices"),
        # a usage that is there is read as the API says, or the answer is unreadable
        ("txt", TEXT, {**CHAT, "usage": "lots"}, "usage is not an object"),
        ("txt", TEXT, {**CHAT, "usage": {"prompt_tokens": "10", "completion_tokens": 2}},
         "token counts"),
        ("txt", TEXT, {**CHAT, "usage": {"prompt_tokens": 10, "completion_tokens": -2}},
         "token counts"),
        ("txt", TEXT, {**CHAT, "choices": [{"message": {"content": {"text": "ok"}},
                                            "finish_reason": "stop"}]},
         "message content is not text"),
        ("txt", TEXT, {**CHAT, "choices": [{"message": {"content": ["ok"]},
                                            "finish_reason": "stop"}]},
         "content chunk is not an object"),
        ("txt", TEXT, {**CHAT, "choices": [{"message": {"content": [{"type": "text"}]},
                                            "finish_reason": "stop"}]},
         "text chunk has no text"),
        ("txt", TEXT, {**CHAT, "cost_usd": "lots"}, "cost_usd"),
        ("txt", TEXT, {**CHAT, "cost_usd": -1}, "negative"),
        ("img", IMAGE, {"data": [{"b64": "..."}], "cost_usd": 0.04}, "no url"),
        ("img", IMAGE, {"data": [{"b64_json": 12}], "cost_usd": 0.04}, "not base64"),
        ("img", IMAGE, {"data": [{"b64_json": ""}], "cost_usd": 0.04}, "not base64"),
        ("img", IMAGE, {"data": [{"b64_json": "iVBO\u0000Rw=="}], "cost_usd": 0.04},
         "not base64"),  # jsonb could not store it
        ("img", IMAGE, {"data": None, "cost_usd": 0.04}, "no data"),
    ],
)
def test_unreadable_submit_answers_are_outcomes_unknown_not_retried(
    name: str, job: JobSpec, body: Any, what: str
) -> None:
    """A 2xx answer to a create means the provider took the request: whatever we make of the
    answer, the work may exist and be billed, so it is reconciled, never failed over as if
    nothing had been made (and never re-sent within the call)."""
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return answer(body)(request)

    with pytest.raises(OutcomeUnknown) as info:
        mock(name, handler).submit(job, "k1")
    assert info.value.details["cause"] == "malformed_response" and what in info.value.message
    assert info.value.strike is True and len(calls) == 1


@pytest.mark.parametrize("output", [None, "", "  ", [], [None, ""], {}])
def test_a_prediction_that_succeeds_with_nothing_is_a_billed_failure(output: Any) -> None:
    """Done, and nothing delivered: the backend's failure (a strike; another backend may do
    better), charged what the answer bills, not an unreadable answer closed uncertain."""
    res = mock("vid", answer(prediction(output=output))).poll("p1")
    assert res.status == "failed" and res.output is None
    assert isinstance(res.error, BackendFault) and res.error.code == "empty_output"
    assert res.error.strike is True
    assert res.cost_micros == 400_000  # its metrics priced: 4 s x $0.1, as on success


@pytest.mark.parametrize(("data", "cost_usd", "charged"), [
    ([], 0.04, 40_000), ([], None, 0),
    ([{"url": ""}], 0.04, 40_000), ([{"url": " ", "b64_json": None}], 0.02, 20_000),
    # no bill said: the items answered, each at its price (the provider may bill them)
    ([{"url": ""}], None, 40_000), ([{"url": ""}, {"url": ""}], None, 80_000)])
def test_an_image_call_answered_with_no_image_is_a_failure_charged_its_cost(
        data: list[Any], cost_usd: float | None, charged: int) -> None:
    """No image, or only empty urls: nothing delivered, the backend's failure (it fails
    over), not a success whose image is an empty string. Charged the answer's cost_usd, else
    its items' price."""
    sub = mock("img", answer({"data": data, "cost_usd": cost_usd})).submit(IMAGE, "k1")
    assert sub.result is not None and sub.result.status == "failed"
    assert isinstance(sub.result.error, BackendFault)
    assert sub.result.error.code == "empty_output" and sub.result.cost_micros == charged


def test_an_empty_url_beside_images_is_left_out_of_the_output_and_charged() -> None:
    """The result shows the images delivered; the charge counts every item answered, as a
    provider that made an image and failed to store it may bill it."""
    two = {"data": [{"url": "https://cdn.test/a.png"}, {"url": ""}]}
    sub = mock("img", answer(two)).submit(IMAGE, "k1")
    assert sub.result is not None and sub.result.status == "succeeded"
    assert sub.result.output == {"images": ["https://cdn.test/a.png"]}
    assert sub.result.usage is not None and sub.result.usage.images == 2
    assert sub.result.cost_micros == 80_000


@pytest.mark.parametrize(
    ("fields", "charged", "unpriced"),
    [
        # Replicate's timestamps, a run of 12.5 s: charged at $0.0014/s
        ({"started_at": "2026-01-05T10:00:00.000000Z",
          "completed_at": "2026-01-05T10:00:12.500000Z"}, 17_500, False),
        ({"started_at": "2026-01-05T10:00:00+00:00",
          "completed_at": "2026-01-05T10:00:12.5+00:00"}, 17_500, False),
        # no run time to tell: a success is charged its worst case (unpriced)
        ({"started_at": "2026-01-05T10:00:00Z", "completed_at": None}, None, True),
        ({"started_at": "soon", "completed_at": "later"}, None, True),
        ({"started_at": "2026-01-05T10:00:12Z", "completed_at": "2026-01-05T10:00:00Z"},
         None, True),  # ends before it starts
    ],
)
def test_a_run_without_predict_time_is_priced_by_its_timestamps(
        fields: dict[str, Any], charged: int | None, unpriced: bool) -> None:
    body = {"id": "p1", "status": "succeeded", "output": "http://x/v.mp4", "metrics": None,
            **fields}
    res = mock("gpu", answer(body)).poll("p1")
    assert res.status == "succeeded" and res.cost_micros == charged
    assert res.unpriced is unpriced


def test_a_cancelled_run_without_predict_time_is_charged_the_time_it_ran() -> None:
    body = {"id": "p1", "status": "canceled", "metrics": {},
            "started_at": "2026-01-05T10:00:00Z", "completed_at": "2026-01-05T10:00:02Z"}
    res = mock("gpu", answer(body)).poll("p1")
    assert res.status == "cancelled" and res.cost_micros == 2_800  # 2 s x $0.0014


@pytest.mark.parametrize("status", ["warming", "QUEUED", "IN_PROGRESS"])
def test_a_prediction_in_a_status_we_do_not_know_is_running(status: str) -> None:
    """The provider named the work: it is polled on, not dropped while it may still bill."""
    handler = answer({"id": "p1", "status": status})
    sub = mock("vid", handler).submit(VIDEO, "k1")
    assert sub.external_id == "p1" and sub.result is None
    polled = mock("vid", handler).poll("p1")
    assert polled.status == "running" and not polled.done


def test_common_spellings_of_an_ending_are_read() -> None:
    done = mock("vid", answer(prediction(status="COMPLETED"))).poll("p1")
    assert done.status == "succeeded" and done.provider_status == "COMPLETED"
    gone = mock("vid", answer({"id": "p1", "status": "aborted"})).poll("p1")
    assert gone.status == "cancelled" and gone.cost_micros == 0


@pytest.mark.parametrize(
    ("status", "ended"),
    [
        ("TIMED_OUT", "failed"),  # RunPod
        ("timed-out", "failed"),
        ("timeout", "failed"),
        ("expired", "failed"),
        ("Fail", "failed"),  # MiniMax
        ("failure", "failed"),
        ("succeed", "succeeded"),  # Kling
        ("Success", "succeeded"),  # MiniMax
        ("done", "succeeded"),
        ("complete", "succeeded"),
        ("finished", "succeeded"),
        ("cancelled_by_user", "cancelled"),
    ],
)
def test_other_providers_spellings_of_an_ending_end_the_prediction(
    status: str, ended: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Not polled as running until start_to_close (600 s or more) for a word we did not know."""
    with caplog.at_level(logging.WARNING, logger="orchestrator.backends"):
        res = mock("vid", answer(prediction(status=status))).poll("p1")
    assert res.status == ended and res.done and res.provider_status == status
    if ended == "failed":
        assert isinstance(res.error, BackendFault) and res.error.code == "prediction_failed"
    assert "unknown" not in caplog.text


def test_an_unknown_status_is_warned_of_once_per_backend_and_status(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="orchestrator.backends"):
        for _ in range(3):
            assert mock("vid", answer({"id": "p1", "status": "Dreaming"})).poll("p1").status \
                == "running"
            mock("txt-pred", answer({"id": "p1", "status": "dreaming"})).poll("p1")
    warned = [r.getMessage() for r in caplog.records if "status unknown" in r.getMessage()]
    assert warned == [
        "backend status unknown; polled as running backend=vid provider_status=Dreaming",
        "backend status unknown; polled as running backend=txt-pred provider_status=dreaming",
    ]


def test_the_unknown_statuses_remembered_are_bounded(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    seen: set[tuple[str, ...]] = set()
    monkeypatch.setattr(answers_module, "_WARNED", seen)
    monkeypatch.setattr(answers_module, "_WARNED_MAX", 3)
    with caplog.at_level(logging.WARNING, logger="orchestrator.backends"):
        for i in range(10):
            mock("vid", answer({"id": "p1", "status": f"phase{i}"})).poll("p1")
            assert len(seen) <= 3
    assert sum("status unknown" in r.getMessage() for r in caplog.records) == 10


@pytest.mark.parametrize(
    ("body", "what"),
    [
        (prediction(metrics={"video_seconds": "four", "resolution": "720p"}), "video_seconds"),
        (prediction(metrics={"video_seconds": "-4", "resolution": "720p"}), "video_seconds"),
        (prediction(metrics={"video_seconds": "4e3", "resolution": "720p"}), "video_seconds"),
        (prediction(metrics={"video_seconds": 4, "resolution": 720}), "resolution"),
        ({"id": "p1", "output": "http://x/v.mp4"}, "no status"),
        (prediction(status="failed", metrics={"video_seconds": 4}, cost_usd=None),
         "cannot be priced"),
        (prediction(metrics=[4]), "metrics"),
        (prediction(metrics={"video_seconds": 10**400, "resolution": "720p"}), "video_seconds"),
        (prediction(metrics={"video_seconds": 4, "resolution": "720p"}, cost_usd=10**400),
         "cost_usd"),
    ],
)
def test_malformed_poll_answers(body: dict[str, Any], what: str) -> None:
    with pytest.raises(BackendFault) as info:
        mock("vid", answer(body)).poll("p1")
    assert info.value.code == "malformed_response" and what in info.value.message


def test_metrics_sent_as_strings_of_digits_are_read_as_their_numbers() -> None:
    """A gateway that quotes its numbers must not make a finished prediction unreadable:
    its output would be lost, and the work paid again elsewhere."""
    quoted = mock("vid", answer(prediction(metrics={"video_seconds": "4",
                                                    "resolution": "720p"}))).poll("p1")
    plain = mock("vid", answer(prediction())).poll("p1")
    assert quoted.status == "succeeded" and quoted.cost_micros == plain.cost_micros == 400_000
    assert quoted.usage == plain.usage
    half = mock("vid", answer(prediction(metrics={"video_seconds": "4.5",
                                                  "resolution": "720p"}))).poll("p1")
    assert half.usage is not None and half.usage.video_seconds == 4.5


@pytest.mark.parametrize("quoted", ["4.912345678901234", "0.012683000000000001"])
def test_a_run_time_quoted_with_all_its_floats_digits_is_read(quoted: str) -> None:
    """A gateway that quotes a float as ``str()`` or JavaScript's ``String()`` writes it
    with up to 17 significant digits (a run time it computed from two timestamps): that
    is a string of digits too, read as its number, not an unreadable answer whose output
    is lost while the provider bills the run."""
    res = mock("gpu", answer(prediction(metrics={"predict_time": quoted}))).poll("p1")
    assert res.status == "succeeded" and res.usage is not None
    assert res.usage.compute_seconds == float(quoted)
    plain = mock("gpu", answer(prediction(metrics={"predict_time": float(quoted)}))).poll("p1")
    assert res.cost_micros == plain.cost_micros is not None


def test_counts_written_as_whole_floats_are_read_as_their_numbers() -> None:
    """JSON has one number type: a server that counts tokens in floats writes ``10.0``.
    Refused, a paid answer would be unreadable, reconciled as a lost one and paid again on
    another backend. A count that is not whole stays unreadable."""
    floats = mock("txt", answer({**CHAT, "usage": {"prompt_tokens": 10.0,
                                                   "completion_tokens": 20.0}})).submit(TEXT, "k1")
    ints = mock("txt", answer(CHAT)).submit(TEXT, "k1")
    assert floats.result is not None and ints.result is not None
    assert floats.result.status == "succeeded" and floats.result.usage == ints.result.usage
    assert floats.result.cost_micros == ints.result.cost_micros == 50  # 10 + 40 micro-USD
    assert floats.result.usage is not None and type(floats.result.usage.output_tokens) is int
    for half in ({"prompt_tokens": 10.5, "completion_tokens": 20},
                 {"prompt_tokens": 10, "completion_tokens": 1e300},
                 {"prompt_tokens": True, "completion_tokens": 20}):
        with pytest.raises(OutcomeUnknown, match="token counts"):
            mock("txt", answer({**CHAT, "usage": half})).submit(TEXT, "k1")

    body = {"id": "p1", "status": "succeeded", "output": "hi",
            "metrics": {"input_token_count": 1000.0, "output_token_count": 500.0}}
    res = mock("txt-pred", answer(body)).poll("p1")
    assert res.usage is not None and (res.usage.input_tokens, res.usage.output_tokens) == (
        1000, 500)
    assert res.cost_micros == 2_000
    quoted = mock("txt-pred", answer({**body, "metrics": {"input_token_count": "1000.0",
                                                           "output_token_count": "500"}}))
    assert quoted.poll("p1").usage == res.usage
    for half in (499.5, "499.5"):
        with pytest.raises(BackendFault, match="output_token_count"):
            mock("txt-pred", answer({**body, "metrics": {"input_token_count": 1000,
                                                          "output_token_count": half}})).poll("p1")


def test_a_resolution_in_capitals_or_left_out_where_all_cost_the_same_is_priced() -> None:
    """``720P`` is the catalogue's ``720p``; a video without a resolution on a backend whose
    resolutions all cost the same is priced at that one price. Either, unmatched, was charged
    its worst case instead of its bill."""
    shouted = mock("vid", answer(prediction(metrics={"video_seconds": 4, "resolution": " 720P "}
                                            ))).poll("p1")
    assert shouted.usage is not None and shouted.usage.resolution == "720p"
    assert shouted.cost_micros == 400_000 and not shouted.unpriced
    flat = parse_catalogue({"backends": [
        {"name": "flat", "protocol": "predictions", "kinds": ["video"], "tier": "draft",
         "base_url": "http://provider.test/flat",
         "price": {"model": "per_second", "usd_per_second": 0.1}}]}).get("flat")
    unsaid = make_adapter(flat, httpx.MockTransport(answer(prediction(
        metrics={"video_seconds": 4}, cost_usd=None))), retry=NO_SLEEP).poll("p1")
    assert unsaid.status == "succeeded" and unsaid.cost_micros == 400_000
    assert not unsaid.unpriced
    # where they differ, a video without its resolution cannot be priced by its metrics
    res = mock("vid", answer(prediction(metrics={"video_seconds": 4}, cost_usd=None))).poll("p1")
    assert res.unpriced and res.cost_micros is None


def test_cost_mismatch_is_flagged_and_usage_wins(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="orchestrator.backends"):
        res = mock("vid", answer(prediction(cost_usd=0.5))).poll("p1")
    assert res.cost_micros == 400_000 and res.reported_cost_micros == 500_000
    assert res.cost_mismatch
    assert "computed_micros=400000 reported_micros=500000" in caplog.text


def test_reported_cost_is_used_when_no_usage_is_reported() -> None:
    res = mock("vid", answer(prediction(metrics=None, cost_usd=0.123456))).poll("p1")
    assert res.status == "succeeded" and res.usage is None
    assert res.cost_micros == res.reported_cost_micros == 123_456


def test_replicates_token_counts_are_read_as_usage() -> None:
    """Replicate's language models report ``input_token_count`` and ``output_token_count``
    (beside timings we do not price) and no cost."""
    body = {"id": "p1", "status": "succeeded", "output": ["Hello", " world"],
            "metrics": {"input_token_count": 1000, "output_token_count": 500,
                        "predict_time": 1.25, "tokens_per_second": 400.0,
                        "time_to_first_token": 0.1}}
    res = mock("txt-pred", answer(body)).poll("p1")
    assert res.status == "succeeded" and not res.unpriced
    assert res.usage is not None
    assert (res.usage.input_tokens, res.usage.output_tokens) == (1000, 500)
    assert res.cost_micros == 2_000  # 1k x $0.001 + 0.5k x $0.002
    assert res.reported_cost_micros is None
    ours = {**body, "metrics": {"input_tokens": 10, "input_token_count": 1000,
                                "output_token_count": 500}}
    res = mock("txt-pred", answer(ours)).poll("p1")  # our own name wins
    assert res.usage is not None and res.usage.input_tokens == 10
    with pytest.raises(BackendFault) as info:
        mock("txt-pred", answer({**body, "metrics": {"input_token_count": "1e3",
                                                      "output_token_count": 500}})).poll("p1")
    assert "input_token_count is not a non-negative integer" in info.value.message


def test_replicates_success_with_timings_only_is_kept_and_charged_its_worst_case(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Replicate's answer: ``metrics`` with timings and no ``cost_usd``. The output is kept
    (``unpriced``: the chain charges the attempt's worst case), never failed over and paid
    again; a warning names the backend, never the output."""
    body = {"id": "p1", "status": "succeeded", "output": "http://x/secret-output.mp4",
            "error": None, "metrics": {"predict_time": 12.3, "total_time": 14}}
    with caplog.at_level(logging.WARNING, logger="orchestrator.backends"):
        res = mock("vid", answer(body)).poll("p1")
    assert res.status == "succeeded" and res.output == "http://x/secret-output.mp4"
    assert res.unpriced and res.cost_micros is None and res.reported_cost_micros is None
    assert not res.cost_mismatch
    assert "backend=vid" in caplog.text and "worst case" in caplog.text
    assert "secret-output" not in caplog.text
    # the same with a cost_usd: that is the bill (the timings are ignored)
    priced = mock("vid", answer({**body, "cost_usd": 0.3})).poll("p1")
    assert not priced.unpriced and priced.cost_micros == priced.reported_cost_micros == 300_000
    # and usage beside metrics we do not know is priced as ever
    known = mock("vid", answer(prediction(
        metrics={"video_seconds": 4, "resolution": "720p", "predict_time": 12.3,
                 "gpu": "a100", "total_time": {"wall": 14}}, cost_usd=None))).poll("p1")
    assert not known.unpriced and known.cost_micros == 400_000


@pytest.mark.parametrize(
    "metrics",
    [
        {"video_seconds": 4},  # no resolution, and the backend prices two
        {"video_seconds": 4, "resolution": "8k"},  # a resolution it does not price
        {"resolution": "720p"},  # no seconds
    ],
)
def test_usage_that_cannot_be_priced_gives_way_to_the_reported_cost(
    metrics: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="orchestrator.backends"):
        res = mock("vid", answer(prediction(metrics=metrics, cost_usd=0.55))).poll("p1")
    assert res.status == "succeeded" and not res.unpriced
    assert res.cost_micros == res.reported_cost_micros == 550_000
    assert caplog.text == ""
    # without a cost_usd, it is kept unpriced (charged its worst case)
    bare = mock("vid", answer(prediction(metrics=metrics, cost_usd=None))).poll("p1")
    assert bare.status == "succeeded" and bare.unpriced and bare.cost_micros is None
    assert bare.output == "http://x/v.mp4"
    # a failed one that reports a cost is charged it
    failed = mock("vid", answer(prediction(status="failed", metrics=metrics,
                                           cost_usd=0.1))).poll("p1")
    assert failed.status == "failed" and failed.cost_micros == 100_000


def test_a_success_without_metrics_or_cost_is_kept_unpriced() -> None:
    res = mock("vid", answer(prediction(metrics=None, cost_usd=None))).poll("p1")
    assert res.status == "succeeded" and res.unpriced and res.cost_micros is None
    assert res.output == "http://x/v.mp4"
    found = mock("vid", answer({"results": [{**prediction(metrics=None, cost_usd=None),
                                             "idempotency_key": "k1"}]})).lookup("k1")
    assert found is not None and found.result is not None and found.result.unpriced


def test_request_carries_key_idempotency_and_catalogue_timeouts(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("ORCH_TEST_MOCK_KEY", "sk-live-123")
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 1:
            return httpx.Response(503)
        return httpx.Response(201, json={"id": "p9", "status": "starting"})

    with caplog.at_level(logging.DEBUG):
        sub = mock("vid", handler).submit(VIDEO, "job-42:1")
    assert sub.external_id == "p9" and sub.result is None
    req = seen[-1]
    assert req.url == "http://provider.test/vid/v1/predictions"
    assert req.headers["Authorization"] == "Bearer sk-live-123"
    assert req.headers["Idempotency-Key"] == "job-42:1"
    assert json.loads(req.content) == {"input": VIDEO.input}
    assert req.extensions["timeout"] == {"connect": 1.5, "read": 7.0, "write": 7.0, "pool": 1.5,
                                          "total": 7.0}
    assert "sk-live-123" not in caplog.text and "top secret" not in caplog.text
    assert "retrying backend=vid" in caplog.text


def test_a_replicate_model_is_named_as_the_version_of_each_create() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"id": "p9", "status": "starting"})

    replicate = CATALOGUE.get("gpu").model_copy(update={
        "provider_model": "minimax/video-01",
        "base_url": "https://api.replicate.com/v1"})
    make_adapter(replicate, httpx.MockTransport(handler), retry=NO_SLEEP).submit(VIDEO, "j:1")
    (req,) = seen
    assert req.url == "https://api.replicate.com/v1/predictions"
    assert json.loads(req.content) == {"version": "minimax/video-01", "input": VIDEO.input}
    mock("gpu", handler).submit(VIDEO, "j:2")  # no provider_model: no version
    assert json.loads(seen[-1].content) == {"input": VIDEO.input}


def test_no_authorization_header_without_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORCH_TEST_MOCK_KEY", raising=False)
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"id": "p9", "status": "starting"})

    mock("vid", handler).submit(VIDEO, "k")
    assert "Authorization" not in seen[0].headers


def test_provider_messages_never_reach_our_errors() -> None:
    body = {"error": {"code": "content_policy_violation", "param": "prompt",
                      "message": "Your prompt 'top secret prompt' was flagged"}}
    with pytest.raises(JobFault) as info:
        mock("txt", answer(body, status=400)).submit(TEXT, "k")
    err = info.value
    assert err.code == "content_policy"
    assert err.details["provider_code"] == "content_policy_violation"
    assert "top secret" not in str(err) and "top secret" not in repr(err.details)
    assert err.details["param"] == "prompt"


@pytest.mark.parametrize(
    ("status", "cls", "code"),
    [
        (401, BackendFault, "backend_auth"),
        (403, BackendFault, "backend_auth"),
        (404, BackendFault, "backend_not_found"),
        (402, BackendFault, "backend_payment_required"),
        (308, BackendFault, "backend_redirect"),
        (409, JobFault, "rejected"),
        (422, JobFault, "invalid_input"),
        (408, TransientError, "backend_timeout"),
        (500, TransientError, "backend_server_error"),
        (504, TransientError, "backend_unavailable"),
    ],
)
def test_status_codes_map_to_the_taxonomy(
    status: int, cls: type[BackendError], code: str
) -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(status, json={"detail": "nope"})

    with pytest.raises(cls) as info:
        mock("vid", handler).poll("p1")
    assert info.value.code == code
    assert info.value.strike is (status != 422 and status != 409)
    assert info.value.outcome is (Outcome.JOB_FAULT if cls is JobFault else Outcome.BACKEND_FAULT)
    assert len(calls) == (3 if cls is TransientError else 1)


def test_a_request_that_never_reached_the_provider_is_retried() -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) < 3:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json=CHAT)

    res = mock("txt", handler).submit(TEXT, "k").result
    assert res is not None and res.cost_micros == 50 and len(calls) == 3
    with pytest.raises(TransientError) as info:
        mock("txt", lambda r: (_ for _ in ()).throw(httpx.ConnectError("refused"))).submit(
            TEXT, "k")
    assert info.value.code == "backend_connection" and info.value.attempts == 3
    assert not info.value.delivered


@pytest.mark.parametrize("lost", [httpx.ReadTimeout, httpx.RemoteProtocolError,
                                  httpx.ReadError])
def test_a_sent_submission_whose_answer_is_lost_is_never_repeated_blindly(
    lost: type[httpx.TransportError],
) -> None:
    """Sent, then no answer: the provider may have created (and will bill) the work, so a
    backend that does not join in-flight repeats of a key is not sent it again."""
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        raise lost("gone", request=request)

    with pytest.raises(OutcomeUnknown) as info:
        mock("txt", handler).submit(TEXT, "k")
    assert len(calls) == 1 and info.value.code == "outcome_unknown"
    assert info.value.details["cause"] in ("backend_timeout", "backend_connection")
    calls.clear()
    with pytest.raises(OutcomeUnknown):
        mock("vid", handler).submit(VIDEO, "k")
    assert len(calls) == 1


def test_a_provider_that_joins_inflight_repeats_is_asked_again_with_the_same_key() -> None:
    keys: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers.get("idempotency-key"))
        if len(keys) < 3:
            raise httpx.ReadTimeout("slow", request=request)
        return httpx.Response(200, json=CHAT)

    res = mock("txt-joins", handler).submit(TEXT, "job:1").result
    assert res is not None and keys == ["job:1"] * 3


def test_polls_are_retried_after_a_lost_answer() -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) < 2:
            raise httpx.ReadTimeout("slow", request=request)
        return httpx.Response(200, json={"id": "p1", "status": "processing"})

    assert mock("vid", handler).poll("p1").status == "running" and len(calls) == 2


def test_lookup_finds_the_prediction_created_under_the_key() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json={"results": [
            {"id": "p9", "status": "processing", "idempotency_key": "job:1"}]})

    found = mock("vid", handler).lookup("job:1")
    assert found is not None and found.external_id == "p9"
    assert found.result is not None and found.result.status == "running"
    assert seen == ["http://provider.test/vid/v1/predictions?idempotency_key=job%3A1"]
    assert mock("vid", answer({"results": []})).lookup("job:1") is None


@pytest.mark.parametrize("reply", [
    answer({"detail": "Method Not Allowed"}, status=405),
    answer({"error": {"code": "not_found"}}, status=404),
    # a provider that ignores the filter and lists everyone's predictions
    answer({"results": [{"id": "other", "status": "succeeded"}]}),
    # ... and names their keys: a page of others' work says nothing of ours
    answer({"results": [{"id": "other", "status": "succeeded", "idempotency_key": "x:1"}]}),
    answer({"predictions": []}),
])
def test_lookup_is_unsupported_where_the_provider_cannot_answer_it_safely(
    reply: Handler,
) -> None:
    with pytest.raises(LookupUnsupported):
        mock("vid", reply).lookup("job:1")
    with pytest.raises(LookupUnsupported):
        mock("txt", reply).lookup("job:1")


def test_retry_stops_at_the_total_time_budget() -> None:
    waits: list[float] = []
    now = [0.0]

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    policy = RetryPolicy(attempts=10, total_s=5.0, max_retry_after_s=10.0, sleep=sleep,
                         clock=lambda: now[0])
    handler = answer({}, status=429, **{"Retry-After": "2"})
    with pytest.raises(TransientError) as info:
        mock("vid", handler, policy).poll("p1")
    # 2 s waits: after two of them (t=4 s) a third would end past the 5 s budget
    assert waits == [2.0, 2.0] and info.value.attempts == 3 and info.value.retry_after_s == 2.0


@pytest.mark.parametrize("retry_after", ["0", "Thu, 01 Jan 1970 00:00:00 GMT"])
def test_a_retry_after_of_nothing_left_to_wait_is_retried_after_the_backoff(
        retry_after: str) -> None:
    """A 429 whose Retry-After is 0, or an HTTP date whose second has begun (a limit that
    lifts within the second): the tries are spaced by the backoff, not all spent at once
    while the limit holds (to a create, the job then failed over, to a dearer backend)."""
    waits: list[float] = []
    now = [0.0]

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    policy = RetryPolicy(attempts=4, sleep=sleep, clock=lambda: now[0])
    with pytest.raises(TransientError):
        mock("vid", answer({}, status=429, **{"Retry-After": retry_after}), policy).poll("p1")
    assert len(waits) == 3 and all(w > 0 for w in waits), waits


def test_failed_status_without_a_code_is_a_prediction_failure() -> None:
    res = mock("vid", answer(prediction(status="failed", error="CUDA out of memory",
                                         metrics=None, cost_usd=None))).poll("p1")
    assert res.status == "failed" and res.cost_micros == 0
    assert isinstance(res.error, BackendFault) and res.error.code == "prediction_failed"
    assert "CUDA" not in res.error.message


@pytest.mark.parametrize(
    "error",
    [
        "NSFW content detected. Try running it again, or try a different prompt.",  # Replicate
        "Output flagged by the Safety checker",
        "Your request was rejected as a result of our Content Policy (top secret prompt)",
        "content_filter triggered",
    ],
)
def test_a_refusal_told_in_a_string_error_fails_the_job_as_content_policy(error: str) -> None:
    """Not a prediction_failed, which would send the same prompt to the next backend (and pay
    there); the provider's words are neither kept nor logged, only our code."""
    res = mock("vid", answer(prediction(status="failed", error=error, metrics=None,
                                         cost_usd=None))).poll("p1")
    assert res.status == "failed" and res.cost_micros == 0
    err = res.error
    assert isinstance(err, JobFault) and err.code == "content_policy"
    assert err.outcome is Outcome.JOB_FAULT
    assert "provider_code" not in err.details
    for words in ("NSFW content", "flagged", "top secret", "triggered"):
        assert words not in str(err) and words not in repr(err.details)


class CountingTransport(httpx.MockTransport):
    closed = 0

    def close(self) -> None:
        self.closed += 1


def test_an_injected_transport_is_left_open_by_close_and_an_own_one_closed() -> None:
    shared = CountingTransport(answer({}))
    make_adapter(CATALOGUE.get("vid"), shared).close()
    assert shared.closed == 0
    own = make_adapter(CATALOGUE.get("vid"))
    assert isinstance(own, HttpAdapter)
    own._transport = mine = CountingTransport(answer({}))  # the one it made, observed
    own.close()
    assert mine.closed == 1


def test_openai_adapter_refuses_video_jobs() -> None:
    with pytest.raises(BackendFault) as info:
        mock("txt", answer(CHAT)).submit(VIDEO, "k")
    assert info.value.code == "unsupported_kind"


def test_parse_retry_after_forms() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.25") == 0.25
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:09 GMT", now=lambda: now) == 9.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    assert parse_retry_after("nan") is None  # not 0: "now"
    assert parse_retry_after("1e999") == parse_retry_after("inf") == math.inf  # callers cap


def test_safe_token_strips_free_text() -> None:
    assert safe_token("content_policy_violation") == "content_policy_violation"
    assert safe_token("a b'c\"<d>") == "abcd"
    assert safe_token(True) is None and safe_token({"x": 1}) is None and safe_token("  ") is None


def test_the_openai_model_is_the_catalogues_provider_model_else_the_backend_name() -> None:
    sent: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(200, json=CHAT)

    named = CATALOGUE.get("txt").model_copy(update={"provider_model": "meta-llama/Llama-3-8B"})
    make_adapter(named, httpx.MockTransport(handler), retry=NO_SLEEP).submit(TEXT, "k1")
    mock("txt", handler).submit(TEXT, "k2")
    assert [b["model"] for b in sent] == ["meta-llama/Llama-3-8B", "txt"]


@pytest.mark.parametrize("status", [502, 504])
def test_a_gateway_error_to_a_create_is_an_outcome_unknown_not_a_resend(status: int) -> None:
    """Behind a gateway the provider may have taken the request and go on (and bill): a
    create is not sent again within the call, it is reconciled; a poll is retried."""
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        return httpx.Response(status, content=b"<html>gateway</html>")

    with pytest.raises(OutcomeUnknown) as info:
        mock("vid", handler).submit(VIDEO, "k1")
    assert info.value.details["cause"] == "backend_unavailable" and calls == ["POST"]
    calls.clear()
    with pytest.raises(TransientError):
        mock("vid", handler).poll("p1")
    assert calls == ["GET"] * 3


def test_a_gateway_error_to_a_create_is_resent_where_the_provider_joins_repeats() -> None:
    answers = iter([httpx.Response(504), httpx.Response(200, json=CHAT)])
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.headers["Idempotency-Key"])
        return next(answers)

    sub = mock("txt-joins", handler).submit(TEXT, "k1")
    assert sub.result is not None and calls == ["k1", "k1"]


@pytest.mark.parametrize("key", ["ключ-секрет", "sk-abc\r\nX-Injected: 1", "sk abc"])
def test_an_api_key_a_header_cannot_carry_is_a_backend_fault_without_a_request(
        monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    monkeypatch.setenv("ORCH_TEST_MOCK_KEY", key)
    calls: list[httpx.Request] = []
    with pytest.raises(BackendFault) as info:
        mock("vid", lambda r: calls.append(r) or httpx.Response(200)).submit(VIDEO, "k1")
    assert info.value.code == "backend_auth" and "ORCH_TEST_MOCK_KEY" in info.value.message
    assert key not in info.value.message and calls == []


def test_an_api_key_read_from_a_file_loses_its_trailing_newline(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_TEST_MOCK_KEY", "sk-live-123\n")
    sent: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers["Authorization"])
        return httpx.Response(201, json={"id": "p1", "status": "starting"})

    mock("vid", handler).submit(VIDEO, "k1")
    assert sent == ["Bearer sk-live-123"]


def test_a_flat_priced_prediction_needs_no_usage_and_is_charged_its_price() -> None:
    flat = CATALOGUE.get("vid").model_copy(update={"price": parse_catalogue({"backends": [{
        "name": "f", "protocol": "predictions", "kinds": ["video"], "tier": "draft",
        "base_url": "http://provider.test/f",
        "price": {"model": "per_request", "usd_per_request": 0.25}}]}).get("f").price})
    bare = answer(prediction(metrics=None, cost_usd=None))
    adapter = make_adapter(flat, httpx.MockTransport(bare), retry=NO_SLEEP)
    res = adapter.poll("p1")
    assert res.status == "succeeded" and res.cost_micros == 250_000
    failed = make_adapter(flat, httpx.MockTransport(answer({"id": "p1", "status": "failed"})),
                          retry=NO_SLEEP).poll("p1")
    assert failed.cost_micros == 0  # billed only when the provider says so


@pytest.mark.parametrize("status", ["succeeded", "failed", "canceled"])
def test_a_run_time_priced_prediction_is_charged_its_predict_time_however_it_ends(
        status: str) -> None:
    # Replicate's answer: timings only, no cost; the hardware bills the run's seconds
    body = {"id": "p1", "status": status, "output": "http://x/v.mp4",
            "metrics": {"predict_time": 12.5, "total_time": 14.2}}
    res = mock("gpu", answer(body)).poll("p1")
    assert res.status == ("cancelled" if status == "canceled" else status)
    assert res.cost_micros == 17_500  # 12.5 s x $0.0014
    assert not res.unpriced


def test_predict_time_is_a_timing_only_on_backends_not_priced_by_run_time() -> None:
    odd = {"predict_time": "12.3 s", "video_seconds": 4, "resolution": "720p"}
    assert mock("vid", answer(prediction(metrics=odd))).poll("p1").cost_micros == 400_000
    with pytest.raises(BackendFault, match="predict_time is not a non-negative number"):
        mock("gpu", answer(prediction(metrics=odd, cost_usd=None))).poll("p1")


def test_a_run_time_priced_success_without_predict_time_is_kept_unpriced() -> None:
    res = mock("gpu", answer(prediction(metrics={"total_time": 3}, cost_usd=None))).poll("p1")
    assert res.status == "succeeded" and res.unpriced and res.cost_micros is None
    failed = mock("gpu", answer({"id": "p1", "status": "failed", "metrics": {}})).poll("p1")
    assert failed.cost_micros == 0  # no run time reported: nothing to charge


# -- OpenAI answers outside the narrowest reading, as OpenAI and compatible servers give them --

NO_USAGE = {k: v for k, v in CHAT.items() if k not in ("usage", "cost_usd")}


@pytest.mark.parametrize(
    "body",
    [
        NO_USAGE,
        {**NO_USAGE, "usage": None},
        {**NO_USAGE, "usage": {}},
        {**NO_USAGE, "usage": {"total_tokens": 30}},
        {**NO_USAGE, "usage": {"prompt_tokens": 10, "completion_tokens": None}},
    ],
    ids=["absent", "null", "empty", "no-counts", "one-count"],
)
def test_a_chat_answer_without_usage_is_kept_unpriced(
        body: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    """Many compatible servers send no usage: the result is kept, not taken for an
    unreadable answer (which fails over and pays another backend); the chain charges the
    attempt's worst case. The warning names the backend, never the prompt or the text."""
    answer_text = "the model's own words"
    reply = {**body, "choices": [{"message": {"content": answer_text},
                                  "finish_reason": "stop"}]}
    with caplog.at_level(logging.WARNING, logger="orchestrator.backends"):
        sub = mock("txt", answer(reply)).submit(TEXT, "k1")
    res = sub.result
    assert res is not None and sub.external_id == "c1"
    assert res.status == "succeeded" and res.unpriced is True
    assert res.cost_micros is None and res.reported_cost_micros is None and res.usage is None
    assert res.output == {"text": answer_text, "finish_reason": "stop"}
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "txt" in record.getMessage()
    assert answer_text not in caplog.text and "top secret prompt" not in caplog.text


def test_a_chat_answer_without_usage_is_charged_its_cost_usd() -> None:
    sub = mock("txt", answer({**NO_USAGE, "cost_usd": 0.0125})).submit(TEXT, "k1")
    res = sub.result
    assert res is not None and res.status == "succeeded" and res.unpriced is False
    assert res.cost_micros == res.reported_cost_micros == 12_500 and res.usage is None


def test_a_chat_answer_without_an_id_is_named_by_the_idempotency_key() -> None:
    sub = mock("txt", answer({k: v for k, v in CHAT.items() if k != "id"})).submit(TEXT, "k1")
    assert sub.external_id == "k1"
    assert sub.result is not None and sub.result.status == "succeeded"
    assert sub.result.cost_micros == 50  # 10 x $0.001/1k + 20 x $0.002/1k


REFUSAL_TEXT = "I'm sorry, I can't help with writing that lighthouse poem."


@pytest.mark.parametrize(
    ("message", "finish_reason", "why"),
    [
        ({"role": "assistant", "content": None, "refusal": REFUSAL_TEXT}, "stop", "refusal"),
        ({"role": "assistant", "content": "", "refusal": REFUSAL_TEXT}, "stop", "refusal"),
        ({"role": "assistant", "content": None}, "content_filter", "content_filter"),
        ({"role": "assistant", "content": ""}, "content_filter", "content_filter"),
    ],
    ids=["openai", "openai-empty", "azure", "azure-empty"],
)
def test_a_refusal_fails_the_job_for_content_policy_and_carries_its_bill(
        message: dict[str, Any], finish_reason: str, why: str,
        caplog: pytest.LogCaptureFixture) -> None:
    """A refusal is the job's fault (another backend would refuse it too): no failover. The
    provider billed the call, so the failed result carries that bill; its text is dropped."""
    reply = {**CHAT, "choices": [{"index": 0, "message": message,
                                  "finish_reason": finish_reason}]}
    with caplog.at_level(logging.DEBUG):
        sub = mock("txt", answer(reply)).submit(TEXT, "k1")
    res = sub.result
    assert sub.external_id == "c1" and res is not None
    assert res.status == "failed" and res.done and res.output is None
    assert isinstance(res.error, JobFault) and res.error.code == "content_policy"
    assert res.error.outcome is Outcome.JOB_FAULT and res.error.strike is False
    assert res.cost_micros == 50 and res.unpriced is False  # its usage, priced
    assert res.provider_status == why
    shown = f"{res.error.message} {res.error.details} {res!r}"
    assert REFUSAL_TEXT not in shown and "lighthouse" not in caplog.text


def test_a_refusal_without_usage_is_unpriced_and_one_with_content_is_no_refusal() -> None:
    refused = {**NO_USAGE, "choices": [{"message": {"content": None, "refusal": "No."},
                                        "finish_reason": "stop"}]}
    res = mock("txt", answer(refused)).submit(TEXT, "k1").result
    assert res is not None and res.status == "failed" and res.unpriced is True
    assert res.cost_micros is None
    # a filter that cut the answer short leaves its text: that is the answer, kept
    cut = {**CHAT, "choices": [{"message": {"content": "Once upon"},
                                "finish_reason": "content_filter"}]}
    kept = mock("txt", answer(cut)).submit(TEXT, "k2").result
    assert kept is not None and kept.status == "succeeded"
    assert kept.output == {"text": "Once upon", "finish_reason": "content_filter"}


PNG_B64 = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4//8/AAX+Av4N70a4"
           "AAAAAElFTkSuQmCC")


def test_b64_json_images_come_back_as_data_urls(caplog: pytest.LogCaptureFixture) -> None:
    """gpt-image models answer only with base64 data (and no id): the images are kept, as
    data: URLs in the same list a URL would be, and charged their price."""
    reply = {"created": 1, "data": [{"b64_json": PNG_B64, "revised_prompt": None}] * 2,
             "usage": {"input_tokens": 50, "output_tokens": 50, "total_tokens": 100}}
    image2 = JobSpec.model_validate({"kind": "image", "input": {"prompt": "top secret prompt",
                                                                "n": 2}})
    with caplog.at_level(logging.DEBUG):
        sub = mock("img", answer(reply)).submit(image2, "k1")
    res = sub.result
    assert sub.external_id == "k1" and res is not None and res.status == "succeeded"
    assert res.output == {"images": [f"data:image/png;base64,{PNG_B64}"] * 2}
    assert res.cost_micros == 80_000 and res.unpriced is False
    assert PNG_B64 not in caplog.text
    jpeg = {"data": [{"b64_json": PNG_B64}, {"url": "https://x/y.png"}],
            "output_format": "jpeg"}
    mixed = mock("img", answer(jpeg)).submit(image2, "k2").result
    assert mixed is not None and mixed.output == {
        "images": [f"data:image/jpeg;base64,{PNG_B64}", "https://x/y.png"]}


@pytest.mark.parametrize("ext_id", ["c\n1", 42, "x" * 201])
def test_an_id_we_cannot_keep_is_replaced_by_the_key_not_a_reason_to_pay_again(
        ext_id: Any) -> None:
    """Nothing is polled by a synchronous answer's id: one we cannot store is no reason to
    throw the paid answer away (and pay another backend)."""
    sub = mock("txt", answer({**CHAT, "id": ext_id})).submit(TEXT, "k1")
    assert sub.external_id == "k1" and sub.result is not None
    assert sub.result.status == "succeeded" and sub.result.cost_micros == 50
    images = mock("img", answer({"id": ext_id, "data": [{"url": "http://x/1.png"}]}))
    assert images.submit(IMAGE, "k2").external_id == "k2"


def test_base64_with_line_breaks_or_the_url_safe_alphabet_is_kept() -> None:
    body = {"data": [{"b64_json": "iVBO\nRw0K-_8="}]}
    res = mock("img", answer(body)).submit(IMAGE, "k").result
    assert res is not None and res.output == {"images": ["data:image/png;base64,iVBORw0K+/8="]}


def test_a_string_error_that_only_mentions_safety_is_the_backends_failure() -> None:
    """"safety checker crashed" says the backend failed, not that the prompt was refused:
    another backend may run the job."""
    res = mock("vid", answer(prediction(status="failed", metrics=None, cost_usd=None,
                                        error="safety checker crashed: CUDA out of memory"))
               ).poll("p1")
    assert res.error is not None and res.error.code == "prediction_failed"


def test_a_backend_that_never_reports_a_bill_is_warned_of_once(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="orchestrator.backends"):
        for _ in range(3):
            res = mock("vid", answer(prediction(metrics={"predict_time": 3.2}, cost_usd=None))
                       ).poll("p1")
            assert res.unpriced
    assert sum("without a bill" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("words", ["NSFW checker crashed: CUDA out of memory",
                                   "feature unflagged", "nsfw_filter module not found"])
def test_a_string_error_that_only_names_a_filter_is_the_backends_failure(words: str) -> None:
    res = mock("vid", answer(prediction(status="failed", metrics=None, cost_usd=None,
                                        error=words))).poll("p1")
    assert res.error is not None and res.error.code == "prediction_failed"


def test_a_refused_call_is_logged_as_what_it_was_not_as_a_refused_job(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A cancel answered 409 for a prediction that already ended: the log names the cancel
    (the next poll reads what the provider says), not a create the provider rejected."""
    refused = answer({"detail": "prediction already finished"}, 409)
    with caplog.at_level(logging.WARNING, logger="orchestrator.backends"):
        for call in (lambda a: a.cancel("p1"), lambda a: a.poll("p1")):
            with pytest.raises(BackendError):
                call(mock("vid", refused))
    failed = [r.getMessage() for r in caplog.records if "backend call failed" in r.getMessage()]
    assert [m.split(" code=")[0] for m in failed] == [
        "backend call failed backend=vid call=cancel",
        "backend call failed backend=vid call=poll",
    ]
