"""What the routes share: the container, the authenticator, the rate limiter, and the two
dependencies every authenticated route uses (``principal`` and ``admin``)."""


from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from redis import Redis
from starlette.concurrency import run_in_threadpool

from orchestrator.api.config import ApiConfig
from orchestrator.api.schemas import ErrorOut
from orchestrator.api.security import Authenticator, Principal, RateLimiter, require_admin
from orchestrator.bootstrap import Container

bearer = HTTPBearer(auto_error=False, description="An API key: `orch_<prefix>_<secret>`")


def _err(description: str) -> dict[str, Any]:
    return {"model": ErrorOut, "description": description}


# Documented on every authenticated route, so the OpenAPI document matches what can happen.
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: _err("missing or invalid API key"),
    413: _err("request body too large"),
    422: _err("invalid request (the message names the field)"),
    429: {**_err("rate limited"),
          "headers": {"Retry-After": {"description": "seconds to wait",
                                      "schema": {"type": "integer"}}}},
}
ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {**AUTH_ERRORS, 403: _err("admin key needed")}


@dataclass
class ApiContext:
    container: Container
    config: ApiConfig
    auth: Authenticator
    limiter: RateLimiter
    redis: Redis

    def principal_dep(self) -> Any:
        async def principal(
            creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
        ) -> Principal:
            # On the event loop: a key verified lately and the rate limit need no thread of
            # the pool, so a request's only thread switch is its route's own.
            token = creds.credentials if creds is not None else None
            p = self.auth.cached(token)
            if p is None:
                p = await run_in_threadpool(self.auth.principal, token)
            await self.limiter.check(p.tenant)
            return p

        return principal

    def admin_dep(self) -> Any:
        principal = self.principal_dep()

        def admin(p: Annotated[Principal, Depends(principal)]) -> Principal:
            return require_admin(p)

        return admin
