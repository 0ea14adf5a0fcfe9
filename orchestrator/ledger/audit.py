"""Check the ledger's invariants (DESIGN §6) against the database; an empty list means sound.

Used by the tests after every concurrent run and by operators (``orchestrator ledger audit``).
"""

from __future__ import annotations

from sqlalchemy import Connection, text

_COUNTERS_VS_ENTRIES = text(
    """
    SELECT bp.id, bp.committed_micros, bp.held_micros,
           COALESCE(SUM(e.committed_delta_micros), 0) AS committed_sum,
           COALESCE(SUM(e.held_delta_micros), 0) AS held_sum
    FROM budget_periods bp LEFT JOIN ledger_entries e ON e.budget_period_id = bp.id
    GROUP BY bp.id
    HAVING bp.committed_micros <> COALESCE(SUM(e.committed_delta_micros), 0)
        OR bp.held_micros <> COALESCE(SUM(e.held_delta_micros), 0)
    """
)
_OVER_LIMIT = text(
    "SELECT id FROM budget_periods WHERE committed_micros + held_micros > limit_micros"
)
_CHARGED_TWICE = text(
    """
    SELECT job_id, budget_period_id, COUNT(*) AS n FROM ledger_entries
    WHERE kind IN ('settle', 'release', 'expire')
    GROUP BY job_id, budget_period_id HAVING COUNT(*) > 1
    """
)
_OPEN_HELD = text(
    """
    SELECT bp.id, bp.held_micros,
           (SELECT COALESCE(SUM(hl.amount_micros), 0) FROM hold_lines hl
            JOIN holds h ON h.id = hl.hold_id
            WHERE hl.budget_period_id = bp.id AND h.status = 'held') AS open_sum
    FROM budget_periods bp
    """
)


def audit(conn: Connection) -> list[str]:
    problems: list[str] = []
    for r in conn.execute(_COUNTERS_VS_ENTRIES):
        problems.append(
            f"period {r.id}: counters committed={r.committed_micros} held={r.held_micros} "
            f"but entries sum to committed={r.committed_sum} held={r.held_sum}"
        )
    for r in conn.execute(_OVER_LIMIT):
        problems.append(f"period {r.id}: committed + held exceeds the limit")
    for r in conn.execute(_CHARGED_TWICE):
        problems.append(f"job {r.job_id} finished {r.n} times in period {r.budget_period_id}")
    for r in conn.execute(_OPEN_HELD):
        if r.held_micros != r.open_sum:
            problems.append(
                f"period {r.id}: held={r.held_micros} but open holds sum to {r.open_sum}"
            )
    return problems
