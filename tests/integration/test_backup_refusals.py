"""What `orchestrator backup` refuses, with one line and nothing changed: an archive of a
newer schema, a target that is not empty (unless --force), a target others are connected
to, a truncated archive; an archive whose data fails to load is rolled back (also with
--force); and the command itself:
the password of the database URL is in no output, and errors are one line."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from alembic.script import ScriptDirectory
from psycopg import sql
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from orchestrator.backup import BackupError, Target, create_backup, restore_backup
from orchestrator.embedded.scratch import scratch_database
from orchestrator.store.engine import make_engine
from orchestrator.store.migrate import alembic_config

from .backup_helpers import TOOLS, contents, populate
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


@pytest.fixture()
def occupied(servers: tuple[str, str]) -> Iterator[tuple[str, Engine]]:
    """A database with other contents (4 jobs), and an engine on it (disposed: no session)."""
    with scratch_database(servers[0]) as url:
        engine = make_engine(url, pool_size=2)
        populate(engine, jobs=4)
        engine.dispose()
        yield url, engine
        engine.dispose()


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


def test_a_truncated_archive_is_refused_before_anything_changes(
    archive: Path, occupied: tuple[str, Engine], tmp_path: Path,
) -> None:
    url, engine = occupied
    before = contents(engine)
    cut = tmp_path / "cut.dump"
    data = archive.read_bytes()
    cut.write_bytes(data[: len(data) * 3 // 4])
    with pytest.raises(BackupError, match="is not a pg_dump archive"):
        restore_backup(url, cut, TOOLS, force=True)
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
    with pytest.raises(BackupError, match=r"rolled back \(nothing was changed\): .*json"):
        restore_backup(url, bad, TOOLS, force=True)
    assert contents(engine) == before


def test_an_archive_whose_table_of_contents_is_not_utf8_is_read_not_a_decode_error(
    archive: Path, occupied: tuple[str, Engine], servers: tuple[str, str], tmp_path: Path,
) -> None:
    """One damaged byte in an entry's name (which pg_restore prints in its listing and in
    comments only) made the revision check fail with "'utf-8' codec can't decode byte",
    which names neither the file nor what is wrong; the archive's contents are intact, so
    it restores, equal to a restore of the undamaged one."""
    url, engine = occupied
    with scratch_database(servers[0], migrate=False) as fresh:
        restore_backup(fresh, archive, TOOLS)
        clean_engine = make_engine(fresh, pool_size=1)
        clean = contents(clean_engine)
    data = archive.read_bytes()
    at = data.index(b"ledger_entries_append_only")  # the function's name in the TOC
    damaged = tmp_path / "damaged.dump"
    damaged.write_bytes(data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:])
    restored = restore_backup(url, damaged, TOOLS, force=True)
    assert restored.problems == [] and restored.counts["jobs"] == 8
    assert contents(engine) == clean


@pytest.mark.xfail(strict=True, reason="not fixed: a restore does not detect damage to "
                   "the archive's schema text (function bodies, constraints are stored "
                   "uncompressed and unchecked); needs a checksum kept with the archive")
def test_an_archive_with_one_damaged_byte_in_a_ledger_function_is_refused(
    archive: Path, servers: tuple[str, str], tmp_path: Path,
) -> None:
    """One byte of orch_end_job's body changed (backend -> backene) loads, and the restore
    ends "ledger audit clean"; the first job to end then fails with UndefinedColumn."""
    data = archive.read_bytes()
    good = b"backend = COALESCE(p_backend, j.backend)"
    assert data.count(good) == 1
    damaged = tmp_path / "damaged.dump"
    damaged.write_bytes(data.replace(good, b"backene" + good[len(b"backend"):]))
    with scratch_database(servers[0], migrate=False) as fresh, pytest.raises(BackupError):
        restore_backup(fresh, damaged, TOOLS)


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

        again = cli(env, "create", str(dump))
        assert again.returncode == 1 and again.stderr.count("\n") == 1
        assert "already exists (--force replaces it)" in again.stderr

        refused = cli(env, "restore", str(dump))
        assert refused.returncode == 1 and refused.stderr.count("\n") == 1
        assert "is not empty" in refused.stderr and secret not in refused.stderr
    with psycopg.connect(admin.set(database="postgres").render_as_string(hide_password=False),
                         autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE backup_tester"))  # a superuser nobody should keep

    with Target(with_password).environment() as pg_env:
        passfile = Path(pg_env["PGPASSFILE"])
        assert stat.S_IMODE(passfile.stat().st_mode) == 0o600
        assert secret not in "".join(v for k, v in pg_env.items() if k != "PGPASSWORD")
    assert not passfile.exists()
