"""The encrypted backup format (orchestrator.backup.crypt): a versioned header naming the
key, then AES-256-GCM chunks whose index and final flag are authenticated, so that a changed
byte, a reordered, removed or appended chunk and a truncated file are each refused; and the
backup keys (orchestrator.backup.backupkey), shown only by their fingerprint."""

from __future__ import annotations

import errno
import io
import os
import stat
from pathlib import Path

import pytest

from orchestrator.backup import crypt
from orchestrator.backup.backupkey import (
    BackupKey,
    load_backup_keys,
    new_backup_key,
    parse_backup_keys,
    write_key_file,
)
from orchestrator.backup.crypt import (
    HEADER_SIZE,
    LENGTH_SIZE,
    MAGIC,
    decrypt_stream,
    decrypted,
    encrypt_stream,
    is_encrypted,
    read_header,
)
from orchestrator.backup.pgtools import BackupError, BackupSettings
from orchestrator.errors import ConfigurationError

CHUNK = 1024  # small chunks, so that a few KB make several
KEY = BackupKey.parse(new_backup_key())
OTHER = BackupKey.parse(new_backup_key())


def sealed(data: bytes, key: BackupKey = KEY, chunk: int = CHUNK) -> bytes:
    out = io.BytesIO()
    encrypt_stream(io.BytesIO(data), out, key, chunk_size=chunk)
    return out.getvalue()


def opened(blob: bytes, keys: list[BackupKey] | None = None) -> bytes:
    out = io.BytesIO()
    decrypt_stream(io.BytesIO(blob), out, keys or [KEY], "x.dump")
    return out.getvalue()


