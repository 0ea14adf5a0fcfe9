"""A whole orchestrator stack for benchmarks: embedded (or ORCH_TEST_*) PostgreSQL and Redis,
a scratch database, the simulator in a thread, one real Celery worker process, and a
Submitter in this process that enqueues through the same Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis
import yaml
from celery import Celery
from sqlalchemy import text

from orchestrator.bootstrap import Container
from orchestrator.domain.catalogue import parse_catalogue
from orchestrator.embedded.scratch import scratch_database, server_urls
from orchestrator.ledger.budgets import set_budget
from orchestrator.settings import Settings
from orchestrator.simulator import start_in_thread
from workers.broker import producer_app
from workers.enqueue import CeleryEnqueue

ROOT = Path(__file__).resolve().parents[1]
TENANT = "bench"


@dataclass
class Stack:
    container: Container
    broker: Celery
    redis: redis.Redis
    sim_url: str
    worker: subprocess.Popen[bytes]

    def control(self, backend: str, **knobs: Any) -> None:
        httpx.post(f"{self.sim_url}/_control/{backend}", json=knobs).raise_for_status()

    def count_final(self, since: datetime) -> int:
        with self.container.engine.connect() as conn:
            return int(conn.execute(text(
                "SELECT count(*) FROM jobs WHERE created_at >= :s "
                "AND status IN ('succeeded', 'failed', 'cancelled')"), {"s": since}).scalar_one())

    def count_owed(self) -> int:
        """Jobs still owed work (queued or running): a count over the partial index of live
        jobs, so polling it costs the database little while the system is measured."""
        with self.container.engine.connect() as conn:
            return int(conn.execute(text(
                "SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')")).scalar_one())

    def worker_cpu_s(self) -> float:
        """User + system CPU seconds of the worker process (thread pool: one process)."""
        return cpu_seconds(self.worker.pid)

    def worker_rss_mb(self) -> float:
        """Resident memory of the worker process and its children (the pool)."""
        total = 0
        for pid in [self.worker.pid, *children(self.worker.pid)]:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except OSError:
                continue
        return total / 1024

    def ready(self, timeout: float = 60.0) -> None:
        key = f"bench:ready:{uuid.uuid4().hex}"
        self.broker.send_task("orchestrator.noop", (key,), queue="jobs.normal")
        deadline = time.monotonic() + timeout
        while not self.redis.get(key):
            if self.worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the worker did not start")
            time.sleep(0.05)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def cpu_seconds(*pids: int) -> float:
    """User + system CPU seconds of these processes together."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The pids of ``pid``'s child processes."""
    try:
        out = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [int(p) for p in out]


@contextmanager
def stack(catalogue: dict[str, Any], *, env: dict[str, str] | None = None,
          concurrency: int = 8, overrides: dict[str, Any] | None = None) -> Iterator[Stack]:
    """``env``: the worker's extra environment; ``overrides``: this process's extra Settings
    (its Submitter's)."""
    with ExitStack() as es:
        server, redis_url = es.enter_context(server_urls())
        db_url = es.enter_context(scratch_database(server))
        tmp = Path(es.enter_context(tempfile.TemporaryDirectory(prefix="orch-bench-")))
        sim = start_in_thread(parse_catalogue(catalogue,
                                              env={"ORCH_SIMULATOR_URL": "http://127.0.0.1:1"}))
        es.callback(sim.stop)
        os.environ["ORCH_SIMULATOR_URL"] = sim.url
        cat_file = tmp / "backends.yaml"
        cat_file.write_text(yaml.safe_dump(catalogue))
        r = redis.Redis.from_url(redis_url)
        r.flushdb()
        worker_env = {**os.environ, "ORCH_DATABASE_URL": db_url, "ORCH_REDIS_URL": redis_url,
                      "ORCH_BACKENDS_FILE": str(cat_file), "ORCH_SIMULATOR_URL": sim.url,
                      "ORCH_DB_POOL_SIZE": str(concurrency + 4), **(env or {})}
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "--pool",
             "threads", "-c", str(concurrency), "--without-gossip", "--without-mingle",
             "--without-heartbeat", "-Q", "jobs.high,jobs.normal,jobs.low,maintenance",
             "--loglevel", "ERROR"],
            cwd=ROOT, env=worker_env, start_new_session=True,
        )
        es.callback(_kill, worker)
        settings = Settings(database_url=db_url, redis_url=redis_url, backends_file=cat_file,
                            simulator_url=sim.url, db_pool_size=20, **(overrides or {}))
        broker = producer_app("bench-producer", redis_url)  # the API's producer, as in up
        container = Container(settings, enqueue=CeleryEnqueue(broker))
        es.callback(container.engine.dispose)
        with container.engine.begin() as conn:
            set_budget(conn, scope=f"tenant:{TENANT}", period="month", limit_micros=10**15,
                       now=datetime.now(UTC))
        s = Stack(container, broker, r, sim.url, worker)
        s.ready()
        yield s
