"""Benchmark: one routing decision over 20 backends, pure and with health read from Redis.

    .venv/bin/python bench/router.py [--n 20000] [--n-redis 3000]

Starts its own PostgreSQL and Redis (``server_urls``; honours ORCH_TEST_DATABASE_URL and
ORCH_TEST_REDIS_URL); only Redis is used. Last line:
``route_p50_us=... route_p99_us=... with_redis_p99_us=...``. Targets: pure p99 <= 100 us,
with Redis p99 <= 1 ms.
"""

from __future__ import annotations

import argparse
import gc
import time
import uuid

from orchestrator.domain.breaker import BackendHealth, BreakerState, BreakerStatus
from orchestrator.domain.catalogue import BackendSpec, Catalogue
from orchestrator.domain.jobs import JobSpec
from orchestrator.domain.outcomes import Outcome
from orchestrator.domain.routing import plan_route
from orchestrator.embedded.scratch import server_urls
from orchestrator.health import HealthStore

TIERS = ("draft", "standard", "premium")


def catalogue() -> Catalogue:
    backends = []
    for i in range(20):
        backends.append(BackendSpec.model_validate({
            "name": f"vid-{i:02d}", "protocol": "predictions",
            "base_url": f"http://127.0.0.1:8100/vid-{i:02d}", "kinds": ["video"],
            "tier": TIERS[i % 3],
            "price": {"model": "per_second", "usd_per_second": round(0.04 + 0.013 * i, 3),
                      "resolution_multipliers": {"480p": 1, "720p": 1.5, "1080p": 2.5}},
            "max_concurrency": 50, "expected_latency_ms": 300 + 37 * i,
        }))
    return Catalogue(backends=tuple(backends))


def percentiles(samples_ns: list[int]) -> tuple[float, float]:
    s = sorted(samples_ns)
    return s[len(s) // 2] / 1000, s[min(len(s) - 1, int(len(s) * 0.99))] / 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--n-redis", type=int, default=3_000)
    args = ap.parse_args()
    cat = catalogue()
    spec = JobSpec.model_validate({
        "kind": "video", "input": {"prompt": "a lighthouse at dusk", "duration_s": 8,
                                   "resolution": "720p"},
        "tier": "standard", "max_cost_usd": 3.0,
    })
    now = time.time()
    health = {
        b.name: BackendHealth(
            BreakerState(BreakerStatus.OPEN, 3, 1, now + 60) if i % 7 == 3 else BreakerState(),
            success_rate=0.9 + (i % 10) / 100, latency_ms=200.0 + 11 * i, in_flight=i % 5,
        )
        for i, b in enumerate(cat)
    }
    gc.collect()
    results = {}
    for strategy in ("cheapest", "balanced"):
        s = spec.model_copy(update={"strategy": strategy})
        for _ in range(1000):
            plan_route(s, cat.backends, health, now=now)
        samples = []
        for _ in range(args.n):
            t0 = time.perf_counter_ns()
            plan_route(s, cat.backends, health, now=now)
            samples.append(time.perf_counter_ns() - t0)
        results[strategy] = percentiles(samples)
        print(f"pure {strategy}: p50={results[strategy][0]:.1f}us p99={results[strategy][1]:.1f}us"
              f" (n={args.n}, {len(cat)} backends)")
    plan = plan_route(spec, cat.backends, health, now=now)
    print(f"plan: {len(plan.candidates)} candidates, {len(plan.excluded)} excluded, "
          f"first={plan.backends[0] if plan.backends else None}")

    with server_urls() as (_db, redis_url):
        store = HealthStore.from_url(redis_url, prefix=f"bench-{uuid.uuid4().hex}")
        for i, b in enumerate(cat):
            for k in range(5):
                store.record(b.name, Outcome.SUCCESS if (i + k) % 4 else Outcome.BACKEND_FAULT,
                             latency_ms=200.0 + 11 * i)
            if i % 7 == 3:
                for _ in range(3):
                    store.record(b.name, Outcome.BACKEND_FAULT)
        names = cat.names
        for _ in range(200):
            plan_route(spec, cat.backends, store.snapshot(names), now=time.time())
        samples = []
        for _ in range(args.n_redis):
            t0 = time.perf_counter_ns()
            plan_route(spec, cat.backends, store.snapshot(names), now=time.time())
            samples.append(time.perf_counter_ns() - t0)
        r50, r99 = percentiles(samples)
        print(f"snapshot from redis (one round trip) + route: p50={r50:.1f}us p99={r99:.1f}us "
              f"(n={args.n_redis})")
        for n in names:
            store.reset(n)
    p50, p99 = results["cheapest"]
    print(f"route_p50_us={p50:.1f} route_p99_us={p99:.1f} with_redis_p99_us={r99:.1f}")


if __name__ == "__main__":
    main()
