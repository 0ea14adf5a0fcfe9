"""Run Alembic migrations programmatically (``orchestrator migrate``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from sqlalchemy import Connection, create_engine, pool, text
from sqlalchemy.exc import OperationalError, SQLAlchemyError

import migrations
from orchestrator.settings import normalize_database_url

# Importing Alembic logs the set-up of its plugins at INFO: no news in the log of an API or
# worker process, which imports it for its schema check (``schema_behind``).
_alembic_log = logging.getLogger("alembic")
_alembic_level = _alembic_log.level
_alembic_log.setLevel(logging.WARNING)
try:
    from alembic import command
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError as MigrationError
finally:
    _alembic_log.setLevel(_alembic_level)

__all__ = ["MIGRATION_LOCK", "MigrationError", "alembic_config", "downgrade", "migration_lock",
           "schema_behind", "upgrade"]

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
    except BaseException:
        # the migration's own error is the news: an unlock that fails too (the connection
        # is gone, and with its session the lock) must not take its place
        with suppress(SQLAlchemyError):
            _unlock(conn, keys)
        raise
    _unlock(conn, keys)


def _unlock(conn: Connection, keys: dict[str, int]) -> None:
    if conn.in_transaction():  # a failed migration's, already aborted
        conn.rollback()
    conn.execute(_UNLOCK, keys)
    conn.commit()


_VERSION = text("SELECT version_num FROM alembic_version")
_HAS_VERSIONS = text("SELECT to_regclass('alembic_version') IS NOT NULL")


def _revisions(database_url: str) -> tuple[set[str], set[str]]:
    """This release's head revisions and every revision it knows."""
    script = ScriptDirectory.from_config(alembic_config(database_url))
    return set(script.get_heads()), {s.revision for s in script.walk_revisions()}


def schema_behind(database_url: str) -> str | None:
    """Why this release cannot run on the database's schema, in one line: the schema is at an
    older revision of ours (or has none), so every statement of what changed since would
    fail. None when it is at this release's head, at a revision this release does not know
    (a later release migrated it: older processes go on while they are replaced), or when
    the database cannot be reached now (the process's readiness says so until it can)."""
    heads, known = _revisions(database_url)
    engine = create_engine(normalize_database_url(database_url), poolclass=pool.NullPool,
                           connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            if not conn.execute(_HAS_VERSIONS).scalar():
                at: set[str] = set()
            else:
                at = {str(r) for r in conn.execute(_VERSION).scalars()}
    except OperationalError:
        return None
    finally:
        engine.dispose()
    if at == heads or not at <= known:
        return None
    needs = ", ".join(sorted(heads))
    where = (f"is at revision {', '.join(sorted(at))}" if at
             else "has no schema of this project")
    return (f"the database {where}, and this release needs {needs}: run `orchestrator "
            "migrate` first")


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)
