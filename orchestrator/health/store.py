"""Shared breaker and health state in Redis, for every API and worker process.

Each step is one Lua script (atomic on the server): ``acquire`` asks the breaker and takes a
concurrency slot together; ``record`` reports an outcome (strike/reset, probe verdict, the
EWMAs) and can release the slot in the same call. ``snapshot`` reads many backends in one
pipelined round trip, ready for ``orchestrator.domain.routing.plan_route``.

Concurrency slots are leases (a sorted set of slot id -> expiry): a worker that dies while
holding one loses it after ``lease_s`` instead of leaking it forever. A slot id ends in the
breaker's epoch at its admission (``<random hex>.<epoch>``): the attempt row keeps the slot
id, so its report brings the epoch back and the breaker ignores a call admitted before its
latest trip (``domain.breaker.stale``). A slot id without one (taken before epochs were kept)
counts as current.

Time comes from ``clock`` (default ``time.time``), so tests inject it and never sleep.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from redis import Redis

from orchestrator.domain.breaker import (
    CLOSED,
    DEFAULT_ALPHA,
    BackendHealth,
    BreakerPolicy,
    BreakerState,
    BreakerStatus,
    Refusal,
)
from orchestrator.domain.outcomes import Outcome
from orchestrator.health.direct import DirectScripts
from orchestrator.health.scripts import ACQUIRE, RECORD, RENEW, RENEW_PROBE, SNAPSHOT


@dataclass(frozen=True, slots=True)
class Ticket:
    """The answer to ``acquire``: admitted (with a slot, maybe as the probe) or refused."""

    backend: str
    allowed: bool
    probe: bool = False
    slot: str | None = None
    refusal: Refusal | None = None
    retry_at: float | None = None  # breaker refusals: when to ask again
    in_flight: int = 0


def _s(v: Any) -> str | None:
    if v is False:  # a missing field, as Lua/cjson report it
        return None
    return v.decode() if isinstance(v, bytes) else v


def _f(v: Any, default: float = 0.0) -> float:
    s = _s(v)
    return default if s is None or s == "" else float(s)


def _breaker(fields: list[Any]) -> BreakerState:
    status = _s(fields[0])
    if status is None:
        return BreakerState()
    return BreakerState(
        BreakerStatus(status), int(_f(fields[1])), int(_f(fields[2])), _f(fields[3]),
        _f(fields[4]), int(_f(fields[5])),
    )


def slot_epoch(slot: str | None) -> int | None:
    """The breaker's epoch when ``slot`` was admitted; None when the slot id has none."""
    if not slot:
        return None
    _, dot, tail = slot.rpartition(".")
    return int(tail) if dot and tail.isascii() and tail.isdigit() else None


def _epoch_arg(slot: str | None) -> str:
    epoch = slot_epoch(slot)
    return "" if epoch is None else str(epoch)


_STATUS = {s.value: s for s in BreakerStatus}
_BREAKER_FIELDS = ("status", "strikes", "trips", "retry_at", "probe_until", "epoch")
# the random part of a slot id: 96 bits, leaving the 40 characters of the attempt row's
# column room for any epoch a Lua number holds exactly
_SLOT_HEX = 24


