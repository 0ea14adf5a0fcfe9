"""Migrations run forward from empty, back to base, and match the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from orchestrator.embedded.scratch import scratch_database
from orchestrator.store.engine import make_engine
from orchestrator.store.migrate import downgrade, upgrade
from orchestrator.store.models import Base


def test_upgrade_from_empty_downgrade_to_base_and_up_again(servers: tuple[str, str]) -> None:
    with scratch_database(servers[0], migrate=False) as url:
        engine = make_engine(url, pool_size=1)
        try:
            upgrade(url)
            with engine.connect() as conn:
                tables = set(inspect(conn).get_table_names())
            assert {t.name for t in Base.metadata.sorted_tables} <= tables

            downgrade(url, "base")
            with engine.connect() as conn:
                assert set(inspect(conn).get_table_names()) == {"alembic_version"}

            upgrade(url)
            with engine.connect() as conn:
                diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
            assert diff == []
        finally:
            engine.dispose()
