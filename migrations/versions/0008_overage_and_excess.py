"""overage and excess: a bill above its hold is charged in full

Schema:

- ``budget_periods.excess_micros`` (bigint, not null, default 0, ``CHECK >= 0``): what the
  period carries past its limit, which only an overage charge or a limit lowered below what
  is already committed + held may put there. Every statement that moves the counters keeps it
  at exactly ``GREATEST(0, committed + held - limit)``; the CHECK ``within_limit`` becomes
  ``committed + held <= limit + excess``, so any other way past the limit (a hold that skipped
  its condition) still fails in the database. Holds never use the excess: ``orch_reserve``
  (0004) still takes a hold only while ``committed + held + amount <= limit``.
- ``ledger_entries.kind`` may be ``overage``; ``alerts.kind`` may be ``overage``.

Functions:

- ``orch_apply(job, kind, now, period ids, releases, charges, overages, guard)`` (replaces the
  seven-argument one of 0005): as before, plus an ``overage:<job>`` entry in each period whose
  overage is positive (committed + overage, held 0), the overage added to committed, and the
  excess kept exact. With ``guard`` it raises ``OR2AL`` for any overage (an overage alert is
  always owed) and counts the overage into the threshold crossing.
- ``orch_finish_hold`` (same signature and result as 0006): takes any charge. Each line's
  settle/release entry moves its hold (held - amount, committed + LEAST(charge, amount)); the
  rest of the charge is the line's overage. ``holds.charged_micros`` is the whole charge.
- ``orch_end_job`` (same signature and result as 0006): charges the job's cost (the sum of its
  attempts' costs) in full, no longer capped at its estimate. Its ``hold_micros`` column lets
  the caller see the overage (charge - hold).

Downgrade refuses to run once an overage or an excess exists (ledger entries are append-only:
the old CHECKs could not hold again); otherwise it restores the 0005/0006 functions and the
old constraints.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_PERIOD_COLUMNS = """
    id bigint, budget_id bigint, period_start timestamptz, period_end timestamptz,
    limit_micros bigint, committed_micros bigint, held_micros bigint, scope text,
    period text, alert_thresholds_bp jsonb, forecast_thresholds_bp jsonb
"""
_NO_PERIOD = ("NULL::bigint, NULL::bigint, NULL::timestamptz, NULL::timestamptz, NULL::bigint, "
              "NULL::bigint, NULL::bigint, NULL::text, NULL::text, NULL::jsonb, NULL::jsonb")

_OLD_APPLY = "orch_apply(uuid, text, timestamptz, bigint[], bigint[], bigint[], boolean)"
_NEW_APPLY = (
    "orch_apply(uuid, text, timestamptz, bigint[], bigint[], bigint[], bigint[], boolean)"
)
_FINISH_HOLD = "orch_finish_hold(uuid, text, text, bigint, timestamptz, boolean)"
_END_JOB = ("orch_end_job(uuid, text, timestamptz, bigint, text, text, bigint, text, text, "
            "jsonb, text, text, boolean)")

_APPLY_SQL = f"""
CREATE FUNCTION orch_apply(
    p_job uuid, p_kind text, p_now timestamptz,
    p_pids bigint[], p_releases bigint[], p_charges bigint[], p_overages bigint[],
    p_guard boolean
) RETURNS TABLE ({_PERIOD_COLUMNS})
LANGUAGE plpgsql AS $$
DECLARE
    i integer;
    n integer := coalesce(array_length(p_pids, 1), 0);
    p record;
    v_add bigint;
