"""``orchestrator up``: the whole system in one command.

Starts the embedded PostgreSQL and Redis (or uses the configured URLs), migrates, makes an
admin key and a tenant key where the data dir has none that works against the database, then
runs the API, a worker, beat and the simulator as child processes, restarting a child or an
embedded server that dies (at most 5 times a minute each, then ``up`` stops). SIGINT, SIGTERM
or SIGHUP stops every child (SIGTERM, then SIGKILL after a grace period) and then the
embedded servers.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from orchestrator.embedded import EmbeddedPostgres, EmbeddedRedis
from orchestrator.embedded._ports import port_is_free
from orchestrator.embedded.postgres import server_gid
from orchestrator.embedded.private import private_dir, read_private, write_private
from orchestrator.errors import ConfigurationError, OrchestratorError
from orchestrator.runtime.sockets import tcp_listener
from orchestrator.settings import Settings

DEMO_TENANT = "demo"
DEMO_BUDGET_MICROS = 100_000_000  # $100 a month for the demo tenant, first run only
STOP_GRACE_S = 15.0
MAX_RESTARTS_PER_MINUTE = 5


@dataclass
class Child:
    name: str
    argv: list[str]
    nice: int = 0  # added CPU niceness (background children yield the CPU to the API)
    # a child that has no address to ask writes this file (ORCH_READY_FILE) once it works
    ready_file: Path | None = None
    env: dict[str, str] = field(default_factory=dict)  # on top of the system's
    pass_fds: tuple[int, ...] = ()  # descriptors it inherits (the API's listening socket)
    proc: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)

    def start(self, env: dict[str, str], log_dir: Path) -> None:
        env = {**env, **self.env}
        if self.ready_file is not None:
            self.ready_file.unlink(missing_ok=True)
            env["ORCH_READY_FILE"] = str(self.ready_file)
        log = (log_dir / f"{self.name}.log").open("ab")
        self.proc = subprocess.Popen(
            self.argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            pass_fds=self.pass_fds, preexec_fn=_child_setup(self.nice, os.getpid()),
        )
        log.close()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def secret_key_file(data_dir: Path) -> Path:
    """The key file that encrypts secrets at rest, made once (``orchestrator.secrets``) and
    always its owner's alone: the children read it through ``ORCH_DATA_DIR`` unless
    ``ORCH_SECRET_KEY`` is set."""
    from orchestrator.secrets import ensure_key_file

    path = ensure_key_file(data_dir)
    path.chmod(0o600)
    return path


def _count_restart(restarts: list[float], name: str, see: Path) -> None:
    """Record a restart of ``name``; ConfigurationError (``up`` stops) past
    MAX_RESTARTS_PER_MINUTE, rather than restarting something that cannot stay up forever."""
    now = time.monotonic()
    restarts[:] = [t for t in restarts if now - t < 60] + [now]
    if len(restarts) > MAX_RESTARTS_PER_MINUTE:
        raise ConfigurationError(f"{name} keeps dying; see {see}")


def _working_keys(db_url: str, creds: dict[str, Any]) -> dict[str, str]:
    """The credentials file's keys that are live keys of this database (the admin key an
    admin's, the tenant key the demo tenant's), looked up without marking them used: a new
    embedded port, or the same database spelled otherwise, keeps them."""
    from orchestrator.store.engine import make_engine
    from orchestrator.store.keys import live_key

    kept: dict[str, str] = {}
    engine = make_engine(db_url, pool_size=1)
    try:
        with engine.connect() as conn:
            admin, tenant = creds.get("admin_key"), creds.get("tenant_key")
            if isinstance(admin, str) and (rec := live_key(conn, admin)) and rec.admin:
                kept["admin_key"] = admin
            if isinstance(tenant, str) and (rec := live_key(conn, tenant)) \
                    and rec.tenant == DEMO_TENANT:
                kept["tenant_key"] = tenant
    finally:
        engine.dispose()
    return kept


def listening_socket(port: int, backlog: int, host: str = "127.0.0.1") -> socket.socket:
    """The API's port, bound once here and inherited by every API process: the kernel hands
    each new connection to one of them, and one that restarts leaves the port open to the
    others (connections wait in the backlog meanwhile)."""
    try:
        sock = tcp_listener(host, port)
    except OSError:
        raise ConfigurationError(f"port {port} is already in use (choose another with --port)",
                                 setting="--port") from None
    sock.listen(backlog)
    return sock


def lock_data_dir(data_dir: Path) -> int | None:
    """Take ``data_dir/up.lock`` for this process (an exclusive ``flock``, let go when the
    process ends however it ends: a SIGKILLed ``up`` leaves no stale lock), its pid written
    in it; a ConfigurationError naming the holder if another ``up`` has it. A second ``up``
    on a data dir otherwise shared the first's embedded servers, wrote its own API URL into
    the credentials and, when stopped, stopped the servers under the first. The descriptor
    is not inherited by the children (PEP 446). None where there is no ``flock`` (Windows)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not a POSIX system
        return None
    path = data_dir / "up.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise ConfigurationError(
            f"another `orchestrator up` is running on {data_dir} (pid {holder}); stop it "
            "first, or give this one another --data-dir", setting="--data-dir") from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _child_setup(increment: int, parent: int) -> Callable[[], None]:
    """Run in the child before exec (so every thread of it inherits both): its niceness, and,
    on Linux, SIGTERM when ``up`` dies. The children run in sessions of their own, so no
    terminal signal reaches them; without this a SIGKILLed ``up`` left them running, the
    API processes holding the port the next ``up`` asks for."""

    def setup() -> None:
        if increment:
            os.nice(increment)
        if sys.platform == "linux":
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != parent:  # up died before the line above took effect
                os._exit(1)

    return setup


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator.cli", *args]


