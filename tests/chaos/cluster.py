"""The system as separate processes, as production runs it: ``orchestrator api`` replicas,
Celery worker processes and beat processes, on PostgreSQL and Redis servers the tests can stop
and start again on the same port. The simulator (the fake providers) runs in the test process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import httpx
import psycopg
import redis
import yaml
from sqlalchemy import Engine

from orchestrator.embedded._ports import free_port
from orchestrator.embedded.postgres import EmbeddedPostgres
from orchestrator.embedded.redis import EmbeddedRedis
from orchestrator.ledger.budgets import set_budget
from orchestrator.secrets import new_key
from orchestrator.store.keys import create_key
from tests.integration.e2e_support import E2E_CATALOGUE
from tests.logscan import worker_log
from workers.broker import producer_app

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = "chaos_template"


def wait_for(what: str, predicate: Callable[[], bool], timeout: float,
              poll_s: float = 0.1) -> float:
    """Until ``predicate()``; returns the seconds it took (AssertionError after ``timeout``)."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll_s)  # the polling interval of a condition wait
    return time.monotonic() - started


@dataclass
class Servers:
    """PostgreSQL and Redis that a test may restart; both keep their port."""

    pg: EmbeddedPostgres
    rd: EmbeddedRedis
    database_url: str
    redis_url: str

    def fresh(self) -> Servers:
        """The same servers with a database of its own, copied from the migrated template,
        and Redis emptied: a test that failed cannot leave work behind for the next one's
        processes to pick up (a job still owed work, a breaker's strikes)."""
        name = f"chaos_{uuid.uuid4().hex[:12]}"
        _create_database(self.pg, name, template=TEMPLATE)
        with redis.Redis.from_url(self.redis_url) as r:
            r.flushall()
        return replace(self, database_url=self.pg.url(name))

    def restart_postgres(self, down_s: float, while_down: Callable[[], None] = lambda: None
                         ) -> tuple[float, float]:
        """Stop PostgreSQL, keep it down ``down_s`` (calling ``while_down`` meanwhile), start
        it on the same port; returns (monotonic time it stopped, time it answered again)."""
        return self._restart(self.pg, down_s, while_down)

    def restart_redis(self, down_s: float, while_down: Callable[[], None] = lambda: None
                      ) -> tuple[float, float]:
        return self._restart(self.rd, down_s, while_down)

    @staticmethod
    def _restart(server: EmbeddedPostgres | EmbeddedRedis, down_s: float,
                 while_down: Callable[[], None]) -> tuple[float, float]:
        port = server.port
        server.stop()
        stopped = time.monotonic()
        deadline = stopped + down_s
        while time.monotonic() < deadline:  # the outage lasts down_s: that is the scenario
            while_down()
            time.sleep(0.1)
        server.start()
        assert server.port == port, "the restarted server must keep its port"
        return stopped, time.monotonic()


