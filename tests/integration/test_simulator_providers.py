"""The simulator behaves as real providers do where the engine must reconcile: idempotency
keys honoured only as far as the backend's mode says, a bill per provider job, partial bills
for cancels, answers lost after the work was done, and predictions found by client reference.
All over real HTTP, concurrency driven by threads and the latency knob."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from orchestrator.backends import RetryPolicy, make_adapter
from orchestrator.backends.errors import OutcomeUnknown
from orchestrator.backends.transport import Http11Transport
from orchestrator.domain.jobs import JobSpec
from orchestrator.domain.pricing import Usage, actual_micros
from orchestrator.simulator.work import partial_usage, text_tokens
from tests.integration.simulator_fixture import Sim, sim_fixture, sim_server_fixture  # noqa: F401

CHAT = {"max_tokens": 64, "messages": [{"role": "user", "content": "a haiku on ledgers"}]}
VIDEO = {"prompt": "a red kite", "duration_s": 5, "resolution": "720p"}
# a submission's processing time: ample for a second one to arrive while the first is in flight
IN_FLIGHT_MS = 500


def micros(answer: dict[str, Any]) -> int:
    """The cost an answer reports, in micro-USD (exact: the simulator reports micros / 1e6)."""
    value = round(answer["cost_usd"] * 1_000_000)
    assert value / 1_000_000 == answer["cost_usd"]
    return value


def usage_of(metrics: dict[str, Any]) -> Usage:
    return Usage(**{k: v for k, v in metrics.items() if k != "predict_time"})


def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def get(sim: Sim, name: str, pid: str) -> dict[str, Any]:
    resp = sim.http.get(f"{sim.url}/{name}/v1/predictions/{pid}")
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def wait_status(sim: Sim, name: str, pid: str, wanted: str) -> dict[str, Any]:
    wait_until(lambda: get(sim, name, pid)["status"] == wanted)
    return get(sim, name, pid)


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
    sim.control(backend, idempotency="inflight", latency_ms=IN_FLIGHT_MS, duration_ms=0)
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
    sim.control(backend, latency_ms=IN_FLIGHT_MS, duration_ms=0)
    one, two = twice_while_first_in_flight(sim, backend, "job-1")
    assert one.json()["id"] != two.json()["id"]
    state = sim.state(backend)
    assert (state["counters"]["created"], state["counters"]["replays"]) == (2, 0)
    assert [b["reference"] for b in state["bills"]] == ["job-1", "job-1"]  # both paid for
    assert state["billed_micros"] == micros(one.json()) + micros(two.json())
    three = submit(sim, backend, "job-1")  # after completion: the first one's job
    assert three.json()["id"] == one.json()["id"]
    assert sim.counters(backend)["created"] == 2 and sim.counters(backend)["replays"] == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_none_mode_makes_every_submission_a_new_job(sim: Sim, backend: str) -> None:
    sim.control(backend, idempotency="none", latency_ms=IN_FLIGHT_MS, duration_ms=0)
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
    sim.control("vid-a", idempotency="inflight", latency_ms=IN_FLIGHT_MS, status_code=502,
                times=1)
    one, two = twice_while_first_in_flight(sim, "vid-a", "job-1")
    assert one.status_code == two.status_code == 502
    counters = sim.counters("vid-a")
    assert (counters["created"], counters["replays"], counters["injected"]) == (0, 0, 1)


def test_a_replay_skips_latency_and_injected_errors_but_not_mode_down(sim: Sim) -> None:
    """As docs/architecture.md says: a replay is answered from the earlier submission."""
    first = submit(sim, "vid-a", "job-1")
    sim.control("vid-a", fail_rate=1.0, latency_ms=300, mode="slow", slow_ms=300)
    began = time.monotonic()
    again = submit(sim, "vid-a", "job-1")
    assert time.monotonic() - began < 0.3  # neither latency_ms nor slow_ms
    assert again.status_code == 201 and again.json()["id"] == first.json()["id"]
    assert submit(sim, "vid-a", "job-2").status_code == 500  # a new one gets it all
    sim.control("vid-a", mode="down")
    assert submit(sim, "vid-a", "job-1").status_code == 503
    counters = sim.counters("vid-a")
    assert (counters["replays"], counters["injected"]) == (1, 2)


@pytest.mark.parametrize("knobs", [
    {"idempotency": "sometimes"}, {"idempotency": None}, {"latency_ms": -1}, {"bogus": 1},
    # no coercion: true is not 1.0 (every request failing), "0.5" is not a number
    {"fail_rate": True}, {"fail_rate": "0.5"}, {"latency_ms": True}, {"latency_ms": "100"},
    {"latency_ms": 100.5}, {"seed": False}, {"times": "1"}, {"status_code": "429"},
    {"mode": "down", "fail_rate": True},
])
def test_bad_knobs_are_refused_as_invalid_control(sim: Sim, knobs: dict[str, Any]) -> None:
    before = sim.state("vid-a")
    resp = sim.http.post(f"{sim.url}/_control/vid-a", json=knobs)
    assert resp.status_code == 422
    assert resp.json()["error"]["code"] == "invalid_control"
    assert sim.state("vid-a") == before  # nothing changed, not even the valid knob sent along


def test_json_integers_are_taken_for_number_knobs(sim: Sim) -> None:
    state = sim.control("vid-a", fail_rate=1, usage_factor=2, retry_after_s=3,
                        cancel_bill_fraction=0, fail_job_rate=0)
    assert (state["fail_rate"], state["usage_factor"], state["retry_after_s"]) == (1.0, 2.0, 3.0)
    assert isinstance(state["fail_rate"], float)


# -- bills --------------------------------------------------------------------------------


def test_billed_micros_is_the_sum_of_the_costs_the_answers_reported(sim: Sim) -> None:
    sim.control("vid-a", duration_ms=50)
    answers: dict[str, list[dict[str, Any]]] = {"txt-a": [], "txt-flat": [], "img-a": []}
    for i in range(3):
        for name in ("txt-a", "txt-flat"):
            body = {"max_tokens": 50 + i, "messages": [{"role": "user", "content": f"q{i}"}]}
            headers = {"Idempotency-Key": f"{name}-{i}"} if i else {}
            resp = sim.http.post(f"{sim.url}/{name}/v1/chat/completions", json=body,
                                 headers=headers)
            answers[name].append(resp.json())
        resp = sim.http.post(f"{sim.url}/img-a/v1/images/generations",
                             json={"prompt": "a fox", "n": i + 1, "size": "1024x1024"})
        answers["img-a"].append(resp.json())
    pids = [submit(sim, "vid-a", f"v{i}").json()["id"] for i in range(3)]
    videos = [wait_status(sim, "vid-a", pid, "succeeded") for pid in pids]
    for name, done in [*answers.items(), ("vid-a", videos)]:
        state = sim.state(name)
        assert state["billed_micros"] == sum(micros(a) for a in done) > 0, name
        assert [b["id"] for b in state["bills"]] == [a["id"] for a in done], name
        assert [b["cost_micros"] for b in state["bills"]] == [micros(a) for a in done], name
    refs = [b["reference"] for b in sim.state("txt-a")["bills"]]
    assert refs == [None, "txt-a-1", "txt-a-2"]
    assert [b["reference"] for b in sim.state("vid-a")["bills"]] == ["v0", "v1", "v2"]
    for video in videos:
        assert micros(video) == actual_micros(sim.backend("vid-a"), usage_of(video["metrics"]))


def test_a_usage_factor_bills_more_than_was_asked_priced_as_reported(sim: Sim) -> None:
    """A provider that reports (and bills) more usage than the request asked for: the
    engine's adapter prices the reported usage to exactly the bill."""
    sim.control("vid-a", duration_ms=0, usage_factor=1.5)
    sim.control("txt-a", usage_factor=2.0)
    sim.control("img-a", usage_factor=2.0)
    http = Http11Transport()
    try:
        vid = make_adapter(sim.backend("vid-a"), http)
        sub = vid.submit(JobSpec.model_validate({"kind": "video", "input": VIDEO}), "u-1")
        done = vid.poll(sub.external_id)
        assert done.usage is not None and done.usage.video_seconds == 7.5
        assert done.cost_micros == sim.state("vid-a")["billed_micros"]
        assert done.cost_micros == actual_micros(sim.backend("vid-a"),
                                                 Usage(video_seconds=7.5, resolution="720p"))
        img = make_adapter(sim.backend("img-a"), http).submit(
            JobSpec.model_validate({"kind": "image", "input": {"prompt": "a fox", "n": 2}}),
            "u-2").result
        assert img is not None and img.usage is not None and img.usage.images == 4
        assert img.cost_micros == sim.state("img-a")["billed_micros"]
        txt = make_adapter(sim.backend("txt-a"), http).submit(
            JobSpec.model_validate({"kind": "text", "input": {"prompt": "hi", "max_tokens": 8}}),
            "u-3").result
        asked = text_tokens("txt-a", "hi", 8)
        assert txt is not None and txt.usage is not None
        assert (txt.usage.input_tokens, txt.usage.output_tokens) == (2 * asked[0], 2 * asked[1])
        assert txt.cost_micros == sim.state("txt-a")["billed_micros"]
    finally:
        http.close()


