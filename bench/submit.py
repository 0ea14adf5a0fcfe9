"""Benchmark: HTTP submit latency (POST /v1/jobs -> 202) at a fixed open-loop rate.

    .venv/bin/python bench/submit.py [--rate 100] [--seconds 30] [--no-worker]

Starts its own stack (bench/_stack.py: embedded or ORCH_TEST_* PostgreSQL and Redis, a scratch
database, the simulator, one Celery worker that runs the submitted jobs) and the API
(``orchestrator.api.serve``, uvicorn) in its own process on 127.0.0.1, so the load generator
and the simulator in this process do not share its interpreter lock. Requests are fired on a
fixed schedule (open loop: a slow answer does not slow the offered load), each with its own
Idempotency-Key; latency is measured from the scheduled send time. An error is any answer
other than 202, or a transport error. ``--no-worker`` pauses the worker: the API alone.
Last line: ``submit_p50_ms=... submit_p99_ms=... errors=...``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from _stack import ROOT, TENANT, Stack, stack

from orchestrator.store.keys import create_key

SERVE = ("from orchestrator.api import ApiConfig, serve; "
         "serve('127.0.0.1', {port}, config=ApiConfig(rate_limit=10**9), "
         "log_level='warning', access_log=False)")

CATALOGUE: dict[str, Any] = {
    "backends": [
        {"name": "vid-draft", "protocol": "predictions", "kinds": ["video"], "tier": "draft",
         "base_url": "${ORCH_SIMULATOR_URL}/vid-draft",
         "price": {"model": "per_second", "usd_per_second": 0.03}},
        {"name": "vid-std", "protocol": "predictions", "kinds": ["video"], "tier": "standard",
         "base_url": "${ORCH_SIMULATOR_URL}/vid-std",
         "price": {"model": "per_second", "usd_per_second": 0.07}},
        {"name": "vid-prem", "protocol": "predictions", "kinds": ["video"], "tier": "premium",
         "base_url": "${ORCH_SIMULATOR_URL}/vid-prem",
         "price": {"model": "per_second", "usd_per_second": 0.2}},
    ],
}

BODY = {"kind": "video", "tier": "draft",
        "input": {"prompt": "a lighthouse at dusk", "duration_s": 4, "resolution": "720p"}}


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def offer(url: str, key: str, rate: float, seconds: float) -> tuple[list[float], int]:
    n = int(rate * seconds)
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30.0,
                                 headers={"Authorization": f"Bearer {key}"}) as client:
        # warm the connection pool and the server's caches (not measured)
        for _ in range(20):
            await client.post("/v1/jobs", json=BODY,
                              headers={"Idempotency-Key": uuid.uuid4().hex})

        async def one(at: float) -> None:
            nonlocal errors
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            try:
                r = await client.post("/v1/jobs", json=BODY,
                                      headers={"Idempotency-Key": uuid.uuid4().hex})
                ok = r.status_code == 202
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append((time.perf_counter() - at) * 1000)
            else:
                errors += 1

        start = time.perf_counter() + 0.1
        await asyncio.gather(*(one(start + i / rate) for i in range(n)))
    return latencies, errors


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def api_process(s: Stack) -> Iterator[tuple[str, int]]:
    """``orchestrator.api.serve`` in a child process over the stack's database and Redis."""
    settings = s.container.settings
    port = _free_port()
    env = {**os.environ, "ORCH_DATABASE_URL": s.container.database_url,
           "ORCH_REDIS_URL": s.container.redis_url,
           "ORCH_BACKENDS_FILE": str(settings.backends_file), "ORCH_SIMULATOR_URL": s.sim_url,
           "ORCH_DB_POOL_SIZE": "20"}
    proc = subprocess.Popen([sys.executable, "-c", SERVE.format(port=port)], cwd=ROOT, env=env,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the API process exited with {proc.returncode}")
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the API did not become ready")
            time.sleep(0.05)
        yield url, proc.pid
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=100.0, help="submissions per second")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--no-worker", action="store_true",
                    help="pause the worker once ready: measure the API alone (jobs stay queued)")
    args = ap.parse_args()
    with stack(CATALOGUE, concurrency=16) as s:
        if args.no_worker:
            os.killpg(s.worker.pid, signal.SIGSTOP)  # the stack kills it at exit
        with s.container.engine.begin() as conn:
            key = create_key(conn, TENANT)
        with api_process(s) as (url, pid):
            cpu0 = cpu_s(pid)
            latencies, errors = asyncio.run(offer(url, key, args.rate, args.seconds))
            api_cpu = cpu_s(pid) - cpu0
    n = len(latencies) + errors
    print(f"submissions={n} rate={args.rate:g}/s duration_s={args.seconds:g} "
          f"worker={'off' if args.no_worker else 'on'} "
          f"mean_ms={statistics.fmean(latencies):.2f} max_ms={max(latencies):.2f} "
          f"api_cpu_ms_per_submit={api_cpu * 1000 / max(1, n):.2f}")
    print(f"submit_p50_ms={pct(latencies, 50):.2f} submit_p99_ms={pct(latencies, 99):.2f} "
          f"errors={errors}")


if __name__ == "__main__":
    main()
