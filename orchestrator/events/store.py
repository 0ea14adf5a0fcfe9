"""Reading job events (written by migration 0013's triggers) and their wire form.

A job's events are read by ``seq`` (gap free, in commit order: every event-writing statement
holds the job's row lock). A tenant's feed is read in (``txid``, ``position``) order, and only
events whose transaction is older than every transaction still running
(``pg_snapshot_xmin``): a transaction still open can only commit events that sort after
them, so a reader that moves its cursor forward never skips one.

The feed's place is (``txid``, ``position``) inside, but never on the wire: both count every
tenant's transactions and events, so a tenant that saw them would read off how much the
others did between two of its own events (and, probing with made-up values, when). A client
is given the id of the tenant's own event it is at instead (or ``0``: before the first), and
the place is looked up from it.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text

FeedCursor = tuple[int, int]
_COLS = "id, job_id, tenant, seq, type, data, txid, position, created_at"
_JOB = text(
    f"SELECT {_COLS} FROM job_events WHERE job_id = :j AND seq > :after ORDER BY seq LIMIT :n"
)
_FEED = text(
    f"""
    SELECT {_COLS} FROM job_events
    WHERE tenant = :t AND (txid, position) > (:x, :p)
      AND txid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
    ORDER BY txid, position LIMIT :n
    """
)
_FEED_HEAD = text(
    """
    SELECT id, txid, position FROM job_events
    WHERE tenant = :t AND txid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
    ORDER BY txid DESC, position DESC LIMIT 1
    """
)
_EVENT_SEQ = text("SELECT seq FROM job_events WHERE job_id = :j AND id = :e")
_EVENT_CURSOR = text("SELECT txid, position FROM job_events WHERE id = :e AND tenant = :t")
_JOB_OWNER = text("SELECT tenant, status FROM jobs WHERE id = :j")
# an attempt still open, or a hold still held (an attempt closed by a failover step whose
# conclusion, the hold's, is still to come): what retention's _EVENTS keeps a last event for
_JOB_STATE = text(
    "SELECT j.status, EXISTS (SELECT 1 FROM attempts a WHERE a.job_id = j.id "
    "AND a.outcome IS NULL) OR EXISTS (SELECT 1 FROM holds h WHERE h.job_id = j.id "
    "AND h.status = 'held') AS open FROM jobs j WHERE j.id = :j")


@dataclass(frozen=True, slots=True)
class Event:
    id: uuid.UUID
    job_id: uuid.UUID
    tenant: str
    seq: int
    type: str
    data: dict[str, Any]
    txid: int
    position: int
    created_at: datetime

    @property
    def terminal(self) -> bool:
        return self.type in ("job.succeeded", "job.failed", "job.cancelled")

    @property
    def feed_cursor(self) -> str:
        """The tenant feed's place of this event as a client sees it (``GET
        /v1/events?since=``): its id, which says nothing of other tenants' events."""
        return str(self.id)

    @property
    def place(self) -> FeedCursor:
        return (self.txid, self.position)

    def payload(self) -> dict[str, Any]:
        """The event as webhooks and streams carry it (never the job's input). ``at`` is
        the contract's name for when it happened; ``created_at``, the same instant, stays for
        receivers written against earlier releases."""
        at = self.created_at.isoformat()
        return {"id": str(self.id), "type": self.type, "job_id": str(self.job_id),
                "tenant": self.tenant, "seq": self.seq, "at": at, "created_at": at,
                "data": self.data}

    def body(self) -> bytes:
        return json.dumps(self.payload(), separators=(",", ":")).encode()


def _event(row: Any) -> Event:
    return Event(row.id, row.job_id, row.tenant, row.seq, row.type, dict(row.data), row.txid,
                 row.position, row.created_at)


def job_events(conn: Connection, job_id: uuid.UUID, after_seq: int = 0,
               limit: int = 500) -> list[Event]:
    rows = conn.execute(_JOB, {"j": job_id, "after": after_seq, "n": limit}).all()
    return [_event(r) for r in rows]


def event_seq(conn: Connection, job_id: uuid.UUID, event_id: uuid.UUID) -> int | None:
    """The seq of one of the job's events; None when the job has no such event."""
    seq = conn.execute(_EVENT_SEQ, {"j": job_id, "e": event_id}).scalar_one_or_none()
    return None if seq is None else int(seq)


def event_feed_cursor(conn: Connection, tenant: str, event_id: uuid.UUID) -> FeedCursor | None:
    """The feed position of one of the tenant's events; None when it has no such event."""
    row = conn.execute(_EVENT_CURSOR, {"e": event_id, "t": tenant}).first()
    return None if row is None else (int(row.txid), int(row.position))


def job_owner(conn: Connection, job_id: uuid.UUID) -> tuple[str, str] | None:
    """(tenant, status) of the job, None when there is no such job."""
    row = conn.execute(_JOB_OWNER, {"j": job_id}).first()
    return None if row is None else (row.tenant, row.status)


def job_state(conn: Connection, job_id: uuid.UUID) -> tuple[str, bool] | None:
    """(status, whether a charge may still come) of the job; None when there is no such
    job. A job that ended (cancelled, or failed by its deadline) with an attempt open, or
    its hold still held, may still have an event: its conclusion, billed, is its
    ``job.charged``, written in the statement that finishes the hold."""
    row = conn.execute(_JOB_STATE, {"j": job_id}).first()
    return None if row is None else (row.status, bool(row.open))


# ASCII digits, within PostgreSQL's bigint ("²".isdigit() is true; 10**19 is out of range)
BIGINT_DIGITS = re.compile(r"[0-9]{1,18}")


def feed_events(conn: Connection, tenant: str, after: FeedCursor,
                limit: int = 500) -> list[Event]:
    rows = conn.execute(_FEED, {"t": tenant, "x": after[0], "p": after[1], "n": limit}).all()
    return [_event(r) for r in rows]


def feed_head(conn: Connection, tenant: str) -> FeedCursor:
    """The tenant feed's place now: a reader starting here sees what comes next."""
    return feed_head_shown(conn, tenant)[0]


def feed_head_shown(conn: Connection, tenant: str) -> tuple[FeedCursor, str]:
    """The tenant feed's place now, and how a client is shown it: the id of the tenant's
    last event (its own, so nothing of other tenants' activity), ``0`` before the first."""
    row = conn.execute(_FEED_HEAD, {"t": tenant}).first()
    if row is None:
        return (0, 0), "0"
    return (int(row.txid), int(row.position)), str(row.id)