def test_without_report_usage_a_success_reports_its_time_only_and_is_billed_all_the_same(
    sim: Sim,
) -> None:
    """``report_usage`` false: a succeeded prediction answers as Replicate's do (metrics with
    ``predict_time`` only, no ``cost_usd``); the provider bills the run as ever, and the
    engine's adapter keeps the output unpriced (charged its worst case by the chain)."""
    sim.control("vid-a", duration_ms=0, report_usage=False)
    http = Http11Transport()
    try:
        vid = make_adapter(sim.backend("vid-a"), http)
        sub = vid.submit(JobSpec.model_validate({"kind": "video", "input": VIDEO}), "r-1")
        done = get(sim, "vid-a", sub.external_id)
        assert done["status"] == "succeeded" and done["output"]
        assert done["metrics"] == {"predict_time": 0.0} and "cost_usd" not in done
        listed = sim.http.get(f"{sim.url}/vid-a/v1/predictions",
                              params={"idempotency_key": "r-1"}).json()["results"]
        assert listed == [done]
        polled = vid.poll(sub.external_id)
        assert polled.status == "succeeded" and polled.output == done["output"]
        assert polled.unpriced and polled.cost_micros is None
    finally:
        http.close()
    state = sim.state("vid-a")
    assert state["report_usage"] is False and state["counters"]["created"] == 1
    billed = actual_micros(sim.backend("vid-a"), Usage(video_seconds=5, resolution="720p"))
    assert state["billed_micros"] == billed > 0
    assert [b["cost_micros"] for b in state["bills"]] == [billed]
    # a failure still reports its (nil) cost: only a success's answer changes
    failed = sim.http.post(f"{sim.url}/vid-a/v1/predictions",
                           json={"input": {**VIDEO, "prompt": "x [[fail]]"}}).json()["id"]
    assert wait_status(sim, "vid-a", failed, "failed")["cost_usd"] == 0.0


