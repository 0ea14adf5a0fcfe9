"""A Celery worker SIGKILLed while its webhook POST is at the receiver: the receiver has the
request, the worker never records the answer. The delivery must not be lost nor stuck: once
the dead run's claim lapses, another worker sends it again, with the same event id, and it is
recorded delivered. Real PostgreSQL, Redis, worker and beat processes, a real receiver that
verifies as the docs say (``test_webhook_receivers._docs_receiver``)."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from orchestrator.api import ApiConfig
from orchestrator.simulator import RunningSimulator
from orchestrator.store import jobs as repo

from .api_fixture import Api, start_api, video
from .e2e_support import E2E_CATALOGUE, rig_for
from .raw_receiver import RawReceiver, Request, answer
from .test_job_webhooks import FAST_RETRIES, start_beat
from .test_webhook_receivers import _docs_receiver

TIMEOUT_S = 2  # ORCH_WEBHOOK_TIMEOUT_S: the claim lapses 13 of these + 15 s after it


@pytest.fixture(name="api")
def api_fixture(db: Engine, database_url: str, redis_url: str, e2e_sim: RunningSimulator,
                tmp_path: Path) -> Iterator[Api]:
    with rig_for(E2E_CATALOGUE, db, database_url, redis_url, e2e_sim, tmp_path,
                 egress_allow="127.0.0.1/32") as rig:
        rig.env.update({**FAST_RETRIES, "ORCH_WEBHOOK_TIMEOUT_S": str(TIMEOUT_S)})
        api = start_api(rig, ApiConfig(key_cache_s=0))
        try:
            yield api
        finally:
            api.close()


def _deliveries(api: Api) -> list[dict[str, Any]]:
    r = api.tenant().get("/v1/webhooks/deliveries")
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def test_a_worker_killed_between_send_and_record_loses_nothing(
        api: Api, tmp_path: Path) -> None:
    rig = api.rig
    secret = api.tenant().get("/v1/webhooks/secret").json()["secret"]
    arrived, killed = threading.Event(), threading.Event()
    seen: set[str] = set()
    verdicts: list[int] = []

    def receive(sock: socket.socket, req: Request) -> None:
        if not arrived.is_set():  # the first one: held until its sender is dead
            arrived.set()
            killed.wait(60)
            return
        verdicts.append(_docs_receiver(secret, req, time.time(), seen))
        sock.sendall(answer(verdicts[-1]))

    receiver = RawReceiver(receive).start()
    try:
        worker = rig.start_worker()
        r = api.tenant().post("/v1/jobs", json=video(webhook_url=f"{receiver.url}/job"))
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        rig.wait_final([uuid.UUID(job_id)], timeout=60)
        start_beat(rig, tmp_path)
        assert arrived.wait(60), "the delivery was never sent"
        os.killpg(worker.pid, signal.SIGKILL)  # the POST is at the receiver, unanswered
        worker.wait(timeout=30)
        rig.workers.remove(worker)
        killed.set()
        [d] = _deliveries(api)
        assert (d["status"], d["attempts"], d["last_error"]) == ("pending", 1, None)
        rig.start_worker()
        rig.wait_for("the delivery to be sent again and recorded",
                     lambda: [x["status"] for x in _deliveries(api)] == ["delivered"],
                     timeout=13 * TIMEOUT_S + 15 + 60)
        first, *again = receiver.got()
        assert again and verdicts == [200] * len(again)
        ids = {q.headers["x-orchestrator-event-id"] for q in [first, *again]}
        assert len(ids) == 1 and seen == ids  # the same event, handled once
        [d] = _deliveries(api)
        assert d["event_type"] == "job.succeeded" and d["job_id"] == job_id
        assert d["attempts"] == 2
    finally:
        killed.set()
        receiver.close()


def test_receivers_that_never_answer_do_not_take_the_workers_jobs_need(
        api: Api, tmp_path: Path) -> None:
    """900 deliveries due to a receiver that never answers: each beat tick's run claims a
    batch and holds its worker thread for 13 POST limits. Were every free thread taken by
    such runs, a job's steps would wait for them: "a slow or dead receiver never slows a
    job" (docs/api.md)."""
    rig = api.rig

    def silent(sock: socket.socket, _: Request) -> None:
        receiver.stop.wait(120)

    receiver = RawReceiver(silent).start()
    try:
        now = datetime.now(UTC)
        with rig.engine.begin() as conn:
            for _ in range(900):  # ended jobs (nothing to run), one delivery each
                job = uuid.uuid4()
                repo.insert_job(conn, job_id=job, tenant="acme", kind="text", tier="standard",
                                spec={"kind": "text", "input": {"prompt": "x"},
                                      "webhook_url": f"{receiver.url}/hook",
                                      "webhook_events": ["job.cancelled"]},
                                route={}, estimated_cost_micros=1, deadline_at=now,
                                chain_token=uuid.uuid4(), wake_at=now)
                conn.execute(text("UPDATE jobs SET status = 'cancelled' WHERE id = :j"),
                             {"j": job})
        rig.start_worker()  # 8 threads
        start_beat(rig, tmp_path)
        rig.wait_worker_ready()

        def claimed() -> bool:
            with rig.engine.connect() as conn:
                return int(conn.execute(text(
                    "SELECT count(*) FROM webhook_deliveries WHERE attempts > 0")
                ).scalar_one()) >= 100
        rig.wait_for("a run to hold a batch of silent receivers", claimed, timeout=60)
        ticks = time.monotonic()
        while time.monotonic() - ticks < 4:  # the scenario's clock: 8 more beat ticks
            receiver.stop.wait(0.1)
        started = time.monotonic()
        r = api.tenant().post("/v1/jobs", json=video())
        assert r.status_code == 202, r.text
        rig.wait_final([uuid.UUID(r.json()["id"])], timeout=120)
        took = time.monotonic() - started
        assert took < 10, f"a 4 s video job took {took:.0f} s behind the webhook runs"
    finally:
        receiver.close()
