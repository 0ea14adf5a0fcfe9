"""Jobs and attempts in PostgreSQL: guarded transitions, checkpoints, chain bookkeeping.

Every status change is ``UPDATE … WHERE status IN (…)`` so two workers can never both move
one job; a call that loses the race gets ``False``/``None`` and must re-read. Statements are
built once at import (they run on every step of every job).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import Connection as DriverConnection
from sqlalchemy import Connection, text

from orchestrator.store.statement import Conn, Statement

FINAL = ("succeeded", "failed", "cancelled")
LIVE = ("queued", "running")


@dataclass(frozen=True, slots=True)
class AttemptRow:
    id: int
    job_id: uuid.UUID
    number: int
    backend: str
    external_id: str | None
    outcome: str | None
    fault: str | None
    slot: str | None
    probe: bool
    error_code: str | None
    error_message: str | None
    cost_micros: int | None
    started_at: datetime
    finished_at: datetime | None
    sent_at: datetime | None = None  # the submission's last sending (None: at started_at)
    cancel_requested_at: datetime | None = None
    # an uncertain attempt's possible charge; or the worst case an unpriced ending was charged
    possible_cost_micros: int | None = None

    @property
    def last_sent_at(self) -> datetime:
        return self.sent_at or self.started_at

    def age_s(self, now: datetime) -> float:
        """How long the attempt has run at ``now`` (never below 0: clocks of two processes)."""
        return max(0.0, (now - self.started_at).total_seconds())


@dataclass(frozen=True, slots=True)
class JobRow:
    id: uuid.UUID
    tenant: str
    status: str
    kind: str
    tier: str
    spec: dict[str, Any]
    route: dict[str, Any] | None
    backend: str | None
    estimated_cost_micros: int
    cost_micros: int | None
    result: dict[str, Any] | None
    error_code: str | None
    error_message: str | None
    idempotency_key: str | None
    request_hash: str | None
    deadline_at: datetime | None
    chain_token: uuid.UUID | None
    wake_at: datetime | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    cache_key: str | None = None  # the result cache (service.cache)
    cache_leader: uuid.UUID | None = None
    cached_from: uuid.UUID | None = None

    def until_deadline(self, now: datetime) -> float | None:
        """Seconds from ``now`` to the job's deadline (0 once it passed); None without one:
        a wait the job's chain takes must not end after it."""
        if self.deadline_at is None:
            return None
        return max(0.0, (self.deadline_at - now).total_seconds())

    def within_deadline(self, wait_s: float, now: datetime) -> float:
        """``wait_s``, cut short where it would end after the job's deadline."""
        left = self.until_deadline(now)
        return wait_s if left is None else min(wait_s, left)

    @property
    def is_final(self) -> bool:
        return self.status in FINAL

    @property
    def priority(self) -> str:
        return str(self.spec.get("priority") or "normal")


JOB_COLUMNS = ", ".join(JobRow.__slots__)
_ATTEMPT_COLS = ", ".join(AttemptRow.__slots__)


