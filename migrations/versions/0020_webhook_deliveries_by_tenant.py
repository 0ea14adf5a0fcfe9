"""Pending webhook deliveries by tenant: ``ix_webhook_deliveries_due``

The claim of ``orchestrator.events.delivery`` shares each batch between tenants: it walks the
tenants with a delivery pending (a skip scan: one index probe per tenant) and takes each
tenant's oldest due deliveries to each target in order, at most a batch of them (a few to an
endpoint marked failing). Without this index each step read the tenant's whole delivery
history (``ix_webhook_deliveries_tenant`` keeps delivered rows) or every due delivery of
every tenant (``ix_webhook_deliveries_pending``): ~200 ms with 100k due for one tenant and
500k delivered, against ~4 ms with it. Only pending rows are indexed.

Built with ``CREATE INDEX CONCURRENTLY`` as 0019 is (see there): writes to
``webhook_deliveries`` (every job event's transaction) go on while it is built, and the
INVALID leftover of a failed build is dropped first.

Revision ID: 0020
Revises: 0019
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

_NAME = "ix_webhook_deliveries_due"
_TABLE = "webhook_deliveries"


def _invalid_leftover() -> bool:
    """Whether an index of this name exists but is INVALID (a failed concurrent build)."""
    if op.get_context().as_sql:  # offline (--sql): nothing to ask; IF NOT EXISTS stays
        return False
    valid = op.get_bind().execute(
        sa.text("SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass(:name)"),
        {"name": _NAME},
    ).scalar()
    return valid is False


def upgrade() -> None:
    with op.get_context().autocommit_block():
        if _invalid_leftover():
            op.drop_index(_NAME, table_name=_TABLE, postgresql_concurrently=True,
                          if_exists=True)
        op.create_index(_NAME, _TABLE, ["tenant", "target", "next_attempt_at", "id"],
                        unique=False, postgresql_where=sa.text("status = 'pending'"),
                        postgresql_concurrently=True, if_not_exists=True)


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(_NAME, table_name=_TABLE, postgresql_concurrently=True, if_exists=True)
