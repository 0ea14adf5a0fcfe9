"""Sending job webhooks: the consumer side of the events outbox (migration 0013 queues a
``webhook_deliveries`` row per event and endpoint in the transition's transaction).

Modelled on the budget alerts' delivery (``orchestrator.notify.outbox``), in three short steps
that hold no lock while a receiver is called, so a slow receiver never slows a job:

1. **claim** (one transaction): due deliveries whose job has no earlier delivery to the same
   target still pending (in order per job), ``FOR UPDATE SKIP LOCKED``; each is leased
   (``attempts + 1``, ``next_attempt_at = now + lease``, a fresh ``claim_token``); a tenant
   with no signing secret gets one made here (``endpoints.ensure_secret``), so nothing waits
   for one unless no key is configured to seal it with (``secret_key_missing``);
2. **send** each, outside any transaction, in the claim's order, through the egress policy
   (checked and pinned at connection time), signed as alerts are: ``X-Orchestrator-Timestamp``,
   ``X-Orchestrator-Signature: sha256=HMAC(secret, "<timestamp>.<body>")``, plus
   ``X-Orchestrator-Event-Id`` (the event's id, to de-duplicate on);
3. **record**: ``delivered``; or ``pending`` again after a backoff (exponential with jitter,
   ``ORCH_WEBHOOK_BACKOFF_S`` doubling up to ``ORCH_WEBHOOK_BACKOFF_CAP_S``) while the event
   is younger than ``ORCH_WEBHOOK_RETRY_WINDOW_S`` (or was redelivered less than that ago:
   ``orchestrator.events.redelivery``); else ``failed``. The tenant endpoint's
   ``failing_since`` and ``last_error`` mark it failing until a delivery succeeds.

Tenants share a batch, so that one tenant's slow or dead receiver does not hold back the
others' webhooks (its POSTs each take up to the client's whole time limit):

- **interleaved**: the claim ranks each tenant's candidates by due time and takes every
  tenant's first before any tenant's second (then by due time), and the sends start in that
  order, so each tenant's first delivery starts before any tenant's second (in the first
  round of ``max_workers`` unless more tenants than that have one due), whatever another
  tenant has queued. A busy tenant is not capped: it fills what the others
  leave of the batch. The candidates are read per tenant and target (at most a batch of each,
  index ``ix_webhook_deliveries_due``, migration 0020), so a flood of one tenant's due rows
  costs that tenant's scan, not the others' place in the batch;
- **probes**: a tenant whose endpoint is marked failing (``failing_since``) gets at most
  ``probes`` (:data:`FAILING_PROBES`) deliveries to it per run; one that succeeds clears
  the mark (unless one recorded after it in that run failed) and the next batch takes the
  rest. Deliveries to a job's own ``webhook_url``
  (``target = 'job'``) mark nothing and are not capped by it: a job's URL is not the
  endpoint, and one tenant's jobs may name many. Only the interleaving shares those: a
  tenant's dead job URLs still lengthen the run they are in (up to its lease), so another
  tenant's delivery that falls due meanwhile waits for the next run, where it is again in
  the first round.

At least once: a crash between a send and its record sends it again after the lease. The
lease covers the whole batch's worst case (each POST's whole time limit, the client's read
timeout, times the rounds of ``max_workers`` a batch takes): a run still sending when its lease
ran out would race the run that claimed the same delivery again, and a job's earlier event
could then arrive after its later ones.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import Engine, text

from orchestrator.egress import EgressPolicy
from orchestrator.events import endpoints
from orchestrator.events.store import Event
from orchestrator.notify.backoff import retry_delay_s
from orchestrator.notify.base import post
from orchestrator.notify.errors import DeliveryError
from orchestrator.notify.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from orchestrator.secrets import SecretBox, SecretUnreadable

log = logging.getLogger(__name__)

EVENT_ID_HEADER = "X-Orchestrator-Event-Id"
USER_AGENT = "orchestrator-webhooks/1"

_CLAIM = text(
    """
    WITH RECURSIVE tenants AS (  -- each tenant with a delivery pending: a skip scan
        (SELECT d.tenant FROM webhook_deliveries d WHERE d.status = 'pending'
         ORDER BY d.tenant LIMIT 1)
        UNION ALL
        SELECT (SELECT d.tenant FROM webhook_deliveries d
                WHERE d.status = 'pending' AND d.tenant > t.tenant ORDER BY d.tenant LIMIT 1)
        FROM tenants t WHERE t.tenant IS NOT NULL
    ), ranked AS (  -- at most :batch per tenant and target (:probes to a failing endpoint)
        SELECT c.id, c.next_attempt_at,
               row_number() OVER (PARTITION BY t.tenant ORDER BY c.next_attempt_at, c.id) AS rank
        FROM tenants t
        CROSS JOIN (VALUES ('job'), ('tenant')) AS g(target)
        LEFT JOIN webhook_endpoints w ON w.tenant = t.tenant
        CROSS JOIN LATERAL (
            SELECT d.id, d.next_attempt_at FROM webhook_deliveries d
            WHERE d.tenant = t.tenant AND d.target = g.target AND d.status = 'pending'
              AND d.next_attempt_at <= :now
              AND NOT EXISTS (SELECT 1 FROM webhook_deliveries p
                              WHERE p.job_id = d.job_id AND p.target = d.target
                                AND p.seq < d.seq AND p.status = 'pending')
            ORDER BY d.next_attempt_at, d.id
            LIMIT CASE WHEN g.target = 'tenant' AND w.failing_since IS NOT NULL
                       THEN :probes ELSE :batch END
        ) c
        WHERE t.tenant IS NOT NULL
        ORDER BY rank, c.next_attempt_at, c.id LIMIT :batch  -- each tenant's first, second...
    ), due AS (  -- locked here (FOR UPDATE takes no window function), each row's state
        -- checked again if another run changed it; one locked by another claim is left out
        SELECT d.id, r.rank, r.next_attempt_at AS due_at
        FROM ranked r JOIN webhook_deliveries d ON d.id = r.id
        WHERE d.status = 'pending' AND d.next_attempt_at <= :now
        FOR UPDATE OF d SKIP LOCKED
    ), claimed AS (
        UPDATE webhook_deliveries d
        SET attempts = d.attempts + 1, next_attempt_at = :lease_until, claim_token = :token,
            updated_at = :now
        FROM due WHERE d.id = due.id
        RETURNING d.id, d.target, d.attempts, d.tenant, d.event_id, d.requeued_at, due.rank,
                  due.due_at
    )
    SELECT id, target, attempts, tenant, event_id, requeued_at FROM claimed
    ORDER BY rank, due_at, id
    """
)
_EVENTS = text(
    """
    SELECT e.id, e.job_id, e.tenant, e.seq, e.type, e.data, e.txid, e.position, e.created_at,
           j.spec->>'webhook_url' AS job_url
    FROM job_events e JOIN jobs j ON j.id = e.job_id WHERE e.id = ANY(:ids)
    """
)
_SUCCESS = text(
    """
    UPDATE webhook_deliveries SET status = 'delivered', delivered_at = :now, last_error = NULL,
        claim_token = NULL, updated_at = :now
    WHERE id = :id AND claim_token = :token
    """
)
_FAILURE = text(
    """
    UPDATE webhook_deliveries SET status = :status, next_attempt_at = :next, last_error = :err,
        claim_token = NULL, updated_at = :now
    WHERE id = :id AND claim_token = :token
    """
)
_ENDPOINT_OK = text("UPDATE webhook_endpoints SET failing_since = NULL, last_error = NULL "
                    "WHERE tenant = :t AND failing_since IS NOT NULL")
_ENDPOINT_FAILING = text(
    "UPDATE webhook_endpoints SET failing_since = COALESCE(failing_since, :now), "
    "last_error = :err WHERE tenant = :t"
)


# failures that say nothing of the tenant's endpoint: its URL was removed (no delivery to it
# can succeed again, so a mark would stay for ever), or the event is gone
NOT_THE_ENDPOINTS = frozenset({"endpoint_removed", "event_gone"})


@dataclass(frozen=True)
class WebhookPolicy:
    retry_window_s: float = 86_400.0
    backoff_s: float = 5.0
    backoff_cap_s: float = 600.0
    # a leased delivery is not leased again before this (crash cover); at least the batch's
    # worst case (deliver_due), so no run is still sending what another has claimed since
    lease_s: float = 0.0


@dataclass(slots=True)
class _Claimed:
    id: int
    target: str
    attempts: int
    tenant: str
    event: Event | None
    requeued_at: datetime | None = None  # a redelivery: its retry window starts there
    url: str | None = None
    secret: str | None = None
    error: DeliveryError | None = None


@dataclass(frozen=True, slots=True)
class Report:
    delivered: int = 0
    retrying: int = 0
    failed: int = 0


# deliveries to a tenant's endpoint marked failing, at most, in one run: its probes
FAILING_PROBES = 2


def deliver_due(engine: Engine, policy: EgressPolicy, box: SecretBox | None,
                client: httpx.Client, rules: WebhookPolicy, now: datetime,
                batch: int = 100, max_workers: int = 8,
                probes: int = FAILING_PROBES) -> Report:
    """Send what is due at ``now`` (at most ``batch``, tenants interleaved: see the module's
    docstring; at most ``probes`` to an endpoint marked failing). What happened is recorded
    as of when the sends ended (``now`` plus the time they took): a retry's backoff counts
    from the attempt's end, not from the run's start, which can be a whole lease earlier."""
    token = uuid.uuid4()
    started = time.monotonic()
    claimed = _claim(engine, box, now, batch, probes,
                     lease_s(client, rules, batch, max_workers), token)
    if claimed:  # started in the claim's order: every tenant's first before any second
        with ThreadPoolExecutor(max_workers=min(max_workers, len(claimed)),
                                thread_name_prefix="webhooks") as pool:
            list(pool.map(lambda c: _send(c, client, policy), claimed))
    ended = now + timedelta(seconds=time.monotonic() - started)
    counts = {"delivered": 0, "retrying": 0, "failed": 0}
    with engine.begin() as tx:
        for c in claimed:
            counts[_record(tx, c, ended, rules, token)] += 1
    return Report(**counts)


def deliver_run(engine: Engine, policy: EgressPolicy, box: SecretBox | None,
                client: httpx.Client, rules: WebhookPolicy, clock: Callable[[], datetime],
                for_s: float, batch: int = 100,
                on_report: Callable[[Report], None] | None = None) -> int:
    """One run of the sender (beat's ``orchestrator.deliver_webhooks``): batch after batch
    for up to ``for_s`` seconds, while a batch was full or ended a delivery (delivered, or
    failed for good). A job's next event to an endpoint is held back until the one before it
    ended (in order per job), so it falls due only once that batch is recorded: stopping
    there made a job's events leave one run apart, its terminal event (its third, fifth…)
    that many intervals after it happened. An endpoint marked failing gets its probes in
    the first batch only (a run's, not a batch's); one that succeeded cleared the mark, and
    the later batches take the rest. Returns how many were tried."""
    stop = time.monotonic() + for_s
    tried = 0
    probes = FAILING_PROBES
    while True:
        report = deliver_due(engine, policy, box, client, rules, clock(), batch=batch,
                             probes=probes)
        probes = 0
        if on_report is not None:
            on_report(report)
        n = report.delivered + report.retrying + report.failed
        tried += n
        # only retries (a receiver down): nothing new is due before their backoff
        ended = report.delivered + report.failed
        if (n < batch and not ended) or time.monotonic() > stop:
            return tried


LEASE_MARGIN_S = 15.0  # the claim and record transactions, DNS, a last connect attempt
FALLBACK_LIMIT_S = 60.0  # a client without a read timeout: the longest a setting allows


def lease_s(client: httpx.Client, rules: WebhookPolicy, batch: int, max_workers: int) -> float:
    """How long a claim holds its deliveries: the worst case of sending a whole batch
    (``post_pinned`` ends each POST at the client's read timeout), and no less than
    ``rules.lease_s``."""
    limit = client.timeout.read or FALLBACK_LIMIT_S
    rounds = math.ceil(batch / max(1, max_workers))
    return max(rules.lease_s, limit * rounds + LEASE_MARGIN_S)


def _claim(engine: Engine, box: SecretBox | None, now: datetime, batch: int, probes: int,
           lease: float, token: uuid.UUID) -> list[_Claimed]:
    with engine.begin() as tx:
        rows = tx.execute(_CLAIM, {"now": now, "batch": batch, "probes": probes,
                                   "token": token,
                                   "lease_until": now + timedelta(seconds=lease)}).all()
        if not rows:
            return []
        events = {r.id: r for r in tx.execute(_EVENTS, {"ids": [r.event_id for r in rows]})}
        ends = {t: endpoints.get(tx, t) for t in {r.tenant for r in rows}}
        if box is not None:  # a tenant that never set a secret gets one now, not a wait
            for t, ep in ends.items():
                if not endpoints.has_secret(ep):
                    ends[t] = endpoints.ensure_secret(tx, t, box)
    out: list[_Claimed] = []
    for r in rows:
        e = events.get(r.event_id)
        c = _Claimed(r.id, r.target, r.attempts, r.tenant,
                     None if e is None else Event(e.id, e.job_id, e.tenant, e.seq, e.type,
                                                  dict(e.data), e.txid, e.position,
                                                  e.created_at), r.requeued_at)
        if box is None:  # nothing can be signed: it goes out once a key is configured
            c.error = DeliveryError("secret_key_missing", transient=True)
            out.append(c)
            continue
        try:
            c.secret = endpoints.open_secret(ends[r.tenant], box)
            c.url = (e.job_url if e is not None else None) if r.target == "job" \
                else endpoints.open_url(ends[r.tenant], box)
        except SecretUnreadable:
            c.error = DeliveryError("secret_unreadable", transient=True)
        out.append(c)
    return out


def _send(c: _Claimed, client: httpx.Client, policy: EgressPolicy) -> None:
    if c.error is not None:
        return
    if c.event is None:
        c.error = DeliveryError("event_gone", transient=False)
        return
    if c.url is None:
        c.error = DeliveryError("endpoint_removed", transient=False)
        return
    if c.secret is None:  # not after _claim made one; kept should a secret be unreadable
        c.error = DeliveryError("no_signing_secret", transient=True)
        return
    body = c.event.body()
    ts = str(int(time.time()))
    headers = {TIMESTAMP_HEADER: ts, SIGNATURE_HEADER: sign(c.secret, ts, body),
               EVENT_ID_HEADER: str(c.event.id), "User-Agent": USER_AGENT}
    field = "webhook_url" if c.target == "job" else "url"
    try:
        post(client, policy, c.url, body, headers, field)
    except DeliveryError as exc:
        c.error = exc
    except Exception as exc:  # a bug must not sink the batch; say only its type
        c.error = DeliveryError("internal_error", detail=type(exc).__name__, transient=True)


def _record(tx: Any, c: _Claimed, now: datetime, rules: WebhookPolicy,
            token: uuid.UUID) -> str:
    ids = {"id": c.id, "token": token, "now": now}
    if c.error is None:
        tx.execute(_SUCCESS, ids)
        if c.target == "tenant":
            tx.execute(_ENDPOINT_OK, {"t": c.tenant})
        return "delivered"
    err = c.error.summary[:200]  # our own code: never a remote body, a URL or a secret
    if c.target == "tenant" and c.error.reason not in NOT_THE_ENDPOINTS:
        tx.execute(_ENDPOINT_FAILING, {"t": c.tenant, "now": now, "err": err})
    delay = max(retry_delay_s(c.attempts, base_s=rules.backoff_s, cap_s=rules.backoff_cap_s),
                c.error.retry_after_s or 0.0)
    nxt = now + timedelta(seconds=delay)
    born = c.event.created_at if c.event is not None else now
    if c.requeued_at is not None and c.requeued_at > born:
        born = c.requeued_at
    window_end = born + timedelta(seconds=rules.retry_window_s)
    if c.error.transient and now < window_end:
        # a backoff (or Retry-After) past the window's end: one last try at its end, so a
        # receiver back within the window is not given up on early
        nxt = min(nxt, window_end)
        tx.execute(_FAILURE, {**ids, "status": "pending", "next": nxt, "err": err})
        log.warning("webhook delivery %d (%s): %s (attempt %d), retry at %s", c.id, c.target,
                    err, c.attempts, nxt.isoformat())
        return "retrying"
    tx.execute(_FAILURE, {**ids, "status": "failed", "next": now, "err": err})
    log.error("webhook delivery %d (%s) failed for good after %d attempt(s): %s", c.id,
              c.target, c.attempts, err)
    return "failed"
