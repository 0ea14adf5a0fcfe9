"""Benchmark: HTTP submit latency (POST /v1/jobs -> 202) at a fixed open-loop rate.

    .venv/bin/python bench/submit.py [--rate 100] [--seconds 30] [--stack [--no-worker]]

By default it runs ``orchestrator up`` as a user does (a subprocess in a temporary data
directory: embedded PostgreSQL and Redis, the API, one worker, beat and the simulator, each its
own process, with the shipped catalogue; the per-tenant rate limit lifted, as it is not what is
measured), raises the demo tenant's budget with the admin key so no submission meets a 402,
and submits video jobs with the demo tenant's key while the worker runs them. ``--stack``
instead uses bench/_stack.py (the simulator in this process, the API in its own); with
``--no-worker`` it pauses the worker there: the API alone.

Requests are fired on a fixed schedule (open loop: a slow answer does not slow the offered
load), each with its own Idempotency-Key; latency is measured from the scheduled send time.
An error is any answer other than 202, or a transport error. Before the clock starts, each
sender submits one job (not measured: connections, server caches), and those jobs run to
their end.
Last line: ``submit_p50_ms=... submit_p99_ms=... errors=...``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from _stack import ROOT, TENANT, Stack, children, cpu_seconds, stack

from orchestrator.backends.transport import Http11Transport
from orchestrator.embedded._ports import free_port
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
        {"name": "txt-std", "protocol": "openai", "kinds": ["text"], "tier": "standard",
         "base_url": "${ORCH_SIMULATOR_URL}/txt-std",
         "price": {"model": "per_token", "usd_per_1k_input": 0.5, "usd_per_1k_output": 1.5}},
    ],
}

BODIES: dict[str, dict[str, Any]] = {
    "video": {"kind": "video", "tier": "draft",
              "input": {"prompt": "a lighthouse at dusk", "duration_s": 4, "resolution": "720p"}},
    "text": {"kind": "text", "input": {"prompt": "a haiku about lighthouses", "max_tokens": 64}},
}
BODY = BODIES["video"]


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


WARM_UP_PER_SENDER = 1
FINAL = ("succeeded", "failed", "cancelled")
ERRORS: Counter[str] = Counter()  # what the errors were, printed with the summary


def offer(url: str, key: str, rate: float, seconds: float, senders: int = 32,
          warm_up_runs: bool = True) -> tuple[list[float], int]:
    """Send ``rate * seconds`` submissions on a fixed schedule from ``senders`` threads, each
    with its own keep-alive connection; a late send counts from its scheduled time.

    Threads of blocking clients, not one asyncio client: httpx's async pool spends CPU per
    request in proportion to the requests in flight, so a moment of backlog made the load
    generator itself the bottleneck."""
    n = int(rate * seconds)
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    headers = {"Authorization": f"Bearer {key}"}
    schedule: queue.SimpleQueue[float] = queue.SimpleQueue()
    # every sender's connection is open and used once before the clock starts
    # (with a timeout: a sender that died must fail the run, not hang it)
    connected = threading.Barrier(senders + 1, timeout=120)
    go = threading.Barrier(senders + 1, timeout=120)
    warm_up_jobs: list[str] = []

    def sender() -> None:
        nonlocal errors
        # the adapters' wire under httpx.Client: half the client CPU of httpx's own transport,
        # so less of the machine's two cores goes to the load generator
        with httpx.Client(base_url=url, headers=headers, timeout=30.0,
                          transport=Http11Transport()) as client:
            try:
                for _ in range(WARM_UP_PER_SENDER):  # not measured: connection, server caches
                    r = client.post("/v1/jobs", json=BODY,
                                    headers={"Idempotency-Key": uuid.uuid4().hex})
                    with lock:
                        if r.status_code == 202:
                            warm_up_jobs.append(r.json()["id"])
                        else:
                            ERRORS[f"warm-up: HTTP {r.status_code}"] += 1
            except httpx.HTTPError as exc:  # reported with the summary; the run goes on
                with lock:
                    ERRORS[f"warm-up: {type(exc).__name__}: {exc}"] += 1
            connected.wait()
            go.wait()
            while True:
                try:
                    at = schedule.get_nowait()
                except queue.Empty:
                    return
                time.sleep(max(0.0, at - time.perf_counter()))  # the schedule, not a race
                try:
                    r = client.post("/v1/jobs", json=BODY,
                                    headers={"Idempotency-Key": uuid.uuid4().hex})
                    failure = None if r.status_code == 202 else (
                        f"HTTP {r.status_code} {r.text[:120]}")
                except httpx.HTTPError as exc:
                    failure = type(exc).__name__
                took = (time.perf_counter() - at) * 1000
                with lock:
                    if failure is None:
                        latencies.append(took)
                    else:
                        errors += 1
                        ERRORS[failure] += 1

    threads = [threading.Thread(target=sender) for _ in range(senders)]
    for t in threads:
        t.start()
    connected.wait()
    # The warm-up's jobs, sent all at once, run to their end before the clock starts: their
    # polls and settlements would otherwise land together in the first second measured.
    if warm_up_runs:
        settled(url, headers, warm_up_jobs)
    # This process's own full collections would stall every sender at once and count as
    # server latency (a 63 ms pause of the load generator was seen as 16 late answers).
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        start = time.perf_counter() + 0.2
        for i in range(n):
            schedule.put(start + i / rate)
        go.wait()
        for t in threads:
            t.join()
    finally:
        gc.enable()
        gc.unfreeze()
    return latencies, errors


def settled(url: str, headers: dict[str, str], job_ids: list[str],
            timeout_s: float = 120.0) -> None:
    """Until every job in ``job_ids`` has ended (or raise after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=url, headers=headers, timeout=30.0) as client:
        for job_id in job_ids:
            while client.get(f"/v1/jobs/{job_id}").json()["status"] not in FINAL:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"warm-up job {job_id} did not end in {timeout_s:g} s")
                time.sleep(0.05)  # a poll interval, not a race: the loop checks the status


