"""`orchestrator backup`: a database made through the real ledger is backed up (also while
jobs are written) and restored into a fresh database, equal to the original to the row and
sequence, with a clean ledger audit; the restored database works."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from orchestrator.backup import archive_revision, create_backup, restore_backup
from orchestrator.embedded.scratch import scratch_database
from orchestrator.ledger import Ledger
from orchestrator.store.engine import make_engine
from orchestrator.store.migrate import alembic_config

from .backup_helpers import SCOPES, TOOLS, contents, populate, run_jobs
from .ledger_helpers import FakeClock, assert_sound

ROOT = Path(__file__).resolve().parents[2]

HEAD = ScriptDirectory.from_config(alembic_config("postgresql://")).get_current_head()


@pytest.fixture()
def source(servers: tuple[str, str]) -> Iterator[tuple[str, Engine]]:
    with scratch_database(servers[0]) as url:
        engine = make_engine(url, pool_size=4)
        try:
            yield url, engine
        finally:
            engine.dispose()


def test_a_restore_reproduces_every_row_and_sequence_and_the_ledger_is_sound(
    source: tuple[str, Engine], servers: tuple[str, str], tmp_path: Path,
) -> None:
    url, engine = source
    populate(engine, jobs=12)
    assert_sound(engine)
    before = contents(engine)
    assert len(before["jobs"]) == 12 and len(before["alerts"]) >= 2  # threshold + overages
    assert {"settle", "release", "overage"} <= {
        r.split('"kind": "')[1].split('"')[0] for r in before["ledger_entries"]}

    dump = tmp_path / "orch.dump"
    made = create_backup(url, dump, TOOLS)
    assert stat.S_IMODE(dump.stat().st_mode) == 0o600
    assert made.checksum_path == tmp_path / "orch.dump.sha256"
    assert made.checksum_path.read_text() == (
        f"{hashlib.sha256(dump.read_bytes()).hexdigest()}  orch.dump\n")
    assert made.counts["jobs"] == 12 and made.revision == archive_revision(dump, TOOLS)
    # no temporary file left behind (the partial archive, the checksum's)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["orch.dump", "orch.dump.sha256"]

    with scratch_database(servers[0], migrate=False) as fresh:
        restored = restore_backup(fresh, dump, TOOLS)
        assert restored.problems == [] and restored.migrated_to is None
        assert restored.counts == made.counts
        copy = make_engine(fresh, pool_size=2)
        try:
            assert contents(copy) == before
            assert_sound(copy)
            # it works: new jobs get fresh ids and are charged; entries stay append-only
            run_jobs(copy, Ledger(copy, clock=FakeClock(datetime.now(UTC))), 4,
                     datetime.now(UTC))
            assert_sound(copy)
            with pytest.raises(DBAPIError, match="append-only"), copy.begin() as conn:
                conn.execute(text("UPDATE ledger_entries SET committed_delta_micros = 0"))
        finally:
            copy.dispose()


def test_a_backup_taken_while_jobs_are_charged_is_one_consistent_snapshot(
    source: tuple[str, Engine], servers: tuple[str, str], tmp_path: Path,
) -> None:
    url, engine = source
    populate(engine, jobs=4)
    stop, under_way, written = threading.Event(), threading.Event(), [0]

    def charge() -> None:  # holds and settles until the backup is done (bounded)
        ledger = Ledger(engine, clock=FakeClock(datetime.now(UTC)))
        for _ in range(5000):
            if stop.is_set():
                return
            job = uuid.uuid4()
            ledger.hold(job, SCOPES, 1_000)
            ledger.settle(job, 900)
            written[0] += 1
            if written[0] == 20:
                under_way.set()

    writer = threading.Thread(target=charge)
    writer.start()
    try:
        assert under_way.wait(60)  # the writer is under way before the dump starts
        made = create_backup(url, tmp_path / "live.dump", TOOLS)
    finally:
        stop.set()
        writer.join()
    assert_sound(engine)
    with scratch_database(servers[0], migrate=False) as fresh:
        restored = restore_backup(fresh, tmp_path / "live.dump", TOOLS)
        assert restored.problems == []
        assert restored.counts == made.counts  # the counts of the exported snapshot
        assert made.counts["holds"] > 4


def test_an_older_backup_is_migrated_to_the_codes_head(
    servers: tuple[str, str], tmp_path: Path,
) -> None:
    from orchestrator.store.migrate import upgrade

    with scratch_database(servers[0], migrate=False) as old:
        upgrade(old, "0008")
        made = create_backup(old, tmp_path / "old.dump", TOOLS)
    assert made.revision == "0008"
    with scratch_database(servers[0], migrate=False) as fresh:
        restored = restore_backup(fresh, tmp_path / "old.dump", TOOLS)
        assert (restored.revision, restored.migrated_to) == ("0008", HEAD)
        assert f"migrated to {HEAD}" in restored.summary()


def test_the_command_restores_into_and_backs_up_a_stopped_embedded_database(
    source: tuple[str, Engine], tmp_path: Path,
) -> None:
    """Without ORCH_DATABASE_URL the command works on `orchestrator up`'s embedded database
    in ORCH_DATA_DIR, starting it for its run when the system is stopped (or, for a restore
    on a new machine, making it) and stopping it again."""
    url, engine = source
    populate(engine, jobs=4)
    dump, again = tmp_path / "a.dump", tmp_path / "b.dump"
    create_backup(url, dump, TOOLS)
    env = {k: v for k, v in os.environ.items() if k not in ("ORCH_DATABASE_URL",
                                                            "ORCH_PG_BIN_DIR")}
    env["ORCH_DATA_DIR"] = str(tmp_path / "data")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "orchestrator.cli", "backup", *args],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    restored = cli("restore", str(dump))
    assert restored.returncode == 0, restored.stderr
    # made as `up` makes it: its owner's alone (0710 when root: the server's group traverses)
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) in (0o700, 0o710)
    assert "4 jobs" in restored.stdout and "ledger audit clean" in restored.stdout
    made = cli("create", str(again))
    assert made.returncode == 0, made.stderr
    assert "4 jobs" in made.stdout
    assert not (tmp_path / "data" / "postgres" / "pgdata" / "postmaster.pid").exists()
