"""`orchestrator backup create` of an external database with the host's own client programs:
Debian's postgresql-client, whose /usr/bin/pg_dump is a link to pg_wrapper in
/usr/share/postgresql-common, against the PostgreSQL server ORCH_TEST_DATABASE_URL names (one
those programs can dump). Skipped where either is missing: the embedded server is newer than
the client programs a host may have, and `make compose-test` takes a backup with the image's
own Debian client programs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.embedded.scratch import scratch_database

ROOT = Path(__file__).resolve().parents[2]
PG_DUMP = Path("/usr/bin/pg_dump")


def host_server() -> str:
    if not (PG_DUMP.is_symlink() and PG_DUMP.resolve().name == "pg_wrapper"):
        pytest.skip("no Debian postgresql-client (/usr/bin/pg_dump -> pg_wrapper)")
    server = os.environ.get("ORCH_TEST_DATABASE_URL")
    if not server:
        pytest.skip("ORCH_TEST_DATABASE_URL names no PostgreSQL for the host's client programs")
    return server


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
