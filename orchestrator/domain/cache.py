"""The result cache's key (pure): which jobs ask for the same result.

Two jobs of one tenant ask for the same result when their kind, their normalised input (the
kind's standard parameters with their defaults filled in, and every parameter a backend
declares: ``JobSpec`` has already normalised it, so ``duration_s: 8`` and ``8.0`` agree),
their tier and their pinned backend are equal. What does not change the result is left out:
strategy, max_cost_usd, deadline, priority, webhook, metadata. The key is the SHA-256 of
those fields as canonical JSON, tenant included: the prompt is never stored in clear outside
the job row, and two tenants' identical jobs have different keys.
"""

from __future__ import annotations

import hashlib
import json

from orchestrator.domain.jobs import JobSpec

KEY_VERSION = 1  # bump when what the key covers changes: old entries simply stop matching


def cache_key(tenant: str, spec: JobSpec) -> str:
    """The 64-hex SHA-256 key of ``spec``'s result for ``tenant``."""
    body = {
        "v": KEY_VERSION, "tenant": tenant, "kind": spec.kind.value, "input": spec.input,
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
