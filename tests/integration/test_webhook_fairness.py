"""Tenants share the webhook sender: one tenant's dead receiver does not hold back another's
webhooks. Real PostgreSQL, real sockets, the worker's own ``deliver_due`` and HTTP client."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import Engine, text

from orchestrator.egress import EgressPolicy, egress_client
from orchestrator.events import endpoints
from orchestrator.events.delivery import FAILING_PROBES, Report, WebhookPolicy, deliver_due
from orchestrator.notify.base import default_timeout
from orchestrator.secrets import SecretBox, new_key
from tests.conditions import wait_for

from .raw_receiver import RawReceiver, Request, answer
from .webhook_jobs import insert_job

TIMEOUT_S = 2.0  # one POST's whole time limit in these tests
BOX = SecretBox([new_key()])
EGRESS = EgressPolicy("127.0.0.1/32")


@pytest.fixture(name="client")
def client_fixture() -> Iterator[httpx.Client]:
    with egress_client(default_timeout(TIMEOUT_S)) as c:
        yield c


@pytest.fixture(name="receivers")
def receivers_fixture() -> Iterator[tuple[RawReceiver, RawReceiver]]:
    """(a dead receiver's, a healthy receiver's)"""
    dead, healthy = RawReceiver().start(), RawReceiver().start()
    yield dead, healthy
    dead.close()
    healthy.close()


def _job(db: Engine, tenant: str, url: str | None = None) -> uuid.UUID:
    with db.begin() as conn:
        return insert_job(conn, url, tenant=tenant)


def _statuses(db: Engine) -> list[tuple[str, str, str, int]]:
    with db.connect() as conn:
        rows = conn.execute(text(
            "SELECT tenant, target, status, attempts FROM webhook_deliveries ORDER BY id"))
        return [(str(t), str(g), str(s), int(n)) for t, g, s, n in rows]


def test_a_dead_receiver_of_one_tenant_does_not_hold_back_another_tenants_webhook(
        db: Engine, client: httpx.Client,
        receivers: tuple[RawReceiver, RawReceiver]) -> None:
    """Tenant A's 20 deliveries, all due before B's one, go to a receiver that never answers:
    in a batch taken in due order B's waited for rounds of A's timeouts (the pool has 8
    threads). Interleaved, B's is among the first sent, while A's first POSTs still wait."""
    dead, healthy = receivers
    arrivals: list[tuple[str, float]] = []
    lock = threading.Lock()
    release = threading.Event()

    def never_answers(sock: socket.socket, _: Request) -> None:
        with lock:
            arrivals.append(("a", time.monotonic()))
        release.wait(30)  # then hangs up without a word

    def answers(sock: socket.socket, _: Request) -> None:
        with lock:
            arrivals.append(("b", time.monotonic()))
        sock.sendall(answer(200))

    dead.behave, healthy.behave = never_answers, answers
    for _ in range(20):
        _job(db, "tenant-a", f"{dead.url}/hook")
    _job(db, "tenant-b", f"{healthy.url}/hook")
    reports: list[Report] = []
    run = threading.Thread(target=lambda: reports.append(deliver_due(
        db, EGRESS, BOX, client, WebhookPolicy(), datetime.now(UTC))))
    run.start()
    try:
        wait_for("tenant B's webhook", lambda: len(healthy.got()) == 1)
    finally:
        release.set()  # A's receiver hangs up: the run ends without waiting out its timeouts
        run.join(60)
    assert not run.is_alive()
    with lock:
        order = list(arrivals)
    b_at = next(t for who, t in order if who == "b")
    a_before_b = [t for who, t in order if who == "a" and t < b_at]
    assert len(a_before_b) < 8, f"B's webhook waited for {len(a_before_b)} of A's"
    assert a_before_b == [] or b_at < min(a_before_b) + TIMEOUT_S, "after A's timeouts"
    assert reports == [Report(delivered=1, retrying=20)]
    assert [r for r in _statuses(db) if r[0] == "tenant-b"] == [
        ("tenant-b", "job", "delivered", 1)]


def test_an_endpoint_marked_failing_gets_only_its_probes_in_a_run(
        db: Engine, client: httpx.Client,
        receivers: tuple[RawReceiver, RawReceiver]) -> None:
    """Once tenant A's endpoint is failing, a run sends it at most FAILING_PROBES of its due
    deliveries, not a batch of them; A's deliveries to its jobs' own URLs (which do not mark
    the endpoint) and B's go on. A probe that succeeds clears the mark: the rest follow."""
    down, healthy = receivers
    down.behave = lambda sock, _: sock.sendall(answer(503))
    with db.begin() as conn:
        endpoints.put(conn, "tenant-a", url=f"{down.url}/tenant", secret="s" * 20,
                      events=["job.queued"], policy=EGRESS, box=BOX)
    _job(db, "tenant-a")
    assert deliver_due(db, EGRESS, BOX, client, WebhookPolicy(),
                       datetime.now(UTC)) == Report(retrying=1)
    with db.connect() as conn:
        assert endpoints.get(conn, "tenant-a").failing_since is not None  # type: ignore[union-attr]

    for _ in range(10):
        _job(db, "tenant-a")
    _job(db, "tenant-a", f"{healthy.url}/a-job")  # and one to A's endpoint too
    _job(db, "tenant-b", f"{healthy.url}/b-job")
    later = datetime.now(UTC) + timedelta(hours=1)  # past every backoff, within the window
    report = deliver_due(db, EGRESS, BOX, client, WebhookPolicy(), later)
    assert report == Report(delivered=2, retrying=FAILING_PROBES)
    assert len(down.got()) == 1 + FAILING_PROBES
    assert sorted(r.path for r in healthy.got()) == ["/a-job", "/b-job"]
    tries = [r[3] for r in _statuses(db) if r[:3] == ("tenant-a", "tenant", "pending")]
    assert len(tries) == 12 and sum(tries) == 1 + FAILING_PROBES  # the rest wait, untried

    down.behave = lambda sock, _: sock.sendall(answer(200))  # the receiver is fixed
    later += timedelta(hours=1)
    assert deliver_due(db, EGRESS, BOX, client, WebhookPolicy(), later) == Report(
        delivered=FAILING_PROBES)
    assert deliver_due(db, EGRESS, BOX, client, WebhookPolicy(), later) == Report(
        delivered=12 - FAILING_PROBES)
    assert {r[2] for r in _statuses(db)} == {"delivered"}
    with db.connect() as conn:
        assert endpoints.get(conn, "tenant-a").failing_since is None  # type: ignore[union-attr]


def test_a_busy_healthy_tenant_fills_what_the_others_leave_of_the_batch(
        db: Engine, client: httpx.Client,
        receivers: tuple[RawReceiver, RawReceiver]) -> None:
    """Interleaving is not a quota: each tenant's first goes first, then the busy tenant's
    next ones fill the batch, in the order they fell due."""
    _, healthy = receivers
    _job(db, "tenant-a", f"{healthy.url}/a")
    for _ in range(8):
        _job(db, "tenant-b", f"{healthy.url}/b")
    report = deliver_due(db, EGRESS, BOX, client, WebhookPolicy(), datetime.now(UTC),
                         batch=5, max_workers=1)
    assert report == Report(delivered=5)
    got = [(r.path, json.loads(r.body)["job_id"]) for r in healthy.got()]
    assert [p for p, _ in got] == ["/a", "/b", "/b", "/b", "/b"]
    with db.connect() as conn:
        b_jobs = [str(j) for j, in conn.execute(text(
            "SELECT job_id FROM webhook_deliveries WHERE tenant = 'tenant-b' ORDER BY id"))]
    assert [j for _, j in got[1:]] == b_jobs[:4]  # B's oldest first
