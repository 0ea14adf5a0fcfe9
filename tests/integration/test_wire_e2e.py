"""The job chain, its ledger and real PostgreSQL, with a provider that misbehaves on the wire
(``wire_fakes``) over production's transport: the job's end state and its charge are the
provider's word, however the bytes came. The chain runs in this process (as the worker's
tasks would); the failover backend is the simulator."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from orchestrator.domain.jobs import JobSpec
from orchestrator.domain.pricing import Usage, actual_micros

from .e2e_support import (
    Rig,
    budgeted_rig_fixture,
    run_chain,
    runner_with_backend_at,
    simulator_fixture,
)
from .wire_fakes import Request, Route, WireFake, json_bytes, raw, reset

TENANT = "acme"
_PRICE = {"model": "per_second", "usd_per_second": 0.03}
STOP_S = 5.0  # vid-wire's start_to_close_s
CATALOGUE: dict[str, Any] = {
    "defaults": {"timeouts": {"connect_s": 2.0, "read_s": 3.0, "start_to_close_s": 60},
                 "idempotency": "none"},
    "backends": [
        # served by the wire fake (its base_url is replaced); the simulator's is the failover
        {"name": "vid-wire", "protocol": "predictions", "kinds": ["video"], "tier": "standard",
         "base_url": "${ORCH_SIMULATOR_URL}/vid-wire", "price": _PRICE,
         "timeouts": {"connect_s": 2.0, "read_s": 3.0, "start_to_close_s": STOP_S}},
        {"name": "vid-sim", "protocol": "predictions", "kinds": ["video"], "tier": "standard",
         "base_url": "${ORCH_SIMULATOR_URL}/vid-sim",
         "price": {**_PRICE, "usd_per_second": 0.05}},
    ],
}


sim = simulator_fixture(CATALOGUE)
rig = budgeted_rig_fixture(CATALOGUE, TENANT)


@pytest.fixture()
def fake() -> Iterator[WireFake]:
    with WireFake() as server:
        yield server


def run_with(rig: Rig, fake: WireFake, job_id: uuid.UUID) -> list[float]:
    """The job's chain to its end, vid-wire's adapter pointed at ``fake``; the waits its
    steps asked for."""
    token = rig.job(job_id).chain_token
    assert token is not None
    waits: list[float] = []
    deadline = time.monotonic() + 30
    with runner_with_backend_at(rig, "vid-wire", fake.url) as runner:
        while not (nxt := runner.advance(job_id, token)).done:
            assert nxt.poll_in_s is not None
            waits.append(nxt.poll_in_s)
            assert time.monotonic() + nxt.poll_in_s < deadline, f"the chain waits {waits}"
            time.sleep(nxt.poll_in_s)  # the countdown the step asked for, as Celery would
    return waits


def video_job() -> JobSpec:
    return JobSpec.model_validate({"kind": "video", "input": {"prompt": "a lighthouse",
                                                               "duration_s": 4}})


def listing_garbled_once() -> Route:
    """The lookup: first a proxy's error page with a 200, then the provider's listing of
    the prediction the lost create made."""
    lock = threading.Lock()
    calls = [0]

    def answer(conn: socket.socket, req: Request) -> None:
        with lock:
            calls[0] += 1
            first = calls[0] == 1
        if first:
            page = b"<html><body>upstream hiccup</body></html>"
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(page), page))
            return
        key = req.path.partition("idempotency_key=")[2].replace("%3A", ":")
        conn.sendall(json_bytes(200, {"results": [
            {"id": "p-1", "status": "starting", "idempotency_key": key}]}))

    return answer


def test_a_lookup_answered_by_an_error_page_is_asked_again_not_given_up(
        rig: Rig, fake: WireFake) -> None:
    """The create's answer is lost (the connection reset once the request was read). The
    first lookup meets a proxy's HTML page with a 200; the next finds the prediction. Taken
    as "the provider has no lookup", the attempt was closed uncertain on this backend, which
    does not de-duplicate, and the job paid the simulator for the same work."""
    fake.route("POST", "/v1/predictions", reset())
    fake.route("GET", "/v1/predictions", listing_garbled_once())
    fake.route("GET", "/v1/predictions/p-1", raw(json_bytes(200, {
        "id": "p-1", "status": "succeeded", "output": "https://cdn/p-1.mp4",
        "metrics": {"video_seconds": 4, "resolution": "720p"}})))
    job_id = rig.submit(video_job())
    run_with(rig, fake, job_id)

    job = rig.job(job_id)
    (attempt,) = rig.attempts(job_id)  # no failover
    assert (job.status, attempt.backend, attempt.outcome) == ("succeeded", "vid-wire",
                                                               "succeeded")
    assert attempt.external_id == "p-1"
    assert len(fake.received("POST", "/v1/predictions")) == 1  # never sent again
    assert len(fake.received("GET", "/v1/predictions")) == 2
    bill = actual_micros(rig.container.catalogue().get("vid-wire"),
                         Usage(video_seconds=4, resolution="720p"))
    assert job.cost_micros == attempt.cost_micros == bill
    assert rig.ledger() == (bill, 0)


@pytest.mark.parametrize("retry_after", ["86400", "Fri, 31 Dec 2100 23:59:59 GMT"])
def test_a_polls_huge_retry_after_waits_no_longer_than_the_attempts_start_to_close(
        rig: Rig, fake: WireFake, retry_after: str) -> None:
    """A poll answered 429 with a Retry-After of a day (or a date decades ahead) is honoured
    up to the attempt's start_to_close, not for the day: the work is looked at then, and
    its output adopted, while the provider still keeps it."""
    polls = [0]
    lock = threading.Lock()

    def poll(conn: socket.socket, _: Request) -> None:
        with lock:
            polls[0] += 1
            first = polls[0] == 1
        conn.sendall(json_bytes(429, {"error": {"code": "rate_limited"}},
                                {"Retry-After": retry_after}, reason="Too Many Requests")
                     if first else json_bytes(200, {
                         "id": "p-1", "status": "succeeded", "output": "https://cdn/p-1.mp4",
                         "metrics": {"video_seconds": 4, "resolution": "720p"}}))

    fake.route("POST", "/v1/predictions", raw(json_bytes(201, {"id": "p-1"})))
    fake.route("GET", "/v1/predictions/p-1", poll)
    job_id = rig.submit(video_job())
    waits = run_with(rig, fake, job_id)

    assert max(waits) <= STOP_S
    job = rig.job(job_id)
    (attempt,) = rig.attempts(job_id)
    assert (job.status, attempt.outcome, attempt.external_id) == ("succeeded", "succeeded",
                                                                   "p-1")
    bill = actual_micros(rig.container.catalogue().get("vid-wire"),
                         Usage(video_seconds=4, resolution="720p"))
    assert job.cost_micros == bill and rig.ledger() == (bill, 0)


def test_a_slow_poll_does_not_put_off_the_look_at_start_to_close(
        rig: Rig, fake: WireFake) -> None:
    """A poll that takes its time to answer 429 with a Retry-After of a day: the look at
    start_to_close comes at the limit, not that poll's answer time later (the provider bills
    the run until it is asked, and the hold covers start_to_close_s of it)."""
    slow_s = 2.0  # within vid-wire's read_s
    sent: dict[str, float] = {}
    lock = threading.Lock()

    def create(conn: socket.socket, _: Request) -> None:
        sent["create"] = time.monotonic()
        conn.sendall(json_bytes(201, {"id": "p-1"}))

    def poll(conn: socket.socket, _: Request) -> None:
        with lock:
            first = "poll" not in sent
            sent.setdefault("poll", time.monotonic())
        if first:  # the provider's latency, not a wait for a race
            threading.Event().wait(slow_s)
            conn.sendall(json_bytes(429, {"error": {"code": "rate_limited"}},
                                    {"Retry-After": "86400"}, reason="Too Many Requests"))
            return
        sent["look"] = time.monotonic()
        conn.sendall(json_bytes(200, {
            "id": "p-1", "status": "succeeded", "output": "https://cdn/p-1.mp4",
            "metrics": {"video_seconds": 4, "resolution": "720p"}}))

    fake.route("POST", "/v1/predictions", create)
    fake.route("GET", "/v1/predictions/p-1", poll)
    job_id = rig.submit(video_job())
    run_with(rig, fake, job_id)

    assert sent["poll"] - sent["create"] < STOP_S - slow_s  # the slow poll was in time
    assert sent["look"] - sent["create"] < STOP_S + 0.5, sent
    assert rig.job(job_id).status == "succeeded"


SHARED_DONE = {"id": "p-shared", "status": "succeeded", "output": "https://cdn/p-shared.mp4",
               "metrics": {"video_seconds": 4, "resolution": "720p"}}


def listing_of_the_shared_prediction(status: str) -> Route:
    """The gateway's lookup: the one prediction, listed under whatever key is asked for."""

    def answer(conn: socket.socket, req: Request) -> None:
        key = req.path.partition("idempotency_key=")[2].replace("%3A", ":")
        item = SHARED_DONE if status == "succeeded" else {"id": "p-shared", "status": status}
        conn.sendall(json_bytes(200, {"results": [{**item, "idempotency_key": key}]}))

    return answer


