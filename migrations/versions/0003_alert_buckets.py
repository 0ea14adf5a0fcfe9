"""forecast thresholds and alert buckets

Adds ``budgets.forecast_thresholds_bp`` (opt-in forecast alerts, empty by default) and
``alerts.bucket`` to the alerts' unique key. Threshold and forecast alerts keep
``bucket = 0`` (once per budget period and threshold, as before); a refusal alert carries the
start of its window in unix seconds, so it is written at most once per budget per window.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "budgets",
        sa.Column("forecast_thresholds_bp", postgresql.JSONB(astext_type=sa.Text()),
                  server_default=sa.text("'[]'::jsonb"), nullable=False),
    )
    op.add_column(
        "alerts", sa.Column("bucket", sa.BigInteger(), server_default="0", nullable=False)
    )
    op.drop_constraint("once", "alerts", type_="unique")
    op.create_unique_constraint(
        "once", "alerts", ["budget_period_id", "kind", "threshold_bp", "bucket"]
    )


def downgrade() -> None:
    # The old key cannot hold two windows of one period: keep each group's first window.
    op.execute(
        """
        DELETE FROM alerts a USING alerts b
        WHERE a.budget_period_id = b.budget_period_id AND a.kind = b.kind
          AND a.threshold_bp = b.threshold_bp AND a.bucket > b.bucket
        """
    )
    op.drop_constraint("once", "alerts", type_="unique")
    op.create_unique_constraint("once", "alerts", ["budget_period_id", "kind", "threshold_bp"])
    op.drop_column("alerts", "bucket")
    op.drop_column("budgets", "forecast_thresholds_bp")
