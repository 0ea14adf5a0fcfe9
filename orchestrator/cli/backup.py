"""``orchestrator backup create|restore``: the database to a pg_dump archive and back.

The database is ``ORCH_DATABASE_URL``'s, or the embedded one of ``orchestrator up``
(``ORCH_DATA_DIR``, default ``.orchestrator``). When the embedded server is not running (the
system is stopped, or this is a new machine), the command starts it for its own run and
stops it afterwards.

With a backup key (``--key-file`` or ``ORCH_BACKUP_KEY``) ``create`` encrypts the archive and
``restore`` opens an encrypted one (orchestrator.backup.crypt); ``new-key`` makes a key file.
A key is only ever named by its fingerprint.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import psycopg
import typer

from orchestrator.cli.errors import fail, one_line_errors, say
from orchestrator.runtime.signals import sigterm_exits

if TYPE_CHECKING:
    from orchestrator.backup.backupkey import BackupKey

backup_app = typer.Typer(
    no_args_is_help=True,
    help="Back up the database to a pg_dump archive (consistent while the system runs) and "
    "restore one.",
)


@contextmanager
def database(*, create_if_missing: bool) -> Iterator[tuple[str, bool]]:
    """The database URL and whether the server is external (``ORCH_DATABASE_URL``)."""
    from orchestrator.settings import get_settings, resolve_database_url

    settings = get_settings()
    if settings.database_url:
        yield settings.database_url, True
        return
    creds = settings.data_dir / "credentials.json"
    url = resolve_database_url(settings) if creds.exists() else None
    if url is not None and _answers(url):
        yield url, False
        return
    from orchestrator.embedded import EmbeddedPostgres

    pgdata = settings.data_dir / "postgres" / "pgdata"
    if not (pgdata / "PG_VERSION").exists() and not create_if_missing:
        fail(f"ORCH_DATABASE_URL is not set and there is no embedded database in {pgdata}")
    from orchestrator.embedded.postgres import server_gid
    from orchestrator.embedded.private import private_dir

    # a new machine's data dir is made as `up` makes it (its owner's alone), not 0755
    private_dir(settings.data_dir, traverse_gid=server_gid())
    pg = EmbeddedPostgres(settings.data_dir / "postgres")
    started = pg.start()
    try:
        yield url or started, False
    finally:
        pg.stop()


def _answers(url: str) -> bool:
    from orchestrator.backup import Target

    try:
        with psycopg.connect(Target(url).conninfo(), connect_timeout=5):
            return True
    except psycopg.OperationalError:
        return False


KeyFile = Annotated[Path | None, typer.Option(
    "--key-file", help="a file of backup keys (mode 0600; one per line, the first encrypts, "
    "any decrypts); default: ORCH_BACKUP_KEY, else no encryption", show_default=False)]


def backup_keys(key_file: Path | None) -> list[BackupKey]:
    from orchestrator.backup import BackupSettings
    from orchestrator.backup.backupkey import load_backup_keys

    return load_backup_keys(BackupSettings(), key_file)


@backup_app.command("new-key")
@one_line_errors
def new_key(
    path: Annotated[Path, typer.Argument(help="the key file to make (mode 0600; never "
                                         "replaced)")],
) -> None:
    """Write a new backup key to a new file PATH and print its fingerprint (never the key).
    Pass it as --key-file, or its contents as ORCH_BACKUP_KEY; keep a copy apart from the
    backups. Rotation: put a new key first, keep the old ones while their backups are kept."""
    from orchestrator.backup.backupkey import write_key_file

    key = write_key_file(path)
    typer.echo(f"backup key {key.fingerprint} written to {path}: keep a copy apart from the "
               "backups")


@backup_app.command("create")
@one_line_errors
def create(
    path: Annotated[Path, typer.Argument(
        help="the archive to write (mode 0600); its SHA-256 goes to PATH.sha256")],
    force: Annotated[bool, typer.Option(
        "--force", help="replace an existing archive and its checksum file")] = False,
    key_file: KeyFile = None,
) -> None:
    """Dump the whole database (pg_dump, custom format) from one consistent snapshot; safe
    while the system runs. Writes PATH and its checksum PATH.sha256 (sha256sum's format):
    keep them together. With a backup key (--key-file or ORCH_BACKUP_KEY) PATH is
    encrypted with the first one (AES-256-GCM) and the checksum is of the encrypted file."""
    from orchestrator.backup import PgTools, create_backup

    keys = backup_keys(key_file)
    # SIGTERM leaves through every finally, as Ctrl-C does: pg_dump stopped, the partial
    # archive (the database in plaintext, without a key) and the passfile removed
    with stop_on_sigterm(), database(create_if_missing=False) as (url, external):
        report = create_backup(url, path, PgTools.locate(external=external), force=force,
                               key=keys[0] if keys else None)
    typer.echo(report.summary())
    if not keys:  # a blank ORCH_BACKUP_KEY is unset too: never a silent plaintext archive
        typer.echo(f"warning: {path} is not encrypted: no backup key (no --key-file, and "
                   "ORCH_BACKUP_KEY is unset or empty)", err=True)


@backup_app.command("restore")
@one_line_errors
def restore(
    path: Annotated[Path, typer.Argument(
        help="an archive written by `backup create`, with its PATH.sha256 next to it")],
    force: Annotated[
        bool, typer.Option("--force", help="replace everything in a database that is not empty")
    ] = False,
    skip_checksum: Annotated[
        bool, typer.Option("--skip-checksum",
                           help="restore without checking PATH against PATH.sha256 (e.g. a "
                           "backup made before checksums were written)")
    ] = False,
    key_file: KeyFile = None,
) -> None:
    """Load an archive into the database in one transaction: refused for an archive that
    differs from its checksum PATH.sha256 or has none (unless --skip-checksum), for a
    database that is not empty (unless --force), while other sessions are connected, or for
    an archive of a newer schema; an older one is migrated afterwards. An encrypted archive
    needs its backup key (--key-file or ORCH_BACKUP_KEY) and is refused, before the
    database is touched, without it or when damaged. Ends with the ledger audit, and a
    warning when this machine's secret key does not open the restored secrets."""
    from orchestrator.backup import PgTools, restore_backup
    from orchestrator.backup.keycheck import key_warning
    from orchestrator.settings import get_settings

    keys = backup_keys(key_file)
    if skip_checksum:
        typer.echo(f"warning: --skip-checksum: {path} is restored without checking it against "
                   "a checksum; damage in its schema text would go unnoticed", err=True)
    # SIGTERM (docker stop, systemd, timeout) leaves through every finally, as Ctrl-C does:
    # pg_restore stopped, psql's transaction rolled back, the embedded server stopped, the
    # passfile removed; the default action would end the process in place
    with stop_on_sigterm(), database(create_if_missing=True) as (url, external):
        report = restore_backup(url, path, PgTools.locate(external=external), force=force,
                                skip_checksum=skip_checksum, keys=keys)
        warning = key_warning(url, get_settings())
    if report.problems:
        fail(f"restored into {report.where}, but the ledger audit found "
             f"{len(report.problems)} problem(s), first: {report.problems[0]}")
    typer.echo(report.summary())
    if keys and report.encrypted_with is None:
        typer.echo(f"note: {path} is not encrypted: restored without the backup key", err=True)
    if warning:
        typer.echo(warning, err=True)


def stop_on_sigterm() -> AbstractContextManager[None]:
    """SIGTERM as an exit (status 143, one line said) while a command's work runs."""
    return sigterm_exits(128 + signal.SIGTERM, lambda: say("stopped by SIGTERM"))


def register(app: typer.Typer) -> None:
    app.add_typer(backup_app, name="backup")
