"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-22 17:53:15.911793
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None

# Frozen copies: a migration must not change when the models do.
APPEND_ONLY_FUNCTION = """
CREATE OR REPLACE FUNCTION ledger_entries_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'ledger_entries is append-only (% refused)', TG_OP;
END;
$$ LANGUAGE plpgsql
"""
APPEND_ONLY_TRIGGER = """
CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
FOR EACH ROW EXECUTE FUNCTION ledger_entries_append_only()
"""


def upgrade() -> None:
    op.create_table('api_keys',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('tenant', sa.String(length=64), nullable=False),
    sa.Column('key_hash', sa.String(length=128), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('admin', sa.Boolean(), server_default='false', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_keys')),
    sa.UniqueConstraint('key_hash', name=op.f('uq_api_keys_key_hash'))
    )
    op.create_table('budgets',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('scope', sa.String(length=160), nullable=False),
    sa.Column('period', sa.String(length=8), nullable=False),
    sa.Column('limit_micros', sa.BigInteger(), nullable=False),
    sa.Column('alert_thresholds_bp', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'[5000, 8000, 10000]'::jsonb"), nullable=False),
    sa.Column('channels', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'[]'::jsonb"), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("period IN ('day', 'month', 'total')", name=op.f('ck_budgets_period_kind')),
    sa.CheckConstraint('limit_micros >= 0', name=op.f('ck_budgets_limit_nonnegative')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_budgets')),
    sa.UniqueConstraint('scope', 'period', name='scope_period')
    )
    op.create_table('holds',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('job_id', sa.UUID(), nullable=False),
    sa.Column('amount_micros', sa.BigInteger(), nullable=False),
    sa.Column('charged_micros', sa.BigInteger(), nullable=True),
    sa.Column('status', sa.String(length=10), server_default='held', nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("status IN ('held', 'settled', 'released', 'expired')", name=op.f('ck_holds_status_kind')),
    sa.CheckConstraint('amount_micros >= 0', name=op.f('ck_holds_amount_nonnegative')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_holds')),
    sa.UniqueConstraint('job_id', name=op.f('uq_holds_job_id'))
    )
    op.create_index('ix_holds_expiry', 'holds', ['expires_at'], unique=False, postgresql_where=sa.text("status = 'held'"))
    op.create_table('jobs',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('tenant', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=10), server_default='queued', nullable=False),
    sa.Column('kind', sa.String(length=10), nullable=False),
    sa.Column('tier', sa.String(length=10), nullable=False),
    sa.Column('spec', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('route', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('backend', sa.String(length=64), nullable=True),
    sa.Column('estimated_cost_micros', sa.BigInteger(), nullable=False),
    sa.Column('cost_micros', sa.BigInteger(), nullable=True),
    sa.Column('result', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('error_code', sa.String(length=64), nullable=True),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.Column('idempotency_key', sa.String(length=200), nullable=True),
    sa.Column('request_hash', sa.String(length=64), nullable=True),
    sa.Column('deadline_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('chain_token', sa.UUID(), nullable=True),
    sa.Column('wake_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')", name=op.f('ck_jobs_status_kind')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_jobs')),
    sa.UniqueConstraint('tenant', 'idempotency_key', name='tenant_idempotency')
    )
    op.create_index('ix_jobs_owed_work', 'jobs', ['wake_at'], unique=False, postgresql_where=sa.text("status IN ('queued', 'running')"))
    op.create_index('ix_jobs_tenant_created', 'jobs', ['tenant', 'created_at', 'id'], unique=False)
    op.create_table('attempts',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('job_id', sa.UUID(), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('backend', sa.String(length=64), nullable=False),
    sa.Column('external_id', sa.String(length=200), nullable=True),
    sa.Column('outcome', sa.String(length=16), nullable=True),
    sa.Column('fault', sa.String(length=16), nullable=True),
    sa.Column('slot', sa.String(length=40), nullable=True),
    sa.Column('probe', sa.Boolean(), server_default='false', nullable=False),
    sa.Column('error_code', sa.String(length=64), nullable=True),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.Column('cost_micros', sa.BigInteger(), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_attempts_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_attempts')),
    sa.UniqueConstraint('job_id', 'number', name='job_number')
    )
    op.create_index('ix_attempts_in_flight', 'attempts', ['backend'], unique=False, postgresql_where=sa.text('outcome IS NULL'))
    op.create_table('budget_periods',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('budget_id', sa.BigInteger(), nullable=False),
    sa.Column('period_start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('period_end', sa.DateTime(timezone=True), nullable=True),
    sa.Column('limit_micros', sa.BigInteger(), nullable=False),
    sa.Column('committed_micros', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('held_micros', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('committed_micros + held_micros <= limit_micros', name=op.f('ck_budget_periods_within_limit')),
    sa.CheckConstraint('committed_micros >= 0', name=op.f('ck_budget_periods_committed_nonnegative')),
    sa.CheckConstraint('held_micros >= 0', name=op.f('ck_budget_periods_held_nonnegative')),
    sa.ForeignKeyConstraint(['budget_id'], ['budgets.id'], name=op.f('fk_budget_periods_budget_id_budgets'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_budget_periods')),
    sa.UniqueConstraint('budget_id', 'period_start', name='budget_start')
    )
    op.create_table('alerts',
    sa.Column('id', sa.UUID(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('budget_id', sa.BigInteger(), nullable=False),
    sa.Column('budget_period_id', sa.BigInteger(), nullable=False),
    sa.Column('kind', sa.String(length=10), nullable=False),
    sa.Column('threshold_bp', sa.Integer(), nullable=False),
    sa.Column('payload', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('status', sa.String(length=10), server_default='pending', nullable=False),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("kind IN ('threshold', 'forecast', 'refusal')", name=op.f('ck_alerts_alert_kind')),
    sa.ForeignKeyConstraint(['budget_id'], ['budgets.id'], name=op.f('fk_alerts_budget_id_budgets'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['budget_period_id'], ['budget_periods.id'], name=op.f('fk_alerts_budget_period_id_budget_periods')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alerts')),
    sa.UniqueConstraint('budget_period_id', 'kind', 'threshold_bp', name='once')
    )
    op.create_index('ix_alerts_pending', 'alerts', ['created_at'], unique=False, postgresql_where=sa.text("status = 'pending'"))
    op.create_table('hold_lines',
    sa.Column('hold_id', sa.BigInteger(), nullable=False),
    sa.Column('budget_period_id', sa.BigInteger(), nullable=False),
    sa.Column('amount_micros', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['budget_period_id'], ['budget_periods.id'], name=op.f('fk_hold_lines_budget_period_id_budget_periods')),
    sa.ForeignKeyConstraint(['hold_id'], ['holds.id'], name=op.f('fk_hold_lines_hold_id_holds'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('hold_id', 'budget_period_id', name=op.f('pk_hold_lines'))
    )
    op.create_table('ledger_entries',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('budget_period_id', sa.BigInteger(), nullable=False),
    sa.Column('job_id', sa.UUID(), nullable=False),
    sa.Column('kind', sa.String(length=10), nullable=False),
    sa.Column('idempotency_key', sa.String(length=200), nullable=False),
    sa.Column('held_delta_micros', sa.BigInteger(), nullable=False),
    sa.Column('committed_delta_micros', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("kind IN ('hold', 'settle', 'release', 'expire')", name=op.f('ck_ledger_entries_entry_kind')),
    sa.ForeignKeyConstraint(['budget_period_id'], ['budget_periods.id'], name=op.f('fk_ledger_entries_budget_period_id_budget_periods')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ledger_entries')),
    sa.UniqueConstraint('idempotency_key', 'budget_period_id', name='key_period')
    )
    op.create_index('ix_ledger_entries_job', 'ledger_entries', ['job_id'], unique=False)
    op.create_index('ix_ledger_entries_period', 'ledger_entries', ['budget_period_id'], unique=False)
    op.execute(APPEND_ONLY_FUNCTION)
    op.execute(APPEND_ONLY_TRIGGER)


def downgrade() -> None:
    op.execute('DROP TRIGGER IF EXISTS ledger_entries_append_only ON ledger_entries')
    op.execute('DROP FUNCTION IF EXISTS ledger_entries_append_only()')
    op.drop_index('ix_ledger_entries_period', table_name='ledger_entries')
    op.drop_index('ix_ledger_entries_job', table_name='ledger_entries')
    op.drop_table('ledger_entries')
    op.drop_table('hold_lines')
    op.drop_index('ix_alerts_pending', table_name='alerts', postgresql_where=sa.text("status = 'pending'"))
    op.drop_table('alerts')
    op.drop_table('budget_periods')
    op.drop_index('ix_attempts_in_flight', table_name='attempts', postgresql_where=sa.text('outcome IS NULL'))
    op.drop_table('attempts')
    op.drop_index('ix_jobs_tenant_created', table_name='jobs')
    op.drop_index('ix_jobs_owed_work', table_name='jobs', postgresql_where=sa.text("status IN ('queued', 'running')"))
    op.drop_table('jobs')
    op.drop_index('ix_holds_expiry', table_name='holds', postgresql_where=sa.text("status = 'held'"))
    op.drop_table('holds')
    op.drop_table('budgets')
    op.drop_table('api_keys')
