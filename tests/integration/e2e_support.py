"""End-to-end rig: the simulator over real HTTP, real Celery worker processes on real Redis,
real PostgreSQL. The test process submits through the Submitter (the API's use case)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml
from pydantic import SecretStr
from sqlalchemy import Engine, text

from orchestrator.backends import make_adapter
from orchestrator.backends.base import BackendAdapter
from orchestrator.backends.transport import Http11Transport
from orchestrator.bootstrap import Container
from orchestrator.domain.catalogue import parse_catalogue
from orchestrator.domain.jobs import JobSpec
from orchestrator.domain.polling import PollPolicy
from orchestrator.ledger.audit import audit
from orchestrator.ledger.budgets import set_budget
from orchestrator.ledger.service import utcnow
from orchestrator.secrets import new_key
from orchestrator.service.runner import JobRunner
from orchestrator.settings import Settings
from orchestrator.simulator import RunningSimulator, start_in_thread
from orchestrator.store import jobs as repo
from tests import conditions
from tests.logscan import worker_log
from workers.broker import producer_app
from workers.enqueue import CeleryEnqueue

ROOT = Path(__file__).resolve().parents[2]

E2E_CATALOGUE: dict[str, Any] = {
    "defaults": {"timeouts": {"connect_s": 2.0, "read_s": 5.0, "start_to_close_s": 120},
                 "idempotency": "completed"},
    "backends": [
        {"name": "vid-cheap", "protocol": "predictions", "kinds": ["video"], "tier": "draft",
         "base_url": "${ORCH_SIMULATOR_URL}/vid-cheap",
         "price": {"model": "per_second", "usd_per_second": 0.03,
                   "resolution_multipliers": {"480p": 1.0, "720p": 1.5}}},
        {"name": "vid-mid", "protocol": "predictions", "kinds": ["video"], "tier": "standard",
         "base_url": "${ORCH_SIMULATOR_URL}/vid-mid",
         "price": {"model": "per_second", "usd_per_second": 0.07,
                   "resolution_multipliers": {"480p": 1.0, "720p": 1.5}}},
        {"name": "txt-one", "protocol": "openai", "kinds": ["text"], "tier": "standard",
         "base_url": "${ORCH_SIMULATOR_URL}/txt-one",
         "price": {"model": "per_token", "usd_per_1k_input": 0.5, "usd_per_1k_output": 1.5}},
    ],
}


@dataclass
class Rig:
    sim_url: str
    env: dict[str, str]
    engine: Engine
    redis_url: str
    container: Container
    http: httpx.Client
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    secret_key: str = ""  # ORCH_SECRET_KEY of this process's container and of the workers

    # -- simulator --------------------------------------------------------------------------
    def control(self, backend: str, **knobs: Any) -> None:
        self.http.post(f"{self.sim_url}/_control/{backend}", json=knobs).raise_for_status()

    def provider(self, backend: str) -> dict[str, Any]:
        """The simulated provider's own view: knobs, counters, and its bills."""
        r = self.http.get(f"{self.sim_url}/_control/{backend}")
        r.raise_for_status()
        state: dict[str, Any] = r.json()
        return state

    def counters(self, backend: str) -> dict[str, int]:
        counters: dict[str, int] = self.provider(backend)["counters"]
        return counters

    # -- jobs and the ledger ------------------------------------------------------------------
    def submit(self, spec: JobSpec, tenant: str = "acme") -> uuid.UUID:
        """Admit a job as the API does (the Submitter); it must be new."""
        job, created = self.container.submitter.submit(tenant, spec)
        assert created
        return job.id

    def budget(self, limit_micros: int, tenant: str = "acme") -> None:
        """A monthly budget of ``limit_micros`` for ``tenant``."""
        with self.engine.begin() as conn:
            set_budget(conn, scope=f"tenant:{tenant}", period="month",
                       limit_micros=limit_micros, now=datetime.now(UTC))

    def ledger(self) -> tuple[int, int]:
        """(committed, held) over every budget period; the audit must be clean."""
        with self.engine.connect() as conn:
            row = conn.execute(text(
                "SELECT COALESCE(SUM(committed_micros), 0) c, COALESCE(SUM(held_micros), 0) h "
                "FROM budget_periods")).one()
            assert audit(conn) == []
        return int(row.c), int(row.h)

    # -- workers ----------------------------------------------------------------------------
    def start_worker(self, concurrency: int = 8,
                     env_extra: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        # its log lines (at production's level) go where the session's log scan reads them
        out = worker_log("worker")
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker",
                 "--pool", "threads", "-c", str(concurrency), "--without-gossip",
                 "--without-mingle", "--without-heartbeat", "-Q",
                 "jobs.high,jobs.normal,jobs.low,maintenance", "--loglevel", "INFO"],
                cwd=ROOT, env={**self.env, **(env_extra or {})}, start_new_session=True,
                stdout=out, stderr=subprocess.STDOUT if out else None,
            )
        finally:
            if out is not None:
                out.close()  # the child has its own
        self.workers.append(proc)
        return proc

    def wait_worker_ready(self, timeout: float = 60.0) -> None:
        """Until a started worker consumes: a no-op task's counter is the sign (a job whose
        clock matters, such as a short deadline, must not count the worker's start-up)."""
        key = f"e2e:ready:{uuid.uuid4().hex}"
        enqueue = self.container.enqueue
        assert isinstance(enqueue, CeleryEnqueue)
        enqueue.app.send_task("orchestrator.noop", (key,), queue="jobs.normal")
        r = redis.Redis.from_url(self.redis_url)
        self.wait_for("a worker to consume", lambda: bool(r.get(key)), timeout)

    def kill_workers(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        self.workers.clear()

    # -- jobs -------------------------------------------------------------------------------
    def job(self, job_id: uuid.UUID) -> repo.JobRow:
        with self.engine.connect() as conn:
            job = repo.get_job(conn, job_id)
        assert job is not None
        return job

    def attempts(self, job_id: uuid.UUID) -> list[repo.AttemptRow]:
        with self.engine.connect() as conn:
            return repo.attempts(conn, job_id)

    def wait_for(self, what: str, predicate: Callable[[], bool], timeout: float = 60.0) -> None:
        """``tests.conditions.wait_for``, failing at once when a worker has exited."""
        def holds() -> bool:
            if predicate():
                return True
            for proc in self.workers:
                assert proc.poll() is None, f"worker exited with {proc.returncode}"
            return False

        conditions.wait_for(what, holds, timeout, interval=0.1)

    def wait_final(self, job_ids: list[uuid.UUID], timeout: float = 60.0) -> list[repo.JobRow]:
        def all_final() -> bool:
            with self.engine.connect() as conn:
                n = conn.execute(
                    text("SELECT count(*) FROM jobs WHERE id = ANY(:ids) "
                         "AND status IN ('succeeded', 'failed', 'cancelled')"),
                    {"ids": job_ids},
                ).scalar_one()
            return int(n) == len(job_ids)

        self.wait_for(f"{len(job_ids)} jobs to finish", all_final, timeout)
        return [self.job(j) for j in job_ids]


def run_chain(runner: JobRunner, job_id: uuid.UUID, token: uuid.UUID,
              timeout: float = 30.0) -> None:
    """Run a job's chain to its end in this process, as the worker's tasks would (a step,
    then the next after the delay the step asked for)."""
    deadline = time.monotonic() + timeout
    while not (nxt := runner.advance(job_id, token)).done:
        assert time.monotonic() < deadline, "the chain did not end"
        assert nxt.poll_in_s is not None
        time.sleep(nxt.poll_in_s)  # the countdown the chain asked for, as Celery would


@contextmanager
def simulator_for(catalogue: dict[str, Any]) -> Iterator[RunningSimulator]:
    """The simulator serving ``catalogue``'s backends, in a thread of this process."""
    running = start_in_thread(parse_catalogue(catalogue,
                                              env={"ORCH_SIMULATOR_URL": "http://127.0.0.1:1"}))
    try:
        yield running
    finally:
        running.stop()


def simulator_fixture(catalogue: dict[str, Any]) -> Any:
    """A module's ``sim`` fixture: the simulator of ``catalogue``, once for the module
    (``sim = simulator_fixture(CATALOGUE)``)."""

    @pytest.fixture(scope="module", name="sim")
    def sim() -> Iterator[RunningSimulator]:
        with simulator_for(catalogue) as running:
            yield running

    return sim


def budgeted_rig_fixture(catalogue: dict[str, Any], tenant: str,
                         budget_micros: int = 100_000_000) -> Any:
    """A module's ``rig`` fixture over its ``sim``: ``tenant`` has a budget of
    ``budget_micros`` (``rig = budgeted_rig_fixture(CATALOGUE, TENANT)``)."""

    @pytest.fixture(name="rig")
    def rig(db: Engine, database_url: str, redis_url: str, sim: RunningSimulator,
            tmp_path: Path) -> Iterator[Rig]:
        with rig_for(catalogue, db, database_url, redis_url, sim, tmp_path) as r:
            r.budget(budget_micros, tenant)
            yield r

    return rig


@contextmanager
def runner_with_backend_at(rig: Rig, backend: str, url: str) -> Iterator[JobRunner]:
    """A JobRunner of ``rig``'s container whose adapter of ``backend`` calls ``url`` (a fake
    provider) over the real wire; the others as catalogued."""
    c = rig.container
    s = c.settings
    transport = Http11Transport()

    def adapter(name: str) -> BackendAdapter:
        spec = c.catalogue().get(name)
        if name == backend:
            spec = spec.model_copy(update={"base_url": url})
        return make_adapter(spec, transport)

    try:
        yield JobRunner(c.engine, c.ledger, c.catalogue, c.health, adapter, utcnow,
                        PollPolicy(s.poll_min_s, s.poll_max_s, s.chain_grace_s))
    finally:
        transport.close()


@pytest.fixture(scope="session")
def e2e_sim() -> Iterator[RunningSimulator]:
    with simulator_for(E2E_CATALOGUE) as running:
        yield running


@pytest.fixture()
def rig(db: Engine, database_url: str, redis_url: str, e2e_sim: RunningSimulator,
        tmp_path: Path) -> Iterator[Rig]:
    with rig_for(E2E_CATALOGUE, db, database_url, redis_url, e2e_sim, tmp_path) as r:
        yield r


@contextmanager
def rig_for(catalogue: dict[str, Any], db: Engine, database_url: str, redis_url: str,
            sim: RunningSimulator, tmp_path: Path, **settings: Any) -> Iterator[Rig]:
    """A rig whose workers read ``catalogue`` (the simulator ``sim`` serves its backends);
    ``settings`` override the rig's Settings of this process."""
    redis.Redis.from_url(redis_url).flushdb()
    secret_key = new_key()
    catalogue_file = tmp_path / "backends.yaml"
    catalogue_file.write_text(yaml.safe_dump(catalogue))
    env = {
        **os.environ,
        "ORCH_DATABASE_URL": database_url,
        "ORCH_REDIS_URL": redis_url,
        "ORCH_BACKENDS_FILE": str(catalogue_file),
        "ORCH_SIMULATOR_URL": sim.url,
        "ORCH_POLL_MIN_S": "0.2",
        "ORCH_POLL_MAX_S": "0.5",
        "ORCH_CHAIN_GRACE_S": "3",
        "ORCH_BREAKER_COOLDOWN_S": "2",
        "ORCH_DATA_DIR": str(tmp_path / "data"),
        "ORCH_SECRET_KEY": secret_key,
    }
    config = Settings(database_url=database_url, redis_url=redis_url,
                      backends_file=catalogue_file, simulator_url=sim.url,
                      data_dir=tmp_path / "data", secret_key=SecretStr(secret_key),
                      **{"poll_min_s": 0.2, "poll_max_s": 0.5, "chain_grace_s": 3,
                         "breaker_cooldown_s": 2, **settings})
    old = os.environ.get("ORCH_SIMULATOR_URL")
    os.environ["ORCH_SIMULATOR_URL"] = sim.url  # for the catalogue loaded in this process
    broker = producer_app("e2e-producer", redis_url)
    container = Container(config, enqueue=CeleryEnqueue(broker))
    with httpx.Client(timeout=10.0) as http:
        r = Rig(sim.url, env, db, redis_url, container, http, secret_key=secret_key)
        http.post(f"{sim.url}/_control/_reset").raise_for_status()
        try:
            yield r
        finally:
            r.kill_workers()
            container.engine.dispose()
            if old is None:
                os.environ.pop("ORCH_SIMULATOR_URL", None)
            else:
                os.environ["ORCH_SIMULATOR_URL"] = old
