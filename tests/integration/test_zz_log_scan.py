"""No API key, prompt, channel secret, password or remote reply body in any log line of the test
run: every line the session logged (in process, as production formats it, and every worker's
output) is searched after every other test has run (``tests/logscan.py``). Under xdist it
searches its own process's lines, and the controlling process searches every process's once
all have finished (``tests/conftest.py``).

So that the search means something even when this test runs alone, it first drives the paths
that handle those things: a job with a prompt through the API and a worker, an unknown key,
a budget alert and the job's webhook (signed with the tenant's secret, made for it and
fetched) delivered to a receiver that fails with a recognisable body.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from orchestrator.api import ApiConfig
from orchestrator.events.delivery import WebhookPolicy, deliver_due
from orchestrator.ledger.service import utcnow
from orchestrator.notify import ChannelFactory, deliver_pending
from orchestrator.notify.settings import SmtpSettings
from orchestrator.simulator import RunningSimulator
from tests.logscan import FORBIDDEN, REPLY_CANARY, log_dir, scan_all_logs

from .api_fixture import Api, start_api, video
from .e2e_support import E2E_CATALOGUE, rig_for


class FailingReceiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = f"upstream says no: {REPLY_CANARY}".encode()
        self.send_response(500)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def api(db: Engine, database_url: str, redis_url: str, e2e_sim: RunningSimulator,
        tmp_path: Path) -> Iterator[Api]:
    """The API and rig, with the local receiver allowed as an egress target on purpose."""
    with rig_for(E2E_CATALOGUE, db, database_url, redis_url, e2e_sim, tmp_path,
                 egress_allow="127.0.0.1") as rig:
        rig.env["ORCH_EGRESS_ALLOW"] = "127.0.0.1"
        a = start_api(rig, ApiConfig(key_cache_s=0))
        try:
            yield a
        finally:
            a.close()


@pytest.fixture()
def receiver() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FailingReceiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    server.server_close()


def drive_the_sensitive_paths(api: Api, receiver: str) -> None:
    admin = api.admin()
    put = admin.put("/v1/budgets", json={
        "scope": "tenant:acme", "period": "month", "limit_usd": 1.0,
        "alert_thresholds": [0.01],
        "channels": [{"type": "webhook", "url": receiver, "secret": "s3cret-value-0123456789"}]})
    assert put.status_code == 200, put.text
    api.rig.start_worker()
    tenant = api.tenant("acme")
    r = tenant.post("/v1/jobs", json=video(webhook_url=receiver),
                    headers={"Idempotency-Key": str(uuid.uuid4())})
    assert r.status_code == 202, r.text
    job_id = uuid.UUID(r.json()["id"])
    secret = tenant.get("/v1/webhooks/secret").json()["secret"]
    assert FORBIDDEN["channel secret"].search(secret), "the scan would miss this secret"
    api.rig.wait_final([job_id])
    assert api.client("orch_0badc0de_" + "x" * 40).get("/v1/jobs").status_code == 401
    c = api.rig.container
    with ChannelFactory(smtp=SmtpSettings(), policy=c.egress) as factory:
        report = deliver_pending(c.engine, factory, utcnow(), secrets=c.secrets)
    assert report.outcomes, "the charge crossed a threshold: an alert was due"
    with httpx.Client() as client:
        sent = deliver_due(c.engine, c.egress, c.secrets, client, WebhookPolicy(), utcnow())
    assert sent.retrying == 1, sent  # signed, sent, answered 500 with the canary


@pytest.mark.log_scan
def test_no_key_prompt_secret_password_or_reply_body_in_any_log_line(
    api: Api, receiver: str,
) -> None:
    drive_the_sensitive_paths(api, receiver)
    where = log_dir()
    assert where is not None, "the session keeps no logs (tests/conftest.py)"
    lines, found = scan_all_logs(where)
    assert lines > 20, f"too few log lines to mean anything: {lines}"
    assert not found, "\n".join(f"{name}: {what}: {line}" for name, what, line in found[:20])
