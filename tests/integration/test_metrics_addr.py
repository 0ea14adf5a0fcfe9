"""``ORCH_METRICS_ADDR``: ``orchestrator api`` serves Prometheus ``/metrics`` on that address
(a port of its own, e.g. one only the scraper's network reaches) and no longer on the API's
port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from orchestrator.embedded._ports import free_port

from .e2e_support import ROOT
from .host_support import listening


@contextmanager
def api_process(env: dict[str, str], port: int, log: Path | None = None
                ) -> Iterator[subprocess.Popen[bytes]]:
    """``orchestrator api`` on ``port`` until it answers /healthz (its output to ``log``);
    stopped with SIGTERM afterwards if it still runs (SIGKILL after 15 s)."""
    with (log.open("wb") if log is not None else open(os.devnull, "wb")) as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "api", "--port", str(port)],
            cwd=ROOT, env=env, start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"the API exited with {proc.returncode}"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the API did not answer"
            time.sleep(0.1)  # polling interval of a condition wait
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_metrics_move_to_their_own_address(database_url: str, redis_url: str) -> None:
    port, metrics_port = free_port(), free_port()
    env = {**os.environ, "ORCH_DATABASE_URL": database_url, "ORCH_REDIS_URL": redis_url,
           "ORCH_METRICS_ADDR": f"127.0.0.1:{metrics_port}", "ORCH_LOG_LEVEL": "WARNING"}
    with api_process(env, port) as proc:
        assert httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).status_code == 404
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
        scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
        assert scraped.status_code == 200
        assert scraped.headers["content-type"].startswith("text/plain")
        assert listening(proc.pid) == {("127.0.0.1", port), ("127.0.0.1", metrics_port)}
        openapi = httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=5).json()
        assert "/metrics" not in openapi["paths"]


def test_without_it_metrics_stay_on_the_api_port(database_url: str, redis_url: str) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "ORCH_METRICS_ADDR"}
    env.update(ORCH_DATABASE_URL=database_url, ORCH_REDIS_URL=redis_url,
               ORCH_LOG_LEVEL="WARNING")
    with api_process(env, port) as proc:
        scraped = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert scraped.status_code == 200
        assert scraped.headers["content-type"].startswith("text/plain")
        assert listening(proc.pid) == {("127.0.0.1", port)}
