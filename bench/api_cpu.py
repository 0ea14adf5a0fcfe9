"""Benchmark: API CPU per request, route by route, on ``orchestrator up``.

    .venv/bin/python bench/api_cpu.py [--requests 1500] [--rounds 3] [--routes job,list]

Latency under load moves with everything else on the machine; the CPU an API process spends
on one request of a route moves much less, and it is what decides how many requests two
cores can answer (loadtests/: the API is the largest consumer). So this bench runs
``orchestrator up`` as bench/submit.py does, submits 200 draft videos and lets them run to
their end (the rows the reads return: each with its route and an attempt), then, route by
route, sends ``--requests`` requests from 8 threads with keep-alive connections and reads
the user + system CPU of every API process (``/proc``) before and after. Each route is
measured ``--rounds`` times; the median round is printed.

Routes: ``healthz`` (the server and middleware alone), ``job`` (GET /v1/jobs/{id}),
``list10`` and ``list50`` (GET /v1/jobs?limit=, the load test's two page sizes),
``backends``, ``budgets``, ``quote``, ``submit`` (POST /v1/jobs with an Idempotency-Key),
``report`` (GET /v1/reports/costs?group_by=backend). A non-2xx answer counts as an error.
Last line: ``<route>_ms=… … errors=…`` (CPU milliseconds per request).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid
from collections.abc import Callable

import httpx
from _stack import cpu_seconds
from submit import BODY, up_process

from orchestrator.backends.transport import Http11Transport

THREADS = 8


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=1500, help="requests per route and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--routes", help="comma-separated subset of the routes (default: all)")
    args = ap.parse_args()
    with up_process(budget_usd=10_000_000) as (url, key, pids):
        clients = [httpx.Client(base_url=url, timeout=30.0, transport=Http11Transport(),
                                headers={"Authorization": f"Bearer {key}"})
                   for _ in range(THREADS)]
        ids = [submit(clients[0]).json()["id"] for _ in range(200)]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # wait on the condition: every job ended
            page = clients[0].get("/v1/jobs?status=running&limit=1").json()["items"]
            queued = clients[0].get("/v1/jobs?status=queued&limit=1").json()["items"]
            if not page and not queued:
                break
            time.sleep(0.2)
        else:
            raise SystemExit("the jobs did not end within 120 s")
        routes: dict[str, Callable[[httpx.Client, int], httpx.Response]] = {
            "healthz": lambda c, i: c.get("/healthz"),
            "job": lambda c, i: c.get(f"/v1/jobs/{ids[i % len(ids)]}"),
            "list10": lambda c, i: c.get("/v1/jobs?limit=10"),
            "list50": lambda c, i: c.get("/v1/jobs?limit=50"),
            "backends": lambda c, i: c.get("/v1/backends"),
            "budgets": lambda c, i: c.get("/v1/budgets"),
            "quote": lambda c, i: c.post("/v1/quotes", json=BODY),
            "submit": lambda c, i: submit(c),
            "report": lambda c, i: c.get("/v1/reports/costs?group_by=backend"),
        }
        chosen = args.routes.split(",") if args.routes else list(routes)
        unknown = sorted(set(chosen) - set(routes))
        if unknown:
            raise SystemExit(f"unknown routes {unknown}; known: {', '.join(routes)}")
        figures: dict[str, float] = {}
        errors = 0
        for name in chosen:
            rounds = []
            for _ in range(args.rounds):
                ms, bad = measure(routes[name], clients, pids, args.requests)
                rounds.append(ms)
                errors += bad
            figures[name] = statistics.median(rounds)
            print(f"route={name} cpu_ms_per_request={figures[name]:.3f} "
                  f"rounds={' '.join(f'{r:.3f}' for r in rounds)}", flush=True)
        for c in clients:
            c.close()
    print(" ".join(f"{name}_ms={ms:.3f}" for name, ms in figures.items())
          + f" errors={errors}")


def submit(client: httpx.Client) -> httpx.Response:
    return client.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": uuid.uuid4().hex})


def measure(send: Callable[[httpx.Client, int], httpx.Response], clients: list[httpx.Client],
            pids: list[int], n: int) -> tuple[float, int]:
    """API CPU milliseconds per request over ``n`` requests from the clients' threads, and how
    many were not answered 2xx."""
    for i in range(20):  # not measured: the route's first use (prepared statements, caches)
        send(clients[0], i)
    numbers = iter(range(n))
    lock = threading.Lock()
    bad = [0]

    def run(client: httpx.Client) -> None:
        while True:
            with lock:
                i = next(numbers, None)
            if i is None:
                return
            if not send(client, i).is_success:
                with lock:
                    bad[0] += 1

    before = cpu_seconds(*pids)
    threads = [threading.Thread(target=run, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return 1000 * (cpu_seconds(*pids) - before) / n, bad[0]


if __name__ == "__main__":
    main()
