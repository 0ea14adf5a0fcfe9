"""The simulator behaves as real providers do where the engine must reconcile: idempotency
keys honoured only as far as the backend's mode says, a bill per provider job, partial bills
for cancels, answers lost after the work was done, and predictions found by client reference.
All over real HTTP, concurrency driven by threads and the latency knob."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.integration.simulator_fixture import Sim, sim_fixture, sim_server_fixture  # noqa: F401

CHAT = {"max_tokens": 64, "messages": [{"role": "user", "content": "a haiku on ledgers"}]}
VIDEO = {"prompt": "a red kite", "duration_s": 5, "resolution": "720p"}


def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def submit(sim: Sim, backend: str, key: str | None) -> httpx.Response:
    """One submission on its own connection (chat for txt-a, a prediction for vid-a)."""
    headers = {"Idempotency-Key": key} if key else {}
    path, body = (("/v1/chat/completions", CHAT) if backend == "txt-a"
                  else ("/v1/predictions", {"input": VIDEO}))
    return httpx.post(f"{sim.url}/{backend}{path}", json=body, headers=headers, timeout=10.0)


def twice_while_first_in_flight(sim: Sim, backend: str, key: str
                                ) -> tuple[httpx.Response, httpx.Response]:
    """Two submissions with one key, the second sent while the first is being processed."""
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(submit, sim, backend, key)
        wait_until(lambda: sim.state(backend)["submissions_in_flight"] == 1)
        second = pool.submit(submit, sim, backend, key)
        return first.result(), second.result()


BACKENDS = ["txt-a", "vid-a"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_inflight_mode_waits_for_the_first_and_replays_it(sim: Sim, backend: str) -> None:
    sim.control(backend, idempotency="inflight", latency_ms=400, duration_ms=0)
    one, two = twice_while_first_in_flight(sim, backend, "job-1")
    assert one.status_code == two.status_code and one.status_code in (200, 201)
    assert one.json() == two.json()
    counters = sim.counters(backend)
    assert (counters["submissions"], counters["created"], counters["replays"]) == (2, 1, 1)
    three = submit(sim, backend, "job-1")
    assert three.json()["id"] == one.json()["id"]
    assert sim.counters(backend)["created"] == 1 and sim.counters(backend)["replays"] == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_completed_mode_makes_a_repeat_in_flight_a_new_job(sim: Sim, backend: str) -> None:
    state = sim.state(backend)
    assert state["idempotency"] == "completed"  # the default, as many real providers do
    sim.control(backend, latency_ms=400, duration_ms=0)
    one, two = twice_while_first_in_flight(sim, backend, "job-1")
    assert one.json()["id"] != two.json()["id"]
    counters = sim.counters(backend)
    assert (counters["created"], counters["replays"]) == (2, 0)
    three = submit(sim, backend, "job-1")  # after completion: the first one's job
    assert three.json()["id"] == one.json()["id"]
    assert sim.counters(backend)["created"] == 2 and sim.counters(backend)["replays"] == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_none_mode_makes_every_submission_a_new_job(sim: Sim, backend: str) -> None:
    sim.control(backend, idempotency="none", latency_ms=400, duration_ms=0)
    one, two = twice_while_first_in_flight(sim, backend, "job-1")
    three = submit(sim, backend, "job-1")
    assert len({one.json()["id"], two.json()["id"], three.json()["id"]}) == 3
    counters = sim.counters(backend)
    assert (counters["created"], counters["replays"]) == (3, 0)


def test_a_repeat_of_an_error_is_processed_anew(sim: Sim) -> None:
    sim.control("txt-a", status_code=503, times=1)
    assert submit(sim, "txt-a", "job-1").status_code == 503
    again = submit(sim, "txt-a", "job-1")
    assert again.status_code == 200
    assert sim.counters("txt-a")["created"] == 1 and sim.counters("txt-a")["replays"] == 0


def test_errors_in_flight_are_shared_with_repeats_in_inflight_mode(sim: Sim) -> None:
    sim.control("vid-a", idempotency="inflight", latency_ms=400, status_code=502, times=1)
    one, two = twice_while_first_in_flight(sim, "vid-a", "job-1")
    assert one.status_code == two.status_code == 502
    counters = sim.counters("vid-a")
    assert (counters["created"], counters["replays"], counters["injected"]) == (0, 0, 1)


@pytest.mark.parametrize("knobs", [
    {"idempotency": "sometimes"}, {"idempotency": None}, {"latency_ms": -1}, {"bogus": 1},
])
def test_bad_knobs_are_refused_as_invalid_control(sim: Sim, knobs: dict[str, Any]) -> None:
    resp = sim.http.post(f"{sim.url}/_control/vid-a", json=knobs)
    assert resp.status_code == 422
    assert resp.json()["error"]["code"] == "invalid_control"
