"""`orchestrator up` keeps its keys and the demo budget across restarts: whether its first
run is over is read from the database, not from its URL (a new embedded port, or the same
database spelled otherwise, used to mint new keys and reset the demo budget)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from orchestrator.ledger.budgets import list_budgets, set_budget
from orchestrator.runtime.up import DEMO_TENANT, System
from orchestrator.settings import Settings
from orchestrator.store.keys import list_keys, revoke_key


def _system(tmp_path: Path) -> System:
    return System(Settings(), tmp_path, 8000, False, lambda *_: None)


def _demo_budget(db: Engine) -> tuple[int, tuple[int, ...]]:
    with db.connect() as conn:
        (view,) = list_budgets(conn, now=datetime.now(UTC), scopes=(f"tenant:{DEMO_TENANT}",))
    return view.limit_micros, tuple(view.alert_thresholds_bp)


def test_a_restart_on_another_port_keeps_the_keys_and_the_users_budget(
        db: Engine, database_url: str, tmp_path: Path) -> None:
    first = _system(tmp_path)._credentials(database_url, "redis://127.0.0.1:1/0")
    with db.begin() as conn:  # the user's own settings for the demo budget
        set_budget(conn, scope=f"tenant:{DEMO_TENANT}", period="month", limit_micros=5_000_000,
                   now=datetime.now(UTC), thresholds_bp=(2500,))
    # the same database at another port's spelling (as a new embedded port gives)
    url = make_url(database_url)
    moved = url.set(host="localhost" if url.host == "127.0.0.1" else url.host,
                    query={"application_name": "moved"}).render_as_string(hide_password=False)
    again = _system(tmp_path)._credentials(moved, "redis://127.0.0.1:1/0")
    assert (again["admin_key"], again["tenant_key"]) == (first["admin_key"], first["tenant_key"])
    assert _demo_budget(db) == (5_000_000, (2500,))
    with db.connect() as conn:
        assert len(list_keys(conn)) == 2  # none minted twice

    # a key that no longer works (the demo key revoked) is replaced, and only that one; the
    # budget stays the user's
    with db.begin() as conn:
        revoke_key(conn, next(k.id for k in list_keys(conn) if k.tenant == DEMO_TENANT))
    fresh = _system(tmp_path)._credentials(database_url, "redis://127.0.0.1:1/0")
    assert fresh["tenant_key"] != first["tenant_key"] and fresh["tenant"] == DEMO_TENANT
    assert fresh["admin_key"] == first["admin_key"]
    # and looking the keys up is not a use of them
    with db.connect() as conn:
        assert all(k.last_used_at is None for k in list_keys(conn))
    assert _demo_budget(db) == (5_000_000, (2500,))
