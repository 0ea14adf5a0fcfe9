"""``orchestrator ledger audit``: the ledger's invariants checked on the live database
(``orchestrator.ledger.audit``): every hold ended once, charged as billed, counters equal
to their entries, no period past its limit unaccounted.

``orchestrator.cli`` mounts it with ``register(app)``.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from orchestrator.cli.errors import fail, one_line_errors

ledger_app = typer.Typer(no_args_is_help=True, help="Check the budget ledger.")


def register(app: typer.Typer) -> None:
    app.add_typer(ledger_app, name="ledger")


@ledger_app.command("audit")
@one_line_errors
def audit_command(
    json_out: Annotated[bool, typer.Option("--json", help="{clean, problems: [...]}")] = False,
) -> None:
    """Check the ledger's invariants in one read-only snapshot; exit 1 naming each problem
    when it is not clean (it reads, it never repairs)."""
    from orchestrator.ledger.audit import audit
    from orchestrator.settings import get_settings, resolve_database_url
    from orchestrator.store.engine import make_engine

    engine = make_engine(resolve_database_url(get_settings()), pool_size=1)
    try:
        # one snapshot: a hold settling between two of the checks is not a problem
        with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
            problems = audit(conn)
            conn.rollback()
    finally:
        engine.dispose()
    if json_out:
        typer.echo(json.dumps({"clean": not problems, "problems": problems}))
    else:
        for p in problems:
            typer.echo(p)
    if problems:
        fail(f"ledger audit: {len(problems)} problem(s)")
    if not json_out:
        typer.echo("ledger audit: clean")
