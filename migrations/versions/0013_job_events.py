"""Job events (outbox), webhook endpoints and deliveries

``job_events`` holds what happened to a job: ``job.queued``, ``job.started`` (backend,
attempt), ``job.failover`` (from, to, why), ``job.succeeded`` (result, cost), ``job.failed``
(error, cost), ``job.cancelled``. Triggers write them in the same transaction as the change
that causes them, whatever path made it (the admission function, the chain's statements,
``orch_end_job``), so an event exists exactly when its transition committed:

- ``jobs`` AFTER INSERT: ``job.queued``; AFTER UPDATE OF status into a final status from a
  live one: the terminal event (a chain's requeue, running -> queued, is internal);
- ``attempts`` AFTER INSERT: ``job.failover`` (from attempt N-1, when N > 1), then
  ``job.started``. Every opening updates the job row first, so it holds the job's lock.

Every event-writing statement holds the job row's lock, so ``seq`` (max + 1 per job) is gap
free and in commit order. ``txid`` (the writing transaction's id) orders a tenant's feed
without gaps: a reader takes only events whose transaction is older than every transaction
still running (``pg_snapshot_xmin``), in (txid, position) order. The same function queues
one ``webhook_deliveries`` row per subscribed endpoint (the job's ``webhook_url`` and
``webhook_events``, the tenant's default endpoint) and wakes listeners with ``pg_notify``
(sent at commit). Events never carry the prompt: the job's input is not copied.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

TERMINAL = '["job.succeeded", "job.failed", "job.cancelled"]'

_EMIT = f"""
CREATE OR REPLACE FUNCTION orch_emit_job_event(
    p_job uuid, p_tenant text, p_spec jsonb, p_type text, p_data jsonb
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_seq integer;
    v_id uuid;
    v_pos bigint;
BEGIN
    -- the caller holds the job row's lock: max + 1 is this job's next number
    SELECT COALESCE(max(e.seq), 0) + 1 INTO v_seq FROM job_events e WHERE e.job_id = p_job;
    INSERT INTO job_events (job_id, tenant, seq, type, data, txid, created_at)
    VALUES (p_job, p_tenant, v_seq, p_type, p_data,
            pg_current_xact_id()::text::bigint, clock_timestamp())
    RETURNING id, position INTO v_id, v_pos;
    IF p_spec->>'webhook_url' IS NOT NULL
       AND COALESCE(p_spec->'webhook_events', '{TERMINAL}'::jsonb) ? p_type THEN
        INSERT INTO webhook_deliveries (event_id, job_id, tenant, seq, target)
        VALUES (v_id, p_job, p_tenant, v_seq, 'job');
    END IF;
    INSERT INTO webhook_deliveries (event_id, job_id, tenant, seq, target)
    SELECT v_id, p_job, p_tenant, v_seq, 'tenant' FROM webhook_endpoints w
    WHERE w.tenant = p_tenant AND w.url IS NOT NULL AND w.events ? p_type;
    PERFORM pg_notify('orch_job_events', json_build_object(
        't', p_tenant, 'j', p_job, 's', v_seq, 'p', v_pos)::text);
END
$$
"""

_USD = "round(({})::numeric / 1000000, 6)"

_JOBS_TRIGGER_FN = f"""
CREATE OR REPLACE FUNCTION orch_jobs_events() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_cost jsonb;
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM orch_emit_job_event(NEW.id, NEW.tenant, NEW.spec, 'job.queued',
            jsonb_build_object('status', NEW.status, 'kind', NEW.kind, 'tier', NEW.tier,
                               'estimated_cost_usd', {_USD.format("NEW.estimated_cost_micros")}));
        RETURN NULL;
    END IF;
    IF OLD.status NOT IN ('queued', 'running')
       OR NEW.status NOT IN ('succeeded', 'failed', 'cancelled') THEN
        RETURN NULL;
    END IF;
    SELECT jsonb_build_object(
        'total_usd', {_USD.format("COALESCE(NEW.cost_micros, 0)")},
        'total_micros', COALESCE(NEW.cost_micros, 0),
        'estimated_usd', {_USD.format("NEW.estimated_cost_micros")},
        'attempts', COALESCE(jsonb_agg(jsonb_build_object(
            'attempt', a.number, 'backend', a.backend, 'outcome', a.outcome,
            'cost_usd', {_USD.format("a.cost_micros")}) ORDER BY a.number), '[]'::jsonb))
    INTO v_cost FROM attempts a WHERE a.job_id = NEW.id;
    PERFORM orch_emit_job_event(NEW.id, NEW.tenant, NEW.spec, 'job.' || NEW.status,
        CASE WHEN NEW.status = 'succeeded'
             THEN jsonb_build_object('status', NEW.status, 'backend', NEW.backend,
                                     'result', NEW.result, 'cost', v_cost)
             ELSE jsonb_build_object('status', NEW.status, 'backend', NEW.backend,
                                     'error', jsonb_build_object('code', NEW.error_code,
                                                                 'message', NEW.error_message),
                                     'cost', v_cost) END);
    RETURN NULL;
END
$$
"""

_ATTEMPTS_TRIGGER_FN = """
CREATE OR REPLACE FUNCTION orch_attempts_events() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_tenant text;
    v_spec jsonb;
    v_prev record;
BEGIN
    SELECT j.tenant, j.spec INTO v_tenant, v_spec FROM jobs j WHERE j.id = NEW.job_id;
    IF NEW.number > 1 THEN
        SELECT a.backend, COALESCE(a.error_code, a.outcome) AS why INTO v_prev
        FROM attempts a WHERE a.job_id = NEW.job_id AND a.number = NEW.number - 1;
        PERFORM orch_emit_job_event(NEW.job_id, v_tenant, v_spec, 'job.failover',
            jsonb_build_object('from', v_prev.backend, 'to', NEW.backend,
                               'why', v_prev.why, 'attempt', NEW.number));
    END IF;
    PERFORM orch_emit_job_event(NEW.job_id, v_tenant, v_spec, 'job.started',
        jsonb_build_object('backend', NEW.backend, 'attempt', NEW.number));
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    op.create_table(
        "job_events",
        sa.Column("position", sa.BigInteger(), primary_key=True),
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False,
                  server_default=sa.text("gen_random_uuid()")),
        sa.Column("job_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(20), nullable=False),
        sa.Column("data", postgresql.JSONB(), nullable=False),
        sa.Column("txid", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE",
                                name="fk_job_events_job_id_jobs"),
        sa.PrimaryKeyConstraint("position", name="pk_job_events"),
        sa.UniqueConstraint("id", name="uq_job_events_id"),
        sa.UniqueConstraint("job_id", "seq", name="uq_job_events_job_seq"),
    )
    op.create_index("ix_job_events_feed", "job_events", ["tenant", "txid", "position"])
    op.create_index("ix_job_events_created", "job_events", ["created_at"])
    op.create_table(
        "webhook_endpoints",
        sa.Column("tenant", sa.String(64), primary_key=True),
        sa.Column("url", postgresql.JSONB()),
        sa.Column("origin", sa.String(300)),
        sa.Column("secret", postgresql.JSONB(), nullable=False),
        sa.Column("events", postgresql.JSONB(), nullable=False,
                  server_default=sa.text(f"'{TERMINAL}'::jsonb")),
        sa.Column("failing_since", sa.DateTime(timezone=True)),
        sa.Column("last_error", sa.String(200)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("tenant", name="pk_webhook_endpoints"),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.BigInteger(), primary_key=True),
        sa.Column("event_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("job_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("target", sa.String(8), nullable=False),
        sa.Column("status", sa.String(10), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.Column("last_error", sa.String(200)),
        sa.Column("claim_token", postgresql.UUID(as_uuid=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.Column("delivered_at", sa.DateTime(timezone=True)),
        sa.ForeignKeyConstraint(["event_id"], ["job_events.id"], ondelete="CASCADE",
                                name="fk_webhook_deliveries_event_id_job_events"),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_deliveries"),
        sa.UniqueConstraint("event_id", "target", name="uq_webhook_deliveries_event_target"),
        sa.CheckConstraint("target IN ('job', 'tenant')",
                           name="ck_webhook_deliveries_target_kind"),
        sa.CheckConstraint("status IN ('pending', 'delivered', 'failed')",
                           name="ck_webhook_deliveries_status_kind"),
    )
    op.create_index("ix_webhook_deliveries_pending", "webhook_deliveries",
                    ["next_attempt_at"], postgresql_where=sa.text("status = 'pending'"))
    op.create_index("ix_webhook_deliveries_job", "webhook_deliveries",
                    ["job_id", "target", "seq"])
    op.create_index("ix_webhook_deliveries_tenant", "webhook_deliveries",
                    ["tenant", "created_at"])
    op.add_column("jobs", sa.Column("result_expired_at", sa.DateTime(timezone=True)))
    op.execute(_EMIT)
    op.execute(_JOBS_TRIGGER_FN)
    op.execute(_ATTEMPTS_TRIGGER_FN)
    op.execute("CREATE TRIGGER jobs_events AFTER INSERT OR UPDATE OF status ON jobs "
               "FOR EACH ROW EXECUTE FUNCTION orch_jobs_events()")
    op.execute("CREATE TRIGGER attempts_events AFTER INSERT ON attempts "
               "FOR EACH ROW EXECUTE FUNCTION orch_attempts_events()")


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS attempts_events ON attempts")
    op.execute("DROP TRIGGER IF EXISTS jobs_events ON jobs")
    op.execute("DROP FUNCTION IF EXISTS orch_attempts_events()")
    op.execute("DROP FUNCTION IF EXISTS orch_jobs_events()")
    op.execute("DROP FUNCTION IF EXISTS orch_emit_job_event(uuid, text, jsonb, text, jsonb)")
    op.drop_column("jobs", "result_expired_at")
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_endpoints")
    op.drop_table("job_events")
