"""Retry schedule of a failing delivery: exponential with "equal jitter", capped."""

from __future__ import annotations

import random


def retry_delay_s(
    attempt: int,
    *,
    base_s: float = 30.0,
    cap_s: float = 3600.0,
    rng: random.Random | None = None,
) -> float:
    """Delay before the attempt after ``attempt`` (1-based): in [d/2, d] with
    d = min(cap, base * 2**(attempt-1)), so retries spread out but never come early."""
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    ceiling = min(cap_s, base_s * 2.0 ** min(attempt - 1, 62))
    return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)
