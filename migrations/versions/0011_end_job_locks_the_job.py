"""orch_end_job waits for the job row before it looks for an open attempt

``orch_end_job`` (migration 0009) decided whether an attempt was still open (so that the hold
waits for that attempt's bill) before its ``UPDATE jobs`` waited for the job row. A chain's
claim (``claim_and_open``: queued -> running and the first attempt, one statement) holding that
row and committing meanwhile was missed: the job ended with its hold released and nothing
charged, while the attempt, opened anyway, ran and was billed. The load test found it (a text
job cancelled 5 ms before its claim committed; tests/integration/test_ledger_cancel_race.py).

Now the function locks the job row (``FOR UPDATE``) first, after closing the given attempt as
before (the lock order stays attempts, then jobs), and only then looks for an open attempt:
under READ COMMITTED that statement sees every attempt committed before the lock was granted,
and no attempt can open while it is held (every opening updates the job row first). Same
signature and result.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_PERIOD_COLUMNS = """
    id bigint, budget_id bigint, period_start timestamptz, period_end timestamptz,
    limit_micros bigint, committed_micros bigint, held_micros bigint, scope text,
    period text, alert_thresholds_bp jsonb, forecast_thresholds_bp jsonb
"""
_NO_PERIOD = ("NULL::bigint, NULL::bigint, NULL::timestamptz, NULL::timestamptz, NULL::bigint, "
              "NULL::bigint, NULL::bigint, NULL::text, NULL::text, NULL::jsonb, NULL::jsonb")
# no attempt opens while this is held: every opening updates the job row first
_LOCK = """    PERFORM 1 FROM jobs j WHERE j.id = p_job FOR UPDATE;
"""
_END_JOB = """
CREATE OR REPLACE FUNCTION orch_end_job(
    p_job uuid, p_status text, p_now timestamptz,
    p_attempt bigint, p_outcome text, p_fault text, p_attempt_cost bigint,
    p_external_id text, p_attempt_code text, p_attempt_message text,
    p_possible_cost bigint,
    p_backend text, p_result jsonb, p_error_code text, p_error_message text,
    p_guard boolean, p_conclude_in_s double precision
) RETURNS TABLE (
    ended text, cost_micros bigint, charged_micros bigint, hold_status text,
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
{lock}    v_open := EXISTS (SELECT 1 FROM attempts a
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
        -- ended before: once no attempt is open, a hold still held is owed its
        -- conclusion (an ending finishes the hold in the same statement otherwise)
        IF v_open OR NOT EXISTS (SELECT 1 FROM holds h
                                 WHERE h.job_id = p_job AND h.status = 'held') THEN
            IF NOT v_open THEN  -- nothing is owed any more: no chain is revived
                UPDATE jobs j SET wake_at = NULL
                WHERE j.id = p_job AND j.wake_at IS NOT NULL;
            END IF;
            RETURN QUERY SELECT 'job_final'::text, NULL::bigint, NULL::bigint,
                                NULL::text, NULL::bigint, {no_period};
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
        RETURN QUERY SELECT 'ended'::text, v_total, NULL::bigint, 'held'::text,
                            NULL::bigint, {no_period};
        RETURN;
    END IF;
    RETURN QUERY SELECT v_result, v_total, v_total, NULL::text, f.*
    FROM orch_finish_hold(p_job,
                          CASE WHEN v_status = 'succeeded' THEN 'settled'
                               ELSE 'released' END,
                          CASE WHEN v_status = 'succeeded' THEN 'settle'
                               ELSE 'release' END,
                          v_total, p_now, p_guard) f;
    IF NOT FOUND THEN
        SELECT h.status INTO v_hold FROM holds h WHERE h.job_id = p_job;
        RETURN QUERY SELECT v_result, v_total, NULL::bigint,
                            COALESCE(v_hold, 'missing'), NULL::bigint, {no_period};
    END IF;
END
$$
"""


def _end_job(lock: str) -> str:
    return _END_JOB.format(lock=lock, periods=_PERIOD_COLUMNS, no_period=_NO_PERIOD)


def upgrade() -> None:
    op.execute(_end_job(_LOCK))


def downgrade() -> None:
    op.execute(_end_job(""))  # as 0009 left it
