"""Metrics overhead: cost of one recording call, and of flushing 10k series to Cloud Monitoring
(the real client against the local fake gRPC server, in this process: the figure includes the
fake's own parsing, so the real exporter cost is lower).

Last line: ``record_ns=... gauge_ns=... dist_ns=... record_ns_during_flush=...
flush_ms_10k=... requests_10k=...``
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from orchestrator.metrics import catalogue as m
from orchestrator.metrics.cloud_monitoring import CloudMonitoringSink
from orchestrator.metrics.fake_gcm import FakeMonitoringServer
from orchestrator.metrics.recorder import Recorder

N = 500_000
JOB = {"kind": "video", "tier": "standard", "backend": "sim-a", "status": "succeeded"}


def per_call_ns(fn: Callable[[int], None], n: int = N) -> float:
    """Best of three runs of ``fn(n)``, per call (loop overhead included)."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter_ns()
        fn(n)
        best = min(best, (time.perf_counter_ns() - t0) / n)
    return best


def main() -> None:
    rec = Recorder()
    counter, gauge, dist = rec.counter, rec.gauge, rec.distribution

    def counters(n: int) -> None:
        for _ in range(n):
            counter(m.JOBS_FINISHED, 1, kind="video", tier="standard", backend="sim-a",
                    status="succeeded")

    def gauges(n: int) -> None:
        for i in range(n):
            gauge(m.QUEUE_DEPTH, i, queue="default")

    def dists(n: int) -> None:
        for i in range(n):
            dist(m.JOB_LATENCY, i % 100, kind="video", tier="standard", backend="sim-a",
                 status="succeeded")

    record_ns = per_call_ns(counters)
    gauge_ns = per_call_ns(gauges)
    dist_ns = per_call_ns(dists)
    print(f"counter {record_ns:.0f} ns, gauge {gauge_ns:.0f} ns, distribution {dist_ns:.0f} ns")

    with FakeMonitoringServer(max_workers=4) as fake:
        now = [time.time()]
        big = Recorder(clock=lambda: now[0], max_series=20_000)
        for i in range(10_000):
            big.gauge(m.QUEUE_DEPTH, i, queue=f"q{i}")
        now[0] += 1
        sink = CloudMonitoringSink("bench", endpoint=fake.endpoint, clock=lambda: now[0])
        sink.attach(big)
        sink.flush_once()  # warm-up: channel, descriptors
        now[0] += 60
        for i in range(10_000):
            big.gauge(m.QUEUE_DEPTH, i + 1, queue=f"q{i}")

        during: list[float] = []
        done = threading.Event()

        def record_while_flushing() -> None:
            k = 0
            while not done.is_set():
                t0 = time.perf_counter_ns()
                for _ in range(1000):
                    big.counter(m.JOB_RETRIES, 1, backend="sim-a", reason="5xx")
                during.append((time.perf_counter_ns() - t0) / 1000)
                k += 1

        t = threading.Thread(target=record_while_flushing)
        t.start()
        t0 = time.perf_counter()
        result = sink.flush_once()
        flush_ms = (time.perf_counter() - t0) * 1000
        done.set()
        t.join()
        sink.close()
    assert result.written >= 10_000 and result.failed_requests == 0, result
    during_ns = sorted(during)[len(during) // 2] if during else float("nan")
    print(f"flush of {result.written} series in {result.requests} requests: {flush_ms:.0f} ms")
    print(f"record_ns={record_ns:.0f} gauge_ns={gauge_ns:.0f} dist_ns={dist_ns:.0f} "
          f"record_ns_during_flush={during_ns:.0f} flush_ms_10k={flush_ms:.0f} "
          f"requests_10k={result.requests}")


if __name__ == "__main__":
    main()