def test_a_running_prediction_is_billed_once_it_ends_and_a_failed_one_bills_nothing(
    sim: Sim,
) -> None:
    sim.control("vid-a", duration_ms=300)
    ok = submit(sim, "vid-a", "ok").json()["id"]
    failed = sim.http.post(f"{sim.url}/vid-a/v1/predictions",
                           json={"input": {**VIDEO, "prompt": "x [[fail]]"}}).json()["id"]
    assert sim.state("vid-a")["bills"] == []  # both running
    done = wait_status(sim, "vid-a", ok, "succeeded")
    assert wait_status(sim, "vid-a", failed, "failed")["cost_usd"] == 0.0
    state = sim.state("vid-a")
    assert {b["id"]: b["cost_micros"] for b in state["bills"]} == {ok: micros(done), failed: 0}
    assert state["billed_micros"] == micros(done)
    assert sim.state("vid-a")["bills"] == state["bills"]  # read twice, billed once


def test_a_call_is_billed_even_when_its_client_went_away(sim: Sim) -> None:
    sim.control("txt-a", latency_ms=400)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{sim.url}/txt-a/v1/chat/completions", json=CHAT,
                   headers={"Idempotency-Key": "gone"}, timeout=httpx.Timeout(10.0, read=0.1))
    wait_until(lambda: sim.state("txt-a")["billed_micros"] > 0)
    state = sim.state("txt-a")
    assert state["counters"]["created"] == 1 and state["bills"][0]["reference"] == "gone"
    replay = submit(sim, "txt-a", "gone").json()  # the answer it lost, replayed
    assert replay["id"] == state["bills"][0]["id"] and micros(replay) == state["billed_micros"]


