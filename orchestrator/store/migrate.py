"""Run Alembic migrations programmatically (``orchestrator migrate``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text

import migrations
from orchestrator.settings import normalize_database_url

log = logging.getLogger(__name__)

# The session-level advisory lock every migration run of a database holds (two ASCII words,
# "orch" "migr"): a second `orchestrator migrate` waits for the first, then finds nothing to do.
MIGRATION_LOCK = (0x6F726368, 0x6D696772)
# how often a waiting run asks again
_LOCK_POLL_S = 0.25
_TRY_LOCK = text("SELECT pg_try_advisory_lock(:a, :b)")
_UNLOCK = text("SELECT pg_advisory_unlock(:a, :b)")


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    # ConfigParser interpolation: a '%' in a password must be doubled.
    cfg.set_main_option("sqlalchemy.url", normalize_database_url(database_url).replace("%", "%%"))
    return cfg


@contextmanager
def migration_lock(conn: Connection) -> Iterator[None]:
    """Hold the database's migration lock on ``conn`` (not in a transaction) while the block
    runs; another run holding it is waited for, however long its migrations take.

    Asked with ``pg_try_advisory_lock`` between waits, never a blocking ``pg_advisory_lock``:
    a session waiting in a statement has a snapshot, and migration 0019's concurrent index
    build waits for every such snapshot to go, while the waiter waits for the builder's lock,
    a deadlock PostgreSQL cannot see (they are two sessions of two processes). Between two
    tries this session is idle, outside any transaction."""
    keys = {"a": MIGRATION_LOCK[0], "b": MIGRATION_LOCK[1]}
    said = False
    while True:
        got = bool(conn.execute(_TRY_LOCK, keys).scalar())
        conn.commit()  # the lock is the session's; no transaction stays open
        if got:
            break
        if not said:
            log.warning("another migration of this database is running: waiting for it")
            said = True
        time.sleep(_LOCK_POLL_S)
    try:
        yield
    finally:
        if conn.in_transaction():  # a failed migration's, already aborted
            conn.rollback()
        conn.execute(_UNLOCK, keys)
        conn.commit()


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)
