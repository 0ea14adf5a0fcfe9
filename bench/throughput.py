"""Throughput: jobs/s from enqueue to settled on one worker process, against bare Celery.

    .venv/bin/python bench/throughput.py [--jobs 2000] [--concurrency 8]

One orchestrator worker process (Celery, thread pool) runs text jobs against an instant
simulated OpenAI-compatible backend: each job is claimed, checkpointed, submitted, settled in
the ledger and recorded. In the same run a bare Celery worker (bench/bare_celery.py: a plain
Celery app on kombu's own Redis transport, the same pool, threads and per-task settings) runs
no-op tasks through the same Redis. Both are measured the same way: the worker's consumer is
paused, the N messages are enqueued (jobs through the Submitter: route, job row, hold,
enqueue), the consumer resumes and the clock runs from the first one done to the last. So the
figures compare what one worker process does per job with what Celery itself does per task,
not how fast this script can submit (bench/submit.py measures submission).

The JSON line also gives the same no-ops run by the orchestrator's own worker
(``noop_on_orchestrator_worker_per_s``): its Redis transport (workers/broker.py) makes every
task cheaper, no-ops included, so that figure is Celery as the orchestrator runs it.

Last line: orchestrator_jobs_per_s=… bare_celery_per_s=… ratio=…   (target ratio >= 0.5)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stack import ROOT, TENANT, Stack, cpu_seconds, stack

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


ORCHESTRATOR_WORKER = f"celery@{socket.gethostname()}"  # _stack's worker: Celery's default name
BARE_WORKER = f"bare@{socket.gethostname()}"


def drain_rate(s: Stack, worker: str, queue: str, n: int, enqueue: Callable[[int], None],
               count: Callable[[], int], cpu: Callable[[], float]) -> tuple[float, float]:
    """(items/s, worker CPU ms per item) for ``n`` items enqueued on ``queue`` while its
    consumer on ``worker`` is paused; ``cpu``: the CPU seconds of that worker.

    The rate runs from the first item done to the last, so the seconds a worker takes to
    resume a cancelled consumer do not count against either side.
    """
    control = s.broker.control
    control.cancel_consumer(queue, reply=True, timeout=10, destination=[worker])
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(enqueue, range(n)))
    cpu0 = cpu()
    control.add_consumer(queue, destination=[worker])  # no reply wait: the clock starts now
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
    return (n - first[1]) / (end - first[0]), (cpu() - cpu0) * 1000 / n


def orchestrator_rate(s: Stack, n: int) -> tuple[float, float]:
    return drain_rate(s, ORCHESTRATOR_WORKER, "jobs.normal", n,
                      lambda _: s.container.submitter.submit(TENANT, SPEC) and None,
                      lambda: n - s.count_owed(), s.worker_cpu_s)


def noop_rate(s: Stack, n: int, bare: subprocess.Popen[bytes] | None = None
              ) -> tuple[float, float]:
    """No-ops on the bare Celery worker ``bare``, or on the orchestrator's own worker."""
    key = f"bench:noop:{uuid.uuid4().hex}"
    worker, task, queue = ((BARE_WORKER, "bare.noop", "bare") if bare
                           else (ORCHESTRATOR_WORKER, "orchestrator.noop", "jobs.normal"))
    return drain_rate(
        s, worker, queue, n, lambda _: s.broker.send_task(task, (key,), queue=queue) and None,
        lambda: int(s.redis.get(key) or 0),
        (lambda: cpu_seconds(bare.pid)) if bare else s.worker_cpu_s)


@contextmanager
def bare_worker(s: Stack, concurrency: int) -> Iterator[subprocess.Popen[bytes]]:
    """A bare Celery worker (bench/bare_celery.py) on the stack's Redis, ready."""
    env = {**os.environ, "BARE_BROKER_URL": s.container.redis_url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "bare_celery", "worker", "--pool", "threads",
         "-c", str(concurrency), "--without-gossip", "--without-mingle", "--without-heartbeat",
         "-Q", "bare", "-n", "bare@%h", "--loglevel", "ERROR"],
        cwd=ROOT / "bench", env=env, start_new_session=True)
    try:
        key = f"bench:ready:{uuid.uuid4().hex}"
        s.broker.send_task("bare.noop", (key,), queue="bare")
        deadline = time.monotonic() + 60
        while not s.redis.get(key):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the bare Celery worker did not start")
            time.sleep(0.05)
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--concurrency", type=int,
                    default=Settings.model_fields["worker_concurrency"].default)
    args = ap.parse_args()
    with stack(CATALOGUE, concurrency=args.concurrency) as s, \
            bare_worker(s, args.concurrency) as bare:
        orchestrator_rate(s, 200)  # warm-up: connections, caches, prepared statements
        noop_rate(s, 500, bare)
        noop_rate(s, 500)
        jobs, jobs_cpu = orchestrator_rate(s, args.jobs)
        noops, noop_cpu = noop_rate(s, args.jobs, bare)
        own, own_cpu = noop_rate(s, args.jobs)
    print(json.dumps({"jobs": args.jobs, "worker_threads": args.concurrency,
                      "worker_cpu_ms_per_job": round(jobs_cpu, 2),
                      "bare_celery_cpu_ms_per_noop": round(noop_cpu, 2),
                      "noop_on_orchestrator_worker_per_s": round(own, 1),
                      "orchestrator_worker_cpu_ms_per_noop": round(own_cpu, 2),
                      "ratio_to_noop_on_orchestrator_worker": round(jobs / own, 2)}))
    print(f"orchestrator_jobs_per_s={jobs:.1f} bare_celery_per_s={noops:.1f} "
          f"ratio={jobs / noops:.2f}")


if __name__ == "__main__":
    main()
