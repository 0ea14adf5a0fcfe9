"""The recorder: aggregation, validation against the catalogue, thread safety, never raising."""

from __future__ import annotations

import math
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator import metrics
from orchestrator.metrics import catalogue as m
from orchestrator.metrics.recorder import DistributionValue, Recorder

JOB = {"kind": "video", "tier": "standard", "backend": "sim-a", "status": "succeeded"}


def test_counter_adds_per_label_set() -> None:
    rec = Recorder()
    rec.counter(m.JOBS_FINISHED, **JOB)
    rec.counter(m.JOBS_FINISHED, 2, **JOB)
    rec.counter(m.JOBS_FINISHED, **{**JOB, "status": "failed"})
    assert rec.value(m.JOBS_FINISHED, **JOB) == 3
    assert rec.value(m.JOBS_FINISHED, **{**JOB, "status": "failed"}) == 1
    assert rec.series_count() == 2


def test_label_order_and_value_types_map_to_one_series() -> None:
    rec = Recorder()
    rec.counter(m.JOB_RETRIES, backend="b", reason="429")
    rec.counter(m.JOB_RETRIES, reason="429", backend="b")
    rec.counter(m.JOB_RETRIES, reason=429, backend="b")
    assert rec.series_count() == 1
    assert rec.value(m.JOB_RETRIES, backend="b", reason="429") == 3


def test_missing_labels_are_empty_strings() -> None:
    rec = Recorder()
    rec.counter(m.JOBS_SUBMITTED, kind="image", status="accepted")
    (point,) = rec.snapshot()
    assert dict(point.labels) == {"kind": "image", "tier": "", "backend": "", "status": "accepted"}


def test_gauge_keeps_last_value() -> None:
    rec = Recorder()
    rec.gauge(m.QUEUE_DEPTH, 5, queue="default")
    rec.gauge(m.QUEUE_DEPTH, 2, queue="default")
    assert rec.value(m.QUEUE_DEPTH, queue="default") == 2


def test_distribution_buckets_mean_and_deviation() -> None:
    rec = Recorder()
    for v in (0.2, 1.0, 3.0, 10_000.0):
        rec.distribution(m.JOB_LATENCY, v, **JOB)
    d = rec.value(m.JOB_LATENCY, **JOB)
    assert isinstance(d, DistributionValue)
    assert d.count == 4 and d.sum == pytest.approx(10_004.2)
    assert d.mean == pytest.approx(10_004.2 / 4)
    bounds = m.LATENCY_BUCKETS_S
    assert len(d.bucket_counts) == len(bounds) + 1
    assert d.bucket_counts[0] == 1  # 0.2 < 0.5: underflow
    assert d.bucket_counts[bounds.index(1) + 1] == 1  # 1.0 lands in [1, 2)
    assert d.bucket_counts[bounds.index(2) + 1] == 1  # 3.0 in [2, 5)
    assert d.bucket_counts[-1] == 1  # overflow
    mean = d.mean
    assert d.sum_of_squared_deviation == pytest.approx(
        sum((v - mean) ** 2 for v in (0.2, 1.0, 3.0, 10_000.0)))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=1e5, allow_nan=False), min_size=1,
                max_size=50))
