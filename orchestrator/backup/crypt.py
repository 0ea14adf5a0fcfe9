"""Encrypted backups: the format ``backup create`` writes when a backup key is given, and
its reading.

A header, then the pg_dump archive in chunks of ``chunk_size`` bytes (the last one may be
shorter, or empty for an empty input), each sealed with AES-256-GCM (``cryptography``)::

    header:  magic "ORCHBKUP" | version (1 byte) | chunk size (4) | key fingerprint (8)
             | salt (16) | nonce base (12)                                    = 49 bytes
    chunk i: length of what follows (4) | ciphertext | tag (16);
             nonce = nonce base + i (mod 2**96);
             associated data = header | i (8 bytes) | final (1 byte)

The AES key is derived from the backup key and the archive's random salt (HKDF-SHA256, see
``backupkey``), so no two archives share one, and the nonce base is random too. The whole
header is authenticated with every chunk, the index too (a reordered or removed chunk fails)
and the final flag, set on the last chunk alone: a file cut after a chunk, or one with data
appended after its final chunk, fails as well. Both run in constant memory (two chunks).
"""

from __future__ import annotations

import errno
import os
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from orchestrator.backup.backupkey import KEY_SETTING, BackupKey, fingerprints
from orchestrator.backup.pgtools import BackupError, last_error

MAGIC = b"ORCHBKUP"
VERSION = 1
_HEADER = struct.Struct(">8sBI8s16s12s")
HEADER_SIZE = _HEADER.size
TAG_SIZE = 16
_LENGTH = struct.Struct(">I")
LENGTH_SIZE = _LENGTH.size
DEFAULT_CHUNK = 1 << 20
MAX_CHUNK = 64 << 20
_UNCHANGED = "refused, nothing was changed"


@dataclass(frozen=True, slots=True)
class Header:
    raw: bytes
    chunk_size: int
    key_id: str  # the key's fingerprint: 16 hex digits
    salt: bytes
    nonce_base: bytes


def is_encrypted(f: IO[bytes]) -> bool:
    return f.read(len(MAGIC)) == MAGIC


def encrypted_file(path: Path) -> bool:
    with path.open("rb") as f:
        return is_encrypted(f)


def read_header(f: IO[bytes], name: str) -> Header:
    raw = _read_full(f, HEADER_SIZE)
    if raw[:len(MAGIC)] != MAGIC:
        raise BackupError(f"{name} is not an encrypted backup")
    if len(raw) > len(MAGIC) and raw[len(MAGIC)] != VERSION:
        raise BackupError(
            f"{name} is an encrypted backup of format version {raw[len(MAGIC)]}, which this "
            f"code does not know (it reads {VERSION}): restore it with the orchestrator "
            "version that made it")
    if len(raw) < HEADER_SIZE:
        raise BackupError(f"{name} is truncated: its header is incomplete; {_UNCHANGED}")
    _, _, chunk_size, key_id, salt, base = _HEADER.unpack(raw)
    if not 0 < chunk_size <= MAX_CHUNK:
        raise BackupError(f"{name}: its header is damaged (chunk size {chunk_size}); "
                          f"{_UNCHANGED}")
    return Header(raw, chunk_size, key_id.hex(), salt, base)


def _read_full(f: IO[bytes], n: int) -> bytes:
    """``n`` bytes, fewer only at the end (a pipe returns what it has)."""
    parts, left = [], n
    while left:
        part = f.read(left)
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _nonce(base: bytes, i: int) -> bytes:
    return ((int.from_bytes(base, "big") + i) % (1 << 96)).to_bytes(12, "big")


def _aad(header: bytes, i: int, final: bool) -> bytes:
    return header + struct.pack(">QB", i, 1 if final else 0)


def encrypt_stream(src: IO[bytes], dst: IO[bytes], key: BackupKey,
                   chunk_size: int = DEFAULT_CHUNK) -> None:
    """``src`` to its end, encrypted into ``dst`` with ``key``."""
    salt, base = os.urandom(16), os.urandom(12)
    header = _HEADER.pack(MAGIC, VERSION, chunk_size, bytes.fromhex(key.fingerprint), salt,
                          base)
    aead = AESGCM(key.chunk_key(salt))
    dst.write(header)
    pending, i = _read_full(src, chunk_size), 0
    while True:
        following = _read_full(src, chunk_size)
        final = not following
        sealed = aead.encrypt(_nonce(base, i), pending, _aad(header, i, final))
        dst.write(_LENGTH.pack(len(sealed)) + sealed)
        if final:
            return
        pending, i = following, i + 1


def encrypt_output(args: list[str], env: dict[str, str], path: Path, key: BackupKey
                   ) -> str | None:
    """The standard output of the program ``args`` encrypted into ``path`` as it comes
    through a pipe (nothing of it unencrypted on disk); the program's error line, or None."""
    with tempfile.TemporaryFile() as err, path.open("wb") as out:
        program = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, env=env)
        assert program.stdout is not None
        try:
            encrypt_stream(program.stdout, out, key, DEFAULT_CHUNK)
        except BaseException:
            program.kill()
            raise
        finally:
            program.stdout.close()
            program.wait()
        if program.returncode != 0:
            err.seek(0)
            return last_error(err.read().decode(errors="replace"))
    return None


def choose_key(header: Header, keys: Sequence[BackupKey], name: str) -> BackupKey:
    for key in keys:
        if key.fingerprint == header.key_id:
            return key
    if not keys:
        raise BackupError(f"{name} is encrypted (backup key {header.key_id}): give that key "
                          f"with --key-file or {KEY_SETTING}; nothing was changed")
    raise BackupError(f"{name} is encrypted with backup key {header.key_id}, which is not "
                      f"among the given key(s) ({fingerprints(keys)}): give that key (if no key "
                      "has that fingerprint, the archive's header is damaged); nothing was "
                      "changed")


