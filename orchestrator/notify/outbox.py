"""Delivery of pending budget alerts: the consumer side of the transactional outbox (DESIGN §6).

``deliver_pending`` works in three short steps, never holding a lock while it talks to a
channel, so the ledger (which only inserts into ``alerts``) is never blocked:

1. **claim** (one transaction): lock up to ``batch`` pending alerts that have a delivery due
   (``FOR UPDATE OF alerts SKIP LOCKED``: concurrent workers take disjoint alerts), create one
   ``alert_deliveries`` row per channel of the budget on first sight, and lease the due ones
   (``attempts + 1``, ``next_attempt_at = now + lease``, a fresh ``claim_token``);
2. **send** each leased delivery, outside any transaction;
3. **record** (one transaction per alert): ``delivered``; or ``pending`` again with
   ``next_attempt_at`` pushed by exponential backoff with jitter; or ``failed`` after a
   permanent error or ``max_attempts`` tries. When no delivery of an alert is pending any
   more, the alert becomes ``delivered`` (at least one channel got it, or it has no channel)
   or ``failed`` (every channel failed).

A channel that succeeded is never sent the alert again. Delivery is at-least-once only across
a crash between a send and its record; receivers de-duplicate on the alert id (webhook
``alert_id``, email ``X-Orchestrator-Alert-Id`` / ``Message-ID``, Slack text).
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Connection, Engine, text

from orchestrator.notify.backoff import retry_delay_s
from orchestrator.notify.base import ChannelFactoryFn
from orchestrator.notify.errors import DeliveryError
from orchestrator.notify.message import AlertMessage
from orchestrator.notify.stored import Opened, open_for_delivery
from orchestrator.secrets import SecretBox

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8
    base_s: float = 30.0
    cap_s: float = 3600.0
    lease_s: float = 600.0  # a leased delivery is not leased again before this (crash cover)
    rng: random.Random | None = None

    def delay(self, attempt: int, retry_after_s: float | None) -> timedelta:
        delay = retry_delay_s(attempt, base_s=self.base_s, cap_s=self.cap_s, rng=self.rng)
        return timedelta(seconds=max(delay, retry_after_s or 0.0))


@dataclass(frozen=True, slots=True)
class ChannelOutcome:
    alert_id: uuid.UUID
    channel: str  # label, safe to show
    status: str  # delivered | retrying | failed
    attempts: int
    error: str | None = None
    next_attempt_at: datetime | None = None
    channel_type: str = ""  # webhook | slack | email


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    outcomes: tuple[ChannelOutcome, ...] = ()
    alerts_delivered: tuple[uuid.UUID, ...] = ()
    alerts_failed: tuple[uuid.UUID, ...] = ()

    def _with(self, status: str) -> list[ChannelOutcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def delivered(self) -> list[ChannelOutcome]:
        return self._with("delivered")

    @property
    def retrying(self) -> list[ChannelOutcome]:
        return self._with("retrying")

    @property
    def failed(self) -> list[ChannelOutcome]:
        return self._with("failed")


@dataclass(slots=True)
class _Claimed:
    alert_id: uuid.UUID
    key: str
    channel_type: str
    label: str
    attempts: int
    message: AlertMessage | None
    opened: Opened | None  # None: no longer a channel of the budget
    error: DeliveryError | None = None


_CLAIM_ALERTS = text(
    """
    SELECT a.id, a.budget_id, a.kind, a.threshold_bp, a.payload, b.channels, b.period,
           EXISTS (SELECT 1 FROM alert_deliveries d WHERE d.alert_id = a.id) AS started
    FROM alerts a JOIN budgets b ON b.id = a.budget_id
    WHERE a.status = 'pending'
      AND (EXISTS (SELECT 1 FROM alert_deliveries d WHERE d.alert_id = a.id
                   AND d.status = 'pending' AND d.next_attempt_at <= :now)
           OR NOT EXISTS (SELECT 1 FROM alert_deliveries d WHERE d.alert_id = a.id
                          AND d.status = 'pending'))
    ORDER BY a.created_at, a.id
    LIMIT :batch
    FOR UPDATE OF a SKIP LOCKED
    """
)
_INSERT_DELIVERY = text(
    """
    INSERT INTO alert_deliveries (alert_id, channel_key, channel_index, channel_type, target,
                                  status, last_error, next_attempt_at, created_at, updated_at)
    VALUES (:alert_id, :key, :index, :type, :target, :status, :error, :now, :now, :now)
    ON CONFLICT (alert_id, channel_key) DO NOTHING
    """
)
_LEASE = text(
    """
    UPDATE alert_deliveries
    SET attempts = attempts + 1, next_attempt_at = :lease_until, claim_token = :token,
        updated_at = :now
    WHERE alert_id = ANY(:ids) AND status = 'pending' AND next_attempt_at <= :now
    RETURNING alert_id, channel_key, channel_type, target, attempts
    """
)
_COUNT_ALERT_ATTEMPT = text("UPDATE alerts SET attempts = attempts + 1 WHERE id = ANY(:ids)")
_LOCK_ALERT = text("SELECT id FROM alerts WHERE id = :id FOR UPDATE")
_RECORD_SUCCESS = text(
    """
    UPDATE alert_deliveries
    SET status = 'delivered', delivered_at = :now, last_error = NULL, claim_token = NULL,
        updated_at = :now
    WHERE alert_id = :alert_id AND channel_key = :key AND status <> 'delivered'
    """
)
_RECORD_FAILURE = text(
    """
    UPDATE alert_deliveries
    SET status = :status, next_attempt_at = :next, last_error = :error, claim_token = NULL,
        updated_at = :now
    WHERE alert_id = :alert_id AND channel_key = :key AND status = 'pending'
      AND claim_token = :token
    """
)
_FINALIZE = text(
    """
    WITH s AS (
        SELECT count(*) FILTER (WHERE status = 'pending') AS pending,
               count(*) FILTER (WHERE status = 'delivered') AS delivered,
               count(*) AS total
        FROM alert_deliveries WHERE alert_id = :id
    )
    UPDATE alerts a
    SET status = CASE WHEN s.total > 0 AND s.delivered = 0 THEN 'failed' ELSE 'delivered' END,
        delivered_at = :now
    FROM s
    WHERE a.id = :id AND a.status = 'pending' AND s.pending = 0
    RETURNING a.status
    """
)


def deliver_pending(
    engine: Engine,
    channel_factory: ChannelFactoryFn,
    now: datetime,
    batch: int = 50,
    *,
    policy: RetryPolicy | None = None,
    max_workers: int = 8,
    secrets: SecretBox | None = None,
) -> DeliveryReport:
    """Send what is due at ``now`` (timezone-aware) for up to ``batch`` pending alerts.
    ``secrets`` opens the channels' sealed secrets (``notify.stored``)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    policy = policy or RetryPolicy()
    token = uuid.uuid4()
    claimed, finished = _claim(engine, now, batch, policy, token, secrets)
    if claimed:
        workers = max(1, min(max_workers, len(claimed)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="notify") as pool:
            list(pool.map(lambda c: _send(c, channel_factory), claimed))
    outcomes: list[ChannelOutcome] = []
    by_alert: dict[uuid.UUID, list[_Claimed]] = {}
    for c in claimed:
        by_alert.setdefault(c.alert_id, []).append(c)
    for alert_id, items in by_alert.items():
        with engine.begin() as tx:
            tx.execute(_LOCK_ALERT, {"id": alert_id})
            outcomes += [_record(tx, c, now, policy, token) for c in items]
            status = tx.execute(_FINALIZE, {"id": alert_id, "now": now}).scalar()
        if status is not None:
            finished.append((alert_id, status))
    return DeliveryReport(
        outcomes=tuple(outcomes),
        alerts_delivered=tuple(a for a, s in finished if s == "delivered"),
        alerts_failed=tuple(a for a, s in finished if s == "failed"),
    )


def _claim(
    engine: Engine, now: datetime, batch: int, policy: RetryPolicy, token: uuid.UUID,
    secrets: SecretBox | None,
) -> tuple[list[_Claimed], list[tuple[uuid.UUID, str]]]:
    with engine.begin() as tx:
        rows = tx.execute(_CLAIM_ALERTS, {"now": now, "batch": batch}).all()
        if not rows:
            return [], []
        configs: dict[uuid.UUID, dict[str, Opened]] = {}
        messages: dict[uuid.UUID, AlertMessage | None] = {}
        for r in rows:
            configs[r.id] = _configs(tx, r, now, secrets, create=not r.started)
            messages[r.id] = _message(r)
        leased = tx.execute(
            _LEASE,
            {"ids": [r.id for r in rows], "now": now, "token": token,
             "lease_until": now + timedelta(seconds=policy.lease_s)},
        ).all()
        claimed = [
            _Claimed(d.alert_id, d.channel_key, d.channel_type, d.target, d.attempts,
                     messages[d.alert_id],
                     configs[d.alert_id].get(d.channel_key))
            for d in leased
        ]
        with_work = {c.alert_id for c in claimed}
        if with_work:
            tx.execute(_COUNT_ALERT_ATTEMPT, {"ids": list(with_work)})
        finished: list[tuple[uuid.UUID, str]] = []
        for r in rows:
            if r.id not in with_work:  # nothing due: all channels done, or none configured
                status = tx.execute(_FINALIZE, {"id": r.id, "now": now}).scalar()
                if status is not None:
                    finished.append((r.id, status))
        return claimed, finished


def _configs(
    tx: Connection, row: Any, now: datetime, secrets: SecretBox | None, *, create: bool
) -> dict[str, Opened]:
    """The budget's channels by key; on first sight, one delivery row per channel (an
    invalid entry gets a row that is failed at once, so it is reported, not skipped). One
    entry's trouble (unreadable, refused, undecryptable) is that entry's alone."""
    out: dict[str, Opened] = {}
    raw: Sequence[Any] = row.channels if isinstance(row.channels, list) else []
    for i, item in enumerate(raw):
        o = open_for_delivery(item, i, secrets)
        if not o.invalid:
            out.setdefault(o.key, o)
        if create:
            failed = o.invalid and o.error is not None
            tx.execute(
                _INSERT_DELIVERY,
                {"alert_id": row.id, "key": o.key, "index": i, "type": o.type,
                 "target": o.target[:200], "status": "failed" if failed else "pending",
                 "error": o.error.summary[:500] if failed and o.error else None, "now": now},
            )
            if failed and o.error is not None:
                log.error("alert %s: channels[%d] cannot be delivered: %s", row.id, i,
                          o.error.summary)
    return out


def _message(row: Any) -> AlertMessage | None:
    try:
        return AlertMessage.from_alert(
            alert_id=row.id, kind=row.kind, budget_id=row.budget_id,
            threshold_bp=row.threshold_bp, payload=dict(row.payload), period=row.period,
        )
    except (ValidationError, KeyError, TypeError, ValueError):
        log.error("alert %s: malformed payload", row.id)
        return None


def _send(c: _Claimed, factory: ChannelFactoryFn) -> None:
    if c.message is None:
        c.error = DeliveryError("malformed_alert", label=c.label, transient=False)
        return
    if c.opened is None:
        c.error = DeliveryError("channel_removed", detail="no longer a channel of the budget",
                                label=c.label, transient=False)
        return
    if c.opened.config is None:  # its secret cannot be opened now (see notify.stored)
        c.error = c.opened.error or DeliveryError("invalid_channel", transient=False)
        return
    try:
        factory(c.opened.config).send(c.message)
    except DeliveryError as exc:
        c.error = exc
    except Exception as exc:  # a bug in a channel must not sink the batch; say only its type
        log.error("alert %s: %s raised %s", c.alert_id, c.label, type(exc).__name__)
        c.error = DeliveryError("internal_error", detail=type(exc).__name__, label=c.label,
                                transient=True)


def _record(
    tx: Connection, c: _Claimed, now: datetime, policy: RetryPolicy, token: uuid.UUID
) -> ChannelOutcome:
    ids = {"alert_id": c.alert_id, "key": c.key, "now": now}
    if c.error is None:
        tx.execute(_RECORD_SUCCESS, ids)
        log.info("alert %s delivered to %s (attempt %d)", c.alert_id, c.label, c.attempts)
        return ChannelOutcome(c.alert_id, c.label, "delivered", c.attempts,
                              channel_type=c.channel_type)
    err = c.error.summary[:500]  # our own code (and detail): never a remote body or secret
    if c.error.transient and c.attempts < policy.max_attempts:
        nxt = now + policy.delay(c.attempts, c.error.retry_after_s)
        tx.execute(
            _RECORD_FAILURE,
            {**ids, "status": "pending", "next": nxt, "error": err, "token": token},
        )
        log.warning("alert %s: %s: %s (attempt %d), retry at %s", c.alert_id, c.label, err,
                    c.attempts, nxt.isoformat())
        return ChannelOutcome(c.alert_id, c.label, "retrying", c.attempts, err, nxt,
                              c.channel_type)
    tx.execute(
        _RECORD_FAILURE, {**ids, "status": "failed", "next": now, "error": err, "token": token}
    )
    log.error("alert %s: delivery to %s failed for good after %d attempt(s): %s",
              c.alert_id, c.label, c.attempts, err)
    return ChannelOutcome(c.alert_id, c.label, "failed", c.attempts, err,
                          channel_type=c.channel_type)
