"""Cost and outcome of routing strategies: what the same workload costs, and how much of it
succeeds, under our routing (cheapest on calibrated expected cost, with failover and the
result cache) against always-premium, round-robin and random.

    .venv/bin/python bench/cost_outcomes.py [--jobs 200] [--seed 22] [--rate 25]

The real stack (bench/_stack.py): embedded PostgreSQL and Redis, one Celery worker process
(16 threads), the simulator, and the API's Submitter in this process. The catalogue is the
shipped config/backends.yaml (its prices: video $0.05-0.30/s, images $0.01-0.12, text
$0.0005-0.015 per 1k tokens). The simulated providers, reset before each strategy:

* latencies: predictions run for the catalogue's expected_latency_ms (0.4-0.9 s); OpenAI
  calls take 100-400 ms;
* vid-draft (the cheapest video) is flaky: 20 % of its jobs fail (``fail_job_rate``);
  img-fast answers 10 % of its calls 500 (mostly absorbed by in-call retries);
* vid-standard degrades half-way through the workload: 90 % of its jobs fail from then on;
* vid-standard-b bills 80 % of the seconds its list price says (``usage_factor``: a discount
  the catalogue does not show): its worst case is 20 % above what it charges, which only
  calibration can learn;
* text bills what the model produced: fewer tokens than the worst case (simulator: input
  bytes/4, output uniform in [max_tokens/4, max_tokens] by a hash of the request), so text
  estimates are worst cases by design and their actual/estimate varies job to job.

Scaled down for a 2-core machine: ``--jobs`` (200) per strategy, submitted one by one at
``--rate`` (25/s); polls every 0.2-1 s; breakers cool down after 5 s. The workload (seeded):
40 % video (4-10 s, 480p/720p/1080p), 30 % image (n 1-2, 512 or 1024), 30 % text (30-150
words, max_tokens 256-2048); tiers 40 % draft, 45 % standard, 15 % premium; 10 % of the jobs
repeat an earlier job's request exactly.

Strategies, each on its own tenant, run in this order (ours first, so it learns its
calibration from its own jobs):

* ``ours``: strategy cheapest (calibrated expected cost), failover along the plan, cache on;
* ``premium``: tier premium (the premium backend of the kind; no failover: one candidate);
* ``roundrobin``: pinned to the eligible backends (kind, tier, input) in turn, no failover;
* ``random``: pinned to a random eligible backend (seeded), no failover.

Spend is what the simulated providers billed (checked against the ledger-charged job costs).
Success is succeeded / submitted (a submission refused for a breaker is a failure).
``estimate_err_p95`` is the p95 over ``ours``'s succeeded, uncached jobs whose backend had a
calibration factor when the job was routed, of |actual - expected| / expected; the line
before the last gives it per kind, and before calibration (against the worst-case estimate).

Last line: ours_usd=… premium_usd=… roundrobin_usd=… random_usd=… ours_vs_premium=…
ours_vs_roundrobin=… success_ours=… success_premium=… estimate_err_p95=…
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stack import ROOT, Stack, stack

from orchestrator.domain.jobs import JobSpec
from orchestrator.domain.routing import plan_route
from orchestrator.errors import OrchestratorError
from orchestrator.ledger.audit import audit
from orchestrator.ledger.budgets import set_budget

WORDS = ["tide", "harbour", "lantern", "fog", "granite", "orchard", "comet", "meadow", "ember",
         "quartz", "willow", "falcon", "canyon", "ripple", "saffron", "glacier", "thimble",
         "mosaic", "velvet", "beacon"]
STRATEGIES = ("ours", "premium", "roundrobin", "random")


def workload(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` job bodies; 10 % repeat an earlier one exactly (at least 20 jobs later, so that
    the original is usually done)."""
    rng = random.Random(seed)
    jobs: list[dict[str, Any]] = []
    for i in range(n):
        if i >= 30 and rng.random() < 0.10:
            jobs.append(dict(jobs[rng.randrange(0, i - 20)]))
            continue
        tier = rng.choices(["draft", "standard", "premium"], [40, 45, 15])[0]
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(30, 150)))
        prompt = f"job {i}: {words}"
        kind = rng.choices(["video", "image", "text"], [40, 30, 30])[0]
        if kind == "video":
            inp: dict[str, Any] = {"prompt": prompt[:1500], "duration_s": rng.choice([4, 6, 8, 10]),
                                   "resolution": rng.choices(["480p", "720p", "1080p"],
                                                             [30, 50, 20])[0]}
        elif kind == "image":
            inp = {"prompt": prompt, "n": rng.choice([1, 2]),
                   "size": rng.choice(["512x512", "1024x1024"])}
        else:
            inp = {"prompt": prompt, "max_tokens": rng.choice([256, 512, 1024, 2048])}
        jobs.append({"kind": kind, "tier": tier, "input": inp})
    return jobs


