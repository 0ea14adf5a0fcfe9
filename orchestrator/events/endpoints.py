"""A tenant's webhook endpoint (``PUT /v1/webhooks``): its URL and signing secret sealed at
rest with the channel secrets' keys (``orchestrator.secrets``); the URL is never shown again,
the secret only to the tenant (``GET /v1/webhooks/secret``).

The secret signs every webhook of the tenant's jobs: those to the endpoint's own URL and those
to a job's ``webhook_url``. A tenant that never set one gets one made for it the first time one
is needed (:func:`ensure_secret`: a delivery due, or ``GET /v1/webhooks/secret``; admitting a
job only checks that one could be made: :class:`SigningSecrets`), kept as an endpoint row
without a URL: a producer who only sets ``webhook_url`` still hears back, and fetches the
secret to verify with."""

from __future__ import annotations

import enum
import json
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, text

from orchestrator.domain.events import TERMINAL_EVENTS
from orchestrator.egress import EgressPolicy
from orchestrator.egress.policy import parse_url
from orchestrator.errors import InvalidRequest
from orchestrator.notify.stored import SEALED
from orchestrator.secrets import SecretBox, SecretKeyMissing

_UPSERT = text(
    """
    INSERT INTO webhook_endpoints (tenant, url, origin, secret, events)
    VALUES (:t, CAST(:url AS jsonb), :origin, CAST(:secret AS jsonb),
            COALESCE(CAST(:events AS jsonb), CAST(:default_events AS jsonb)))
    ON CONFLICT (tenant) DO UPDATE SET
        url = CASE WHEN :keep_url THEN webhook_endpoints.url ELSE EXCLUDED.url END,
        origin = CASE WHEN :keep_url THEN webhook_endpoints.origin ELSE EXCLUDED.origin END,
        secret = COALESCE(CAST(:new_secret AS jsonb), webhook_endpoints.secret),
        events = COALESCE(CAST(:events AS jsonb), webhook_endpoints.events),
        failing_since = CASE WHEN :keep_url THEN webhook_endpoints.failing_since END,
        last_error = CASE WHEN :keep_url THEN webhook_endpoints.last_error END,
        updated_at = now()
    RETURNING tenant
    """
)
_GET = text("SELECT tenant, url, origin, secret, events, failing_since, last_error, "
            "updated_at FROM webhook_endpoints WHERE tenant = :t")


@dataclass(frozen=True, slots=True)
class Endpoint:
    tenant: str
    url: dict[str, Any] | None
    origin: str | None
    secret: dict[str, Any]
    events: list[str]
    failing_since: datetime | None
    last_error: str | None
    updated_at: datetime

    def view(self) -> dict[str, Any]:
        """What ``GET /v1/webhooks`` shows: never the URL's path or the secret."""
        return {"tenant": self.tenant, "origin": self.origin, "url_set": self.url is not None,
                "events": list(self.events), "secret_set": True,
                "failing_since": self.failing_since.isoformat() if self.failing_since else None,
                "last_error": self.last_error, "updated_at": self.updated_at.isoformat()}


def get(conn: Connection, tenant: str) -> Endpoint | None:
    row = conn.execute(_GET, {"t": tenant}).first()
    return None if row is None else Endpoint(*row)


def _seal(box: SecretBox | None, value: str) -> dict[str, str]:
    if box is None:
        raise SecretKeyMissing()
    return {SEALED: box.encrypt(value)}


class Keep(enum.Enum):
    """A field left out of ``PUT /v1/webhooks``: the stored value stays."""

    KEEP = "keep"


KEEP = Keep.KEEP


def put(conn: Connection, tenant: str, *, url: str | Keep | None, secret: str | None,
        events: list[str] | None, policy: EgressPolicy, box: SecretBox | None) -> Endpoint:
    """Create or update the endpoint. What is left out stays as stored: ``url`` :data:`KEEP`
    (None removes the URL), ``secret`` None (required the first time), ``events`` None (the
    terminal events for a new endpoint). The URL is checked by the egress policy now (a 422
    naming ``url``); a new URL clears the failing mark of the old one."""
    origin = None
    if isinstance(url, str):
        policy.check(url, field="url")
        origin = parse_url(url, "url").origin
    if secret is None and get(conn, tenant) is None:
        raise InvalidRequest("secret: required when the tenant has no webhook secret yet",
                             field="secret")
    sealed_secret = None if secret is None else json.dumps(_seal(box, secret))
    conn.execute(_UPSERT, {
        "t": tenant, "url": json.dumps(_seal(box, url)) if isinstance(url, str) else None,
        "keep_url": url is KEEP, "origin": origin, "secret": sealed_secret or json.dumps({}),
        "new_secret": sealed_secret, "events": None if events is None else json.dumps(events),
        "default_events": json.dumps(list(TERMINAL_EVENTS))})
    found = get(conn, tenant)
    assert found is not None
    return found


