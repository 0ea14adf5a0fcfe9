"""The sweeper (beat): revive jobs whose chain went silent, expire holds nobody will settle.

The job table, not Redis, decides what is still owed work: a job whose ``wake_at`` has passed
(by PostgreSQL's clock) lost its task (Redis restart, enqueue failure after commit, a killed
worker). That is a live job, or one that ended while an attempt could still be billed and
whose attempt is still to be concluded. A call in flight moves ``wake_at`` past the longest
it can take (its lease), so no chain is revived while its call may still run. A revived job
gets a new chain token, so an old chain that wakes up later stops at its next step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import Engine

from orchestrator.ledger import Ledger
from orchestrator.service.ports import EnqueuePort
from orchestrator.store import jobs as repo

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SweepReport:
    revived: int
    holds_expired: int


def sweep(
    engine: Engine, ledger: Ledger, enqueue: EnqueuePort, *, grace_s: float = 60.0,
    batch: int = 500,
) -> SweepReport:
    with engine.begin() as tx:  # overdue by PostgreSQL's clock, never a process's
        revived = repo.revive_overdue(tx, grace_s, batch)
    for job_id, token, priority in revived:
        try:
            enqueue.start(job_id, token, priority)
        except Exception as exc:  # next sweep tries again: wake_at will pass once more
            log.warning("re-enqueue failed", extra={"job_id": str(job_id),
                                                    "error": type(exc).__name__})
    expired = ledger.expire_stale(limit=batch)
    if revived or expired:
        log.info("swept", extra={"revived": len(revived), "holds_expired": len(expired)})
    return SweepReport(len(revived), len(expired))
