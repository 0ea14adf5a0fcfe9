"""Who is calling: the principal that authentication puts in the request's ASGI scope, and
what of the budgets it may see.

A tenant key sees the budgets of its own scopes only (``tenant:<t>`` and
``tenant:<t>/project:<p>``), never ``global`` (which adds up every tenant's spend) nor another
tenant's; an admin key sees every budget, and alone sees budgets' alert channels.
"""

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


def own_scope(scope: str, tenant: str) -> bool:
    """``scope`` is the tenant's own budget scope: ``tenant:<t>`` or one of its projects."""
    own = f"tenant:{tenant}"
    return scope == own or scope.startswith(own + "/project:")


def sees_budget(p: Principal, scope: str) -> bool:
    return p.admin or own_scope(scope, p.tenant)
