"""Who is calling: the principal that authentication puts in the request's ASGI scope."""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

SCOPE_KEY = "orchestrator.principal"


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str
    admin: bool
    key_prefix: str
    key_id: int = 0


def principal_of(scope: MutableMapping[str, Any]) -> Principal | None:
    """The principal authentication admitted for this request (None: not authenticated)."""
    p = scope.get(SCOPE_KEY)
    return p if isinstance(p, Principal) else None
