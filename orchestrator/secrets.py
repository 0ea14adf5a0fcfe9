"""Secrets at rest: channel secrets (webhook HMAC secrets, Slack and webhook URLs) are kept
encrypted with Fernet (AES-128-CBC + HMAC-SHA256, from ``cryptography``).

Keys come from ``ORCH_SECRET_KEY`` (comma-separated Fernet keys), else from the key file
``<data_dir>/secret.key`` (one key per line or comma-separated; mode 0600, which
``ensure_key_file`` creates). The first key encrypts; every key decrypts (``MultiFernet``), so
a key is rotated by putting a new one first, running ``orchestrator secrets rotate`` (every
stored secret re-encrypted with it), then dropping the old one.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from orchestrator.errors import ConfigurationError, OrchestratorError

if TYPE_CHECKING:
    from orchestrator.settings import Settings

KEY_FILE_NAME = "secret.key"
KEY_SETTING = "ORCH_SECRET_KEY"


class SecretKeyMissing(OrchestratorError):
    """A secret must be encrypted or decrypted and no key is configured."""

    code = "secret_key_missing"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (
            f"no secret key: set {KEY_SETTING} (orchestrator secrets new-key makes one) or "
            f"create <data_dir>/{KEY_FILE_NAME}; channel secrets are never stored in plain "
            "text"))


class SecretUnreadable(OrchestratorError):
    """A stored secret does not decrypt with any configured key (a key dropped too early,
    or a damaged value)."""

    code = "secret_unreadable"


class SecretBox:
    """Encrypts with the first key, decrypts with any. Never logs or shows a value."""

    def __init__(self, keys: Sequence[str | bytes]) -> None:
        if not keys:
            raise ValueError("at least one key is needed")
        self._fernet = MultiFernet([Fernet(k) for k in keys])
        self.key_count = len(keys)

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode("ascii")

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode()
        except (InvalidToken, UnicodeError, ValueError):
            raise SecretUnreadable("a stored secret does not decrypt with any key of "
                                   f"{KEY_SETTING}") from None

    def rotate(self, token: str) -> str:
        """The same secret encrypted with the first key."""
        try:
            return self._fernet.rotate(token.encode("ascii")).decode("ascii")
        except (InvalidToken, UnicodeError, ValueError):
            raise SecretUnreadable("a stored secret does not decrypt with any key of "
                                   f"{KEY_SETTING}") from None

    def __repr__(self) -> str:
        return f"SecretBox({self.key_count} key(s))"


def new_key() -> str:
    """A fresh Fernet key (44 URL-safe base64 characters)."""
    return Fernet.generate_key().decode("ascii")


def parse_keys(text: str, source: str) -> list[str]:
    """Keys separated by commas, spaces or newlines; ``ConfigurationError`` naming ``source``
    and the position of a bad one (never its value)."""
    keys = [k for k in re.split(r"[,\s]+", text) if k]
    if not keys:
        raise ConfigurationError(f"{source}: no key in it", setting=source)
    for i, key in enumerate(keys, 1):
        try:
            Fernet(key)
        except (ValueError, TypeError):
            raise ConfigurationError(
                f"{source}: key {i} is not a Fernet key (44 URL-safe base64 characters; "
                "`orchestrator secrets new-key` makes one)", setting=source) from None
    return keys


def key_file_path(data_dir: Path) -> Path:
    return data_dir / KEY_FILE_NAME


def load_keys(settings: Settings) -> SecretBox | None:
    """The keys of ``ORCH_SECRET_KEY``, else of ``<data_dir>/secret.key``; None when neither
    exists (storing a secret then fails with :class:`SecretKeyMissing`). A bad key, or a key
    file others may read, is a ``ConfigurationError``."""
    if settings.secret_key is not None and settings.secret_key.get_secret_value().strip():
        return SecretBox(parse_keys(settings.secret_key.get_secret_value(), KEY_SETTING))
    path = key_file_path(settings.data_dir)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigurationError(
            f"{path}: group or others may access it (mode {stat.S_IMODE(mode):04o}); "
            f"chmod 600 {path}", setting=KEY_SETTING)
    return SecretBox(parse_keys(path.read_text(), str(path)))


def ensure_key_file(data_dir: Path) -> Path:
    """``<data_dir>/secret.key`` holding a new key, created with mode 0600 unless it already
    exists (then left as it is). Returns its path. For ``orchestrator up``."""
    path = key_file_path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    if path.exists():
        return path
    # Written whole under a private name, then linked into place: a reader never sees a
    # half-written file, and of two processes starting at once the first link wins.
    tmp = path.with_name(f".{KEY_FILE_NAME}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o600)  # whatever the umask left
            f.write(new_key() + "\n")
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):  # another process's key won: keep it
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
