"""orch_finish_hold and orch_end_job: a hold's settle or release, and a job's ending, as one
server-side call each

``orch_finish_hold(job, status, kind, charge, now, guard)`` moves the job's hold from ``held``
to ``status`` (``settled`` / ``released``) if it can take ``charge``, then hands its lines to
``orch_apply`` (migration 0005). It returns the hold's amount with each period row as
updated; one row with NULL period columns for a hold no budget covers; no row when there was
no held hold that could take the charge (the ledger then finds out why).

``orch_end_job(job, status, now, attempt …, guard)`` is the runner's ending in one call:

1. close the open ``attempt``, if one is given (no row back: a duplicate step closed it);
2. move the job from queued/running to ``status`` with its cost, the sum of its attempts'
   costs (``ended = 'job_final'``: it had already ended; nothing else changes);
3. settle (``succeeded``) or release (otherwise) its hold through ``orch_finish_hold``,
   charging the job's cost, at most its estimate (``charged_micros`` NULL and the hold's
   status in ``hold_status`` when the hold was no longer held).

A call without an open transaction commits on its own, so the period rows every job of a
tenant touches stay locked for the server's work only. With ``guard`` true it raises
``OR2AL`` (from ``orch_apply``) when an alert may be owed, having changed nothing; the caller
then runs it without the guard in a transaction and writes the alerts from the returned
period rows before its COMMIT.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_PERIOD_COLUMNS = """
    id bigint, budget_id bigint, period_start timestamptz, period_end timestamptz,
    limit_micros bigint, committed_micros bigint, held_micros bigint, scope text,
    period text, alert_thresholds_bp jsonb, forecast_thresholds_bp jsonb
"""
_NO_PERIOD = ("NULL::bigint, NULL::bigint, NULL::timestamptz, NULL::timestamptz, NULL::bigint, "
              "NULL::bigint, NULL::bigint, NULL::text, NULL::text, NULL::jsonb, NULL::jsonb")


def upgrade() -> None:
    op.execute(
        f"""
        CREATE FUNCTION orch_finish_hold(
            p_job uuid, p_status text, p_kind text, p_charge bigint, p_now timestamptz,
            p_guard boolean
        ) RETURNS TABLE (hold_micros bigint, {_PERIOD_COLUMNS})
        LANGUAGE plpgsql AS $$
        #variable_conflict use_column
        DECLARE
            v_hold bigint;
            v_amount bigint;
            v_pids bigint[];
            v_lines bigint[];
        BEGIN
            UPDATE holds h SET status = p_status, charged_micros = p_charge, finished_at = p_now
            WHERE h.job_id = p_job AND h.status = 'held' AND h.amount_micros >= p_charge
            RETURNING h.id, h.amount_micros INTO v_hold, v_amount;
            IF NOT FOUND THEN
                RETURN;
            END IF;
            SELECT array_agg(hl.budget_period_id ORDER BY hl.budget_period_id),
                   array_agg(hl.amount_micros ORDER BY hl.budget_period_id)
            INTO v_pids, v_lines
            FROM hold_lines hl WHERE hl.hold_id = v_hold;
            IF v_pids IS NULL THEN
                RETURN QUERY SELECT v_amount, {_NO_PERIOD};
                RETURN;
            END IF;
            RETURN QUERY SELECT v_amount, a.*
            FROM orch_apply(p_job, p_kind, p_now, v_pids, v_lines,
                            array_fill(p_charge, ARRAY[cardinality(v_pids)]), p_guard) a;
        END
        $$
        """
    )
    op.execute(
        f"""
        CREATE FUNCTION orch_end_job(
            p_job uuid, p_status text, p_now timestamptz,
            p_attempt bigint, p_outcome text, p_fault text, p_attempt_cost bigint,
            p_external_id text,
            p_backend text, p_result jsonb, p_error_code text, p_error_message text,
            p_guard boolean
        ) RETURNS TABLE (
            ended text, cost_micros bigint, charged_micros bigint, hold_status text,
            hold_micros bigint, {_PERIOD_COLUMNS}
        )
        LANGUAGE plpgsql AS $$
        #variable_conflict use_column
        DECLARE
            v_total bigint;
            v_estimate bigint;
            v_charge bigint;
            v_settle boolean := p_status = 'succeeded';
            v_hold text;
        BEGIN
            IF p_attempt IS NOT NULL THEN
                UPDATE attempts a SET outcome = p_outcome, fault = p_fault,
                    cost_micros = p_attempt_cost, finished_at = p_now,
                    external_id = COALESCE(p_external_id, a.external_id)
                WHERE a.id = p_attempt AND a.outcome IS NULL;
                IF NOT FOUND THEN
                    RETURN;
                END IF;
            END IF;
            UPDATE jobs j SET status = p_status, finished_at = p_now, updated_at = p_now,
                backend = COALESCE(p_backend, j.backend),
                cost_micros = (SELECT COALESCE(SUM(a.cost_micros), 0)
                               FROM attempts a WHERE a.job_id = p_job),
                result = p_result, error_code = p_error_code, error_message = p_error_message,
                wake_at = NULL
            WHERE j.id = p_job AND j.status IN ('queued', 'running')
            RETURNING j.cost_micros, j.estimated_cost_micros INTO v_total, v_estimate;
            IF NOT FOUND THEN
                RETURN QUERY SELECT 'job_final'::text, NULL::bigint, NULL::bigint, NULL::text,
                                    NULL::bigint, {_NO_PERIOD};
                RETURN;
            END IF;
            v_charge := LEAST(v_total, v_estimate);
            RETURN QUERY SELECT 'ended'::text, v_total, v_charge, NULL::text, f.*
            FROM orch_finish_hold(p_job, CASE WHEN v_settle THEN 'settled' ELSE 'released' END,
                                  CASE WHEN v_settle THEN 'settle' ELSE 'release' END,
                                  v_charge, p_now, p_guard) f;
            IF NOT FOUND THEN
                SELECT h.status INTO v_hold FROM holds h WHERE h.job_id = p_job;
                RETURN QUERY SELECT 'ended'::text, v_total, NULL::bigint,
                                    COALESCE(v_hold, 'missing'), NULL::bigint, {_NO_PERIOD};
            END IF;
        END
        $$
        """
    )


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION orch_end_job(uuid, text, timestamptz, bigint, text, text, bigint, text, "
        "text, jsonb, text, text, boolean)"
    )
    op.execute(
        "DROP FUNCTION orch_finish_hold(uuid, text, text, bigint, timestamptz, boolean)"
    )
