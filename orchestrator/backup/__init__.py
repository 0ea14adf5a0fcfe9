"""Backups of the orchestrator's database: ``create_backup`` (pg_dump, custom format, one
consistent snapshot, file mode 0600) and ``restore_backup`` (into an empty database or, with
``force``, in place of its contents; one transaction; schema revision checked, an older
backup migrated). ``PgTools.locate`` finds the client programs; ``orchestrator backup`` is
the command (``orchestrator.cli.backup``)."""

from orchestrator.backup.archive import (
    BackupReport,
    RestoreReport,
    archive_revision,
    create_backup,
    restore_backup,
)
from orchestrator.backup.pgtools import BackupError, BackupSettings, PgTools, Target

__all__ = [
    "BackupError",
    "BackupReport",
    "BackupSettings",
    "PgTools",
    "RestoreReport",
    "Target",
    "archive_revision",
    "create_backup",
    "restore_backup",
]
