"""Indexes built and dropped with ``CONCURRENTLY`` (migrations 0019 and 0020), for their
``upgrade``/``downgrade``: writes to the table go on while the index is built.

A concurrent build cannot run in a transaction, so it runs in Alembic's autocommit block
(the migrations before it are committed first). A build that failed (cancelled, timed out,
out of disk) leaves an INVALID index of its name behind, which ``IF NOT EXISTS`` would keep
for good: the build drops such a leftover first.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


def _invalid_leftover(name: str) -> bool:
    """Whether an index ``name`` exists but is INVALID (a failed concurrent build)."""
    if op.get_context().as_sql:  # offline (--sql): nothing to ask; IF NOT EXISTS stays
        return False
    valid = op.get_bind().execute(
        sa.text("SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass(:name)"),
        {"name": name},
    ).scalar()
    return valid is False


def create_index(name: str, table: str, columns: list[str], where: str) -> None:
    """``CREATE INDEX CONCURRENTLY IF NOT EXISTS`` of ``columns`` on the rows ``where``
    holds, after dropping an invalid leftover of the same name."""
    with op.get_context().autocommit_block():
        if _invalid_leftover(name):
            op.drop_index(name, table_name=table, postgresql_concurrently=True,
                          if_exists=True)
        op.create_index(name, table, columns, unique=False,
                        postgresql_where=sa.text(where), postgresql_concurrently=True,
                        if_not_exists=True)


def drop_index(name: str, table: str) -> None:
    with op.get_context().autocommit_block():
        op.drop_index(name, table_name=table, postgresql_concurrently=True, if_exists=True)