def decrypt_stream(src: IO[bytes], dst: IO[bytes], keys: Sequence[BackupKey],
                   name: str) -> None:
    """``src`` (an encrypted backup) decrypted into ``dst``, every chunk authenticated;
    ``BackupError`` naming the file and what is wrong with it otherwise."""
    header = read_header(src, name)
    aead = AESGCM(choose_key(header, keys, name).chunk_key(header.salt))
    largest = header.chunk_size + TAG_SIZE

    def body(prefix: bytes, i: int) -> bytes:
        """Chunk ``i``, whose length ``prefix`` gives."""
        if len(prefix) < _LENGTH.size:
            raise BackupError(f"{name} is truncated: it ends inside chunk {i + 1}; "
                              f"{_UNCHANGED}")
        (n,) = _LENGTH.unpack(prefix)
        if not TAG_SIZE <= n <= largest:
            raise BackupError(f"chunk {i + 1} of {name} has a damaged length ({n} bytes): "
                              f"the backup is damaged or was changed; {_UNCHANGED}")
        sealed = _read_full(src, n)
        if len(sealed) < n:
            raise BackupError(f"{name} is truncated: it ends inside chunk {i + 1}; "
                              f"{_UNCHANGED}")
        return sealed

    def opened(i: int, sealed: bytes, final: bool) -> bytes | None:
        try:
            return aead.decrypt(_nonce(header.nonce_base, i), sealed,
                                _aad(header.raw, i, final))
        except InvalidTag:
            return None

    prefix = _read_full(src, _LENGTH.size)
    if not prefix:
        raise BackupError(f"{name} is truncated: no chunk after its header; {_UNCHANGED}")
    pending, i = body(prefix, 0), 0
    while True:
        prefix = _read_full(src, _LENGTH.size)  # none: this chunk must be the final one
        final = not prefix
        plain = opened(i, pending, final)
        if plain is None:
            if final and opened(i, pending, False) is not None:
                raise BackupError(f"{name} is truncated: it ends after chunk {i + 1}, which "
                                  f"is not its final one; {_UNCHANGED}")
            if not final and opened(i, pending, True) is not None:
                raise BackupError(f"{name} has data after its final chunk ({i + 1}): "
                                  f"something was appended; {_UNCHANGED}")
            raise BackupError(f"chunk {i + 1} of {name} fails authentication: the backup is "
                              f"damaged or was changed since it was made; {_UNCHANGED}")
        dst.write(plain)
        if final:
            return
        pending, i = body(prefix, i + 1), i + 1


@dataclass(frozen=True, slots=True)
class Decrypted:
    """A decrypted archive as a child program reads it: by ``path``, given ``pass_fds``."""

    path: Path
    pass_fds: tuple[int, ...]
    key_id: str  # the fingerprint of the key that opened it


# Linux opens /dev/fd/N of a regular file afresh, at offset 0: each pg_restore reads the
# unnamed file from its start. macOS and the BSDs dup the descriptor instead (the parent's
# offset, at the end once written), so there the file keeps a name while it is read.
REOPENS_AT_START = sys.platform == "linux"


@contextmanager
def decrypted(path: Path, keys: Sequence[BackupKey]) -> Iterator[Decrypted]:
    """The archive in ``path`` decrypted, whole and authenticated, into a file of mode 0600
    (pg_restore needs to seek in it), removed on exit. On Linux the file has no name: a
    child program is given its descriptor (``pass_fds``) and opens it as ``/dev/fd/N``, and
    a process stopped by any signal, even SIGKILL, leaves no plaintext on disk. Elsewhere it
    is a hidden named file, removed on exit (SIGTERM included: the commands turn it into an
    exit). The file is made beside the archive (room for its size), or in the temporary
    directory when that directory is not writable."""
    with path.open("rb") as src:
        header = read_header(src, str(path))
        key = choose_key(header, keys, str(path))  # before a byte is written
        src.seek(0)
        where = path.parent if os.access(path.parent, os.W_OK) else Path(tempfile.gettempdir())
        name: str | None = None
        try:
            if REOPENS_AT_START:
                fd = _unnamed_file(where)
            else:
                fd, name = tempfile.mkstemp(dir=where, prefix=".orch-", suffix=".decrypted")
        except OSError as exc:
            raise BackupError(f"cannot decrypt {path} into {where}: "
                              f"{exc.strerror or exc}; nothing was changed") from None
        try:
            try:
                with os.fdopen(fd, "wb", closefd=False) as out:
                    decrypt_stream(src, out, keys, str(path))
            except OSError as exc:
                raise BackupError(f"cannot decrypt {path} into {where}: "
                                  f"{exc.strerror or exc}; nothing was changed") from None
            if name is not None:
                yield Decrypted(Path(name), (), key.fingerprint)
            else:
                yield Decrypted(Path(f"/dev/fd/{fd}"), (fd,), key.fingerprint)
        finally:
            os.close(fd)
            if name is not None:
                Path(name).unlink(missing_ok=True)


def _unnamed_file(where: Path) -> int:
    """A new file of mode 0600 in ``where`` that has no name, open for reading and writing:
    O_TMPFILE, or where the system or file system lacks it, a named one unlinked at once."""
    if hasattr(os, "O_TMPFILE"):
        try:
            return os.open(where, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
    fd, name = tempfile.mkstemp(dir=where, prefix=".orch-", suffix=".decrypted")
    os.unlink(name)
    return fd
