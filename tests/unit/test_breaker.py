"""The breaker's pure transitions, the outcome taxonomy and the health EWMAs."""

from __future__ import annotations

import pytest

from orchestrator.domain.breaker import (
    CLOSED,
    BackendHealth,
    BreakerPolicy,
    BreakerState,
    BreakerStatus,
    Refusal,
    admit,
    ewma,
    observe,
    record,
    renew_probe,
    shown_status,
)
from orchestrator.domain.outcomes import Outcome, classify_http

P = BreakerPolicy(threshold=3, cooldown_base_s=30, cooldown_cap_s=600, probe_lease_s=60)
OPEN, HALF = BreakerStatus.OPEN, BreakerStatus.HALF_OPEN


def fail(s: BreakerState, now: float, *, probe: bool = False) -> BreakerState:
    return record(s, Outcome.BACKEND_FAULT, now, P, probe=probe)


def test_three_consecutive_backend_faults_open() -> None:
    s = fail(fail(CLOSED, 1), 2)
    assert (s.status, s.strikes) == (BreakerStatus.CLOSED, 2)
    s = fail(s, 3)
    assert (s.status, s.strikes, s.trips, s.retry_at) == (OPEN, 3, 1, 33.0)
    assert admit(s, 32.9, P)[0].refusal is Refusal.BREAKER_OPEN
    assert admit(s, 32.9, P)[0].retry_at == 33.0


def test_success_resets_and_neutral_outcomes_are_not_strikes() -> None:
    s = fail(fail(CLOSED, 1), 2)
    assert record(s, Outcome.SUCCESS, 3, P, probe=False) == CLOSED
    for neutral in (Outcome.JOB_FAULT, Outcome.TRANSIENT, Outcome.CANCELLED):
        assert record(s, neutral, 3, P, probe=False) == s
    # job faults in between do not break the run of backend faults either
    s = record(s, Outcome.JOB_FAULT, 3, P, probe=False)
    assert fail(s, 4).status is OPEN


def test_exactly_one_probe_after_cooldown() -> None:
    s = fail(fail(fail(CLOSED, 0), 0), 0)  # open until 30
    assert shown_status(s, 29) is OPEN and shown_status(s, 30) is HALF
    a, s = admit(s, 30, P)
    assert a.allowed and a.probe and s.status is HALF and s.probe_until == 90
    b, s2 = admit(s, 31, P)
    assert not b.allowed and b.refusal is Refusal.PROBE_IN_FLIGHT and s2 == s
    # a report from a call that is not the probe decides nothing in half-open
    assert record(s, Outcome.SUCCESS, 32, P, probe=False) == s
    assert fail(s, 32) == s
    assert record(s, Outcome.SUCCESS, 33, P, probe=True) == BreakerState(epoch=1)


def test_probe_failure_reopens_longer_and_cooldown_is_capped() -> None:
    s = fail(fail(fail(CLOSED, 0), 0), 0)
    expected = [60, 120, 240, 480, 600, 600]
    t = 0.0
    for cooldown in expected:
        t = s.retry_at
        _, s = admit(s, t, P)
        s = fail(s, t, probe=True)
        assert s.status is OPEN and s.retry_at - t == cooldown
    assert s.trips == 7
    _, s = admit(s, s.retry_at, P)
    s = record(s, Outcome.SUCCESS, s.retry_at, P, probe=True)
    # trips reset: the next trip waits the base cooldown again; the epoch counts on
    assert s == BreakerState(epoch=7)
    s = fail(fail(fail(s, 0), 0), 0)
    assert s.retry_at == 30


def test_neutral_probe_frees_the_slot_and_lost_probe_lease_expires() -> None:
    s = fail(fail(fail(CLOSED, 0), 0), 0)
    _, s = admit(s, 30, P)
    s = record(s, Outcome.JOB_FAULT, 31, P, probe=True)
    assert s.status is HALF and s.probe_until == 0
    a, s = admit(s, 31, P)
    assert a.probe  # the next caller probes at once
    assert not admit(s, 90.5, P)[0].allowed
    a, s = admit(s, 91, P)  # the probe's lease (60 s) ran out: its worker is presumed dead
    assert a.probe and s.probe_until == 151


def test_a_running_probe_renews_its_lease_and_stays_the_only_probe() -> None:
    s = fail(fail(fail(CLOSED, 0), 0), 0)
    assert renew_probe(s, 10, P) == s  # open: no probe to renew
    assert renew_probe(CLOSED, 10, P) == CLOSED
    a, s = admit(s, 30, P)
    assert a.probe and s.probe_until == 90
    s = renew_probe(s, 80, P)  # a step of the probe's chain
    assert s.probe_until == 140
    assert renew_probe(s, 70, P) == s  # never shortened
    assert admit(s, 100, P)[0].refusal is Refusal.PROBE_IN_FLIGHT  # past the first lease
    assert record(s, Outcome.SUCCESS, 120, P, probe=True) == BreakerState(epoch=1)