def setup(s: Stack) -> None:
    httpx.post(f"{s.sim_url}/_control/_reset").raise_for_status()
    s.control("vid-draft", fail_job_rate=0.2, seed=1)
    s.control("vid-standard-b", usage_factor=0.8)
    s.control("img-fast", fail_rate=0.1, latency_ms=150, seed=2)
    s.control("img-pro", latency_ms=400)
    s.control("txt-small", latency_ms=100)
    s.control("txt-large", latency_ms=300)


def degrade(s: Stack) -> None:
    s.control("vid-standard", fail_job_rate=0.9, seed=3)


@dataclass
class Run:
    name: str
    submitted: int = 0
    refused: int = 0
    ids: list[uuid.UUID] = field(default_factory=list)
    billed_micros: int = 0
    charged_micros: int = 0
    succeeded: int = 0
    cached: int = 0
    seconds: float = 0.0

    @property
    def success(self) -> float:
        return self.succeeded / self.submitted if self.submitted else 0.0


def eligible(s: Stack, body: dict[str, Any]) -> list[str]:
    """The backends a naive router could send the job to: kind, tier and input (no health)."""
    cat = s.container.catalogue()
    plan = plan_route(JobSpec.model_validate(body), cat.backends, {}, now=time.time())
    return sorted(plan.backends)


def chooser(name: str, s: Stack, seed: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
    if name == "ours":
        return lambda b: {**b, "strategy": "cheapest", "cache": True}
    if name == "premium":
        return lambda b: {**b, "tier": "premium", "cache": False}
    if name == "roundrobin":
        turns: dict[tuple[str, ...], itertools.count[int]] = {}

        def rr(b: dict[str, Any]) -> dict[str, Any]:
            names = tuple(eligible(s, b))
            i = next(turns.setdefault(names, itertools.count()))
            return {**b, "backend": names[i % len(names)], "cache": False}
        return rr
    rng = random.Random(seed + 1)
    return lambda b: {**b, "backend": rng.choice(eligible(s, b)), "cache": False}


def run(s: Stack, name: str, bodies: list[dict[str, Any]], seed: int, rate: float) -> Run:
    tenant = f"bench-{name}"
    with s.container.engine.begin() as conn:
        set_budget(conn, scope=f"tenant:{tenant}", period="month", limit_micros=10**12,
                   now=datetime.now(UTC))
    for b in s.container.catalogue().names:
        s.container.health.reset(b)
    setup(s)
    choose = chooser(name, s, seed)
    out = Run(name)
    start = time.monotonic()
    for i, body in enumerate(bodies):
        if i == len(bodies) // 2:
            degrade(s)
        spec = JobSpec.model_validate(choose(body))
        out.submitted += 1
        try:
            job, _ = s.container.submitter.submit(tenant, spec)
            out.ids.append(job.id)
        except OrchestratorError:
            out.refused += 1  # e.g. a pinned backend whose breaker is open
        pause = start + (i + 1) / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)  # pacing the submissions, not waiting for a result
    deadline = time.monotonic() + 600
    while _live(s, tenant):
        if time.monotonic() > deadline:
            raise SystemExit(f"{name}: jobs still running after 600 s")
        time.sleep(0.2)
    out.seconds = time.monotonic() - start
    bills = httpx.get(f"{s.sim_url}/_control").json()
    out.billed_micros = sum(int(v["billed_micros"]) for v in _states(bills))
    with s.container.engine.connect() as conn:
        row = conn.execute(text(
            "SELECT COALESCE(SUM(cost_micros), 0) AS charged, "
            "COUNT(*) FILTER (WHERE status = 'succeeded') AS ok, "
            "COUNT(*) FILTER (WHERE cached_from IS NOT NULL) AS cached "
            "FROM jobs WHERE tenant = :t"), {"t": tenant}).one()
    out.charged_micros, out.succeeded, out.cached = int(row.charged), int(row.ok), int(row.cached)
    return out


def _states(body: Any) -> list[dict[str, Any]]:
    if isinstance(body, dict) and "backends" in body:
        body = body["backends"]
    return list(body.values()) if isinstance(body, dict) else list(body)


def _live(s: Stack, tenant: str) -> bool:
    with s.container.engine.connect() as conn:
        return bool(conn.execute(text(
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE tenant = :t AND "
            "(status IN ('queued', 'running') OR wake_at IS NOT NULL))"),
            {"t": tenant}).scalar_one())


def p95(values: list[float]) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def spend_by_tier(s: Stack, tenant: str) -> dict[str, int]:
    """What the tenant's jobs were charged, per requested tier (micro-USD)."""
    with s.container.engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT spec ->> 'tier' AS tier, COALESCE(SUM(cost_micros), 0) AS micros "
            "FROM jobs WHERE tenant = :t GROUP BY 1"), {"t": tenant}).all()
    return {r.tier: int(r.micros) for r in rows}


