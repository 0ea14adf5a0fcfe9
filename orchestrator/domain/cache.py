"""The result cache's key (pure): which jobs ask for the same result.

Two jobs of one tenant ask for the same result when their kind, their normalised input (the
kind's standard parameters with their defaults filled in, and every parameter a backend
declares: ``JobSpec`` has already normalised it, so ``duration_s: 8`` and ``8.0`` agree,
and a number is hashed by its value, so a declared ``temperature`` of 1 and 1.0 agree too),
their tier and their pinned backend are equal. What does not change the result is left out:
strategy, max_cost_usd, deadline, priority, webhook, metadata. The key is the SHA-256 of
those fields as canonical JSON, tenant included: the prompt is never stored in clear outside
the job row, and two tenants' identical jobs have different keys.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from orchestrator.domain.jobs import JobSpec

# bump when what the key covers changes: old entries simply stop matching
# (2: a number is hashed by its value, 1 and 1.0 alike)
KEY_VERSION = 2


def _number_by_value(value: Any) -> Any:
    """``value`` with every integral float written as the integer it equals. JSON has one
    number type: a backend-declared ``number`` of 1 and one of 1.0 are the same request
    (an ``integer`` parameter refuses 1.0 before it gets here), but Python's JSON writes
    them apart. Booleans stay booleans."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _number_by_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_number_by_value(v) for v in value]
    return value


def cache_key(tenant: str, spec: JobSpec) -> str:
    """The 64-hex SHA-256 key of ``spec``'s result for ``tenant``."""
    body = {
        "v": KEY_VERSION, "tenant": tenant, "kind": spec.kind.value,
        "input": _number_by_value(spec.input),
        "tier": spec.tier.value, "backend": spec.backend,
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def cache_enabled(spec: JobSpec, tenant: str, default_tenants: frozenset[str]) -> bool:
    """Whether ``spec`` uses the cache: its own ``cache`` when given, else the tenant's
    default (``default_tenants``: the tenants whose jobs use it unless they say no; ``*``
    for every tenant)."""
    if spec.cache is not None:
        return spec.cache
    return tenant in default_tenants or "*" in default_tenants