_INSERT_JOB = Statement(
    f"""
    INSERT INTO jobs (id, tenant, status, kind, tier, spec, route, estimated_cost_micros,
                      deadline_at, chain_token, wake_at, idempotency_key, request_hash)
    VALUES (:id, :tenant, 'queued', :kind, :tier, CAST(:spec AS jsonb), CAST(:route AS jsonb),
            :est, :deadline, :token, :wake, :ikey, :rhash)
    ON CONFLICT (tenant, idempotency_key) DO NOTHING
    RETURNING {JOB_COLUMNS}
    """
)
_GET_JOB = Statement(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = :id")
_GET_BY_KEY = Statement(
    f"SELECT {JOB_COLUMNS} FROM jobs WHERE tenant = :t AND idempotency_key = :k")
_LIST_JOBS = Statement(
    f"""
    SELECT {JOB_COLUMNS} FROM jobs
    WHERE tenant = :t
      AND (CAST(:status AS text) IS NULL OR status = :status)
      AND (CAST(:b_at AS timestamptz) IS NULL OR (created_at, id) < (:b_at, :b_id))
    ORDER BY created_at DESC, id DESC
    LIMIT :limit
    """
)
# queued → running for the chain holding :token (the guarded transition of both claims)
_CLAIM = """
    UPDATE jobs SET status = 'running', started_at = :now, updated_at = :now
    WHERE id = :id AND status = 'queued' AND chain_token = :token"""
# A wake :s seconds from now by PostgreSQL's clock, the one the sweeper compares with.
_IN = "now() + CAST(:{} AS float8) * interval '1 second'"
# A call's lease, but no later than the job's deadline: a chain whose worker died is revived
# by then, and its deadline step (which sends nothing) ends the job on time.
_LEASE = f"LEAST({_IN.format('lease')}, deadline_at)"
# The claim, or (a chain step after the first) the job as it is: one statement either way.
_CLAIM_OR_GET = Statement(
    f"""
    WITH claimed AS ({_CLAIM}
        RETURNING {JOB_COLUMNS}
    )
    SELECT {JOB_COLUMNS}, true FROM claimed
    UNION ALL
    SELECT {JOB_COLUMNS}, false FROM jobs
    WHERE id = :id AND NOT EXISTS (SELECT 1 FROM claimed)
    """
)
# A start step's claim and its first attempt's checkpoint, on the backend where it already
# holds a slot: one statement, so nothing else can see the job running with no attempt. The
# chain's wake moves past the attempt's call (its lease).
_CLAIM_AND_OPEN = Statement(
    f"""
    WITH claimed AS (
        UPDATE jobs SET status = 'running', started_at = :now, updated_at = :now,
            wake_at = {_LEASE}
        WHERE id = :id AND status = 'queued' AND chain_token = :token
          AND (deadline_at IS NULL OR deadline_at > :now) AND cache_leader IS NULL
        RETURNING {JOB_COLUMNS}
    ), opened AS (
        INSERT INTO attempts (job_id, number, backend, started_at, slot, probe)
        SELECT id, 1, :b, :now, :slot, :probe FROM claimed
        ON CONFLICT (job_id, number) DO NOTHING
        RETURNING {_ATTEMPT_COLS}
    )
    SELECT {", ".join(f"c.{c}" for c in JobRow.__slots__)},
           {", ".join(f"o.{c}" for c in AttemptRow.__slots__)}
    FROM claimed c JOIN opened o ON o.job_id = c.id
    """
)
_REQUEUE = Statement(
    f"UPDATE jobs SET status = 'queued', started_at = NULL, wake_at = {_IN.format('w')}, "
    "updated_at = now() WHERE id = :id AND chain_token = :t AND status = 'running' "
    "RETURNING id"
)
# Live jobs, and an ended job whose attempt is still to be concluded (its wake is set).
_SET_WAKE = Statement(
    f"UPDATE jobs SET wake_at = {_IN.format('w')}, updated_at = now() "
    "WHERE id = :id AND chain_token = :t AND (status = ANY(:s) OR wake_at IS NOT NULL) "
    "RETURNING id"
)
# Every job whose wake has passed by PostgreSQL's clock: work is owed exactly while wake_at
# is set (a live job, or an ended one with an attempt to conclude).
_REVIVE = text(
    f"""
    WITH overdue AS (
        SELECT id FROM jobs
        WHERE wake_at IS NOT NULL AND wake_at < now()
        ORDER BY wake_at LIMIT :limit FOR UPDATE SKIP LOCKED
    )
    UPDATE jobs j SET chain_token = gen_random_uuid(), wake_at = {_IN.format("grace")}
    FROM overdue WHERE j.id = overdue.id
    RETURNING j.id, j.chain_token, j.spec->>'priority' AS priority
    """
)
_ATTEMPTS = Statement(f"SELECT {_ATTEMPT_COLS} FROM attempts WHERE job_id = :id ORDER BY number")
_ATTEMPTS_OF_JOBS = Statement(
    f"SELECT {_ATTEMPT_COLS} FROM attempts WHERE job_id = ANY(:ids) ORDER BY job_id, number")
# Only while the chain holding the token runs the job: the job row is updated (and so
# locked), so a cancel or an ending that commits first is seen, and one that comes later
# waits. The chain's wake moves past the attempt's call (its lease).
_OPEN_ATTEMPT = Statement(
    f"""
    WITH running AS (
        UPDATE jobs SET wake_at = {_LEASE}
        WHERE id = :j AND status = 'running' AND chain_token = :t
        RETURNING id
    )
    INSERT INTO attempts (job_id, number, backend, started_at, slot, probe)
    SELECT id, :n, :b, :now, :slot, :probe FROM running
    ON CONFLICT (job_id, number) DO NOTHING
    RETURNING {_ATTEMPT_COLS}
    """
)
# Another attempt on the backend already holds the id a provider named: a gateway or cache in
# front of it answered two of our creates (each with its own key) with one prediction. Taken
# as this attempt's, both jobs would poll one prediction, deliver its output (maybe another
# tenant's) and each be charged for it (ix_attempts_backend_external_id).
_HELD_ELSEWHERE = ("SELECT 1 FROM attempts o "
                   "WHERE o.backend = :b AND o.external_id = :e AND o.id <> :aid")
_EXTERNAL_ID_HELD = Statement(f"SELECT EXISTS ({_HELD_ELSEWHERE})")
# That check reads its statement's snapshot: two attempts given one id at once (a gateway
# coalescing two creates answers both together) would each find it free and both record it.
# A lock on the id, held to the recording's commit, makes the second check after the first
# write is visible (the two-key form: its own space, apart from the result cache's locks).
_EXTERNAL_ID_LOCK_CLASS = 19
_LOCK_EXTERNAL_ID = Statement(
    f"SELECT pg_advisory_xact_lock({_EXTERNAL_ID_LOCK_CLASS}, hashtext(:b || ' ' || :e))"
)
# The checkpoint after a create-then-poll submission: the external id and the chain's next
# wake in one statement; neither when the id is held elsewhere (the chain reconciles then).
_RECORD_EXTERNAL_ID_AND_WAKE = Statement(
    f"""
    WITH held AS ({_HELD_ELSEWHERE}), checkpoint AS (
        UPDATE attempts SET external_id = :e
        WHERE id = :aid AND outcome IS NULL AND NOT EXISTS (SELECT 1 FROM held)
    ), woken AS (
        UPDATE jobs SET wake_at = {_IN.format("w")}, updated_at = now()
        WHERE id = :id AND chain_token = :t AND status = ANY(:s)
          AND NOT EXISTS (SELECT 1 FROM held)
        RETURNING id
    )
    SELECT EXISTS (SELECT 1 FROM held), EXISTS (SELECT 1 FROM woken)
    """
)
# The id a lookup found for a running attempt, unless held elsewhere: whether it was.
_RECORD_OWN_EXTERNAL_ID = Statement(
    f"""
    WITH held AS ({_HELD_ELSEWHERE}), checkpoint AS (
        UPDATE attempts SET external_id = :e
        WHERE id = :aid AND outcome IS NULL AND NOT EXISTS (SELECT 1 FROM held)
    )
    SELECT EXISTS (SELECT 1 FROM held)
    """
)
_RECORD_EXTERNAL_ID = Statement(
    "UPDATE attempts SET external_id = :e WHERE id = :id AND outcome IS NULL"
)
_CLOSE_ATTEMPT = Statement(
    """
    UPDATE attempts SET outcome = :o, fault = :f, error_code = :c, error_message = :m,
        cost_micros = :cost, finished_at = :now, external_id = COALESCE(:e, external_id),
        possible_cost_micros = :possible
    WHERE id = :id AND outcome IS NULL RETURNING id
    """
)
# A repeat of a submission whose answer was lost, claimed by one step only: the attempt must
# still be open, with no external id, and last sent when the caller saw it.
_MARK_SENT = Statement(
    """
    UPDATE attempts SET sent_at = :now
    WHERE id = :id AND outcome IS NULL AND external_id IS NULL
      AND COALESCE(sent_at, started_at) = :prev
    RETURNING id
    """
)
_MARK_CANCEL_REQUESTED = Statement(
    "UPDATE attempts SET cancel_requested_at = :now "
    "WHERE id = :id AND outcome IS NULL AND cancel_requested_at IS NULL"
)
def insert_job(
    conn: Connection,
    *,
    job_id: uuid.UUID,
    tenant: str,
    kind: str,
    tier: str,
    spec: dict[str, Any],
    route: dict[str, Any],
    estimated_cost_micros: int,
    deadline_at: datetime,
    chain_token: uuid.UUID,
    wake_at: datetime,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
) -> JobRow | None:
    """Insert a queued job; None when (tenant, idempotency_key) already exists."""
    row = _INSERT_JOB.first(
        conn,
        {"id": job_id, "tenant": tenant, "kind": kind, "tier": tier, "spec": json.dumps(spec),
         "route": json.dumps(route), "est": estimated_cost_micros, "deadline": deadline_at,
         "token": chain_token, "wake": wake_at, "ikey": idempotency_key, "rhash": request_hash},
    )
    return JobRow(*row) if row is not None else None


def get_job(conn: Conn, job_id: uuid.UUID) -> JobRow | None:
    row = _GET_JOB.first(conn, {"id": job_id})
    return JobRow(*row) if row is not None else None


def get_by_idempotency_key(conn: Conn, tenant: str, key: str) -> JobRow | None:
    row = _GET_BY_KEY.first(conn, {"t": tenant, "k": key})
    return JobRow(*row) if row is not None else None


def list_jobs(
    conn: Conn,
    tenant: str,
    *,
    status: str | None = None,
    limit: int = 50,
    before: tuple[datetime, uuid.UUID] | None = None,
) -> list[JobRow]:
    """Newest first; ``before`` is the (created_at, id) of the last row of the previous page."""
    rows = _LIST_JOBS.all(
        conn,
        {"t": tenant, "status": status, "limit": limit,
         "b_at": before[0] if before else None, "b_id": before[1] if before else None},
    )
    return [JobRow(*r) for r in rows]


def claim_or_get(conn: Conn, job_id: uuid.UUID, token: uuid.UUID, now: datetime
                 ) -> tuple[JobRow, bool] | None:
    """queued → running for the chain holding ``token``: (the claimed job, True); else
    (the job as it is, False); None if there is no such job."""
    row = _CLAIM_OR_GET.first(conn, {"id": job_id, "token": token, "now": now})
    return None if row is None else (JobRow(*row[:-1]), bool(row[-1]))


def claim_and_open(
    conn: Conn, job_id: uuid.UUID, token: uuid.UUID, now: datetime, backend: str, *,
    lease_s: float, slot: str | None = None, probe: bool = False,
) -> tuple[JobRow, AttemptRow] | None:
    """queued → running for the chain holding ``token`` with its first attempt opened on
    ``backend``, if the job's deadline has not passed: (the job, the attempt). None: nothing
    was claimed (the job is not queued for this chain, or is past its deadline), or its
    first attempt already existed (never, for a job that was queued: it is then claimed and
    the runner's long way finds the attempt)."""
    row = _CLAIM_AND_OPEN.first(conn, {"id": job_id, "token": token, "now": now, "b": backend,
                                       "slot": slot, "probe": probe, "lease": lease_s})
    if row is None:
        return None
    n = len(JobRow.__slots__)
    return JobRow(*row[:n]), AttemptRow(*row[n:])


def set_wake(conn: Conn, job_id: uuid.UUID, token: uuid.UUID, wake_in_s: float) -> bool:
    """Record that the chain will next run within ``wake_in_s`` seconds (by PostgreSQL's
    clock); False if ``token`` is no longer the chain, or no work is owed any more."""
    return _SET_WAKE.first(
        conn, {"w": wake_in_s, "id": job_id, "t": token, "s": list(LIVE)}
    ) is not None


def requeue(conn: Conn, job_id: uuid.UUID, token: uuid.UUID, wake_in_s: float) -> bool:
    """running → queued for the chain holding ``token`` (its claim found no free slot), with
    its next wake; False if ``token`` is no longer the chain or the job is not running."""
    return _REQUEUE.first(conn, {"w": wake_in_s, "id": job_id, "t": token}) is not None


def revive_overdue(conn: Connection, grace_s: float, limit: int) -> list[
    tuple[uuid.UUID, uuid.UUID, str]
]:
    """Give every job whose chain is overdue by PostgreSQL's clock a new chain token, and
    ``grace_s`` to show a sign of life; returns (id, token, priority).

    SKIP LOCKED: concurrent sweepers share the work and never revive one job twice.
    """
    rows = conn.execute(_REVIVE, {"grace": grace_s, "limit": limit}).all()
    return [(r.id, r.chain_token, r.priority or "normal") for r in rows]


# -- attempts --------------------------------------------------------------------------------
def attempts(conn: Conn, job_id: uuid.UUID) -> list[AttemptRow]:
    return [AttemptRow(*r) for r in _ATTEMPTS.all(conn, {"id": job_id})]


def attempts_of_jobs(conn: Conn, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[AttemptRow]]:
    """Every attempt of ``job_ids`` in one query (a page of a job list is one round trip,
    not one per job), by job, in attempt order; a job without attempts maps to []."""
    found: dict[uuid.UUID, list[AttemptRow]] = {job_id: [] for job_id in job_ids}
    if job_ids:
        for r in _ATTEMPTS_OF_JOBS.all(conn, {"ids": job_ids}):
            row = AttemptRow(*r)
            found[row.job_id].append(row)
    return found


def open_attempt(
    conn: Conn, job_id: uuid.UUID, token: uuid.UUID, number: int, backend: str,
    now: datetime, *, lease_s: float, slot: str | None = None, probe: bool = False,
) -> AttemptRow | None:
    """Checkpoint before calling a backend, with the chain's wake ``lease_s`` ahead (the
    longest the call can take, and grace); None if attempt ``number`` already exists, or
    the chain holding ``token`` no longer runs the job (it ended, or has a new chain)."""
    row = _OPEN_ATTEMPT.first(conn, {"j": job_id, "t": token, "n": number, "b": backend,
                                     "now": now, "slot": slot, "probe": probe,
                                     "lease": lease_s})
    return AttemptRow(*row) if row is not None else None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What ``record_external_id_and_wake`` did."""

    recorded: bool  # False: another attempt on the backend holds the id; nothing was written
    alive: bool  # the wake was set: the chain holding the token still runs the job


def record_external_id(conn: Conn, attempt_id: int, external_id: str) -> None:
    """The id of a finished answer (a synchronous call's, whose id a provider may repeat)."""
    _RECORD_EXTERNAL_ID.run(conn, {"e": external_id, "id": attempt_id})


def external_id_held(conn: Conn, attempt_id: int, backend: str, external_id: str) -> bool:
    """Whether another attempt on ``backend`` holds ``external_id``."""
    return bool(_EXTERNAL_ID_HELD.scalar(
        conn, {"e": external_id, "aid": attempt_id, "b": backend}))


def record_own_external_id(conn: Conn, attempt_id: int, backend: str,
                           external_id: str) -> bool:
    """The id of work still running, as the open attempt's; False (nothing written) when
    another attempt on ``backend`` already holds it."""
    held = _under_id_lock(conn, _RECORD_OWN_EXTERNAL_ID,
                          {"e": external_id, "aid": attempt_id, "b": backend})
    return not (held is not None and held[0])


def _under_id_lock(conn: Conn, statement: Statement, params: dict[str, Any]
                   ) -> tuple[Any, ...] | None:
    """``statement``'s first row, run under the lock of the id it records
    (``_LOCK_EXTERNAL_ID``) to the commit. On an autocommit connection both go as one
    message (one implicit transaction, no round trip more than the statement alone: this is
    every create-then-poll submission's checkpoint); on a connection already in a
    transaction (SQLAlchemy's), in that transaction, whose commit is the caller's."""
    if isinstance(conn, DriverConnection) and conn.autocommit:
        return statement.first_after(conn, _LOCK_EXTERNAL_ID, params)
    _LOCK_EXTERNAL_ID.first(conn, params)
    return statement.first(conn, params)


def record_external_id_and_wake(
    conn: Conn, attempt_id: int, backend: str, external_id: str, job_id: uuid.UUID,
    token: uuid.UUID, wake_in_s: float,
) -> Checkpoint:
    """``record_own_external_id`` and ``set_wake`` (of a live job) in one statement, under
    the id's lock; neither when another attempt on ``backend`` holds the id."""
    row = _under_id_lock(conn, _RECORD_EXTERNAL_ID_AND_WAKE,
                         {"e": external_id, "aid": attempt_id, "b": backend, "w": wake_in_s,
                          "id": job_id, "t": token, "s": list(LIVE)})
    assert row is not None  # a SELECT of two EXISTS: always one row
    return Checkpoint(recorded=not row[0], alive=bool(row[1]))


def mark_sent(conn: Conn, attempt_id: int, prev: datetime, now: datetime) -> bool:
    """Claim the repeat of a submission whose answer was lost (last sent at ``prev``);
    False: another step repeated it, or it concluded, meanwhile."""
    return _MARK_SENT.first(conn, {"id": attempt_id, "prev": prev, "now": now}) is not None


def mark_cancel_requested(conn: Conn, attempt_id: int, now: datetime) -> None:
    _MARK_CANCEL_REQUESTED.run(conn, {"id": attempt_id, "now": now})


def ended_before_its_attempt(job: JobRow) -> bool:
    """The job ended while an attempt could still run (cancelled, or failed by its deadline):
    an attempt the provider finished anyway gives it its result (``orch_end_job``)."""
    return job.status == "cancelled" or (job.status == "failed"
                                         and job.error_code == "deadline_exceeded")


def close_attempt(
    conn: Conn,
    attempt_id: int,
    outcome: str,
    now: datetime,
    *,
    fault: str | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
    cost_micros: int | None = None,
    external_id: str | None = None,
    possible_cost_micros: int | None = None,
) -> bool:
    """Record an open attempt's outcome (and, for a backend that answered at once, its
    external id); False if it was already closed."""
    return _CLOSE_ATTEMPT.first(
        conn,
        {"o": outcome, "f": fault, "c": error_code, "m": error_message, "cost": cost_micros,
         "now": now, "id": attempt_id, "e": external_id, "possible": possible_cost_micros},
    ) is not None