def estimate_errors(s: Stack, tenant: str) -> dict[str, tuple[int, float, float, float, float]]:
    """Per kind (and 'all'), over the succeeded, uncached jobs whose backend had a factor
    when routed: (jobs, p95 error before, p95 error after calibration, and the error of
    their total: |sum predicted - sum actual| / sum actual, before and after)."""
    with s.container.engine.connect() as conn:
        rows = conn.execute(text(
            """
            SELECT j.kind,
                   -- the bill of the attempt that succeeded there, as calibration and the
                   -- cost report count it: earlier backends' bills are not this estimate's
                   COALESCE((SELECT a.cost_micros FROM attempts a
                             WHERE a.job_id = j.id AND a.backend = j.backend
                               AND a.outcome = 'succeeded' AND a.cost_micros IS NOT NULL
                             LIMIT 1), j.cost_micros) AS actual,
                   CAST(c ->> 'estimated_cost_micros' AS bigint) AS estimate,
                   CAST(c ->> 'expected_cost_micros' AS bigint) AS expected
            FROM jobs j CROSS JOIN LATERAL jsonb_array_elements(j.route -> 'candidates') c
            WHERE j.tenant = :t AND j.status = 'succeeded' AND j.cached_from IS NULL
              AND c ->> 'backend' = j.backend AND jsonb_typeof(c -> 'calibration') = 'object'
            """), {"t": tenant}).all()
    by: dict[str, tuple[list[float], list[float]]] = {}
    sums: dict[str, list[int]] = {}
    for r in rows:
        for k in (r.kind, "all"):
            before, after = by.setdefault(k, ([], []))
            before.append(abs(r.actual - r.estimate) / r.estimate)
            after.append(abs(r.actual - r.expected) / r.expected)
            tot = sums.setdefault(k, [0, 0, 0])
            tot[0] += r.actual
            tot[1] += r.estimate
            tot[2] += r.expected
    return {k: (len(b), p95(b), p95(a), abs(sums[k][1] - sums[k][0]) / sums[k][0],
                abs(sums[k][2] - sums[k][0]) / sums[k][0]) for k, (b, a) in by.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--seed", type=int, default=22)
    ap.add_argument("--rate", type=float, default=25.0)
    args = ap.parse_args()
    catalogue = yaml.safe_load((ROOT / "config" / "backends.yaml").read_text())
    bodies = workload(args.jobs, args.seed)
    env = {"ORCH_POLL_MIN_S": "0.2", "ORCH_POLL_MAX_S": "1.0", "ORCH_CHAIN_GRACE_S": "10",
           "ORCH_BREAKER_COOLDOWN_S": "5", "ORCH_BREAKER_COOLDOWN_CAP_S": "20",
           "ORCH_LOG_LEVEL": "WARNING"}
    settings = {"calibration_refresh_s": 1.0, "calibration_min_samples": 5,
                "calibration_window": 50, "breaker_cooldown_s": 5.0}
    runs: dict[str, Run] = {}
    with stack(catalogue, env=env, concurrency=16, overrides=settings) as s:
        for name in STRATEGIES:
            r = runs[name] = run(s, name, bodies, args.seed, args.rate)
            print(f"{name}: {r.submitted} jobs in {r.seconds:.1f} s, billed "
                  f"${r.billed_micros / 1e6:.4f} (charged ${r.charged_micros / 1e6:.4f}), "
                  f"succeeded {r.succeeded} ({r.success:.1%}), refused {r.refused}, "
                  f"from cache {r.cached}", flush=True)
            tiers = spend_by_tier(s, f"bench-{name}")
            print("  charged by requested tier: " + ", ".join(
                f"{t} ${v / 1e6:.4f}" for t, v in sorted(tiers.items())), flush=True)
            if r.billed_micros != r.charged_micros:
                print(f"  note: {name}'s providers billed {r.billed_micros} micro-USD, the "
                      f"ledger charged {r.charged_micros}", flush=True)
        errors = estimate_errors(s, "bench-ours")
        with s.container.engine.connect() as conn:
            problems = audit(conn)
    print("ledger audit: " + ("clean" if not problems else f"{len(problems)} problems"))
    print("estimate error p95 (ours, calibrated backends) before -> after calibration: "
          + ", ".join(f"{k} {b:.2%} -> {a:.2%} ({n} jobs)"
                      for k, (n, b, a, _, _) in sorted(errors.items())))
    print("error of the total (sum predicted vs sum billed), before -> after: "
          + ", ".join(f"{k} {tb:.2%} -> {ta:.2%}"
                      for k, (_, _, _, tb, ta) in sorted(errors.items())))
    usd = {k: r.billed_micros / 1e6 for k, r in runs.items()}
    err = errors["all"][2] if "all" in errors else float("nan")

    def ratio(a: float, b: float) -> float:
        return a / b if b else float("nan")  # a strategy that billed nothing

    print(f"ours_usd={usd['ours']:.4f} premium_usd={usd['premium']:.4f} "
          f"roundrobin_usd={usd['roundrobin']:.4f} random_usd={usd['random']:.4f} "
          f"ours_vs_premium={ratio(usd['ours'], usd['premium']):.3f} "
          f"ours_vs_roundrobin={ratio(usd['ours'], usd['roundrobin']):.3f} "
          f"success_ours={runs['ours'].success:.3f} success_premium={runs['premium'].success:.3f} "
          f"estimate_err_p95={err:.4f}")
    if problems:
        raise SystemExit(1)  # the figures stand, but the ledger did not add up


if __name__ == "__main__":
    main()
