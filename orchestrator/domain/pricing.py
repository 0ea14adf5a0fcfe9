"""Pricing (pure): the worst-case estimate of a job on a backend, and the actual cost from
what the backend reports. Both integer micro-USD, rounded up to the micro-dollar.

All arithmetic is exact: quantities become fractions ``num/den`` of integers (a duration of
8.5 s is 17/2), rates are integer pico-USD (see catalogue), and one ceiling division at the
end gives micro-USD. So ``actual <= estimate`` whenever the usage is within the job's limits.

    video    seconds x usd_per_second x resolution multiplier
    image    n x usd_per_image[size]
    text     input_tokens/1000 x usd_per_1k_input + output_tokens/1000 x usd_per_1k_output
             (worst case: input = len(prompt in UTF-8 bytes) + 7, output = max_tokens)
    request  usd_per_request
    compute  run seconds x usd_per_second (worst case: the backend's start_to_close_s,
             past which the run is cancelled)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from orchestrator.domain.catalogue import (
    MULT_SCALE,
    BackendSpec,
    PerComputeSecondPrice,
    PerImagePrice,
    PerRequestPrice,
    PerSecondPrice,
    PerTokenPrice,
)
from orchestrator.domain.jobs import JobSpec, Kind

PICO_PER_MICRO = 10**6
_VIDEO_DIV = MULT_SCALE * PICO_PER_MICRO


class NotPriceable(ValueError):
    """The backend cannot price (so cannot run) this job: an unlisted resolution or size, a
    duration above its maximum, or a kind its price model does not cover."""


@dataclass(frozen=True, slots=True)
class Usage:
    """What a backend reports it used (the basis of the actual cost)."""

    video_seconds: float | None = None
    resolution: str | None = None
    images: int | None = None
    image_size: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    compute_seconds: float | None = None  # the provider's run time (``predict_time``)


@dataclass(frozen=True, slots=True)
class Quantities:
    """The worst-case quantities of one job, computed once and priced on many backends."""

    kind: Kind
    seconds_num: int = 0
    seconds_den: int = 1
    resolution: str = ""
    images: int = 0
    image_size: str = ""
    input_tokens: int = 0
    output_tokens: int = 0


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _exact(x: float | int) -> Fraction:
    if isinstance(x, int):
        return Fraction(x)
    if x.is_integer():
        return Fraction(int(x))
    if not math.isfinite(x):
        raise NotPriceable(f"not a finite quantity: {x!r}")
    return Fraction(Decimal(repr(x)))


# What a chat API counts beside the prompt's own tokens: each message's framing (3 tokens)
# and its role (1), and the reply's priming (3): OpenAI's documented count for one message
# (its cookbook, "How to count tokens with tiktoken"). Left out, a short prompt answered up
# to max_tokens billed a few tokens above its worst case.
CHAT_OVERHEAD_TOKENS = 7


def estimate_input_tokens(prompt: str) -> int:
    """A prompt's worst case in input tokens: a token per UTF-8 byte, and the chat framing
    around it (``CHAT_OVERHEAD_TOKENS``).

    A byte-level BPE (OpenAI's tokenizers, and those with byte fallback) never makes more
    tokens than bytes, and can come close: ``"a b c d"`` is 4 tokens in 7 bytes, a CJK
    character (3 bytes) often 1-2 tokens, an emoji (4 bytes) up to 3. The average English
    ratio (a token per 3-4 bytes) is no bound: holding it let such prompts be billed past
    their hold, past the budget. Ranking does not pay for this caution: calibration learns
    each backend's actual / estimate."""
    return len(prompt.encode("utf-8")) + CHAT_OVERHEAD_TOKENS


def quantities(spec: JobSpec) -> Quantities:
    """The worst-case quantities of ``spec`` (its input was normalised by JobSpec)."""
    inp = spec.input
    if spec.kind is Kind.VIDEO:
        d = inp["duration_s"]
        if isinstance(d, int) or d.is_integer():  # the common case, without a Fraction
            return Quantities(Kind.VIDEO, int(d), 1, inp["resolution"])
        secs = _exact(d)
        return Quantities(Kind.VIDEO, secs.numerator, secs.denominator, inp["resolution"])
    if spec.kind is Kind.IMAGE:
        return Quantities(kind=Kind.IMAGE, images=inp["n"], image_size=inp["size"])
    return Quantities(
        kind=Kind.TEXT,
        input_tokens=estimate_input_tokens(inp["prompt"]),
        output_tokens=inp["max_tokens"],
    )


def price_quantities(backend: BackendSpec, q: Quantities) -> int:
    """Micro-USD for ``q`` on ``backend``; NotPriceable if the backend cannot run it.

    On the routing hot path: the arithmetic is inlined (ceil(a / b) == -(-a // b))."""
    if q.kind not in backend.kinds:
        raise NotPriceable(f"{backend.name} does not run {q.kind.value} jobs")
    price = backend.price
    if isinstance(price, PerSecondPrice):
        mult = price.mults.get(q.resolution)
        if mult is None:
            raise NotPriceable(f"{backend.name} has no price for resolution {q.resolution}")
        cap = price.max_duration_s
        if cap is not None and (
            q.seconds_num > cap * q.seconds_den if cap.is_integer()
            else q.seconds_num * (c := _exact(cap)).denominator > c.numerator * q.seconds_den
        ):
            raise NotPriceable(
                f"{backend.name} runs at most {price.max_duration_s:g} s of video"
            )
        return -(-(q.seconds_num * price.rate_pico * mult) // (q.seconds_den * _VIDEO_DIV))
    if isinstance(price, PerImagePrice):
        rate = price.rate_pico.get(q.image_size)
        if rate is None:
            raise NotPriceable(f"{backend.name} has no price for image size {q.image_size}")
        return -(-(q.images * rate) // PICO_PER_MICRO)
    if isinstance(price, PerTokenPrice):
        pico_x_1k = q.input_tokens * price.in_pico_1k + q.output_tokens * price.out_pico_1k
        return -(-pico_x_1k // (1000 * PICO_PER_MICRO))
    if isinstance(price, PerComputeSecondPrice):
        return _compute(price, backend.timeouts.start_to_close_s)
    assert isinstance(price, PerRequestPrice)
    return -(-price.rate_pico // PICO_PER_MICRO)


def estimate_micros(backend: BackendSpec, spec: JobSpec) -> int:
    """The worst-case cost of ``spec`` on ``backend`` (what a budget hold must cover)."""
    return price_quantities(backend, quantities(spec))


def actual_micros(backend: BackendSpec, usage: Usage) -> int:
    """The cost of what the backend reports it used; NotPriceable if the report is unusable."""
    price = backend.price
    if isinstance(price, PerRequestPrice):
        return _ceil_div(price.rate_pico, PICO_PER_MICRO)
    if isinstance(price, PerSecondPrice):
        if usage.video_seconds is None or usage.video_seconds < 0:
            raise NotPriceable(f"{backend.name} reported no video_seconds")
        secs = _exact(usage.video_seconds)
        return _video(
            backend, price, secs.numerator, secs.denominator,
            usage.resolution or _only(price.mults),
        )
    if isinstance(price, PerComputeSecondPrice):
        if usage.compute_seconds is None or usage.compute_seconds < 0:
            raise NotPriceable(f"{backend.name} reported no predict_time")
        return _compute(price, usage.compute_seconds)
    if isinstance(price, PerImagePrice):
        if usage.images is None or usage.images < 0 or usage.image_size is None:
            raise NotPriceable(f"{backend.name} reported no images/image_size")
        return price_quantities(backend, Quantities(
            kind=Kind.IMAGE, images=usage.images, image_size=usage.image_size
        ))
    if usage.input_tokens is None or usage.output_tokens is None or min(
        usage.input_tokens, usage.output_tokens
    ) < 0:
        raise NotPriceable(f"{backend.name} reported no input_tokens/output_tokens")
    return price_quantities(backend, Quantities(
        kind=Kind.TEXT, input_tokens=usage.input_tokens, output_tokens=usage.output_tokens
    ))


def _video(
    backend: BackendSpec, price: PerSecondPrice, num: int, den: int, resolution: str
) -> int:
    """Video cost (the actual cost bills what was used, even past the advertised maximum)."""
    mult = price.mults.get(resolution)
    if mult is None:
        raise NotPriceable(f"{backend.name} has no price for resolution {resolution}")
    return _ceil_div(num * price.rate_pico * mult, den * _VIDEO_DIV)


def _compute(price: PerComputeSecondPrice, seconds: float) -> int:
    secs = _exact(seconds)
    return _ceil_div(secs.numerator * price.rate_pico, secs.denominator * PICO_PER_MICRO)


def _only(mults: dict[str, int]) -> str:
    """The resolution a video without one is priced at: any, when every resolution costs
    the same (one listed, or the default multipliers, all 1)."""
    if len(set(mults.values())) == 1:
        return next(iter(mults))
    raise NotPriceable("the backend reported no resolution")
