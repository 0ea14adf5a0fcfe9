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
stop the API, nor slow it down. Both share one ``RedisOutage``: once a call failed (refused,
or timed out after up to 2 s on a Redis that does not answer), they let requests through at
once, without asking Redis, for ``SKIP_S``; then one request at a time asks again (the others
still go through at once) until Redis answers. A hung Redis so costs one request the timeout
every ``SKIP_S``, not every request.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

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


SKIP_S = 5.0  # after a failed call, the counters go without Redis this long


def _retry_s(ttl_ms: int) -> int:
    return max(1, math.ceil(int(ttl_ms) / 1000))


class RedisOutage:
    """Whether the counters ask Redis now: always while it answers; after a failure, not for
    ``skip_s``, then by one request at a time (the probe) until one call succeeds. Used from
    the event loop only (no lock needed)."""

    def __init__(self, skip_s: float = SKIP_S) -> None:
        self.skip_s = skip_s
        self._down = False
        self._until = 0.0
        self._probing = False

    async def call(self, what: str, fn: Callable[[], Awaitable[Any]]) -> Any | None:
        """``fn()``'s answer, or None: Redis failed now, or lately (fail open)."""
        if self._down:
            if self._probing or time.monotonic() < self._until:
                return None
            self._probing = True
        try:
            answer = await fn()
        except RedisError as exc:
            self._down, self._until = True, time.monotonic() + self.skip_s
            log.warning("%s skipped: redis unavailable (for %g s)", what, self.skip_s,
                        extra={"error": type(exc).__name__})
            return None
        finally:
            self._probing = False  # a probe cancelled with its request: the next one asks
        self._down = False
        return answer


class RateLimiter:
    """Requests per tenant. Counts on the event loop (``redis.asyncio``): a request then needs
    no thread of the pool for it."""

    def __init__(self, redis: AsyncRedis, config: ApiConfig,
                 prefix: str = "orch:ratelimit:", outage: RedisOutage | None = None) -> None:
        self.redis = redis
        self.outage = outage or RedisOutage()
        self.limit = config.rate_limit
        self.window_ms = config.rate_window_s * 1000
        self.window_s = config.rate_window_s
        self.prefix = prefix
        self._script = redis.register_script(_FIXED_WINDOW)

    async def check(self, tenant: str) -> None:
        """Count one request of ``tenant``; raise RateLimited past the limit."""
        answer = await self.outage.call("rate limit check", lambda: self._script(
            keys=[self.prefix + tenant], args=[self.window_ms]))
        if answer is None:
            return
        n, ttl_ms = answer
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
                 prefix: str = "orch:authfail:", outage: RedisOutage | None = None) -> None:
        self.outage = outage or RedisOutage()
        self.limit = config.auth_fail_limit
        self.window_s = config.auth_fail_window_s
        self.window_ms = config.auth_fail_window_s * 1000
        self.prefix = prefix
        self._count = redis.register_script(_FIXED_WINDOW)
        self._peek = redis.register_script(_PEEK)

    async def check(self, address: str) -> None:
        """RateLimited if ``address`` has used up its failures in the current window."""
        answer = await self.outage.call("failed-authentication check", lambda: self._peek(
            keys=[self.prefix + address]))
        if answer is None:
            return
        n, ttl_ms = answer
        if int(n) >= self.limit:
            self._refuse(int(ttl_ms))

    async def failed(self, address: str) -> None:
        """Count one failure of ``address``; RateLimited if it is past the limit (the caller
        answers that instead of 401)."""
        answer = await self.outage.call("failed-authentication count", lambda: self._count(
            keys=[self.prefix + address], args=[self.window_ms]))
        if answer is None:
            return
        n, ttl_ms = answer
        if int(n) > self.limit:
            self._refuse(int(ttl_ms))

    def _refuse(self, ttl_ms: int) -> None:
        retry = _retry_s(ttl_ms) if ttl_ms > 0 else self.window_s
        raise RateLimited(
            f"too many failed authentications from this address ({self.limit} per "
            f"{self.window_s} s); retry in {retry} s",
            retry_after_s=retry, limit=self.limit, window_s=self.window_s,
        )