class HealthStore:
    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str = "orch",
        policy: BreakerPolicy | None = None,
        clock: Callable[[], float] = time.time,
        alpha: float = DEFAULT_ALPHA,
    ) -> None:
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        self.redis = redis
        self.prefix = prefix
        self.policy = policy or BreakerPolicy()
        self.clock = clock
        self.alpha = alpha
        self._acquire = redis.register_script(ACQUIRE)
        self._record = redis.register_script(RECORD)
        self._renew = redis.register_script(RENEW)
        self._renew_probe = redis.register_script(RENEW_PROBE)
        self._snapshot = redis.register_script(SNAPSHOT)
        self._scripts = DirectScripts(redis)
        self._joined: dict[tuple[str, ...], str] = {}

    @classmethod
    def from_url(cls, url: str, *, socket_timeout: float | None = None,
                 socket_connect_timeout: float | None = None, **kwargs: Any) -> HealthStore:
        return cls(Redis.from_url(url, decode_responses=True, socket_timeout=socket_timeout,
                                  socket_connect_timeout=socket_connect_timeout), **kwargs)

    def _keys(self, name: str) -> tuple[str, str, str]:
        """(breaker hash, health hash, slots): breaker and health share one hash."""
        p = self.prefix
        state = f"{p}:backend:{name}"
        return state, state, f"{p}:slots:{name}"

    def acquire(self, name: str, *, max_concurrency: int, lease_s: float) -> Ticket:
        """Ask the breaker and take one of ``max_concurrency`` slots, atomically."""
        breaker, _, slots = self._keys(name)
        slot = uuid.uuid4().hex[:_SLOT_HEX]
        res = self._scripts.run(
            self._acquire, [breaker, slots],
            [repr(float(self.clock())), max_concurrency, repr(float(lease_s)), slot,
             repr(float(self.policy.probe_lease_s))],
        )
        allowed, second, detail = int(res[0]), _s(res[1]), _s(res[2])
        if allowed:
            return Ticket(name, True, probe=second == "1", slot=_s(res[3]),
                          in_flight=int(detail or 0))
        why = Refusal(second or "")
        if why is Refusal.AT_CAPACITY:
            return Ticket(name, False, refusal=why, in_flight=int(detail or 0))
        return Ticket(name, False, refusal=why, retry_at=_f(detail))

    def record(
        self,
        name: str,
        outcome: Outcome,
        *,
        latency_ms: float | None = None,
        probe: bool = False,
        slot: str | None = None,
    ) -> BreakerState:
        """Report a call's outcome (``probe`` as its ticket said); release ``slot`` if given.
        A ``slot`` admitted before the breaker's latest trip changes nothing in the breaker
        (the observed success rate and latency still learn from it)."""
        return self.record_and_wake(name, outcome, latency_ms=latency_ms, probe=probe,
                                    slot=slot, wake=False)[0]

    def record_and_wake(
        self,
        name: str,
        outcome: Outcome,
        *,
        latency_ms: float | None = None,
        probe: bool = False,
        slot: str | None = None,
        wake: bool = True,
    ) -> tuple[BreakerState, str | None]:
        """``record``; and when it released ``slot`` (and ``wake``), take the longest-waiting
        job off the backend's waiting list (:meth:`wait_for_slot`) in the same step. Returns
        the breaker and that job's member string (None: nobody waits)."""
        breaker, health, slots = self._keys(name)
        p = self.policy
        res = self._scripts.run(
            self._record, [breaker, health, slots, self._waiters(name)],
            [
                repr(float(self.clock())), Outcome(outcome).value,
                "" if latency_ms is None else repr(float(latency_ms)), "1" if probe else "0",
                p.threshold, repr(float(p.cooldown_base_s)), repr(float(p.cooldown_cap_s)),
                repr(float(self.alpha)), slot or "", "1" if wake else "0", _epoch_arg(slot),
            ],
        )
        fields = list(res)
        return _breaker(fields), _s(fields[6])

    def wait_for_slot(self, names: Iterable[str], member: str, since: float) -> None:
        """Put ``member`` (a job's wake-up: see the runner) on the waiting list of each of
        ``names``, in the order of ``since`` (its submission time; a job already listed keeps
        its place)."""
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.zadd(self._waiters(name), {member: since}, nx=True)
        pipe.execute()

    def stop_waiting(self, names: Iterable[str], member: str) -> None:
        """Take ``member`` off the waiting list of each of ``names`` (it has a slot, or
        will never need one)."""
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.zrem(self._waiters(name), member)
        pipe.execute()

    def _waiters(self, name: str) -> str:
        return f"{self.prefix}:waiters:{name}"

    def report(self, ticket: Ticket, outcome: Outcome, *, latency_ms: float | None = None
               ) -> BreakerState:
        """``record`` for an admitted ticket: its probe flag, and its slot released."""
        if not ticket.allowed:
            raise ValueError("a refused ticket has nothing to report")
        return self.record(ticket.backend, outcome, latency_ms=latency_ms, probe=ticket.probe,
                           slot=ticket.slot)

    def release(self, name: str, slot: str) -> bool:
        """Give a slot back without reporting (e.g. the job was cancelled before the call)."""
        return bool(self.redis.zrem(self._keys(name)[2], slot))

    def renew(self, name: str, slot: str, lease_s: float) -> bool:
        """Extend a held slot's lease (long jobs); False if it had already expired."""
        res = self._scripts.run(self._renew, [self._keys(name)[2]],
                                [repr(float(self.clock())), slot, repr(float(lease_s))])
        return bool(int(res))

    def renew_probe(self, name: str, slot: str | None = None) -> bool:
        """A probe still in flight on ``name`` (holding ``slot``) keeps the probe slot for the
        policy's ``probe_lease_s`` more (``domain.breaker.renew_probe``). False: the breaker
        is not half-open (the probe's verdict, or another's, came first), or ``slot`` was
        admitted before its latest trip, and nothing changed."""
        res = self._scripts.run(self._renew_probe, [self._keys(name)[0]],
                                [repr(float(self.clock())),
                                 repr(float(self.policy.probe_lease_s)), _epoch_arg(slot)])
        return bool(int(res))

    def breaker(self, name: str) -> BreakerState:
        return _breaker(list(self.redis.hmget(self._keys(name)[0], _BREAKER_FIELDS)))

    def snapshot(self, names: Iterable[str]) -> dict[str, BackendHealth]:
        """Breaker, EWMAs, in-flight and waiting counts of every backend in ``names``: one
        round trip (one read-only script returning one JSON string)."""
        names = tuple(names)
        if not names:
            return {}
        joined = self._joined.get(names)
        if joined is None:
            if any("," in n for n in names):
                raise ValueError("backend names cannot contain ','")
            joined = self._joined[names] = ",".join(names)
        raw = self._scripts.run(self._snapshot, [],
                                [repr(float(self.clock())), self.prefix, joined])
        out: dict[str, BackendHealth] = {}
        for name, row in zip(names, json.loads(raw), strict=True):
            status, strikes, trips, retry_at, probe_until, epoch, sr, lat, n, waiting = row
            breaker = CLOSED if not status or (
                status == "closed" and strikes == "0" and epoch in (False, "0")) else (
                BreakerState(_STATUS[status], int(strikes), int(trips), float(retry_at),
                             float(probe_until), int(epoch) if epoch else 0)
            )
            out[name] = BackendHealth(
                breaker, float(sr) if sr else None, float(lat) if lat else None, n, waiting
            )
        return out

    def reset(self, name: str) -> None:
        """Forget everything about ``name`` (admin action; tests)."""
        self.redis.delete(*set(self._keys(name)))
