"""Processes killed under load: workers SIGKILLed every few seconds, an API replica killed
behind a round-robin balancer, two beats at once. Afterwards every accepted job is final and
owes nothing, nothing is paid twice (ledger, provider bills, provider jobs) and the ledger
audit is clean."""

from __future__ import annotations

import json
import re
import signal
import threading
import time
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import text

from orchestrator.client import Client
from orchestrator.ledger import Ledger
from orchestrator.ledger.service import utcnow
from tests.chaos.cluster import Cluster, Proc, video, wait_for
from tests.chaos.load import Figures, RoundRobin, Steady, assert_kept, verdict

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(420)]


def test_workers_sigkilled_every_3_s_every_job_ends_paid_once(
        cluster: Cluster, figures: Figures) -> None:
    api = cluster.api()
    workers = [cluster.worker(wait=False), cluster.worker(wait=False)]
    cluster.wait_workers(workers)
    cluster.beat()
    tenant = "chaos-kill"
    key = cluster.tenant(tenant, limit_usd=10_000)
    load = Steady(api.url, key, lambda n: video(f"kill {n}"), every_s=0.1).start()
    kills = 0
    started = time.monotonic()
    try:
        while time.monotonic() - started < 18:
            time.sleep(3)  # the scenario: a kill every 3 s, whatever the workers are doing
            victim = workers.pop(0)
            victim.kill(signal.SIGKILL)
            victim.popen.wait(30)
            kills += 1
            workers.append(cluster.worker(wait=False))
    finally:
        load.stop()
    cluster.wait_workers(workers)
    v = verdict(cluster.engine, cluster.sim_url, load.accepted, [tenant], timeout_s=240)
    with cluster.engine.connect() as conn:
        revived = conn.execute(text(
            "SELECT count(*) FROM jobs WHERE tenant = :t AND status = 'succeeded'"
            " AND EXISTS (SELECT 1 FROM attempts a WHERE a.job_id = jobs.id"
            "             AND a.outcome IS DISTINCT FROM 'succeeded')"), {"t": tenant}
        ).scalar_one()
    swept = _revived(cluster)
    figures.record("worker_sigkill", kills=kills, every_s=3, jobs_accepted=len(load.accepted),
                   jobs=v.jobs, lost=len(v.lost), paid_twice=v.paid_twice,
                   audit_problems=len(v.audit), revived_by_sweeper=swept,
                   jobs_with_an_extra_attempt=revived, drained_s=v.drained_s)
    assert kills >= 5
    assert swept > 0, "no kill interrupted a chain: the scenario did not happen"
    assert len(load.accepted) >= 50
    assert_kept(v)


def test_an_api_replica_killed_sdk_retries_succeed_on_the_other(
        cluster: Cluster, figures: Figures) -> None:
    a, b = cluster.api(wait=False), cluster.api(wait=False)
    cluster.wait_api(a)
    cluster.wait_api(b)
    cluster.worker()
    cluster.beat()
    tenant = "chaos-lb"
    key = cluster.tenant(tenant, limit_usd=10_000)
    lb = RoundRobin([("127.0.0.1", a.port or 0), ("127.0.0.1", b.port or 0)]).start()
    submitted: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def client_loop(n: int) -> None:
        # each thread its own SDK client (own keep-alive connection, so both replicas serve)
        with Client(base_url=lb.url, api_key=key, timeout=10, retries=4) as c:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    submitted.append(c.submit(kind="video", tier="draft",
                                              input=video(f"lb {n} {i}")["input"]).id)
                except Exception as exc:  # counted: the test fails on any
                    errors.append(exc)
                time.sleep(0.05)  # the submission rate of one client

    threads = [threading.Thread(target=client_loop, args=(n,), daemon=True) for n in range(4)]
    try:
        for t in threads:
            t.start()
        wait_for("submissions through both replicas", lambda: len(submitted) >= 20, 60)
        a.kill(signal.SIGKILL)
        killed_at = len(submitted)
        wait_for("submissions after the kill", lambda: len(submitted) >= killed_at + 40, 90)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        lb.stop()
    v = verdict(cluster.engine, cluster.sim_url, set(submitted), [tenant])
    figures.record("api_replica_killed", sdk_calls=len(submitted) + len(errors),
                   sdk_errors=len(errors), connections_refused_by_dead_replica=lb.refused,
                   jobs_accepted=len(set(submitted)), jobs=v.jobs, lost=len(v.lost),
                   paid_twice=v.paid_twice, audit_problems=len(v.audit))
    assert not errors, errors[:3]
    assert lb.refused > 0, "no request met the dead replica: the kill was not exercised"
    # one job per submission: a retried submission (its Idempotency-Key) made no second job
    assert v.jobs == len(submitted) == len(set(submitted))
    assert_kept(v)


