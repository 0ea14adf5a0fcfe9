"""The adapters over production's wire against a provider that misbehaves on it
(``wire_fakes``): what a create or a poll comes to when the answer is followed by bytes that
are no part of it, when the server switches protocols, or when a poll answers for another
prediction."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from typing import Any

import pytest

from orchestrator.backends import BackendFault, RetryPolicy, TransientError, make_adapter
from orchestrator.backends import transport as transport_module
from orchestrator.backends.base import BackendAdapter
from orchestrator.backends.errors import OutcomeUnknown
from orchestrator.backends.transport import Http11Transport
from orchestrator.domain.jobs import JobSpec

from .wire_fakes import WireFake, backend_at, json_answer, json_bytes, raw

CREATE = ("POST", "/v1/predictions")
POLL = ("GET", "/v1/predictions/p-1")
FAST = RetryPolicy(attempts=3, initial_s=0.001, max_wait_s=0.01, total_s=5.0,
                   max_retry_after_s=1.0)


@pytest.fixture()
def fake() -> Iterator[WireFake]:
    with WireFake() as server:
        yield server


@pytest.fixture()
def adapter(fake: WireFake) -> Iterator[BackendAdapter]:
    transport = Http11Transport()
    yield make_adapter(backend_at(fake.url), transport, retry=FAST)
    transport.close()


def video() -> JobSpec:
    return JobSpec.model_validate({"kind": "video", "input": {"prompt": "a lighthouse",
                                                               "duration_s": 4}})


def prediction(**fields: Any) -> dict[str, Any]:
    return {"id": "p-1", "status": "succeeded", "output": "https://cdn/p-1.mp4",
            "metrics": {"video_seconds": 4}, **fields}


@pytest.mark.parametrize("after", [
    b"\n<!-- served by edge-7 -->",  # bytes past the Content-Length
    b"HTTP/1.1 2",  # the start of another answer
    json_bytes(200, {"id": "p-other"}),  # another answer whole, in the same packet
], ids=["garbage", "partial-answer", "second-answer"])
def test_bytes_after_a_whole_create_answer_neither_lose_nor_replace_it(
        fake: WireFake, adapter: BackendAdapter, after: bytes) -> None:
    """The provider made the work and said so: whatever follows its answer on the
    connection must not make it a lost answer (reconciled; on a provider that does not
    de-duplicate, closed uncertain and paid again elsewhere), nor another answer's id."""
    fake.route(*CREATE, raw(json_bytes(201, {"id": "p-1", "status": "starting"}) + after))
    fake.route(*POLL, json_answer(200, prediction()))
    assert adapter.submit(video(), "job-1:1").external_id == "p-1"
    # the connection, with bytes the server sent past its answer, is not used again: the
    # poll's answer is its own
    assert adapter.poll("p-1").status == "succeeded"
    assert len(fake.received(*CREATE)) == 1


def test_a_server_switching_protocols_is_a_lost_answer_to_a_create_and_transient_to_a_poll(
        fake: WireFake, adapter: BackendAdapter) -> None:
    upgrade = raw(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n"
                  b"Connection: Upgrade\r\n\r\n")
    fake.route(*CREATE, upgrade)
    fake.route(*POLL, upgrade)
    with pytest.raises(OutcomeUnknown):
        adapter.submit(video(), "job-1:1")
    assert len(fake.received(*CREATE)) == 1  # sent, then no answer: never repeated
    with pytest.raises(TransientError) as polled:
        adapter.poll("p-1")
    assert polled.value.code == "backend_connection"


@pytest.mark.parametrize("call", ["poll", "cancel"])
def test_an_answer_for_another_prediction_is_not_taken_as_this_ones(
        fake: WireFake, adapter: BackendAdapter, call: str) -> None:
    """A poll (or cancel) answered with another prediction (a cache in front of the
    provider keyed on the wrong thing) must not hand this job another's output and bill."""
    other = prediction(id="p-2", output="https://cdn/someone-elses.mp4", cost_usd=9.5)
    fake.route(*POLL, json_answer(200, other))
    fake.route("POST", "/v1/predictions/p-1/cancel", json_answer(200, other))
    with pytest.raises(BackendFault) as err:
        getattr(adapter, call)("p-1")
    assert err.value.code == "malformed_response"
    # its own id (or none, as some providers answer a poll) is read as before
    fake.route(*POLL, json_answer(200, prediction()))
    assert adapter.poll("p-1").output == "https://cdn/p-1.mp4"
    fake.route(*POLL, json_answer(200, {k: v for k, v in prediction().items() if k != "id"}))
    assert adapter.poll("p-1").status == "succeeded"


