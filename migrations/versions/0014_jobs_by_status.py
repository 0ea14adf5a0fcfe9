"""Jobs by tenant and status, newest first

``GET /v1/jobs?status=`` (the console's filters, the SDK's listings) read the tenant's jobs
newest first through ``ix_jobs_tenant_created`` and dropped those of another status, so a
status that is rare in a tenant's history (``queued`` beside a million ``succeeded``) walked
the whole history for one page. With the status in the index, a page reads its rows only.

The index is built inside the migration's transaction, which holds writes to ``jobs`` (new
submissions wait) for as long as the build takes: 1.2 s for a million rows of these four
columns on the 2-core development machine (a wider table reads slower). Plan a release on a
large table accordingly.

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_jobs_tenant_status_created", "jobs",
                    ["tenant", "status", "created_at", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_jobs_tenant_status_created", table_name="jobs")
