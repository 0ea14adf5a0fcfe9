"""Attempts by backend and external id: ``ix_attempts_backend_external_id``

Before the chain takes the id a provider named as an attempt's (a create's answer, a lookup),
it asks whether another attempt on the backend already holds it: a cache or a gateway in front
of the provider may answer two of our creates, each with its own idempotency key, with one
prediction, and both jobs would poll it, deliver its output and be charged for it. The index
makes that question one index probe on every submission. It is not unique: a synchronous
backend may answer every call with the same id, and attempts already recorded may share one.

The index is built inside the migration's transaction, which holds writes to ``attempts`` for
as long as the build takes; only rows with an external id are indexed.

Revision ID: 0019
Revises: 0018
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_attempts_backend_external_id", "attempts", ["backend", "external_id"],
                    unique=False, postgresql_where=sa.text("external_id IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ix_attempts_backend_external_id", table_name="attempts",
                  postgresql_where=sa.text("external_id IS NOT NULL"))