BEGIN
    -- Lock every period first and decide on the alerts from the locked rows, so a
    -- refusal aborts a transaction that has locked but not yet updated them.
    FOR i IN 1 .. n LOOP
        SELECT bp.limit_micros, bp.committed_micros, bp.period_end,
               b.alert_thresholds_bp AS thresholds, b.forecast_thresholds_bp AS forecasts
        INTO p
        FROM budget_periods bp JOIN budgets b ON b.id = bp.budget_id
        WHERE bp.id = p_pids[i]
        FOR NO KEY UPDATE OF bp;
        v_add := p_charges[i] + p_overages[i];  -- what committed grows by
        IF p_guard AND v_add > 0 AND (
            p_overages[i] > 0
            OR EXISTS (
                SELECT 1 FROM jsonb_array_elements_text(p.thresholds) AS t(bp)
                WHERE ceil(p.limit_micros::numeric * t.bp::numeric / 10000)
                      > p.committed_micros
                  AND ceil(p.limit_micros::numeric * t.bp::numeric / 10000)
                      <= p.committed_micros + v_add
            )
            OR (p.period_end IS NOT NULL AND jsonb_array_length(p.forecasts) > 0)
        ) THEN
            RAISE EXCEPTION 'alerts_owed' USING ERRCODE = 'OR2AL';
        END IF;
    END LOOP;
    INSERT INTO ledger_entries
        (budget_period_id, job_id, kind, idempotency_key, held_delta_micros,
         committed_delta_micros, created_at)
    SELECT t.pid, p_job, p_kind, p_kind || ':' || p_job, -t.rel, t.chg, p_now
    FROM unnest(p_pids, p_releases, p_charges) AS t(pid, rel, chg)
    UNION ALL
    SELECT t.pid, p_job, 'overage', 'overage:' || p_job, 0, t.ovr, p_now
    FROM unnest(p_pids, p_overages) AS t(pid, ovr)
    WHERE t.ovr > 0;
    FOR i IN 1 .. n LOOP
        RETURN QUERY
        WITH moved AS (
            UPDATE budget_periods bp
            SET held_micros = bp.held_micros - p_releases[i],
                committed_micros = bp.committed_micros + p_charges[i] + p_overages[i],
                -- exactly what is past the limit now, and only what an overage put there
                -- or was there already (a lowered limit)
                excess_micros = GREATEST(0, LEAST(
                    bp.excess_micros + p_overages[i],
                    bp.committed_micros + p_charges[i] + p_overages[i]
                        + bp.held_micros - p_releases[i] - bp.limit_micros))
            WHERE bp.id = p_pids[i]
            RETURNING bp.id, bp.budget_id, bp.period_start, bp.period_end,
                      bp.limit_micros, bp.committed_micros, bp.held_micros
        )
        SELECT m.id, m.budget_id, m.period_start, m.period_end, m.limit_micros,
               m.committed_micros, m.held_micros, b.scope::text, b.period::text,
               b.alert_thresholds_bp, b.forecast_thresholds_bp
        FROM moved m JOIN budgets b ON b.id = m.budget_id;
    END LOOP;