class StartInterrupted(OrchestratorError):
    """SIGTERM (or SIGHUP) came before every process was ready."""

    code = "start_interrupted"


class System:
    def __init__(self, settings: Settings, data_dir: Path, port: int, simulator: bool,
                 echo: Callable[[str], None]) -> None:
        self.settings = settings
        self.data_dir = data_dir.absolute()
        self.port = port
        self.simulator = simulator
        self.echo = echo
        self.stoppers: list[Callable[[], None]] = []
        self.children: list[Child] = []
        # the embedded servers up started: name, "is it running?", restart
        self.servers: list[tuple[str, Callable[[], bool], Callable[[], object]]] = []
        self.stop_event = threading.Event()
        self._lock: int | None = None  # the data dir's lock, held until this process ends

    # -- start -------------------------------------------------------------------------------
    def check_config(self) -> None:
        """What the API, worker and beat check at their start (the catalogue, as they expand
        it, and ``ORCH_SMTP_*``), checked here first: one line naming the file, backend and
        field, and nothing started, rather than a child dying with it in its log."""
        from orchestrator.domain.catalogue import load_catalogue
        from orchestrator.notify.settings import load_smtp_settings

        load_catalogue(self.settings.backends_path(),
                       {**os.environ, "ORCH_SIMULATOR_URL": self.settings.simulator_url})
        load_smtp_settings()

    @property
    def started(self) -> bool:
        """Whether anything was started (that ``stop`` then stops)."""
        return bool(self.stoppers or self.children)

    def check_ports(self) -> None:
        if not port_is_free(self.port):
            raise ConfigurationError(f"port {self.port} is already in use (choose another "
                                     "with --port)", setting="--port")
        sim = urlsplit(self.settings.simulator_url)
        if self.simulator and not port_is_free(sim.port or 80):
            raise ConfigurationError(
                f"the simulator's port {sim.port} (ORCH_SIMULATOR_URL) is already in use; set "
                "ORCH_SIMULATOR_URL to a free port or pass --no-simulator",
                setting="ORCH_SIMULATOR_URL")

    def start(self) -> dict[str, str]:
        self.check_config()
        if self.data_dir.exists() and not self.data_dir.is_dir():  # not "File exists"
            raise ConfigurationError(f"the data dir {self.data_dir} is not a directory "
                                     "(--data-dir)", setting="--data-dir")
        if self.data_dir.is_dir():
            # before the ports: a second `up` on this data dir is told so, not that a port
            # it would have shared with the first is taken
            self._lock = lock_data_dir(self.data_dir)
        self.check_ports()  # and before a new data dir is made: a refusal leaves nothing
        private_dir(self.data_dir, traverse_gid=server_gid())
        if self._lock is None:
            self._lock = lock_data_dir(self.data_dir)
        db_url = self.settings.database_url
        if not db_url:
            pg = EmbeddedPostgres(self.data_dir / "postgres")
            self.stoppers.append(pg.stop)  # before start: a Ctrl-C while it starts stops it
            db_url = pg.start()
            self.servers.append(("PostgreSQL", pg.running, pg.restart))
        self._go_on()
        redis_url = self.settings.redis_url
        if not redis_url:
            rd = EmbeddedRedis(self.data_dir)
            self.stoppers.append(rd.stop)
            redis_url = rd.start()
            self.servers.append(("Redis", rd.running, rd.restart))
        self._go_on()
        from orchestrator.store.migrate import upgrade

        upgrade(db_url)
        self._go_on()
        creds = self._credentials(db_url, redis_url)
        env = {**os.environ, "ORCH_DATABASE_URL": db_url, "ORCH_REDIS_URL": redis_url,
               "ORCH_SIMULATOR_URL": self.settings.simulator_url,
               "ORCH_DATA_DIR": str(self.data_dir)}
        secret_key_file(self.data_dir)
        log_dir = self.data_dir / "logs"
        private_dir(log_dir)
        background = self.settings.up_background_nice
        run_dir = self.data_dir / "run"
        private_dir(run_dir)
        # a worker's INFO line per task would bury the rest, unless ORCH_LOG_LEVEL asks for it
        quiet = [] if "log_level" in self.settings.model_fields_set else ["--loglevel",
                                                                           "WARNING"]
        self.children = [
            *self._api_children(),
            Child("worker", _command("worker", *quiet), nice=background,
                  ready_file=run_dir / "worker.ready"),
            Child("beat", _command("beat", *quiet, "--schedule",
                                   str(self.data_dir / "beat-schedule")), nice=background,
                  ready_file=run_dir / "beat.ready"),
        ]
        if self.simulator:
            self.children.append(Child("simulator", _command("simulator")))
        self._go_on()
        for child in self.children:
            child.start(env, log_dir)
        self._env, self._log_dir = env, log_dir
        self._wait_ready(creds["api_url"])
        return creds

    def _go_on(self) -> None:
        """Between two steps of the start: StartInterrupted if a stop was asked for meanwhile
        (SIGTERM, SIGHUP, or a Ctrl-C whose KeyboardInterrupt Python dropped)."""
        if self.stop_event.is_set():
            raise StartInterrupted("stopped while starting")

    def _api_children(self) -> list[Child]:
        """``ORCH_UP_API_PROCESSES`` API processes on one listening socket. With more than
        one, each serves ``/metrics`` on its own port when ``ORCH_METRICS_ADDR`` is set
        (``host:port``, ``port+1``, …), as each worker process does.

        Why two by default: one process runs Python on one core at a time, and under load
        requests queue for it. Measured on the 2-core development machine, Locust soak of
        500 users for 4 min (``loadtests/run.py``), about 180 requests/s either way: p95
        160 ms with one process, 72 ms with two."""
        from orchestrator.api.config import ApiConfig
        from orchestrator.settings import split_address

        listener = listening_socket(self.port, ApiConfig.from_settings(self.settings).backlog)
        self.stoppers.append(listener.close)
        fd = listener.fileno()
        n = self.settings.up_api_processes
        if n == 1:
            return [Child("api", _command("api", "--fd", str(fd)), pass_fds=(fd,))]
        metrics = split_address(self.settings.metrics_addr) if self.settings.metrics_addr \
            else None
        return [Child(f"api-{i + 1}", _command("api", "--fd", str(fd)), pass_fds=(fd,),
                      env={"ORCH_METRICS_ADDR": f"{metrics[0]}:{metrics[1] + i}"}
                      if metrics else {})
                for i in range(n)]

    def _credentials(self, db_url: str, redis_url: str) -> dict[str, str]:
        """Keys are made once per data dir and kept in credentials.json: always 0600, written
        whole through a 0600 temporary file (one that existed with another mode ends 0600)."""
        path = self.data_dir / "credentials.json"
        stored = read_private(path)
        old = json.loads(stored) if stored else {}
        # decided by the database, not by its URL's spelling: each key that no longer works
        # (none yet, a database of its own) is made anew, and only that one
        working = _working_keys(db_url, old)
        if len(working) < 2:
            old = {**old, **self._first_run(db_url, working)}
        creds = {**old, "api_url": f"http://127.0.0.1:{self.port}", "database_url": db_url,
                 "redis_url": redis_url, "simulator_url": self.settings.simulator_url}
        write_private(path, json.dumps(creds, indent=2))
        return creds

    @staticmethod
    def _first_run(db_url: str, kept: dict[str, str]) -> dict[str, str]:
        """A new key for each of the admin and the demo tenant that ``kept`` lacks; and the
        demo tenant's budget, unless it has one (a user's limit, thresholds and channels are
        never reset)."""
        from orchestrator.ledger.budgets import list_budgets, set_budget
        from orchestrator.store.engine import make_engine
        from orchestrator.store.keys import create_key

        scope, now = f"tenant:{DEMO_TENANT}", datetime.now(UTC)
        engine = make_engine(db_url, pool_size=1)
        try:
            with engine.begin() as conn:
                admin = kept.get("admin_key") or create_key(conn, "admin", admin=True)
                tenant = kept.get("tenant_key") or create_key(conn, DEMO_TENANT, admin=False)
                if not any(b.period == "month"
                           for b in list_budgets(conn, now=now, scopes=(scope,))):
                    set_budget(conn, scope=scope, period="month",
                               limit_micros=DEMO_BUDGET_MICROS, now=now)
        finally:
            engine.dispose()
        return {"admin_key": admin, "tenant_key": tenant, "tenant": DEMO_TENANT}

    def _wait_ready(self, api_url: str, timeout: float = 60.0) -> None:
        """Until every child works: the API's /readyz and the simulator's /healthz answer,
        the worker consumes and beat schedules (their ready files). Only then does ``up``
        print its keys, so a job submitted at once is picked up at once."""
        checks: dict[str, Callable[[], bool]] = {"api": lambda: _answers(f"{api_url}/readyz")}
        if self.simulator:
            sim_url = self.settings.simulator_url.rstrip("/")
            checks["simulator"] = lambda: _answers(f"{sim_url}/healthz")
        for child in self.children:
            if child.ready_file is not None:
                checks[child.name] = child.ready_file.exists
        deadline = time.monotonic() + timeout
        while True:
            checks = {name: ready for name, ready in checks.items() if not ready()}
            if not checks:
                return
            for child in self.children:
                if child.proc is not None and child.proc.poll() is not None:
                    raise ConfigurationError(
                        f"{child.name} exited with {child.proc.returncode} while starting; "
                        f"see {self._log_dir / (child.name + '.log')}")
            if time.monotonic() > deadline:
                names = ", ".join(sorted(checks))
                raise ConfigurationError(
                    f"not ready within {timeout:.0f} s: {names}; see the logs in "
                    f"{self._log_dir}")
            if self.stop_event.wait(0.2):  # SIGTERM while starting: no keys, just stop
                raise StartInterrupted("stopped while starting")

    # -- run and stop ------------------------------------------------------------------------
    def supervise(self) -> None:
        """Until stop_event: restart a child or an embedded server that died (a child at
        most 5 times a minute). The servers restart on their ports, their data kept, and
        their clients reconnect (requests meanwhile answer 503, steps retry)."""
        server_restarts: dict[str, list[float]] = {}
        while not self.stop_event.wait(0.5):
            for name, running, restart in self.servers:
                if self.stop_event.is_set():
                    return  # asked to stop: nothing more is started
                if not running():
                    _count_restart(server_restarts.setdefault(name, []), f"embedded {name}",
                                   self.data_dir)
                    self.echo(f"embedded {name} is not running; restarting it")
                    restart()
            for child in self.children:
                if self.stop_event.is_set():
                    return
                if child.proc is None or child.proc.poll() is None:
                    continue
                _count_restart(child.restarts, child.name, self._log_dir / f"{child.name}.log")
                self.echo(f"{child.name} exited with {child.proc.returncode}; restarting")
                child.start(self._env, self._log_dir)

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()
        for stopper in reversed(self.stoppers):
            stopper()
