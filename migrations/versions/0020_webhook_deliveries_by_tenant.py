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

from migrations import concurrently

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

_NAME = "ix_webhook_deliveries_due"
_TABLE = "webhook_deliveries"


def upgrade() -> None:
    concurrently.create_index(_NAME, _TABLE, ["tenant", "target", "next_attempt_at", "id"],
                              "status = 'pending'")


def downgrade() -> None:
    concurrently.drop_index(_NAME, _TABLE)
