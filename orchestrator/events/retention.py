"""Result retention (beat's ``orchestrator.expire_results``): a finished job's result (the
provider's output) is dropped ``ORCH_RESULT_RETENTION_DAYS`` after the job ended, with the
job's events (a ``job.succeeded`` event carries the result too) once none of their webhook
deliveries is still pending, and its files (``store.files``) once no result names them. The
job row, its attempts and the ledger stay for ever: costs and reports never depend on a
result."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, text

_RESULTS = text(
    """
    WITH old AS (
        SELECT id FROM jobs
        WHERE result IS NOT NULL AND finished_at < :cutoff
        ORDER BY finished_at LIMIT :limit FOR UPDATE SKIP LOCKED
    )
    UPDATE jobs j SET result = NULL, result_expired_at = :now FROM old WHERE j.id = old.id
    """
)
# a job's files go once its result is gone and no job served from its result (the cache)
# still has its own, or is still to get it (a cancelled or deadline-failed job's result, kept
# when its provider finished anyway, goes as any other: no status is asked)
_FILES = text(
    """
    DELETE FROM result_files f WHERE f.job_id IN (
        SELECT x.job_id FROM result_files x JOIN jobs j ON j.id = x.job_id
        WHERE x.n = 0 AND j.result IS NULL AND j.finished_at < :cutoff
          AND NOT EXISTS (SELECT 1 FROM jobs c WHERE c.cached_from = j.id
                          AND (c.result IS NOT NULL OR c.finished_at IS NULL))
        LIMIT :limit)
    """
)
# A job's next event is numbered from its last one (migration 0013: max(seq) + 1), so the
# last event of a job that may still have some (live, or its hold still open: an attempt
# still to be billed, a job.charged to come) stays; deleted, the next would be seq 1 again,
# behind the cursor of every stream following the job.
_EVENTS = text(
    """
    DELETE FROM job_events e WHERE e.position IN (
        SELECT position FROM job_events x
        WHERE x.created_at < :cutoff
          AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d
                          WHERE d.event_id = x.id AND d.status = 'pending')
          AND (x.seq < (SELECT max(y.seq) FROM job_events y WHERE y.job_id = x.job_id)
               OR NOT EXISTS (SELECT 1 FROM jobs j LEFT JOIN holds h ON h.job_id = j.id
                              WHERE j.id = x.job_id
                                AND (j.status IN ('queued', 'running') OR h.status = 'held')))
        ORDER BY x.created_at LIMIT :limit)
    """
)


@dataclass(frozen=True, slots=True)
class Expired:
    results: int
    events: int
    files: int = 0


def expire(engine: Engine, retention_days: float, now: datetime,
           limit: int = 5000) -> Expired:
    """One pass: at most ``limit`` results and ``limit`` events. 0 days keeps everything."""
    if retention_days <= 0:
        return Expired(0, 0)
    cutoff = now - timedelta(days=retention_days)
    with engine.begin() as tx:
        results = tx.execute(_RESULTS, {"cutoff": cutoff, "now": now, "limit": limit}).rowcount
    with engine.begin() as tx:
        events = tx.execute(_EVENTS, {"cutoff": cutoff, "limit": limit}).rowcount
    with engine.begin() as tx:
        dropped = tx.execute(_FILES, {"cutoff": cutoff, "limit": limit}).rowcount
    return Expired(int(results or 0), int(events or 0), int(dropped or 0))
