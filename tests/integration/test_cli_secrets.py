"""`orchestrator secrets new-key / rotate` against the real database, as an operator runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import Engine, text

from orchestrator.egress import EgressPolicy
from orchestrator.events import endpoints
from orchestrator.ledger.budgets import set_budget
from orchestrator.notify import parse_channels
from orchestrator.notify.stored import seal_all
from orchestrator.secrets import SecretBox

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cret-webhook-key-0123456789"
HOOK = {"type": "webhook", "url": "https://hooks.example.com/t/tok3n", "secret": SECRET}
SLACK = {"type": "slack", "url": "https://hooks.slack.com/services/T/B/xoxb-tok3n"}


def cli(database_url: str, tmp_path: Path, key: str | None,
        *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ORCH_SECRET_KEY"}
    env.update({"ORCH_DATABASE_URL": database_url, "ORCH_DATA_DIR": str(tmp_path / "data")})
    if key is not None:
        env["ORCH_SECRET_KEY"] = key
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", "secrets", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def channels(db: Engine) -> dict[str, Any]:
    with db.connect() as conn:
        return {r.scope: r.channels for r in conn.execute(
            text("SELECT scope, channels FROM budgets ORDER BY scope")).all()}


def budget(db: Engine, scope: str, chans: list[Any]) -> None:
    with db.begin() as conn:
        set_budget(conn, scope=scope, period="month", limit_micros=1_000_000,
                   now=datetime.now(UTC), channels=chans)


def test_rotate_re_encrypts_everything_with_the_first_key_and_seals_plain_rows(
    db: Engine, database_url: str, tmp_path: Path,
) -> None:
    made = cli(database_url, tmp_path, None, "new-key")
    assert made.returncode == 0, made.stderr
    new = made.stdout.strip()
    Fernet(new)  # a valid key
    old = Fernet.generate_key().decode()
    budget(db, "tenant:acme", seal_all(parse_channels([HOOK, SLACK]), SecretBox([old])))
    budget(db, "tenant:old", [HOOK, {"type": "email", "to": ["ops@example.com"]}])  # plain
    with db.begin() as conn:  # a tenant webhook endpoint, sealed with the old key
        endpoints.put(conn, "acme", url="https://93.184.216.34/hook", secret=SECRET,
                      events=["job.succeeded"], policy=EgressPolicy(),
                      box=SecretBox([old]))

    done = cli(database_url, tmp_path, f"{new},{old}", "rotate")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines() == [
        "re-encrypted 2 channel(s) and encrypted 1 stored in plain text, in 2 budget(s), "
        "with key 1 of 2", "re-encrypted 1 tenant webhook endpoint(s)"]
    with db.connect() as conn:
        ep = endpoints.get(conn, "acme")
    assert ep is not None
    assert endpoints.open_secret(ep, SecretBox([new])) == SECRET
    assert endpoints.open_url(ep, SecretBox([new])) == "https://93.184.216.34/hook"
    stored = channels(db)
    assert "tok3n" not in str(stored) and SECRET not in str(stored)
    only_new = Fernet(new.encode())
    acme, legacy = stored["tenant:acme"], stored["tenant:old"]
    assert only_new.decrypt(acme[0]["secret"]["fernet"].encode()).decode() == SECRET
    assert only_new.decrypt(acme[1]["url"]["fernet"].encode()).decode() == SLACK["url"]
    assert only_new.decrypt(legacy[0]["url"]["fernet"].encode()).decode() == HOOK["url"]
    assert legacy[0]["origin"] == "https://hooks.example.com" and legacy[1]["type"] == "email"
    with pytest.raises(InvalidToken):  # the old key no longer opens a rotated secret
        Fernet(old.encode()).decrypt(acme[0]["secret"]["fernet"].encode())


def test_rotate_without_the_old_key_changes_nothing_and_says_where(
    db: Engine, database_url: str, tmp_path: Path,
) -> None:
    lost = Fernet.generate_key().decode()
    budget(db, "tenant:acme", seal_all(parse_channels([HOOK]), SecretBox([lost])))
    budget(db, "tenant:old", [SLACK])
    before = channels(db)
    bad = cli(database_url, tmp_path, Fernet.generate_key().decode(), "rotate")
    assert bad.returncode == 1
    assert bad.stderr.strip() == (
        "error: budget tenant:acme (month) channels[0]: a stored secret does not decrypt "
        "with any key of ORCH_SECRET_KEY; nothing was changed")
    assert channels(db) == before

    none = cli(database_url, tmp_path, None, "rotate")
    assert none.returncode == 1 and none.stderr.startswith("error: no secret key: set "
                                                           "ORCH_SECRET_KEY")
    assert len(none.stderr.strip().splitlines()) == 1 and channels(db) == before
