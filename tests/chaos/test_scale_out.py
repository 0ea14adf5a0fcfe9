"""Scale-out: 2 API processes behind a round-robin balancer, 3 worker processes and beat on one
PostgreSQL and one Redis. A burst of 2,000 submissions across 20 tenants whose budgets are
sized to refuse some: exactly the affordable ones are admitted (computed from the catalogue's
prices), none is lost, none is paid twice."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.chaos.cluster import Cluster, video
from tests.chaos.load import Figures, RoundRobin, assert_kept, verdict
from tests.integration.e2e_support import E2E_CATALOGUE

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(900)]

TENANTS = 20
PER_TENANT = 100
BACKEND = "vid-cheap"  # pinned: the job's worst case is this backend's price, nothing else


def job_cost_micros() -> int:
    """What one job holds and is charged: 4 s of 720p video on vid-cheap, from its price in
    the catalogue (not from the code under test)."""
    price = next(b for b in E2E_CATALOGUE["backends"] if b["name"] == BACKEND)["price"]
    usd = float(price["usd_per_second"]) * 4 * float(price["resolution_multipliers"]["720p"])
    return round(usd * 1_000_000)


def affordable(i: int) -> int:
    """Tenant i's budget holds this many jobs (40…97 of its 100)."""
    return 40 + 3 * i


def test_two_apis_three_workers_a_burst_of_2000_jobs(
        cluster: Cluster, figures: Figures) -> None:
    cost = job_cost_micros()
    apis = [cluster.api(wait=False) for _ in range(2)]
    workers = [cluster.worker(wait=False) for _ in range(3)]
    for api in apis:
        cluster.wait_api(api)
    cluster.wait_workers(workers)
    cluster.beat()
    run = uuid.uuid4().hex[:6]
    tenants = [f"scale-{run}-{i}" for i in range(TENANTS)]
    # a budget of affordable(i) jobs and half a job more: the next job does not fit
    keys = {t: cluster.tenant(t, limit_usd=(affordable(i) * cost + cost // 2) / 1e6)
            for i, t in enumerate(tenants)}
    lb = RoundRobin([("127.0.0.1", a.port or 0) for a in apis]).start()
    quote = httpx.post(f"{lb.url}/v1/quotes", json=video(backend=BACKEND), timeout=30,
                       headers={"Authorization": f"Bearer {keys[tenants[0]]}"})
    assert quote.json()["worst_case_usd"] * 1e6 == pytest.approx(cost)

    local = threading.local()  # one keep-alive client per thread (16 connections in turn)
    clients: list[httpx.Client] = []
    unexpected: list[dict[str, Any]] = []

    def submit(item: tuple[str, int]) -> tuple[str, int, str | None]:
        tenant, n = item
        http = getattr(local, "http", None)
        if http is None:
            http = local.http = httpx.Client(base_url=lb.url, timeout=30)
            clients.append(http)
        headers = {"Authorization": f"Bearer {keys[tenant]}",
                   "Idempotency-Key": f"{tenant}-{n}"}
        for _ in range(20):  # a 503 or a cut connection: the same key again
            try:
                r = http.post("/v1/jobs", json=video(f"burst {n}", backend=BACKEND),
                              headers=headers)
            except httpx.TransportError:
                continue
            if r.status_code != 503:
                body: dict[str, Any] = r.json()
                if r.status_code not in (202, 402):  # what the failure message shows
                    unexpected.append(body)
                return tenant, r.status_code, body.get("id")
            time.sleep(float(r.headers.get("Retry-After", "1")))  # as asked
        return tenant, 0, None

    burst = [(t, n) for n in range(PER_TENANT) for t in tenants]  # tenants interleaved
    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(submit, burst))
    burst_s = time.monotonic() - started
    for c in clients:
        c.close()
    lb.stop()

    statuses = Counter(status for _, status, _ in answers)
    admitted = Counter(t for t, status, _ in answers if status == 202)
    accepted = {job for _, status, job in answers if status == 202 and job}
    v = verdict(cluster.engine, cluster.sim_url, accepted, tenants, timeout_s=600)
    expected = {t: min(PER_TENANT, affordable(i)) for i, t in enumerate(tenants)}
    figures.record(
        "scale_out", apis=len(apis), workers=len(workers), beats=1, tenants=TENANTS,
        submissions=len(burst), admitted=sum(admitted.values()),
        expected_admitted=sum(expected.values()), refused_402=statuses[402],
        other_answers=sum(n for s, n in statuses.items() if s not in (202, 402)),
        burst_s=burst_s, submissions_per_s=len(burst) / burst_s, jobs=v.jobs,
        lost=len(v.lost), paid_twice=v.paid_twice, audit_problems=len(v.audit),
        drained_s=v.drained_s)
    assert set(statuses) <= {202, 402}, (statuses, unexpected[:3])
    assert dict(admitted) == expected
    assert v.jobs == len(accepted) == sum(expected.values())
    assert_kept(v)
    assert [p.name for p in cluster.procs if not p.alive()] == []
