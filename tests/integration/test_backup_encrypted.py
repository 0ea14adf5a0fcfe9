"""Encrypted backups: with a backup key, `backup create` writes the archive encrypted (no
plaintext on disk, its checksum that of the encrypted file) and `restore` opens it with that
key, among others; the wrong key, no key, a changed byte, a removed or an appended chunk are
each refused in one line before the target is touched; an unencrypted backup restores with
or without a key; no key reaches the output."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import Engine, text

from orchestrator.backup import BackupError, create_backup, crypt, restore_backup
from orchestrator.backup.backupkey import BackupKey, new_backup_key
from orchestrator.backup.checksum import sidecar
from orchestrator.backup.crypt import HEADER_SIZE, LENGTH_SIZE, MAGIC
from orchestrator.embedded.scratch import scratch_database
from orchestrator.store.engine import make_engine

from .backup_helpers import TOOLS, contents, occupied_fixture, populate  # noqa: F401
from .ledger_helpers import assert_sound

ROOT = Path(__file__).resolve().parents[2]
KEY_TEXT, OTHER_TEXT = new_backup_key(), new_backup_key()
KEY, OTHER = BackupKey.parse(KEY_TEXT), BackupKey.parse(OTHER_TEXT)
PROMPT = "a lighthouse keeper's diary, private-prompt-7f3a9c"
CHUNK = 4096  # small chunks: the archive has many, so that one in the middle can be damaged
SCHEMA_TEXT = b"ledger_entries_append_only"  # in a plain archive as it is (not compressed)


@pytest.fixture(scope="module")
def made(servers: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[tuple[Path, Path, dict[str, object]]]:
    """An encrypted and a plain backup of one populated database holding PROMPT, and that
    database's contents."""
    where = tmp_path_factory.mktemp("encrypted")
    with scratch_database(servers[0]) as url, pytest.MonkeyPatch.context() as mp:
        mp.setattr(crypt, "DEFAULT_CHUNK", CHUNK)
        engine = make_engine(url, pool_size=2)
        populate(engine, jobs=8)
        with engine.begin() as conn:
            conn.execute(text(
                "UPDATE jobs SET spec = jsonb_set(spec, '{input,prompt}', to_jsonb("
                "CAST(:p AS text))) WHERE id = (SELECT min(id::text)::uuid FROM jobs)"),
                {"p": PROMPT})
        before = contents(engine)
        enc = create_backup(url, where / "enc.dump", TOOLS, key=KEY)
        assert enc.key_id == KEY.fingerprint and f"encrypted with backup key {KEY.fingerprint}" \
            in enc.summary()
        plain = create_backup(url, where / "plain.dump", TOOLS)
        assert plain.key_id is None and "backup key" not in plain.summary()
        yield enc.path, plain.path, before


def test_an_encrypted_backup_holds_no_plaintext_and_its_checksum_is_of_the_file_as_written(
    made: tuple[Path, Path, dict[str, object]],
) -> None:
    enc, plain, _ = made
    data = enc.read_bytes()
    assert data.startswith(MAGIC) and len(chunks(data)[1]) > 3
    assert SCHEMA_TEXT in plain.read_bytes() and SCHEMA_TEXT not in data
    assert PROMPT.encode() not in data and KEY.secret() not in data
    assert KEY_TEXT.encode() not in data
    # the prompt is in it all the same, for whoever has the key
    with crypt.decrypted(enc, [KEY]) as opened:
        jobs = subprocess.run([TOOLS.path("pg_restore"), "--data-only", "--table=jobs",
                               "--file=-", str(opened.path)], capture_output=True,
                              check=True, pass_fds=opened.pass_fds)
    assert PROMPT.encode() in jobs.stdout and opened.key_id == KEY.fingerprint
    assert sidecar(enc).read_text() == f"{hashlib.sha256(data).hexdigest()}  enc.dump\n"
    checked = subprocess.run(["sha256sum", "--check", sidecar(enc).name], cwd=enc.parent,
                             capture_output=True, text=True, check=False)
    assert checked.returncode == 0 and checked.stdout == "enc.dump: OK\n"
    assert sorted(p.name for p in enc.parent.iterdir()) == [
        "enc.dump", "enc.dump.sha256", "plain.dump", "plain.dump.sha256"]


