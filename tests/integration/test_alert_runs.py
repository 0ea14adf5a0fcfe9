"""Alert delivery runs next to jobs, in a real worker process: channels that never answer
hold at most one of the worker's threads, never the ones a job's steps need."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from orchestrator.api import ApiConfig
from orchestrator.simulator import RunningSimulator
from workers.enqueue import CeleryEnqueue

from .api_fixture import Api, start_api, video
from .e2e_support import E2E_CATALOGUE, rig_for
from .raw_receiver import RawReceiver, Request
from .test_egress_security import LIMIT_USD, spend_it_all

ALERTS = 400  # 8 runs' batches of 50


@pytest.fixture(name="api")
def api_fixture(db: Engine, database_url: str, redis_url: str, e2e_sim: RunningSimulator,
                tmp_path: Path) -> Iterator[Api]:
    with rig_for(E2E_CATALOGUE, db, database_url, redis_url, e2e_sim, tmp_path,
                 egress_allow="127.0.0.1/32") as rig:
        rig.env["ORCH_EGRESS_ALLOW"] = "127.0.0.1/32"  # the worker's, for the receiver
        api = start_api(rig, ApiConfig(key_cache_s=0))
        try:
            yield api
        finally:
            api.close()


def test_channels_that_never_answer_do_not_take_the_threads_jobs_need(api: Api) -> None:
    """400 alerts due to a webhook channel that never answers, and 8 delivery runs sent at
    once (beat's ticks piling up): each run that got going would hold its worker thread for
    7 of the channel's 10 s timeouts (50 alerts, 8 sending threads). A job must not wait
    for them."""
    rig = api.rig

    def silent(sock: socket.socket, _: Request) -> None:
        receiver.stop.wait(120)

    receiver = RawReceiver(silent).start()
    try:
        r = api.admin().put("/v1/budgets", json={
            "scope": "tenant:globex", "period": "month", "limit_usd": LIMIT_USD,
            "alert_thresholds": [1.0],
            "channels": [{"type": "webhook", "url": f"{receiver.url}/alerts",
                          "secret": "s" * 32}]})
        assert r.status_code == 200, r.text
        spend_it_all(rig, "tenant:globex")  # the job below is acme's
        with rig.engine.begin() as conn:  # the same alert again, as refusals of 400 windows
            conn.execute(text(
                "INSERT INTO alerts (budget_id, budget_period_id, kind, threshold_bp, bucket, "
                "payload) SELECT a.budget_id, a.budget_period_id, 'refusal', a.threshold_bp, "
                "g, a.payload FROM alerts a, generate_series(1, :n) g"), {"n": ALERTS - 1})
        rig.start_worker()  # 8 threads
        rig.wait_worker_ready()
        enqueue = rig.container.enqueue
        assert isinstance(enqueue, CeleryEnqueue)
        for _ in range(8):
            enqueue.app.send_task("orchestrator.deliver_alerts", queue="maintenance")

        def claimed() -> int:
            with rig.engine.connect() as conn:
                return int(conn.execute(text(
                    "SELECT count(*) FROM alert_deliveries WHERE attempts > 0")).scalar_one())
        rig.wait_for("a run to hold a batch of silent channels", lambda: claimed() >= 50,
                     timeout=60)
        started = time.monotonic()
        r = api.tenant().post("/v1/jobs", json=video())
        assert r.status_code == 202, r.text
        rig.wait_final([uuid.UUID(r.json()["id"])], timeout=150)
        took = time.monotonic() - started
        assert took < 10, f"a 4 s video job took {took:.0f} s behind the alert runs"
        assert claimed() == 50, "runs other than the first went on in the same process"
    finally:
        receiver.close()
