"""Result files: a result's inline data kept beside the job, not in its JSON

OpenAI's gpt-image models answer images only as base64 (``b64_json``): megabytes per image.
Carried as ``data:`` URLs in ``jobs.result``, each was copied into the ``job.succeeded``
event, so into every webhook delivery (beyond many receivers' body limit) and stream of it.
``result_files`` keeps such data (``content``, with its ``media_type``), numbered per job
from 0; the result names each file by its path, ``/v1/jobs/<job id>/result/files/<n>``.

A job served from the result cache names its leader's files, so the retention sweeper keeps
a job's files while any job with ``cached_from`` pointing at it still has its result
(``ix_jobs_cached_from``).

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "result_files",
        sa.Column("job_id", postgresql.UUID(as_uuid=True),
                  sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("n", sa.Integer(), primary_key=True),
        sa.Column("media_type", sa.String(100), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.text("now()")),
    )
    op.create_index("ix_jobs_cached_from", "jobs", ["cached_from"],
                    postgresql_where=sa.text("cached_from IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ix_jobs_cached_from", table_name="jobs")
    op.drop_table("result_files")
