"""PostgreSQL and Redis restarted under steady submissions.

While a server is down every answer is a 2xx (what still can be served) or ``503
unavailable`` with ``Retry-After``, never a 500; the API answers 2xx again within 10 s of the
server's return by itself; afterwards every accepted job ends, nothing is paid twice and the
ledger audit is clean."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.chaos.cluster import Cluster, video, wait_for
from tests.chaos.load import Answer, Figures, Steady, assert_kept, verdict

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(420)]

RECOVERY_LIMIT_S = 10.0


def _check_answers(answers: list[Answer], down: float, up: float) -> dict[str, int]:
    """No 500 and nothing but 2xx or a proper 503 at any time; some 503s while down."""
    bad = [a for a in answers if not (200 <= a.status < 300 or (
        a.status == 503 and a.code == "unavailable" and a.retry_after is not None))]
    assert not bad, f"{len(bad)} improper answers, e.g. {bad[:5]}"
    during = [a for a in answers if down <= a.at <= up]
    refused = Counter(a.route for a in during if a.status == 503)
    assert refused["POST /v1/jobs"] > 0, f"no submission was refused while down: {during[:5]}"
    return dict(refused)


def _outage(cluster: Cluster, figures: Figures, which: str, tenant: str,
            restarts: int = 1) -> None:
    """``restarts`` > 1: the server flaps, down 2 s, up, down again at once for 1 s, …"""
    api = cluster.api()
    cluster.worker()
    cluster.beat()
    key = cluster.tenant(tenant, limit_usd=10_000)
    load = Steady(api.url, key, lambda n: video(f"{which} outage {n}"), every_s=0.05).start()
    try:
        wait_for("jobs accepted before the outage", lambda: len(load.accepted) >= 10, 60)
        restart = (cluster.servers.restart_postgres if which == "postgres"
                   else cluster.servers.restart_redis)
        down, up = restart(5.0 if restarts == 1 else 2.0)
        for _ in range(restarts - 1):
            _, up = restart(1.0)
        ok = wait_for("a 2xx after the restart", lambda: load.ok_after(up) is not None,
                      60, poll_s=0.05)
        first_ok = load.ok_after(up)
        assert first_ok is not None
        recovery_s = first_ok.at - up
        accepted_before_stop = len(load.accepted)
        wait_for("submissions accepted after the restart",
                 lambda: len(load.accepted) >= accepted_before_stop + 10, 60)
    finally:
        load.stop()
    refused = _check_answers(load.answers, down, up)
    assert recovery_s <= RECOVERY_LIMIT_S, f"recovered only after {recovery_s:.1f} s"
    v = verdict(cluster.engine, cluster.sim_url, load.accepted, [tenant])
    figures.record(
        f"{which}_restart" + (f"_x{restarts}" if restarts > 1 else ""),
        outage_s=up - down, recovery_s=recovery_s,
        waited_for_first_2xx_s=ok, requests=len(load.answers),
        answered_503=sum(refused.values()),
        slowest_503_s=max((a.took_s for a in load.answers if a.status == 503), default=0.0),
        answered_500=sum(1 for a in load.answers if a.status == 500),
        jobs_accepted=len(load.accepted), jobs=v.jobs, lost=len(v.lost),
        paid_twice=v.paid_twice, audit_problems=len(v.audit), drained_s=v.drained_s)
    assert_kept(v)
    # the API, the worker and beat lived through it: nobody restarted them
    assert [p.name for p in cluster.procs if not p.alive()] == []


def test_postgres_restart_is_503_with_retry_after_and_recovers(
        cluster: Cluster, figures: Figures) -> None:
    _outage(cluster, figures, "postgres", "chaos-pg")


def test_redis_restart_loses_no_accepted_job(cluster: Cluster, figures: Figures) -> None:
    _outage(cluster, figures, "redis", "chaos-redis")


def test_redis_restarted_twice_in_a_row_loses_no_accepted_job(
        cluster: Cluster, figures: Figures) -> None:
    """A task that ended between the two restarts rejected its message on the channel the
    first loss had closed, and the worker exited ("Unrecoverable error"): every job after it
    stayed where it was. tests/integration/test_broker_worker.py pins that case down."""
    _outage(cluster, figures, "redis", "chaos-redis-twice", restarts=2)
