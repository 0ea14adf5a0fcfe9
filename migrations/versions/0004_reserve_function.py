"""orch_reserve: a hold's budget reservation as one server-side call

``orch_reserve(period ids, amount)`` adds ``amount`` to ``held_micros`` of each budget period,
in the given (ascending) order, each under the same conditional UPDATE the ledger ran from
Python (``committed + held + amount <= limit``, re-checked by PostgreSQL after any row-lock
wait). A period that cannot take it raises SQLSTATE ``OR402`` with the budget's scope, period,
period start and remaining amount as JSON in the error's DETAIL, which aborts the transaction.

Because a refusal aborts the transaction on the server, the ledger can send the reservation
and the COMMIT in one round trip: the hot period rows stay locked for the server's work only,
never while a busy client gets round to its COMMIT.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION orch_reserve(pids bigint[], amount bigint) RETURNS void
        LANGUAGE plpgsql AS $$
        DECLARE
            pid bigint;
            info record;
        BEGIN
            FOREACH pid IN ARRAY pids LOOP
                UPDATE budget_periods SET held_micros = held_micros + amount
                WHERE id = pid AND committed_micros + held_micros + amount <= limit_micros;
                IF NOT FOUND THEN
                    SELECT b.scope, b.period, bp.period_start,
                           bp.limit_micros - bp.committed_micros - bp.held_micros AS remaining
                    INTO info
                    FROM budget_periods bp JOIN budgets b ON b.id = bp.budget_id
                    WHERE bp.id = pid;
                    RAISE EXCEPTION 'budget_exceeded' USING ERRCODE = 'OR402',
                        DETAIL = json_build_object(
                            'scope', info.scope, 'period', info.period,
                            'period_start', info.period_start, 'remaining', info.remaining
                        )::text;
                END IF;
            END LOOP;
        END
        $$
        """
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION orch_reserve(bigint[], bigint)")
