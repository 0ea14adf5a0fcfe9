"""`orchestrator budgets set/list` against the real database, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine

from orchestrator.domain.budgets import DEFAULT_THRESHOLDS_BP
from orchestrator.embedded.scratch import scratch_database
from orchestrator.ledger.budgets import list_budgets, set_budget

ROOT = Path(__file__).resolve().parents[2]
HOOK = {"type": "webhook", "url": "http://127.0.0.1:9/hook", "secret": "s3cret-value"}


def cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ORCH_DATABASE_URL": database_url}
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_budgets_set_updates_the_limit_and_keeps_thresholds_channels_and_forecast(
    db: Engine, database_url: str
) -> None:
    with db.begin() as conn:  # as PUT /v1/budgets sets them
        set_budget(conn, scope="tenant:acme", period="month", limit_micros=5_000_000,
                   now=datetime.now(UTC), thresholds_bp=(2500, 9000), channels=[HOOK],
                   forecast_thresholds_bp=(10000,))
    done = cli(database_url, "budgets", "set", "--scope", "tenant:acme", "--period", "month",
               "--limit-usd", "12.5")
    assert done.returncode == 0, done.stderr
    with db.connect() as conn:
        (view,) = list_budgets(conn, now=datetime.now(UTC))
    assert view.limit_micros == 12_500_000
    assert view.alert_thresholds_bp == (2500, 9000)
    assert list(view.channels) == [HOOK] and view.forecast_thresholds_bp == (10000,)

    done = cli(database_url, "budgets", "set", "--scope", "tenant:acme", "--period", "month",
               "--limit-usd", "12.5", "--thresholds", "0.7", "--forecast", "0.9,1.2")
    assert done.returncode == 0, done.stderr
    with db.connect() as conn:
        (view,) = list_budgets(conn, now=datetime.now(UTC))
    assert (view.alert_thresholds_bp, view.forecast_thresholds_bp) == ((7000,), (9000, 12000))

    listed = cli(database_url, "budgets", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (shown,) = json.loads(listed.stdout)["budgets"]
    assert (shown["scope"], shown["limit_usd"]) == ("tenant:acme", 12.5)


def test_a_new_budget_gets_the_default_thresholds_and_no_forecast(
    db: Engine, database_url: str
) -> None:
    done = cli(database_url, "budgets", "set", "--scope", "global", "--period", "day",
               "--limit-usd", "3")
    assert done.returncode == 0, done.stderr
    with db.connect() as conn:
        (view,) = list_budgets(conn, now=datetime.now(UTC))
    assert view.alert_thresholds_bp == DEFAULT_THRESHOLDS_BP == (5000, 8000, 10000)
    assert view.forecast_thresholds_bp == () and view.channels == ()


def test_budgets_set_refuses_bad_input_with_one_line_and_changes_nothing(
    db: Engine, database_url: str
) -> None:
    bad = cli(database_url, "budgets", "set", "--scope", "project:x", "--period", "month",
              "--limit-usd", "1")
    assert bad.returncode == 2  # a usage error, as click's own
    assert bad.stderr.strip().startswith("error: --scope: invalid budget scope 'project:x'")
    assert len(bad.stderr.strip().splitlines()) == 1
    for args, said in (
            (["--period", "week"], "error: --period must be day, month or total, not 'week'"),
            (["--period", "day", "--thresholds", "x"], "error: --thresholds/--forecast: ")):
        bad = cli(database_url, "budgets", "set", "--scope", "tenant:acme", "--limit-usd", "1",
                  *args)
        assert bad.returncode == 2 and bad.stderr.startswith(said), bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1
    with db.connect() as conn:
        assert list_budgets(conn, now=datetime.now(UTC)) == []


def test_a_database_error_is_one_line_without_the_statement(servers: tuple[str, str]) -> None:
    with scratch_database(servers[0], migrate=False) as empty:  # no tables in it
        for args in (["budgets", "list"], ["keys", "list"]):
            done = cli(empty, *args)
            assert done.returncode == 1, done.stderr
            (line,) = done.stderr.strip().splitlines()
            assert line.startswith("error: database error: relation ") and \
                line.endswith("does not exist (is it migrated? orchestrator migrate)"), line


def test_budgets_set_refuses_a_limit_the_api_would_refuse(db: Engine, database_url: str) -> None:
    for limit in ("1e20", "1000000000.01", "nan", "inf"):  # 1e20: past PostgreSQL's bigint
        bad = cli(database_url, "budgets", "set", "--scope", "tenant:acme", "--period", "day",
                  "--limit-usd", limit)
        assert bad.returncode == 2, (limit, bad.stderr)
        assert bad.stderr.strip() == ("error: --limit-usd must be a number from 0 to "
                                      "1,000,000,000 (as PUT /v1/budgets)"), (limit, bad.stderr)
    with db.connect() as conn:
        assert list_budgets(conn, now=datetime.now(UTC)) == []
    done = cli(database_url, "budgets", "set", "--scope", "tenant:acme", "--period", "day",
               "--limit-usd", "1e9")
    assert done.returncode == 0, done.stderr
