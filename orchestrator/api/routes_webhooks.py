"""/v1/webhooks: a tenant's default endpoint and signing secret, and what was delivered.

``PUT /v1/webhooks`` (the tenant's own key, or an admin key naming ``tenant``) sets the URL
(optional: without one only jobs' ``webhook_url`` are called), the events it receives and the
secret that signs every webhook of the tenant's jobs; a field left out keeps its stored value,
so ``{"secret": …}`` alone rotates the secret. The secret is sealed at rest; the URL is
shown as its origin only. A tenant that set no secret has one made on first need (its default
secret, ``whsec_…``); ``GET /v1/webhooks/secret`` returns the tenant's secret, made now if
missing, so a receiver can verify signatures: the only route that shows it (``PUT`` replaces
it; ``409 secret_unreadable`` when it was sealed with a key this server lacks, as after a
restore without the old key). ``GET /v1/webhooks/deliveries`` lists deliveries, newest first,
failing ones included (``status=failed``, or ``pending`` with ``last_error``);
``POST /v1/webhooks/deliveries/{delivery_id}/redeliver`` queues one again (a receiver fixed after it
refused it, or after the retry window ran out), ``POST /v1/webhooks/deliveries/redeliver-failed``
every failed one (of a job, with ``job_id``).
"""


import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import text

from orchestrator.api.bodies import UniqueKeysRoute
from orchestrator.api.context import AUTH_ERRORS, ApiContext, _err
from orchestrator.api.errors import Forbidden
from orchestrator.api.principal import Principal
from orchestrator.api.views import decode_int_cursor, encode_cursor
from orchestrator.domain.events import EVENT_TYPES, TERMINAL_EVENTS
from orchestrator.errors import InvalidRequest, NotFound
from orchestrator.events import endpoints
from orchestrator.events.redelivery import requeue, requeue_failed
from orchestrator.ledger.service import utcnow
from orchestrator.secrets import KEY_FILE_NAME, KEY_SETTING, SecretKeyMissing, SecretUnreadable
from orchestrator.store.keys import TENANT_RE


class WebhookBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str | None = Field(default=None, description="admin keys: whose endpoint")
    url: str | None = Field(default=None, max_length=2048,
                            description="where the tenant's events go; null: jobs' own "
                                        "only; left out: kept")
    secret: str | None = Field(default=None, min_length=16, max_length=256,
                               description="signs every webhook; required the first time; "
                                           "left out: kept")
    events: list[str] | None = Field(
        default=None, description="left out: kept (a new endpoint: the terminal events); "
                                  "null is refused (422)",
        examples=[list(TERMINAL_EVENTS)])

    @field_validator("events")
    @classmethod
    def _events(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            raise ValueError("a list of event types (leave it out to keep the stored ones)")
        for i, e in enumerate(v):  # "<field>[i]: " names the item, as details.field does
            if e not in EVENT_TYPES:
                raise ValueError(f"events[{i}]: unknown event {e!r}; one of "
                                 f"{', '.join(EVENT_TYPES)}")
        return list(dict.fromkeys(v))

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must be an http(s):// URL")
        return v


class WebhookOut(BaseModel):
    tenant: str
    origin: str | None
    url_set: bool
    events: list[str]
    secret_set: bool
    failing_since: str | None
    last_error: str | None
    updated_at: str


class SecretOut(BaseModel):
    tenant: str
    secret: str = Field(description="verifies X-Orchestrator-Signature; keep it private")


class DeliveryOut(BaseModel):
    id: int
    event_id: str
    event_type: str
    job_id: str
    seq: int
    target: Literal["job", "tenant"]
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    last_error: str | None
    next_attempt_at: str | None
    created_at: str
    delivered_at: str | None
    requeued_at: str | None = Field(description="when a redelivery was last asked for")


class RequeuedOut(BaseModel):
    requeued: int = Field(description="failed deliveries queued again")


class DeliveriesOut(BaseModel):
    items: list[DeliveryOut]
    next_cursor: str | None = Field(description="the next (older) page's cursor; null: last")


_DELIVERIES = text(
    """
    SELECT d.id, d.event_id, e.type, d.job_id, d.seq, d.target, d.status, d.attempts,
           d.last_error, d.next_attempt_at, d.created_at, d.delivered_at, d.requeued_at
    FROM webhook_deliveries d JOIN job_events e ON e.id = d.event_id
    WHERE d.tenant = :t AND (CAST(:s AS text) IS NULL OR d.status = :s)
      AND (CAST(:id AS bigint) IS NULL OR d.id = :id)
      AND (CAST(:j AS uuid) IS NULL OR d.job_id = :j)
      AND (CAST(:bt AS timestamptz) IS NULL OR (d.created_at, d.id) < (:bt, :bi))
    ORDER BY d.created_at DESC, d.id DESC LIMIT :n
    """
)


def _iso(v: Any) -> str | None:
    return None if v is None else v.isoformat()


def _delivery(r: Any) -> dict[str, Any]:
    return {"id": r.id, "event_id": str(r.event_id), "event_type": r.type,
            "job_id": str(r.job_id), "seq": r.seq, "target": r.target, "status": r.status,
            "attempts": r.attempts, "last_error": r.last_error,
            "next_attempt_at": _iso(r.next_attempt_at) if r.status == "pending" else None,
            "created_at": _iso(r.created_at), "delivered_at": _iso(r.delivered_at),
            "requeued_at": _iso(r.requeued_at)}


def _whose(p: Principal, tenant: str | None, field: str = "query.tenant") -> str:
    """The tenant named by ``?tenant=`` (``field``: where it came from, ``tenant`` for the
    PUT body's), checked as the other routes' ``?tenant=`` is."""
    if tenant is None or tenant == p.tenant:
        return p.tenant
    if not p.admin:
        raise Forbidden("a tenant key manages its own tenant's webhooks only")
    if not TENANT_RE.match(tenant):
        raise InvalidRequest(f"{field}: 1-64 of [A-Za-z0-9_.-]", field=field)
    return tenant


def router(ctx: ApiContext) -> APIRouter:
    c = ctx.container
    r = APIRouter(prefix="/v1", route_class=UniqueKeysRoute, tags=["webhooks"], responses={
        **AUTH_ERRORS, 403: _err("another tenant's, with a tenant key")})
    Caller = Annotated[Principal, Depends(ctx.principal_dep())]
    Tenant = Annotated[str | None, Query(max_length=64, description="admin keys: whose")]

    @r.put("/webhooks", response_model=WebhookOut,
           summary="Set the tenant's webhook endpoint and signing secret")
    def put_webhook(body: WebhookBody, p: Caller) -> dict[str, Any]:
        tenant = _whose(p, body.tenant, field="tenant")
        with c.engine.begin() as conn:
            ep = endpoints.put(
                conn, tenant, url=body.url if "url" in body.model_fields_set else endpoints.KEEP,
                secret=body.secret, events=body.events, policy=c.egress, box=c.secrets)
        return ep.view()

    @r.get("/webhooks", response_model=WebhookOut, summary="The tenant's webhook endpoint",
           responses={404: _err("none set")})
    def get_webhook(p: Caller, tenant: Tenant = None) -> dict[str, Any]:
        who = _whose(p, tenant)
        with c.engine.connect() as conn:
            ep = endpoints.get(conn, who)
        if ep is None:
            raise NotFound(f"tenant {who} has no webhook endpoint", tenant=who)
        return ep.view()

    @r.get("/webhooks/secret", response_model=SecretOut,
           summary="The tenant's webhook signing secret (made now if it has none)",
           responses={409: _err("secret_unreadable: sealed with a key this server lacks"),
                      503: _err("secret_key_missing: no key to seal a new secret with")})
    def get_secret(p: Caller, response: Response, tenant: Tenant = None) -> dict[str, Any]:
        who = _whose(p, tenant)
        with c.engine.begin() as conn:
            ep = endpoints.ensure_secret(conn, who, c.secrets)
        try:
            secret = endpoints.open_secret(ep, c.secrets)
        except SecretUnreadable:
            raise SecretUnreadable(
                f"tenant {who}'s webhook secret was sealed with a secret key this server does "
                f"not have ({KEY_SETTING} or <data_dir>/{KEY_FILE_NAME}; after a restore, the "
                "old machine's): put that key back, or set a new secret with PUT /v1/webhooks",
                tenant=who) from None
        if secret is None:  # one was stored before, and this process has no key to open it
            raise SecretKeyMissing()
        response.headers["Cache-Control"] = "no-store"  # no proxy or cache keeps a copy
        return {"tenant": who, "secret": secret}

    @r.get("/webhooks/deliveries", response_model=DeliveriesOut,
           summary="Webhook deliveries, newest first (failing ones show last_error)")
    def deliveries(
        p: Caller, tenant: Tenant = None,
        status: Annotated[Literal["pending", "delivered", "failed"] | None, Query()] = None,
        job_id: Annotated[uuid.UUID | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
        cursor: Annotated[str | None, Query(max_length=200,
                                            description="next_cursor of the page before")] = None,
    ) -> dict[str, Any]:
        who = _whose(p, tenant)
        before = decode_int_cursor(cursor) if cursor else (None, None)
        with c.engine.connect() as conn:
            rows = conn.execute(_DELIVERIES, {"t": who, "s": status, "j": job_id, "id": None,
                                              "bt": before[0], "bi": before[1],
                                              "n": limit + 1}).all()
        page = rows[:limit]
        nxt = encode_cursor(page[-1].created_at, page[-1].id) if len(rows) > limit else None
        return {"next_cursor": nxt, "items": [_delivery(r) for r in page]}

    @r.post("/webhooks/deliveries/{delivery_id}/redeliver", response_model=DeliveryOut,
            status_code=202, summary="Queue a failed (or delivered) webhook delivery again",
            responses={404: _err("no such delivery of the tenant"),
                       409: _err("conflict: pending already (it is sent without asking)")})
    def redeliver(delivery_id: Annotated[int, Path(ge=1, le=2**63 - 1)], p: Caller,
                  tenant: Tenant = None) -> dict[str, Any]:
        who = _whose(p, tenant)
        with c.engine.begin() as conn:
            requeue(conn, who, delivery_id, utcnow())
            row = conn.execute(_DELIVERIES, {"t": who, "s": None, "j": None, "id": delivery_id,
                                             "bt": None, "bi": None, "n": 1}).one()
        return _delivery(row)

    @r.post("/webhooks/deliveries/redeliver-failed", response_model=RequeuedOut,
            summary="Queue every failed webhook delivery of the tenant (or of a job) again")
    def redeliver_failed(p: Caller, tenant: Tenant = None,
                         job_id: Annotated[uuid.UUID | None, Query()] = None
                         ) -> dict[str, Any]:
        who = _whose(p, tenant)
        with c.engine.begin() as conn:
            return {"requeued": requeue_failed(conn, who, job_id, utcnow())}

    return r
