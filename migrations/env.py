"""Alembic environment: the URL comes from the caller (orchestrator.store.migrate) or settings."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine, pool

import orchestrator.notify.models  # noqa: F401  (alert_deliveries on Base.metadata)
from orchestrator.store.migrate import migration_lock
from orchestrator.store.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from orchestrator.settings import get_settings

    settings = get_settings()
    if not settings.database_url:
        raise RuntimeError("ORCH_DATABASE_URL is not set")
    return settings.database_url


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = config.attributes.get("connection")
    if connectable is not None:
        # Migration 0019 commits the migrations' transaction to build its index concurrently:
        # Alembic can do that only with a transaction it began itself, not with the caller's.
        if connectable.in_transaction():
            raise RuntimeError("migrations need a connection that is not in a transaction "
                               "(migration 0019 builds an index outside one)")
        _run(connectable)
        return
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        _run(connection)
    engine.dispose()


def _run(connection: Connection) -> None:
    # one run at a time per database: a second reads the version the first left
    with migration_lock(connection):
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
