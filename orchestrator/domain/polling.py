"""When the job chain looks at a running attempt again, and how long a job waiting for a
concurrency slot sleeps when nothing wakes it (pure)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PollPolicy:
    """How often to poll a running attempt.

    Before the backend's expected latency (catalogue ``expected_latency_ms``) has passed, the
    next look is a margin after the job should be done (a look right at that instant tends to
    find it still finishing): a quarter of the expected latency, at least 50 ms and at most
    ``min_s``. A job expected in 400 ms is looked at after 500 ms, not 1.4 s: the attempt's
    concurrency slot is held until that look. After it (or with no expectation), every
    age/10 s, clamped to [min_s, max_s]. Minute-long video jobs then cost a few polls each.
    """

    min_s: float = 1.0
    max_s: float = 10.0
    grace_s: float = 60.0  # a chain silent this long past its next step is revived

    def interval(self, age_s: float, expected_s: float | None = None) -> float:
        if expected_s is not None and age_s < expected_s:
            return expected_s - age_s + min(self.min_s, max(0.05, expected_s / 4))
        return min(self.max_s, max(self.min_s, age_s / 10))

    def slot_wait(self, jitter: float) -> float:
        """How long a job waiting for a slot sleeps if no freed slot wakes it first (a wake
        lost to a crash, a slot that expired instead of being released): ``max_s``, spread by
        ``jitter`` (uniform in [0, 1)) over +-20 % so such jobs do not all come back at once."""
        return self.max_s * (0.8 + 0.4 * jitter)

    def breaker_wait(self, retry_in_s: float, jitter: float) -> float:
        """How long a job sleeps when every backend left refused it for its breaker: until
        the refusal ends (an open breaker's cooldown, a half-open one's probe lease), but at
        least ``min_s`` and at most ``max_s`` (a probe's verdict usually comes long before
        its lease ends); plus ``jitter`` (uniform in [0, 1)) times ``min_s``, so the jobs
        waiting on one breaker do not all ask for its probe at the same instant."""
        return min(self.max_s, max(self.min_s, retry_in_s)) + jitter * self.min_s
