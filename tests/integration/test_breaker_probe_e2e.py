"""A half-open breaker admits exactly one probe at a time, for as long as that probe runs:
a probe job that runs longer than the probe lease (a video job runs for minutes, the lease is
meant for a probe whose worker died) keeps the backend to itself while its chain still
looks at it. Real PostgreSQL, Redis and the simulator over HTTP; the chain runs in this
process, as the worker's tasks would."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from orchestrator.domain import breaker as pure
from orchestrator.domain.breaker import BreakerPolicy, BreakerStatus, Refusal
from orchestrator.domain.jobs import JobSpec
from orchestrator.domain.outcomes import Outcome
from orchestrator.domain.polling import PollPolicy
from orchestrator.health.store import HealthStore, slot_epoch
from orchestrator.ledger.service import utcnow
from orchestrator.service.runner import JobRunner

from .e2e_support import Rig, run_chain

PROBE_LEASE_S = 2.0
RUN_MS = 7000  # the probe job runs well past its lease


def video(**kw: Any) -> JobSpec:
    return JobSpec.model_validate({
        "kind": "video", "tier": "draft",
        "input": {"prompt": "a lighthouse at dusk", "duration_s": 4, "resolution": "480p"},
        **kw})


def start_chain(rig: Rig, runner: JobRunner) -> tuple[uuid.UUID, threading.Thread]:
    """A job pinned to vid-cheap, its chain run by ``runner`` in a thread of this process."""
    job_id = rig.submit(video(backend="vid-cheap"))
    token = rig.job(job_id).chain_token
    assert token is not None
    chain = threading.Thread(target=run_chain, args=(runner, job_id, token, 60), daemon=True)
    chain.start()
    return job_id, chain


@pytest.fixture()
def short_lease(rig: Rig) -> Iterator[tuple[HealthStore, JobRunner]]:
    """The rig's shared breaker state, seen through a policy with a short probe lease and
    cooldown, and a runner using it."""
    shared = rig.container.health
    store = HealthStore(shared.redis, prefix=shared.prefix, policy=BreakerPolicy(
        cooldown_base_s=0.5, cooldown_cap_s=0.5, probe_lease_s=PROBE_LEASE_S))
    c, s = rig.container, rig.container.settings
    yield store, JobRunner(c.engine, c.ledger, c.catalogue, store, c.adapter, utcnow,
                           PollPolicy(s.poll_min_s, s.poll_max_s, s.chain_grace_s))


def test_a_probe_running_past_its_lease_stays_the_only_probe(
        rig: Rig, short_lease: tuple[HealthStore, JobRunner]) -> None:
    store, runner = short_lease
    rig.budget(1_000_000_000)
    rig.control("vid-cheap", duration_ms=RUN_MS)
    for _ in range(3):
        state = store.record("vid-cheap", Outcome.BACKEND_FAULT)
    assert state.status is BreakerStatus.OPEN
    rig.wait_for("the cooldown to end",
                 lambda: pure.refusal(store.breaker("vid-cheap"), time.time()) is None, 10)

    job_id, chain = start_chain(rig, runner)
    try:
        rig.wait_for("the probe to start", lambda: bool(rig.attempts(job_id)), 10)
        (attempt,) = rig.attempts(job_id)
        assert attempt.probe

        # another process asks while the probe job still runs, past the probe's lease
        started = attempt.started_at.timestamp()
        rig.wait_for("the probe lease to pass",
                     lambda: time.time() > started + PROBE_LEASE_S + 1.0, 10)
        assert rig.attempts(job_id)[0].outcome is None, "the probe ended before its lease"
        other = HealthStore(store.redis, prefix=store.prefix, policy=store.policy)
        ticket = other.acquire("vid-cheap", max_concurrency=50, lease_s=60)
        if ticket.allowed:
            other.release("vid-cheap", ticket.slot or "")
        assert not ticket.allowed and ticket.refusal is Refusal.PROBE_IN_FLIGHT, ticket
    finally:
        chain.join(timeout=60)
    assert not chain.is_alive()
    job = rig.job(job_id)
    assert job.status == "succeeded", job.error_message
    assert rig.counters("vid-cheap")["created"] == 1
    assert store.breaker("vid-cheap").status is BreakerStatus.CLOSED  # the probe decided


def test_renewing_a_probe_touches_only_a_half_open_breaker(rig: Rig) -> None:
    now = [1000.0]
    policy = BreakerPolicy(cooldown_base_s=10, cooldown_cap_s=10, probe_lease_s=5)
    store = HealthStore(rig.container.health.redis, prefix=f"t-{uuid.uuid4().hex}",
                        policy=policy, clock=lambda: now[0])
    assert store.renew_probe("b") is False  # closed: nothing to renew, nothing written
    assert store.breaker("b") == pure.CLOSED
    for _ in range(3):
        store.record("b", Outcome.BACKEND_FAULT)
    opened = store.breaker("b")
    assert store.renew_probe("b") is False  # open: no probe
    assert store.breaker("b") == opened
    now[0] += 10
    probe = store.acquire("b", max_concurrency=5, lease_s=60)
    assert probe.probe
    now[0] += 4
    assert store.renew_probe("b") is True
    assert store.breaker("b").probe_until == now[0] + 5
    state, expect = store.breaker("b"), pure.renew_probe(opened, now[0], policy)
    assert expect == opened  # the pure transition leaves an open breaker alone too
    assert pure.renew_probe(state, now[0], policy) == state
    store.record("b", Outcome.SUCCESS, probe=True, slot=probe.slot)
    assert store.breaker("b").status is BreakerStatus.CLOSED


def test_a_job_admitted_before_an_outage_failing_after_the_recovery_is_no_strike(
        rig: Rig, short_lease: tuple[HealthStore, JobRunner]) -> None:
    """The outage's leftover: a job admitted while the breaker was closed, whose prediction
    fails (a backend fault) after the breaker tripped and its probe closed it again. Its
    attempt row keeps the slot id, with the breaker's epoch at admission, through
    PostgreSQL; its report must not strike the backend that works again."""
    store, runner = short_lease
    rig.budget(1_000_000_000)
    rig.control("vid-cheap", duration_ms=3000, error="prediction_failed", times=1)
    job_id, chain = start_chain(rig, runner)
    try:
        rig.wait_for("the attempt to start", lambda: bool(rig.attempts(job_id)), 10)
        (attempt,) = rig.attempts(job_id)
        assert not attempt.probe and slot_epoch(attempt.slot) == store.breaker(
            "vid-cheap").epoch
        for _ in range(3):  # the outage, seen by other jobs
            state = store.record("vid-cheap", Outcome.BACKEND_FAULT)
        assert state.status is BreakerStatus.OPEN
        rig.wait_for("the cooldown to end",
                     lambda: pure.refusal(store.breaker("vid-cheap"), time.time()) is None, 10)
        probe = store.acquire("vid-cheap", max_concurrency=50, lease_s=60)
        assert probe.probe
        assert store.report(probe, Outcome.SUCCESS).status is BreakerStatus.CLOSED
        assert rig.attempts(job_id)[0].outcome is None, "the job ended before the recovery"
    finally:
        chain.join(timeout=60)
    assert not chain.is_alive()
    job = rig.job(job_id)
    assert job.status == "failed", job.status
    assert rig.attempts(job_id)[0].fault == Outcome.BACKEND_FAULT.value
    after = store.breaker("vid-cheap")
    assert (after.status, after.strikes) == (BreakerStatus.CLOSED, 0), after
    assert store.snapshot(["vid-cheap"])["vid-cheap"].in_flight == 0  # its slot given back
