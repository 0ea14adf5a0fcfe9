"""The backend adapters end to end against the live simulator (real HTTP on 127.0.0.1)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from orchestrator.backends import (
    BackendAdapter,
    BackendFault,
    JobFault,
    OpenAIAdapter,
    PollResult,
    PredictionsAdapter,
    RetryPolicy,
    TransientError,
    make_adapter,
)
from orchestrator.backends.errors import OutcomeUnknown
from orchestrator.backends.transport import Http11Transport
from orchestrator.domain.jobs import JobSpec
from orchestrator.domain.outcomes import Outcome
from orchestrator.domain.pricing import Usage, actual_micros, estimate_micros
from tests.integration.simulator_fixture import (  # noqa: F401
    AUTH_ENV,
    Sim,
    sim_fixture,
    sim_server_fixture,
)


class RecordingSleep:
    """The retry clock seam: records every wait, then really waits."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        time.sleep(seconds)


@pytest.fixture()
def http() -> Iterator[httpx.BaseTransport]:
    transport = Http11Transport()  # production's wire, against the simulator
    yield transport
    transport.close()


@pytest.fixture()
def sleeps() -> RecordingSleep:
    return RecordingSleep()


def fast_retry(sleep: RecordingSleep, attempts: int = 3, **kw: Any) -> RetryPolicy:
    return RetryPolicy(attempts=attempts, initial_s=0.001, max_wait_s=0.01, total_s=10.0,
                       max_retry_after_s=1.0, sleep=sleep, **kw)


def adapter(sim: Sim, name: str, http: httpx.BaseTransport, sleeps: RecordingSleep,
            **kw: Any) -> BackendAdapter:
    return make_adapter(sim.backend(name), http, retry=fast_retry(sleeps, **kw))


def spec_of(kind: str, inp: dict[str, Any]) -> JobSpec:
    return JobSpec.model_validate({"kind": kind, "input": inp})


def video(duration_s: float = 6, resolution: str = "720p", prompt: str = "a lighthouse") -> JobSpec:
    return spec_of("video", {"prompt": prompt, "duration_s": duration_s,
                                        "resolution": resolution})


def poll_until_done(a: BackendAdapter, external_id: str, timeout: float = 5.0) -> PollResult:
    deadline = time.monotonic() + timeout
    while True:
        res = a.poll(external_id)
        if res.done or time.monotonic() > deadline:
            return res
        time.sleep(0.01)


def test_make_adapter_picks_by_protocol(sim: Sim, http: httpx.BaseTransport) -> None:
    assert isinstance(make_adapter(sim.backend("vid-a"), http), PredictionsAdapter)
    assert isinstance(make_adapter(sim.backend("txt-a"), http), OpenAIAdapter)
    assert make_adapter(sim.backend("img-a"), http).synchronous is True
    assert make_adapter(sim.backend("vid-a"), http).synchronous is False


def test_predictions_submit_poll_and_cost_to_the_micro_dollar(
    sim: Sim, http: httpx.BaseTransport, sleeps: RecordingSleep
) -> None:
    sim.control("vid-b", duration_ms=100)
    a = adapter(sim, "vid-b", http, sleeps)
    job = video(duration_s=7.3, resolution="1080p")
    sub = a.submit(job, "job-1:1")
    assert sub.result is None and sub.external_id
    first = a.poll(sub.external_id)
    assert first.status == "running" and first.cost_micros is None
    res = poll_until_done(a, sub.external_id)
    assert res.status == "succeeded", res
    assert res.usage == Usage(video_seconds=7.3, resolution="1080p")
    expected = actual_micros(sim.backend("vid-b"), Usage(video_seconds=7.3, resolution="1080p"))
    assert expected == 1_750_175  # 7.3 s x $0.137 x 1.75, exactly
    assert res.cost_micros == res.reported_cost_micros == expected
    assert not res.cost_mismatch
    assert res.cost_micros <= estimate_micros(sim.backend("vid-b"), job)
    assert isinstance(res.output, str) and sub.external_id in res.output
    counters = sim.counters("vid-b")
    assert counters["submissions"] == 1 and counters["polls"] >= 2
    assert sleeps.waits == []


def test_cancel_reaches_the_simulator(
    sim: Sim, http: httpx.BaseTransport, sleeps: RecordingSleep
) -> None:
    sim.control("vid-a", duration_ms=60_000)
    a = adapter(sim, "vid-a", http, sleeps)
    sub = a.submit(video(), "job-2:1")
    stopped = a.cancel(sub.external_id)
    assert stopped.status == "cancelled" and stopped.cost_micros == 0
    res = a.poll(sub.external_id)
    assert res.status == "cancelled" and res.cost_micros == 0 and res.error is None
    assert sim.counters("vid-a")["cancels"] == 1


