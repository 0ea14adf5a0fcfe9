"""The simulator over real HTTP: provider protocols, control knobs, counters, deterministic cost."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.domain.catalogue import load_catalogue
from orchestrator.domain.jobs import JobSpec
from orchestrator.domain.pricing import Usage, actual_micros, estimate_micros
from orchestrator.simulator import start_in_thread
from orchestrator.simulator.work import text_tokens
from tests.integration.simulator_fixture import Sim, sim_fixture, sim_server_fixture  # noqa: F401

REPO = Path(__file__).resolve().parents[2]


def create(sim: Sim, name: str, inp: dict[str, Any], key: str | None = None) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return sim.http.post(f"{sim.url}/{name}/v1/predictions", json={"input": inp}, headers=headers)


def get(sim: Sim, name: str, pid: str) -> dict[str, Any]:
    resp = sim.http.get(f"{sim.url}/{name}/v1/predictions/{pid}")
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def wait_status(sim: Sim, name: str, pid: str, wanted: str, timeout: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = get(sim, name, pid)
        if body["status"] == wanted or time.monotonic() > deadline:
            return body
        time.sleep(0.01)


def test_prediction_runs_then_succeeds_with_catalogue_cost(sim: Sim) -> None:
    sim.control("vid-a", duration_ms=150)
    resp = create(sim, "vid-a", {"prompt": "a red kite", "duration_s": 8.5, "resolution": "1080p"})
    assert resp.status_code == 201
    pid = resp.json()["id"]
    assert resp.json()["status"] in ("starting", "processing")
    assert "cost_usd" not in resp.json()
    done = wait_status(sim, "vid-a", pid, "succeeded")
    assert done["status"] == "succeeded"
    assert done["metrics"]["video_seconds"] == 8.5 and done["metrics"]["resolution"] == "1080p"
    expected = actual_micros(sim.backend("vid-a"), Usage(video_seconds=8.5, resolution="1080p"))
    assert expected == 1_062_500  # 8.5 s x $0.05 x 2.5
    assert round(done["cost_usd"] * 1_000_000) == expected
    assert done["output"].endswith(f"/vid-a/files/{pid}.mp4")
    counters = sim.counters("vid-a")
    assert counters["submissions"] == 1 and counters["created"] == 1
    assert counters["polls"] >= 2


def test_cancel_stops_a_running_prediction_and_is_counted(sim: Sim) -> None:
    sim.control("vid-a", duration_ms=60_000)
    pid = create(sim, "vid-a", {"prompt": "p", "duration_s": 5}).json()["id"]
    resp = sim.http.post(f"{sim.url}/vid-a/v1/predictions/{pid}/cancel")
    assert resp.status_code == 200 and resp.json()["status"] == "canceled"
    assert get(sim, "vid-a", pid)["status"] == "canceled"
    assert get(sim, "vid-a", pid)["cost_usd"] == 0.0
    assert sim.counters("vid-a")["cancels"] == 1
    assert sim.state("vid-a")["in_flight"] == 0


def test_an_ignored_cancel_lets_the_prediction_finish_and_bill_in_full(sim: Sim) -> None:
    sim.control("vid-a", duration_ms=300, ignore_cancel=True, cancel_bill_fraction=0.5)
    pid = create(sim, "vid-a", {"prompt": "p", "duration_s": 5}).json()["id"]
    resp = sim.http.post(f"{sim.url}/vid-a/v1/predictions/{pid}/cancel")
    assert resp.status_code == 200
    assert resp.json()["status"] in ("starting", "processing")
    assert sim.counters("vid-a")["cancels"] == 1
    done = wait_status(sim, "vid-a", pid, "succeeded")
    assert done["status"] == "succeeded" and done["output"].endswith(f"{pid}.mp4")
    full = round(done["cost_usd"] * 1_000_000)  # its whole run's, not half of it
    whole = Usage(video_seconds=5, resolution=done["metrics"]["resolution"])
    assert full == actual_micros(sim.backend("vid-a"), whole) > 0
    assert [b["cost_micros"] for b in sim.state("vid-a")["bills"]] == [full]


def test_cancel_after_success_changes_nothing(sim: Sim) -> None:
    sim.control("vid-a", duration_ms=0)
    pid = create(sim, "vid-a", {"prompt": "p", "duration_s": 5}).json()["id"]
    resp = sim.http.post(f"{sim.url}/vid-a/v1/predictions/{pid}/cancel")
    assert resp.json()["status"] == "succeeded"


def test_idempotency_key_replays_the_first_prediction(sim: Sim) -> None:
    first = create(sim, "vid-a", {"prompt": "p", "duration_s": 5}, key="job-1").json()
    again = create(sim, "vid-a", {"prompt": "p", "duration_s": 5}, key="job-1").json()
    other = create(sim, "vid-a", {"prompt": "p", "duration_s": 5}, key="job-2").json()
    assert again["id"] == first["id"] != other["id"]
    counters = sim.counters("vid-a")
    assert counters["submissions"] == 3 and counters["created"] == 2 and counters["replays"] == 1


def test_down_answers_503_to_everything_and_counts(sim: Sim) -> None:
    pid = create(sim, "vid-a", {"prompt": "p", "duration_s": 5}).json()["id"]
    state = sim.control("vid-a", mode="down")
    assert state["mode"] == "down"
    assert create(sim, "vid-a", {"prompt": "p", "duration_s": 5}).status_code == 503
    assert sim.http.get(f"{sim.url}/vid-a/v1/predictions/{pid}").status_code == 503
    assert sim.http.post(f"{sim.url}/vid-a/v1/predictions/{pid}/cancel").status_code == 503
    chat = sim.http.post(f"{sim.url}/txt-a/v1/chat/completions",
                         json={"messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 200  # other backends are unaffected
    counters = sim.counters("vid-a")
    assert (counters["submissions"], counters["polls"], counters["cancels"]) == (2, 1, 1)
    assert counters["injected"] == 3
    sim.control("vid-a", mode="up")
    assert get(sim, "vid-a", pid)["id"] == pid


def test_fail_rate_is_seeded_and_reproducible(sim: Sim) -> None:
    def pattern() -> list[int]:
        sim.control("txt-a", fail_rate=0.5, seed=7)
        return [
            sim.http.post(f"{sim.url}/txt-a/v1/chat/completions",
                          json={"messages": [{"role": "user", "content": "x"}]}).status_code
            for _ in range(20)
        ]

    one, two = pattern(), pattern()
    assert one == two
    assert set(one) == {200, 500}
    assert sim.counters("txt-a")["injected"] == 2 * one.count(500)
    sim.control("txt-a", fail_rate=1.0)
    assert create(sim, "vid-a", {"prompt": "p", "duration_s": 5}).status_code == 201


def test_injected_status_with_retry_after_for_a_number_of_times(sim: Sim) -> None:
    sim.control("vid-a", status_code=429, retry_after_s=2, times=2)
    answers = [create(sim, "vid-a", {"prompt": "p", "duration_s": 5}) for _ in range(3)]
    assert [a.status_code for a in answers] == [429, 429, 201]
    assert answers[0].headers["Retry-After"] == "2"
    assert answers[0].json()["error"]["code"] == "rate_limit_exceeded"
    assert sim.state("vid-a")["status_code"] is None


def test_injected_submission_errors(sim: Sim) -> None:
    inp = {"prompt": "p", "duration_s": 5}
    sim.control("vid-a", error="job_fault", times=1)
    assert create(sim, "vid-a", inp).status_code == 422
    sim.control("vid-a", error="content_policy", times=1)
    refused = create(sim, "vid-a", inp)
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "content_policy_violation"
    sim.control("vid-a", error="malformed", times=1)
    bad = create(sim, "vid-a", inp)
    assert bad.status_code == 200
    assert bad.text.startswith("<html>")
    sim.control("vid-a", error="prediction_failed", times=1, duration_ms=0)
    pid = create(sim, "vid-a", inp).json()["id"]
    failed = get(sim, "vid-a", pid)
    assert failed["status"] == "failed" and failed["error"]["code"] == "internal_error"
    assert create(sim, "vid-a", inp).status_code == 201
    counters = sim.counters("vid-a")
    assert counters["created"] == 2
    assert counters["injected"] == 4  # each error injection that fired, failed job included


def test_injected_chat_errors_are_counted(sim: Sim) -> None:
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    answers = []
    for kind in ("job_fault", "content_policy", "prediction_failed"):
        sim.control("txt-a", error=kind, times=1)
        answers.append(sim.http.post(f"{sim.url}/txt-a/v1/chat/completions", json=chat))
    assert [a.status_code for a in answers] == [422, 400, 500]
    counters = sim.counters("txt-a")
    assert (counters["submissions"], counters["created"], counters["injected"]) == (3, 0, 3)


def test_prompt_markers_fail_predictions(sim: Sim) -> None:
    sim.control("vid-a", duration_ms=0)
    pid = create(sim, "vid-a", {"prompt": "x [[content-policy]]", "duration_s": 5}).json()["id"]
    assert get(sim, "vid-a", pid)["error"]["code"] == "content_policy_violation"
    pid = create(sim, "vid-a", {"prompt": "x [[fail]]", "duration_s": 5}).json()["id"]
    assert get(sim, "vid-a", pid)["status"] == "failed"


def test_provider_side_validation_names_the_parameter(sim: Sim) -> None:
    too_long = create(sim, "vid-a", {"prompt": "p", "duration_s": 121})  # max_duration_s 120
    assert too_long.status_code == 422
    unpriced = create(sim, "vid-b", {"prompt": "p", "duration_s": 5, "resolution": "480p"})
    assert unpriced.status_code == 422
    no_prompt = create(sim, "vid-a", {"duration_s": 5})
    assert no_prompt.status_code == 422
    assert no_prompt.json()["error"]["param"] == "prompt"
    size = sim.http.post(f"{sim.url}/img-a/v1/images/generations",
                         json={"prompt": "p", "size": "2048x2048"})
    assert size.status_code == 422
    assert sim.counters("vid-a")["created"] == 0


def test_unknown_backend_wrong_protocol_and_bad_control(sim: Sim) -> None:
    assert sim.http.post(f"{sim.url}/nope/v1/predictions", json={"input": {}}).status_code == 404
    assert sim.http.post(f"{sim.url}/txt-a/v1/predictions", json={"input": {}}).status_code == 404
    assert sim.http.post(f"{sim.url}/vid-a/v1/chat/completions", json={}).status_code == 404
    assert sim.http.get(f"{sim.url}/vid-a/v1/predictions/missing").status_code == 404
    assert sim.http.post(f"{sim.url}/_control/vid-a", json={"fail_rate": 2}).status_code == 422
    assert sim.http.post(f"{sim.url}/_control/vid-a", json={"mode": None}).status_code == 422
    assert sim.http.post(f"{sim.url}/_control/vid-a", json={"bogus": 1}).status_code == 422
    assert sim.http.get(f"{sim.url}/_control/nope").status_code == 404


def test_reset_clears_knobs_counters_and_predictions(sim: Sim) -> None:
    sim.control("vid-a", duration_ms=0)
    pid = create(sim, "vid-a", {"prompt": "p", "duration_s": 5}).json()["id"]
    assert sim.state("vid-a")["billed_micros"] > 0
    sim.control("vid-a", mode="slow", fail_rate=0.3, latency_ms=5, idempotency="none",
                cancel_bill_fraction=0.5)
    sim.reset()
    state = sim.state("vid-a")
    assert (state["mode"], state["fail_rate"], state["latency_ms"]) == ("up", 0.0, 0)
    assert (state["idempotency"], state["cancel_bill_fraction"]) == ("completed", 0.0)
    assert state["counters"]["submissions"] == 0 and state["predictions"] == 0
    assert (state["billed_micros"], state["bills"]) == (0, [])
    assert sim.http.get(f"{sim.url}/vid-a/v1/predictions/{pid}").status_code == 404
    everything = sim.http.get(f"{sim.url}/_control").json()
    assert set(everything) == set(sim.catalogue.names)


def test_chat_usage_and_cost_are_deterministic(sim: Sim) -> None:
    body = {"model": "txt-a", "max_tokens": 300,
            "messages": [{"role": "user", "content": "Write a haiku about ledgers"}]}
    one = sim.http.post(f"{sim.url}/txt-a/v1/chat/completions", json=body).json()
    two = sim.http.post(f"{sim.url}/txt-a/v1/chat/completions", json=body).json()
    assert one["id"] != two["id"]
    assert one["usage"] == two["usage"] and one["cost_usd"] == two["cost_usd"]
    assert one["choices"][0]["message"]["content"] == two["choices"][0]["message"]["content"]
    usage = Usage(input_tokens=one["usage"]["prompt_tokens"],
                  output_tokens=one["usage"]["completion_tokens"])
    assert round(one["cost_usd"] * 1_000_000) == actual_micros(sim.backend("txt-a"), usage)
    assert 1 <= usage.output_tokens <= 300  # type: ignore[operator]


def test_images_bill_per_image_at_the_requested_size(sim: Sim) -> None:
    resp = sim.http.post(f"{sim.url}/img-a/v1/images/generations",
                         json={"prompt": "a fox", "n": 3, "size": "512x512"})
    assert resp.status_code == 200
    body = resp.json()
    assert len(body["data"]) == 3
    assert round(body["cost_usd"] * 1_000_000) == 33_000


@given(prompt=st.text(min_size=1, max_size=400), max_tokens=st.integers(1, 32_768))
def test_text_usage_never_exceeds_the_worst_case_estimate(prompt: str, max_tokens: int) -> None:
    tin, tout = text_tokens("txt-a", prompt, max_tokens)
    assert 1 <= tout <= max_tokens
    assert tin <= max(1, math.ceil(len(prompt.encode()) / 3))
    assert text_tokens("txt-a", prompt, max_tokens) == (tin, tout)


def test_shipped_catalogue_is_served_and_priced_within_estimates() -> None:
    catalogue = load_catalogue(REPO / "config" / "backends.yaml")
    running = start_in_thread(catalogue)
    try:
        with httpx.Client(timeout=10.0) as http:
            jobs = {
                "video": ({"prompt": "a boat", "duration_s": 4, "resolution": "720p"},
                          "/v1/predictions"),
                "image": ({"prompt": "a boat", "n": 2}, "/v1/images/generations"),
                "text": ({"prompt": "a boat", "max_tokens": 64}, "/v1/chat/completions"),
            }
            for backend in catalogue:
                http.post(f"{running.url}/_control/{backend.name}", json={"duration_ms": 0})
                inp, path = jobs[backend.kinds[0].value]
                spec = JobSpec(kind=backend.kinds[0], input=inp)
                if path == "/v1/predictions":
                    body: dict[str, Any] = {"input": inp}
                elif path == "/v1/chat/completions":
                    body = {"messages": [{"role": "user", "content": inp["prompt"]}],
                            "max_tokens": inp["max_tokens"]}
                else:
                    body = inp
                resp = http.post(f"{running.url}/{backend.name}{path}", json=body)
                assert resp.status_code in (200, 201), (backend.name, resp.text)
                answer = resp.json()
                if path == "/v1/predictions":
                    answer = http.get(f"{running.url}/{backend.name}{path}/{answer['id']}").json()
                assert answer.get("cost_usd") is not None, backend.name
                charged = round(answer["cost_usd"] * 1_000_000)
                assert 0 < charged <= estimate_micros(backend, spec), backend.name
    finally:
        running.stop()


def test_thousands_of_predictions_in_flight(sim: Sim) -> None:
    sim.control("vid-a", duration_ms=600_000)
    with ThreadPoolExecutor(max_workers=16) as pool:
        made = list(pool.map(
            lambda i: create(sim, "vid-a", {"prompt": f"p{i}", "duration_s": 5}, key=f"k{i}"),
            range(1000),
        ))
    assert {r.status_code for r in made} == {201}
    ids = [r.json()["id"] for r in made]
    state = sim.state("vid-a")
    assert state["in_flight"] == 1000 and state["counters"]["created"] == 1000
    assert get(sim, "vid-a", ids[789])["status"] in ("starting", "processing")


def test_serve_runs_the_configured_catalogue(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "ORCH_BACKENDS_FILE": str(REPO / "config" / "backends.yaml"),
           "ORCH_SIMULATOR_URL": f"http://127.0.0.1:{port}"}
    env.pop("SIMULATOR_API_KEY", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", "from orchestrator.simulator import serve; serve()"],
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        health = None
        while health is None and proc.poll() is None and time.monotonic() < deadline:
            try:
                health = httpx.get(f"{url}/healthz", timeout=1.0).json()
            except httpx.TransportError:
                time.sleep(0.05)
        assert health is not None, proc.stderr.read().decode() if proc.stderr else ""
        shipped = load_catalogue(REPO / "config" / "backends.yaml")
        assert health["backends"] == list(shipped.names)
        chat = httpx.post(f"{url}/txt-small/v1/chat/completions",
                          json={"messages": [{"role": "user", "content": "hi"}]})
        assert chat.status_code == 200 and chat.json()["cost_usd"] > 0
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_backend_runs_its_predictions_for_its_catalogued_expected_latency() -> None:
    """The shipped catalogue's backends behave as their entries say (vid-draft: 400 ms),
    also after a reset; a backend without an expectation runs 1 s."""
    shipped = load_catalogue(Path(__file__).resolve().parents[2] / "config" / "backends.yaml")
    running = start_in_thread(shipped)
    try:
        with httpx.Client(base_url=running.url) as http:
            assert http.get("/_control/vid-draft").json()["duration_ms"] == 400
            http.post("/_control/vid-draft", json={"duration_ms": 5}).raise_for_status()
            http.post("/_control/_reset").raise_for_status()
            assert http.get("/_control/vid-draft").json()["duration_ms"] == 400
            assert http.get("/_control/vid-premium").json()["duration_ms"] == 900
    finally:
        running.stop()


def test_without_an_expected_latency_a_prediction_runs_one_second(sim: Sim) -> None:
    assert sim.http.get(f"{sim.url}/_control/vid-a").json()["duration_ms"] == 1000