@pytest.mark.parametrize("lookup", ["unsupported", "processing", "succeeded"])
def test_a_prediction_id_another_attempt_holds_is_not_taken_polled_or_paid_again(
        rig: Rig, fake: WireFake, lookup: str, caplog: pytest.LogCaptureFixture) -> None:
    """A gateway in front of the provider answers every create (each with its own
    idempotency key) with the same running prediction. The first job takes it; the second
    used to record it too, poll it, deliver the first's output (maybe another tenant's) as
    its own and be charged for it. Now the answer is unreadable for the second: its outcome
    is unknown, and the provider, which cannot name its work apart (no lookup, or a lookup
    that lists the first's prediction, running or done, under the second's key) leaves it
    uncertain; pinned to that backend, the job fails, charged nothing."""
    fake.route("POST", "/v1/predictions", raw(json_bytes(201, {
        "id": "p-shared", "status": "starting"})))
    fake.route("GET", "/v1/predictions/p-shared", raw(json_bytes(200, SHARED_DONE)))
    if lookup != "unsupported":  # the lookup lists the first's prediction, running or done
        fake.route("GET", "/v1/predictions", listing_of_the_shared_prediction(lookup))
    spec = video_job().model_copy(update={"backend": "vid-wire"})
    first_id, second_id = rig.submit(spec), rig.submit(spec)
    with runner_with_backend_at(rig, "vid-wire", fake.url) as runner:
        first_token, second_token = rig.job(first_id).chain_token, rig.job(second_id).chain_token
        assert first_token is not None and second_token is not None
        # the first job's create is answered and recorded; its prediction is still running
        assert not runner.advance(first_id, first_token).done
        (running,) = rig.attempts(first_id)
        assert running.external_id == "p-shared" and running.outcome is None
        with caplog.at_level("WARNING", logger="orchestrator.service.runner"):
            run_chain(runner, second_id, second_token)
        run_chain(runner, first_id, first_token)

    bill = actual_micros(rig.container.catalogue().get("vid-wire"),
                         Usage(video_seconds=4, resolution="720p"))
    first, second = rig.job(first_id), rig.job(second_id)
    (first_attempt,) = rig.attempts(first_id)
    assert (first.status, first_attempt.outcome, first_attempt.external_id) == (
        "succeeded", "succeeded", "p-shared")
    assert first.result is not None and "p-shared.mp4" in json.dumps(first.result)
    assert first.cost_micros == first_attempt.cost_micros == bill

    (second_attempt,) = rig.attempts(second_id)
    assert second.status == "failed" and second.result is None
    assert second_attempt.outcome == "uncertain"
    assert second_attempt.error_code == "outcome_unknown"
    assert second_attempt.external_id is None and second_attempt.cost_micros is None
    assert not second.cost_micros
    assert len(fake.received("POST", "/v1/predictions")) == 2  # the second never sent again
    assert len(fake.received("GET", "/v1/predictions/p-shared")) == 1  # the first's poll only
    assert rig.ledger() == (bill, 0)

    held = [r for r in caplog.records if getattr(r, "error", None) == "external_id_held"]
    assert held and all(getattr(r, "job_id", None) == str(second_id)
                        and getattr(r, "backend", None) == "vid-wire" for r in held)
    assert not any("p-shared" in r.getMessage() or "p-shared" in str(r.__dict__)
                   for r in held)
