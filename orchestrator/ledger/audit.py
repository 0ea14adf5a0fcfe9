"""Check the ledger's invariants (DESIGN §6) against the database; an empty list means sound.

- **Counters are their entries**: each period's committed and held equal the sums of its
  ledger entries' deltas (``hold``, ``settle``, ``release``, ``expire`` and ``overage``).
- **Within the limit, but for the excess**: ``committed + held <= limit + excess`` (what the
  CHECK ``within_limit`` enforces), and the excess is exactly what is past the limit,
  ``GREATEST(0, committed + held - limit)``: only an overage or a lowered limit put it there,
  and it drains as the period's holds finish.
- **Charged at most once**: per job and period at most one settle, release or expire entry,
  and at most one overage entry, which comes with the settle or release it completes.
- **Charged as billed**: per hold and covered period, the committed deltas of the job's
  entries there sum to the hold's ``charged_micros`` (0 while it is held): a bill above the
  hold is never capped.
- **Held is the open holds**: each period's held equals the sum of its lines of holds still
  ``held``.

Used by the tests after every concurrent run, by `backup restore`, and by operators
(``orchestrator ledger audit``, ``orchestrator.cli.ledger``).
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
    """
    SELECT id, committed_micros, held_micros, limit_micros, excess_micros FROM budget_periods
    WHERE committed_micros + held_micros > limit_micros + excess_micros
       OR excess_micros <> GREATEST(0, committed_micros + held_micros - limit_micros)
    """
)
_CHARGED_TWICE = text(
    """
    SELECT job_id, budget_period_id, CASE WHEN kind = 'overage' THEN 'overage' ELSE 'ending'
           END AS what, COUNT(*) AS n
    FROM ledger_entries
    WHERE kind IN ('settle', 'release', 'expire', 'overage')
    GROUP BY job_id, budget_period_id, what HAVING COUNT(*) > 1
    """
)
_OVERAGE_ALONE = text(
    """
    SELECT o.job_id, o.budget_period_id FROM ledger_entries o
    WHERE o.kind = 'overage' AND NOT EXISTS (
        SELECT 1 FROM ledger_entries e
        WHERE e.job_id = o.job_id AND e.budget_period_id = o.budget_period_id
          AND e.kind IN ('settle', 'release'))
    """
)
_CHARGED_AS_BILLED = text(
    """
    SELECT h.job_id, hl.budget_period_id, COALESCE(h.charged_micros, 0) AS charged,
           COALESCE(e.committed, 0) AS committed
    FROM holds h JOIN hold_lines hl ON hl.hold_id = h.id
    LEFT JOIN (SELECT job_id, budget_period_id, SUM(committed_delta_micros) AS committed
               FROM ledger_entries GROUP BY job_id, budget_period_id) e
        ON e.job_id = h.job_id AND e.budget_period_id = hl.budget_period_id
    WHERE COALESCE(h.charged_micros, 0) <> COALESCE(e.committed, 0)
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
        problems.append(
            f"period {r.id}: committed={r.committed_micros} + held={r.held_micros} against "
            f"limit={r.limit_micros}, but excess={r.excess_micros} (must be exactly what is "
            "past the limit)"
        )
    for r in conn.execute(_CHARGED_TWICE):
        problems.append(
            f"job {r.job_id}: {r.n} {r.what} entries in period {r.budget_period_id}"
        )
    for r in conn.execute(_OVERAGE_ALONE):
        problems.append(
            f"job {r.job_id}: an overage in period {r.budget_period_id} without its settle or "
            "release"
        )
    for r in conn.execute(_CHARGED_AS_BILLED):
        problems.append(
            f"job {r.job_id}: charged {r.charged} but committed {r.committed} in period "
            f"{r.budget_period_id}"
        )
    for r in conn.execute(_OPEN_HELD):
        if r.held_micros != r.open_sum:
            problems.append(
                f"period {r.id}: held={r.held_micros} but open holds sum to {r.open_sum}"
            )
    return problems
