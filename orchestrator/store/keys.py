"""API keys: ``orch_<prefix>_<secret>``, shown once, stored only as a SHA-256 hash.

The secret is 32 random bytes (``secrets.token_urlsafe``), so a fast hash is enough: nobody can
brute-force 256 bits, and a lookup by hash needs no per-key salt. The stored hash is compared
with the computed one in constant time. The ``prefix`` (8 hex characters, not secret) names a
key in listings and logs without revealing it.

    key = create_key(conn, "acme", admin=False)   # the only time the plaintext exists
    principal = authenticate(conn, key)           # KeyRecord | None
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, text

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
    validate_tenant(tenant)
    key, prefix, digest = generate_key()
    conn.execute(
        text("INSERT INTO api_keys (tenant, key_hash, prefix, admin) "
             "VALUES (:t, :h, :p, :a)"),
        {"t": tenant, "h": digest, "p": prefix, "a": admin},
    )
    return key


def looks_like_key(key: str) -> bool:
    return _KEY_RE.match(key) is not None


def authenticate(conn: Connection, key: str) -> KeyRecord | None:
    """The live (not revoked) key record for ``key``, or None."""
    if not looks_like_key(key):
        return None
    digest = hash_key(key)
    row = conn.execute(
        text("SELECT id, tenant, admin, prefix, created_at, revoked_at, key_hash "
             "FROM api_keys WHERE key_hash = :h"),
        {"h": digest},
    ).first()
    if row is None or row.revoked_at is not None:
        return None
    if not hmac.compare_digest(row.key_hash, digest):
        return None
    return KeyRecord(row.id, row.tenant, row.admin, row.prefix, row.created_at, row.revoked_at)


def revoke_key(conn: Connection, prefix: str) -> bool:
    """Revoke the live key(s) with ``prefix``; False if none was live."""
    res = conn.execute(
        text("UPDATE api_keys SET revoked_at = now() "
             "WHERE prefix = :p AND revoked_at IS NULL RETURNING id"),
        {"p": prefix},
    ).all()
    return bool(res)


def list_keys(conn: Connection, tenant: str | None = None) -> list[KeyRecord]:
    """Key records (never the keys), newest first."""
    rows = conn.execute(
        text("SELECT id, tenant, admin, prefix, created_at, revoked_at FROM api_keys "
             "WHERE CAST(:t AS text) IS NULL OR tenant = :t ORDER BY created_at DESC, id DESC"),
        {"t": tenant},
    ).all()
    return [KeyRecord(r.id, r.tenant, r.admin, r.prefix, r.created_at, r.revoked_at)
            for r in rows]
