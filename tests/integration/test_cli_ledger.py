"""`orchestrator ledger audit` against the real database, as an operator runs it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from sqlalchemy import create_engine, text

from orchestrator.embedded.scratch import scratch_database
from orchestrator.ledger.budgets import set_budget

from .test_cli_budgets import cli


def test_the_audit_says_clean_then_names_a_counter_that_disagrees_with_its_entries(
    servers: tuple[str, str]
) -> None:
    with scratch_database(servers[0]) as url:
        engine = create_engine(url)
        now = datetime.now(UTC)
        with engine.begin() as conn:
            budget = set_budget(conn, scope="tenant:acme", period="month",
                                limit_micros=5_000_000, now=now)
            period = conn.execute(text(
                "INSERT INTO budget_periods (budget_id, period_start, period_end, limit_micros)"
                " VALUES (:b, :s, :e, 5000000) RETURNING id"),
                {"b": budget, "s": now - timedelta(days=1), "e": now + timedelta(days=1)},
            ).scalar_one()
        clean = cli(url, "ledger", "audit")
        assert (clean.returncode, clean.stdout, clean.stderr) == (0, "ledger audit: clean\n", "")

        with engine.begin() as conn:  # money counted that no ledger entry accounts for
            conn.execute(text("UPDATE budget_periods SET committed_micros = 1500 WHERE id = :p"),
                         {"p": period})
        engine.dispose()
        found = cli(url, "ledger", "audit")
        assert found.returncode == 1
        assert found.stdout == (f"period {period}: counters committed=1500 held=0 but entries "
                                "sum to committed=0 held=0\n")
        assert found.stderr == "error: ledger audit: 1 problem(s)\n"
        as_json = cli(url, "ledger", "audit", "--json")
        assert as_json.returncode == 1
        assert json.loads(as_json.stdout) == {"clean": False, "problems": [found.stdout.strip()]}
