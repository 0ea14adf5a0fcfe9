"""Result cache and calibration: jobs.cache_key, jobs.cache_leader, jobs.cached_from, and the
indexes their look-ups use

* ``cache_key``: the SHA-256 of a cache-enabled job's tenant, kind, normalised input, tier and
  pinned backend (``domain.cache``); never the prompt itself.
* ``cache_leader``: while set, the job waits for that live job with the same key (one
  provider call for concurrent identical submissions); cleared when it must run itself.
* ``cached_from``: the succeeded job whose result this one got, at $0.
* ``ix_jobs_cache_lookup``: a tenant's jobs by key (hits and live leaders);
  ``ix_jobs_cache_followers``: a leader's followers; ``ix_jobs_settled_by_backend``: a
  backend's most recent settled jobs (the calibration window).

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("cache_key", sa.String(64), nullable=True))
    op.add_column("jobs", sa.Column("cache_leader", UUID(as_uuid=True), nullable=True))
    op.add_column("jobs", sa.Column("cached_from", UUID(as_uuid=True), nullable=True))
    op.create_index("ix_jobs_cache_lookup", "jobs", ["tenant", "cache_key", "finished_at"],
                    postgresql_where=sa.text("cache_key IS NOT NULL"))
    op.create_index("ix_jobs_cache_followers", "jobs", ["cache_leader"],
                    postgresql_where=sa.text("cache_leader IS NOT NULL"))
    op.create_index("ix_jobs_settled_by_backend", "jobs", ["backend", "finished_at"],
                    postgresql_where=sa.text("status = 'succeeded'"))


def downgrade() -> None:
    op.drop_index("ix_jobs_settled_by_backend", table_name="jobs")
    op.drop_index("ix_jobs_cache_followers", table_name="jobs")
    op.drop_index("ix_jobs_cache_lookup", table_name="jobs")
    op.drop_column("jobs", "cached_from")
    op.drop_column("jobs", "cache_leader")
    op.drop_column("jobs", "cache_key")
