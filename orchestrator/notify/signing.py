"""HMAC signatures of webhook deliveries (CONTRACT "Alert channels").

A webhook POST carries ``X-Orchestrator-Timestamp: <unix seconds>`` and
``X-Orchestrator-Signature: sha256=<hex>``, the HMAC-SHA256 with the channel's secret over
``<timestamp>.<raw body>``. A receiver checks it with :func:`verify_signature` **on the raw
body bytes** (before any JSON parsing)::

    from orchestrator.notify.signing import verify_signature

    ok = verify_signature(
        secret, request.headers["X-Orchestrator-Timestamp"], await request.body(),
        request.headers["X-Orchestrator-Signature"], now=time.time(),
    )
    if not ok:
        return Response(status_code=401)

It rejects an altered body, a wrong secret, a malformed header and a timestamp more than
``tolerance_s`` away from ``now`` (a replay of an old request). Within the tolerance window a
replay of the very same request is still possible: de-duplicate on the payload's
``alert_id`` (a retried delivery carries the same ``alert_id``).
"""

from __future__ import annotations

import hashlib
import hmac

TIMESTAMP_HEADER = "X-Orchestrator-Timestamp"
SIGNATURE_HEADER = "X-Orchestrator-Signature"
_PREFIX = "sha256="


def sign(secret: str, timestamp: str | int, body: bytes) -> str:
    """``sha256=<hex>`` over ``<timestamp>.<body>``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return _PREFIX + mac.hexdigest()


def verify_signature(
    secret: str,
    timestamp: str | None,
    body: bytes,
    signature: str | None,
    now: float,
    tolerance_s: float = 300,
) -> bool:
    """True only if ``signature`` is ours for (``timestamp``, ``body``) and fresh at ``now``.

    ``now`` is unix seconds (``time.time()``). Comparison is constant-time.
    """
    if not timestamp or not signature or not signature.startswith(_PREFIX):
        return False
    if not timestamp.isascii() or not timestamp.isdigit():
        return False
    if abs(now - int(timestamp)) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)
