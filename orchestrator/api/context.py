"""What the routes share: the container, the authenticator, the limiters, and the two
dependencies every authenticated route uses (``principal`` and ``admin``).

Authentication itself is done before the route, by :class:`orchestrator.api.gate.Gate`, from
the headers alone; the dependencies only take the principal it admitted (and document the
bearer scheme in the OpenAPI document)."""


from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from redis import Redis

from orchestrator.api.config import ApiConfig
from orchestrator.api.errors import Unauthorized
from orchestrator.api.limits import AuthFailures, RateLimiter
from orchestrator.api.principal import Principal, principal_of
from orchestrator.api.schemas import ErrorOut
from orchestrator.api.security import Authenticator, require_admin
from orchestrator.bootstrap import Container

bearer = HTTPBearer(auto_error=False, description="An API key: `orch_<prefix>_<secret>`")


def _err(description: str) -> dict[str, Any]:
    return {"model": ErrorOut, "description": description}


# Documented on every authenticated route, so the OpenAPI document matches what can happen.
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: _err("missing or invalid API key (answered before the body is read)"),
    408: _err("the request body did not arrive in time"),
    413: _err("request body too large"),
    415: _err("a body in a content coding (Content-Encoding), on any route; on a route that "
              "reads a body, one that is not JSON (another Content-Type, or none)"),
    422: _err("invalid request (the message names the field)"),
    429: {**_err("rate limited: the tenant's requests, or the client address's failed "
                 "authentications"), "headers": _RETRY_AFTER},
    503: {**_err("unavailable: PostgreSQL or Redis cannot be reached now, or the API is at "
                 "its connection limit"), "headers": _RETRY_AFTER},
}
ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {**AUTH_ERRORS, 403: _err("admin key needed")}


@dataclass
class ApiContext:
    container: Container
    config: ApiConfig
    auth: Authenticator
    limiter: RateLimiter
    failures: AuthFailures
    redis: Redis

    def principal_dep(self) -> Any:
        async def principal(
            request: Request,
            creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
        ) -> Principal:
            p = principal_of(request.scope)
            if p is None:  # a route outside /v1 the gate does not guard: refuse, never admit
                raise Unauthorized("this route is not behind authentication")
            return p

        return principal

    def admin_dep(self) -> Any:
        principal = self.principal_dep()

        def admin(p: Annotated[Principal, Depends(principal)]) -> Principal:
            return require_admin(p)

        return admin
