"""Before a failover, the job's hold covers what is billed already plus the worst case of
what is left (``Ledger.raise_hold``).

The admission holds the highest estimate of the plan: one backend's worst run. A failed
attempt may still be billed (a run's time, a cancelled run's part), and the next backend may
then bill its own worst case: without more held, that failover is an overage past the budget,
started knowingly. So before the next attempt opens the hold is raised to the bills so far
plus the highest estimate among the backends the failover may still use; a budget that
cannot take the extra refuses it, and the job fails ``budget_exceeded`` with what it was
billed, and nothing more is spent. A job nothing has billed yet needs no more than its hold.
"""

from __future__ import annotations

import logging

from sqlalchemy.exc import SQLAlchemyError

from orchestrator.domain.money import format_usd
from orchestrator.domain.routing import RoutePlan
from orchestrator.errors import BudgetExceeded, HoldNotActive, HoldNotFound
from orchestrator.ledger import Ledger
from orchestrator.service.attempts import turned_away
from orchestrator.service.opening import Opener
from orchestrator.store import jobs as repo

log = logging.getLogger(__name__)


def cover_failover(ledger: Ledger, opener: Opener, job: repo.JobRow,
                   attempts: list[repo.AttemptRow]) -> str | None:
    """Raise the hold for the failover about to open; the job's error message when a budget
    refuses the extra (None: covered, or nothing to cover)."""
    billed = sum(a.cost_micros or 0 for a in attempts)
    if billed <= 0:
        return None
    plan = RoutePlan.from_quote(job.route or {})
    # what open_next may still use: the untried backends, else those it asks again (every
    # attempt there turned away by a rate limit)
    left = set(opener.untried(plan, attempts)) or {
        c.backend for c in plan.candidates
        if all(turned_away(a) for a in attempts if a.backend == c.backend)}
    worst = max((c.estimate_micros for c in plan.candidates if c.backend in left), default=0)
    if worst <= 0:
        return None
    try:
        ledger.raise_hold(job.id, billed + worst)
    except BudgetExceeded as exc:
        _alert_refusal(ledger, exc)
        return (f"a failover could cost up to {format_usd(worst)} more after "
                f"{format_usd(billed)} billed, and {exc.message}")
    except (HoldNotActive, HoldNotFound):
        return None  # the job ended meanwhile: opening the attempt finds it so
    return None


def _alert_refusal(ledger: Ledger, exc: BudgetExceeded) -> None:
    """The budget's ``refusal`` alert, as for a 402: a refused hold is one, whoever asked."""
    try:
        ledger.record_refusal(exc)
    except SQLAlchemyError as err:
        log.warning("refusal alert not recorded", extra={"error": type(err).__name__})
