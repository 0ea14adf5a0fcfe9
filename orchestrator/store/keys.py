"""API keys: ``orch_<prefix>_<secret>``, shown once, stored only as a SHA-256 hash.

The secret is 32 random bytes (``secrets.token_urlsafe``), so a fast hash is enough: nobody can
brute-force 256 bits, and a lookup by hash needs no per-key salt. The stored hash is compared
with the computed one in constant time. The ``prefix`` (8 hex characters, not secret) names a
key in listings and logs without revealing it.

    key = create_key(conn, "acme", admin=False)   # the only time the plaintext exists
    principal = authenticate(conn, key)           # KeyRecord | None
    revoke_key(conn, record.id)                   # by its unique id, never by prefix
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text

from orchestrator.errors import Conflict, NotFound

KEY_SCHEME = "orch"
TENANT_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_KEY_RE = re.compile(r"^orch_([0-9a-f]{8})_([A-Za-z0-9_-]{20,128})$")


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: int
    tenant: str
    admin: bool
    prefix: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None = None

    def resource(self) -> dict[str, Any]:
        """The key as the API and the CLI show it: never the key, never its hash."""
        def iso(at: datetime | None) -> str | None:
            return at.isoformat() if at is not None else None

        return {"id": self.id, "tenant": self.tenant, "admin": self.admin,
                "prefix": self.prefix, "created_at": iso(self.created_at),
                "last_used_at": iso(self.last_used_at), "revoked_at": iso(self.revoked_at)}


_COLUMNS = "id, tenant, admin, prefix, created_at, revoked_at, last_used_at"


def _record(r: Any) -> KeyRecord:
    return KeyRecord(r.id, r.tenant, r.admin, r.prefix, r.created_at, r.revoked_at,
                     r.last_used_at)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> tuple[str, str, str]:
    """A new (plaintext key, prefix, hash)."""
    prefix = secrets.token_hex(4)
    key = f"{KEY_SCHEME}_{prefix}_{secrets.token_urlsafe(32)}"
    return key, prefix, hash_key(key)


def validate_tenant(tenant: str) -> str:
    if not TENANT_RE.match(tenant):
        raise ValueError(
            f"invalid tenant {tenant!r}: 1-64 letters, digits, '_', '.' or '-'"
        )
    return tenant


def create_key(conn: Connection, tenant: str, admin: bool = False) -> str:
    """Store a new key for ``tenant`` and return its plaintext (never stored, never logged)."""
    return create_key_record(conn, tenant, admin)[0]


def create_key_record(conn: Connection, tenant: str, admin: bool = False
                      ) -> tuple[str, KeyRecord]:
    """:func:`create_key`, with the new key's record (its id names it from now on)."""
    validate_tenant(tenant)
    key, prefix, digest = generate_key()
    row = conn.execute(
        text("INSERT INTO api_keys (tenant, key_hash, prefix, admin) "
             f"VALUES (:t, :h, :p, :a) RETURNING {_COLUMNS}"),
        {"t": tenant, "h": digest, "p": prefix, "a": admin},
    ).one()
    return key, _record(row)


def looks_like_key(key: str) -> bool:
    return _KEY_RE.match(key) is not None


# One statement: the key's row, and its last_used_at moved to now if that is older than
# :gap seconds, so a key used all day is written about once a minute, not once a request.
_AUTHENTICATE = text(f"""
    WITH k AS (SELECT {_COLUMNS}, key_hash FROM api_keys WHERE key_hash = :h),
    touched AS (
        UPDATE api_keys a SET last_used_at = now()
        FROM k
        WHERE a.id = k.id AND k.revoked_at IS NULL
          AND (k.last_used_at IS NULL
               OR k.last_used_at < now() - make_interval(secs => CAST(:gap AS double precision)))
        RETURNING a.id
    )
    SELECT k.*, EXISTS (SELECT 1 FROM touched) AS touched FROM k
""")


def authenticate(conn: Connection, key: str, touch_every_s: float = 60.0) -> KeyRecord | None:
    """The live (not revoked) key record for ``key``, or None. Marks the key used (at most
    once per ``touch_every_s``)."""
    if not looks_like_key(key):
        return None
    digest = hash_key(key)
    row = conn.execute(_AUTHENTICATE, {"h": digest, "gap": touch_every_s}).first()
    if row is None or row.revoked_at is not None:
        return None
    if not hmac.compare_digest(row.key_hash, digest):
        return None
    return _record(row)


_LOOK_UP = text(f"SELECT {_COLUMNS}, key_hash FROM api_keys WHERE key_hash = :h")


def live_key(conn: Connection, key: str) -> KeyRecord | None:
    """The live key record for ``key``, or None, without marking it used (a check, not a
    use: ``orchestrator up`` asking whether its stored keys still work)."""
    if not looks_like_key(key):
        return None
    digest = hash_key(key)
    row = conn.execute(_LOOK_UP, {"h": digest}).first()
    if row is None or row.revoked_at is not None or not hmac.compare_digest(row.key_hash, digest):
        return None
    return _record(row)


def revoke_key(conn: Connection, key_id: int) -> KeyRecord:
    """Revoke exactly the key ``key_id`` (its record back, ``revoked_at`` set); an already
    revoked key is left as it is. ``NotFound`` for no such key; ``Conflict`` if it is the
    last live admin key (then nobody could manage keys through the API).

    The live admin keys are locked (in id order) before the decision, so two admins revoking
    each other's key at once cannot both succeed and leave none."""
    admins = conn.execute(
        text("SELECT id FROM api_keys WHERE admin AND revoked_at IS NULL ORDER BY id "
             "FOR UPDATE")).scalars().all()
    row = conn.execute(text(f"SELECT {_COLUMNS} FROM api_keys WHERE id = :i FOR UPDATE"),
                       {"i": key_id}).first()
    if row is None:
        raise NotFound(f"no API key {key_id}", key_id=key_id)
    if row.revoked_at is not None:
        return _record(row)
    if row.admin and list(admins) == [key_id]:
        raise Conflict("the last admin key cannot be revoked: create another admin key first",
                       key_id=key_id)
    done = conn.execute(
        text(f"UPDATE api_keys SET revoked_at = now() WHERE id = :i RETURNING {_COLUMNS}"),
        {"i": key_id}).one()
    return _record(done)


_LIVE_BY_ID = text("SELECT revoked_at IS NULL FROM api_keys WHERE id = :i")


def key_id_live(conn: Connection, key_id: int) -> bool:
    """Whether the key ``key_id`` still works (not revoked, not gone): what an open event
    stream, admitted once, asks again while it lasts."""
    return bool(conn.execute(_LIVE_BY_ID, {"i": key_id}).scalar())


def list_keys(conn: Connection, tenant: str | None = None) -> list[KeyRecord]:
    """Key records (never the keys), newest first."""
    rows = conn.execute(
        text(f"SELECT {_COLUMNS} FROM api_keys "
             "WHERE CAST(:t AS text) IS NULL OR tenant = :t ORDER BY created_at DESC, id DESC"),
        {"t": tenant},
    ).all()
    return [_record(r) for r in rows]