END
$$
"""

_FINISH_HOLD_SQL = f"""
CREATE OR REPLACE FUNCTION orch_finish_hold(
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
    v_charges bigint[];
    v_overages bigint[];
BEGIN
    UPDATE holds h SET status = p_status, charged_micros = p_charge, finished_at = p_now
    WHERE h.job_id = p_job AND h.status = 'held'
    RETURNING h.id, h.amount_micros INTO v_hold, v_amount;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT array_agg(hl.budget_period_id ORDER BY hl.budget_period_id),
           array_agg(hl.amount_micros ORDER BY hl.budget_period_id),
           array_agg(LEAST(p_charge, hl.amount_micros) ORDER BY hl.budget_period_id),
           array_agg(GREATEST(0, p_charge - hl.amount_micros) ORDER BY hl.budget_period_id)
    INTO v_pids, v_lines, v_charges, v_overages
    FROM hold_lines hl WHERE hl.hold_id = v_hold;
    IF v_pids IS NULL THEN
        RETURN QUERY SELECT v_amount, {_NO_PERIOD};
        RETURN;
    END IF;
    RETURN QUERY SELECT v_amount, a.*
    FROM orch_apply(p_job, p_kind, p_now, v_pids, v_lines, v_charges, v_overages,
                    p_guard) a;
END
$$
"""

_END_JOB_SQL = f"""
CREATE OR REPLACE FUNCTION orch_end_job(
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
    RETURNING j.cost_micros INTO v_total;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'job_final'::text, NULL::bigint, NULL::bigint, NULL::text,
                            NULL::bigint, {_NO_PERIOD};
        RETURN;
    END IF;
    -- the provider's bill in full: what the hold does not cover is its overage
    RETURN QUERY SELECT 'ended'::text, v_total, v_total, NULL::text, f.*
    FROM orch_finish_hold(p_job, CASE WHEN v_settle THEN 'settled' ELSE 'released' END,
                          CASE WHEN v_settle THEN 'settle' ELSE 'release' END,
                          v_total, p_now, p_guard) f;
    IF NOT FOUND THEN
        SELECT h.status INTO v_hold FROM holds h WHERE h.job_id = p_job;
        RETURN QUERY SELECT 'ended'::text, v_total, NULL::bigint,
                            COALESCE(v_hold, 'missing'), NULL::bigint, {_NO_PERIOD};
    END IF;
END
$$
"""

_ENTRY_KINDS_OLD = "kind IN ('hold', 'settle', 'release', 'expire')"
_ENTRY_KINDS = "kind IN ('hold', 'settle', 'release', 'expire', 'overage')"
_ALERT_KINDS_OLD = "kind IN ('threshold', 'forecast', 'refusal')"
_ALERT_KINDS = "kind IN ('threshold', 'forecast', 'refusal', 'overage')"
_WITHIN_LIMIT_OLD = "committed_micros + held_micros <= limit_micros"
_WITHIN_LIMIT = "committed_micros + held_micros <= limit_micros + excess_micros"


def _swap_check(table: str, name: str, condition: str) -> None:
    op.drop_constraint(op.f(name), table, type_="check")
    op.create_check_constraint(op.f(name), table, condition)


def upgrade() -> None:
    op.add_column(
        "budget_periods",
        sa.Column("excess_micros", sa.BigInteger(), server_default="0", nullable=False),
    )
    op.create_check_constraint(
        op.f("ck_budget_periods_excess_nonnegative"), "budget_periods", "excess_micros >= 0"
    )
    _swap_check("budget_periods", "ck_budget_periods_within_limit", _WITHIN_LIMIT)
    _swap_check("ledger_entries", "ck_ledger_entries_entry_kind", _ENTRY_KINDS)
    _swap_check("alerts", "ck_alerts_alert_kind", _ALERT_KINDS)
    op.execute(f"DROP FUNCTION {_OLD_APPLY}")
    op.execute(_APPLY_SQL)
    op.execute(_FINISH_HOLD_SQL)
    op.execute(_END_JOB_SQL)


def _earlier(filename: str) -> ModuleType:
    """An earlier migration's module (they never change), to run its upgrade again."""
    path = Path(__file__).with_name(filename)
    spec = importlib.util.spec_from_file_location(f"_orch_migration_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def downgrade() -> None:
    op.execute(
        """
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM ledger_entries WHERE kind = 'overage')
               OR EXISTS (SELECT 1 FROM alerts WHERE kind = 'overage')
               OR EXISTS (SELECT 1 FROM budget_periods WHERE excess_micros > 0) THEN
                RAISE EXCEPTION 'cannot downgrade below 0008: overage charges or an excess '
                                'exist (ledger entries are append-only)';
            END IF;
        END
        $$
        """
    )
    op.execute(f"DROP FUNCTION {_END_JOB}")
    op.execute(f"DROP FUNCTION {_FINISH_HOLD}")
    op.execute(f"DROP FUNCTION {_NEW_APPLY}")
    _earlier("0005_apply_function.py").upgrade()  # orch_apply, seven arguments
    _earlier("0006_end_job_function.py").upgrade()  # orch_finish_hold and orch_end_job
    _swap_check("alerts", "ck_alerts_alert_kind", _ALERT_KINDS_OLD)
    _swap_check("ledger_entries", "ck_ledger_entries_entry_kind", _ENTRY_KINDS_OLD)
    _swap_check("budget_periods", "ck_budget_periods_within_limit", _WITHIN_LIMIT_OLD)
    op.drop_constraint(
        op.f("ck_budget_periods_excess_nonnegative"), "budget_periods", type_="check"
    )
    op.drop_column("budget_periods", "excess_micros")
