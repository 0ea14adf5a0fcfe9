"""The SHA-256 checksum kept next to a backup ``X`` in ``X.sha256``, in ``sha256sum``'s format
(``<64 hex>  <file name>``), so ``sha256sum -c X.sha256`` checks it too.

pg_dump's custom format checks the table data (compressed) but not the schema text stored
beside it (function bodies, constraints, defaults): one changed byte there restores without a
word and breaks the ledger the first time that function runs. Hence a restore verifies the
whole file against this checksum before it reads the archive.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from orchestrator.backup.pgtools import BackupError
from orchestrator.embedded.private import write_private

SUFFIX = ".sha256"
# one line of sha256sum's output: text ("  ") or binary (" *") mode; GNU writes a name with
# a backslash or line break escaped, behind a leading backslash, which create refuses to need
_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *](.+)")
_UNWRITABLE = ("\\", "\n", "\r")


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + SUFFIX)


def check_name(path: Path) -> None:
    """Refuse a backup file name that sha256sum's format cannot hold as it is."""
    if any(c in path.name for c in _UNWRITABLE):
        raise BackupError(f"{path.name!r}: a backup file name cannot contain a backslash or "
                          "a line break (its checksum file could not name it)")


def digest(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()  # read in chunks


def write_checksum(path: Path, hexdigest: str, name: str) -> None:
    """``path`` (the sidecar) written atomically, mode 0600 like the archive."""
    write_private(path, f"{hexdigest}  {name}\n")


def verify(path: Path) -> None:
    """Raise BackupError unless ``path``'s sidecar exists, is well formed, names ``path`` and
    holds its SHA-256."""
    side = sidecar(path)
    try:
        raw = side.read_bytes()
    except FileNotFoundError:
        raise BackupError(
            f"{side} not found: copy the checksum file with the backup, or pass "
            "--skip-checksum to restore without checking (e.g. a backup made before "
            "checksums were written); nothing was changed") from None
    except OSError as exc:
        raise BackupError(f"cannot read {side}: {exc.strerror or exc}") from None
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        lines = []
    match = _LINE.fullmatch(lines[0]) if len(lines) == 1 else None
    if match is None:
        raise BackupError(f"{side} is not a checksum file: expected one line "
                          f"'<64 hex digits>  {path.name}' (as sha256sum writes)")
    if match[2] != path.name:
        raise BackupError(f"{side} is the checksum of {match[2]!r}, not of {path.name!r}: "
                          "restore the file it names, or keep the backup's name when "
                          "copying it")
    if digest(path) != match[1].lower():
        raise BackupError(f"{path} differs from its checksum in {side}: the backup is "
                          "damaged or was changed since it was made; refused, nothing was "
                          "changed")