def compressed(status: int, obj: Any, coding: str) -> bytes:
    """An answer whose body is compressed with ``coding`` (gzip, or zlib's deflate)."""
    body = json.dumps(obj).encode()
    body = gzip.compress(body) if coding.startswith("gzip") else zlib.compress(body)
    return (f"HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\n"
            f"Content-Encoding: {coding}\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body


@pytest.mark.parametrize("coding", ["gzip", "deflate", "gzip, identity"])
def test_an_answer_compressed_though_asked_for_identity_is_read(
        fake: WireFake, adapter: BackendAdapter, coding: str) -> None:
    """A server (or a cache in front of it) that compresses its answer though asked for
    ``Accept-Encoding: identity``: the create made the work and named it, the poll says it
    succeeded. Left compressed, the create was a lost answer (closed uncertain on a provider
    without de-duplication, and paid again elsewhere) and the finished poll unreadable (the
    work stopped and its output lost)."""
    fake.route(*CREATE, raw(compressed(201, {"id": "p-1", "status": "starting"}, coding)))
    fake.route(*POLL, raw(compressed(200, prediction(
        metrics={"video_seconds": 4, "resolution": "720p"}), coding)))
    assert adapter.submit(video(), "job-1:1").external_id == "p-1"
    res = adapter.poll("p-1")
    assert res.status == "succeeded" and res.output == "https://cdn/p-1.mp4"
    assert res.cost_micros == 200_000  # 4 s at $0.05
    assert len(fake.received(*CREATE)) == 1


def test_a_compressed_answer_is_not_inflated_past_the_largest_answer_read(
        fake: WireFake, adapter: BackendAdapter, monkeypatch: pytest.MonkeyPatch) -> None:
    """A few kilobytes that inflate past the largest answer read (a compression bomb) are
    an unreadable answer, never inflated whole into a worker's memory."""
    monkeypatch.setattr(transport_module, "MAX_ANSWER_BYTES", 1024 * 1024)
    bomb = prediction(output="x" * (2 * 1024 * 1024))
    fake.route(*POLL, raw(compressed(200, bomb, "gzip")))
    with pytest.raises(BackendFault) as err:
        adapter.poll("p-1")
    assert err.value.code == "malformed_response"


def chat(fake: WireFake, transport: Http11Transport) -> BackendAdapter:
    return make_adapter(backend_at(fake.url, protocol="openai", kind="text"), transport,
                        retry=FAST)


@pytest.mark.parametrize(("bill", "charged", "unpriced"), [
    ({"usage": {"prompt_tokens": 2000, "completion_tokens": 0}}, 1000, False),  # $0.0005/1k
    ({"cost_usd": 0.25}, 250_000, False),
    ({}, None, True),  # no bill: the chain charges its worst case, as any billed answer
])
def test_a_chat_answer_with_no_choice_is_the_backends_failure_charged_its_bill(
        fake: WireFake, bill: dict[str, Any], charged: int | None, unpriced: bool) -> None:
    """200 with ``choices: []``: the call was made and billed, and gave nothing. Taken for a
    lost answer it went uncharged (uncertain) while the provider bills it."""
    fake.route("POST", "/v1/chat/completions",
               json_answer(200, {"id": "chatcmpl-1", "choices": [], **bill}))
    transport = Http11Transport()
    try:
        sub = chat(fake, transport).submit(
            JobSpec.model_validate({"kind": "text", "input": {"prompt": "hi"}}), "job-1:1")
    finally:
        transport.close()
    res = sub.result
    assert sub.external_id == "chatcmpl-1" and res is not None
    assert res.status == "failed" and res.error is not None
    assert res.error.code == "empty_output" and res.error.strike
    assert res.cost_micros == charged and res.unpriced is unpriced
    assert len(fake.received("POST", "/v1/chat/completions")) == 1