def test_calls_admitted_before_the_latest_trip_are_ignored_once_it_has_tripped() -> None:
    before = admit(CLOSED, 0, P)[0]
    assert before.allowed and before.epoch == 0
    s = fail(fail(fail(CLOSED, 0), 0), 0)
    assert s.epoch == 1
    probe, s = admit(s, 30, P)
    assert probe.probe and probe.epoch == 1
    s = record(s, Outcome.SUCCESS, 31, P, probe=True, epoch=probe.epoch)
    assert s == BreakerState(epoch=1)
    # the outage's stragglers: no strike, however many
    for t in range(32, 40):
        assert record(s, Outcome.BACKEND_FAULT, t, P, probe=False, epoch=before.epoch) == s
    # nor a reset: a fresh strike stays after an old call's success
    after = admit(s, 40, P)[0]
    s1 = record(s, Outcome.BACKEND_FAULT, 41, P, probe=False, epoch=after.epoch)
    assert s1.strikes == 1
    assert record(s1, Outcome.SUCCESS, 42, P, probe=False, epoch=before.epoch) == s1
    # calls admitted since, and calls of unknown epoch (older slot ids), still count
    s2 = record(s1, Outcome.BACKEND_FAULT, 43, P, probe=False, epoch=None)
    s3 = record(s2, Outcome.BACKEND_FAULT, 44, P, probe=False, epoch=after.epoch)
    assert (s2.strikes, s3.status, s3.epoch) == (2, OPEN, 2)


def test_a_probe_admitted_before_the_latest_trip_is_no_longer_the_probe() -> None:
    s = fail(fail(fail(CLOSED, 0), 0), 0)
    old, s = admit(s, 30, P)
    new, s = admit(s, 90, P)  # the old probe's lease ran out
    s = record(s, Outcome.BACKEND_FAULT, 91, P, probe=True, epoch=new.epoch)
    assert (s.status, s.epoch) == (OPEN, 2)
    third, s = admit(s, s.retry_at, P)
    assert third.probe and third.epoch == 2
    for outcome in Outcome:  # neither a verdict, nor the probe's place freed
        assert record(s, outcome, 160, P, probe=True, epoch=old.epoch) == s
    assert renew_probe(s, 200, P, epoch=old.epoch) == s  # nor its place kept
    assert renew_probe(s, 200, P, epoch=third.epoch).probe_until == 260
    assert record(s, Outcome.SUCCESS, 161, P, probe=True, epoch=third.epoch) == (
        BreakerState(epoch=2))


def test_open_ignores_late_reports() -> None:
    s = fail(fail(fail(CLOSED, 0), 0), 0)
    assert record(s, Outcome.SUCCESS, 1, P, probe=False) == s
    assert fail(s, 1) == s


def test_policy_validation() -> None:
    with pytest.raises(ValueError):
        BreakerPolicy(threshold=0)
    with pytest.raises(ValueError):
        BreakerPolicy(cooldown_base_s=10, cooldown_cap_s=5)
    assert BreakerPolicy().cooldown_s(10_000) == 600


@pytest.mark.parametrize(
    ("kwargs", "outcome"),
    [
        ({"status": 200}, Outcome.SUCCESS),
        ({"status": 201}, Outcome.SUCCESS),
        ({"status": 429}, Outcome.TRANSIENT),
        ({"status": 400}, Outcome.JOB_FAULT),
        ({"status": 422}, Outcome.JOB_FAULT),
        ({"status": 401}, Outcome.BACKEND_FAULT),
        ({"status": 402}, Outcome.BACKEND_FAULT),
        ({"status": 500}, Outcome.BACKEND_FAULT),
        ({"status": 503}, Outcome.BACKEND_FAULT),
        ({"status": 302}, Outcome.BACKEND_FAULT),
        ({"timeout": True}, Outcome.BACKEND_FAULT),
        ({"connection_error": True}, Outcome.BACKEND_FAULT),
        ({"status": 200, "malformed": True}, Outcome.BACKEND_FAULT),
    ],
)
def test_classify_http(kwargs: dict[str, object], outcome: Outcome) -> None:
    assert classify_http(**kwargs) is outcome  # type: ignore[arg-type]


def test_outcome_taxonomy() -> None:
    assert [o for o in Outcome if o.is_strike] == [Outcome.BACKEND_FAULT]
    assert {o for o in Outcome if o.observed} == {Outcome.SUCCESS, Outcome.BACKEND_FAULT}


def test_ewma_and_observe() -> None:
    assert ewma(None, 5.0) == 5.0
    assert ewma(10.0, 20.0, 0.5) == 15.0
    assert observe(None, None, Outcome.SUCCESS, 100.0, 0.5) == (1.0, 100.0)
    assert observe(1.0, 100.0, Outcome.BACKEND_FAULT, 3000.0, 0.5) == (0.5, 100.0)
    assert observe(0.5, 100.0, Outcome.JOB_FAULT, 3000.0, 0.5) == (0.5, 100.0)


def test_health_to_dict() -> None:
    s = fail(fail(fail(CLOSED, 0), 0), 0)
    d = BackendHealth(s, 0.25, 123.456, 4, 7).to_dict(now=10)
    assert d == {"breaker": {"state": "open", "strikes": 3, "retry_at": "1970-01-01T00:00:30Z",
                             "trips": 1, "probe_in_flight": False},
                 "success_rate": 0.25, "latency_ms": 123.5, "in_flight": 4, "waiting": 7}
    assert BackendHealth(s).to_dict(now=30)["breaker"]["state"] == "half_open"
    assert BackendHealth().to_dict(now=0)["breaker"] == {
        "state": "closed", "strikes": 0, "retry_at": None, "trips": 0, "probe_in_flight": False}
