"""A backup holds sealed secrets but not the key that opens them: `orchestrator backup
restore` warns in one line when this machine's key (none, or another) does not open the
restored webhook and channel secrets, naming the fix; with the old key it says nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from orchestrator.backup import create_backup
from orchestrator.embedded.scratch import scratch_database
from orchestrator.events import endpoints
from orchestrator.ledger.budgets import set_budget
from orchestrator.notify import parse_channels
from orchestrator.notify.stored import seal_all
from orchestrator.secrets import SecretBox, new_key
from orchestrator.store.engine import make_engine

from .backup_helpers import TOOLS

ROOT = Path(__file__).resolve().parents[2]
HOOK = {"type": "webhook", "url": "https://hooks.example.com/t/tok3n",
        "secret": "s3cret-webhook-key-0123456789"}
OLD_KEY = new_key()


@pytest.fixture(scope="module")
def archive(servers: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A backup holding a tenant's webhook secret and a budget's webhook channel, both
    sealed with OLD_KEY."""
    path = tmp_path_factory.mktemp("keys") / "orch.dump"
    box = SecretBox([OLD_KEY])
    with scratch_database(servers[0]) as url:
        engine = make_engine(url, pool_size=2)
        try:
            with engine.begin() as conn:
                endpoints.ensure_secret(conn, "acme", box)
                set_budget(conn, scope="tenant:acme", period="month", limit_micros=1_000_000,
                           now=datetime.now(UTC), channels=seal_all(parse_channels([HOOK]), box))
        finally:
            engine.dispose()
        create_backup(url, path, TOOLS)
    return path


def restore(url: str, dump: Path, data_dir: Path,
            key: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ORCH_SECRET_KEY"}
    env.update(ORCH_DATABASE_URL=url, ORCH_PG_BIN_DIR=str(TOOLS.bin_dir),
               ORCH_DATA_DIR=str(data_dir))
    if key is not None:
        env["ORCH_SECRET_KEY"] = key
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", "backup", "restore",
                           "--force", str(dump)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_restore_warns_when_this_machines_key_does_not_open_the_restored_secrets(
    servers: tuple[str, str], archive: Path, tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    with scratch_database(servers[0], migrate=False) as url:
        without = restore(url, archive, data, None)
        assert without.returncode == 0, without.stderr
        assert "ledger audit clean" in without.stdout
        assert without.stderr == (
            "warning: the database holds 3 sealed secret(s) and no secret key is configured "
            f"here: put the old machine's secret key in {data / 'secret.key'} (or "
            "ORCH_SECRET_KEY) before starting, or set them anew: PUT /v1/webhooks with a new "
            "secret, PUT /v1/budgets with the channels\n")

        other = restore(url, archive, data, new_key())
        assert other.returncode == 0, other.stderr
        assert other.stderr.startswith("warning: 3 of 3 sealed secret(s) do not decrypt with "
                                       "this machine's secret key (ORCH_SECRET_KEY): ")
        assert other.stderr.count("\n") == 1

        rotated = restore(url, archive, data, f"{new_key()},{OLD_KEY}")  # the old one kept
        assert rotated.returncode == 0 and rotated.stderr == "", rotated.stderr
    assert OLD_KEY not in without.stderr + other.stderr + rotated.stderr
