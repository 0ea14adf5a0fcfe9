"""Bearer authentication, admin checks and the per-tenant rate limit (Redis, fixed window).

The rate limit is one Lua script per request, sent from the event loop: ``INCR`` the
tenant's counter, start its window (``PEXPIRE``) on the first hit, and return the count and
the time left, so every API replica shares one exact count and the window is timed by the
Redis server's clock. If Redis cannot be reached the request is let through (fail open):
losing Redis must not stop the API.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass

from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError
from sqlalchemy import Engine

from orchestrator.api.config import ApiConfig
from orchestrator.api.errors import Forbidden, RateLimited, Unauthorized
from orchestrator.store import keys as key_repo

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


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str
    admin: bool
    key_prefix: str


class Authenticator:
    """Verifies bearer keys against the database, trusting a verified key for a few seconds."""

    def __init__(self, engine: Engine, cache_s: float) -> None:
        self.engine = engine
        self.cache_s = cache_s
        self._cache: dict[str, tuple[Principal, float]] = {}
        self._lock = threading.Lock()

    def cached(self, token: str | None) -> Principal | None:
        """The principal of a key verified within the last ``cache_s`` seconds, without the
        database; None: :meth:`principal` must verify it. Raises Unauthorized for a missing
        or malformed key."""
        return self._cached(self._digest(token))

    def principal(self, token: str | None) -> Principal:
        """The key's principal, verified against the database unless it is cached."""
        digest = self._digest(token)
        p = self._cached(digest)
        if p is not None:
            return p
        assert token is not None  # _digest() refused a missing one
        now = time.monotonic()
        with self.engine.begin() as conn:
            rec = key_repo.authenticate(conn, token)
        if rec is None:
            raise Unauthorized("invalid API key")
        p = Principal(rec.tenant, rec.admin, rec.prefix)
        if self.cache_s > 0:
            with self._lock:
                if len(self._cache) > 10_000:
                    self._cache.clear()
                self._cache[digest] = (p, now + self.cache_s)
        return p

    @staticmethod
    def _digest(token: str | None) -> str:
        if not token:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        if not key_repo.looks_like_key(token):
            raise Unauthorized("invalid API key")
        return key_repo.hash_key(token)

    def _cached(self, digest: str) -> Principal | None:
        with self._lock:
            hit = self._cache.get(digest)
        return hit[0] if hit is not None and hit[1] > time.monotonic() else None


def require_admin(p: Principal) -> Principal:
    if not p.admin:
        raise Forbidden("this route needs an admin API key")
    return p


class RateLimiter:
    """Counts on the event loop (``redis.asyncio``): a request's dependency then needs no
    thread of the pool."""

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
            retry = max(1, math.ceil(int(ttl_ms) / 1000))
            raise RateLimited(
                f"rate limit of {self.limit} requests per {self.window_s} s exceeded; "
                f"retry in {retry} s",
                retry_after_s=retry, limit=self.limit, window_s=self.window_s,
            )