def has_secret(endpoint: Endpoint | None) -> bool:
    """Whether a sealed secret is stored (not decrypted: no key needed)."""
    return endpoint is not None and isinstance(endpoint.secret.get(SEALED), str)


def open_secret(endpoint: Endpoint | None, box: SecretBox | None) -> str | None:
    """The plain signing secret, None when there is none to be had."""
    if endpoint is None or box is None or not isinstance(endpoint.secret.get(SEALED), str):
        return None
    return box.decrypt(endpoint.secret[SEALED])


def open_url(endpoint: Endpoint | None, box: SecretBox | None) -> str | None:
    if (endpoint is None or endpoint.url is None or box is None
            or not isinstance(endpoint.url.get(SEALED), str)):
        return None
    return box.decrypt(endpoint.url[SEALED])


SECRET_PREFIX = "whsec_"  # so a made secret is recognisable (and found by the log scan)
# The made secret is inserted only where the tenant has no row; a row without a sealed secret
# (none is written so, but a value unreadable as one must not block deliveries) gets it too.
_INSERT_MADE = text(
    "INSERT INTO webhook_endpoints (tenant, url, origin, secret) "
    "VALUES (:t, NULL, NULL, CAST(:secret AS jsonb)) ON CONFLICT (tenant) DO NOTHING"
)
_FILL_MADE = text(
    f"UPDATE webhook_endpoints SET secret = CAST(:secret AS jsonb), updated_at = now() "
    f"WHERE tenant = :t AND NOT (secret ? '{SEALED}')"
)


def make_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def ensure_secret(conn: Connection, tenant: str, box: SecretBox | None) -> Endpoint:
    """The tenant's endpoint, with a signing secret made for it if it had none. Two callers
    at once end with one secret: the insert does nothing where a row already is (the loser
    waits for the winner's commit), and both read the row afterwards.
    :class:`SecretKeyMissing` without a key."""
    found = get(conn, tenant)
    if found is not None and has_secret(found):
        return found
    sealed = json.dumps(_seal(box, make_secret()))
    conn.execute(_INSERT_MADE, {"t": tenant, "secret": sealed})
    conn.execute(_FILL_MADE, {"t": tenant, "secret": sealed})
    found = get(conn, tenant)
    assert found is not None
    return found


class SigningSecrets:
    """Whether a tenant's webhooks can be signed, asked at admission; remembered per tenant
    (no route removes a secret), so admitting its next webhook job costs no query."""

    def __init__(self, engine: Engine, box: SecretBox | None) -> None:
        self._engine = engine
        self._box = box
        self._known: set[str] = set()
        self._lock = threading.Lock()

    def check(self, tenant: str) -> None:
        """Raises :class:`SecretKeyMissing` when the tenant's webhooks could never be signed
        (no secret, and no key to seal one with); writes nothing, so a submission refused
        later (402, 409) leaves nothing behind. The secret itself is made when first needed:
        by its first delivery, or ``GET /v1/webhooks/secret``."""
        if self._box is not None:
            return
        with self._lock:
            if tenant in self._known:
                return
        with self._engine.connect() as conn:
            found = get(conn, tenant)
        if found is None or not has_secret(found):
            raise SecretKeyMissing()
        with self._lock:
            self._known.add(tenant)



_ALL = text("SELECT tenant, url, secret FROM webhook_endpoints ORDER BY tenant FOR UPDATE")
_RESEAL = text("UPDATE webhook_endpoints SET url = CAST(:url AS jsonb), "
               "secret = CAST(:secret AS jsonb) WHERE tenant = :t")


def rotate_all(conn: Connection, box: SecretBox) -> int:
    """Re-encrypt every endpoint's URL and secret with the first key (``orchestrator secrets
    rotate``, in its transaction); returns how many endpoints. ``SecretUnreadable`` if one
    does not decrypt with any key: nothing is changed then (the caller's transaction)."""
    n = 0
    for row in conn.execute(_ALL).all():
        fields = {}
        for name in ("url", "secret"):
            value = getattr(row, name)
            fields[name] = (json.dumps({SEALED: box.rotate(value[SEALED])})
                            if isinstance(value, dict) and SEALED in value
                            else (None if value is None else json.dumps(value)))
        conn.execute(_RESEAL, {"t": row.tenant, **fields})
        n += 1
    return n
