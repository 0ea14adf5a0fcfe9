"""The API's two Redis counters, shared by every replica: requests per tenant, and failed
authentications per client address. Both are fixed windows timed by the Redis server's clock.

- ``RateLimiter``: one Lua script per request, sent from the event loop: ``INCR`` the
  tenant's counter, start its window (``PEXPIRE``) on the first hit, return the count and the
  time left.
- ``AuthFailures``: an address's failures (no, malformed, unknown or revoked key) are counted
  the same way; once ``limit`` of them fell in the window, the address is refused (429) until
  the window ends: :meth:`AuthFailures.check` before a key is looked up (one ``GET``, so a
  refused request costs no hash and no query), :meth:`AuthFailures.failed` for a failure that
  needed no lookup. A fixed window: refusals never extend it.

If Redis cannot be reached both let the request through (fail open): losing Redis must not
stop the API.
"""

from __future__ import annotations

import logging
import math

from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError

from orchestrator.api.config import ApiConfig
from orchestrator.api.errors import RateLimited

log = logging.getLogger("orchestrator.api")

_FIXED_WINDOW = """
local n = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if n == 1 or ttl < 0 then
    redis.call('PEXPIRE', KEYS[1], ARGV[1])
    ttl = tonumber(ARGV[1])
end
return {n, ttl}
"""

_PEEK = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
return {n, redis.call('PTTL', KEYS[1])}
"""


def _retry_s(ttl_ms: int) -> int:
    return max(1, math.ceil(int(ttl_ms) / 1000))


class RateLimiter:
    """Requests per tenant. Counts on the event loop (``redis.asyncio``): a request then needs
    no thread of the pool for it."""

    def __init__(self, redis: AsyncRedis, config: ApiConfig,
                 prefix: str = "orch:ratelimit:") -> None:
        self.redis = redis
        self.limit = config.rate_limit
        self.window_ms = config.rate_window_s * 1000
        self.window_s = config.rate_window_s
        self.prefix = prefix
        self._script = redis.register_script(_FIXED_WINDOW)

    async def check(self, tenant: str) -> None:
        """Count one request of ``tenant``; raise RateLimited past the limit."""
        try:
            n, ttl_ms = await self._script(keys=[self.prefix + tenant], args=[self.window_ms])
        except RedisError as exc:
            log.warning("rate limit check skipped: redis unavailable",
                        extra={"error": type(exc).__name__})
            return
        if int(n) > self.limit:
            retry = _retry_s(ttl_ms)
            raise RateLimited(
                f"rate limit of {self.limit} requests per {self.window_s} s exceeded; "
                f"retry in {retry} s",
                retry_after_s=retry, limit=self.limit, window_s=self.window_s,
            )


class AuthFailures:
    """Failed authentications per client address (an IPv6 address counts by its /64)."""

    def __init__(self, redis: AsyncRedis, config: ApiConfig,
                 prefix: str = "orch:authfail:") -> None:
        self.limit = config.auth_fail_limit
        self.window_s = config.auth_fail_window_s
        self.window_ms = config.auth_fail_window_s * 1000
        self.prefix = prefix
        self._count = redis.register_script(_FIXED_WINDOW)
        self._peek = redis.register_script(_PEEK)

    async def check(self, address: str) -> None:
        """RateLimited if ``address`` has used up its failures in the current window."""
        try:
            n, ttl_ms = await self._peek(keys=[self.prefix + address])
        except RedisError as exc:
            log.warning("failed-authentication check skipped: redis unavailable",
                        extra={"error": type(exc).__name__})
            return
        if int(n) >= self.limit:
            self._refuse(int(ttl_ms))

    async def failed(self, address: str) -> None:
        """Count one failure of ``address``; RateLimited if it is past the limit (the caller
        answers that instead of 401)."""
        try:
            n, ttl_ms = await self._count(keys=[self.prefix + address], args=[self.window_ms])
        except RedisError as exc:
            log.warning("failed authentication not counted: redis unavailable",
                        extra={"error": type(exc).__name__})
            return
        if int(n) > self.limit:
            self._refuse(int(ttl_ms))

    def _refuse(self, ttl_ms: int) -> None:
        retry = _retry_s(ttl_ms) if ttl_ms > 0 else self.window_s
        raise RateLimited(
            f"too many failed authentications from this address ({self.limit} per "
            f"{self.window_s} s); retry in {retry} s",
            retry_after_s=retry, limit=self.limit, window_s=self.window_s,
        )
