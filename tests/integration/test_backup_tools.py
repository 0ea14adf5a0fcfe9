"""`orchestrator backup create` of an external database with the host's own client programs:
Debian's postgresql-client, whose /usr/bin/pg_dump is a link to pg_wrapper in
/usr/share/postgresql-common, against the host's PostgreSQL on 127.0.0.1:5432. Skipped where
the host has either missing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from orchestrator.embedded.scratch import scratch_database

ROOT = Path(__file__).resolve().parents[2]
HOST_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_DUMP = Path("/usr/bin/pg_dump")


def host_server() -> str:
    if not (PG_DUMP.is_symlink() and PG_DUMP.resolve().name == "pg_wrapper"):
        pytest.skip("no Debian postgresql-client (/usr/bin/pg_dump -> pg_wrapper)")
    try:
        with psycopg.connect(HOST_PG, connect_timeout=3):
            pass
    except psycopg.OperationalError:
        pytest.skip(f"no PostgreSQL answers at {HOST_PG}")
    return HOST_PG


def test_the_command_uses_debians_wrapped_client_programs_from_path(tmp_path: Path) -> None:
    with scratch_database(host_server()) as url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
        env.update(ORCH_DATABASE_URL=url, PATH=f"/usr/bin:{os.environ.get('PATH', '/bin')}",
                   ORCH_DATA_DIR=str(tmp_path / "data"))
        dump = tmp_path / "host.dump"
        made = subprocess.run([sys.executable, "-m", "orchestrator.cli", "backup", "create",
                               str(dump)], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=120)
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith(f"backup written to {dump}"), made.stdout
    assert dump.stat().st_size > 0
