"""What `orchestrator backup` refuses, with one line and nothing changed: an archive that
differs from its checksum file (one damaged byte anywhere, the schema text included), has
none (unless --skip-checksum) or a malformed one; an archive of a
newer schema, a target that is not empty (unless --force), a target others are connected
to, a truncated archive; an archive whose data fails to load is rolled back (also with
--force); and the command itself:
the password of the database URL is in no output, and errors are one line."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import pytest
from alembic.script import ScriptDirectory
from psycopg import sql
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from orchestrator.backup import BackupError, Target, create_backup, restore_backup
from orchestrator.backup import archive as archive_module
from orchestrator.backup.checksum import sidecar
from orchestrator.embedded.scratch import scratch_database
from orchestrator.store.engine import make_engine
from orchestrator.store.migrate import alembic_config

from .backup_helpers import TOOLS, contents, occupied_fixture, populate  # noqa: F401
from .ledger_helpers import assert_sound

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def archive(servers: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A backup of a populated database."""
    path = tmp_path_factory.mktemp("backup") / "orch.dump"
    with scratch_database(servers[0]) as url:
        engine = make_engine(url, pool_size=2)
        try:
            populate(engine, jobs=8)
        finally:
            engine.dispose()
        create_backup(url, path, TOOLS)
    return path