def test_cancel_of_a_finished_prediction_reports_it_finished(
    sim: Sim, http: httpx.BaseTransport, sleeps: RecordingSleep
) -> None:
    sim.control("vid-a", duration_ms=0)
    a = adapter(sim, "vid-a", http, sleeps)
    sub = a.submit(video(), "job-3:1")
    stopped = a.cancel(sub.external_id)
    assert stopped.status == "succeeded" and stopped.cost_micros
    assert a.poll(sub.external_id) == stopped


def test_resubmitting_with_the_same_key_creates_one_provider_job(
    sim: Sim, http: httpx.BaseTransport, sleeps: RecordingSleep
) -> None:
    a = adapter(sim, "vid-a", http, sleeps)
    first, again = a.submit(video(), "job-4:1"), a.submit(video(), "job-4:1")
    assert first.external_id == again.external_id
    t = adapter(sim, "txt-a", http, sleeps)
    job = spec_of("text", {"prompt": "hello"})
    one, two = t.submit(job, "job-5:1"), t.submit(job, "job-5:1")
    assert one == two
    assert sim.counters("vid-a")["created"] == 1 and sim.counters("txt-a")["created"] == 1


def test_text_is_synchronous_and_priced_from_reported_tokens(
    sim: Sim, http: httpx.BaseTransport, sleeps: RecordingSleep
) -> None:
    a = adapter(sim, "txt-a", http, sleeps)
    job = spec_of("text", {"prompt": "Summarise double-entry bookkeeping",
                                      "max_tokens": 200})
    sub = a.submit(job, "job-6:1")
    res = sub.result
    assert res is not None and res.status == "succeeded"
    assert isinstance(res.output["text"], str) and res.output["text"]
    assert res.usage is not None and res.usage.output_tokens is not None
    assert 1 <= res.usage.output_tokens <= 200
    assert res.cost_micros == actual_micros(sim.backend("txt-a"), res.usage)
    assert res.cost_micros == res.reported_cost_micros
    assert res.cost_micros <= estimate_micros(sim.backend("txt-a"), job)
    assert a.cancel(sub.external_id) is None
    with pytest.raises(BackendFault) as info:
        a.poll(sub.external_id)
    assert info.value.code == "poll_unsupported"


def test_images_and_flat_priced_text(
    sim: Sim, http: httpx.BaseTransport, sleeps: RecordingSleep
) -> None:
    img = adapter(sim, "img-a", http, sleeps).submit(
        spec_of("image", {"prompt": "a fox", "n": 3, "size": "512x512"}), "job-7:1"
    ).result
    assert img is not None and len(img.output["images"]) == 3
    assert img.cost_micros == img.reported_cost_micros == 33_000
    flat = adapter(sim, "txt-flat", http, sleeps).submit(
        spec_of("text", {"prompt": "hi"}), "job-8:1"
    ).result
    assert flat is not None and flat.cost_micros == flat.reported_cost_micros == 2_100


def test_cost_is_deterministic_across_submissions(
    sim: Sim, http: httpx.BaseTransport, sleeps: RecordingSleep
) -> None:
    t = adapter(sim, "txt-a", http, sleeps)
    job = spec_of("text", {"prompt": "the same prompt", "max_tokens": 900})
    costs = {t.submit(job, f"job-9:{i}").result.cost_micros for i in range(3)}  # type: ignore[union-attr]
    assert len(costs) == 1
    sim.control("vid-a", duration_ms=0)
    v = adapter(sim, "vid-a", http, sleeps)
    ids = [v.submit(video(duration_s=12.25), f"job-10:{i}").external_id for i in range(3)]
    assert len(set(ids)) == 3
    vcosts = {poll_until_done(v, i).cost_micros for i in ids}
    assert vcosts == {actual_micros(sim.backend("vid-a"), Usage(video_seconds=12.25,
                                                                 resolution="720p"))}


