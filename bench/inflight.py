"""In flight: 2,000 minute-long jobs on one worker process.

    .venv/bin/python bench/inflight.py [--jobs 2000] [--duration-s 60]

A simulated create-then-poll video backend takes ``duration_s`` per job. The jobs are
submitted (route, job row, hold, enqueue) while the worker's consumer is paused; then the one
worker process (thread pool) starts them all and polls them until each is settled. The
catalogue gives the backend's expected latency, so the first poll comes when a job should be
done (then every age/10 s). No worker thread waits on the backend: a job in flight is a row in
PostgreSQL and a scheduled poll message, not a blocked thread.

Reported: ``inflight`` the most jobs running at the backend at once (simulator counter),
``worker_rss_mb`` the worker's peak resident memory, ``makespan_s`` from the consumer's resume
to the last job settled.

Last line: inflight=… worker_rss_mb=… makespan_s=…
(targets: all jobs in flight at once, RSS <= 300 MB, makespan <= 75 s for 60 s jobs)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stack import TENANT, stack

from orchestrator.domain.jobs import JobSpec
from orchestrator.settings import Settings

BACKEND = "vid-slow"
SPEC = JobSpec.model_validate({
    "kind": "video", "tier": "draft",
    "input": {"prompt": "a slow pan over a harbour", "duration_s": 8, "resolution": "720p"},
})


def catalogue(duration_s: float) -> dict[str, object]:
    return {
        "defaults": {"timeouts": {"connect_s": 2.0, "read_s": 10.0, "start_to_close_s": 900}},
        "backends": [{
            "name": BACKEND, "protocol": "predictions", "kinds": ["video"], "tier": "draft",
            "base_url": "${ORCH_SIMULATOR_URL}/" + BACKEND, "max_concurrency": 100_000,
            "expected_latency_ms": duration_s * 1000,
            "price": {"model": "per_second", "usd_per_second": 0.03,
                      "resolution_multipliers": {"720p": 1.5}},
        }],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--duration-s", type=float, default=60.0)
    ap.add_argument("--concurrency", type=int,
                    default=Settings.model_fields["worker_concurrency"].default)
    args = ap.parse_args()
    with stack(catalogue(args.duration_s), concurrency=args.concurrency) as s:
        s.control(BACKEND, duration_ms=int(args.duration_s * 1000))
        control = s.broker.control
        control.cancel_consumer("jobs.normal", reply=True, timeout=10)
        since = datetime.now(UTC)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: s.container.submitter.submit(TENANT, SPEC), range(args.jobs)))
        control.add_consumer("jobs.normal")
        t0 = time.perf_counter()
        peak_inflight, peak_rss, all_started = 0, 0.0, None
        with httpx.Client(timeout=10) as http:
            while (done := s.count_final(since)) < args.jobs:
                state = http.get(f"{s.sim_url}/_control/{BACKEND}").json()
                peak_inflight = max(peak_inflight, int(state["in_flight"]))
                if all_started is None and int(state["predictions"]) >= args.jobs:
                    all_started = time.perf_counter() - t0
                peak_rss = max(peak_rss, s.worker_rss_mb())
                if time.perf_counter() - t0 > 20 * args.duration_s + 120:
                    raise SystemExit(f"timed out: {done}/{args.jobs} settled")
                time.sleep(0.5)
        makespan = time.perf_counter() - t0
        with s.container.engine.connect() as conn:
            statuses = dict(conn.exec_driver_sql(
                "SELECT status, count(*) FROM jobs GROUP BY status").all())
    print(json.dumps({"jobs": args.jobs, "duration_s": args.duration_s,
                      "worker_threads": args.concurrency, "statuses": statuses,
                      "all_submitted_to_backend_s": all_started and round(all_started, 1)}))
    print(f"inflight={peak_inflight} worker_rss_mb={peak_rss:.0f} makespan_s={makespan:.1f}")


if __name__ == "__main__":
    main()
