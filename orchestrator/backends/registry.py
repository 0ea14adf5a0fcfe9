"""``make_adapter``: the adapter for a catalogue entry, chosen by its protocol."""

from __future__ import annotations

import httpx

from orchestrator.backends.base import BackendAdapter
from orchestrator.backends.http import HttpAdapter, RetryPolicy
from orchestrator.backends.openai import OpenAIAdapter
from orchestrator.backends.predictions import PredictionsAdapter
from orchestrator.domain.catalogue import BackendSpec
from orchestrator.errors import ConfigurationError

ADAPTERS: dict[str, type[HttpAdapter]] = {
    "openai": OpenAIAdapter,
    "predictions": PredictionsAdapter,
}


def make_adapter(
    backend: BackendSpec,
    transport: httpx.BaseTransport | None = None,
    *,
    retry: RetryPolicy | None = None,
) -> BackendAdapter:
    """An adapter for ``backend``. Pass a shared ``transport`` (its connections are reused;
    the adapter never closes it) or none (the adapter makes its own; ``close()`` releases
    it)."""
    cls = ADAPTERS.get(str(backend.protocol))
    if cls is None:
        raise ConfigurationError(
            f"backend {backend.name}: unknown protocol {backend.protocol!r} "
            f"(known: {', '.join(sorted(ADAPTERS))})",
            backend=backend.name, field="protocol",
        )
    adapter: BackendAdapter = cls(backend, transport, retry=retry)
    return adapter
