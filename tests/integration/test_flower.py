"""Flower for Celery itself: ``celery -A workers.celery_app flower --basic-auth=user:pass``
against the test Redis and a real worker. Workers run with task events off
(``worker_send_task_events=False``); Flower switches them on remotely while it runs (its
``--enable_events`` default, re-sent every 5 s), then shows our tasks — with ids only as
arguments — behind basic auth."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from orchestrator.domain.jobs import JobSpec
from orchestrator.embedded._ports import free_port
from orchestrator.ledger.budgets import set_budget

from .e2e_support import ROOT, Rig

AUTH = ("flower-user", "flower-pass")
PROMPT = "a very private storyboard about a lighthouse"


@pytest.fixture()
def flower(rig: Rig) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers.celery_app", "flower",
         "--address=127.0.0.1", f"--port={port}", f"--basic-auth={AUTH[0]}:{AUTH[1]}"],
        cwd=ROOT, env=rig.env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, f"flower exited with {proc.returncode}"
        try:
            return httpx.get(f"{url}/healthcheck", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        rig.wait_for("flower to serve", up, timeout=30)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def start_worker_with_heartbeats(rig: Rig) -> None:
    """A worker as ``orchestrator worker`` runs it. (The rig's workers run without gossip and
    heartbeats; with task events off too, such a worker has no event dispatcher at all and
    answers Flower's ``enable_events`` with "event dispatcher unavailable".)"""
    rig.workers.append(subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "--pool",
         "threads", "-c", "4", "-Q", "jobs.high,jobs.normal,jobs.low,maintenance",
         "--loglevel", "WARNING"],
        cwd=ROOT, env=rig.env, start_new_session=True))


def tasks(url: str) -> dict[str, dict[str, Any]]:
    resp = httpx.get(f"{url}/api/tasks", auth=AUTH, timeout=5)
    resp.raise_for_status()
    out: dict[str, dict[str, Any]] = resp.json()
    return out


def test_flower_shows_our_tasks_with_ids_only_behind_basic_auth(rig: Rig, flower: str) -> None:
    assert httpx.get(f"{flower}/api/tasks", timeout=5).status_code == 401
    assert httpx.get(f"{flower}/api/tasks", auth=("flower-user", "wrong"),
                     timeout=5).status_code == 401
    start_worker_with_heartbeats(rig)
    broker = rig.container.enqueue.app  # type: ignore[attr-defined]

    def a_noop_seen() -> bool:  # until Flower has switched the worker's task events on
        broker.send_task("orchestrator.noop", (f"flower-test:{uuid.uuid4()}",),
                         queue="maintenance")
        return any(t["name"] == "orchestrator.noop" and t["state"] == "SUCCESS"
                   for t in tasks(flower).values())

    rig.wait_for("Flower to see a task", a_noop_seen, timeout=30)

    with rig.engine.begin() as conn:
        set_budget(conn, scope="tenant:acme", period="month", limit_micros=10_000_000,
                   now=datetime.now(UTC))
    rig.control("vid-cheap", duration_ms=200)
    spec = JobSpec.model_validate({"kind": "video", "tier": "draft", "input": {
        "prompt": PROMPT, "duration_s": 4, "resolution": "720p"}})
    job, _ = rig.container.submitter.submit("acme", spec)
    (done,) = rig.wait_final([job.id])
    assert done.status == "succeeded"

    def advances() -> list[dict[str, Any]]:
        return [t for t in tasks(flower).values()
                if t["name"] == "orchestrator.advance" and str(job.id) in (t["args"] or "")]

    rig.wait_for("Flower to show the job's steps", lambda: any(
        t["state"] == "SUCCESS" for t in advances()))
    ids = (str(job.id), str(job.chain_token), "normal")
    for t in advances():  # ids only: job, chain token, priority (the start: + first backend)
        assert t["args"] in (repr(ids), repr((*ids, False, "vid-cheap"))), t["args"]
        assert t["kwargs"] in ("{}", None)
    body = httpx.get(f"{flower}/api/tasks", auth=AUTH, timeout=5).text
    assert PROMPT not in body and "lighthouse" not in body
