"""Pricing arithmetic, exact to the micro-dollar."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.domain.catalogue import BackendSpec
from orchestrator.domain.jobs import JobSpec, Kind
from orchestrator.domain.pricing import (
    CHAT_OVERHEAD_TOKENS,
    NotPriceable,
    Usage,
    actual_micros,
    estimate_input_tokens,
    estimate_micros,
)


def backend(name: str, kinds: list[str], price: dict[str, Any]) -> BackendSpec:
    return BackendSpec.model_validate({
        "name": name, "protocol": "openai", "base_url": "http://127.0.0.1:1",
        "kinds": kinds, "tier": "standard", "price": price,
    })


VIDEO = backend("v", ["video"], {
    "model": "per_second", "usd_per_second": "0.05",
    "resolution_multipliers": {"480p": 1, "720p": 1.5, "1080p": 2.5}, "max_duration_s": 60,
})
IMAGE = backend("i", ["image"], {
    "model": "per_image", "usd_per_image": {"512x512": 0.01, "1024x1024": 0.04},
})
TEXT = backend("t", ["text"], {
    "model": "per_token", "usd_per_1k_input": 0.0005, "usd_per_1k_output": 0.0015,
})
FLAT = backend("f", ["video", "image", "text"], {
    "model": "per_request", "usd_per_request": 0.0123456,
})


def video(duration: float, resolution: str = "720p") -> JobSpec:
    return JobSpec(kind=Kind.VIDEO, input={"prompt": "p", "duration_s": duration,
                                        "resolution": resolution})


@pytest.mark.parametrize(
    ("duration", "resolution", "micros"),
    [
        (8, "720p", 600_000),         # 8 x 0.05 x 1.5
        (8, "480p", 400_000),
        (8, "1080p", 1_000_000),
        (1, "720p", 75_000),
        (8.5, "720p", 637_500),
        (0.1 + 2, "1080p", 262_500),   # 2.1 s exactly, not 2.1000000000000000888
        (1.0000001, "480p", 50_001),  # 50000.005 rounds up
        (60, "1080p", 7_500_000),
    ],
)
def test_video_estimate(duration: float, resolution: str, micros: int) -> None:
    assert estimate_micros(VIDEO, video(duration, resolution)) == micros


def test_video_limits_and_actual() -> None:
    with pytest.raises(NotPriceable, match="at most 60 s"):
        estimate_micros(VIDEO, video(61))
    four_res = backend("v2", ["video"], {"model": "per_second", "usd_per_second": 1,
                                          "resolution_multipliers": {"480p": 1}})
    with pytest.raises(NotPriceable, match="resolution 720p"):
        estimate_micros(four_res, video(5))
    assert actual_micros(VIDEO, Usage(video_seconds=7.25, resolution="720p")) == 543_750
    assert actual_micros(four_res, Usage(video_seconds=2.5)) == 2_500_000  # sole resolution
    with pytest.raises(NotPriceable):
        actual_micros(VIDEO, Usage(video_seconds=3))  # which resolution?
    with pytest.raises(NotPriceable):
        actual_micros(VIDEO, Usage(resolution="720p"))


@given(st.integers(100, 59_999))  # one hundredth more stays within a job's 600 s
def test_a_video_of_exactly_the_advertised_maximum_is_priced(hundredths: int) -> None:
    """``max_duration_s: 2.01`` runs a 2.01 s video: compared in floats (2.01 x 100 is
    200.99999999999997) such a backend was excluded from the very jobs its maximum names."""
    seconds = hundredths / 100
    capped = backend("v3", ["video"], {"model": "per_second", "usd_per_second": 1,
                                       "max_duration_s": seconds})
    assert estimate_micros(capped, video(seconds)) == hundredths * 10_000
    with pytest.raises(NotPriceable):
        estimate_micros(capped, video((hundredths + 1) / 100))


def test_image() -> None:
    spec = JobSpec(kind=Kind.IMAGE, input={"prompt": "p", "n": 3, "size": "512x512"})
    assert estimate_micros(IMAGE, spec) == 30_000
    assert estimate_micros(IMAGE, JobSpec(kind=Kind.IMAGE, input={"prompt": "p"})) == 40_000
    assert actual_micros(IMAGE, Usage(images=2, image_size="1024x1024")) == 80_000
    with pytest.raises(NotPriceable, match="image size 256x256"):
        estimate_micros(IMAGE, JobSpec(kind=Kind.IMAGE, input={"prompt": "p", "size": "256x256"}))
    with pytest.raises(NotPriceable, match="does not run video"):
        estimate_micros(IMAGE, video(3))


def test_text() -> None:
    # "héllo wörld!" is 14 UTF-8 bytes -> at most 14 tokens, and 7 of the chat framing
    # (a message's 3, its role's 1, the reply's priming 3): 21 input tokens; 100 output tokens
    spec = JobSpec(kind=Kind.TEXT, input={"prompt": "héllo wörld!", "max_tokens": 100})
    # 21 x 0.0005/1000 + 100 x 0.0015/1000 = 0.0000105 + 0.00015 = 160.5 -> 161 micro
    assert estimate_micros(TEXT, spec) == 161
    # OpenAI bills one user message "hi" as 8 prompt tokens (1 + the framing's 7): the worst
    # case must not be below it
    assert estimate_input_tokens("hi") == 9
    # default max_tokens 512: 21 x 0.5 + 512 x 1.5 = 778.5 -> 779
    assert estimate_micros(TEXT, JobSpec(kind=Kind.TEXT, input={"prompt": "héllo wörld!"})) == 779


@pytest.mark.parametrize(("prompt", "tokens"), [
    # cl100k_base / o200k_base (OpenAI's tokenizers) give one-letter words a token each:
    # 10 tokens in 19 bytes, where a token per 3 bytes held 7
    ("a b c d e f g h i j", 10),
    # a CJK character is 3 UTF-8 bytes and often 2 tokens; an emoji 4 bytes and up to 3
    ("猫犬鳥魚", 8),
    ("🦄🦄🦄", 9),
    # a byte-level BPE never makes more tokens than bytes
    ("zq\x7f~", 4),
])
def test_a_prompts_worst_case_holds_what_a_byte_level_tokenizer_can_bill(
    prompt: str, tokens: int
) -> None:
    """The hold is the worst case: a bill within the job's limits must never exceed it, or
    the overage takes the budget past its limit."""
    billed = tokens + CHAT_OVERHEAD_TOKENS
    assert estimate_input_tokens(prompt) >= billed
    spec = JobSpec(kind=Kind.TEXT, input={"prompt": prompt, "max_tokens": 64})
    assert actual_micros(TEXT, Usage(input_tokens=billed, output_tokens=64)) \
        <= estimate_micros(TEXT, spec)
    assert actual_micros(TEXT, Usage(input_tokens=1000, output_tokens=2000)) == 3_500
    assert actual_micros(TEXT, Usage(input_tokens=1, output_tokens=0)) == 1  # 0.5 -> 1
    with pytest.raises(NotPriceable):
        actual_micros(TEXT, Usage(input_tokens=3))


GPU = BackendSpec.model_validate({
    "name": "g", "protocol": "predictions", "base_url": "http://127.0.0.1:1",
    "kinds": ["video", "image", "text"], "tier": "standard", "timeouts": {"start_to_close_s": 90},
    "price": {"model": "per_compute_second", "usd_per_second": "0.000725"},
})


def test_run_time() -> None:
    # nothing in the job says how long it runs: the worst case is start_to_close_s (past it
    # the run is cancelled), whatever the job
    assert estimate_micros(GPU, video(600, "1080p")) == 65_250  # 90 s x $0.000725
    text = JobSpec(kind=Kind.TEXT, input={"prompt": "p", "max_tokens": 9})
    assert estimate_micros(GPU, text) == 65_250
    shorter = GPU.model_copy(update={"timeouts": GPU.timeouts.model_copy(
        update={"start_to_close_s": 20})})
    assert estimate_micros(shorter, text) == 14_500
    assert actual_micros(GPU, Usage(compute_seconds=12.345)) == 8_951  # 8950.125 rounds up
    assert actual_micros(GPU, Usage(compute_seconds=0)) == 0
    with pytest.raises(NotPriceable, match="predict_time"):
        actual_micros(GPU, Usage(video_seconds=4, resolution="720p"))


def test_run_time_prices_only_answers_that_report_it() -> None:
    with pytest.raises(ValueError, match="needs the predictions protocol"):
        backend("g", ["text"], {"model": "per_compute_second", "usd_per_second": 0.001})


def test_flat() -> None:
    assert estimate_micros(FLAT, video(600, "1080p")) == 12_346  # 12345.6 -> 12346
    assert actual_micros(FLAT, Usage()) == 12_346


@given(
    duration=st.floats(min_value=1, max_value=60, allow_nan=False),
    used=st.floats(min_value=0, max_value=1),
    resolution=st.sampled_from(["480p", "720p", "1080p"]),
)
def test_actual_never_exceeds_worst_case(duration: float, used: float, resolution: str) -> None:
    spec = video(duration, resolution)
    estimate = estimate_micros(VIDEO, spec)
    assert actual_micros(VIDEO, Usage(video_seconds=duration * used, resolution=resolution)) <= (
        estimate
    )
    assert actual_micros(VIDEO, Usage(video_seconds=duration, resolution=resolution)) == estimate


@given(prompt=st.text(min_size=1, max_size=300).filter(str.strip),
       max_tokens=st.integers(1, 4096), out=st.integers(0, 4096))
def test_text_actual_within_estimate(prompt: str, max_tokens: int, out: int) -> None:
    spec = JobSpec(kind=Kind.TEXT, input={"prompt": prompt, "max_tokens": max_tokens})
    tokens_in = len(prompt.encode()) + CHAT_OVERHEAD_TOKENS  # a token per byte at most
    usage = Usage(input_tokens=tokens_in, output_tokens=min(out, max_tokens))
    assert actual_micros(TEXT, usage) <= estimate_micros(TEXT, spec)