def test_an_archive_of_a_newer_schema_is_refused_and_nothing_changes(
    servers: tuple[str, str], tmp_path: Path,
) -> None:
    with scratch_database(servers[0]) as url:
        engine = make_engine(url, pool_size=1)
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '0042_future'"))
        engine.dispose()
        create_backup(url, tmp_path / "new.dump", TOOLS)
    with scratch_database(servers[0], migrate=False) as fresh:
        with pytest.raises(BackupError) as refused:
            restore_backup(fresh, tmp_path / "new.dump", TOOLS)
        assert "schema revision 0042_future, which this code does not know" in str(refused.value)
        head = ScriptDirectory.from_config(alembic_config("postgresql://")).get_current_head()
        assert f"its newest is {head}" in str(refused.value)
        engine = make_engine(fresh, pool_size=1)
        with engine.connect() as conn:
            assert conn.execute(text(
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")).scalar_one() == 0
        engine.dispose()


def test_a_target_that_is_not_empty_is_refused_without_force_and_replaced_with_it(
    archive: Path, occupied: tuple[str, Engine],
) -> None:
    url, engine = occupied
    before = contents(engine)
    with pytest.raises(BackupError) as refused:
        restore_backup(url, archive, TOOLS)
    said = str(refused.value)
    assert "is not empty" in said and "4 jobs" in said and "--force replaces all of it" in said
    assert contents(engine) == before

    restored = restore_backup(url, archive, TOOLS, force=True)
    assert restored.problems == [] and restored.counts["jobs"] == 8
    assert_sound(engine)


def test_a_target_with_other_sessions_is_refused(
    archive: Path, occupied: tuple[str, Engine],
) -> None:
    url, engine = occupied
    before = contents(engine)
    # another session, as a running worker would be
    with engine.connect(), pytest.raises(BackupError, match="1 other session"):
        restore_backup(url, archive, TOOLS, force=True)
    assert contents(engine) == before


def test_a_session_that_ends_while_the_restore_looks_is_waited_for(
    archive: Path, occupied: tuple[str, Engine], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A session closed just before (a service just stopped, or the restore's own first
    look) stays in pg_stat_activity until its server process has exited: the restore waits
    for it rather than refusing, as it did on a busy machine."""
    url, engine = occupied
    seen = threading.Event()
    look = archive_module._target_state

    def looked(target: Target) -> archive_module.TargetState:
        state = look(target)
        if state.other_sessions:
            seen.set()
        return state

    monkeypatch.setattr(archive_module, "_target_state", looked)
    other = engine.connect()

    def close_once_seen() -> None:
        seen.wait(60)
        other.close()
        engine.dispose()

    closer = threading.Thread(target=close_once_seen)
    closer.start()
    try:
        report = restore_backup(url, archive, TOOLS, force=True)
    finally:
        seen.set()
        closer.join(60)
    assert report.counts["jobs"] == 8  # the archive's, not the 4 it replaced


def copied_with_its_checksum(archive: Path, to: Path, data: bytes) -> Path:
    """``data`` under the archive's name in ``to``, with the archive's checksum file beside
    it: a backup copied elsewhere as the docs say, then damaged."""
    copy = to / archive.name
    copy.write_bytes(data)
    shutil.copy(sidecar(archive), sidecar(copy))
    return copy


def test_a_truncated_archive_is_refused_before_anything_changes(
    archive: Path, occupied: tuple[str, Engine], tmp_path: Path,
) -> None:
    url, engine = occupied
    before = contents(engine)
    data = archive.read_bytes()
    cut = copied_with_its_checksum(archive, tmp_path, data[: len(data) * 3 // 4])
    with pytest.raises(BackupError, match="differs from its checksum"):
        restore_backup(url, cut, TOOLS, force=True)
    # unchecked, pg_restore's reading of the archive refuses it too
    with pytest.raises(BackupError, match="is not a pg_dump archive"):
        restore_backup(url, cut, TOOLS, force=True, skip_checksum=True)
    assert contents(engine) == before


def test_an_archive_whose_data_fails_to_load_is_rolled_back_even_with_force(
    archive: Path, occupied: tuple[str, Engine], servers: tuple[str, str], tmp_path: Path,
) -> None:
    """Uncompressed, so that one job's spec can be made invalid JSON in place: the
    archive reads, the wipe and the tables before it load, then that COPY fails."""
    url, engine = occupied
    before = contents(engine)
    bad = tmp_path / "bad.dump"
    with scratch_database(servers[0]) as source:
        source_engine = make_engine(source, pool_size=2)
        populate(source_engine, jobs=4)
        source_engine.dispose()
        with Target(source).environment() as env:
            subprocess.run([TOOLS.path("pg_dump"), "--format=custom", "--compress=0",
                            f"--file={bad}"], env=env, check=True)
    data = bad.read_bytes()
    assert data.count(b'"duration_s": 4}') == 4
    bad.write_bytes(data.replace(b'"duration_s": 4}', b'"duration_s": 4,', 1))
    # made by hand, without a checksum: what is tested is the load's rollback
    with pytest.raises(BackupError, match=r"rolled back \(nothing was changed\): .*json"):
        restore_backup(url, bad, TOOLS, force=True, skip_checksum=True)
    assert contents(engine) == before


def test_an_archive_whose_table_of_contents_is_not_utf8_is_read_not_a_decode_error(
    archive: Path, occupied: tuple[str, Engine], servers: tuple[str, str], tmp_path: Path,
) -> None:
    """One damaged byte in an entry's name (which pg_restore prints in its listing and in
    comments only) made the revision check fail with "'utf-8' codec can't decode byte",
    which names neither the file nor what is wrong; the archive's contents are intact, so
    unchecked (its checksum refuses it: test below) it restores, equal to a restore of the
    undamaged one."""
    url, engine = occupied
    with scratch_database(servers[0], migrate=False) as fresh:
        restore_backup(fresh, archive, TOOLS)
        clean_engine = make_engine(fresh, pool_size=1)
        clean = contents(clean_engine)
    data = archive.read_bytes()
    at = data.index(b"ledger_entries_append_only")  # the function's name in the TOC
    damaged = tmp_path / "damaged.dump"
    damaged.write_bytes(data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:])
    restored = restore_backup(url, damaged, TOOLS, force=True, skip_checksum=True)
    assert restored.problems == [] and restored.counts["jobs"] == 8
    assert contents(engine) == clean


def test_an_archive_with_one_damaged_byte_in_a_ledger_function_is_refused(
    archive: Path, servers: tuple[str, str], tmp_path: Path,
) -> None:
    """One byte of orch_end_job's body changed (backend -> backene) loaded, and the restore
    ended "ledger audit clean"; the first job to end then failed with UndefinedColumn.
    pg_restore does not check the schema text: the checksum kept with the archive does."""
    data = archive.read_bytes()
    good = b"backend = COALESCE(p_backend, j.backend)"
    assert data.count(good) == 1
    damaged = copied_with_its_checksum(
        archive, tmp_path, data.replace(good, b"backene" + good[len(b"backend"):]))
    with scratch_database(servers[0], migrate=False) as fresh:
        with pytest.raises(BackupError) as refused:
            restore_backup(fresh, damaged, TOOLS)
        assert str(refused.value) == (
            f"{damaged} differs from its checksum in {sidecar(damaged)}: the backup is "
            "damaged or was changed since it was made; refused, nothing was changed")
        assert tables(fresh) == 0


def tables(url: str) -> int:
    engine = make_engine(url, pool_size=1)
    try:
        with engine.connect() as conn:
            return conn.execute(text(
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")).scalar_one()
    finally:
        engine.dispose()


def test_the_checksum_file_is_sha256sums_own_line_and_the_archives_mode(
    archive: Path,
) -> None:
    """Operators check it with standard tools: `sha256sum X` writes the very same file."""
    side = sidecar(archive)
    made = subprocess.run(["sha256sum", archive.name], cwd=archive.parent,
                          capture_output=True, text=True, check=True)
    assert side.read_text() == made.stdout
    assert stat.S_IMODE(side.stat().st_mode) == stat.S_IMODE(archive.stat().st_mode) == 0o600
    checked = subprocess.run(["sha256sum", "--check", side.name], cwd=archive.parent,
                             capture_output=True, text=True, check=False)
    assert checked.returncode == 0 and checked.stdout == f"{archive.name}: OK\n"


def test_an_archive_without_its_checksum_file_is_refused_unless_skipped(
    archive: Path, servers: tuple[str, str], tmp_path: Path,
) -> None:
    alone = tmp_path / archive.name
    shutil.copy(archive, alone)
    with scratch_database(servers[0], migrate=False) as fresh:
        with pytest.raises(BackupError) as refused:
            restore_backup(fresh, alone, TOOLS)
        assert str(refused.value).startswith(
            f"{sidecar(alone)} not found: copy the checksum file with the backup, or pass "
            "--skip-checksum to restore without checking")
        assert tables(fresh) == 0
        restored = restore_backup(fresh, alone, TOOLS, skip_checksum=True)
        assert restored.problems == [] and restored.counts["jobs"] == 8


@pytest.mark.parametrize(("written", "said"), [
    (b"", "is not a checksum file: expected one line '<64 hex digits>  orch.dump'"),
    (b"d41d8cd98f00b204e9800998ecf8427e  orch.dump\n", "is not a checksum file"),  # MD5's
    (b"%s  orch.dump\n%s  orch.dump\n" % (b"0" * 64, b"0" * 64), "is not a checksum file"),
    (b"%sx  orch.dump\n" % (b"0" * 63), "is not a checksum file"),
    (b"\xff\xfe  orch.dump\n", "is not a checksum file"),
    (b"%s  other.dump\n" % (b"0" * 64),
     "is the checksum of 'other.dump', not of 'orch.dump'"),
], ids=["empty", "md5", "two-lines", "not-hex", "not-utf8", "another-file"])
def test_a_malformed_checksum_file_is_refused_before_anything_changes(
    archive: Path, occupied: tuple[str, Engine], tmp_path: Path, written: bytes, said: str,
) -> None:
    url, engine = occupied
    before = contents(engine)
    copy = copied_with_its_checksum(archive, tmp_path, archive.read_bytes())
    sidecar(copy).write_bytes(written)
    with pytest.raises(BackupError) as refused:
        restore_backup(url, copy, TOOLS, force=True)
    assert str(refused.value).startswith(f"{sidecar(copy)} {said}")
    assert contents(engine) == before


@pytest.mark.parametrize("name", ["a\\b.dump", "a\nb.dump", "a\rb.dump"])
def test_a_backup_name_its_checksum_file_could_not_hold_is_refused_before_dumping(
    tmp_path: Path, name: str,
) -> None:
    """sha256sum's format would need the name escaped; refused, with nothing written and
    no database asked (the URL leads nowhere)."""
    with pytest.raises(BackupError, match="cannot contain a backslash or a line break"):
        create_backup("postgresql+psycopg://nobody@127.0.0.1:1/none", tmp_path / name, TOOLS)
    assert list(tmp_path.iterdir()) == []


def test_a_checksum_in_capitals_or_binary_mode_is_accepted_as_sha256sum_accepts_it(
    archive: Path, servers: tuple[str, str], tmp_path: Path,
) -> None:
    copy = copied_with_its_checksum(archive, tmp_path, archive.read_bytes())
    hexdigest = sidecar(archive).read_text().split()[0]
    sidecar(copy).write_text(f"{hexdigest.upper()} *{copy.name}\n")
    with scratch_database(servers[0], migrate=False) as fresh:
        assert restore_backup(fresh, copy, TOOLS).counts["jobs"] == 8


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", "backup", *args],
                          cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=300)


def test_the_command_keeps_the_password_out_of_its_output_and_errors_are_one_line(
    servers: tuple[str, str], tmp_path: Path,
) -> None:
    secret = "pa:ss\\w0rd-not-for-logs"
    with scratch_database(servers[0]) as url:
        # a role of its own whose password has the passfile's special characters, so the
        # server really checks what the command hands pg_dump
        admin = make_url(url).set(drivername="postgresql")
        with psycopg.connect(admin.render_as_string(hide_password=False),
                             autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS backup_tester"))
            conn.execute(sql.SQL("CREATE ROLE backup_tester LOGIN SUPERUSER PASSWORD {}")
                         .format(sql.Literal(secret)))
        with_password = make_url(url).set(username="backup_tester", password=secret) \
            .render_as_string(hide_password=False)
        env = {"ORCH_DATABASE_URL": with_password, "ORCH_PG_BIN_DIR": str(TOOLS.bin_dir)}
        dump = tmp_path / "cli.dump"
        made = cli(env, "create", str(dump))
        assert made.returncode == 0, made.stderr
        assert "backup written to" in made.stdout and secret not in made.stdout + made.stderr
        assert stat.S_IMODE(dump.stat().st_mode) == 0o600
        assert f"its SHA-256 in {sidecar(dump)}" in made.stdout

        again = cli(env, "create", str(dump))
        assert again.returncode == 1 and again.stderr.count("\n") == 1
        assert "already exists (--force replaces it)" in again.stderr
        # --force replaces both files: the checksum file is made anew (and private), not
        # kept from before
        sidecar(dump).write_text("stale\n")
        sidecar(dump).chmod(0o644)
        replaced = cli(env, "create", "--force", str(dump))
        assert replaced.returncode == 0, replaced.stderr
        assert stat.S_IMODE(sidecar(dump).stat().st_mode) == 0o600
        assert subprocess.run(["sha256sum", "--check", "--status", sidecar(dump).name],
                              cwd=tmp_path, check=False).returncode == 0
        # and a stray checksum file of that name is not overwritten without it
        dump.unlink()
        stray = cli(env, "create", str(dump))
        assert stray.returncode == 1 and stray.stderr.count("\n") == 1
        assert f"{sidecar(dump)} already exists (--force replaces it)" in stray.stderr
        assert not dump.exists()
        assert cli(env, "create", "--force", str(dump)).returncode == 0

        refused = cli(env, "restore", str(dump))
        assert refused.returncode == 1 and refused.stderr.count("\n") == 1
        assert "is not empty" in refused.stderr and secret not in refused.stderr

        sidecar(dump).unlink()
        unchecked = cli(env, "restore", "--force", str(dump))
        assert unchecked.returncode == 1 and unchecked.stderr.count("\n") == 1
        assert f"{sidecar(dump)} not found" in unchecked.stderr
        assert "--skip-checksum" in unchecked.stderr
        skipped = cli(env, "restore", "--force", "--skip-checksum", str(dump))
        assert skipped.returncode == 0, skipped.stderr
        assert skipped.stderr.startswith(f"warning: --skip-checksum: {dump} is restored "
                                         "without checking it")
        assert skipped.stderr.count("\n") == 1 and "ledger audit clean" in skipped.stdout
    with psycopg.connect(admin.set(database="postgres").render_as_string(hide_password=False),
                         autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE backup_tester"))  # a superuser nobody should keep

    with Target(with_password).environment() as pg_env:
        passfile = Path(pg_env["PGPASSFILE"])
        assert stat.S_IMODE(passfile.stat().st_mode) == 0o600
        assert secret not in "".join(v for k, v in pg_env.items() if k != "PGPASSWORD")
    assert not passfile.exists()
