"""The Cloud Monitoring sink, with the real client against a local fake gRPC MetricService."""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from orchestrator.metrics import catalogue as m
from orchestrator.metrics.cloud_monitoring import CloudMonitoringSink
from orchestrator.metrics.fake_gcm import FakeMonitoringServer
from orchestrator.metrics.gcm_convert import GenericTask
from orchestrator.metrics.recorder import Recorder

T0 = 1_750_000_000.0
JOB = {"kind": "video", "tier": "standard", "backend": "sim-a", "status": "succeeded"}


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now

    def advance(self, s: float) -> None:
        self.now += s


def wait_until(pred: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Wait for a condition (re-checked every 10 ms) — not a fixed sleep."""
    done = threading.Event()
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        done.wait(0.01)
    return True


@pytest.fixture
def fake() -> Iterator[FakeMonitoringServer]:
    with FakeMonitoringServer() as server:
        yield server


def make_sink(endpoint: str, clock: Clock, **kw: Any) -> tuple[Recorder, CloudMonitoringSink]:
    rec = Recorder(clock=clock)
    sink = CloudMonitoringSink("proj-1", endpoint=endpoint, clock=clock,
                               resource=GenericTask("proj-1", job="worker", task_id="w-1"), **kw)
    sink.attach(rec)
    return rec, sink


def written(fake: FakeMonitoringServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], Any]:
    """metric type + labels -> the last TimeSeries the fake accepted."""
    return {(k[0], k[1]): ts for k, ts in fake.series.items()}


def failures(rec: Recorder, reason: str | None = None) -> int:
    total = 0
    for p in rec.snapshot():
        if p.metric.name == m.EXPORTER_FAILURES and isinstance(p.value, int) and (
                reason is None or dict(p.labels)["reason"] == reason):
            total += p.value
    return total


def test_writes_names_kinds_labels_and_values(fake: FakeMonitoringServer) -> None:
    clock = Clock()
    rec, sink = make_sink(fake.endpoint, clock)
    rec.counter(m.JOBS_FINISHED, 3, **JOB)
    rec.gauge(m.BUDGET_SPEND, 12.5, scope="tenant:t1", period="day")
    rec.gauge(m.BREAKER_STATE, m.BREAKER_OPEN, backend="sim-b")
    for v in (0.3, 4.0, 4.5):
        rec.distribution(m.JOB_LATENCY, v, **JOB)
    clock.advance(1)
    result = sink.flush_once()
    assert (result.written, result.requests, result.failed_requests) == (4, 1, 0)

    ts = written(fake)
    job_labels = tuple(sorted(JOB.items()))
    fin = ts[(m.METRIC_PREFIX + "jobs/finished", job_labels)]
    assert fin.metric_kind == 3 and fin.value_type == 2  # CUMULATIVE, INT64
    assert fin.points[0].value.int64_value == 3
    assert fin.points[0].interval.start_time.seconds == int(T0)
    assert fin.points[0].interval.end_time.seconds == int(T0 + 1)
    assert fin.resource.type == "generic_task"
    assert dict(fin.resource.labels) == {"project_id": "proj-1", "location": "global",
                                         "namespace": "orchestrator", "job": "worker",
                                         "task_id": "w-1"}
    spend = ts[(m.METRIC_PREFIX + "budget/spend", (("period", "day"), ("scope", "tenant:t1")))]
    assert spend.metric_kind == 1 and spend.value_type == 3  # GAUGE, DOUBLE
    assert spend.points[0].value.double_value == 12.5
    assert ts[(m.METRIC_PREFIX + "backend/breaker_state",
               (("backend", "sim-b"),))].points[0].value.int64_value == 2
    lat = ts[(m.METRIC_PREFIX + "jobs/latency", job_labels)]
    assert lat.metric_kind == 3 and lat.value_type == 5  # CUMULATIVE, DISTRIBUTION
    dist = lat.points[0].value.distribution_value
    assert dist.count == 3 and dist.mean == pytest.approx((0.3 + 4.0 + 4.5) / 3)
    assert list(dist.bucket_options.explicit_buckets.bounds) == list(m.LATENCY_BUCKETS_S)
    assert sum(dist.bucket_counts) == 3 and dist.bucket_counts[0] == 1


def test_batches_at_most_200_series_per_request(fake: FakeMonitoringServer) -> None:
    clock = Clock()
    rec, sink = make_sink(fake.endpoint, clock)
    for i in range(450):
        rec.gauge(m.QUEUE_DEPTH, i, queue=f"q{i}")
    result = sink.flush_once()
    sizes = [len(r.time_series) for r in fake.calls("CreateTimeSeries")]
    assert sizes == [200, 200, 50]
    assert result.written == 450 and len(fake.series) == 450


def test_each_series_at_most_every_10s_and_descriptors_once(
        fake: FakeMonitoringServer) -> None:
    clock = Clock()
    rec, sink = make_sink(fake.endpoint, clock)
    rec.counter(m.JOBS_FINISHED, **JOB)
    rec.gauge(m.QUEUE_DEPTH, 1, queue="q")
    clock.advance(1.0)  # t = 1
    assert sink.flush_once().written == 2

    for step in (3.0, 3.0, 3.0):  # t = 4, 7, 10: changed, but too soon
        clock.advance(step)
        rec.counter(m.JOBS_FINISHED, **JOB)
        rec.gauge(m.QUEUE_DEPTH, 2, queue="q")
        assert sink.flush_once().written == 0
    assert len(fake.calls("CreateTimeSeries")) == 1

    clock.advance(1.0)  # t = 11
    assert sink.flush_once().written == 2
    clock.advance(9.999)
    rec.counter(m.JOBS_FINISHED, **JOB)
    assert sink.flush_once().written == 0
    clock.advance(0.001)  # t = 21
    assert sink.flush_once().written == 1  # only the changed series; the gauge is unchanged

    points = [ts.points[0] for r in fake.calls("CreateTimeSeries") for ts in r.time_series
              if ts.metric.type.endswith("jobs/finished")]
    assert [p.value.int64_value for p in points] == [1, 4, 5]
    assert len({p.interval.start_time.seconds for p in points}) == 1  # fixed start time
    ends = [p.interval.end_time.seconds + p.interval.end_time.nanos / 1e9 for p in points]
    assert all(b - a >= 10 for a, b in itertools.pairwise(ends))

    descriptor_types = [r.metric_descriptor.type for r in fake.calls("CreateMetricDescriptor")]
    assert sorted(descriptor_types) == sorted(
        [m.METRIC_PREFIX + "jobs/finished", m.METRIC_PREFIX + "queue/depth"])
    assert fake.descriptors[m.METRIC_PREFIX + "jobs/finished"].metric_kind == 3


def test_unchanged_series_are_rewritten_after_a_minute(fake: FakeMonitoringServer) -> None:
    clock = Clock()
    rec, sink = make_sink(fake.endpoint, clock)
    rec.gauge(m.BREAKER_STATE, 2, backend="a")
    sink.flush_once()
    clock.advance(30)
    assert sink.flush_once().written == 0
    clock.advance(30)
    assert sink.flush_once().written == 1


def test_transient_errors_are_retried(fake: FakeMonitoringServer) -> None:
    clock = Clock()
    rec, sink = make_sink(fake.endpoint, clock)
    rec.gauge(m.QUEUE_DEPTH, 7, queue="q")
    fake.fail_next("CreateTimeSeries", grpc.StatusCode.UNAVAILABLE)
    result = sink.flush_once()
    assert result.written == 1 and result.failed_requests == 0
    assert len(fake.calls("CreateTimeSeries")) == 2
    assert failures(rec) == 0


def test_permanent_errors_are_not_retried_and_are_counted(fake: FakeMonitoringServer) -> None:
    clock = Clock()
    rec, sink = make_sink(fake.endpoint, clock)
    rec.gauge(m.QUEUE_DEPTH, 7, queue="q")
    fake.fail_next("CreateTimeSeries", grpc.StatusCode.INVALID_ARGUMENT)
    assert sink.flush_once().failed_requests == 1
    assert len(fake.calls("CreateTimeSeries")) == 1
    assert failures(rec, "INVALID_ARGUMENT") == 1
    clock.advance(10)  # retried on the next flush, spacing kept
    assert sink.flush_once().written == 2  # the gauge and the failure counter itself


def test_background_thread_flushes_and_close_stops_it(fake: FakeMonitoringServer) -> None:
    start = time.time()
    fast = Clock()

    def fast_clock() -> float:  # 1 real ms = 1 virtual s
        return fast.now + (time.time() - start) * 1000

    rec = Recorder(clock=fast_clock)
    sink = CloudMonitoringSink("proj-1", endpoint=fake.endpoint, clock=fast_clock,
                               flush_interval_s=0.02)
    rec.configure([sink])
    rec.counter(m.JOBS_SUBMITTED, kind="text", tier="draft", backend="x", status="accepted")
    assert fake.wait_for(lambda: len(fake.series) >= 1, timeout=10)
    rec.configure([])  # closes the sink (last flush, bounded)
    n = len(fake.calls("CreateTimeSeries"))
    rec.counter(m.JOBS_SUBMITTED, kind="text", tier="draft", backend="x", status="accepted")
    assert sink.flush_once().written == 0  # a closed sink writes nothing more
    assert len(fake.calls("CreateTimeSeries")) == n


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def test_dead_endpoint_never_affects_the_caller() -> None:
    clock = Clock()
    rec = Recorder(clock=clock)
    sink = CloudMonitoringSink("proj-1", endpoint=f"127.0.0.1:{_closed_port()}", clock=clock,
                               flush_interval_s=0.01, request_timeout_s=0.5,
                               flush_deadline_s=1.0, max_attempts=2)
    rec.configure([sink])
    try:
        for i in range(2_000):
            rec.counter(m.JOBS_FINISHED, **JOB)
            rec.gauge(m.QUEUE_DEPTH, i, queue="q")
            if i % 500 == 0:
                clock.advance(10)
        assert wait_until(lambda: failures(rec) >= 1)
        assert failures(rec, "UNAVAILABLE") >= 1
        assert rec.value(m.JOBS_FINISHED, **JOB) == 2_000
        assert rec.value(m.QUEUE_DEPTH, queue="q") == 1_999
    finally:
        rec.configure([], close_timeout_s=2.0)


def test_hanging_endpoint_never_blocks_the_caller(fake: FakeMonitoringServer) -> None:
    clock = Clock()
    rec = Recorder(clock=clock)
    sink = CloudMonitoringSink("proj-1", endpoint=fake.endpoint, clock=clock,
                               flush_interval_s=0.01, request_timeout_s=60.0,
                               flush_deadline_s=60.0, max_attempts=1)
    fake.hang()
    rec.configure([sink])
    try:
        rec.counter(m.JOBS_FINISHED, **JOB)
        assert fake.wait_for(lambda: bool(fake.requests))  # the exporter is now stuck in a call
        for _ in range(10_000):  # ...and recording carries on regardless
            rec.counter(m.JOBS_FINISHED, **JOB)
        assert rec.value(m.JOBS_FINISHED, **JOB) == 10_001
        assert len(fake.requests) == 1 and failures(rec) == 0  # the call is still hanging
        rec.configure([], close_timeout_s=0.05)  # close gives up waiting, does not hang
    finally:
        fake.release()  # the hung call now fails; the exporter says so in its counter
    assert wait_until(lambda: failures(rec) >= 1)


def test_unresponsive_socket_times_out_and_is_counted() -> None:
    """A TCP listener that never speaks gRPC: calls time out (DEADLINE_EXCEEDED), counted."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    clock = Clock()
    rec = Recorder(clock=clock)
    sink = CloudMonitoringSink("proj-1", endpoint=f"127.0.0.1:{listener.getsockname()[1]}",
                               clock=clock, flush_interval_s=0.01, request_timeout_s=0.2,
                               flush_deadline_s=0.5, max_attempts=2)
    rec.configure([sink])
    try:
        rec.gauge(m.QUEUE_OLDEST_AGE, 12.0, queue="q")
        assert wait_until(lambda: failures(rec, "DEADLINE_EXCEEDED") >= 1)
        rec.gauge(m.QUEUE_OLDEST_AGE, 13.0, queue="q")
        assert rec.value(m.QUEUE_OLDEST_AGE, queue="q") == 13.0
    finally:
        rec.configure([], close_timeout_s=2.0)
        listener.close()


def test_configure_from_settings_exports_as_this_process(fake: FakeMonitoringServer) -> None:
    from orchestrator.metrics.setup import configure_from_settings
    from orchestrator.settings import Settings

    rec = Recorder()
    settings = Settings(gcp_project="proj-9", gcp_monitoring_endpoint=fake.endpoint)
    (sink,) = configure_from_settings("api", settings, recorder=rec)
    try:
        assert isinstance(sink, CloudMonitoringSink)
        rec.counter(m.JOBS_SUBMITTED, kind="text", tier="draft", backend="x", status="accepted")
        assert sink.flush_once().written == 1
        (ts,) = fake.series.values()
        assert ts.resource.labels["job"] == "api"
        assert ts.resource.labels["project_id"] == "proj-9"
        assert str(os.getpid()) in ts.resource.labels["task_id"]
        assert fake.calls("CreateTimeSeries")[0].name == "projects/proj-9"
    finally:
        rec.close()
    assert configure_from_settings("api", Settings(gcp_project=None), recorder=rec) == []


def test_export_failures_are_logged_without_payloads(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    rec, sink = make_sink(f"127.0.0.1:{_closed_port()}", clock, request_timeout_s=0.5,
                          flush_deadline_s=1.0, max_attempts=1)
    rec.gauge(m.BUDGET_SPEND, 3.5, scope="tenant:secret-tenant", period="day")
    with caplog.at_level("WARNING", logger="orchestrator.metrics.gcm"):
        assert sink.flush_once().failed_requests == 1
    lines = [r.getMessage() for r in caplog.records if r.name == "orchestrator.metrics.gcm"]
    assert lines == ["cloud monitoring export failed (UNAVAILABLE, ServiceUnavailable): "
                     "metric descriptor budget/spend not written; will retry"]
    assert failures(rec, "UNAVAILABLE") == 2  # the descriptor and the series
    assert "secret-tenant" not in lines[0]
    sink.close()


# -- the real API's rules (the fake keeps them; see fake_gcm's docstring for the sources) ------

def _raw_series(fake: FakeMonitoringServer, **point: Any) -> Any:
    from google.cloud import monitoring_v3

    from orchestrator.metrics.clients import metric_client

    client = metric_client(fake.endpoint)
    series = []
    for q, interval in (("good", {"end_time": {"seconds": int(T0)}}),
                        ("bad", point["interval"])):
        series.append(monitoring_v3.TimeSeries(
            metric={"type": m.METRIC_PREFIX + "queue/depth", "labels": {"queue": q}},
            resource={"type": "generic_task", "labels": {
                "project_id": "p", "location": "global", "namespace": "n", "job": "j",
                "task_id": "t"}},
            metric_kind="GAUGE", value_type="INT64",
            points=[{"interval": interval, "value": {"int64_value": 1}}]))
    return client, series


def test_the_fake_applies_a_request_partially_as_the_real_api(
        fake: FakeMonitoringServer) -> None:
    """projects.timeSeries.create: "If any time series could not be written, a corresponding
    failure message is included in the error response" — the others are written."""
    from google.api_core import exceptions as gexc
    from google.cloud import monitoring_v3

    client, series = _raw_series(fake, interval={"start_time": {"seconds": int(T0) - 5},
                                                 "end_time": {"seconds": int(T0)}})
    with pytest.raises(gexc.InvalidArgument) as err:
        client.create_time_series(name="projects/p", time_series=series)
    assert "timeSeries[1]" in str(err.value) and "timeSeries[0]" not in str(err.value)
    summary = monitoring_v3.CreateTimeSeriesSummary.pb()()
    (detail,) = err.value.details
    assert detail.Unpack(summary)
    assert (summary.total_point_count, summary.success_point_count) == (2, 1)
    assert [k[1] for k in fake.series] == [(("queue", "good"),)]
    assert "GAUGE" in fake.rejected[0][1]


def test_a_value_the_api_refuses_never_stops_the_other_series(
        fake: FakeMonitoringServer) -> None:
    """The API refuses non-finite values, integers beyond INT64 and label values over 1024
    characters (TypedValue, LabelDescriptor). Such a series must not be sent (it would fail
    again at every flush) and must not stop the series recorded next to it."""
    clock = Clock()
    rec, sink = make_sink(fake.endpoint, clock)
    rec.gauge(m.BREAKER_STRIKES, float("inf"), backend="a")  # INT64 gauge
    rec.gauge(m.BUDGET_SPEND, float("-inf"), scope="tenant:t", period="day")
    rec.distribution(m.JOB_COST, float("inf"), kind="k", tier="t", backend="b")
    rec.counter(m.UNCERTAIN_SPEND, float("inf"), backend="b")
    rec.gauge(m.QUEUE_DEPTH, 2**63, queue="huge")
    rec.gauge(m.QUEUE_DEPTH, 1, queue="x" * 1025)
    for i in range(3):
        rec.gauge(m.QUEUE_DEPTH, i, queue=f"q{i}")
    clock.advance(1)
    result = sink.flush_once()  # must not raise
    assert result.failed_requests == 0 and fake.rejected == []
    depth = m.METRIC_PREFIX + "queue/depth"
    assert {dict(k[1])["queue"] for k in fake.series if k[0] == depth} == {"q0", "q1", "q2"}
    assert rec.value(m.RECORDER_DROPPED, reason="bad_value") == 4  # the non-finite values
    assert failures(rec, "bad_value") == 1  # the integer too large for INT64
    assert failures(rec, "label_too_long") == 1
    for _ in range(7):  # a minute on: the same values are not tried or counted again
        clock.advance(10)
        assert sink.flush_once().failed_requests == 0 and fake.rejected == []
    assert failures(rec) == 2
    rec.gauge(m.QUEUE_DEPTH, 5, queue="huge")  # a value it can take: written again
    clock.advance(10)
    sink.flush_once()
    assert (depth, (("queue", "huge"),)) in written(fake)


def test_a_partial_failure_loses_and_repeats_no_other_series(
        fake: FakeMonitoringServer) -> None:
    """A series the API refuses (here: another writer already wrote it 2 s ago) fails its
    request; the series written with it are written again at the next flush, 10 s later
    (never the same point twice), and the refused one once its spacing allows."""
    clock = Clock()
    rec, sink = make_sink(fake.endpoint, clock)
    for i in range(3):
        rec.gauge(m.QUEUE_DEPTH, i, queue=f"q{i}")
    clock.advance(1)
    other, osink = make_sink(fake.endpoint, clock)  # the same task_id: a misconfiguration
    other.gauge(m.QUEUE_DEPTH, 9, queue="q1")
    assert osink.flush_once().written == 1
    clock.advance(2)
    result = sink.flush_once()
    assert result.failed_requests == 1 and len(fake.rejected) == 1
    assert failures(rec, "INVALID_ARGUMENT") == 1
    clock.advance(10)
    assert sink.flush_once().failed_requests == 0
    assert len(fake.rejected) == 1
    for key, points in fake.series_points.items():
        ends = [p.interval.end_time.seconds for p in points]
        assert ends == sorted(set(ends)), key
    q = {dict(k[1])["queue"]: len(v) for k, v in fake.series_points.items()
         if k[0].endswith("queue/depth")}
    assert q == {"q0": 2, "q1": 2, "q2": 2}


@pytest.mark.parametrize("code", [grpc.StatusCode.DEADLINE_EXCEEDED,
                                  grpc.StatusCode.INTERNAL, grpc.StatusCode.ABORTED])
def test_a_write_whose_outcome_is_unknown_is_not_resent_with_the_same_point(
        fake: FakeMonitoringServer, code: grpc.StatusCode) -> None:
    """CreateTimeSeries is not idempotent (Google's client has no retry for it): after an
    answer that does not say whether the points were written, sending them again is refused
    as too frequent when they were. The next flush writes fresh points instead."""
    clock = Clock()
    rec, sink = make_sink(fake.endpoint, clock)
    rec.gauge(m.QUEUE_DEPTH, 7, queue="q")
    fake.fail_next("CreateTimeSeries", code, after_apply=True)
    assert sink.flush_once().failed_requests == 1
    assert len(fake.calls("CreateTimeSeries")) == 1 and fake.rejected == []
    assert failures(rec, code.name) == 1
    clock.advance(10)
    assert sink.flush_once().written >= 1 and fake.rejected == []


def test_a_gauge_no_longer_set_here_stops_being_sent(fake: FakeMonitoringServer) -> None:
    """Each process writes its own series (task_id), and beat's publish_gauges runs in
    whichever worker process takes it. A process that once saw a breaker open must not
    re-send that 2 for ever: the alert "breaker open" takes the max across processes."""
    clock = Clock()
    rec, sink = make_sink(fake.endpoint, clock)
    rec.gauge(m.BREAKER_STATE, m.BREAKER_OPEN, backend="a")  # set once, never again here
    rec.counter(m.JOBS_FINISHED, **JOB)  # counted once: a total stays true, keeps going out
    for _ in range(int(600 / 15)):  # 10 minutes; another gauge set every 15 s
        rec.gauge(m.QUEUE_DEPTH, 1, queue="q")
        sink.flush_once()
        clock.advance(15)

    def ends(metric: str) -> list[float]:
        return [float(p.interval.end_time.seconds) for k, pts in fake.series_points.items()
                if k[0].endswith(metric) for p in pts]

    assert ends("breaker_state") and max(ends("breaker_state")) <= T0 + 300
    assert max(ends("queue/depth")) >= T0 + 580
    assert max(ends("jobs/finished")) >= T0 + 540
    rec.gauge(m.BREAKER_STATE, m.BREAKER_CLOSED, backend="a")  # set again: sent again
    sink.flush_once()
    assert max(ends("breaker_state")) >= T0 + 600
