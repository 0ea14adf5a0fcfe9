"""Throughput: jobs/s from enqueue to settled on one worker process, against bare Celery.

    .venv/bin/python bench/throughput.py [--jobs 2000] [--concurrency 16]

One Celery worker process (thread pool) runs text jobs against an instant simulated
OpenAI-compatible backend: each job is claimed, checkpointed, submitted, settled in the
ledger and recorded. In the same run the same worker runs bare no-op tasks through the same
Redis. Both are measured the same way: the worker's consumer is paused, the N messages are
enqueued (jobs through the Submitter: route, job row, hold, enqueue), the consumer resumes and
the clock runs from the first one done to the last. So the figures compare what one worker process
does per job, not how fast this script can submit (bench/submit.py measures submission).

Last line: orchestrator_jobs_per_s=… bare_celery_per_s=… ratio=…   (target ratio >= 0.5)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stack import TENANT, Stack, stack

from orchestrator.domain.jobs import JobSpec
from orchestrator.settings import Settings

CATALOGUE = {
    "backends": [
        {"name": "txt-instant", "protocol": "openai", "kinds": ["text"], "tier": "standard",
         "base_url": "${ORCH_SIMULATOR_URL}/txt-instant", "max_concurrency": 100_000,
         "price": {"model": "per_token", "usd_per_1k_input": 0.5, "usd_per_1k_output": 1.5}},
    ],
}
SPEC = JobSpec.model_validate({"kind": "text", "input": {"prompt": "ping", "max_tokens": 16}})


def drain_rate(s: Stack, n: int, enqueue: Callable[[int], None], count: Callable[[], int]
               ) -> tuple[float, float]:
    """(items/s, worker CPU ms per item) for ``n`` items enqueued while the worker is paused.

    The rate runs from the first item done to the last, so the seconds a worker takes to
    resume a cancelled consumer do not count against either side.
    """
    control = s.broker.control
    control.cancel_consumer("jobs.normal", reply=True, timeout=10)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(enqueue, range(n)))
    cpu0 = s.worker_cpu_s()
    control.add_consumer("jobs.normal")  # no reply wait: the clock starts at the first item
    deadline = time.monotonic() + 900
    first: tuple[float, int] | None = None
    while (done := count()) < n:
        if first is None and done >= 1:
            first = (time.perf_counter(), done)
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out: {done}/{n} done")
        time.sleep(0.02)  # each count is a query on the measured database: keep them few
    end = time.perf_counter()
    if first is None or first[1] >= n:
        raise SystemExit("the run was too short to time; use more items")
    return (n - first[1]) / (end - first[0]), (s.worker_cpu_s() - cpu0) * 1000 / n


def orchestrator_rate(s: Stack, n: int) -> tuple[float, float]:
    return drain_rate(s, n, lambda _: s.container.submitter.submit(TENANT, SPEC) and None,
                      lambda: n - s.count_owed())


def bare_rate(s: Stack, n: int) -> tuple[float, float]:
    key = f"bench:noop:{uuid.uuid4().hex}"
    return drain_rate(
        s, n, lambda _: s.broker.send_task("orchestrator.noop", (key,), queue="jobs.normal")
        and None, lambda: int(s.redis.get(key) or 0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--concurrency", type=int,
                    default=Settings.model_fields["worker_concurrency"].default)
    args = ap.parse_args()
    with stack(CATALOGUE, concurrency=args.concurrency) as s:
        orchestrator_rate(s, 200)  # warm-up: connections, caches, prepared statements
        bare_rate(s, 500)
        jobs, jobs_cpu = orchestrator_rate(s, args.jobs)
        bare, bare_cpu = bare_rate(s, args.jobs)
    print(json.dumps({"jobs": args.jobs, "worker_threads": args.concurrency,
                      "worker_cpu_ms_per_job": round(jobs_cpu, 2),
                      "worker_cpu_ms_per_noop": round(bare_cpu, 2)}))
    print(f"orchestrator_jobs_per_s={jobs:.1f} bare_celery_per_s={bare:.1f} "
          f"ratio={jobs / bare:.2f}")


if __name__ == "__main__":
    main()
