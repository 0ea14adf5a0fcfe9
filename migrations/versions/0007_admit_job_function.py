"""orch_hold and orch_admit_job: a hold, and a new job with its hold, as one server-side call

``orch_hold(job, period ids, amount, expires, now)`` is the ledger's hold step: the hold row
(``ON CONFLICT (job_id) DO NOTHING``: NULL back when the job already has one, and nothing
else changes), then the reservation through ``orch_reserve`` (migration 0004; a refusal
raises ``OR402``), then the hold's lines and ``hold:<job>`` entries. The reservation comes
before the lines and entries, whose foreign keys then lock period rows this transaction has
already updated (PostgreSQL 18 was seen failing such an UPDATE with "new multixact has more
than one updating member" under concurrent holds).

``orch_admit_job(job columns …, scopes, period kinds, period starts, hold expiry, now)`` is an
API submission: it finds the current period row of every budget covering ``scopes`` (the
caller passes each period kind's current window start, so the windows are computed in one
place, ``domain.budgets.period_window``), inserts the queued job (``ON CONFLICT (tenant,
idempotency_key) DO NOTHING``: no row back for a key already taken, and nothing else
changes), and holds its estimate through ``orch_hold``. A refusal raises ``OR402`` and undoes
the job row. When a covering budget has no row for its current period yet it raises
``OR4PM`` having changed nothing; the caller creates the row and calls again.

Called outside a transaction it commits on its own: a submission is one round trip, and the
period rows every job of a tenant touches stay locked for the server's work only.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION orch_hold(
            p_job uuid, p_pids bigint[], p_amount bigint, p_expires timestamptz,
            p_now timestamptz
        ) RETURNS bigint
        LANGUAGE plpgsql AS $$
        DECLARE
            v_hold bigint;
        BEGIN
            INSERT INTO holds (job_id, amount_micros, expires_at)
            VALUES (p_job, p_amount, p_expires)
            ON CONFLICT (job_id) DO NOTHING
            RETURNING id INTO v_hold;
            IF v_hold IS NULL OR cardinality(p_pids) = 0 THEN
                RETURN v_hold;
            END IF;
            PERFORM orch_reserve(p_pids, p_amount);
            WITH lines AS (
                INSERT INTO hold_lines (hold_id, budget_period_id, amount_micros)
                SELECT v_hold, pid, p_amount FROM unnest(p_pids) AS pid
                RETURNING budget_period_id
            )
            INSERT INTO ledger_entries
                (budget_period_id, job_id, kind, idempotency_key, held_delta_micros,
                 committed_delta_micros, created_at)
            SELECT budget_period_id, p_job, 'hold', 'hold:' || p_job, p_amount, 0, p_now
            FROM lines;
            RETURN v_hold;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE FUNCTION orch_admit_job(
            p_id uuid, p_tenant text, p_kind text, p_tier text, p_spec jsonb, p_route jsonb,
            p_estimate bigint, p_deadline timestamptz, p_token uuid, p_wake timestamptz,
            p_ikey text, p_rhash text, p_scopes text[], p_period_kinds text[],
            p_period_starts timestamptz[], p_hold_expires timestamptz, p_now timestamptz
        ) RETURNS SETOF jobs
        LANGUAGE plpgsql AS $$
        DECLARE
            v_budgets bigint;
            v_pids bigint[];
            v_job jobs;
        BEGIN
            SELECT count(*), coalesce(array_agg(bp.id ORDER BY bp.id)
                                      FILTER (WHERE bp.id IS NOT NULL), '{}')
            INTO v_budgets, v_pids
            FROM budgets b
            JOIN unnest(p_period_kinds, p_period_starts) AS w(kind, start) ON w.kind = b.period
            LEFT JOIN budget_periods bp ON bp.budget_id = b.id AND bp.period_start = w.start
            WHERE b.scope = ANY(p_scopes);
            IF v_budgets > cardinality(v_pids) THEN
                RAISE EXCEPTION 'a covering budget has no current period row'
                    USING ERRCODE = 'OR4PM';
            END IF;
            INSERT INTO jobs (id, tenant, status, kind, tier, spec, route,
                              estimated_cost_micros, deadline_at, chain_token, wake_at,
                              idempotency_key, request_hash)
            VALUES (p_id, p_tenant, 'queued', p_kind, p_tier, p_spec, p_route, p_estimate,
                    p_deadline, p_token, p_wake, p_ikey, p_rhash)
            ON CONFLICT (tenant, idempotency_key) DO NOTHING
            RETURNING * INTO v_job;
            IF NOT FOUND THEN
                RETURN;
            END IF;
            PERFORM orch_hold(p_id, v_pids, p_estimate, p_hold_expires, p_now);
            RETURN NEXT v_job;
        END
        $$
        """
    )


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION orch_admit_job(uuid, text, text, text, jsonb, jsonb, bigint, timestamptz,"
        " uuid, timestamptz, text, text, text[], text[], timestamptz[], timestamptz,"
        " timestamptz)"
    )
    op.execute("DROP FUNCTION orch_hold(uuid, bigint[], bigint, timestamptz, timestamptz)")
