"""Flower for Celery itself: ``celery -A workers.celery_app flower`` as the README documents it
(127.0.0.1 and basic auth by default), and with ``--basic-auth=user:pass`` against the test
Redis and a real worker. Workers run with task events off
(``worker_send_task_events=False``); Flower switches them on remotely while it runs (its
``--enable_events`` default, re-sent every 5 s), then shows our tasks — with ids only as
arguments — behind basic auth."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.domain.jobs import JobSpec
from orchestrator.embedded._ports import free_port
from orchestrator.ledger.budgets import set_budget

from .e2e_support import ROOT, Rig
from .host_support import listening

AUTH = ("flower-user", "flower-pass")
PROMPT = "a very private storyboard about a lighthouse"


@contextmanager
def running_flower(args: list[str], env: dict[str, str], port: int,
                   stderr: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """``celery -A workers.celery_app flower <args>``, until its /healthcheck answers."""
    err = stderr.open("wb") if stderr is not None else subprocess.DEVNULL
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers.celery_app", "flower", *args],
        cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=err)

    def up() -> bool:
        assert proc.poll() is None, f"flower exited with {proc.returncode}"
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthcheck", timeout=2
                             ).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for("flower to serve", up, timeout=30)
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if stderr is not None:
            err.close()  # type: ignore[union-attr]


def wait_for(what: str, predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)  # polling interval of a condition wait


@pytest.fixture()
def flower(rig: Rig) -> Iterator[str]:
    port = free_port()
    with running_flower(["--address=127.0.0.1", f"--port={port}",
                         f"--basic-auth={AUTH[0]}:{AUTH[1]}"], rig.env, port):
        yield f"http://127.0.0.1:{port}"


def test_flower_as_documented_is_on_loopback_only_behind_basic_auth(
    database_url: str, redis_url: str, tmp_path: Path,
) -> None:
    """The README's command, nothing added (the port through FLOWER_PORT, so that tests run
    side by side): it listens on 127.0.0.1 only, and every page wants the user and the
    password generated into the data dir."""
    port = free_port()
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FLOWER_", "ORCH_FLOWER_"))}
    env.update(ORCH_DATABASE_URL=database_url, ORCH_REDIS_URL=redis_url,
               ORCH_DATA_DIR=str(data), FLOWER_PORT=str(port))
    url = f"http://127.0.0.1:{port}"
    with running_flower([], env, port, stderr=tmp_path / "flower.err") as proc:
        assert listening(proc.pid) == {("127.0.0.1", port)}
        password = (data / "flower.password").read_text().strip()
        assert stat.S_IMODE((data / "flower.password").stat().st_mode) == 0o600
        for page in ("/", "/tasks", "/api/tasks", "/api/workers"):
            assert httpx.get(f"{url}{page}", timeout=5).status_code == 401, page
            assert httpx.get(f"{url}{page}", auth=("flower", "guess"),
                             timeout=5).status_code == 401, page
        assert httpx.get(f"{url}/", auth=("flower", password), timeout=5).status_code == 200
        assert httpx.get(f"{url}/api/tasks", auth=("flower", password),
                         timeout=5).status_code == 200
    said = (tmp_path / "flower.err").read_text()
    assert str(data / "flower.password") in said and password not in said


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
