"""Back up the orchestrator's database to a pg_dump archive, and restore one.

``create_backup`` dumps the whole database (every table, function, trigger and sequence, and
alembic_version) in pg_dump's custom format from one snapshot: pg_dump reads everything in a
single REPEATABLE READ transaction, so a backup taken while jobs run is consistent (every
hold with its ledger entries and counters) and blocks no writer. The snapshot is exported
first, so the revision and counts it reports are those of the archive. The file is written
under a temporary name with mode 0600 and renamed when complete; its SHA-256 goes next to it
(``X.sha256``, see ``checksum``). Given a backup key, pg_dump's output is encrypted as it
comes (``crypt``): no plaintext reaches the disk, and the checksum is the encrypted file's.

``restore_backup`` loads an archive into an empty database (or, with ``force``, in place of
everything in the schema ``public``) in one transaction: a failure leaves the target as it
was. It first checks the archive against its ``X.sha256`` (unless ``skip_checksum``) and
the target (refused when not empty without ``force``, or with other sessions connected); an
encrypted one is then decrypted, whole and authenticated, with the one of ``keys`` its header
names into a file that, on Linux, has no name (nothing to remove, whatever stops the
process; ``crypt.decrypted``), before the database is touched. It refuses an archive of a
schema revision this code does not know (a newer one) and migrates an older one to the
code's head afterwards, then audits the ledger.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_fixed

from orchestrator.backup import checksum, crypt
from orchestrator.backup.backupkey import BackupKey
from orchestrator.backup.pgtools import BackupError, PgTools, Target, last_error
from orchestrator.backup.target import TargetState, inspect_target
from orchestrator.runtime.children import child_environment

COUNTED = ("jobs", "attempts", "holds", "ledger_entries", "budgets", "api_keys", "alerts")


@dataclass(frozen=True, slots=True)
class BackupReport:
    path: Path
    checksum_path: Path
    revision: str
    server_version: str
    counts: dict[str, int]
    size_bytes: int
    seconds: float
    key_id: str | None = None  # the fingerprint of the backup key it is encrypted with

    def summary(self) -> str:
        sealed = f"encrypted with backup key {self.key_id}; " if self.key_id else ""
        return (f"backup written to {self.path} ({self.size_bytes / 1e6:.1f} MB in "
                f"{self.seconds:.1f} s): schema {self.revision}, PostgreSQL "
                f"{self.server_version}, {_counts(self.counts)}; {sealed}its SHA-256 in "
                f"{self.checksum_path}")


@dataclass(frozen=True, slots=True)
class RestoreReport:
    where: str
    revision: str
    migrated_to: str | None
    counts: dict[str, int]
    seconds: float
    problems: list[str] = field(default_factory=list)
    encrypted_with: str | None = None  # the fingerprint of the key that opened it

    def summary(self) -> str:
        schema = (f"schema {self.revision} migrated to {self.migrated_to}" if self.migrated_to
                  else f"schema {self.revision}")
        sealed = (f"; decrypted with backup key {self.encrypted_with}" if self.encrypted_with
                  else "")
        return (f"restored into {self.where} in {self.seconds:.1f} s: {schema}, "
                f"{_counts(self.counts)}; ledger audit clean{sealed}")


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n:,} {table.replace('_', ' ')}" for table, n in counts.items())


def code_head() -> ScriptDirectory:
    from orchestrator.store.migrate import alembic_config

    return ScriptDirectory.from_config(alembic_config("postgresql+psycopg://unused/unused"))


# -- create ----------------------------------------------------------------------------------
def create_backup(url: str, path: Path, tools: PgTools, *, force: bool = False,
                  key: BackupKey | None = None) -> BackupReport:
    path = Path(path)
    checksum.check_name(path)
    side = checksum.sidecar(path)
    for existing in (path, side):
        if existing.exists() and not force:
            raise BackupError(f"{existing} already exists (--force replaces it)")
    if not path.parent.is_dir():
        raise BackupError(f"{path.parent} is not a directory")
    target, started = Target(url), time.monotonic()
    try:
        conn = psycopg.connect(target.conninfo(), connect_timeout=10)
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
    except psycopg.OperationalError as exc:
        raise BackupError(f"cannot connect to {target.where}: {_first_line(exc)}") from None
    with conn:
        server = conn.execute("SELECT current_setting('server_version_num')::int, "
                              "current_setting('server_version')").fetchone()
        assert server is not None
        tools.check_server(server[0])
        snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()
        state = inspect_target(conn, COUNTED)
        if state.revision is None:
            raise BackupError(f"{target.where} has no alembic_version table: it is not an "
                              "orchestrator database (run `orchestrator migrate` first)")
        assert snapshot is not None
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        # made 0600 before pg_dump opens (and truncates) it: never readable by others
        os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        os.chmod(partial, 0o600)
        try:
            with target.environment() as env:
                failed = _pg_dump(tools, env, str(snapshot[0]), partial, key)
            if failed is not None:
                raise BackupError(f"pg_dump failed: {failed}")
            _fsync(partial)
            hexdigest = checksum.digest(partial)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        # the old checksum is removed before the archive is replaced: a crash in between
        # leaves a backup without a checksum (restore says so), never one that seems damaged
        side.unlink(missing_ok=True)
        os.replace(partial, path)
        checksum.write_checksum(side, hexdigest, path.name)
        _fsync(path.parent)
        conn.rollback()
    return BackupReport(path, side, state.revision, str(server[1]), state.counts,
                        path.stat().st_size, time.monotonic() - started,
                        key.fingerprint if key else None)


def _pg_dump(tools: PgTools, env: dict[str, str], snapshot: str, partial: Path,
             key: BackupKey | None) -> str | None:
    """pg_dump's archive into ``partial`` (encrypted with ``key`` as it comes through a
    pipe, when given); its error line, or None."""
    args = [tools.path("pg_dump"), "--format=custom", "--no-password", f"--snapshot={snapshot}"]
    if key is None:
        done = subprocess.run([*args, f"--file={partial}"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, env=env, text=True, check=False)
        return last_error(done.stderr) if done.returncode != 0 else None
    return crypt.encrypt_output(args, env, partial, key)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# -- read an archive ---------------------------------------------------------------------------
def archive_revision(path: Path, tools: PgTools, shown: Path | None = None,
                     pass_fds: tuple[int, ...] = ()) -> str:
    """The schema revision recorded in the archive's alembic_version table; ``shown``: the
    name its messages give it (the encrypted file's, for a decrypted copy); ``pass_fds``:
    the descriptor pg_restore reads ``path`` through (``crypt.Decrypted``), if any."""
    if not Path(path).is_file():
        raise BackupError(f"{path} is not a file")
    name = shown or path
    # decoded leniently: a damaged archive's names may be bytes that are not UTF-8, and it is
    # then refused with pg_restore's or the load's word, never a UnicodeDecodeError
    listed = subprocess.run([tools.path("pg_restore"), "--list", str(path)],
                            capture_output=True, encoding="utf-8", errors="replace",
                            check=False, pass_fds=pass_fds, env=child_environment())
    if listed.returncode != 0:
        raise BackupError(f"{name} is not a pg_dump archive pg_restore {tools.version} can "
                          f"read: {last_error(listed.stderr)}")
    data = subprocess.run(
        [tools.path("pg_restore"), "--data-only", "--table=alembic_version", "--file=-",
         str(path)], capture_output=True, encoding="utf-8", errors="replace", check=False,
        pass_fds=pass_fds, env=child_environment())
    lines = data.stdout.splitlines()
    for i, line in enumerate(lines):
        following = lines[i + 1] if i + 1 < len(lines) else "\\."
        if line.startswith("COPY ") and "alembic_version" in line and following != "\\.":
            return following.strip()
    raise BackupError(f"{name} has no schema revision (alembic_version): not a backup of an "
                      "orchestrator database")


# -- restore ---------------------------------------------------------------------------------
_WIPE = "DROP SCHEMA IF EXISTS public CASCADE;\nCREATE SCHEMA public;\n"


def restore_backup(url: str, path: Path, tools: PgTools, *, force: bool = False,
                   skip_checksum: bool = False, keys: Sequence[BackupKey] = ()
                   ) -> RestoreReport:
    """``keys``: backup keys, for an encrypted archive (one unencrypted needs none)."""
    started, path = time.monotonic(), Path(path)
    if not path.is_file():
        raise BackupError(f"{path} is not a file")
    if not skip_checksum:
        checksum.verify(path)
    # the target's refusals first: they are cheap, and decrypting a large archive is not
    _refuse(Target(url), force)
    if not crypt.encrypted_file(path):
        return _restore(url, path, path, tools, force, started, None)
    with crypt.decrypted(path, keys) as plain:
        return _restore(url, plain.path, path, tools, force, started, plain.key_id,
                        plain.pass_fds)


def _restore(url: str, path: Path, shown: Path, tools: PgTools, force: bool, started: float,
             key_id: str | None, pass_fds: tuple[int, ...] = ()) -> RestoreReport:
    """The archive ``path`` (an unencrypted one: ``shown``'s own or its decrypted copy,
    which pg_restore reads through the descriptors ``pass_fds``) into ``url``'s database."""
    from orchestrator.ledger.audit import audit
    from orchestrator.store.engine import make_engine
    from orchestrator.store.migrate import upgrade

    target = Target(url)
    revision = archive_revision(path, tools, shown, pass_fds)
    script = code_head()
    head = script.get_current_head()
    try:
        script.get_revision(revision)
    except CommandError:
        raise BackupError(
            f"{shown} is at schema revision {revision}, which this code does not know (its "
            f"newest is {head}): restore it with the orchestrator version that made it"
        ) from None
    state = _refuse(target, force)  # again: a session may have come while it decrypted
    _load(target, path, tools, wipe=not state.empty, shown=shown, pass_fds=pass_fds)
    migrated = None
    if revision != head:
        upgrade(url, "head")
        migrated = head
    engine = make_engine(url, pool_size=1)
    try:
        with engine.connect() as conn:
            problems = audit(conn)
    finally:
        engine.dispose()
    counts = _target_state(target).counts
    return RestoreReport(target.where, revision, migrated, counts,
                         time.monotonic() - started, problems, key_id)


# A session whose client just closed it (a service just stopped, this restore's own look
# before) stays in pg_stat_activity until its server process has exited
SESSIONS_GONE_S = 5.0


def _refuse(target: Target, force: bool) -> TargetState:
    """The target's state; ``BackupError`` when it is not empty (without ``force``) or
    other sessions are still connected to it after up to ``SESSIONS_GONE_S``."""
    state = _target_state(target)
    if not state.empty and not force:
        raise BackupError(f"{target.where} is not empty ({state.describe()}); --force "
                          "replaces all of it with the backup")
    if state.other_sessions:
        try:
            state = Retrying(stop=stop_after_delay(SESSIONS_GONE_S), wait=wait_fixed(0.1),
                             retry=retry_if_result(lambda s: s.other_sessions > 0))(
                _target_state, target)
        except RetryError as exc:
            left = exc.last_attempt.result().other_sessions
            raise BackupError(f"{left} other session(s) are connected to {target.where}: "
                              "stop the API, workers and beat first") from None
    return state


def _target_state(target: Target) -> TargetState:
    try:
        with psycopg.connect(target.conninfo(), connect_timeout=10, autocommit=True) as conn:
            return inspect_target(conn, COUNTED)
    except psycopg.OperationalError as exc:
        raise BackupError(f"cannot connect to {target.where}: {_first_line(exc)}") from None


def _load(target: Target, path: Path, tools: PgTools, *, wipe: bool, shown: Path,
          pass_fds: tuple[int, ...] = ()) -> None:
    """pg_restore's SQL, streamed into psql inside one transaction that is committed only
    when pg_restore read the whole archive and psql ran every statement."""
    with tempfile.TemporaryFile() as restore_err, tempfile.TemporaryFile() as psql_err, \
            target.environment() as env:
        reader = subprocess.Popen(
            [tools.path("pg_restore"), "--no-owner", "--no-acl", "--file=-", str(path)],
            stdout=subprocess.PIPE, stderr=restore_err, env=env, pass_fds=pass_fds)
        loader = subprocess.Popen(
            [tools.path("psql"), "--no-psqlrc", "--quiet", "--no-password",
             "--set=ON_ERROR_STOP=1", "--file=-"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=psql_err, env=env)
        assert reader.stdout is not None and loader.stdin is not None
        try:
            loader.stdin.write(b"BEGIN;\n" + (_WIPE.encode() if wipe else b""))
            shutil.copyfileobj(reader.stdout, loader.stdin, 1 << 20)
            if reader.wait() == 0:
                loader.stdin.write(b"COMMIT;\n")
            loader.stdin.close()  # without COMMIT, psql's end rolls everything back
        except BrokenPipeError:
            pass  # psql stopped at an error: reported below
        finally:
            reader.stdout.close()
            if reader.poll() is None:
                reader.kill()
            reader.wait()
            # stopped half-way (SIGTERM: SystemExit): psql's input ends without COMMIT, and
            # psql rolls back; it would otherwise wait for more forever
            with contextlib.suppress(BrokenPipeError):
                loader.stdin.close()
            loader.wait()
        if loader.returncode != 0:
            psql_err.seek(0)
            raise BackupError(f"restore failed and was rolled back (nothing was changed): "
                              f"{last_error(psql_err.read().decode(errors='replace'))}")
        if reader.returncode != 0:
            restore_err.seek(0)
            raise BackupError(f"pg_restore could not read {shown} (nothing was changed): "
                              f"{last_error(restore_err.read().decode(errors='replace'))}")