def _create_database(pg: EmbeddedPostgres, name: str, template: str | None = None) -> None:
    copy = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(pg.url("postgres").replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{copy}')


@contextmanager
def servers_in(tmp: Path) -> Iterator[Servers]:
    """Embedded servers of their own (not the session's: these get restarted) and a migrated
    template database (``Servers.fresh`` copies it for each test). Redis is not durable: a
    restart loses every queued message, the hardest case."""
    from orchestrator.store.migrate import upgrade

    pg = EmbeddedPostgres(tmp / "pg", durable=False, max_connections=400)
    rd = EmbeddedRedis(tmp / "redis", durable=False)
    try:
        pg.start()
        redis_url = rd.start()
        _create_database(pg, TEMPLATE)
        template_url = pg.url(TEMPLATE)
        upgrade(template_url)  # each test's database is a copy (Servers.fresh)
        # nobody may connect to the template (CREATE DATABASE … TEMPLATE refuses while
        # anyone is): tests use Servers.fresh(), whose database_url is their own copy's
        yield Servers(pg, rd, template_url, redis_url)
    finally:
        rd.stop()
        pg.stop()


@dataclass
class Proc:
    role: str
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (a warm shutdown), SIGKILL if it is still there after ``timeout``."""
        if not self.alive():
            return
        self.kill(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)
            self.popen.wait(30)


@dataclass
class Cluster:
    servers: Servers
    sim_url: str
    tmp: Path
    engine: Engine
    procs: list[Proc] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    _n: int = 0

    def __post_init__(self) -> None:
        catalogue = self.tmp / "backends.yaml"
        catalogue.write_text(yaml.safe_dump(E2E_CATALOGUE))
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("ORCH_")},
            "ORCH_TEST_LOG_DIR": os.environ.get("ORCH_TEST_LOG_DIR", ""),
            "ORCH_DATABASE_URL": self.servers.database_url,
            "ORCH_REDIS_URL": self.servers.redis_url,
            "ORCH_BACKENDS_FILE": str(catalogue),
            "ORCH_SIMULATOR_URL": self.sim_url,
            "ORCH_DATA_DIR": str(self.tmp / "data"),
            "ORCH_SECRET_KEY": new_key(),
            "ORCH_POLL_MIN_S": "0.2",
            "ORCH_POLL_MAX_S": "0.5",
            "ORCH_CHAIN_GRACE_S": "3",
            "ORCH_START_GRACE_S": "3",
            "ORCH_BREAKER_COOLDOWN_S": "2",
            "ORCH_DB_POOL_SIZE": "8",
            "ORCH_LOG_LEVEL": "INFO",
            "PYTHONPATH": str(ROOT),
        }

    # -- processes --------------------------------------------------------------------------
    def _spawn(self, role: str, argv: list[str], port: int | None = None,
               env: dict[str, str] | None = None) -> Proc:
        self._n += 1
        name = f"chaos-{role}-{self._n}-{uuid.uuid4().hex[:6]}"  # a log file of its own
        log = self.tmp / f"{name}.log"
        out: IO[bytes] = worker_log(name) or log.open("ab")
        log = Path(out.name)
        try:
            popen = subprocess.Popen([sys.executable, *argv], cwd=ROOT,
                                     env={**self.env, **(env or {})}, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            out.close()  # the child has its own
        proc = Proc(role, name, popen, log, port)
        self.procs.append(proc)
        return proc

    def api(self, wait: bool = True) -> Proc:
        port = free_port()
        proc = self._spawn("api", ["-m", "orchestrator.cli", "api", "--host", "127.0.0.1",
                                   "--port", str(port)], port)
        if wait:
            self.wait_api(proc)
        return proc

    def wait_api(self, proc: Proc, timeout: float = 60.0) -> None:
        def up() -> bool:
            assert proc.alive(), f"{proc.name} exited with {proc.popen.returncode}"
            try:
                return httpx.get(f"{proc.url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(f"{proc.name} to answer", up, timeout, poll_s=0.2)

    def worker(self, concurrency: int = 8, wait: bool = True) -> Proc:
        self._n += 1
        hostname = f"chaos{self._n}@{uuid.uuid4().hex[:6]}"
        proc = self._spawn("worker", [
            "-m", "celery", "-A", "workers.celery_app", "worker", "--pool", "threads",
            "-c", str(concurrency), "-n", hostname, "--without-gossip", "--without-mingle",
            "--without-heartbeat", "-Q", "jobs.high,jobs.normal,jobs.low,maintenance",
            "--loglevel", "INFO"])
        proc.name = hostname
        if wait:
            self.wait_workers([proc])
        return proc

    def wait_workers(self, procs: list[Proc], timeout: float = 90.0) -> None:
        """Until every one of ``procs`` answers a broadcast ping: it consumes."""
        app = producer_app("chaos-ping", self.servers.redis_url)
        want = {p.name for p in procs}

        def answered() -> bool:
            for p in procs:
                assert p.alive(), f"worker {p.name} exited with {p.popen.returncode}"
            # a connection of its own: kombu's shared pool may hold one from before a restart
            with app.connection_for_write() as conn:
                replies = app.control.ping(timeout=1.0, connection=conn) or []
            return want <= {name for reply in replies for name in reply}

        wait_for(f"workers {sorted(want)} to consume", answered, timeout, poll_s=0.2)

    def beat(self) -> Proc:
        schedule = self.tmp / f"beat-{uuid.uuid4().hex[:6]}"
        return self._spawn("beat", ["-m", "orchestrator.cli", "beat", "--schedule",
                                    str(schedule)])

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            p.stop()

    def describe(self, lines: int = 15) -> str:
        """Each process, whether it still runs, and the last warnings and errors of its log
        (what a failed test's report shows)."""
        out = []
        for p in self.procs:
            code = p.popen.poll()
            out.append(f"{p.name}: {'running' if code is None else f'exited {code}'}")
            try:
                text = p.log.read_text(errors="replace").splitlines()
            except OSError:
                continue
            worth = [ln for ln in text if any(w in ln for w in (
                '"level": "WARNING"', '"level": "ERROR"', '"level": "CRITICAL"', "Traceback",
                "Error:", "ERROR", "CRITICAL"))]
            out += [f"    {ln[:400]}" for ln in worth[-lines:]]
        return "\n".join(out)

    # -- tenants and money ------------------------------------------------------------------
    def tenant(self, name: str, limit_usd: float | None = None,
               period: str = "total") -> str:
        """A tenant's key (and its budget, when given)."""
        with self.engine.begin() as conn:
            key = create_key(conn, name)
            if limit_usd is not None:
                set_budget(conn, scope=f"tenant:{name}", period=period,
                           limit_micros=round(limit_usd * 1_000_000), now=datetime.now(UTC))
        return key

    def simulator(self, **knobs: Any) -> None:
        """Set knobs on every simulated backend."""
        for b in E2E_CATALOGUE["backends"]:
            httpx.post(f"{self.sim_url}/_control/{b['name']}", json=knobs,
                       timeout=10).raise_for_status()

    def flush_queues(self) -> None:
        """Lose every queued job message, as a Redis that lost its data would."""
        r = redis.Redis.from_url(self.servers.redis_url)
        with r:
            r.delete("jobs.high", "jobs.normal", "jobs.low")

    def queue_lengths(self) -> int:
        r = redis.Redis.from_url(self.servers.redis_url)
        with r:
            return sum(int(r.llen(q)) for q in ("jobs.high", "jobs.normal", "jobs.low"))


def video(prompt: str = "waves at night", duration: int = 4,
          backend: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"kind": "video", "tier": "draft",
                            "input": {"prompt": prompt, "duration_s": duration,
                                      "resolution": "720p"}}
    if backend is not None:
        spec["backend"] = backend
    return spec