def test_it_restores_with_its_key_among_others_and_the_ledger_is_sound(
    made: tuple[Path, Path, dict[str, object]], servers: tuple[str, str], tmp_path: Path,
) -> None:
    enc, _, before = made
    copy = copied(enc, tmp_path, enc.read_bytes())
    with scratch_database(servers[0], migrate=False) as fresh:
        restored = restore_backup(fresh, copy, TOOLS, keys=[OTHER, KEY])
        assert restored.problems == [] and restored.encrypted_with == KEY.fingerprint
        assert restored.counts["jobs"] == 8
        engine = make_engine(fresh, pool_size=2)
        try:
            assert contents(engine) == before
            assert_sound(engine)
        finally:
            engine.dispose()
    # the decrypted archive was a temporary file beside it, gone now
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc.dump", "enc.dump.sha256"]


def copied(archive: Path, to: Path, data: bytes) -> Path:
    """``data`` under the archive's name in ``to`` with a checksum file that matches it: a
    backup changed by someone who rewrote its checksum too, so that the encryption is what
    must refuse it."""
    copy = to / archive.name
    copy.write_bytes(data)
    sidecar(copy).write_text(f"{hashlib.sha256(data).hexdigest()}  {copy.name}\n")
    sidecar(copy).chmod(0o600)
    return copy


def refused(url: str, path: Path, keys: list[BackupKey]) -> str:
    with pytest.raises(BackupError) as caught:
        restore_backup(url, path, TOOLS, force=True, keys=keys)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, sidecar(path).name]
    return str(caught.value)


def test_the_wrong_key_or_none_is_refused_naming_the_archives_key_and_nothing_changes(
    made: tuple[Path, Path, dict[str, object]], occupied: tuple[str, Engine], tmp_path: Path,
) -> None:
    url, engine = occupied
    before = contents(engine)
    copy = copied(made[0], tmp_path, made[0].read_bytes())
    said = refused(url, copy, [OTHER])
    assert said == (f"{copy} is encrypted with backup key {KEY.fingerprint}, which is not "
                    f"among the given key(s) ({OTHER.fingerprint}): give that key (if no key "
                    "has that fingerprint, the archive's header is damaged); nothing was "
                    "changed")
    said = refused(url, copy, [])
    assert said.startswith(f"{copy} is encrypted (backup key {KEY.fingerprint}): give that key "
                           "with --key-file or ORCH_BACKUP_KEY")
    assert contents(engine) == before


def chunks(data: bytes) -> tuple[bytes, list[bytes]]:
    """The header, and the chunks after it (each with its length)."""
    out, at = [], HEADER_SIZE
    while at < len(data):
        n = LENGTH_SIZE + int.from_bytes(data[at:at + LENGTH_SIZE], "big")
        out.append(data[at:at + n])
        at += n
    return data[:HEADER_SIZE], out


@pytest.mark.parametrize(("change", "said"), [
    ("flip", "chunk {middle} of {path} fails authentication: the backup is damaged or was "
             "changed since it was made; refused, nothing was changed"),
    ("cut", "{path} is truncated: it ends after chunk {last_but_one}, which is not its final "
            "one; refused, nothing was changed"),
    ("append", "{path} has data after its final chunk ({last}): something was appended; "
               "refused, nothing was changed"),
], ids=["flipped-byte", "last-chunk-removed", "chunk-appended"])
def test_a_changed_truncated_or_extended_archive_is_refused_and_nothing_changes(
    made: tuple[Path, Path, dict[str, object]], occupied: tuple[str, Engine], tmp_path: Path,
    change: str, said: str,
) -> None:
    url, engine = occupied
    before = contents(engine)
    header, parts = chunks(made[0].read_bytes())
    n, middle = len(parts), len(parts) // 2
    if change == "flip":
        damaged = bytearray(parts[middle])
        damaged[100] ^= 0x01
        parts[middle] = bytes(damaged)
    elif change == "cut":
        parts = parts[:-1]
    else:
        parts.append(parts[1])
    copy = copied(made[0], tmp_path, header + b"".join(parts))
    assert refused(url, copy, [KEY]) == said.format(
        path=copy, middle=middle + 1, last_but_one=n - 1, last=n)
    assert contents(engine) == before


def test_an_unencrypted_backup_restores_without_a_key_and_with_one(
    made: tuple[Path, Path, dict[str, object]], servers: tuple[str, str],
) -> None:
    plain, before = made[1], made[2]
    for keys in ([], [KEY]):
        with scratch_database(servers[0], migrate=False) as fresh:
            restored = restore_backup(fresh, plain, TOOLS, keys=keys)
            assert restored.problems == [] and restored.encrypted_with is None
            engine = make_engine(fresh, pool_size=1)
            assert contents(engine) == before


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", "backup", *args],
                          cwd=ROOT, env={**{k: v for k, v in os.environ.items()
                                            if k != "ORCH_BACKUP_KEY"}, **env},
                          capture_output=True, text=True, timeout=300)