def test_down_backend_raises_transient_after_bounded_retries(
    sim: Sim, http: httpx.BaseTransport, sleeps: RecordingSleep
) -> None:
    sim.control("vid-a", mode="down")
    a = adapter(sim, "vid-a", http, sleeps, attempts=3)
    with pytest.raises(TransientError) as info:
        a.submit(video(), "job-11:1")
    err = info.value
    assert err.code == "backend_unavailable" and err.status_code == 503
    assert err.attempts == 3 and err.strike is True
    assert len(sleeps.waits) == 2 and all(0 <= w <= 0.01 for w in sleeps.waits)
    assert sim.counters("vid-a")["submissions"] == 3


def test_transient_5xx_is_retried_through(
    sim: Sim, http: httpx.BaseTransport, sleeps: RecordingSleep
) -> None:
    sim.control("txt-a", status_code=500, times=2)
    res = adapter(sim, "txt-a", http, sleeps, attempts=4).submit(
        spec_of("text", {"prompt": "hi"}), "job-12:1"
    )
    assert res.result is not None and res.result.status == "succeeded"
    counters = sim.counters("txt-a")
    assert counters["submissions"] == 3 and counters["created"] == 1


def test_job_fault_is_not_retried_and_not_a_strike(
    sim: Sim, http: httpx.BaseTransport, sleeps: RecordingSleep
) -> None:
    sim.control("vid-a", error="job_fault")
    with pytest.raises(JobFault) as info:
        adapter(sim, "vid-a", http, sleeps).submit(video(prompt="secret plan"), "job-13:1")
    err = info.value
    assert err.code == "invalid_input" and err.strike is False and err.attempts == 1
    assert "secret plan" not in err.message and "secret plan" not in str(err.details)
    assert sim.counters("vid-a")["submissions"] == 1
    with pytest.raises(JobFault) as policy:
        adapter(sim, "txt-a", http, sleeps).submit(
            spec_of("text", {"prompt": "x [[content-policy]]"}), "job-14:1"
        )
    assert policy.value.code == "content_policy"
    assert sleeps.waits == []


def test_provider_validation_becomes_a_job_fault_naming_the_parameter(
    sim: Sim, http: httpx.BaseTransport, sleeps: RecordingSleep
) -> None:
    with pytest.raises(JobFault) as info:
        adapter(sim, "vid-a", http, sleeps).submit(video(duration_s=300), "job-15:1")
    assert info.value.details["status_code"] == 422


def test_failed_predictions_carry_a_classified_error(
    sim: Sim, http: httpx.BaseTransport, sleeps: RecordingSleep
) -> None:
    sim.control("vid-a", duration_ms=0)
    a = adapter(sim, "vid-a", http, sleeps)
    policy = poll_until_done(a, a.submit(video(prompt="[[content-policy]]"), "j16").external_id)
    assert policy.status == "failed" and isinstance(policy.error, JobFault)
    assert policy.error.code == "content_policy" and policy.cost_micros == 0
    crash = poll_until_done(a, a.submit(video(prompt="[[fail]]"), "j17").external_id)
    assert crash.status == "failed" and isinstance(crash.error, BackendFault)
    assert crash.error.code == "prediction_failed" and crash.error.strike is True


def test_a_success_without_output_is_a_billed_failure_of_the_backend(
    sim: Sim, http: httpx.BaseTransport, sleeps: RecordingSleep
) -> None:
    """``succeeded`` with nothing delivered (a null prediction output, an image call's empty
    ``data``) is the provider's failure: read, charged what the answer bills, and a strike
    (another backend may do better), never an unreadable answer."""
    sim.control("vid-a", duration_ms=0, empty_output=True)
    a = adapter(sim, "vid-a", http, sleeps)
    res = poll_until_done(a, a.submit(video(duration_s=4.0), "j-empty:1").external_id)
    assert res.status == "failed" and isinstance(res.error, BackendFault)
    assert res.error.code == "empty_output" and res.error.strike is True
    assert res.output is None
    (bill,) = [b["cost_micros"] for b in sim.state("vid-a")["bills"]]
    assert res.cost_micros == bill > 0  # billed all the same, and charged so

    sim.control("img-a", empty_output=True)
    sub = adapter(sim, "img-a", http, sleeps).submit(
        spec_of("image", {"prompt": "a fox", "n": 2, "size": "512x512"}), "j-empty:2")
    assert sub.result is not None and sub.result.status == "failed"
    assert isinstance(sub.result.error, BackendFault)
    assert sub.result.error.code == "empty_output" and sub.result.cost_micros == 0


