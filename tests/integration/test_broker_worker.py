"""A worker on workers.broker's transport lives through a Redis restart that happens while
one of its tasks runs, whatever that task does with its message afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from celery import Celery

from orchestrator.embedded.redis import EmbeddedRedis
from tests.logscan import worker_log
from workers.broker import producer_app

ROOT = Path(__file__).resolve().parents[2]


def _until(what: str, done: Callable[[], bool], worker: subprocess.Popen[bytes], log: Path,
           timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        tail = log.read_text(errors="replace")[-3000:]
        assert worker.poll() is None, f"the worker exited ({worker.returncode}):\n{tail}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{tail}"
        time.sleep(0.05)  # polling a condition


def _send(url: str, task: str, arg: str) -> None:
    """On a connection of its own, closed after: one made before a restart may be dead."""
    sender: Celery = producer_app("broker-worker-test-sender", url)
    try:
        sender.send_task(task, args=[arg])
    finally:
        sender.close()


def test_a_task_that_rejects_after_a_redis_restart_leaves_the_worker_consuming(
        tmp_path: Path) -> None:
    """Before: the reject went to the channel the lost connection had closed, kombu raised
    AttributeError in the event loop, and the worker exited ("Unrecoverable error")."""
    server = EmbeddedRedis(tmp_path / "redis", durable=False)
    url = server.start()
    flags = tmp_path / "flags"
    flags.mkdir()
    out = worker_log("broker-worker") or (tmp_path / "worker.log").open("ab")
    log = Path(out.name)  # the session's log scan reads it too
    with out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.integration.broker_worker_app",
             "worker", "--pool", "threads", "-c", "2", "--without-gossip", "--without-mingle",
             "--without-heartbeat", "--loglevel", "INFO"],
            cwd=ROOT, env={**os.environ, "BROKER_TEST_URL": url}, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _send(url, "broker_test.reject_when_told", str(flags))
        _until("the task to start", lambda: (flags / "started").exists(), worker, log)
        server.stop()
        _until("the worker to see the connection lost",
               lambda: "Connection to broker lost" in log.read_text(errors="replace"),
               worker, log)
        assert server.start() == url, "the restarted Redis must keep its port"
        (flags / "go").touch()  # the task rejects its message now, on the closed channel
        _until("the reject", lambda: "a rejected message left to the sweeper" in
               log.read_text(errors="replace"), worker, log)
        done = tmp_path / "after"
        _send(url, "broker_test.touch", str(done))
        _until("a task sent after the restart to run", done.exists, worker, log)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(30)
        server.stop()