def test_the_command_encrypts_with_a_key_file_or_the_setting_and_never_shows_a_key(
    servers: tuple[str, str], tmp_path: Path,
) -> None:
    keyfile = tmp_path / "backup.key"
    made_key = cli({}, "new-key", str(keyfile))
    assert made_key.returncode == 0, made_key.stderr
    key_text = keyfile.read_text().strip()
    key = BackupKey.parse(key_text)
    assert made_key.stdout == (f"backup key {key.fingerprint} written to {keyfile}: keep a "
                               "copy apart from the backups\n")
    again = cli({}, "new-key", str(keyfile))
    assert again.returncode == 1 and "already exists" in again.stderr
    assert keyfile.read_text().strip() == key_text

    with scratch_database(servers[0]) as url:
        engine = make_engine(url, pool_size=2)
        populate(engine, jobs=4)
        engine.dispose()
        env = {"ORCH_DATABASE_URL": url, "ORCH_PG_BIN_DIR": str(TOOLS.bin_dir)}
        by_file, by_setting = tmp_path / "file.dump", tmp_path / "setting.dump"
        plain, blank = tmp_path / "plain.dump", tmp_path / "blank.dump"
        outputs = [cli(env, "create", "--key-file", str(keyfile), str(by_file)),
                   cli({**env, "ORCH_BACKUP_KEY": f"{key_text},{OTHER_TEXT}"}, "create",
                       str(by_setting)),
                   cli(env, "create", str(plain)),
                   # blank is unset: it wrote a plaintext archive without a word about it
                   cli({**env, "ORCH_BACKUP_KEY": " \t "}, "create", str(blank))]
        for done in outputs[:2]:
            assert done.returncode == 0, done.stderr
            assert f"encrypted with backup key {key.fingerprint}" in done.stdout
            assert done.stderr == ""
        for done, where in ((outputs[2], plain), (outputs[3], blank)):
            assert done.returncode == 0 and "backup key" not in done.stdout
            assert done.stderr == (f"warning: {where} is not encrypted: no backup key (no "
                                   "--key-file, and ORCH_BACKUP_KEY is unset or empty)\n")
            assert not where.read_bytes().startswith(MAGIC)
        assert by_file.read_bytes().startswith(MAGIC)
        assert by_setting.read_bytes().startswith(MAGIC)

        no_key = cli(env, "restore", "--force", str(by_file))
        assert no_key.returncode == 1 and no_key.stderr.count("\n") == 1
        assert f"is encrypted (backup key {key.fingerprint})" in no_key.stderr
        wrong = cli({**env, "ORCH_BACKUP_KEY": OTHER_TEXT}, "restore", "--force", str(by_file))
        assert wrong.returncode == 1 and wrong.stderr.count("\n") == 1
        assert f"{OTHER.fingerprint}): give that key" in wrong.stderr
        keyfile.chmod(0o644)
        loose = cli(env, "restore", "--force", "--key-file", str(keyfile), str(by_file))
        assert loose.returncode == 1 and "group or others may access it" in loose.stderr
        keyfile.chmod(0o600)
        restored = [
            cli(env, "restore", "--force", "--key-file", str(keyfile), str(by_setting)),
            cli({**env, "ORCH_BACKUP_KEY": f"{OTHER_TEXT},{key_text}"}, "restore", "--force",
                str(by_file)),
            cli({**env, "ORCH_BACKUP_KEY": key_text}, "restore", "--force", str(plain))]
        for done in restored:
            assert done.returncode == 0, done.stderr
            assert "4 jobs" in done.stdout and "ledger audit clean" in done.stdout
        assert f"decrypted with backup key {key.fingerprint}" in restored[0].stdout
        assert restored[2].stderr == (f"note: {plain} is not encrypted: restored without "
                                      "the backup key\n")
    everything = "".join(d.stdout + d.stderr for d in
                         [made_key, again, *outputs, no_key, wrong, loose, *restored])
    assert key_text not in everything and OTHER_TEXT not in everything
    assert not list(tmp_path.glob(".*"))  # no decrypted or partial file left


# pg_dump, pg_restore and psql in a directory of their own (ORCH_PG_BIN_DIR): each call
# records the program and its arguments, what the watched directories hold while it runs (the
# decrypted archive is open while pg_restore does) and its environment; a loading pg_restore
# (--no-owner) waits for the file $WATCH_GO when $WATCH_HOLD is set
_WRAPPER = """#!/bin/sh
tool=$(basename "$0")
n=$(date +%s%N)-$$
{ echo "tool $tool"; echo "args $*"
  for d in $WATCH_DIRS; do echo "dir $d"; ls -A "$d"; done; } > "$WATCH_LOG/$n"
env > "$WATCH_LOG/$n.env"
case "$tool $*" in "pg_restore "*--no-owner*|"pg_dump "*--snapshot=*)
  if [ -n "$WATCH_HOLD" ]; then
    touch "$WATCH_LOG/loading"
    while [ ! -e "$WATCH_GO" ]; do sleep 0.05; done
  fi;;
esac
exec {real}/$tool "$@"
"""