@pytest.mark.parametrize(("fraction", "seconds"), [(0.5, 4.25), (0.3, 2.55), (1.0, 8.5)])
def test_a_canceled_prediction_bills_its_fraction_priced_as_its_metrics_say(
    sim: Sim, fraction: float, seconds: float,
) -> None:
    sim.control("vid-a", duration_ms=60_000, cancel_bill_fraction=fraction)
    inp = {"prompt": "p", "duration_s": 8.5, "resolution": "1080p"}
    pid = sim.http.post(f"{sim.url}/vid-a/v1/predictions", json={"input": inp},
                        headers={"Idempotency-Key": "c1"}).json()["id"]
    canceled = sim.http.post(f"{sim.url}/vid-a/v1/predictions/{pid}/cancel").json()
    assert canceled["status"] == "canceled"
    assert canceled["metrics"]["video_seconds"] == seconds
    assert canceled["metrics"]["resolution"] == "1080p"
    cost = micros(canceled)
    assert cost == actual_micros(sim.backend("vid-a"), usage_of(canceled["metrics"])) > 0
    full = actual_micros(sim.backend("vid-a"), Usage(video_seconds=8.5, resolution="1080p"))
    if fraction == 0.5:
        assert cost == full // 2  # 531_250
    assert get(sim, "vid-a", pid) == canceled  # the same on every read
    state = sim.state("vid-a")
    assert state["bills"] == [{"reference": "c1", "id": pid, "cost_micros": cost}]
    assert state["billed_micros"] == cost


def test_the_engine_adapter_prices_a_partial_cancel_as_billed(sim: Sim) -> None:
    sim.control("vid-b", duration_ms=60_000, cancel_bill_fraction=0.25)
    transport = Http11Transport()
    try:
        a = make_adapter(sim.backend("vid-b"), transport)
        job = JobSpec.model_validate({"kind": "video", "input": {
            "prompt": "p", "duration_s": 7.3, "resolution": "1080p"}})
        sub = a.submit(job, "job-1:1")
        stopped = a.cancel(sub.external_id)
        res = a.poll(sub.external_id)
        assert stopped == res
    finally:
        transport.close()
    assert res.status == "cancelled" and not res.cost_mismatch
    assert res.usage == Usage(video_seconds=1.825, resolution="1080p")
    bill = sim.state("vid-b")["bills"][0]
    assert res.cost_micros == res.reported_cost_micros == bill["cost_micros"] > 0
    assert bill["reference"] == "job-1:1"


