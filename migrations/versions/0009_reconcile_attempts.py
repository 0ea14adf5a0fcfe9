"""Attempts reconciled with the provider: what an attempt may have cost, when its request was
last sent and its cancel asked for; a job ending while an attempt may still be billed keeps
its hold until that attempt concludes.

Columns of ``attempts``:

- ``sent_at``: when the submission was last sent (NULL: at ``started_at``); a repeat after a
  lost answer moves it, and the call window of a repeat counts from it.
- ``cancel_requested_at``: when the provider was asked to stop the attempt's work.
- ``possible_cost_micros``: an ``uncertain`` attempt's possible charge (its worst-case cost
  on that backend): the provider may have billed it and nothing could tell us.

``jobs.wake_at`` is set exactly while work is owed (a live job, or an ended one whose attempt
is still to be concluded), so the sweeper's index covers every non-NULL ``wake_at``.

``orch_end_job`` (migrations 0006 and 0008) gains the attempt's error and possible charge, and
``p_conclude_in_s``:

1. closes the open ``attempt`` if one is given (no row back: a duplicate step closed it);
2. ends a live job (``ended``). When another attempt is still open (a cancel or a deadline
   while a call runs), the hold stays held, ``wake_at`` is set ``p_conclude_in_s`` from now
   for the chain to conclude that attempt, and ``charged_micros`` comes back NULL with
   ``hold_status = 'held'``;
3. on a job already ended with its hold still held and no attempt open any more
   (``concluded``: the attempt closed now, or by another statement, was the last), sets the
   job's cost to the sum of its attempts' costs and finishes the hold with it; otherwise
   (``job_final``) nothing else changes;
4. charges the job's whole cost, as migration 0008 does: what the hold does not cover is its
   overage (``orch_finish_hold``).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_PERIOD_COLUMNS = """
    id bigint, budget_id bigint, period_start timestamptz, period_end timestamptz,
    limit_micros bigint, committed_micros bigint, held_micros bigint, scope text,
    period text, alert_thresholds_bp jsonb, forecast_thresholds_bp jsonb
"""
_NO_PERIOD = ("NULL::bigint, NULL::bigint, NULL::timestamptz, NULL::timestamptz, NULL::bigint, "
              "NULL::bigint, NULL::bigint, NULL::text, NULL::text, NULL::jsonb, NULL::jsonb")
_OLD_SIGNATURE = ("uuid, text, timestamptz, bigint, text, text, bigint, text, text, jsonb, "
                  "text, text, boolean")


def upgrade() -> None:
    op.add_column("attempts", sa.Column("sent_at", sa.DateTime(timezone=True)))
    op.add_column("attempts", sa.Column("cancel_requested_at", sa.DateTime(timezone=True)))
    op.add_column("attempts", sa.Column("possible_cost_micros", sa.BigInteger()))
    op.drop_index("ix_jobs_owed_work", table_name="jobs")
    op.create_index("ix_jobs_owed_work", "jobs", ["wake_at"],
                    postgresql_where=sa.text("wake_at IS NOT NULL"))
    op.execute(f"DROP FUNCTION orch_end_job({_OLD_SIGNATURE})")
    op.execute(
        f"""
        CREATE FUNCTION orch_end_job(
            p_job uuid, p_status text, p_now timestamptz,
            p_attempt bigint, p_outcome text, p_fault text, p_attempt_cost bigint,
            p_external_id text, p_attempt_code text, p_attempt_message text,
            p_possible_cost bigint,
            p_backend text, p_result jsonb, p_error_code text, p_error_message text,
            p_guard boolean, p_conclude_in_s double precision
        ) RETURNS TABLE (
            ended text, cost_micros bigint, charged_micros bigint, hold_status text,
            hold_micros bigint, {_PERIOD_COLUMNS}
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
                -- ended before: once no attempt is open, a hold still held is owed its
                -- conclusion (an ending finishes the hold in the same statement otherwise)
                IF v_open OR NOT EXISTS (SELECT 1 FROM holds h
                                         WHERE h.job_id = p_job AND h.status = 'held') THEN
                    IF NOT v_open THEN  -- nothing is owed any more: no chain is revived
                        UPDATE jobs j SET wake_at = NULL
                        WHERE j.id = p_job AND j.wake_at IS NOT NULL;
                    END IF;
                    RETURN QUERY SELECT 'job_final'::text, NULL::bigint, NULL::bigint,
                                        NULL::text, NULL::bigint, {_NO_PERIOD};
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
                                    NULL::bigint, {_NO_PERIOD};
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
                                    COALESCE(v_hold, 'missing'), NULL::bigint, {_NO_PERIOD};
            END IF;
        END
        $$
        """
    )


def _earlier(filename: str) -> ModuleType:
    """An earlier migration's module (they never change), for the function it created."""
    path = Path(__file__).with_name(filename)
    spec = importlib.util.spec_from_file_location(f"_orch_migration_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION orch_end_job(uuid, text, timestamptz, bigint, text, text, bigint, text, "
        "text, text, bigint, text, jsonb, text, text, boolean, double precision)"
    )
    op.execute(_earlier("0008_overage_and_excess.py")._END_JOB_SQL)  # as 0008 left it
    op.drop_index("ix_jobs_owed_work", table_name="jobs")
    op.create_index("ix_jobs_owed_work", "jobs", ["wake_at"],
                    postgresql_where=sa.text("status IN ('queued', 'running')"))
    op.drop_column("attempts", "possible_cost_micros")
    op.drop_column("attempts", "cancel_requested_at")
    op.drop_column("attempts", "sent_at")