@pytest.fixture()
def watched(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A tools directory of recording programs, and the environment they record into
    ``log`` with: the archive directory ``archives`` and the temporary directory ``tmp``
    (TMPDIR) are watched."""
    tools, log = tmp_path / "bin", tmp_path / "log"
    archives, tmp = tmp_path / "archives", tmp_path / "tmp"
    for d in (tools, log, archives, tmp):
        d.mkdir()
    for tool in ("pg_dump", "pg_restore", "psql"):
        (tools / tool).write_text(_WRAPPER.replace("{real}", str(TOOLS.bin_dir)))
        (tools / tool).chmod(0o755)
    return tmp_path, {"ORCH_PG_BIN_DIR": str(tools), "TMPDIR": str(tmp),
                      "WATCH_LOG": str(log), "WATCH_DIRS": f"{archives} {tmp}",
                      "WATCH_GO": str(tmp_path / "go")}


@dataclass
class Call:
    tool: str
    args: str
    dirs: dict[str, list[str]]  # each watched directory's entries while it ran
    env: dict[str, str]


def calls(log: Path, tool: str | None = None) -> list[Call]:
    """The recorded calls (of ``tool``), in order."""
    out = []
    for record in sorted(p for p in log.iterdir() if p.name[0].isdigit()
                         and not p.name.endswith(".env")):
        call = Call("", "", {}, {})
        current = ""
        for line in record.read_text().splitlines():
            if line.startswith("tool "):
                call.tool = line[5:]
            elif line.startswith("args "):
                call.args = line[5:]
            elif line.startswith("dir "):
                current = line[4:]
                call.dirs[current] = []
            elif line:
                call.dirs[current].append(line)
        call.env = dict(line.split("=", 1) for line in
                        Path(f"{record}.env").read_text().splitlines() if "=" in line)
        out.append(call)
    return [c for c in out if tool is None or c.tool == tool]


def test_the_decrypted_archive_never_has_a_name_on_disk(
    made: tuple[Path, Path, dict[str, object]], occupied: tuple[str, Engine],
    watched: tuple[Path, dict[str, str]],
) -> None:
    url, engine = occupied
    root, env = watched
    copy = copied(made[0], root / "archives", made[0].read_bytes())
    done = cli({**env, "ORCH_DATABASE_URL": url, "ORCH_BACKUP_KEY": KEY_TEXT}, "restore",
               "--force", str(copy))
    assert done.returncode == 0, done.stderr
    assert "8 jobs" in done.stdout and contents(engine) == made[2]
    seen = calls(root / "log", "pg_restore")
    # listed, its revision read, loaded: each call read the unnamed file from its start
    assert [c.args.split()[0] for c in seen] == ["--list", "--data-only", "--no-owner"]
    for c in seen:
        assert c.dirs[str(copy.parent)] == [copy.name, sidecar(copy).name]
        assert all(name.startswith("orch-pgpass-") for name in c.dirs[env["TMPDIR"]])
        assert c.args.endswith(tuple(f"/dev/fd/{n}" for n in range(3, 1024)))
    assert sorted(p.name for p in copy.parent.iterdir()) == [copy.name, sidecar(copy).name]
    assert not list(Path(env["TMPDIR"]).iterdir())


def test_a_restore_stopped_by_sigterm_leaves_no_plaintext_and_the_database_as_it_was(
    made: tuple[Path, Path, dict[str, object]], occupied: tuple[str, Engine],
    watched: tuple[Path, dict[str, str]],
) -> None:
    url, engine = occupied
    before = contents(engine)
    root, env = watched
    copy = copied(made[0], root / "archives", made[0].read_bytes())
    full = {**{k: v for k, v in os.environ.items() if k != "ORCH_BACKUP_KEY"}, **env,
            "ORCH_DATABASE_URL": url, "ORCH_BACKUP_KEY": KEY_TEXT, "WATCH_HOLD": "1"}
    restore = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "backup", "restore", "--force", str(copy)],
        cwd=ROOT, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        loading = root / "log" / "loading"
        deadline = time.monotonic() + 120
        while not loading.exists() and restore.poll() is None:
            assert time.monotonic() < deadline, "pg_restore never started loading"
            time.sleep(0.05)
        assert restore.poll() is None, restore.communicate()
        restore.send_signal(signal.SIGTERM)
        out, err = restore.communicate(timeout=60)
    finally:
        (root / "go").touch()  # a pg_restore left behind goes on, into a closed pipe
        if restore.poll() is None:
            restore.kill()
            restore.wait()
    assert sorted(p.name for p in copy.parent.iterdir()) == [copy.name, sidecar(copy).name]
    assert not list(Path(env["TMPDIR"]).iterdir())  # no passfile either
    assert contents(engine) == before
    assert restore.returncode == 128 + signal.SIGTERM, err
    assert err == "error: stopped by SIGTERM\n" and out == ""


def test_a_create_stopped_by_sigterm_leaves_no_partial_archive(
    occupied: tuple[str, Engine], watched: tuple[Path, dict[str, str]],
) -> None:
    """Unencrypted, the partial archive is the database in plaintext. Before, SIGTERM
    ended ``backup create`` in place and left ``.X.<pid>.partial`` (and the passfile)."""
    url, _ = occupied
    root, env = watched
    archive = root / "archives" / "b.dump"
    full = {**{k: v for k, v in os.environ.items() if k != "ORCH_BACKUP_KEY"}, **env,
            "ORCH_DATABASE_URL": url, "WATCH_HOLD": "1"}
    create = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "backup", "create", str(archive)],
        cwd=ROOT, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        loading = root / "log" / "loading"  # pg_dump has started, its file made
        deadline = time.monotonic() + 120
        while not loading.exists() and create.poll() is None:
            assert time.monotonic() < deadline, "pg_dump never started"
            time.sleep(0.05)
        assert create.poll() is None, create.communicate()
        assert [p.name[-8:] for p in archive.parent.iterdir()] == [".partial"]
        create.send_signal(signal.SIGTERM)
        out, err = create.communicate(timeout=60)
    finally:
        (root / "go").touch()
        if create.poll() is None:
            create.kill()
            create.wait()
    assert not list(archive.parent.iterdir())
    assert not list(Path(env["TMPDIR"]).iterdir())  # no passfile either
    assert create.returncode == 128 + signal.SIGTERM, err
    assert err == "error: stopped by SIGTERM\n" and out == ""


def test_a_target_it_would_refuse_is_refused_before_any_decryption(
    made: tuple[Path, Path, dict[str, object]], occupied: tuple[str, Engine], tmp_path: Path,
) -> None:
    url, engine = occupied
    before = contents(engine)
    # a damaged chunk in the middle: decrypting would find it, checking the target does not
    header, parts = chunks(made[0].read_bytes())
    damaged = bytearray(parts[len(parts) // 2])
    damaged[100] ^= 0x01
    parts[len(parts) // 2] = bytes(damaged)
    copy = copied(made[0], tmp_path, header + b"".join(parts))
    with pytest.raises(BackupError) as refused:
        restore_backup(url, copy, TOOLS, keys=[KEY])  # no --force
    assert "is not empty (" in str(refused.value)
    with engine.connect(), pytest.raises(BackupError) as refused:  # another session
        restore_backup(url, copy, TOOLS, force=True, keys=[KEY])
    assert "1 other session(s) are connected" in str(refused.value)
    assert contents(engine) == before


def test_no_key_or_other_orch_setting_reaches_pg_dump_pg_restore_or_psql(
    occupied: tuple[str, Engine], watched: tuple[Path, dict[str, str]],
) -> None:
    url, _ = occupied
    root, env = watched
    secret_key = Fernet.generate_key().decode()
    env = {**env, "ORCH_DATABASE_URL": url, "ORCH_BACKUP_KEY": KEY_TEXT,
           "ORCH_SECRET_KEY": secret_key, "ORCH_API_KEY": "orch-api-key-not-for-pg"}
    archive = root / "archives" / "b.dump"
    made = cli(env, "create", str(archive))
    assert made.returncode == 0, made.stderr
    restored = cli(env, "restore", "--force", str(archive))
    assert restored.returncode == 0, restored.stderr
    seen = calls(root / "log")
    assert {c.tool for c in seen} == {"pg_dump", "pg_restore", "psql"}
    for c in seen:
        assert c.env["WATCH_LOG"] and c.env["PATH"]  # the rest is passed on
        assert not [k for k in c.env if k.startswith("ORCH_")], (c.tool, c.args)
        values = "\n".join(c.env.values())
        assert KEY_TEXT not in values and secret_key not in values
        assert "orch-api-key-not-for-pg" not in values
