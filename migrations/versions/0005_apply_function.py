"""orch_apply: a settle's or release's budget moves as one server-side call

``orch_apply(job, kind, now, period ids, releases, charges, guard)`` locks the periods in the
given (ascending) order, appends the step's ledger entries (``<kind>:<job>``, unique per
period: a replay adds nothing), then takes ``release`` off each period's held amount and adds
``charge`` to its committed amount, exactly as the ledger's statements did from Python. It returns each
period row as updated, joined to its budget, for the threshold and forecast alerts.

Those alerts belong to the same transaction (the ledger's outbox). With ``guard`` true the
function instead raises SQLSTATE ``OR2AL`` when a charge may owe one: a threshold of
``alert_thresholds_bp`` crossed (the same integer rule as
``orchestrator.domain.budgets.crossed_thresholds``) or, conservatively, any charge to a
period with an end whose budget has forecast thresholds. It decides on the locked rows before
it changes any, so a refused step has updated nothing. When it does not raise, no alert is
owed, so the ledger sends the call and the COMMIT in one round trip and the period rows
stay locked for the server's work only; when it raises, the transaction is rolled back and
run again without the guard, writing the alerts from Python.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION orch_apply(
            p_job uuid, p_kind text, p_now timestamptz,
            p_pids bigint[], p_releases bigint[], p_charges bigint[], p_guard boolean
        ) RETURNS TABLE (
            id bigint, budget_id bigint, period_start timestamptz, period_end timestamptz,
            limit_micros bigint, committed_micros bigint, held_micros bigint, scope text,
            period text, alert_thresholds_bp jsonb, forecast_thresholds_bp jsonb
        )
        LANGUAGE plpgsql AS $$
        DECLARE
            i integer;
            n integer := coalesce(array_length(p_pids, 1), 0);
            p record;
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
                IF p_guard AND p_charges[i] > 0 AND (
                    EXISTS (
                        SELECT 1 FROM jsonb_array_elements_text(p.thresholds) AS t(bp)
                        WHERE ceil(p.limit_micros::numeric * t.bp::numeric / 10000)
                              > p.committed_micros
                          AND ceil(p.limit_micros::numeric * t.bp::numeric / 10000)
                              <= p.committed_micros + p_charges[i]
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
            FROM unnest(p_pids, p_releases, p_charges) AS t(pid, rel, chg);
            FOR i IN 1 .. n LOOP
                RETURN QUERY
                WITH moved AS (
                    UPDATE budget_periods bp
                    SET held_micros = bp.held_micros - p_releases[i],
                        committed_micros = bp.committed_micros + p_charges[i]
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
    )


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION orch_apply(uuid, text, timestamptz, bigint[], bigint[], bigint[], boolean)"
    )