def test_distribution_matches_plain_statistics(values: list[float]) -> None:
    rec = Recorder()
    for v in values:
        rec.distribution(m.JOB_COST, v, kind="text", tier="draft", backend="x")
    d = rec.value(m.JOB_COST, kind="text", tier="draft", backend="x")
    assert isinstance(d, DistributionValue)
    assert d.count == len(values) == sum(d.bucket_counts)
    assert d.sum == pytest.approx(math.fsum(values), rel=1e-9, abs=1e-9)
    mean = math.fsum(values) / len(values)
    ssd = math.fsum((v - mean) ** 2 for v in values)
    assert d.sum_of_squared_deviation == pytest.approx(ssd, rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("call", [
    lambda r: r.counter("no/such_metric", env="x"),
    lambda r: r.counter(m.JOB_RETRIES, backend="b", reason="x", tenant="t1"),  # unknown label
    lambda r: r.counter(m.JOB_RETRIES, -1, backend="b", reason="x"),  # counters only grow
    lambda r: r.gauge(m.JOBS_FINISHED, 3, **JOB),  # a counter, not a gauge
    lambda r: r.distribution(m.JOB_LATENCY, float("nan"), **JOB),
    lambda r: r.distribution(m.JOB_LATENCY, "slow", **JOB),
    lambda r: r.gauge(m.QUEUE_DEPTH, None, queue="q"),
])
def test_bad_calls_never_raise_and_are_counted(call: Any) -> None:
    rec = Recorder()
    call(rec)
    dropped = sum(p.value for p in rec.snapshot()  # type: ignore[misc]
                  if p.metric.name == m.RECORDER_DROPPED)
    assert dropped == 1
    assert all(p.metric.name == m.RECORDER_DROPPED or p.version == 0 for p in rec.snapshot())


def test_wrong_kind_on_existing_series_does_not_corrupt_it() -> None:
    rec = Recorder()
    rec.counter(m.JOBS_FINISHED, **JOB)
    rec.gauge(m.JOBS_FINISHED, 100, **JOB)
    rec.distribution(m.JOBS_FINISHED, 100, **JOB)
    assert rec.value(m.JOBS_FINISHED, **JOB) == 1
    assert rec.value(m.RECORDER_DROPPED, reason="bad_value") == 2


def test_series_cap_drops_new_series_but_keeps_old_ones() -> None:
    rec = Recorder(max_series=3)
    for i in range(5):
        rec.gauge(m.QUEUE_DEPTH, i, queue=f"q{i}")
    rec.gauge(m.QUEUE_DEPTH, 42, queue="q0")
    assert rec.value(m.QUEUE_DEPTH, queue="q0") == 42
    assert rec.value(m.QUEUE_DEPTH, queue="q4") is None
    assert rec.series_count() == 3


def test_concurrent_recording_loses_nothing() -> None:
    rec = Recorder()
    n_threads, per_thread = 8, 5_000
    start = threading.Barrier(n_threads)

    def work(i: int) -> None:
        start.wait()
        for j in range(per_thread):
            rec.counter(m.JOB_RETRIES, backend=f"b{j % 3}", reason="5xx")
            rec.distribution(m.JOB_QUEUE_LATENCY, 0.01 * i, kind="video", tier="draft")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = sum(rec.value(m.JOB_RETRIES, backend=f"b{k}", reason="5xx")  # type: ignore[misc]
                for k in range(3))
    assert total == n_threads * per_thread
    d = rec.value(m.JOB_QUEUE_LATENCY, kind="video", tier="draft")
    assert isinstance(d, DistributionValue) and d.count == n_threads * per_thread


def test_module_level_functions_use_the_default_recorder() -> None:
    before = metrics.get_recorder().value(m.JOB_FAILOVERS, kind="video", from_backend="a",
                                          to_backend="b") or 0
    assert isinstance(before, int)
    metrics.counter(m.JOB_FAILOVERS, kind="video", from_backend="a", to_backend="b")
    after = metrics.get_recorder().value(m.JOB_FAILOVERS, kind="video", from_backend="a",
                                         to_backend="b")
    assert after == before + 1


def test_catalogue_is_consistent() -> None:
    prom_names = [d.prom_name for d in m.CATALOGUE.values()]
    assert len(set(prom_names)) == len(prom_names)
    for d in m.CATALOGUE.values():
        assert d.description and d.unit and d.metric_type.startswith(m.METRIC_PREFIX)
        assert (d.kind is m.Kind.DISTRIBUTION) == bool(d.buckets)
        assert list(d.buckets) == sorted(set(d.buckets))
        assert (d.kind is m.Kind.CUMULATIVE) == d.prom_name.endswith("_total")


def test_a_forked_child_starts_with_an_empty_default_recorder() -> None:
    import os

    metrics.gauge(m.QUEUE_DEPTH, 5, queue="fork-test")
    assert metrics.get_recorder().value(m.QUEUE_DEPTH, queue="fork-test") == 5
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: inherited series are gone, recording works
        try:
            rec = metrics.get_recorder()
            ok = rec.value(m.QUEUE_DEPTH, queue="fork-test") is None and not rec.sinks
            metrics.gauge(m.QUEUE_DEPTH, 9, queue="fork-test")
            ok = ok and rec.value(m.QUEUE_DEPTH, queue="fork-test") == 9
            os.write(write_fd, b"ok" if ok else b"no")
        finally:
            os._exit(0)
    os.close(write_fd)
    answer = os.read(read_fd, 2)
    os.waitpid(pid, 0)
    os.close(read_fd)
    assert answer == b"ok"
    assert metrics.get_recorder().value(m.QUEUE_DEPTH, queue="fork-test") == 5
