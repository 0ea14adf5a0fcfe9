"""The result cache: identical jobs of a tenant get a succeeded job's result at $0, and
concurrent identical submissions share one provider call.

**Admission** (``Submitter``): a cache-enabled job (``domain.cache.cache_enabled``) takes a
transaction-scoped advisory lock on its key, so identical submissions are admitted one at a
time, and looks for, in this order:

* a **hit**: a job of the same tenant and key that succeeded on a backend (not itself a
  cached copy) within ``ORCH_CACHE_TTL_S``. The new job is admitted with a hold of 0 and
  linked to it (``cache_leader``), and ended at once as succeeded with its result, cost 0 (a
  settle entry of 0 in every covering budget) and ``cached_from``.
* a **leader**: a live job with that key that runs itself. The new job is a *follower*:
  admitted with its own worst-case hold (it may have to run itself) and linked to the leader,
  but sent no start message.
* neither: the job is the key's leader and runs as any job.

**Followers** (``JobRunner``): a follower is started when its leader ends (``wake``) or by the
sweeper once its wake passes (the job row is its own outbox, as for every job). Its step
claims it and reads the leader (``follow``): still live, the follower waits again (back to
queued, woken by the leader's end or its own timer); succeeded, it ends succeeded with the
leader's result at $0 (its hold released, ``cached_from`` set); failed, cancelled or gone,
the link is cleared and the follower runs itself like any job, on its own hold. So no
follower is lost with its leader, and one provider call serves every follower of a leader
that succeeds.

The key is a hash (``domain.cache``): nothing outside the job row holds the prompt.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import Connection, Engine, text

from orchestrator.domain.cache import cache_enabled, cache_key
from orchestrator.domain.jobs import JobSpec
from orchestrator.metrics import catalogue as m
from orchestrator.metrics.recorder import get_recorder
from orchestrator.service.ports import EnqueuePort
from orchestrator.store.jobs import JOB_COLUMNS, JobRow
from orchestrator.store.statement import Conn, Statement

log = logging.getLogger(__name__)


class Found(StrEnum):
    HIT = "hit"  # a succeeded job: its result now, at $0
    LEADER = "leader"  # a live job: wait for it


@dataclass(frozen=True, slots=True)
class Match:
    found: Found
    job_id: uuid.UUID
    cost_micros: int  # a hit's cost: what the new job saves


# A hit (succeeded on a backend within the TTL, newest first) before a live leader (one that
# runs itself, oldest first).
_LOOKUP = text(
    """
    (SELECT 'hit' AS found, id, COALESCE(cost_micros, 0) AS cost FROM jobs
     WHERE tenant = :t AND cache_key = :k AND status = 'succeeded' AND cached_from IS NULL
       AND result_expired_at IS NULL  -- a result the retention sweeper dropped is no hit
       AND finished_at >= now() - CAST(:ttl AS float8) * interval '1 second'
     ORDER BY finished_at DESC LIMIT 1)
    UNION ALL
    (SELECT 'leader', id, 0 FROM jobs
     WHERE tenant = :t AND cache_key = :k AND status IN ('queued', 'running')
       AND cache_leader IS NULL
     ORDER BY created_at LIMIT 1)
    """
)
_LINK = Statement(
    f"UPDATE jobs SET cache_key = :k, cache_leader = :leader, cached_from = :hit "
    f"WHERE id = :id RETURNING {JOB_COLUMNS}"
)
# a hit (cached_from set from the start) is served by its own submission: not woken
_FOLLOWERS = Statement(
    "SELECT id, chain_token, COALESCE(spec ->> 'priority', 'normal') FROM jobs "
    "WHERE cache_leader = :leader AND status = 'queued' AND chain_token IS NOT NULL "
    "AND cached_from IS NULL"
)
# the job's result from its leader: set before the ending, by the chain holding the token
_ADOPT = Statement(
    "UPDATE jobs SET cached_from = :leader WHERE id = :id AND chain_token = :t "
    "AND status IN ('queued', 'running') RETURNING id"
)
# a hit's ``cached_from`` goes too: a job that runs itself was served from nothing
_UNLINK = Statement(
    "UPDATE jobs SET cache_leader = NULL, cached_from = NULL "
    "WHERE id = :id AND chain_token = :t "
    "AND status IN ('queued', 'running') AND cache_leader IS NOT NULL RETURNING id"
)


class ResultCache:
    def __init__(self, engine: Engine, *, ttl_s: float, default_tenants: frozenset[str],
                 enqueue: EnqueuePort | None = None) -> None:
        self.engine = engine
        self.ttl_s = ttl_s
        self.default_tenants = default_tenants
        self.enqueue = enqueue

    def key_for(self, tenant: str, spec: JobSpec) -> str | None:
        """The job's cache key; None when it does not use the cache."""
        if not cache_enabled(spec, tenant, self.default_tenants):
            return None
        return cache_key(tenant, spec)

    @contextmanager
    def locked(self, tenant: str, key: str) -> Iterator[Connection]:
        """A transaction holding the key's advisory lock: identical submissions are admitted
        one at a time, so of concurrent ones exactly one becomes the leader."""
        # the key hashes the tenant too: its first 64 bits name the lock
        lock_id = int.from_bytes(bytes.fromhex(key[:16]), "big", signed=True)
        with self.engine.begin() as tx:
            tx.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_id})
            yield tx

    def lookup(self, conn: Connection, tenant: str, key: str) -> Match | None:
        rows = conn.execute(_LOOKUP, {"t": tenant, "k": key, "ttl": self.ttl_s}).all()
        for r in rows:  # a hit first
            if r.found == Found.HIT.value:
                return Match(Found.HIT, r.id, int(r.cost))
        return Match(Found.LEADER, rows[0].id, 0) if rows else None

    @staticmethod
    def link(conn: Conn, job_id: uuid.UUID, key: str, match: Match | None) -> JobRow:
        """Record the job's key and what it waits for: a hit's job is ``cached_from`` it
        from the start (its submission serves it); a follower's is set when it adopts."""
        leader = match.job_id if match is not None else None
        hit = leader if match is not None and match.found is Found.HIT else None
        row = _LINK.first(conn, {"k": key, "leader": leader, "hit": hit, "id": job_id})
        assert row is not None  # written in this transaction
        return JobRow(*row)

    def wake(self, leader: JobRow) -> int:
        """Start the followers of ``leader``, which has just ended (their own timers cover a
        lost wake). Never raises: the followers are safe in PostgreSQL."""
        if self.enqueue is None:
            return 0
        try:
            with self.engine.begin() as conn:
                rows = _FOLLOWERS.all(conn, {"leader": leader.id})
            for job_id, token, priority in rows:
                self.enqueue.start(job_id, token, priority)
        except Exception as exc:
            log.warning("cache followers not woken; their timers will",
                        extra={"job_id": str(leader.id), "error": type(exc).__name__})
            return 0
        return len(rows)

    @staticmethod
    def adopt(conn: Conn, job_id: uuid.UUID, token: uuid.UUID, leader: uuid.UUID) -> bool:
        return _ADOPT.first(conn, {"leader": leader, "id": job_id, "t": token}) is not None

    @staticmethod
    def unlink(conn: Conn, job_id: uuid.UUID, token: uuid.UUID) -> bool:
        return _UNLINK.first(conn, {"id": job_id, "t": token}) is not None


def record_lookup(spec: JobSpec, outcome: str) -> None:
    """A cache-enabled submission: ``hit``, ``coalesced`` (waits for a live leader) or
    ``miss`` (runs itself)."""
    try:
        get_recorder().counter(m.CACHE_LOOKUPS, kind=spec.kind.value, outcome=outcome)
    except Exception:
        log.debug("cache metric not recorded", exc_info=True)


def record_saved(kind: str, saved_micros: int) -> None:
    """A job served from the cache: what its result cost the job that paid for it."""
    try:
        get_recorder().counter(m.CACHE_SAVED, saved_micros / 1_000_000, kind=kind)
    except Exception:
        log.debug("cache metric not recorded", exc_info=True)
