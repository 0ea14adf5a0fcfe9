"""orch_end_job keeps a late success's output in the ending's own statement

A job that ended (cancelled, or failed by its deadline) while its attempt ran, and whose
provider finished that attempt all the same, is charged the work in full and keeps its output
as the job's result. When the ending and the success's answer crossed (the job ended between
the answer and the chain's ending of it), the runner closed the attempt ``succeeded`` and
charged it with ``orch_end_job``, then wrote the output in a statement of its own: a crash
between the two left the job charged for output it no longer had, and no later step looked at
the closed attempt again.

Now ``orch_end_job`` keeps the output itself: given the attempt it closes as ``succeeded``
and that attempt's ``p_result``, on a job that had already ended so, it writes the result
(unless the job has one, or its result was expired) in the same statement, and says so in a
new column ``kept``, placed before ``hold_micros``. Same arguments; everything else as
migration 0011 left it.

Revision ID: 0021
Revises: 0020
"""

from __future__ import annotations

from alembic import op

from migrations.earlier import migration

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

_SIGNATURE = ("uuid, text, timestamptz, bigint, text, text, bigint, text, text, text, bigint, "
              "text, jsonb, text, text, boolean, double precision")
_PERIOD_COLUMNS = """
    id bigint, budget_id bigint, period_start timestamptz, period_end timestamptz,
    limit_micros bigint, committed_micros bigint, held_micros bigint, scope text,
    period text, alert_thresholds_bp jsonb, forecast_thresholds_bp jsonb
"""
_NO_PERIOD = ("NULL::bigint, NULL::bigint, NULL::timestamptz, NULL::timestamptz, NULL::bigint, "
              "NULL::bigint, NULL::bigint, NULL::text, NULL::text, NULL::jsonb, NULL::jsonb")
_END_JOB = """
CREATE FUNCTION orch_end_job(
    p_job uuid, p_status text, p_now timestamptz,
    p_attempt bigint, p_outcome text, p_fault text, p_attempt_cost bigint,
    p_external_id text, p_attempt_code text, p_attempt_message text,
    p_possible_cost bigint,
    p_backend text, p_result jsonb, p_error_code text, p_error_message text,
    p_guard boolean, p_conclude_in_s double precision
) RETURNS TABLE (
    ended text, cost_micros bigint, charged_micros bigint, hold_status text, kept boolean,
    hold_micros bigint, {periods}
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_total bigint;
    v_status text;
    v_open boolean;
    v_result text := 'ended';
    v_hold text;
    v_kept boolean := false;
BEGIN
    IF p_attempt IS NOT NULL THEN
        UPDATE attempts a SET outcome = p_outcome, fault = p_fault,
            cost_micros = p_attempt_cost, finished_at = p_now,
            error_code = COALESCE(p_attempt_code, a.error_code),
            error_message = COALESCE(p_attempt_message, a.error_message),
            possible_cost_micros = p_possible_cost,
            external_id = COALESCE(p_external_id, a.external_id)
        WHERE a.id = p_attempt AND a.outcome IS NULL;
        IF NOT FOUND THEN
            RETURN;
        END IF;
    END IF;
    -- no attempt opens while this is held: every opening updates the job row first
    PERFORM 1 FROM jobs j WHERE j.id = p_job FOR UPDATE;
    v_open := EXISTS (SELECT 1 FROM attempts a
                      WHERE a.job_id = p_job AND a.outcome IS NULL);
    UPDATE jobs j SET status = p_status, finished_at = p_now, updated_at = p_now,
        backend = COALESCE(p_backend, j.backend),
        cost_micros = (SELECT COALESCE(SUM(a.cost_micros), 0)
                       FROM attempts a WHERE a.job_id = p_job),
        result = p_result, error_code = p_error_code, error_message = p_error_message,
        wake_at = CASE WHEN v_open
                       THEN now() + p_conclude_in_s * interval '1 second' END
    WHERE j.id = p_job AND j.status IN ('queued', 'running')
    RETURNING j.cost_micros, j.status INTO v_total, v_status;
    IF NOT FOUND THEN
        -- ended before: an attempt just closed succeeded is work charged in full, so the
        -- job keeps its output (as jobs.keep_late_result does for a conclusion)
        IF p_attempt IS NOT NULL AND p_outcome = 'succeeded' AND p_result IS NOT NULL THEN
            UPDATE jobs j SET result = p_result, updated_at = p_now
            WHERE j.id = p_job AND j.result IS NULL AND j.result_expired_at IS NULL
              AND (j.status = 'cancelled'
                   OR (j.status = 'failed' AND j.error_code = 'deadline_exceeded'));
            v_kept := FOUND;
        END IF;
        -- once no attempt is open, a hold still held is owed its conclusion (an ending
        -- finishes the hold in the same statement otherwise)
        IF v_open OR NOT EXISTS (SELECT 1 FROM holds h
                                 WHERE h.job_id = p_job AND h.status = 'held') THEN
            IF NOT v_open THEN  -- nothing is owed any more: no chain is revived
                UPDATE jobs j SET wake_at = NULL
                WHERE j.id = p_job AND j.wake_at IS NOT NULL;
            END IF;
            RETURN QUERY SELECT 'job_final'::text, NULL::bigint, NULL::bigint,
                                NULL::text, v_kept, NULL::bigint, {no_period};
            RETURN;
        END IF;
        -- the last attempt open when the job ended has concluded: its bill counts
        UPDATE jobs j SET updated_at = p_now, wake_at = NULL,
            cost_micros = (SELECT COALESCE(SUM(a.cost_micros), 0)
                           FROM attempts a WHERE a.job_id = p_job)
        WHERE j.id = p_job
        RETURNING j.cost_micros, j.status INTO v_total, v_status;
        v_result := 'concluded';
    ELSIF v_open THEN
        RETURN QUERY SELECT 'ended'::text, v_total, NULL::bigint, 'held'::text, false,
                            NULL::bigint, {no_period};
        RETURN;
    END IF;
    RETURN QUERY SELECT v_result, v_total, v_total, NULL::text, v_kept, f.*
    FROM orch_finish_hold(p_job,
                          CASE WHEN v_status = 'succeeded' THEN 'settled'
                               ELSE 'released' END,
                          CASE WHEN v_status = 'succeeded' THEN 'settle'
                               ELSE 'release' END,
                          v_total, p_now, p_guard) f;
    IF NOT FOUND THEN
        SELECT h.status INTO v_hold FROM holds h WHERE h.job_id = p_job;
        RETURN QUERY SELECT v_result, v_total, NULL::bigint,
                            COALESCE(v_hold, 'missing'), v_kept, NULL::bigint, {no_period};
    END IF;
END
$$
"""


def upgrade() -> None:
    # a function's result columns cannot be changed in place
    op.execute(f"DROP FUNCTION orch_end_job({_SIGNATURE})")
    op.execute(_END_JOB.format(periods=_PERIOD_COLUMNS, no_period=_NO_PERIOD))


def downgrade() -> None:
    op.execute(f"DROP FUNCTION orch_end_job({_SIGNATURE})")
    earlier = migration("0011_end_job_locks_the_job.py")
    op.execute(earlier._end_job(earlier._LOCK).replace("CREATE OR REPLACE", "CREATE", 1))
