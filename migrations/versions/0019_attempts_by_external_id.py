"""Attempts by backend and external id: ``ix_attempts_backend_external_id``

Before the chain takes the id a provider named as an attempt's (a create's answer, a lookup),
it asks whether another attempt on the backend already holds it: a cache or a gateway in front
of the provider may answer two of our creates, each with its own idempotency key, with one
prediction, and both jobs would poll it, deliver its output and be charged for it. The index
makes that question one index probe on every submission. It is not unique: a synchronous
backend may answer every call with the same id, and attempts already recorded may share one.

The index is built with ``CREATE INDEX CONCURRENTLY``: writes to ``attempts`` (every job's
progress) go on while it is built; only rows with an external id are indexed. A concurrent
build cannot run in a transaction: the migrations before this one are committed first (with
alembic_version at 0018) and the build runs in autocommit. It waits for the transactions
that are writing to ``attempts`` when it starts, then for every older transaction in the
database, to end: a long transaction delays the migration, not the writes. A build that
failed (cancelled, timed out, out of disk) leaves an INVALID index of this name behind, which
``IF NOT EXISTS`` would keep for good: the upgrade drops such a leftover first.

Revision ID: 0019
Revises: 0018
"""

from __future__ import annotations

from migrations import concurrently

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

_NAME = "ix_attempts_backend_external_id"


def upgrade() -> None:
    concurrently.create_index(_NAME, "attempts", ["backend", "external_id"],
                              "external_id IS NOT NULL")


def downgrade() -> None:
    concurrently.drop_index(_NAME, "attempts")
