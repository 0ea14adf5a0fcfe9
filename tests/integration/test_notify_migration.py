"""Migration 0002 (alert_deliveries): forward from empty, back to base, and the same table as
the model."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

import orchestrator.notify.models  # noqa: F401  (alert_deliveries on Base.metadata)
from orchestrator.embedded.scratch import scratch_database
from orchestrator.store.migrate import downgrade, upgrade
from orchestrator.store.models import Base


def _tables(url: str) -> set[str]:
    eng = create_engine(url)
    try:
        with eng.connect() as conn:
            return set(inspect(conn).get_table_names())
    finally:
        eng.dispose()


def _diffs_about_deliveries(url: str) -> list[Any]:
    eng = create_engine(url)
    try:
        with eng.connect() as conn:
            diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        eng.dispose()
    return [d for d in diffs if "alert_deliveries" in repr(d)]


def test_upgrade_from_empty_downgrade_to_base_and_back(servers: tuple[str, str]) -> None:
    with scratch_database(servers[0], migrate=False) as url:
        upgrade(url, "0001")
        assert "alert_deliveries" not in _tables(url) and "alerts" in _tables(url)
        upgrade(url)
        assert "alert_deliveries" in _tables(url)
        assert _diffs_about_deliveries(url) == []

        downgrade(url, "0001")
        assert "alert_deliveries" not in _tables(url) and "alerts" in _tables(url)
        downgrade(url, "base")
        assert _tables(url) <= {"alembic_version"}
        upgrade(url)
        assert "alert_deliveries" in _tables(url)
        assert _diffs_about_deliveries(url) == []