def test_without_a_cancel_bill_fraction_a_cancel_bills_nothing(sim: Sim) -> None:
    sim.control("vid-a", duration_ms=60_000)
    pid = submit(sim, "vid-a", None).json()["id"]
    canceled = sim.http.post(f"{sim.url}/vid-a/v1/predictions/{pid}/cancel").json()
    assert (canceled["cost_usd"], canceled["metrics"]) == (0.0, None)
    assert sim.state("vid-a")["bills"] == [{"reference": None, "id": pid, "cost_micros": 0}]


def test_partial_usage_rounds_whole_units_down() -> None:
    assert partial_usage(Usage(images=3, image_size="512x512"), 0.5).images == 1
    assert partial_usage(Usage(images=10, image_size="512x512"), 0.7).images == 7
    tokens = partial_usage(Usage(input_tokens=40, output_tokens=99), 0.5)
    assert (tokens.input_tokens, tokens.output_tokens) == (40, 49)
    assert partial_usage(Usage(video_seconds=5.0, resolution="720p"), 0.0).video_seconds == 0.0


# -- lookup by client reference ------------------------------------------------------------


def lookup(sim: Sim, backend: str, key: str | None = None) -> list[dict[str, Any]]:
    params = {"idempotency_key": key} if key is not None else {}
    resp = sim.http.get(f"{sim.url}/{backend}/v1/predictions", params=params)
    assert resp.status_code == 200, resp.text
    results: list[dict[str, Any]] = resp.json()["results"]
    return results


@pytest.mark.parametrize("mode", ["inflight", "completed", "none"])
def test_predictions_are_found_by_idempotency_key_newest_first(sim: Sim, mode: str) -> None:
    sim.control("vid-a", idempotency=mode, duration_ms=60_000)
    first = submit(sim, "vid-a", "job-1").json()["id"]
    other = submit(sim, "vid-a", "job-2").json()["id"]
    again = submit(sim, "vid-a", "job-1").json()["id"]
    plain = submit(sim, "vid-a", None).json()["id"]
    expected = [again, first] if mode == "none" else [first]
    found = lookup(sim, "vid-a", "job-1")
    assert [p["id"] for p in found] == expected
    assert {p["idempotency_key"] for p in found} == {"job-1"}
    assert found[0]["status"] in ("starting", "processing")
    assert lookup(sim, "vid-a", "nobody") == []
    everything = [plain, again, other, first] if mode == "none" else [plain, other, first]
    assert [p["id"] for p in lookup(sim, "vid-a")] == everything
    assert sim.counters("vid-a")["lookups"] == 3


def test_a_lookup_shows_what_the_engine_must_reconcile(sim: Sim) -> None:
    """Two creates with one key while the first is in flight (mode completed): both paid for,
    both found by the key."""
    sim.control("vid-a", latency_ms=IN_FLIGHT_MS, duration_ms=0)
    one, two = twice_while_first_in_flight(sim, "vid-a", "job-1")
    found = lookup(sim, "vid-a", "job-1")
    assert [p["id"] for p in found] == [two.json()["id"], one.json()["id"]]
    assert sum(micros(p) for p in found) == sim.state("vid-a")["billed_micros"]


def test_the_unfiltered_list_is_capped(sim: Sim) -> None:
    sim.control("vid-a", duration_ms=60_000)
    made = [sim.http.post(f"{sim.url}/vid-a/v1/predictions", json={"input": VIDEO}).json()["id"]
            for _ in range(105)]
    listed = lookup(sim, "vid-a")
    assert [p["id"] for p in listed] == made[::-1][:100]


# -- dropped answers ----------------------------------------------------------------------


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture()
def uvicorn_errors() -> Iterator[list[logging.LogRecord]]:
    handler = Records()
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(handler)
    yield handler.records
    logger.removeHandler(handler)