def chunks(blob: bytes) -> list[bytes]:
    """The chunks after the header, each with its length."""
    out, at = [], HEADER_SIZE
    while at < len(blob):
        n = LENGTH_SIZE + int.from_bytes(blob[at:at + LENGTH_SIZE], "big")
        out.append(blob[at:at + n])
        at += n
    return out


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK, 5 * CHUNK + 7])
def test_round_trip_of_any_length(size: int) -> None:
    data = os.urandom(size)
    blob = sealed(data)
    assert blob.startswith(MAGIC) and is_encrypted(io.BytesIO(blob))
    assert opened(blob) == data
    # a full last chunk stays the final one: no empty chunk after it, except for no data
    assert len(chunks(blob)) == max(1, -(-size // CHUNK))


def test_the_header_names_the_key_by_fingerprint_and_no_plaintext_is_left() -> None:
    data = b"a prompt nobody else may read " * 200
    blob = sealed(data)
    header = read_header(io.BytesIO(blob), "x.dump")
    assert header.key_id == KEY.fingerprint and header.chunk_size == CHUNK
    assert b"a prompt nobody" not in blob
    assert KEY.secret() not in blob
    # two encryptions of the same data differ (a fresh salt and nonce base each time)
    assert sealed(data)[HEADER_SIZE:] != blob[HEADER_SIZE:]


def test_the_wrong_key_is_refused_naming_the_archives_key_and_the_given_ones() -> None:
    blob = sealed(b"data" * 1000)
    with pytest.raises(BackupError) as refused:
        opened(blob, [OTHER])
    said = str(refused.value)
    assert f"encrypted with backup key {KEY.fingerprint}" in said
    assert OTHER.fingerprint in said and "nothing was changed" in said


def test_any_of_several_keys_opens_it_for_rotation() -> None:
    blob = sealed(b"data" * 1000, key=OTHER)
    assert opened(blob, [KEY, OTHER]) == b"data" * 1000


def test_a_changed_byte_in_a_middle_chunk_is_refused() -> None:
    head = sealed(os.urandom(5 * CHUNK))
    parts = chunks(head)
    damaged = bytearray(parts[2])
    damaged[10] ^= 0x01
    blob = head[:HEADER_SIZE] + b"".join(parts[:2]) + bytes(damaged) + b"".join(parts[3:])
    with pytest.raises(BackupError, match=r"chunk 3 of x\.dump fails authentication"):
        opened(blob)


def test_a_changed_header_is_refused() -> None:
    blob = bytearray(sealed(os.urandom(3 * CHUNK)))
    blob[HEADER_SIZE - 1] ^= 0x01  # the nonce base's last byte: authenticated with chunk 1
    with pytest.raises(BackupError, match="fails authentication"):
        opened(bytes(blob))


def test_a_file_cut_after_a_chunk_is_refused_as_truncated() -> None:
    head = sealed(os.urandom(5 * CHUNK))
    parts = chunks(head)
    blob = head[:HEADER_SIZE] + b"".join(parts[:-1])
    with pytest.raises(BackupError, match=r"x.dump is truncated: it ends after chunk 4"):
        opened(blob)
    with pytest.raises(BackupError, match=r"x.dump is truncated: no chunk"):
        opened(head[:HEADER_SIZE])
    with pytest.raises(BackupError, match=r"x.dump is truncated: its header"):
        opened(head[:HEADER_SIZE - 3])


def test_a_file_cut_inside_a_chunk_or_its_length_is_refused_as_truncated() -> None:
    head = sealed(os.urandom(5 * CHUNK - 7))
    for cut in (100, len(chunks(head)[-1]) - 2):
        with pytest.raises(BackupError, match=r"x\.dump is truncated: it ends inside chunk 5"):
            opened(head[:-cut])


def test_an_appended_or_reordered_chunk_is_refused() -> None:
    head = sealed(os.urandom(5 * CHUNK))
    parts = chunks(head)
    for after in (parts[1], b"x", b"\x00" * 10):  # a chunk, or anything
        with pytest.raises(BackupError, match=r"x\.dump has data after its final chunk \(5\)"):
            opened(head + after)
    short = sealed(os.urandom(5 * CHUNK - 7))  # its final chunk is shorter than the others
    with pytest.raises(BackupError, match=r"x\.dump has data after its final chunk \(5\)"):
        opened(short + chunks(short)[1])
    swapped = head[:HEADER_SIZE] + parts[1] + parts[0] + b"".join(parts[2:])
    with pytest.raises(BackupError, match=r"chunk 1 of x\.dump fails authentication"):
        opened(swapped)
    # another file's final chunk (same key) appended in place of this one's
    other = chunks(sealed(os.urandom(5 * CHUNK)))
    spliced = head[:HEADER_SIZE] + b"".join(parts[:-1]) + other[-1]
    with pytest.raises(BackupError, match=r"chunk 5 of x\.dump fails authentication"):
        opened(spliced)


def test_an_unknown_version_or_a_foreign_file_is_named() -> None:
    blob = bytearray(sealed(b"x"))
    blob[len(MAGIC)] = 9
    with pytest.raises(BackupError, match="format version 9"):
        opened(bytes(blob))
    assert not is_encrypted(io.BytesIO(b"PGDMP\x01\x10\x00"))
    assert not is_encrypted(io.BytesIO(b""))


def test_keys_parse_show_only_their_fingerprint_and_bad_ones_are_named_by_position(
) -> None:
    text = new_backup_key()
    key = BackupKey.parse(text)
    assert text not in repr(key) and text not in str(key)
    assert len(key.fingerprint) == 16 and key.fingerprint in repr(key)
    keys = parse_backup_keys(f"{text}, {new_backup_key()}\n", "ORCH_BACKUP_KEY")
    assert keys[0].fingerprint == key.fingerprint and len(keys) == 2
    with pytest.raises(ConfigurationError) as refused:
        parse_backup_keys(f"{text},not-a-key-at-all", "ORCH_BACKUP_KEY")
    assert "ORCH_BACKUP_KEY: key 2 is not a backup key" in refused.value.message
    assert "not-a-key" not in refused.value.message
    with pytest.raises(ConfigurationError, match="no key in it"):
        parse_backup_keys(" , ", "ORCH_BACKUP_KEY")


def test_keys_come_from_the_key_file_else_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ORCH_BACKUP_KEY", raising=False)  # BackupSettings() reads it
    path = tmp_path / "backup.key"
    made = write_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [k.fingerprint for k in load_backup_keys(BackupSettings(), path)] == [
        made.fingerprint]
    with pytest.raises(BackupError, match="already exists"):
        write_key_file(path)
    text = new_backup_key()
    setting = BackupSettings(backup_key=text)
    assert load_backup_keys(setting, None)[0].fingerprint == BackupKey.parse(text).fingerprint
    assert load_backup_keys(setting, path)[0].fingerprint == made.fingerprint
    assert load_backup_keys(BackupSettings(), None) == []
    path.chmod(0o640)
    with pytest.raises(ConfigurationError, match="group or others may access it"):
        load_backup_keys(BackupSettings(), path)
    with pytest.raises(ConfigurationError, match="cannot read"):
        load_backup_keys(BackupSettings(), tmp_path / "missing.key")


@pytest.mark.parametrize("tmpfile", [True, False], ids=["O_TMPFILE", "unlinked-at-once"])
def test_the_decrypted_archive_is_a_file_without_a_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tmpfile: bool,
) -> None:
    if not tmpfile:  # a system without O_TMPFILE: a named file, unlinked before it is written
        monkeypatch.delattr(os, "O_TMPFILE", raising=False)
    data = os.urandom(5 * CHUNK + 7)
    archive = tmp_path / "x.dump"
    archive.write_bytes(sealed(data))
    with decrypted(archive, [OTHER, KEY]) as plain:
        assert plain.key_id == KEY.fingerprint
        (fd,) = plain.pass_fds
        assert plain.path == Path(f"/dev/fd/{fd}")
        assert os.fstat(fd).st_nlink == 0 and stat.S_IMODE(os.fstat(fd).st_mode) == 0o600
        assert [p.name for p in tmp_path.iterdir()] == ["x.dump"]
        # each opening of its name in /dev/fd reads it from its start
        for _ in range(2):
            assert plain.path.read_bytes() == data
    with pytest.raises(OSError):
        os.fstat(fd)  # closed: the file is gone


def test_where_dev_fd_shares_the_offset_the_decrypted_archive_has_a_name_until_exit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """macOS and the BSDs: /dev/fd/N is the descriptor itself, at its end once written, and
    pg_restore read nothing from it."""
    monkeypatch.setattr(crypt, "REOPENS_AT_START", False)
    data = os.urandom(2 * CHUNK + 3)
    archive = tmp_path / "x.dump"
    archive.write_bytes(sealed(data))
    with decrypted(archive, [KEY]) as plain:
        assert plain.pass_fds == () and plain.path.parent == tmp_path
        assert plain.path.name.startswith(".orch-") and plain.path.read_bytes() == data
        assert stat.S_IMODE(plain.path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["x.dump"]


@pytest.mark.parametrize(("call", "error"), [("write", errno.ENOSPC), ("fsync", errno.EIO)])
def test_a_key_file_that_cannot_be_written_is_not_left_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str, error: int,
) -> None:
    path = tmp_path / "backup.key"

    def failing(*args: object) -> int:
        raise OSError(error, os.strerror(error))

    with monkeypatch.context() as m:
        m.setattr(os, call, failing)
        with pytest.raises(BackupError) as refused:
            write_key_file(path)
    assert str(refused.value) == (f"cannot write {path}: {os.strerror(error)}; nothing "
                                  "was kept")
    assert list(tmp_path.iterdir()) == []
    made = write_key_file(path)  # the retry is not refused as "already exists"
    assert [k.fingerprint for k in load_backup_keys(BackupSettings(), path)] == [
        made.fingerprint]


@pytest.mark.parametrize(("at", "said"), [
    (0, "x.dump is not an encrypted backup"),
    (8, "x.dump is an encrypted backup of format version 0, which this code does not know"),
    (10, "chunk 1 of x.dump fails authentication"),  # chunk size
    (15, "x.dump is encrypted with backup key {changed}, which is not among the given "
         "key(s) ({key}): give that key (if no key has that fingerprint, the archive's header "
         "is damaged); nothing was changed"),  # the key's fingerprint
    (30, "chunk 1 of x.dump fails authentication"),  # salt
    (45, "chunk 1 of x.dump fails authentication"),  # nonce base
], ids=["magic", "version", "chunk-size", "fingerprint", "salt", "nonce-base"])
def test_a_changed_header_byte_is_refused_as_what_it_changed(at: int, said: str) -> None:
    """As docs/operations.md says."""
    blob = bytearray(sealed(os.urandom(3 * CHUNK)))
    blob[at] ^= 0x01
    changed = bytes(blob[13:21]).hex()
    with pytest.raises(BackupError) as refused:
        opened(bytes(blob))
    assert str(refused.value).startswith(said.format(changed=changed, key=KEY.fingerprint))
