"""Backup keys: what ``orchestrator backup`` encrypts archives with (``crypt``), kept apart
from the secret key that seals channel secrets (orchestrator.secrets): a stolen backup and
its key then open the backup, not the secrets sealed in it.

A key is 32 random bytes as URL-safe base64 (44 characters). They come from ``--key-file``
(one key per line or comma-separated; mode 0600: a file others may read is refused), else
from ``ORCH_BACKUP_KEY`` (comma-separated). The first key encrypts; each archive's header
names the key that encrypted it by its fingerprint, and any given key with that fingerprint
opens it, so keys are rotated by putting a new one first and keeping the old ones for as long
as backups made with them are kept. A key is shown only by its fingerprint, never its value.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
import stat
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from orchestrator.backup.pgtools import BackupError, BackupSettings
from orchestrator.errors import ConfigurationError

KEY_SETTING = "ORCH_BACKUP_KEY"
KEY_BYTES = 32
_ID_INFO = b"orchestrator backup key id v1"
_CHUNK_INFO = b"orchestrator backup chunk key v1"


def _derive(secret: bytes, length: int, salt: bytes | None, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(secret)


class BackupKey:
    """One backup key. ``fingerprint``: 16 hex digits derived from it (one-way), which an
    archive's header carries and messages name."""

    __slots__ = ("_secret", "fingerprint")

    def __init__(self, secret: bytes) -> None:
        if len(secret) != KEY_BYTES:
            raise ValueError("a backup key is 32 bytes")
        self._secret = secret
        self.fingerprint = _derive(secret, 8, None, _ID_INFO).hex()

    @classmethod
    def parse(cls, text: str) -> BackupKey:
        """From its 44 characters of URL-safe base64; ValueError (without it) otherwise."""
        try:
            raw = base64.urlsafe_b64decode(text.encode("ascii"))
        except (binascii.Error, UnicodeError):
            raise ValueError("not URL-safe base64") from None
        if len(text) != 44 or len(raw) != KEY_BYTES:
            raise ValueError("not 32 bytes")
        return cls(raw)

    def secret(self) -> bytes:
        return self._secret

    def chunk_key(self, salt: bytes) -> bytes:
        """The AES-256 key of one archive: this key and the archive's salt through HKDF."""
        return _derive(self._secret, 32, salt, _CHUNK_INFO)

    def __repr__(self) -> str:
        return f"BackupKey({self.fingerprint})"

    __str__ = __repr__


def new_backup_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")


def parse_backup_keys(text: str, source: str) -> list[BackupKey]:
    """Keys separated by commas, spaces or newlines; ``ConfigurationError`` naming ``source``
    and the position of a bad one (never its value)."""
    found = [k for k in re.split(r"[,\s]+", text) if k]
    if not found:
        raise ConfigurationError(f"{source}: no key in it", setting=source)
    keys = []
    for i, text_key in enumerate(found, 1):
        try:
            keys.append(BackupKey.parse(text_key))
        except ValueError:
            raise ConfigurationError(
                f"{source}: key {i} is not a backup key (44 URL-safe base64 characters; "
                "`orchestrator backup new-key FILE` makes one)", setting=source) from None
    return keys


def load_backup_keys(settings: BackupSettings, key_file: Path | None) -> list[BackupKey]:
    """The keys of ``key_file`` when given, else of ``ORCH_BACKUP_KEY``; [] when neither."""
    if key_file is not None:
        try:
            mode = key_file.stat().st_mode
            text = key_file.read_text()
        except (OSError, UnicodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not text"
            raise ConfigurationError(f"cannot read the backup key file {key_file}: {reason}",
                                     setting="--key-file") from None
        if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigurationError(
                f"{key_file}: group or others may access it (mode {stat.S_IMODE(mode):04o}); "
                f"chmod 600 {key_file}", setting="--key-file")
        return parse_backup_keys(text, str(key_file))
    if settings.backup_key is not None and settings.backup_key.get_secret_value().strip():
        return parse_backup_keys(settings.backup_key.get_secret_value(), KEY_SETTING)
    return []


def write_key_file(path: Path) -> BackupKey:
    """A new key in a new file ``path`` (mode 0600; an existing file is never replaced)."""
    text = new_backup_key()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise BackupError(f"{path} already exists: a key file is never replaced (its key "
                          "may be the only one that opens some backups)") from None
    except OSError as exc:
        raise BackupError(f"cannot create {path}: {exc.strerror or exc}") from None
    # a file left empty or cut (disk full) would hold no key and refuse every retry: removed
    try:
        try:
            os.fchmod(fd, 0o600)
            data = (text + "\n").encode("ascii")
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException as exc:
        path.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise BackupError(f"cannot write {path}: {exc.strerror or exc}; nothing was "
                              "kept") from None
        raise
    return BackupKey.parse(text)


def fingerprints(keys: Sequence[BackupKey]) -> str:
    return ", ".join(k.fingerprint for k in keys)