@contextmanager
def api_process(s: Stack) -> Iterator[tuple[str, int]]:
    """``orchestrator.api.serve`` in a child process over the stack's database and Redis."""
    settings = s.container.settings
    port = free_port()
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


@contextmanager
def up_process(budget_usd: float, info: dict[str, str] | None = None,
               env_extra: dict[str, str] | None = None
               ) -> Iterator[tuple[str, str, list[int]]]:
    """``orchestrator up`` in a temporary data dir; yields (API URL, tenant key, API pids).
    ``info`` (if given) gets the simulator's URL and the admin key; ``env_extra``: ``ORCH_*``
    settings for ``up`` beyond the bench's own."""
    with tempfile.TemporaryDirectory(prefix="orch-bench-up-") as tmp:
        data = Path(tmp) / "data"
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
        # the per-tenant rate limit (6000 per 60 s) is not what a bench measures: a run of
        # more than a minute at 100/s, or two phases back to back, would meet it
        env.update(ORCH_DATA_DIR=str(data), ORCH_API_RATE_LIMIT=str(10**9),
                   ORCH_SIMULATOR_URL=f"http://127.0.0.1:{free_port()}")
        env.update(env_extra or {})
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "up", "--data-dir", str(data),
             "--port", str(free_port())],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:  # until `up` says it runs (or exits)
                if line.startswith("running;"):
                    break
            else:
                raise RuntimeError(f"`orchestrator up` exited with {proc.wait()}")
            creds = json.loads((data / "credentials.json").read_text())
            url = creds["api_url"]
            if info is not None:
                info.update(sim_url=env["ORCH_SIMULATOR_URL"], admin_key=creds["admin_key"])
            httpx.put(f"{url}/v1/budgets", json={
                "scope": f"tenant:{creds['tenant']}", "period": "month",
                "limit_usd": budget_usd}, headers={"Authorization": f"Bearer {creds['admin_key']}"},
                timeout=30).raise_for_status()
            api = [pid for pid in children(proc.pid)
                   if b"\0api\0" in Path(f"/proc/{pid}/cmdline").read_bytes()]
            yield url, creds["tenant_key"], api
        finally:
            os.kill(proc.pid, signal.SIGTERM)  # `up` stops its children itself
            proc.wait(timeout=120)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=100.0, help="submissions per second")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--kind", choices=sorted(BODIES), default="video",
                    help="the jobs submitted (video: draft tier; the shipped catalogue's four "
                    "video backends hold 170 in flight, beyond which jobs wait in the queue)")
    ap.add_argument("--stack", action="store_true",
                    help="bench/_stack.py instead of `orchestrator up`")
    ap.add_argument("--no-worker", action="store_true",
                    help="with --stack: pause the worker once ready (the API alone)")
    args = ap.parse_args()
    global BODY
    BODY = BODIES[args.kind]
    if args.stack:
        latencies, errors, api_cpu, worker = on_stack(args)
    else:
        with up_process(budget_usd=10_000_000) as (url, key, pids):
            cpu0 = cpu_seconds(*pids)
            latencies, errors = offer(url, key, args.rate, args.seconds)
            api_cpu, worker = cpu_seconds(*pids) - cpu0, "up"
    n = len(latencies) + errors
    print(f"submissions={n} rate={args.rate:g}/s duration_s={args.seconds:g} "
          f"target={'stack' if args.stack else 'orchestrator up'} worker={worker} kind={args.kind} "
          f"mean_ms={statistics.fmean(latencies):.2f} max_ms={max(latencies):.2f} "
          f"api_cpu_ms_per_submit={api_cpu * 1000 / max(1, n):.2f}")
    for what, count in ERRORS.most_common(5):
        print(f"error x{count}: {what}")
    print(f"submit_p50_ms={pct(latencies, 50):.2f} submit_p99_ms={pct(latencies, 99):.2f} "
          f"errors={errors}")


def on_stack(args: argparse.Namespace) -> tuple[list[float], int, float, str]:
    with stack(CATALOGUE, concurrency=16) as s:
        if args.no_worker:
            os.killpg(s.worker.pid, signal.SIGSTOP)  # the stack kills it at exit
        with s.container.engine.begin() as conn:
            key = create_key(conn, TENANT)
        with api_process(s) as (url, pid):
            cpu0 = cpu_seconds(pid)
            latencies, errors = offer(url, key, args.rate, args.seconds,
                                      warm_up_runs=not args.no_worker)
            return latencies, errors, cpu_seconds(pid) - cpu0, "off" if args.no_worker else "on"


if __name__ == "__main__":
    main()
