"""API limits, read from settings.

    ORCH_API_RATE_LIMIT            requests per tenant per window (default 6000)
    ORCH_API_RATE_WINDOW_S         window length in seconds (default 60)
    ORCH_API_MAX_BODY_BYTES        largest accepted request body (default 1 MiB): 413; a body
                                   the route never reads is cut by the protocol too
    ORCH_API_KEY_CACHE_S           how long a verified key is trusted without the database
                                   (default 5; a revoked key stops working within this)
    ORCH_API_BODY_TIMEOUT_S        the whole body must arrive within this (default 10): 408,
                                   read or not (api.protocol)
    ORCH_API_HEADER_TIMEOUT_S      the request line and headers must arrive within this
                                   (default 10), else the connection is closed
    ORCH_API_MAX_HEADER_BYTES      largest request line plus headers (default 32 KiB): 431
    ORCH_API_AUTH_FAIL_LIMIT       failed authentications per client address per window
                                   (default 30), then 429 until the window ends
    ORCH_API_AUTH_FAIL_WINDOW_S    that window (default 60)
    ORCH_API_LIMIT_CONCURRENCY     open connections plus running requests past which uvicorn
                                   answers 503 at once (default 1000)
    ORCH_API_TIMEOUT_KEEP_ALIVE_S  an idle keep-alive connection is closed after (default 5)
    ORCH_API_BACKLOG               the listening socket's accept queue (default 2048)
    ORCH_API_FORWARDED_ALLOW_IPS   proxies whose X-Forwarded-For is believed (default none)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.settings import Settings


@dataclass(frozen=True, slots=True)
class ApiConfig:
    rate_limit: int = 6000
    rate_window_s: int = 60
    max_body_bytes: int = 1024 * 1024
    key_cache_s: float = 5.0
    body_timeout_s: float = 10.0
    header_timeout_s: float = 10.0
    max_header_bytes: int = 32 * 1024
    auth_fail_limit: int = 30
    auth_fail_window_s: int = 60
    limit_concurrency: int = 1000
    timeout_keep_alive_s: int = 5
    backlog: int = 2048
    forwarded_allow_ips: str = ""

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiConfig:
        return cls(
            rate_limit=settings.api_rate_limit,
            rate_window_s=settings.api_rate_window_s,
            max_body_bytes=settings.api_max_body_bytes,
            key_cache_s=settings.api_key_cache_s,
            body_timeout_s=settings.api_body_timeout_s,
            header_timeout_s=settings.api_header_timeout_s,
            max_header_bytes=settings.api_max_header_bytes,
            auth_fail_limit=settings.api_auth_fail_limit,
            auth_fail_window_s=settings.api_auth_fail_window_s,
            limit_concurrency=settings.api_limit_concurrency,
            timeout_keep_alive_s=settings.api_timeout_keep_alive_s,
            backlog=settings.api_backlog,
            forwarded_allow_ips=settings.api_forwarded_allow_ips,
        )

    def uvicorn_options(self) -> dict[str, Any]:
        """What ``uvicorn.Config`` takes from these limits (the HTTP protocol is
        :func:`orchestrator.api.protocol.edge_protocol`'s)."""
        from orchestrator.api.protocol import edge_protocol

        trusted = self.forwarded_allow_ips.strip()
        return {
            # the connection cap is the protocol's (uvicorn's answers 503 in plain text)
            "http": edge_protocol(self.header_timeout_s, self.max_header_bytes,
                                  self.limit_concurrency, body_timeout_s=self.body_timeout_s,
                                  max_body_bytes=self.max_body_bytes),
            "timeout_keep_alive": self.timeout_keep_alive_s,
            "backlog": self.backlog,
            "proxy_headers": bool(trusted),
            "forwarded_allow_ips": trusted or None,
            "server_header": False,
        }
