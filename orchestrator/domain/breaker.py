"""The three-strike circuit breaker as pure transitions, and a backend's observed health.

    closed ──3 consecutive backend faults──▶ open ──cooldown over, first caller──▶ half_open
      ▲                                        ▲                                   │
      └──────────── probe succeeds ────────────┼──────── probe fails (longer) ─────┘

- Only ``Outcome.BACKEND_FAULT`` is a strike; success resets the strikes; job faults,
  throttling and cancellations change nothing.
- The cooldown doubles with each consecutive trip: ``min(cap, base * 2**(trips-1))``.
- After the cooldown exactly one caller is admitted, as the probe; everyone else is refused
  until the probe reports. A probe still running renews its lease at every step of its job's
  chain (``renew_probe``): a probe job may run far longer than the lease. A probe that
  stops reporting (its chain went silent) loses its lease after ``probe_lease_s`` and the
  next caller becomes the probe. A probe reporting a neutral outcome
  (job fault, throttled, cancelled) frees the probe slot without deciding.
- In half_open only the probe's report counts; in open, reports are ignored.
- A call admitted before the breaker's latest trip reports nothing to it once that trip has
  happened (neither strike, nor reset, nor probe verdict): an outage's calls in flight fail
  over the next minutes, the last ones at their start_to_close, and counted after the probe
  closed the breaker they would open a backend that works again. Each admission carries the
  breaker's ``epoch`` (its trips ever, never reset) and the report brings it back.

Time is a float of seconds (``now``) passed in, so tests never sleep. The Redis store in
``orchestrator.health`` applies exactly these transitions atomically in Lua.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from orchestrator.domain.outcomes import Outcome


class BreakerStatus(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Refusal(StrEnum):
    BREAKER_OPEN = "breaker_open"
    PROBE_IN_FLIGHT = "probe_in_flight"
    AT_CAPACITY = "at_capacity"


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    threshold: int = 3
    cooldown_base_s: float = 30.0
    cooldown_cap_s: float = 600.0
    probe_lease_s: float = 300.0

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise ValueError("threshold must be >= 1")
        if not 0 < self.cooldown_base_s <= self.cooldown_cap_s:
            raise ValueError("need 0 < cooldown_base_s <= cooldown_cap_s")
        if self.probe_lease_s <= 0:
            raise ValueError("probe_lease_s must be > 0")

    def cooldown_s(self, trips: int) -> float:
        """The cooldown after the ``trips``-th consecutive trip (trips >= 1)."""
        return min(self.cooldown_cap_s, self.cooldown_base_s * 2.0 ** min(max(trips, 1) - 1, 60))


@dataclass(frozen=True, slots=True)
class BreakerState:
    status: BreakerStatus = BreakerStatus.CLOSED
    strikes: int = 0  # consecutive backend faults
    trips: int = 0  # consecutive trips without a successful probe (drives the cooldown)
    retry_at: float = 0.0  # open: when the cooldown ends
    probe_until: float = 0.0  # half_open: the probe's lease end; 0 = no probe in flight
    epoch: int = 0  # trips ever, never reset (unlike trips): a call admitted at a lower one
    # was admitted before the latest trip


@dataclass(frozen=True, slots=True)
class Admission:
    allowed: bool
    probe: bool = False
    refusal: Refusal | None = None
    retry_at: float | None = None  # refused: when it is worth asking again
    epoch: int | None = None  # admitted: the breaker's epoch, which its report brings back


CLOSED = BreakerState()


def refusal(state: BreakerState, now: float) -> Refusal | None:
    """Why a caller would be refused at ``now`` (None: it would be admitted). No change."""
    if state.status is BreakerStatus.OPEN and now < state.retry_at:
        return Refusal.BREAKER_OPEN
    if state.status is BreakerStatus.HALF_OPEN and now < state.probe_until:
        return Refusal.PROBE_IN_FLIGHT
    return None


def admit(
    state: BreakerState, now: float, policy: BreakerPolicy
) -> tuple[Admission, BreakerState]:
    """Ask to make a call at ``now``: the decision and the new state."""
    why = refusal(state, now)
    if why is Refusal.BREAKER_OPEN:
        return Admission(False, refusal=why, retry_at=state.retry_at), state
    if why is Refusal.PROBE_IN_FLIGHT:
        return Admission(False, refusal=why, retry_at=state.probe_until), state
    if state.status is BreakerStatus.CLOSED:
        return Admission(True, epoch=state.epoch), state
    probing = BreakerState(
        BreakerStatus.HALF_OPEN, state.strikes, state.trips, state.retry_at,
        now + policy.probe_lease_s, state.epoch,
    )
    return Admission(True, probe=True, epoch=state.epoch), probing


def stale(state: BreakerState, epoch: int | None) -> bool:
    """A call admitted at ``epoch`` came before the breaker's latest trip. None: its epoch is
    unknown (admitted before epochs were kept), taken as current."""
    return epoch is not None and epoch < state.epoch


def renew_probe(
    state: BreakerState, now: float, policy: BreakerPolicy, *, epoch: int | None = None
) -> BreakerState:
    """A probe still in flight at ``now`` keeps the probe slot for ``probe_lease_s`` more
    (half_open only; a lease is never shortened). A probe whose lease had lapsed takes the
    slot again: its report still decides (it was admitted as the probe). A probe admitted
    before the latest trip (``epoch``) is no longer the probe and renews nothing."""
    if state.status is not BreakerStatus.HALF_OPEN or stale(state, epoch):
        return state
    until = now + policy.probe_lease_s
    if until <= state.probe_until:
        return state
    return BreakerState(BreakerStatus.HALF_OPEN, state.strikes, state.trips, state.retry_at,
                        until, state.epoch)


def _trip(state: BreakerState, now: float, policy: BreakerPolicy) -> BreakerState:
    trips = state.trips + 1
    return BreakerState(BreakerStatus.OPEN, state.strikes + 1, trips,
                        now + policy.cooldown_s(trips), 0.0, state.epoch + 1)


def record(
    state: BreakerState, outcome: Outcome, now: float, policy: BreakerPolicy, *, probe: bool,
    epoch: int | None = None,
) -> BreakerState:
    """A call admitted earlier at ``epoch`` (``probe``: as the probe) reports ``outcome`` at
    ``now``."""
    if stale(state, epoch):
        return state
    if state.status is BreakerStatus.CLOSED:
        if outcome is Outcome.SUCCESS:
            return BreakerState(epoch=state.epoch) if state.strikes else state
        if outcome is Outcome.BACKEND_FAULT:
            if state.strikes + 1 >= policy.threshold:
                return _trip(state, now, policy)
            return BreakerState(BreakerStatus.CLOSED, state.strikes + 1, state.trips,
                                epoch=state.epoch)
        return state
    if state.status is BreakerStatus.OPEN or not probe:
        return state
    # half_open, and this is the probe reporting
    if outcome is Outcome.SUCCESS:
        return BreakerState(epoch=state.epoch)
    if outcome is Outcome.BACKEND_FAULT:
        return _trip(state, now, policy)
    return BreakerState(BreakerStatus.HALF_OPEN, state.strikes, state.trips, state.retry_at, 0.0,
                        state.epoch)


def shown_status(state: BreakerState, now: float) -> BreakerStatus:
    """What to show: an open breaker whose cooldown is over is half-open (a probe may go)."""
    if state.status is BreakerStatus.OPEN and now >= state.retry_at:
        return BreakerStatus.HALF_OPEN
    return state.status


# ---- observed health -----------------------------------------------------------------------

DEFAULT_ALPHA = 0.2


def ewma(prev: float | None, sample: float, alpha: float = DEFAULT_ALPHA) -> float:
    return sample if prev is None else prev + alpha * (sample - prev)


def observe(
    success_rate: float | None,
    latency_ms: float | None,
    outcome: Outcome,
    sample_latency_ms: float | None,
    alpha: float = DEFAULT_ALPHA,
) -> tuple[float | None, float | None]:
    """New (success_rate, latency_ms) EWMAs after one call. Latency is learnt from successes."""
    if outcome.observed:
        success_rate = ewma(success_rate, 1.0 if outcome is Outcome.SUCCESS else 0.0, alpha)
    if outcome is Outcome.SUCCESS and sample_latency_ms is not None and sample_latency_ms >= 0:
        latency_ms = ewma(latency_ms, sample_latency_ms, alpha)
    return success_rate, latency_ms


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class BackendHealth:
    """One backend's breaker and observed health, as read from the shared store."""

    breaker: BreakerState = CLOSED
    success_rate: float | None = None
    latency_ms: float | None = None
    in_flight: int = 0
    waiting: int = 0  # jobs waiting for one of its slots

    def to_dict(self, now: float) -> dict[str, Any]:
        """The health part of the CONTRACT backend resource."""
        status = shown_status(self.breaker, now)
        retry_at = self.breaker.retry_at if status is BreakerStatus.OPEN else None
        return {
            "breaker": {
                "state": status.value,
                "strikes": self.breaker.strikes,
                "retry_at": _iso(retry_at) if retry_at is not None else None,
                "trips": self.breaker.trips,
                "probe_in_flight": status is BreakerStatus.HALF_OPEN
                and now < self.breaker.probe_until,
            },
            "success_rate": None if self.success_rate is None else round(self.success_rate, 4),
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 1),
            "in_flight": self.in_flight,
            "waiting": self.waiting,
        }


UNKNOWN = BackendHealth()
