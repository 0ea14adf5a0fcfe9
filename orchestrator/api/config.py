"""API limits, read from settings.

    ORCH_API_RATE_LIMIT         requests per tenant per window (default 6000)
    ORCH_API_RATE_WINDOW_S      window length in seconds (default 60)
    ORCH_API_MAX_BODY_BYTES     largest accepted request body (default 1 MiB)
    ORCH_API_KEY_CACHE_S        how long a verified key is trusted without the database
                                (default 5; a revoked key stops working within this)
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.settings import Settings


@dataclass(frozen=True, slots=True)
class ApiConfig:
    rate_limit: int = 6000
    rate_window_s: int = 60
    max_body_bytes: int = 1024 * 1024
    key_cache_s: float = 5.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiConfig:
        return cls(
            rate_limit=settings.api_rate_limit,
            rate_window_s=settings.api_rate_window_s,
            max_body_bytes=settings.api_max_body_bytes,
            key_cache_s=settings.api_key_cache_s,
        )
