"""Webhook redelivery: ``webhook_deliveries.requeued_at``

A delivery a receiver refused for good (a 4xx), or that ran out of its retry window while the
receiver was down, used to stay ``failed``: the consumer could only read the feed to catch
up. ``POST /v1/webhooks/deliveries/{id}/redeliver`` (and ``…/redeliver-failed``) puts it back
in the queue; ``requeued_at`` says when, and the retry window counts from it, not from the
event, so a redelivered old event gets the same retries as a new one.

Revision ID: 0018
Revises: 0017
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("webhook_deliveries",
                  sa.Column("requeued_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("webhook_deliveries", "requeued_at")