def test_retry_after_is_honoured(
    sim: Sim, http: httpx.BaseTransport, sleeps: RecordingSleep
) -> None:
    sim.control("vid-a", status_code=429, retry_after_s=0.3, times=1)
    sub = adapter(sim, "vid-a", http, sleeps).submit(video(), "job-18:1")
    assert sub.external_id
    assert sleeps.waits == [0.3]
    counters = sim.counters("vid-a")
    assert counters["submissions"] == 2 and counters["created"] == 1


def test_long_retry_after_goes_back_to_the_caller(
    sim: Sim, http: httpx.BaseTransport, sleeps: RecordingSleep
) -> None:
    sim.control("vid-a", status_code=429, retry_after_s=30)
    with pytest.raises(TransientError) as info:
        adapter(sim, "vid-a", http, sleeps).submit(video(), "job-19:1")
    err = info.value
    assert err.code == "rate_limited" and err.retry_after_s == 30 and err.attempts == 1
    assert err.strike is False and err.outcome is Outcome.TRANSIENT and sleeps.waits == []


def test_a_slow_submission_is_an_unknown_outcome_and_a_slow_poll_transient(
    sim: Sim, http: httpx.BaseTransport, sleeps: RecordingSleep
) -> None:
    """A submission sent and not answered in time may have created paid work: it is not
    sent again within the call. A poll that times out is simply asked again."""
    spec = sim.backend("txt-a")
    quick = spec.model_copy(update={"timeouts": spec.timeouts.model_copy(update={"read_s": 0.2})})
    sim.control("txt-a", mode="slow", slow_ms=1000)
    a = make_adapter(quick, http, retry=fast_retry(sleeps, attempts=2))
    with pytest.raises(OutcomeUnknown) as unknown:
        a.submit(spec_of("text", {"prompt": "hi"}), "job-20:1")
    assert unknown.value.details["cause"] == "backend_timeout"
    assert unknown.value.attempts == 1 and sim.counters("txt-a")["submissions"] == 1

    vid = sim.backend("vid-a")
    sub = make_adapter(vid, http, retry=fast_retry(sleeps)).submit(video(), "job-20:2")
    sim.control("vid-a", mode="slow", slow_ms=1000)
    slow = vid.model_copy(update={"timeouts": vid.timeouts.model_copy(update={"read_s": 0.2})})
    with pytest.raises(TransientError) as info:
        make_adapter(slow, http, retry=fast_retry(sleeps, attempts=2)).poll(sub.external_id)
    assert info.value.code == "backend_timeout" and info.value.attempts == 2


def test_connection_refused_is_transient(
    sim: Sim, http: httpx.BaseTransport, sleeps: RecordingSleep
) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = sim.backend("vid-a").model_copy(update={"base_url": f"http://127.0.0.1:{port}/vid-a"})
    with pytest.raises(TransientError) as info:
        make_adapter(spec, http, retry=fast_retry(sleeps, attempts=2)).submit(video(), "j21")
    assert info.value.code == "backend_connection" and info.value.attempts == 2


def test_an_unreadable_answer_to_a_create_is_an_outcome_unknown(
    sim: Sim, http: httpx.BaseTransport, sleeps: RecordingSleep
) -> None:
    sim.control("img-a", error="malformed")
    with pytest.raises(OutcomeUnknown) as info:
        adapter(sim, "img-a", http, sleeps).submit(
            spec_of("image", {"prompt": "p"}), "job-22:1"
        )
    assert info.value.details["cause"] == "malformed_response" and info.value.strike is True
    assert sim.counters("img-a")["submissions"] == 1


def test_unknown_prediction_is_a_backend_fault(
    sim: Sim, http: httpx.BaseTransport, sleeps: RecordingSleep
) -> None:
    with pytest.raises(BackendFault) as info:
        adapter(sim, "vid-a", http, sleeps).poll("no-such-id")
    assert info.value.code == "backend_not_found"


def test_api_key_from_the_named_env_var(
    sim: Sim, http: httpx.BaseTransport, sleeps: RecordingSleep, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(AUTH_ENV, "sk-right")
    assert adapter(sim, "vid-auth", http, sleeps).submit(video(), "job-23:1").external_id
    wrong = sim.backend("vid-auth").model_copy(update={"api_key_env": "ORCH_TEST_OTHER_KEY"})
    monkeypatch.setenv("ORCH_TEST_OTHER_KEY", "sk-wrong")
    with pytest.raises(BackendFault) as info:
        make_adapter(wrong, http, retry=fast_retry(sleeps)).submit(video(), "job-24:1")
    assert info.value.code == "backend_auth"
    assert "sk-wrong" not in str(info.value) and "sk-wrong" not in str(info.value.details)
