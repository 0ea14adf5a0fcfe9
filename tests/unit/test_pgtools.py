"""Which pg_dump, pg_restore and psql `orchestrator backup` runs for an external database:
the directory PATH finds pg_dump in (Debian's /usr/bin, whose links lead to one wrapper
script elsewhere), else where a lone link leads; an error names where it looked, and
ORCH_PG_BIN_DIR only when it was set. The real Debian layout and server: test_backup_tools."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.backup.pgtools import BackupError, BackupSettings, PgTools

TOOLS = ("pg_dump", "pg_restore", "psql")


def wrapper(path: Path) -> Path:
    """A script answering ``--version`` like pg_dump 15 (as Debian's pg_wrapper does)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)'\n")
    path.chmod(0o755)
    return path


def unset() -> BackupSettings:
    return BackupSettings(pg_bin_dir=None)


def test_debians_wrapper_links_are_used_where_path_finds_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    script = wrapper(tmp_path / "share" / "postgresql-common" / "pg_wrapper")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        (bin_dir / tool).symlink_to(Path("..") / "share" / "postgresql-common" / script.name)
    monkeypatch.setenv("PATH", str(bin_dir))
    tools = PgTools.locate(external=True, settings=unset())
    assert (tools.bin_dir, tools.major) == (bin_dir, 15)


def test_a_lone_link_to_pg_dump_leads_to_its_installation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    install = tmp_path / "pg15" / "bin"
    for tool in TOOLS:
        wrapper(install / tool)
    linked = tmp_path / "local-bin"
    linked.mkdir()
    (linked / "pg_dump").symlink_to(install / "pg_dump")
    monkeypatch.setenv("PATH", str(linked))
    assert PgTools.locate(external=True, settings=unset()).bin_dir == install


def test_missing_tools_name_where_they_were_looked_for_and_the_setting_only_when_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    alone = tmp_path / "alone"
    wrapper(alone / "pg_dump")
    monkeypatch.setenv("PATH", str(alone))
    with pytest.raises(BackupError) as from_path:
        PgTools.locate(external=True, settings=unset())
    assert f"pg_dump is on PATH ({alone / 'pg_dump'})" in from_path.value.message
    assert f"looked in {alone}" in from_path.value.message
    assert "(ORCH_PG_BIN_DIR)" not in from_path.value.message

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BackupError, match=rf"^no pg_dump in {empty} \(ORCH_PG_BIN_DIR\)$"):
        PgTools.locate(external=True, settings=BackupSettings(pg_bin_dir=empty))
    with pytest.raises(BackupError, match=rf"^no pg_dump in {empty}$"):
        PgTools.at(empty)
