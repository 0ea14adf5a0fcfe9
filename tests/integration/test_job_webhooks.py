"""Job webhooks to a real HTTP receiver: real Celery worker and beat processes send them,
signed as alerts are; the receiver verifies each signature, rejects replays and de-duplicates
by event id. Then the receiver is down for a real minute and gets everything afterwards."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from orchestrator.api import ApiConfig
from orchestrator.notify.signing import verify_signature
from orchestrator.simulator import RunningSimulator
from tests.logscan import worker_log

from .api_fixture import Api, start_api, video
from .e2e_support import E2E_CATALOGUE, ROOT, Rig, rig_for
from .test_observe_worker import sample as metric
from .test_observe_worker import scrape

SECRET = "whsec-0123456789abcdef"
TERMINAL = ("job.succeeded", "job.failed", "job.cancelled")
FAST_RETRIES = {"ORCH_WEBHOOK_INTERVAL_S": "0.5", "ORCH_WEBHOOK_BACKOFF_S": "1",
                "ORCH_WEBHOOK_BACKOFF_CAP_S": "4", "ORCH_EGRESS_ALLOW": "127.0.0.1/32"}


@dataclass
class Received:
    path: str
    event: dict[str, Any]
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A webhook receiver as the docs tell one to write: verify the signature on the raw
    body, refuse a request seen before (same endpoint and signature: a replay), keep each
    event once. (Each path stands for an endpoint of its own.)"""

    port: int
    secret: str | None = SECRET  # what it verifies with; None: not known yet (answers 503)
    unverified: list[tuple[str | None, bytes, str | None]] = field(default_factory=list)
    accepted: list[Received] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    signatures: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def unique(self) -> dict[tuple[str, str], Received]:
        """What each endpoint (path) got, de-duplicated by event id."""
        with self.lock:
            return {(r.path, r.event["id"]): r for r in self.accepted}

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                ts = self.headers.get("X-Orchestrator-Timestamp")
                sig = self.headers.get("X-Orchestrator-Signature")
                status = 200
                with receiver.lock:
                    if receiver.secret is None:  # kept to check later; sent again
                        receiver.unverified.append((ts, body, sig))
                        receiver.rejected.append("no secret yet")
                        status = 503
                    elif not verify_signature(receiver.secret, ts, body, sig,
                                              now=time.time()):
                        receiver.rejected.append("signature")
                        status = 401
                    elif f"{self.path} {sig}" in receiver.signatures:
                        receiver.rejected.append("replay")
                        status = 409
                    else:
                        receiver.signatures.add(f"{self.path} {sig}")
                        event = json.loads(body)
                        assert self.headers["X-Orchestrator-Event-Id"] == event["id"]
                        receiver.accepted.append(Received(self.path, event,
                                                          dict(self.headers), body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()  # the port refuses connections from now on


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_beat(rig: Rig, tmp: Path) -> None:
    out = worker_log("beat")
    try:
        rig.workers.append(subprocess.Popen(  # the rig stops it with its workers
            [sys.executable, "-m", "celery", "-A", "workers.celery_app", "beat",
             "-s", str(tmp / "beat-schedule"), "--loglevel", "INFO"],
            cwd=ROOT, env=rig.env, start_new_session=True,
            stdout=out, stderr=subprocess.STDOUT if out else None))
    finally:
        if out is not None:
            out.close()


@contextmanager
def hooked(db: Engine, database_url: str, redis_url: str, sim: RunningSimulator,
           tmp_path: Path, *, verifies_with: str = SECRET,
           events: tuple[str, ...] = ("job.started", *TERMINAL)
           ) -> Iterator[tuple[Api, Receiver]]:
    """API, worker and beat; acme's endpoint (signed with SECRET, for ``events``) is a
    receiver that verifies with ``verifies_with``."""
    with rig_for(E2E_CATALOGUE, db, database_url, redis_url, sim, tmp_path,
                 egress_allow="127.0.0.1/32") as rig:
        rig.env.update(FAST_RETRIES)
        api = start_api(rig, ApiConfig(key_cache_s=0))
        receiver = Receiver(free_port(), secret=verifies_with)
        receiver.start()
        try:
            r = api.tenant().put("/v1/webhooks", json={
                "url": f"{receiver.url}/tenant", "secret": SECRET, "events": list(events)})
            assert r.status_code == 200, r.text
            rig.env["ORCH_WORKER_METRICS_PORT"] = str(free_port())  # read by the worker only
            rig.start_worker()
            start_beat(rig, tmp_path)
            yield api, receiver
        finally:
            if receiver.server is not None:
                receiver.stop()
            api.close()


@pytest.fixture(name="hooks")
def hooks_fixture(db: Engine, database_url: str, redis_url: str, e2e_sim: RunningSimulator,
                  tmp_path: Path) -> Iterator[tuple[Api, Receiver]]:
    with hooked(db, database_url, redis_url, e2e_sim, tmp_path) as hooks:
        yield hooks


def _submit_mix(api: Api, receiver: Receiver) -> dict[str, str]:
    """Jobs that succeed, fail and are cancelled; job id -> the status it must end in."""
    t = api.tenant()
    jobs: dict[str, str] = {}
    for i in range(4):
        r = t.post("/v1/jobs", json=video(webhook_url=f"{receiver.url}/job/{i}"))
        assert r.status_code == 202, r.text
        jobs[r.json()["id"]] = "succeeded"
    r = t.post("/v1/jobs", json=video(backend="vid-mid", tier="standard",
                                      webhook_url=f"{receiver.url}/job/failed"))
    jobs[r.json()["id"]] = "failed"
    r = t.post("/v1/jobs", json=video(deadline_s=600, webhook_url=f"{receiver.url}/job/c"))
    assert t.post(f"/v1/jobs/{r.json()['id']}/cancel").status_code == 200
    jobs[r.json()["id"]] = "cancelled"
    return jobs


def _wait_all(rig: Rig, receiver: Receiver, jobs: dict[str, str], timeout: float) -> None:
    def arrived() -> bool:
        got = receiver.unique().values()
        on_job = {r.event["job_id"] for r in got if r.path.startswith("/job/")}
        on_tenant = {r.event["job_id"] for r in got
                     if r.path == "/tenant" and r.event["type"] in TERMINAL}
        return on_job == on_tenant == set(jobs)

    try:
        rig.wait_for("every terminal webhook", arrived, timeout)
    except AssertionError:
        with rig.engine.connect() as conn:
            rows = conn.execute(text("SELECT target, status, attempts, last_error "
                                     "FROM webhook_deliveries")).all()
        got = receiver.unique().values()
        raise AssertionError(f"{[(r.path, r.event['type'], r.event['job_id']) for r in got]} "
                             f"{jobs} deliveries: {rows}; received {len(receiver.accepted)}, "
                             f"rejected {receiver.rejected}") from None


def _check(api: Api, receiver: Receiver, jobs: dict[str, str]) -> None:
    got = list(receiver.unique().values())
    for job_id, status in jobs.items():
        on_job = [r for r in got if r.event["job_id"] == job_id and r.path.startswith("/job/")]
        # exactly one delivery of its terminal event to its own webhook_url
        assert [r.event["type"] for r in on_job] == [f"job.{status}"], (job_id, on_job)
        assert api.rig.job(uuid.UUID(job_id)).status == status
        # the tenant's endpoint: its events in order, the terminal one last
        mine = [r.event for r in receiver.accepted
                if r.event["job_id"] == job_id and r.path == "/tenant"]
        seqs = [e["seq"] for e in mine]
        assert seqs == sorted(seqs), (job_id, seqs)
        assert mine[-1]["type"] == f"job.{status}"
        assert sum(e["type"] in TERMINAL for e in {e["id"]: e for e in mine}.values()) == 1
        if status == "succeeded":
            assert [e["type"] for e in {e["id"]: e for e in mine}.values()][:-1] == [
                "job.started"]
        assert not any(b"lighthouse" in r.body for r in receiver.accepted)  # never the prompt


def test_every_terminal_job_gets_exactly_one_signed_delivery_in_order(
        hooks: tuple[Api, Receiver]) -> None:
    api, receiver = hooks
    api.rig.control("vid-mid", mode="down")  # the pinned job fails
    jobs = _submit_mix(api, receiver)
    _wait_all(api.rig, receiver, jobs, timeout=90)
    _check(api, receiver, jobs)
    assert receiver.rejected == []
    assert all({"id", "type", "job_id", "tenant", "seq", "at", "data"} <= r.event.keys()
               for r in receiver.accepted)
    # a replay of a delivered request is refused; so is a forged body
    sample = receiver.accepted[0]
    headers = {k: v for k, v in sample.headers.items() if k.startswith("X-Orchestrator")}
    r = httpx.post(f"{receiver.url}{sample.path}", content=sample.body, headers=headers)
    assert r.status_code == 409 and receiver.rejected == ["replay"]
    forged = sample.body.replace(b"job.", b"jab.")
    r = httpx.post(f"{receiver.url}{sample.path}", content=forged, headers=headers)
    assert r.status_code == 401
    # every delivery is recorded as delivered, and the secret is nowhere to be read back
    items = api.tenant().get("/v1/webhooks/deliveries", params={"limit": 500}).json()["items"]
    assert items and all(d["status"] == "delivered" for d in items)
    sent = scrape(int(api.rig.env["ORCH_WORKER_METRICS_PORT"]))  # and counted so
    assert [metric(sent, "orchestrator_webhook_deliveries_total", outcome=o)
            for o in ("delivered", "retrying", "failed")] == [len(items), None, None]
    # the same, a page of 2 at a time, newest first, each once
    paged: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 2}
    while True:
        page = api.tenant().get("/v1/webhooks/deliveries", params=params).json()
        paged += page["items"]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert [d["id"] for d in paged] == [d["id"] for d in items]
    bad = api.tenant().get("/v1/webhooks/deliveries", params={"cursor": "nope"})
    assert bad.status_code == 422 and bad.json()["error"]["details"]["field"] == "query.cursor"
    shown = api.tenant().get("/v1/webhooks").json()
    assert shown["secret_set"] and SECRET not in json.dumps(shown)
    with api.rig.engine.connect() as conn:
        stored = conn.execute(text("SELECT secret::text, url::text FROM webhook_endpoints")).one()
    assert SECRET not in stored[0] and receiver.url not in stored[1]
    assert api.tenant("globex").get("/v1/webhooks", params={"tenant": "acme"}).status_code == 403


def test_a_receiver_down_for_a_minute_gets_everything_afterwards_once_each(
        hooks: tuple[Api, Receiver]) -> None:
    api, receiver = hooks
    rig = api.rig
    rig.control("vid-mid", mode="down")  # the pinned job fails
    receiver.stop()
    down_at = time.monotonic()
    jobs = _submit_mix(api, receiver)
    rig.wait_final([uuid.UUID(j) for j in jobs], timeout=60)  # nothing waits

    def failing() -> bool:
        pending = api.tenant().get("/v1/webhooks/deliveries",
                                   params={"status": "pending"}).json()["items"]
        return any(d["last_error"] == "connect_failed" and d["attempts"] >= 2 for d in pending)

    rig.wait_for("deliveries to fail and be retried", failing, timeout=60)
    shown = api.tenant().get("/v1/webhooks").json()
    assert shown["failing_since"] is not None and shown["last_error"] == "connect_failed"
    # the receiver stays down for a real minute
    rig.wait_for("a minute down", lambda: time.monotonic() - down_at >= 60, timeout=90)
    assert receiver.accepted == []
    receiver.start()
    _wait_all(rig, receiver, jobs, timeout=60)
    _check(api, receiver, jobs)
    # everything was delivered; duplicates, if any, were only at-least-once repeats
    with rig.engine.connect() as conn:
        pending = conn.execute(text("SELECT count(*) FROM webhook_deliveries "
                                    "WHERE status <> 'delivered'")).scalar_one()
        expected = conn.execute(text("SELECT count(*) FROM webhook_deliveries")).scalar_one()
    assert pending == 0
    assert len(receiver.unique()) == expected
    rig.wait_for("the endpoint to be marked healthy again",
                 lambda: api.tenant().get("/v1/webhooks").json()["failing_since"] is None, 30)
    assert os.environ.get("ORCH_WEBHOOK_BACKOFF_S") is None  # the settings were the rig's