def _revived(cluster: Cluster) -> int:
    """Jobs the sweeper revived, from the workers' ``swept`` log lines."""
    n = 0
    for p in cluster.procs:
        if p.role == "worker":
            for line in p.log.read_text(errors="replace").splitlines():
                if '"message": "swept"' in line:
                    n += int(json.loads(line).get("revived", 0))
    return n


def _sweeps_sent(beat: Proc) -> int:
    return len(re.findall(r"Sending due task sweep", beat.log.read_text(errors="replace")))


def test_two_beats_at_once_no_double_sweep_effects(cluster: Cluster, figures: Figures) -> None:
    """Both beats send every sweep; what a sweep does (revive a job whose start message was
    lost, expire a stale hold) happens once per job and hold."""
    api = cluster.api()
    tenant = "chaos-beats"
    key = cluster.tenant(tenant, limit_usd=10_000)
    # 20 jobs accepted while no worker runs, then their start messages lost: only a sweep
    # can start them
    load = Steady(api.url, key, lambda n: video(f"beats {n}"), every_s=0.02).start()
    try:
        wait_for("20 jobs accepted", lambda: len(load.accepted) >= 20, 60)
    finally:
        load.stop()
    wait_for("their start messages queued", lambda: cluster.queue_lengths() >= len(
        load.accepted), 30)
    cluster.flush_queues()
    # and 10 stale holds of jobs that do not exist: only a sweep can expire them
    ledger = Ledger(cluster.engine, clock=utcnow)
    stale = [uuid.uuid4() for _ in range(10)]
    for job_id in stale:
        ledger.hold(job_id, (f"tenant:{tenant}",), 50_000, ttl=timedelta(seconds=1))
    beats = [cluster.beat(), cluster.beat()]
    cluster.worker()
    v = verdict(cluster.engine, cluster.sim_url, load.accepted, [tenant], timeout_s=120)
    wait_for("every stale hold expired", lambda: _expired(cluster, stale) == len(stale), 60)
    wait_for("each beat to have sent two sweeps",
             lambda: min(_sweeps_sent(b) for b in beats) >= 2, 60, poll_s=0.5)
    with cluster.engine.connect() as conn:
        attempts: dict[uuid.UUID, int] = dict(conn.execute(text(
            "SELECT a.job_id, count(*) FROM attempts a JOIN jobs j ON j.id = a.job_id"
            " WHERE j.tenant = :t GROUP BY 1"), {"t": tenant}).all())
        expire_entries = conn.execute(text(
            "SELECT count(*) FROM ledger_entries WHERE kind = 'expire' AND job_id = ANY(:ids)"),
            {"ids": stale}).scalar_one()
    figures.record("two_beats", beats=len(beats),
                   sweeps_sent=sum(_sweeps_sent(b) for b in beats),
                   jobs_revived=len(load.accepted), stale_holds=len(stale),
                   expire_entries=expire_entries, max_attempts_per_job=max(attempts.values()),
                   jobs=v.jobs, lost=len(v.lost), paid_twice=v.paid_twice,
                   audit_problems=len(v.audit))
    assert_kept(v)
    assert expire_entries == len(stale)  # one budget covers each: one entry per hold
    assert len(attempts) == len(load.accepted) and set(attempts.values()) == {1}


def _expired(cluster: Cluster, ids: list[uuid.UUID]) -> int:
    with cluster.engine.connect() as conn:
        return int(conn.execute(text(
            "SELECT count(*) FROM holds WHERE job_id = ANY(:ids) AND status = 'expired'"),
            {"ids": ids}).scalar_one())