@pytest.mark.parametrize("mode", ["inflight", "completed", "none"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_dropped_answer_was_created_and_billed_once(
    sim: Sim, backend: str, mode: str, uvicorn_errors: list[logging.LogRecord],
    caplog: pytest.LogCaptureFixture,
) -> None:
    sim.control(backend, idempotency=mode, drop_answers=1, duration_ms=0)
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        submit(sim, backend, "job-1")
    state = sim.state(backend)
    assert state["counters"]["created"] == state["counters"]["dropped"] == 1
    assert state["drop_answers"] is None  # used up
    [bill] = state["bills"]
    assert bill["reference"] == "job-1" and bill["cost_micros"] == state["billed_micros"] > 0
    if backend == "vid-a":  # the work whose answer was lost, found by its client reference
        found = lookup(sim, "vid-a", key="job-1")
        assert [p["id"] for p in found] == [bill["id"]] and found[0]["status"] == "succeeded"
    again = submit(sim, backend, "job-1")  # the next answer arrives
    assert again.status_code in (200, 201)
    if mode == "none":
        assert again.json()["id"] != bill["id"]
        assert sim.counters(backend)["created"] == 2
    else:
        assert again.json()["id"] == bill["id"] and micros(again.json()) == bill["cost_micros"]
        assert sim.counters(backend)["created"] == 1
        assert sim.counters(backend)["replays"] == 1
    assert not [r for r in uvicorn_errors if r.levelno >= logging.ERROR]
    drops = [r for r in caplog.records if "dropped an answer" in r.getMessage()]
    assert len(drops) == 1 and drops[0].levelno == logging.WARNING


def test_the_engine_wire_sees_a_dropped_answer_as_an_unknown_outcome(sim: Sim) -> None:
    """The answer was lost after the work was created: the adapter says so (it does not
    repeat it itself); a later repeat with the same key is the engine's choice."""
    sim.control("txt-a", drop_answers=2)
    transport = Http11Transport()
    try:
        a = make_adapter(sim.backend("txt-a"), transport, retry=RetryPolicy(attempts=1))
        job = JobSpec.model_validate({"kind": "text", "input": {"prompt": "hello"}})
        for _ in range(2):
            with pytest.raises(OutcomeUnknown) as info:
                a.submit(job, "job-1:1")
            assert info.value.details["cause"] == "backend_connection"
        sub = a.submit(job, "job-1:1")  # the third answer arrives: the first call, replayed
    finally:
        transport.close()
    state = sim.state("txt-a")
    counters = state["counters"]
    assert (counters["created"], counters["replays"], counters["dropped"]) == (1, 2, 2)
    assert sub.result is not None and sub.result.cost_micros == state["billed_micros"] > 0
    assert [b["id"] for b in state["bills"]] == [sub.external_id]


def test_errors_are_not_dropped(sim: Sim) -> None:
    sim.control("vid-a", drop_answers=1, status_code=503, times=1)
    assert submit(sim, "vid-a", "k").status_code == 503
    assert sim.state("vid-a")["drop_answers"] == 1
    with pytest.raises(httpx.RemoteProtocolError):
        submit(sim, "vid-a", "k")


def test_fail_job_rate_fails_that_share_of_jobs_and_bills_none_of_them(sim: Sim) -> None:
    """A flaky model: predictions are created and end failed, OpenAI calls answer 500; polls
    are spared (the provider is up). Drawn from the backend's seeded RNG."""
    sim.control("vid-a", duration_ms=0, fail_job_rate=0.5, seed=3)
    sim.control("txt-a", fail_job_rate=1.0)
    ids = [submit(sim, "vid-a", f"f{i}").json()["id"] for i in range(40)]
    statuses = [get(sim, "vid-a", pid)["status"] for pid in ids]  # duration 0: ended
    failed = statuses.count("failed")
    assert statuses.count("succeeded") + failed == 40 and 10 <= failed <= 30
    state = sim.state("vid-a")
    assert len([b for b in state["bills"] if b["cost_micros"] > 0]) == 40 - failed
    assert state["counters"]["injected"] == failed  # each job made to fail is an injection
    assert submit(sim, "txt-a", None).status_code == 500
    assert sim.state("txt-a")["bills"] == []
    assert sim.counters("txt-a")["injected"] == 1
