"""The shared breaker and health store against a real Redis: atomic under 50 threads, equal
to the pure transitions, one-round-trip snapshot that routing consumes."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from orchestrator.domain import breaker as pure
from orchestrator.domain.breaker import BreakerPolicy, BreakerState, BreakerStatus, Refusal
from orchestrator.domain.catalogue import load_catalogue
from orchestrator.domain.jobs import JobSpec
from orchestrator.domain.outcomes import Outcome
from orchestrator.domain.routing import ExclusionCode, plan_route
from orchestrator.health import HealthStore, Ticket
from orchestrator.health.store import slot_epoch

T = TypeVar("T")
POLICY = BreakerPolicy(threshold=3, cooldown_base_s=30, cooldown_cap_s=600, probe_lease_s=60)
THREADS = 50


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make_store(redis_url: str, clock: Clock) -> HealthStore:
    return HealthStore.from_url(redis_url, prefix=f"test-{uuid.uuid4().hex}", policy=POLICY,
                                clock=clock)


def all_at_once(fn: Callable[[], T], n: int = THREADS) -> list[T]:
    """Run ``fn`` in ``n`` threads released together by a barrier."""
    barrier = threading.Barrier(n, timeout=30)

    def run() -> T:
        barrier.wait()
        return fn()

    with ThreadPoolExecutor(n) as pool:
        return [f.result(timeout=60) for f in [pool.submit(run) for _ in range(n)]]


def test_fifty_threads_three_strikes_one_probe_success_closes(redis_url: str) -> None:
    clock = Clock(1000.0)
    store = make_store(redis_url, clock)
    name = "vid-x"

    def call(outcome: Outcome | None) -> Ticket:
        t = store.acquire(name, max_concurrency=100, lease_s=60)
        if t.allowed and outcome is not None:
            store.report(t, outcome)
        return t

    # strikes must be consecutive: a success in between resets them
    for outcome in (Outcome.BACKEND_FAULT, Outcome.BACKEND_FAULT, Outcome.SUCCESS,
                    Outcome.BACKEND_FAULT, Outcome.JOB_FAULT, Outcome.BACKEND_FAULT):
        assert call(outcome).allowed
    assert store.breaker(name) == BreakerState(BreakerStatus.CLOSED, 2, 0)
    assert call(Outcome.BACKEND_FAULT).allowed  # the third consecutive backend fault
    assert store.breaker(name) == BreakerState(BreakerStatus.OPEN, 3, 1, 1030.0, 0.0, 1)

    # open: all 50 threads are refused until the cooldown is over
    refused = all_at_once(lambda: call(None))
    assert {(t.allowed, t.refusal, t.retry_at) for t in refused} == {
        (False, Refusal.BREAKER_OPEN, 1030.0)}

    # cooldown over (injected clock, no sleep): exactly one thread gets the probe
    clock.t = 1030.0
    tickets = all_at_once(lambda: call(None))
    probes = [t for t in tickets if t.allowed]
    assert len(probes) == 1 and probes[0].probe
    assert {t.refusal for t in tickets if not t.allowed} == {Refusal.PROBE_IN_FLIGHT}
    assert store.snapshot([name])[name].in_flight == 1
    # a second wave while the probe is out is refused too
    assert not any(t.allowed for t in all_at_once(lambda: call(None)))

    # the probe succeeds: closed, strikes reset, slot released; everyone gets through again
    state = store.report(probes[0], Outcome.SUCCESS, latency_ms=250.0)
    assert state == BreakerState(epoch=1)
    after = all_at_once(lambda: call(None))
    assert all(t.allowed and not t.probe for t in after)
    assert store.snapshot([name])[name].in_flight == THREADS


def test_concurrent_failures_trip_once(redis_url: str) -> None:
    clock = Clock(50.0)
    store = make_store(redis_url, clock)
    tickets = all_at_once(lambda: store.acquire("b", max_concurrency=100, lease_s=60))
    assert all(t.allowed for t in tickets)  # all admitted while closed ...
    states = all_at_once(lambda: store.report(tickets.pop(), Outcome.BACKEND_FAULT))
    # ... then 50 faults at once: exactly 3 counted, one trip, the rest ignored while open
    assert store.breaker("b") == BreakerState(BreakerStatus.OPEN, 3, 1, 80.0, 0.0, 1)
    assert sum(s.status is BreakerStatus.CLOSED for s in states) == 2
    snap = store.snapshot(["b"])["b"]
    assert snap.in_flight == 0 and snap.success_rate == 0.0


def test_probe_failure_reopens_longer(redis_url: str) -> None:
    clock = Clock(0.0)
    store = make_store(redis_url, clock)
    for _ in range(3):
        store.record("b", Outcome.BACKEND_FAULT)
    clock.t = 30.0
    probe = store.acquire("b", max_concurrency=5, lease_s=10)
    assert probe.probe
    assert store.report(probe, Outcome.BACKEND_FAULT).retry_at == 90.0  # 60 s this time
    clock.t = 89.0
    assert store.acquire("b", max_concurrency=5, lease_s=10).refusal is Refusal.BREAKER_OPEN
    clock.t = 90.0
    probe = store.acquire("b", max_concurrency=5, lease_s=10)
    assert probe.probe
    # a probe that never reports loses its lease (60 s) and the next caller probes
    clock.t = 149.0
    assert store.acquire("b", max_concurrency=5, lease_s=10).refusal is Refusal.PROBE_IN_FLIGHT
    clock.t = 150.0
    assert store.acquire("b", max_concurrency=5, lease_s=10).probe


def test_slots_respect_max_concurrency_and_expire(redis_url: str) -> None:
    clock = Clock(100.0)
    store = make_store(redis_url, clock)
    tickets = all_at_once(lambda: store.acquire("img", max_concurrency=10, lease_s=30))
    won = [t for t in tickets if t.allowed]
    assert len(won) == 10
    assert {t.refusal for t in tickets if not t.allowed} == {Refusal.AT_CAPACITY}
    assert store.release("img", won[0].slot or "") and not store.release("img", "nope")
    assert store.snapshot(["img"])["img"].in_flight == 9
    assert store.acquire("img", max_concurrency=10, lease_s=30).allowed
    assert not store.acquire("img", max_concurrency=10, lease_s=30).allowed
    assert store.renew("img", won[1].slot or "", 100)
    clock.t = 130.0  # every other lease has run out (a dead worker's slot is not leaked)
    assert store.snapshot(["img"])["img"].in_flight == 1
    assert not store.renew("img", won[2].slot or "", 100)
    assert len([t for t in all_at_once(lambda: store.acquire("img", max_concurrency=10,
                                                             lease_s=30)) if t.allowed]) == 9


def test_a_released_slot_wakes_the_longest_waiting_job_once(redis_url: str) -> None:
    store = make_store(redis_url, Clock(100.0))
    held = [store.acquire("vid", max_concurrency=2, lease_s=30) for _ in range(2)]
    assert all(t.allowed for t in held)
    store.wait_for_slot(["vid", "img"], "late", since=20.0)
    store.wait_for_slot(["vid"], "early", since=10.0)
    store.wait_for_slot(["vid"], "late", since=5.0)  # already listed: keeps its place
    assert store.snapshot(["vid", "img"])["vid"].waiting == 2

    # record() alone never takes a waiter off
    assert store.record("vid", Outcome.SUCCESS) == BreakerState()
    _, woken = store.record_and_wake("vid", Outcome.SUCCESS, slot=held[0].slot)
    assert woken == "early"
    # the same slot again, or no slot: nothing was freed, nobody is woken
    assert store.record_and_wake("vid", Outcome.SUCCESS, slot=held[0].slot)[1] is None
    assert store.record_and_wake("vid", Outcome.BACKEND_FAULT)[1] is None
    state, woken = store.record_and_wake("vid", Outcome.BACKEND_FAULT, slot=held[1].slot)
    assert woken == "late" and state.strikes == 2
    assert store.record_and_wake("img", Outcome.SUCCESS,
                                 slot=store.acquire("img", max_concurrency=1, lease_s=30).slot
                                 )[1] == "late"  # listed on both: each list wakes it once
    again = store.acquire("vid", max_concurrency=2, lease_s=30)
    assert store.record_and_wake("vid", Outcome.SUCCESS, slot=again.slot)[1] is None


def test_a_job_that_stops_waiting_is_not_woken_and_the_next_one_is(redis_url: str) -> None:
    store = make_store(redis_url, Clock(100.0))
    for member, since in (("served", 1.0), ("next", 2.0)):
        store.wait_for_slot(["vid", "img"], member, since)
    store.stop_waiting(["vid", "img", "txt"], "served")  # lists it was never on: no error
    slot = store.acquire("vid", max_concurrency=1, lease_s=30).slot
    assert store.record_and_wake("vid", Outcome.SUCCESS, slot=slot)[1] == "next"


def test_snapshot_feeds_routing(redis_url: str) -> None:
    clock = Clock(10_000.0)
    store = make_store(redis_url, clock)
    cat = load_catalogue(Path(__file__).resolve().parents[2] / "config" / "backends.yaml",
                         env={})
    for _ in range(3):
        store.record("vid-standard", Outcome.BACKEND_FAULT)
    for lat in (100.0, 200.0):
        store.record("vid-premium", Outcome.SUCCESS, latency_ms=lat)
    store.record("vid-premium", Outcome.BACKEND_FAULT)
    snap = store.snapshot(cat.names)
    assert set(snap) == set(cat.names)
    assert snap["vid-premium"].success_rate == 0.8  # 1, 1, then 1 + 0.2 * (0 - 1)
    assert snap["vid-premium"].latency_ms == 120.0
    assert snap["vid-draft"] == pure.BackendHealth()
    view = snap["vid-standard"].to_dict(clock())
    assert view["breaker"]["state"] == "open" and view["breaker"]["strikes"] == 3
    spec = JobSpec.model_validate({"kind": "video", "input": {"prompt": "x", "duration_s": 4}})
    plan = plan_route(spec, cat, snap, now=clock())
    assert plan.backends == ("vid-standard-b", "vid-premium")
    assert {e.backend: e.code for e in plan.excluded}["vid-standard"] is (
        ExclusionCode.BREAKER_OPEN)


OPS = st.lists(
    st.tuples(
        st.sampled_from(["admit", "record", "renew"]),
        st.sampled_from([0.0, 0.0, 1.0, 30.0, 45.0, 61.0, 700.0]),
        st.sampled_from([Outcome.BACKEND_FAULT, Outcome.BACKEND_FAULT, *Outcome]),
        st.booleans(),
        st.none() | st.sampled_from([0.0, 50.0, 1000.0]),
        st.none() | st.integers(0, 1000),  # which admitted call reports (None: no slot)
    ),
    max_size=60,
)


@pytest.fixture(scope="module")
def shared_store(redis_url: str) -> tuple[HealthStore, Clock]:
    clock = Clock(0.0)
    return make_store(redis_url, clock), clock


_F, _OK = Outcome.BACKEND_FAULT, Outcome.SUCCESS
# random sequences seldom report from a call admitted before a trip the breaker recovered
# from: this one does, for a plain call and for a probe (and renews the stale probe)
STALE_REPORTS = [
    ("admit", 0.0, _F, False, None, None),  # slot 0, epoch 0
    *[("record", 0.0, _F, False, None, None)] * 3,  # open, epoch 1
    ("admit", 30.0, _F, False, None, None),  # slot 1: the probe
    ("record", 0.0, _OK, True, None, 1),  # closed
    *[("record", 0.0, _F, False, None, 0)] * 3,  # slot 0's stragglers: nothing
    ("record", 0.0, _OK, False, None, 0),
    *[("record", 0.0, _F, False, None, None)] * 3,  # open, epoch 2
    ("admit", 30.0, _F, False, None, None),  # slot 2: the probe
    ("admit", 61.0, _F, False, None, None),  # slot 3: the next probe (slot 2's lease ran out)
    ("record", 0.0, _F, True, None, 3),  # open, epoch 3
    ("admit", 61.0, _F, False, None, None),  # slot 4: the probe
    ("renew", 1.0, _F, False, None, 2),  # slot 2 is no longer the probe
    ("record", 0.0, _OK, True, None, 2),
    ("record", 0.0, Outcome.JOB_FAULT, True, None, 2),
    ("renew", 1.0, _F, False, None, 4),
    ("record", 0.0, _OK, True, None, 4),  # closed
]


@settings(max_examples=150, deadline=None)
@given(ops=OPS)
@example(ops=STALE_REPORTS)
def test_lua_matches_pure_transitions(
    shared_store: tuple[HealthStore, Clock],
    ops: list[tuple[str, float, Outcome, bool, float | None, int | None]],
) -> None:
    store, clock = shared_store
    name = uuid.uuid4().hex
    clock.t = 0.0
    state, sr, lat = BreakerState(), None, None
    slots: list[str] = []  # every admitted call's slot id, carrying its epoch
    for op, dt, outcome, probe, latency, which in ops:
        clock.t += dt
        slot = slots[which % len(slots)] if which is not None and slots else None
        epoch = slot_epoch(slot)
        if op == "admit":
            adm, state = pure.admit(state, clock.t, POLICY)
            t = store.acquire(name, max_concurrency=10_000, lease_s=1e9)
            assert (t.allowed, t.probe, t.refusal) == (adm.allowed, adm.probe, adm.refusal)
            if t.allowed:
                assert t.slot is not None and slot_epoch(t.slot) == adm.epoch
                slots.append(t.slot)
        elif op == "renew":
            renewed = pure.renew_probe(state, clock.t, POLICY, epoch=epoch)
            assert store.renew_probe(name, slot) == (
                state.status is BreakerStatus.HALF_OPEN and not pure.stale(state, epoch))
            state = renewed
        else:
            state = pure.record(state, outcome, clock.t, POLICY, probe=probe, epoch=epoch)
            sr, lat = pure.observe(sr, lat, outcome, latency)
            got = store.record(name, outcome, latency_ms=latency, probe=probe, slot=slot)
            assert got == state
        assert store.breaker(name) == state
    h = store.snapshot([name])[name]
    assert (h.breaker, h.success_rate, h.latency_ms) == (state, sr, lat)


def test_faults_admitted_before_a_recovery_do_not_reopen_it(redis_url: str) -> None:
    """An outage fails the attempts in flight over minutes (the last ones at their
    start_to_close). Those admitted before the trip that report after the probe closed the
    breaker say nothing about the backend since then; counted, three of them re-open a
    backend that works, and new jobs go to dearer ones for another cooldown."""
    clock = Clock(1000.0)
    store = make_store(redis_url, clock)
    before = [store.acquire("b", max_concurrency=10, lease_s=900) for _ in range(6)]
    assert all(t.allowed and not t.probe for t in before)
    for t in before[:3]:
        store.report(t, Outcome.BACKEND_FAULT)
    assert store.breaker("b").status is BreakerStatus.OPEN
    clock.t += POLICY.cooldown_base_s
    probe = store.acquire("b", max_concurrency=10, lease_s=900)
    assert probe.probe
    store.report(probe, Outcome.SUCCESS)
    assert store.breaker("b").status is BreakerStatus.CLOSED
    clock.t += 60
    for t in before[3:]:  # the outage's stragglers
        store.report(t, Outcome.BACKEND_FAULT)
    assert store.breaker("b").status is BreakerStatus.CLOSED
    assert store.breaker("b").strikes == 0
    # their slots were given back all the same
    assert store.snapshot(["b"])["b"].in_flight == 0
    # and calls admitted since the recovery still count: three faults open it again
    for _ in range(3):
        store.report(store.acquire("b", max_concurrency=10, lease_s=900), Outcome.BACKEND_FAULT)
    assert store.breaker("b").status is BreakerStatus.OPEN


def test_a_probe_admitted_before_the_latest_trip_decides_nothing(redis_url: str) -> None:
    """A probe whose chain went silent past its lease loses the probe's place; if the next
    probe fails and, after the longer cooldown, a third is out, the first one's late report
    or renewal must not close the breaker nor free or keep the third's place."""
    clock = Clock(0.0)
    store = make_store(redis_url, clock)
    for _ in range(3):
        store.record("b", Outcome.BACKEND_FAULT)
    clock.t = 30.0
    first = store.acquire("b", max_concurrency=10, lease_s=900)
    clock.t = 30.0 + POLICY.probe_lease_s
    second = store.acquire("b", max_concurrency=10, lease_s=900)
    assert first.probe and second.probe
    assert store.report(second, Outcome.BACKEND_FAULT).status is BreakerStatus.OPEN
    clock.t = store.breaker("b").retry_at
    third = store.acquire("b", max_concurrency=10, lease_s=900)
    assert third.probe
    held = store.breaker("b")
    assert not store.renew_probe("b", first.slot)
    assert store.report(first, Outcome.SUCCESS) == held
    assert store.report(first, Outcome.JOB_FAULT) == held  # its slot is gone already
    assert store.acquire("b", max_concurrency=10, lease_s=900).refusal is (
        Refusal.PROBE_IN_FLIGHT)
    assert store.renew_probe("b", third.slot)
    assert store.report(third, Outcome.SUCCESS).status is BreakerStatus.CLOSED


def test_slot_ids_carry_the_epoch_and_old_ones_count_as_current(redis_url: str) -> None:
    clock = Clock(0.0)
    store = make_store(redis_url, clock)
    t = store.acquire("b", max_concurrency=10, lease_s=900)
    assert t.slot is not None and slot_epoch(t.slot) == 0 and len(t.slot) <= 40
    for _ in range(3):
        store.record("b", Outcome.BACKEND_FAULT)
    clock.t = 30.0
    store.report(store.acquire("b", max_concurrency=10, lease_s=900), Outcome.SUCCESS)
    assert store.breaker("b") == BreakerState(epoch=1)
    # an attempt row written before slot ids carried an epoch (a plain uuid hex): its
    # report counts, as before
    legacy = uuid.uuid4().hex
    store.redis.zadd(f"{store.prefix}:slots:b", {legacy: 1e9})
    assert store.record("b", Outcome.BACKEND_FAULT, slot=legacy).strikes == 1
    assert store.snapshot(["b"])["b"].in_flight == 1  # t's slot; the legacy one released
    assert slot_epoch(None) is None and slot_epoch(legacy) is None
    assert slot_epoch("ab.12") == 12 and slot_epoch("ab.") is None and slot_epoch("ab.x") is None
