"""``job.charged``: a job's cost changed after its terminal event

A cancel or a deadline ends a job at once while its attempt may still be billed: the hold is
kept until the attempt concludes, and then ``orch_end_job`` charges what the provider
billed, the job's ``cost_micros`` rising after ``job.cancelled`` (or ``job.failed``) was
sent with the cost as it stood. A consumer of webhooks or the feed never heard of it, and
under-counted its spend. A trigger on ``jobs`` now writes ``job.charged`` (the job's status
and backend, and its cost: the new total and every attempt's) whenever an ended job's cost
changes, through ``orch_emit_job_event`` as every event (same transaction, per-job ``seq``,
the feed, deliveries to the endpoints subscribed to it, notifications). The trigger's WHEN
clause keeps it off every other update.

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

_USD = "round(({})::numeric / 1000000, 6)"

_CHARGED_FN = f"""
CREATE OR REPLACE FUNCTION orch_jobs_charged() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_cost jsonb;
BEGIN
    SELECT jsonb_build_object(
        'total_usd', {_USD.format("COALESCE(NEW.cost_micros, 0)")},
        'total_micros', COALESCE(NEW.cost_micros, 0),
        'previous_total_usd', {_USD.format("COALESCE(OLD.cost_micros, 0)")},
        'estimated_usd', {_USD.format("NEW.estimated_cost_micros")},
        'attempts', COALESCE(jsonb_agg(jsonb_build_object(
            'attempt', a.number, 'backend', a.backend, 'outcome', a.outcome,
            'cost_usd', {_USD.format("a.cost_micros")}) ORDER BY a.number), '[]'::jsonb))
    INTO v_cost FROM attempts a WHERE a.job_id = NEW.id;
    PERFORM orch_emit_job_event(NEW.id, NEW.tenant, NEW.spec, 'job.charged',
        jsonb_build_object('status', NEW.status, 'backend', NEW.backend, 'cost', v_cost));
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    op.execute(_CHARGED_FN)
    op.execute(
        "CREATE TRIGGER jobs_charged AFTER UPDATE OF cost_micros ON jobs FOR EACH ROW "
        "WHEN (OLD.status IN ('succeeded', 'failed', 'cancelled') "
        "AND NEW.status = OLD.status "
        "AND NEW.cost_micros IS DISTINCT FROM OLD.cost_micros) "
        "EXECUTE FUNCTION orch_jobs_charged()")


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS jobs_charged ON jobs")
    op.execute("DROP FUNCTION IF EXISTS orch_jobs_charged()")
